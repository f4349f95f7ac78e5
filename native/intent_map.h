// The block store's write-intent map (see IntentMap below) and its file.
#ifndef PXD_NATIVE_INTENT_MAP_H_
#define PXD_NATIVE_INTENT_MAP_H_

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "store_io.h"

namespace pxd {

constexpr uint32_t kIntentRegionShift = 20;  // 1 MiB regions
constexpr uint64_t kIntentRegionBytes = 1ull << kIntentRegionShift;

// Write-intent map: the regions (1 << kIntentRegionShift bytes) that may hold
// a block whose data and crc disagree because its write was cut short. One
// byte per region, after a header, in a small file beside the data and crc
// files. A region is marked durably before the first write into it; writes
// into a marked region cost a lookup. A mark is cleared lazily, once every
// write into the region was covered by a completed flush and the region has
// been idle for a while; clears are not synced (a lost one only leaves a
// region marked). Thread-safe.
class IntentMap {
 public:
  static constexpr uint64_t kHeaderBytes = 16;

  IntentMap(std::string path, int fd, SyncHealth* health);

  // Marks regions [r0, r1] and counts a write in each; returns once the marks
  // are durable. Throws StoreError, counting nothing.
  void Begin(uint64_t r0, uint64_t r1);
  // The write counted by Begin is over; seq is its number in the store's
  // count of writes (a flush covering seq covers it).
  void End(uint64_t r0, uint64_t r1, uint64_t seq);
  // Clears the regions with no write in progress, every write covered by
  // `flushed` and (unless `all`) idle long enough; scans at most once per
  // scan interval unless `all`. The file is written, not synced.
  void ClearIdle(uint64_t flushed, bool all);
  // fdatasync of the file; for Close, after ClearIdle(all). Failure is ignored:
  // a clear that was lost leaves a region marked, nothing worse.
  void SyncQuietly();
  void SetIdle(int64_t ms);

 private:
  struct Region {
    uint64_t gen = 0;       // mark_gen_ when its mark was written
    uint64_t last_seq = 0;  // highest seq of a write that ended in it
    int64_t last_ns = 0;    // when that write ended
    uint32_t active = 0;    // writes begun and not ended
  };

  void Sync(uint64_t gen);
  void EndLocked(uint64_t r0, uint64_t r1, uint64_t seq, int64_t now);

  const std::string path_;
  const int fd_;
  SyncHealth* const health_;
  std::atomic<int64_t> idle_ns_;

  std::mutex mu_;  // marked_, the file's bytes, mark_gen_
  std::unordered_map<uint64_t, Region> marked_;
  uint64_t mark_gen_ = 0;
  int64_t last_scan_ns_ = 0;

  std::mutex sync_mu_;  // one fdatasync at a time; later writers share it
  std::atomic<uint64_t> durable_gen_{0};
};

// An empty map for `regions` regions, durably: a header, then a zero byte per region.
void InitIntentFile(int fd, const std::string& path, uint64_t regions);
// The regions an intent file marks, ascending; false when the file is not a
// map of `regions` regions (then every region must be taken as marked).
bool ReadIntentFile(int fd, const std::string& path, uint64_t regions, std::vector<uint64_t>* marked);
// Zeroes the marks of `regions` (ascending), one pwrite per run of adjacent regions.
void WriteClears(int fd, const std::string& path, const std::vector<uint64_t>& regions);

}  // namespace pxd

#endif  // PXD_NATIVE_INTENT_MAP_H_
