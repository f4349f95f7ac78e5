// Block store: data file + crc file, checked on every read.
//
// Consistency: a block's data and its crc entry are written by two separate
// system calls, so every request holds striped reader/writer locks covering
// its blocks: reads shared, writes exclusive. Blocks are grouped in regions
// of kRegionBlocks; region r maps to stripe r % kStripes. A request locks its
// stripes in ascending order, each once, so two requests never wait on each
// other in a cycle.
//
// Partial-block writes read the old block back and verify it before merging,
// so a corrupt block is reported instead of being re-checksummed.
#include "block_store.h"

#include <endian.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "crc32c.h"

namespace pxd {
namespace {

// Counts a write as done when it leaves, failed or not: either way
// it may have left dirty pages that the next flush must sync.
struct CountWrite {
  explicit CountWrite(std::atomic<uint64_t>& seq) : seq_(seq) {}
  ~CountWrite() { seq_.fetch_add(1, std::memory_order_release); }
  std::atomic<uint64_t>& seq_;
};

constexpr uint32_t kMinBlockSize = 512;
constexpr uint32_t kMaxBlockSize = 65536;
constexpr uint32_t kRegionShift = 5;  // 32 blocks per region
constexpr size_t kStripes = 1024;
constexpr uint64_t kMaxSize = 1ull << 53;  // offsets arrive as JS numbers

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

StoreError Failure(const char* code, std::string message,
                   const std::string& path = std::string()) {
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

// Skips the first `n` bytes of an iovec array.
void Advance(iovec*& iov, int& cnt, size_t n) {
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

// preadv/pwritev until every byte moved: retries EINTR and short transfers.
void FullPreadv(int fd, iovec* iov, int cnt, uint64_t off,
                const std::string& path) {
  Advance(iov, cnt, 0);
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
    Advance(iov, cnt, n);
  }
}

void FullPwritev(int fd, iovec* iov, int cnt, uint64_t off,
                 const std::string& path) {
  Advance(iov, cnt, 0);
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
    Advance(iov, cnt, n);
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

bool AllZero(const uint8_t* p, size_t len) {
  constexpr size_t kStep = 256;
  for (size_t i = 0; i < len; i += kStep) {
    size_t n = std::min(kStep, len - i);
    uint64_t acc = 0;
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
      uint64_t w;
      std::memcpy(&w, p + i + j, 8);
      acc |= w;
    }
    for (; j < n; j++) acc |= p[i + j];
    if (acc != 0) return false;
  }
  return true;
}

std::unique_ptr<uint8_t[]> Bounce(uint32_t block_size) {
  return std::unique_ptr<uint8_t[]>(new uint8_t[block_size]);
}

}  // namespace

const char* ErrnoCode(int err) {
  for (const auto& e : kErrnoNames) {
    if (e.err == err) return e.code;
  }
  return "EIO";
}

// Locks the stripes covering blocks [first, last], ascending, each once.
class BlockStore::StripeLock {
 public:
  StripeLock(const BlockStore& store, uint64_t first, uint64_t last,
             bool exclusive)
      : mutexes_(store.stripes_.get()), exclusive_(exclusive) {
    uint64_t r0 = first >> kRegionShift;
    uint64_t r1 = last >> kRegionShift;
    if (r1 - r0 + 1 >= kStripes) {
      for (size_t i = 0; i < kStripes; i++) held_.push_back(i);
    } else {
      for (uint64_t r = r0; r <= r1; r++) held_.push_back(r % kStripes);
      std::sort(held_.begin(), held_.end());
    }
    for (size_t i : held_) {
      if (exclusive_) {
        mutexes_[i].lock();
      } else {
        mutexes_[i].lock_shared();
      }
    }
  }

  ~StripeLock() {
    for (auto it = held_.rbegin(); it != held_.rend(); ++it) {
      if (exclusive_) {
        mutexes_[*it].unlock();
      } else {
        mutexes_[*it].unlock_shared();
      }
    }
  }

  StripeLock(const StripeLock&) = delete;
  StripeLock& operator=(const StripeLock&) = delete;

