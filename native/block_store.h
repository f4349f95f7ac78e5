// One replica on disk: a data file, a checksum file holding one
// little-endian crc32c per block, and a write-intent map (IntentMap). All
// methods block and are meant to run on worker threads; they are safe to
// call concurrently. Lifetime and "closed" bookkeeping live in the addon
// layer, which calls Close() only once no other call is running.
#ifndef PXD_NATIVE_BLOCK_STORE_H_
#define PXD_NATIVE_BLOCK_STORE_H_

#include <cstddef>
#include <cstdint>
#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace pxd {

constexpr uint32_t kIntentRegionShift = 20;  // 1 MiB regions

// A failure with a string code ('EIO', 'ECHECKSUM', ...). os_errno and
// syscall are set when a system call failed; block when a checksum did not
// match.
struct StoreError {
  std::string code;
  std::string message;
  int os_errno = 0;
  std::string syscall;
  std::string path;
  int64_t block = -1;
};

// Maps an errno value to its symbolic name, 'EIO' when not in the table.
const char* ErrnoCode(int err);

// Whether an fdatasync of a store's files ever failed. Linux reports a
// write-back error once: the next fdatasync succeeds and the lost pages are
// never written, so a store stays failed until it is reopened.
class SyncHealth {
 public:
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  // Throws EIO naming the first failure, if there was one.
  void Check() const;
  void Fail(const StoreError& e);

 private:
  std::atomic<bool> failed_{false};
  mutable std::mutex mu_;
  StoreError first_;
};

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

class BlockStore {
 public:
  // What Open found of a crash: the regions the intent map had marked, and
  // the blocks in them whose crc it rebuilt from their data.
  struct Recovery {
    uint64_t regions = 0;
    uint64_t blocks = 0;
  };

  // Opens (or with `create` makes) the data, crc and intent files. An intent
  // file that is missing is made (a replica from before it existed); regions
  // it has marked are recovered before Open returns. Throws StoreError.
  static std::unique_ptr<BlockStore> Open(const std::string& data_path,
                                          const std::string& crc_path,
                                          const std::string& intent_path,
                                          int64_t size, int64_t block_size,
                                          bool create);
  ~BlockStore();

  BlockStore(const BlockStore&) = delete;
  BlockStore& operator=(const BlockStore&) = delete;

  uint64_t size() const { return size_; }
  uint32_t block_size() const { return block_size_; }
  const std::string& data_path() const { return data_path_; }
  const Recovery& recovery() const { return recovery_; }

  void Write(int64_t offset, const uint8_t* data, size_t len);
  void Read(int64_t offset, uint8_t* data, size_t len);
  // A flush is an fdatasync of both files, skipped when nothing was written
  // since the last one that covered every write: take WriteSeq() first, skip
  // if IsFlushed(seq), else run SyncData and SyncCrc (they may run in
  // parallel) and then MarkFlushed(seq).
  uint64_t WriteSeq() const { return write_seq_.load(std::memory_order_acquire); }
  bool IsFlushed(uint64_t seq) const { return flushed_seq_.load(std::memory_order_acquire) >= seq; }
  // Also clears intent marks that are due (cheap when none is).
  void MarkFlushed(uint64_t seq);
  // Both fail (EIO) once any fdatasync of this store failed, until it is
  // reopened: the failed one lost pages that a later one would not write.
  void SyncData();
  void SyncCrc();
  bool SyncFailed() const { return health_.failed(); }
  // Clears regions that are due; for a flush that had nothing to do.
  void ClearIdle();
  // How long a flushed region stays marked after its last write.
  void SetIntentIdle(int64_t ms) { intent_->SetIdle(ms); }
  // Flushes what is unflushed, clears every mark and closes the files. After
  // a failed fdatasync the marks are left for the next open to recover.
  void Close();
  // Closes the files and leaves the marks: what a crash leaves (for tests).
  void Abandon();

 private:
  BlockStore(std::string data_path, std::string crc_path,
             std::string intent_path, int data_fd, int crc_fd, int intent_fd,
             uint64_t size, uint32_t block_size);

  class StripeLock;

  void CheckRange(int64_t offset, uint64_t len, const char* op) const;
  struct Span {
    uint64_t off, end, first, last, count;
    bool head_partial, tail_partial;
  };
  Span SpanOf(int64_t offset, size_t len) const;
  // Whether a block's data matches its stored crc entry.
  bool Matches(const uint8_t* data, uint32_t stored) const;
  void VerifyBlock(uint64_t block, const uint8_t* data, uint32_t stored) const;
  uint64_t RegionOf(uint64_t block) const {
    return (block << block_shift_) >> kIntentRegionShift;
  }
  // Rebuilds the crc of every block of `regions` that does not match it, makes
  // data and crc durable, then clears the marks. Throws StoreError.
  void Recover(const std::vector<uint64_t>& regions, bool reset_intent);
  // fdatasync of one of the files, serialized per file; a failure is sticky.
  void Sync(std::mutex& mu, int fd, const std::string& path);
  // Closes the three files; false with the first failure in *error.
  bool CloseFiles(StoreError* error);
  // The crc entry to store for a block: 0 for an all-zero block, so a block written as
  // zeros and one never written look the same (replicas compare crc files in resync).
  uint32_t BlockCrc(const uint8_t* data) const;
  void ReadCrcs(uint64_t first, uint64_t count, uint32_t* out) const;
  void WriteCrcs(uint64_t first, uint64_t count, const uint32_t* crcs) const;

  const std::string data_path_;
  const std::string crc_path_;
  const std::string intent_path_;
  int data_fd_;
  int crc_fd_;
  int intent_fd_;
  const uint64_t size_;
  const uint32_t block_size_;
  const uint32_t block_shift_;
  uint32_t zero_block_crc_ = 0;
  std::unique_ptr<std::shared_mutex[]> stripes_;
  // Writes that completed, and the count a finished flush covered.
  // Starts unflushed: pages an earlier process left dirty must be synced too.
  std::atomic<uint64_t> write_seq_{1};
  std::atomic<uint64_t> flushed_seq_{0};
  SyncHealth health_;
  std::mutex data_sync_mu_;
  std::mutex crc_sync_mu_;
  std::unique_ptr<IntentMap> intent_;
  Recovery recovery_;
};

}  // namespace pxd

#endif  // PXD_NATIVE_BLOCK_STORE_H_
