// One replica on disk: a data file plus a checksum file holding one
// little-endian crc32c per block. All methods block and are meant to run on
// worker threads; they are safe to call concurrently. Lifetime and "closed"
// bookkeeping live in the addon layer, which calls Close() only once no
// other call is running.
#ifndef PXD_NATIVE_BLOCK_STORE_H_
#define PXD_NATIVE_BLOCK_STORE_H_

#include <cstddef>
#include <cstdint>
#include <atomic>
#include <memory>
#include <shared_mutex>
#include <string>

namespace pxd {

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

class BlockStore {
 public:
  // Throws StoreError.
  static std::unique_ptr<BlockStore> Open(const std::string& data_path,
                                          const std::string& crc_path,
                                          int64_t size, int64_t block_size,
                                          bool create);
  ~BlockStore();

  BlockStore(const BlockStore&) = delete;
  BlockStore& operator=(const BlockStore&) = delete;

  uint64_t size() const { return size_; }
  uint32_t block_size() const { return block_size_; }
  const std::string& data_path() const { return data_path_; }

  void Write(int64_t offset, const uint8_t* data, size_t len);
  void Read(int64_t offset, uint8_t* data, size_t len);
  // A flush is an fdatasync of both files, skipped when nothing was written
  // since the last one that covered every write: take WriteSeq() first, skip
  // if IsFlushed(seq), else run SyncData and SyncCrc (they may run in
  // parallel) and then MarkFlushed(seq).
  uint64_t WriteSeq() const { return write_seq_.load(std::memory_order_acquire); }
  bool IsFlushed(uint64_t seq) const { return flushed_seq_.load(std::memory_order_acquire) >= seq; }
  void MarkFlushed(uint64_t seq);
  void SyncData();
  void SyncCrc();
  void Close();

 private:
  BlockStore(std::string data_path, std::string crc_path, int data_fd,
             int crc_fd, uint64_t size, uint32_t block_size);

  class StripeLock;

  void CheckRange(int64_t offset, uint64_t len, const char* op) const;
  struct Span {
    uint64_t off, end, first, last, count;
    bool head_partial, tail_partial;
  };
  Span SpanOf(int64_t offset, size_t len) const;
  void VerifyBlock(uint64_t block, const uint8_t* data, uint32_t stored) const;
  // The crc entry to store for a block: 0 for an all-zero block, so a block written as
  // zeros and one never written look the same (replicas compare crc files in resync).
  uint32_t BlockCrc(const uint8_t* data) const;
  void ReadCrcs(uint64_t first, uint64_t count, uint32_t* out) const;
  void WriteCrcs(uint64_t first, uint64_t count, const uint32_t* crcs) const;

  const std::string data_path_;
  const std::string crc_path_;
  int data_fd_;
  int crc_fd_;
  const uint64_t size_;
  const uint32_t block_size_;
  const uint32_t block_shift_;
  uint32_t zero_block_crc_ = 0;
  std::unique_ptr<std::shared_mutex[]> stripes_;
  // Writes that completed, and the count a finished flush covered.
  // Starts unflushed: pages an earlier process left dirty must be synced too.
  std::atomic<uint64_t> write_seq_{1};
  std::atomic<uint64_t> flushed_seq_{0};
};

}  // namespace pxd

#endif  // PXD_NATIVE_BLOCK_STORE_H_