 private:
  std::shared_mutex* mutexes_;
  bool exclusive_;
  std::vector<size_t> held_;
};

BlockStore::BlockStore(std::string data_path, std::string crc_path,
                       int data_fd, int crc_fd, uint64_t size,
                       uint32_t block_size)
    : data_path_(std::move(data_path)),
      crc_path_(std::move(crc_path)),
      data_fd_(data_fd),
      crc_fd_(crc_fd),
      size_(size),
      block_size_(block_size),
      block_shift_(static_cast<uint32_t>(__builtin_ctz(block_size))),
      stripes_(new std::shared_mutex[kStripes]) {
  std::vector<uint8_t> zeros(block_size_, 0);
  zero_block_crc_ = Crc32c(zeros.data(), block_size_);
}

BlockStore::~BlockStore() {
  if (data_fd_ >= 0) ::close(data_fd_);
  if (crc_fd_ >= 0) ::close(crc_fd_);
}

std::unique_ptr<BlockStore> BlockStore::Open(const std::string& data_path,
                                             const std::string& crc_path,
                                             int64_t size, int64_t block_size,
                                             bool create) {
  if (block_size < kMinBlockSize || block_size > kMaxBlockSize ||
      (block_size & (block_size - 1)) != 0) {
    throw Failure("EINVAL", "block size " + std::to_string(block_size) +
                                " is not a power of two between 512 and 65536");
  }
  if (size <= 0 || static_cast<uint64_t>(size) > kMaxSize ||
      size % block_size != 0) {
    throw Failure("EINVAL", "store size " + std::to_string(size) +
                                " is not a positive multiple of the block "
                                "size " +
                                std::to_string(block_size) + " (at most 2^53)");
  }
  const uint64_t blocks = static_cast<uint64_t>(size / block_size);
  const uint64_t crc_size = blocks * 4;
  const int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0);

  int data_fd = -1;
  int crc_fd = -1;
  bool data_created = false;
  bool crc_created = false;
  // Undo a half-done open; a failed create leaves no files behind.
  auto fail = [&](StoreError e) -> StoreError {
    if (data_fd >= 0) ::close(data_fd);
    if (crc_fd >= 0) ::close(crc_fd);
    if (crc_created) ::unlink(crc_path.c_str());
    if (data_created) ::unlink(data_path.c_str());
    return e;
  };

  data_fd = ::open(data_path.c_str(), flags, 0600);
  if (data_fd < 0) throw fail(OsFailure("open", data_path, errno));
  data_created = create;
  crc_fd = ::open(crc_path.c_str(), flags, 0600);
  if (crc_fd < 0) throw fail(OsFailure("open", crc_path, errno));
  crc_created = create;

