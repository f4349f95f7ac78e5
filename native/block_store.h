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
#include <vector>

#include "intent_map.h"
#include "store_io.h"

namespace pxd {

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
  // XXH3-64 of each block of a block-aligned range, 8 little-endian bytes per
  // block into `out`, 0 for a block whose crc entry is 0 (see block_hashes.cc:
  // replicas compare these, never their crcs).
  void Hashes(int64_t offset, uint64_t len, uint8_t* out);
  // The range reads back as zeros from now on: whole blocks get crc 0 (never
  // written) and are punched out of the data file, so the host gets their
  // space back; the parts of blocks at either end are written with zeros.
  // Marked in the intent map like a write (see block_discard.cc).
  void Discard(int64_t offset, uint64_t len);
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
  // Zeros over bytes [from, to) of one block, merged like a partial write.
  void ZeroPart(uint64_t block, uint64_t from, uint64_t to);
  // Blocks [first, end) become unwritten: crc 0, their data punched out.
  void Unwrite(uint64_t first, uint64_t end);
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
