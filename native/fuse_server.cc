// The server's connection to the kernel: mount and unmount, the request slots,
// the reader thread and its dispatch by opcode, INIT, and the data requests
// (READ, WRITE, FLUSH, FSYNC) handed to the sink and answered by Reply();
// FALLOCATE's modes are sorted out in fuse_fallocate.cc. The file table and the
// metadata requests answered from it are in fuse_directory.cc; a session adopted
// from another process in fuse_session.cc.
#include "fuse_server.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

namespace pxd {
namespace {

constexpr uint32_t kPage = 4096;
// Linux 5.6; the header this is built with may predate it.
constexpr int kPrSetIoFlusher = 57;
// FUSE_REQUEST_TIMEOUT (protocol 7.43, Linux 6.14): bit 42 of the INIT flags, that is
// bit 10 of flags2, and fuse_init_out.request_timeout, a u16 of seconds at byte 40
// (in the unused words of older headers).
constexpr uint32_t kRequestTimeoutFlags2 = 1u << (42 - 32);
constexpr size_t kRequestTimeoutOffset = 40;
static_assert(sizeof(fuse_init_out) == 64, "fuse_init_out is 64 bytes since 7.23");

FuseError SysError(const char* what, const std::string& detail) {
  int e = errno;
  return FuseError(e == EBUSY ? "EBUSY" : e == ENOENT ? "ENOENT" : e == EPERM ? "EPERM" : "EIO", e,
                   std::string(what) + " " + detail + ": " + std::strerror(e));
}

}  // namespace

SlotPool::SlotPool(size_t slots, size_t slot_bytes) : bytes_(slots * slot_bytes) {
  void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw FuseError("ENOMEM", errno, "cannot allocate FUSE request buffers");
  base_ = static_cast<uint8_t*>(p);
}

SlotPool::~SlotPool() { munmap(base_, bytes_); }

FuseServer::FuseServer(const Options& o, FuseSink* sink)
    : mountpoint_(o.mountpoint),
      max_request_bytes_(o.max_request_bytes),
      max_background_(o.max_background),
      request_timeout_(o.request_timeout),
      slot_bytes_(kDataOffset + o.max_request_bytes),
      sink_(sink),
      mounted_at_(static_cast<int64_t>(std::time(nullptr))) {
  InitSlots(o.slots);
  fd_ = open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd_ < 0) throw SysError("open", "/dev/fuse");
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0) {
    FuseError e = SysError("eventfd", "");
    close(fd_);
    throw e;
  }
  std::string opts = "fd=" + std::to_string(fd_) + ",rootmode=40000,user_id=0,group_id=0,max_read=" +
                     std::to_string(max_request_bytes_);
  if (mount("pxd", mountpoint_.c_str(), "fuse.pxd", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts.c_str()) != 0) {
    FuseError e = SysError("mount", mountpoint_);
    close(fd_);
    close(stop_fd_);
    throw e;
  }
  mounted_ = true;
  reader_ = std::thread([this] { ServeLoop(); });
}

void FuseServer::InitSlots(uint32_t slots) {
  if (max_request_bytes_ < 32 * 1024 || max_request_bytes_ > (1u << 20) || max_request_bytes_ % kPage != 0) {
    throw FuseError("EINVAL", 0, "max request bytes must be a multiple of 4096 in [32 KiB, 1 MiB]");
  }
  if (slots < 2 || slots > 1024) throw FuseError("EINVAL", 0, "slots must be in [2, 1024]");
  pool_ = std::make_shared<SlotPool>(slots, slot_bytes_);
  requests_.resize(slots);
  for (uint32_t i = slots; i-- > 0;) free_slots_.push_back(i);
}

FuseServer::~FuseServer() {
  if (mounted_) umount2(mountpoint_.c_str(), MNT_DETACH);
  Stop();
}