  if (create) {
    if (::ftruncate(data_fd, size) != 0) {
      throw fail(OsFailure("ftruncate", data_path, errno));
    }
    if (::ftruncate(crc_fd, static_cast<off_t>(crc_size)) != 0) {
      throw fail(OsFailure("ftruncate", crc_path, errno));
    }
  } else {
    struct stat st;
    if (::fstat(data_fd, &st) != 0) {
      throw fail(OsFailure("fstat", data_path, errno));
    }
    if (!S_ISREG(st.st_mode)) {
      throw fail(Failure("EINVAL", data_path + " is not a regular file",
                         data_path));
    }
    if (static_cast<uint64_t>(st.st_size) != static_cast<uint64_t>(size)) {
      throw fail(Failure("EINVAL", "data file " + data_path + " has " +
                                       std::to_string(st.st_size) +
                                       " bytes, expected " +
                                       std::to_string(size),
                         data_path));
    }
    if (::fstat(crc_fd, &st) != 0) {
      throw fail(OsFailure("fstat", crc_path, errno));
    }
    if (!S_ISREG(st.st_mode)) {
      throw fail(
          Failure("EINVAL", crc_path + " is not a regular file", crc_path));
    }
    if (static_cast<uint64_t>(st.st_size) != crc_size) {
      throw fail(Failure("EINVAL", "checksum file " + crc_path + " has " +
                                       std::to_string(st.st_size) +
                                       " bytes, expected " +
                                       std::to_string(crc_size) + " (4 per " +
                                       std::to_string(block_size) +
                                       "-byte block)",
                         crc_path));
    }
  }
  return std::unique_ptr<BlockStore>(
      new BlockStore(data_path, crc_path, data_fd, crc_fd,
                     static_cast<uint64_t>(size),
                     static_cast<uint32_t>(block_size)));
}

void BlockStore::CheckRange(int64_t offset, uint64_t len,
                            const char* op) const {
  if (offset < 0 || static_cast<uint64_t>(offset) > size_ ||
      len > size_ - static_cast<uint64_t>(offset)) {
    throw Failure("ERANGE", std::string(op) + " of " + std::to_string(len) +
                                " bytes at offset " + std::to_string(offset) +
                                " is outside " + data_path_ + " (size " +
                                std::to_string(size_) + ")",
                  data_path_);
  }
}

uint32_t BlockStore::BlockCrc(const uint8_t* data) const {
  const uint32_t c = Crc32c(data, block_size_);
  // Only a block whose crc equals that of zeros can be all zero: test just those.
  if (c == zero_block_crc_ && AllZero(data, block_size_)) return 0;
  return c;
}

void BlockStore::VerifyBlock(uint64_t block, const uint8_t* data,
                             uint32_t stored) const {
  // crc 0 with all-zero data is a block never written.
  if (stored == 0 && AllZero(data, block_size_)) return;
  if (Crc32c(data, block_size_) == stored) return;
  StoreError e = Failure("ECHECKSUM", "checksum mismatch in block " +
                                          std::to_string(block) + " of " +
                                          data_path_,
                         data_path_);
  e.block = static_cast<int64_t>(block);
  throw e;
}

void BlockStore::ReadCrcs(uint64_t first, uint64_t count,
                          uint32_t* out) const {
  FullPread(crc_fd_, out, count * 4, first * 4, crc_path_);
  for (uint64_t i = 0; i < count; i++) out[i] = le32toh(out[i]);
}

void BlockStore::WriteCrcs(uint64_t first, uint64_t count,
                           const uint32_t* crcs) const {
  // crcs are already little-endian.
  FullPwrite(crc_fd_, crcs, count * 4, first * 4, crc_path_);
}

BlockStore::Span BlockStore::SpanOf(int64_t offset, size_t len) const {
  // Which blocks [offset, offset+len) touches, and whether its first and last block
  // are only partly covered (those go through bounce buffers in Read and Write).
  const uint64_t bs = block_size_;
  Span sp;
  sp.off = static_cast<uint64_t>(offset);
  sp.end = sp.off + len;
  sp.first = sp.off >> block_shift_;
  sp.last = (sp.end - 1) >> block_shift_;
  sp.count = sp.last - sp.first + 1;
  sp.head_partial = (sp.off & (bs - 1)) != 0 || sp.end < (sp.first + 1) * bs;
  sp.tail_partial = sp.last != sp.first && (sp.end & (bs - 1)) != 0;
  return sp;
}

void BlockStore::Write(int64_t offset, const uint8_t* data, size_t len) {
  CheckRange(offset, len, "write");
  if (len == 0) return;
  CountWrite counted(write_seq_);
  const uint64_t bs = block_size_;
  const Span sp = SpanOf(offset, len);
  const uint64_t off = sp.off, end = sp.end, first = sp.first, last = sp.last, count = sp.count;
  const bool head_partial = sp.head_partial;
  const bool tail_partial = sp.tail_partial;

  std::vector<uint32_t> crcs(count);
  std::unique_ptr<uint8_t[]> head;
  std::unique_ptr<uint8_t[]> tail;
  StripeLock lock(*this, first, last, true);

  if (head_partial) {
    head = Bounce(block_size_);
    uint32_t stored;
    ReadCrcs(first, 1, &stored);
    FullPread(data_fd_, head.get(), bs, first * bs, data_path_);
    VerifyBlock(first, head.get(), stored);
    uint64_t n = std::min(end, (first + 1) * bs) - off;
    std::memcpy(head.get() + (off - first * bs), data, n);
  }
  if (tail_partial) {
    tail = Bounce(block_size_);
    uint32_t stored;
    ReadCrcs(last, 1, &stored);
    FullPread(data_fd_, tail.get(), bs, last * bs, data_path_);
    VerifyBlock(last, tail.get(), stored);
    std::memcpy(tail.get(), data + (last * bs - off), end - last * bs);
  }

  iovec iov[3];
  int cnt = 0;
  uint64_t mid_first = head ? first + 1 : first;
  uint64_t mid_end = tail ? last : last + 1;  // exclusive
  if (head) {
    iov[cnt++] = {head.get(), bs};
    crcs[0] = htole32(BlockCrc(head.get()));
  }
  if (mid_end > mid_first) {
    const uint8_t* p = data + (mid_first * bs - off);
    iov[cnt++] = {const_cast<uint8_t*>(p), (mid_end - mid_first) * bs};
    for (uint64_t b = mid_first; b < mid_end; b++, p += bs) {
      crcs[b - first] = htole32(BlockCrc(p));
    }
  }
  if (tail) {
    iov[cnt++] = {tail.get(), bs};
    crcs[count - 1] = htole32(BlockCrc(tail.get()));
  }
  FullPwritev(data_fd_, iov, cnt, first * bs, data_path_);
  WriteCrcs(first, count, crcs.data());
}

void BlockStore::Read(int64_t offset, uint8_t* data, size_t len) {
  CheckRange(offset, len, "read");
  if (len == 0) return;
  const uint64_t bs = block_size_;
  const Span sp = SpanOf(offset, len);
  const uint64_t off = sp.off, end = sp.end, first = sp.first, last = sp.last, count = sp.count;
  const bool head_partial = sp.head_partial;
  const bool tail_partial = sp.tail_partial;

  // Partial blocks go through bounce buffers so that only verified bytes
  // ever reach the caller's buffer.
  std::vector<uint32_t> crcs(count);
  std::unique_ptr<uint8_t[]> head;
  std::unique_ptr<uint8_t[]> tail;
  if (head_partial) head = Bounce(block_size_);
  if (tail_partial) tail = Bounce(block_size_);

  iovec iov[3];
  int cnt = 0;
  uint64_t mid_first = head ? first + 1 : first;
  uint64_t mid_end = tail ? last : last + 1;
  uint8_t* mid = mid_end > mid_first ? data + (mid_first * bs - off) : nullptr;
  if (head) iov[cnt++] = {head.get(), bs};
  if (mid) iov[cnt++] = {mid, (mid_end - mid_first) * bs};
  if (tail) iov[cnt++] = {tail.get(), bs};

  StripeLock lock(*this, first, last, false);
  ReadCrcs(first, count, crcs.data());
  FullPreadv(data_fd_, iov, cnt, first * bs, data_path_);

  if (head) VerifyBlock(first, head.get(), crcs[0]);
  for (uint64_t b = mid_first; b < mid_end; b++) {
    VerifyBlock(b, mid + (b - mid_first) * bs, crcs[b - first]);
  }
  if (tail) VerifyBlock(last, tail.get(), crcs[count - 1]);

  if (head) {
    uint64_t n = std::min(end, (first + 1) * bs) - off;
    std::memcpy(data, head.get() + (off - first * bs), n);
  }
  if (tail) {
    std::memcpy(data + (last * bs - off), tail.get(), end - last * bs);
  }
}

void BlockStore::SyncData() {
  if (::fdatasync(data_fd_) != 0) throw OsFailure("fdatasync", data_path_, errno);
}

void BlockStore::SyncCrc() {
  if (::fdatasync(crc_fd_) != 0) throw OsFailure("fdatasync", crc_path_, errno);
}

void BlockStore::MarkFlushed(uint64_t seq) {
  uint64_t cur = flushed_seq_.load(std::memory_order_relaxed);
  while (cur < seq && !flushed_seq_.compare_exchange_weak(cur, seq, std::memory_order_acq_rel)) {
  }
}

void BlockStore::Close() {
  int data_rc = data_fd_ >= 0 ? ::close(data_fd_) : 0;
  int data_err = errno;
  data_fd_ = -1;
  int crc_rc = crc_fd_ >= 0 ? ::close(crc_fd_) : 0;
  int crc_err = errno;
  crc_fd_ = -1;
  // Linux releases the fd even when close fails; report, never retry.
  if (data_rc != 0 && data_err != EINTR) {
    throw OsFailure("close", data_path_, data_err);
  }
  if (crc_rc != 0 && crc_err != EINTR) {
    throw OsFailure("close", crc_path_, crc_err);
  }
}

}  // namespace pxd
