// See store_io.h.
#include "store_io.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

namespace pxd {
namespace {

struct ErrnoName {
  int err;
  const char* code;
};

// Keep in step with NativeErrorCode in src/native/binding.ts.
const ErrnoName kErrnoNames[] = {
    {EPERM, "EPERM"},
    {ENOENT, "ENOENT"},
    {EINTR, "EINTR"},
    {EIO, "EIO"},
    {ENXIO, "ENXIO"},
    {EBADF, "EBADF"},
    {EAGAIN, "EAGAIN"},
    {ENOMEM, "ENOMEM"},
    {EACCES, "EACCES"},
    {EFAULT, "EFAULT"},
    {EBUSY, "EBUSY"},
    {EEXIST, "EEXIST"},
    {ENODEV, "ENODEV"},
    {ENOTDIR, "ENOTDIR"},
    {EISDIR, "EISDIR"},
    {EINVAL, "EINVAL"},
    {ENFILE, "ENFILE"},
    {EMFILE, "EMFILE"},
    {ETXTBSY, "ETXTBSY"},
    {EFBIG, "EFBIG"},
    {ENOSPC, "ENOSPC"},
    {ESPIPE, "ESPIPE"},
    {EROFS, "EROFS"},
    {ERANGE, "ERANGE"},
    {ENAMETOOLONG, "ENAMETOOLONG"},
    {ENOSYS, "ENOSYS"},
    {ELOOP, "ELOOP"},
    {EOVERFLOW, "EOVERFLOW"},
    {EOPNOTSUPP, "EOPNOTSUPP"},
    {EDQUOT, "EDQUOT"},
    {ESTALE, "ESTALE"},
};

}  // namespace

StoreError Failure(const char* code, std::string message,
                   const std::string& path) {
  StoreError e;
  e.code = code;
  e.message = std::move(message);
  e.path = path;
  return e;
}

StoreError OsFailure(const char* syscall, const std::string& path, int err) {
  char buf[256];
  // GNU strerror_r: thread-safe, may return a static string instead of buf.
  const char* text = strerror_r(err, buf, sizeof buf);
  StoreError e;
  e.code = ErrnoCode(err);
  e.message = std::string(syscall) + " failed on " + path + ": " + text;
  e.os_errno = err;
  e.syscall = syscall;
  e.path = path;
  return e;
}

void AdvanceIov(iovec*& iov, int& cnt, size_t n) {
  while (cnt > 0 && n >= iov->iov_len) {
    n -= iov->iov_len;
    iov++;
    cnt--;
  }
  if (cnt > 0 && n > 0) {
    iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + n;
    iov->iov_len -= n;
  }
}

void FullPreadv(int fd, iovec* iov, int cnt, uint64_t off,
                const std::string& path) {
  AdvanceIov(iov, cnt, 0);
  while (cnt > 0) {
    ssize_t n = cnt == 1 ? ::pread(fd, iov->iov_base, iov->iov_len, off)
                         : ::preadv(fd, iov, cnt, off);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw OsFailure(cnt == 1 ? "pread" : "preadv", path, errno);
    }
    if (n == 0) {
      throw Failure("EIO", "unexpected end of file at offset " +
                               std::to_string(off) + " of " + path +
                               " (was the file truncated?)",
                    path);
    }
    off += n;
    AdvanceIov(iov, cnt, n);
  }
}

void FullPwritev(int fd, iovec* iov, int cnt, uint64_t off,
                 const std::string& path) {
  AdvanceIov(iov, cnt, 0);
  while (cnt > 0) {
    ssize_t n = cnt == 1 ? ::pwrite(fd, iov->iov_base, iov->iov_len, off)
                         : ::pwritev(fd, iov, cnt, off);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw OsFailure(cnt == 1 ? "pwrite" : "pwritev", path, errno);
    }
    if (n == 0) {
      throw Failure("EIO", "pwrite made no progress at offset " +
                               std::to_string(off) + " of " + path,
                    path);
    }
    off += n;
    AdvanceIov(iov, cnt, n);
  }
}

void FullPread(int fd, void* buf, size_t len, uint64_t off,
               const std::string& path) {
  iovec iov{buf, len};
  FullPreadv(fd, &iov, 1, off, path);
}

void FullPwrite(int fd, const void* buf, size_t len, uint64_t off,
                const std::string& path) {
  iovec iov{const_cast<void*>(buf), len};
  FullPwritev(fd, &iov, 1, off, path);
}

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

void Fdatasync(int fd, const std::string& path) {
  if (::fdatasync(fd) != 0) throw OsFailure("fdatasync", path, errno);
}

// Makes a new name in the directory of `path` durable.
void SyncDirOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw OsFailure("open", dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw OsFailure("fsync", dir, err);
}

const char* ErrnoCode(int err) {
  for (const auto& e : kErrnoNames) {
    if (e.err == err) return e.code;
  }
  return "EIO";
}

// ---- SyncHealth ------------------------------------------------------------

void SyncHealth::Check() const {
  if (!failed()) return;
  std::lock_guard<std::mutex> lock(mu_);
  StoreError e;
  e.code = "EIO";
  e.message = "an earlier flush failed (" + first_.message +
              "): writes since the last good flush may be lost, so the "
              "replica needs a resync";
  e.os_errno = first_.os_errno;
  e.syscall = first_.syscall;
  e.path = first_.path;
  throw e;
}

void SyncHealth::Fail(const StoreError& e) {
  std::lock_guard<std::mutex> lock(mu_);
  if (failed_.load(std::memory_order_relaxed)) return;
  first_ = e;
  failed_.store(true, std::memory_order_release);
}
}  // namespace pxd