void FuseServer::Stop() {
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    stopping_ = true;
  }
  slots_cv_.notify_all();
  if (stop_fd_ >= 0) {
    uint64_t one = 1;
    (void)!write(stop_fd_, &one, sizeof one);
  }
  if (reader_.joinable()) reader_.join();
  if (fd_ >= 0) close(fd_);
  if (stop_fd_ >= 0) close(stop_fd_);
  fd_ = stop_fd_ = -1;
}

void FuseServer::Unmount(bool lazy) {
  if (mounted_) {
    if (umount2(mountpoint_.c_str(), UMOUNT_NOFOLLOW | (lazy ? MNT_DETACH : 0)) != 0 && errno != EINVAL) {
      throw SysError("umount", mountpoint_);
    }
    mounted_ = false;
  }
  Stop();
}

bool FuseServer::AcquireSlot(uint32_t* slot) {
  std::unique_lock<std::mutex> lock(slots_mu_);
  slots_cv_.wait(lock, [this] { return stopping_ || !free_slots_.empty(); });
  if (stopping_) return false;
  *slot = free_slots_.back();
  free_slots_.pop_back();
  return true;
}

void FuseServer::ReleaseSlot(uint32_t slot) {
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    free_slots_.push_back(slot);
  }
  slots_cv_.notify_one();
}

