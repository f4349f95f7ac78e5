// Blocking file I/O for the block store and its intent map: a failure as a
// StoreError with a string code, loops that move every byte, fdatasync, and
// SyncHealth, which keeps a failed fdatasync failed.
#ifndef PXD_NATIVE_STORE_IO_H_
#define PXD_NATIVE_STORE_IO_H_

#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
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

StoreError Failure(const char* code, std::string message,
                   const std::string& path = std::string());
StoreError OsFailure(const char* syscall, const std::string& path, int err);

// Skips the first `n` bytes of an iovec array (moves `iov`, lowers `cnt`, trims the first left).
void AdvanceIov(iovec*& iov, int& cnt, size_t n);

// pread/pwrite (or their vector forms) until every byte moved: retry EINTR and
// short transfers; throw StoreError.
void FullPreadv(int fd, iovec* iov, int cnt, uint64_t off, const std::string& path);
void FullPwritev(int fd, iovec* iov, int cnt, uint64_t off, const std::string& path);
void FullPread(int fd, void* buf, size_t len, uint64_t off, const std::string& path);
void FullPwrite(int fd, const void* buf, size_t len, uint64_t off, const std::string& path);

void Fdatasync(int fd, const std::string& path);
// Makes a new name in the directory of `path` durable.
void SyncDirOf(const std::string& path);
// A monotonic clock, coarse: for idle times.
int64_t NowNs();

}  // namespace pxd

#endif  // PXD_NATIVE_STORE_IO_H_
