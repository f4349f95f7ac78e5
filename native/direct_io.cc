// See direct_io.h.
#include "direct_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "store_io.h"

namespace pxd {
namespace {

constexpr size_t kPageBytes = 4096;
constexpr size_t kBounceBytes = 1 << 20;
// iovecs taken as they are (a store's request has at most three).
constexpr int kMaxPieces = 4;

// This thread's bounce buffer, made at its first use and kept.
uint8_t* Bounce() {
  thread_local AlignedBuffer buf = AllocAligned(kBounceBytes);
  return buf.get();
}

// Copies bytes [from, from + n) of the iovecs' concatenation to or from `flat`.
void Gather(const iovec* iov, int cnt, size_t from, uint8_t* flat, size_t n, bool into_flat) {
  for (int i = 0; i < cnt && n > 0; i++) {
    const size_t len = iov[i].iov_len;
    if (from >= len) {
      from -= len;
      continue;
    }
    const size_t take = std::min(len - from, n);
    uint8_t* base = static_cast<uint8_t*>(iov[i].iov_base) + from;
    if (into_flat) {
      std::memcpy(flat, base, take);
    } else {
      std::memcpy(base, flat, take);
    }
    flat += take;
    n -= take;
    from = 0;
  }
}

}  // namespace

void FreeDeleter::operator()(uint8_t* p) const { std::free(p); }

AlignedBuffer AllocAligned(size_t bytes) {
  // aligned_alloc wants a size that is a multiple of the alignment.
  const size_t rounded = (bytes + kPageBytes - 1) / kPageBytes * kPageBytes;
  return AlignedBuffer(static_cast<uint8_t*>(std::aligned_alloc(kPageBytes, rounded)));
}

void DirectIo::Open(int fd, bool writable) {
  Close();
  const std::string self = "/proc/self/fd/" + std::to_string(fd);
  const int direct = ::open(self.c_str(), (writable ? O_RDWR : O_RDONLY) | O_DIRECT | O_CLOEXEC);
  if (direct < 0) return;  // refused: buffered it is
  struct statx stx{};
  if (::statx(direct, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
      (stx.stx_mask & STATX_DIOALIGN) != 0) {
    if (stx.stx_dio_mem_align == 0 || stx.stx_dio_offset_align == 0) {
      ::close(direct);  // the file system says: no direct I/O on this file
      return;
    }
    mem_align_ = stx.stx_dio_mem_align;
    off_align_ = std::max<uint32_t>(stx.stx_dio_offset_align, kPageBytes);
  }
  fd_ = direct;
  refused_.store(false, std::memory_order_relaxed);
}

void DirectIo::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool DirectIo::Qualifies(uint64_t off, size_t len) const {
  return on() && len >= kDirectMinBytes && off % off_align_ == 0 && len % off_align_ == 0 &&
         off_align_ <= kBounceBytes;
}

bool DirectIo::Aligned(const iovec* iov, int cnt) const {
  for (int i = 0; i < cnt; i++) {
    if (reinterpret_cast<uintptr_t>(iov[i].iov_base) % mem_align_ != 0 ||
        iov[i].iov_len % off_align_ != 0) {
      return false;
    }
  }
  return true;
}

bool DirectIo::Transfer(bool write, const iovec* iov, int cnt, uint64_t off, size_t len,
                        const std::string& path) {
  if (!Qualifies(off, len)) return false;
  const bool done = cnt <= kMaxPieces && Aligned(iov, cnt) ? Move(write, iov, cnt, off, path)
                                      : Bounced(write, iov, cnt, off, len, path);
  if (!done) refused_.store(true, std::memory_order_relaxed);
  return done;
}

bool DirectIo::Move(bool write, const iovec* iov, int cnt, uint64_t off, const std::string& path) {
  iovec local[kMaxPieces];
  std::copy(iov, iov + cnt, local);
  iovec* cur = local;
  while (cnt > 0) {
    const ssize_t n = write ? (cnt == 1 ? ::pwrite(fd_, cur->iov_base, cur->iov_len, off)
                                        : ::pwritev(fd_, cur, cnt, off))
                            : (cnt == 1 ? ::pread(fd_, cur->iov_base, cur->iov_len, off)
                                        : ::preadv(fd_, cur, cnt, off));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL) return false;
      throw OsFailure(write ? "pwrite (direct)" : "pread (direct)", path, errno);
    }
    if (n == 0) {
      throw Failure("EIO", std::string(write ? "direct write made no progress" : "unexpected end of file") +
                               " at offset " + std::to_string(off) + " of " + path,
                    path);
    }
    off += static_cast<uint64_t>(n);
    AdvanceIov(cur, cnt, static_cast<size_t>(n));
    // After a short transfer that ended mid-piece, what is left may not be aligned.
    if (cnt > 0 && !Aligned(cur, cnt)) return false;
  }
  return true;
}

bool DirectIo::Bounced(bool write, const iovec* iov, int cnt, uint64_t off, size_t len,
                       const std::string& path) {
  uint8_t* bounce = Bounce();
  if (bounce == nullptr) return false;
  for (size_t done = 0; done < len;) {
    const size_t n = std::min(kBounceBytes, len - done);
    iovec piece{bounce, n};
    if (write) Gather(iov, cnt, done, bounce, n, true);
    if (!Move(write, &piece, 1, off + done, path)) return false;
    if (!write) Gather(iov, cnt, done, bounce, n, false);
    done += n;
  }
  return true;
}

}  // namespace pxd