void FuseServer::ServeLoop() {
  // The kernel may wait on this thread to write back pages (the loop device
  // writes here): let its own allocations not recurse into I/O, and spare it
  // the throttling of ordinary writers. Needs CAP_SYS_RESOURCE and Linux 5.6;
  // without them the thread serves as before.
  (void)prctl(kPrSetIoFlusher, 1, 0, 0, 0);
  pthread_setname_np(pthread_self(), "pxd-fuse");
  // A WRITE's two headers (80 bytes) end exactly at kDataOffset.
  const size_t headroom = kDataOffset - sizeof(fuse_in_header) - sizeof(fuse_write_in);
  const size_t read_len = slot_bytes_ - headroom;
  int stop_errno = 0;
  bool stop = false;
  uint32_t slot;
  while (!stop && AcquireSlot(&slot)) {
    uint8_t* msg = pool_->base() + slot * slot_bytes_ + headroom;
    ssize_t n = -1;
    while (!stop) {
      n = read(fd_, msg, read_len);
      if (n >= 0) break;
      if (errno == EAGAIN) {
        pollfd fds[2] = {{fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
        if (poll(fds, 2, -1) < 0 && errno != EINTR) {
          stop_errno = errno;
          stop = true;
        } else if (fds[1].revents != 0) {
          stop = true;  // told to stop
        }
      } else if (errno != EINTR && errno != ENOENT) {
        // ENODEV: the file system was unmounted; anything else is a failure.
        if (errno != ENODEV) stop_errno = errno;
        stop = true;
      }
    }
    if (stop) {
      ReleaseSlot(slot);
      break;
    }
    Handle(slot, msg, static_cast<size_t>(n));
  }
  bool told;
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    told = stopping_;
  }
  if (!told) sink_->Stopped(stop_errno);
}

void FuseServer::ReplyBytes(uint64_t unique, int error, const void* data, size_t len) {
  fuse_out_header out;
  out.len = static_cast<uint32_t>(sizeof out + (error == 0 ? len : 0));
  out.error = -error;
  out.unique = unique;
  iovec iov[2] = {{&out, sizeof out}, {const_cast<void*>(data), error == 0 ? len : 0}};
  // ENOENT: the request was interrupted and is gone; nothing else to do.
  // Other failures mean the connection is going; the kernel fails the request.
  (void)!writev(fd_, iov, iov[1].iov_len > 0 ? 2 : 1);
}

void FuseServer::Reply(uint32_t slot, int64_t result) {
  if (slot >= requests_.size()) return;
  const FuseRequest& r = requests_[slot];
  if (fd_ >= 0) {
    if (result < 0) {
      // The kernel refuses an error outside (-512, 0) and would leave the request
      // pending for ever: anything out of range is an I/O error.
      ReplyBytes(r.unique, result > -512 ? static_cast<int>(-result) : EIO, nullptr, 0);
    } else if (r.kind == FuseKind::kRead) {
      size_t n = std::min<uint64_t>(static_cast<uint64_t>(result), r.length);
      ReplyBytes(r.unique, 0, pool_->base() + slot * slot_bytes_ + kDataOffset, n);
    } else if (r.kind == FuseKind::kWrite) {
      fuse_write_out out{};
      out.size = static_cast<uint32_t>(std::min<uint64_t>(static_cast<uint64_t>(result), r.length));
      ReplyBytes(r.unique, 0, &out, sizeof out);
    } else {
      ReplyBytes(r.unique, 0, nullptr, 0);
    }
  }
  ReleaseSlot(slot);
}

void FuseServer::Handle(uint32_t slot, uint8_t* msg, size_t len) {
  if (len < sizeof(fuse_in_header)) return ReleaseSlot(slot);
  fuse_in_header h;
  std::memcpy(&h, msg, sizeof h);
  const uint8_t* in = msg + sizeof h;
  size_t in_len = std::min<size_t>(len, h.len) - sizeof h;
  bool kept = false;
  switch (h.opcode) {
    case FUSE_INIT:
      OnInit(h.unique, in, in_len);
      break;
    case FUSE_LOOKUP:
      OnLookup(h.unique, h.nodeid, reinterpret_cast<const char*>(in), in_len);
      break;
    case FUSE_FORGET: {  // FORGETs get no answer
      fuse_forget_in arg{};
      std::memcpy(&arg, in, std::min(in_len, sizeof arg));
      OnForget(h.nodeid, arg.nlookup);
      break;
    }
    case FUSE_BATCH_FORGET:
      OnBatchForget(in, in_len);
      break;
    case FUSE_INTERRUPT:  // nothing here can be cancelled; the answer comes when it comes
      break;
    case FUSE_GETATTR:
      OnGetattr(h.unique, h.nodeid);
      break;
    case FUSE_SETATTR:
      OnSetattr(h.unique, h.nodeid, in, in_len);
      break;
    case FUSE_OPEN:
      OnOpen(h.unique, h.nodeid);
      break;
    case FUSE_OPENDIR:
      OnOpendir(h.unique, h.nodeid);
      break;
    case FUSE_READDIR:
      OnReaddir(h.unique, h.nodeid, in, in_len);
      break;
    case FUSE_READ:
    case FUSE_WRITE:
    case FUSE_FLUSH:
    case FUSE_FSYNC:
    case FUSE_FALLOCATE:
      kept = OnData(slot, h.unique, h.opcode, h.nodeid, in, in_len);
      break;
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR:
    case FUSE_FSYNCDIR:
    case FUSE_ACCESS:
    case FUSE_DESTROY:
      ReplyBytes(h.unique, 0, nullptr, 0);
      break;
    case FUSE_STATFS:
      OnStatfs(h.unique);
      break;
    case FUSE_MKNOD:
    case FUSE_MKDIR:
    case FUSE_CREATE:
    case FUSE_UNLINK:
    case FUSE_RMDIR:
    case FUSE_RENAME:
    case FUSE_RENAME2:
    case FUSE_LINK:
    case FUSE_SYMLINK:
      // Files appear and go only with attach and detach.
      ReplyBytes(h.unique, EPERM, nullptr, 0);
      break;
    default:
      // xattrs, locks, ioctl, ...: the kernel remembers ENOSYS.
      ReplyBytes(h.unique, ENOSYS, nullptr, 0);
  }
  if (!kept) ReleaseSlot(slot);
}

void FuseServer::OnInit(uint64_t unique, const uint8_t* in, size_t in_len) {
  fuse_init_in arg{};
  std::memcpy(&arg, in, std::min(in_len, sizeof arg));
  fuse_init_out out{};
  out.major = FUSE_KERNEL_VERSION;
  out.minor = std::min<uint32_t>(arg.minor, FUSE_KERNEL_MINOR_VERSION);
  if (arg.major != FUSE_KERNEL_VERSION) {
    // A newer major: answer with ours and the kernel asks again; older: refuse.
    if (arg.major < FUSE_KERNEL_VERSION) return ReplyBytes(unique, EPROTO, nullptr, 0);
    return ReplyBytes(unique, 0, &out, 8);
  }
  out.max_readahead = arg.max_readahead;
  uint32_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_MAX_PAGES;
  out.flags = arg.flags & want;
  out.max_background = max_background_;
  out.congestion_threshold = static_cast<uint16_t>(max_background_ * 3 / 4);
  out.max_write = max_request_bytes_;
  out.time_gran = 1;
  out.max_pages = static_cast<uint16_t>(max_request_bytes_ / kPage);
  // The kernel aborts the connection once a request waited this long for its answer.
  const bool bounded = request_timeout_ > 0 && (arg.flags & FUSE_INIT_EXT) != 0 && (arg.flags2 & kRequestTimeoutFlags2) != 0;
  if (bounded) {
    out.flags |= FUSE_INIT_EXT;
    out.flags2 = kRequestTimeoutFlags2;
    std::memcpy(reinterpret_cast<uint8_t*>(&out) + kRequestTimeoutOffset, &request_timeout_, sizeof request_timeout_);
  }
  // Before 7.23 the reply was 24 bytes; the kernel checks the size it gets.
  ReplyBytes(unique, 0, &out, out.minor < 23 ? 24 : sizeof out);
  sink_->Initialized(bounded ? request_timeout_ : 0);
}

bool FuseServer::OnData(uint32_t slot, uint64_t unique, uint32_t opcode, uint64_t nodeid,
                        const uint8_t* in, size_t in_len) {
  FuseRequest& r = requests_[slot];
  r.unique = unique;
  r.offset = 0;
  r.length = 0;
  uint64_t size;
  {
    std::lock_guard<std::mutex> lock(files_mu_);
    const File* f = PresentFile(nodeid);
    if (f == nullptr) {
      // The volume was detached under an open handle; flushing nothing is fine.
      ReplyBytes(unique, opcode == FUSE_FLUSH ? 0 : EIO, nullptr, 0);
      return false;
    }
    r.key = f->key;
    size = f->size;
  }
  if (opcode == FUSE_FLUSH || opcode == FUSE_FSYNC) {
    r.kind = FuseKind::kFlush;
  } else if (opcode == FUSE_FALLOCATE) {
    return OnFallocate(slot, unique, size, in, in_len);
  } else if (opcode == FUSE_READ) {
    fuse_read_in arg{};
    if (in_len < sizeof arg) return ReplyBytes(unique, EINVAL, nullptr, 0), false;
    std::memcpy(&arg, in, sizeof arg);
    if (arg.offset >= size || arg.size == 0) return ReplyBytes(unique, 0, nullptr, 0), false;
    r.kind = FuseKind::kRead;
    r.offset = arg.offset;
    r.length = static_cast<uint32_t>(std::min<uint64_t>({arg.size, size - arg.offset, max_request_bytes_}));
  } else {
    fuse_write_in arg{};
    if (in_len < sizeof arg) return ReplyBytes(unique, EINVAL, nullptr, 0), false;
    std::memcpy(&arg, in, sizeof arg);
    if (arg.size > in_len - sizeof arg || arg.size > max_request_bytes_) {
      return ReplyBytes(unique, EINVAL, nullptr, 0), false;
    }
    if (arg.offset > size || arg.size > size - arg.offset) return ReplyBytes(unique, ENOSPC, nullptr, 0), false;
    r.kind = FuseKind::kWrite;
    r.offset = arg.offset;
    r.length = arg.size;
  }
  sink_->Dispatch(slot);
  return true;
}

}  // namespace pxd
