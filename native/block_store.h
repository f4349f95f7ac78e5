// One replica on disk: a data file, a checksum file holding one
// little-endian crc32c per block, and a write-intent map (IntentMap). All
// methods block and are meant to run on worker threads; they are safe to
// call concurrently. Lifetime and "closed" bookkeeping live in the addon
// layer, which calls Close() only once no other call is running.
//
// Snapshots: a store may read through base layers, the data and crc files of
// frozen snapshots, nearest first (redirect-on-write, see block_layers.cc).
// Writes only ever go to the store's own ("live") files; with bases, a live
// crc 0 means "absent here, look below" and only the bottom layer keeps crc 0
// as zeros. A read-only store (a snapshot read through its parents) has no
// intent map and refuses writes.
#ifndef PXD_NATIVE_BLOCK_STORE_H_
#define PXD_NATIVE_BLOCK_STORE_H_

#include <cstddef>
#include <cstdint>
#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "direct_io.h"
#include "intent_map.h"
#include "store_io.h"

namespace pxd {

// What BlockStore::Open adds to a plain store of one layer.
struct StoreOptions {
  // Files opened O_RDONLY, no intent map; writes and discards fail EROFS.
  bool read_only = false;
  // Base layers' data and crc paths, nearest first. Each may be smaller than
  // the store (blocks past its end are absent in it), never larger.
  std::vector<std::pair<std::string, std::string>> bases;
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
                                          bool create,
                                          const StoreOptions& options = StoreOptions());
  // Copies into the data and crc files of frozen layer `into` every block
  // that `from` has (crc non-zero) and `into` lacks (crc 0): all data, an
  // fdatasync, then the crc entries and an fdatasync, so a crash in between
  // leaves `into` reading those blocks from `from` still. `from` is the layer
  // right below `into`, which has at least as many blocks. With `overwrite`
  // every block `from` has is copied, over `into`'s own (a collapse: `into` is
  // the layer right below `from` and takes its place after). Throws StoreError.
  static void LayerMerge(const std::string& from_data, const std::string& from_crc,
                         const std::string& into_data, const std::string& into_crc,
                         int64_t block_size, bool overwrite = false);
  ~BlockStore();

  BlockStore(const BlockStore&) = delete;
  BlockStore& operator=(const BlockStore&) = delete;

  uint64_t size() const { return size_; }
  uint32_t block_size() const { return block_size_; }
  const std::string& data_path() const { return data_path_; }
  const Recovery& recovery() const { return recovery_; }
  // The O_DIRECT descriptor of the data file, -1 when it stays buffered (for tests).
  int direct_fd() const { return direct_.fd(); }
  bool read_only() const { return read_only_; }

  void Write(int64_t offset, const uint8_t* data, size_t len);
  void Read(int64_t offset, uint8_t* data, size_t len);
  // XXH3-64 of each block of a block-aligned range as read (through the
  // bases), 8 little-endian bytes per block into `out`, 0 for a block that
  // reads as zeros by its crc entry (see block_hashes.cc: replicas compare
  // these, never their crcs).
  // With `data` (len bytes), the range as Read returns it goes there too,
  // checked (ECHECKSUM) as Read checks it.
  void Hashes(int64_t offset, uint64_t len, uint8_t* out, uint8_t* data = nullptr);
  // The range reads back as zeros from now on: whole blocks get crc 0 (never
  // written; with bases the crc of zeros, so they do not fall through) and
  // are punched out of the data file, so the host gets their space back; the
  // parts of blocks at either end are written with zeros. Marked in the
  // intent map like a write (see block_discard.cc).
  void Discard(int64_t offset, uint64_t len);
  // Copies every block the nearest base has and the live layer lacks into
  // the live layer, then syncs both files: afterwards the store reads the
  // same without that base, which leaves its chain (a next MergeBase takes
  // the one below). EINVAL without bases, EROFS when read-only.
  void MergeBase();
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
  // A base layer: a frozen snapshot's files, open read-only.
  struct Layer {
    std::string data_path, crc_path;
    int data_fd = -1, crc_fd = -1;
    uint64_t blocks = 0;  // its crc entries; blocks past them are absent in it
    Layer() = default;
    Layer(Layer&& other) noexcept;
    Layer& operator=(Layer&& other) noexcept;
    ~Layer() { Close(); }
    void Close();
  };
  // Where the blocks [first, first + count) of a request are in memory: head
  // and tail are bounce buffers (or null), the blocks between them follow
  // one another at mid.
  struct Slots {
    uint64_t first, count;
    uint8_t* head;
    uint8_t* mid;
    uint8_t* tail;
    uint8_t* At(uint64_t block, uint32_t shift) const;
  };

  BlockStore(std::string data_path, std::string crc_path,
             std::string intent_path, int data_fd, int crc_fd, int intent_fd,
             uint64_t size, uint32_t block_size, bool read_only,
             std::vector<Layer> bases);

  class StripeLock;

  // Opens the bases for a store of `size` bytes. Throws StoreError.
  static std::vector<Layer> OpenLayers(
      const std::vector<std::pair<std::string, std::string>>& paths,
      uint64_t size, uint32_t block_size);
  // EROFS for a read-only store.
  void CheckWritable(const char* op) const;
  // Fills the blocks whose live crc entry is 0 from the bases (zeros where no
  // base has them) and sets their entries to the crc of the layer each came
  // from (0 for zeros); checks them against it when `verify`.
  void ResolveAbsent(const Slots& slots, uint32_t* crcs, bool verify) const;
  // One whole block as it reads, checked: the old block a partial write merges.
  void ReadOld(uint64_t block, uint8_t* buf) const;

  void CheckRange(int64_t offset, uint64_t len, const char* op) const;
  struct Span {
    uint64_t off, end, first, last, count;
    bool head_partial, tail_partial;
  };
  Span SpanOf(int64_t offset, size_t len) const;
  // Whether a block's data matches its stored crc entry.
  bool Matches(const uint8_t* data, uint32_t stored) const;
  // ECHECKSUM naming `path` (the data file by default) on a mismatch.
  void VerifyBlock(uint64_t block, const uint8_t* data, uint32_t stored,
                   const std::string* path = nullptr) const;
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
  // zeros and one never written look the same; with bases the crc of zeros, so
  // that it does not read through to them.
  uint32_t BlockCrc(const uint8_t* data) const;
  // Zeros over bytes [from, to) of one block, merged like a partial write.
  void ZeroPart(uint64_t block, uint64_t from, uint64_t to);
  // Blocks [first, end) become unwritten: crc 0 (with bases the crc of
  // zeros), their data punched out.
  void Unwrite(uint64_t first, uint64_t end);
  void ReadCrcs(uint64_t first, uint64_t count, uint32_t* out) const;
  void WriteCrcs(uint64_t first, uint64_t count, const uint32_t* crcs) const;

  const std::string data_path_;
  const std::string crc_path_;
  const std::string intent_path_;
  int data_fd_;
  // The data file again, O_DIRECT, for large transfers (direct_io.h).
  DirectIo direct_;
  int crc_fd_;
  int intent_fd_;
  const uint64_t size_;
  const uint32_t block_size_;
  const uint32_t block_shift_;
  uint32_t zero_block_crc_ = 0;
  const bool read_only_;
  // Nearest first; empty for a store of one layer. Read under a stripe lock;
  // changed (MergeBase) only under all of them.
  std::vector<Layer> bases_;
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
