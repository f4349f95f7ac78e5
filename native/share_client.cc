// The mount, the reader thread and its slots of a shared volume's FUSE
// client; requests, replies, nodeids and the callers' groups are in
// share_client_wire.cc, a live restart's hand-over in share_client_handoff.cc.
#include "share_client.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace pxd {
namespace share {
namespace {

constexpr uint32_t kPage = 4096;
constexpr uint32_t kMaxSlots = 256;
constexpr uint16_t kMaxBackground = 16;
constexpr uint16_t kCongestionThreshold = 12;
// What the kernel is asked for. Not FUSE_WRITEBACK_CACHE: writes reach the
// server in order, as they are made, for close-to-open consistency and
// O_APPEND; not FUSE_DONT_MASK: the kernel applies the umask; not
// READDIRPLUS: entries come only from lookups.
constexpr uint32_t kWantFlags = FUSE_ASYNC_READ | FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS | FUSE_ATOMIC_O_TRUNC |
                                FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_PARALLEL_DIROPS | FUSE_ASYNC_DIO;

FuseError SysError(const char* what, const std::string& detail) {
  int e = errno;
  return FuseError(e == EBUSY ? "EBUSY" : e == ENOENT ? "ENOENT" : e == EPERM ? "EPERM" : "EIO", e,
                   std::string(what) + " " + detail + ": " + std::strerror(e));
}

size_t SlotBytes() { return (ShareClient::kMsgOffset + ShareClient::kReadBytes + kPage - 1) / kPage * kPage; }

}  // namespace

bool NormalizeHandle(const uint8_t* p, size_t len, std::string* out) {
  WireHandle h;
  if (len < sizeof h) return false;
  std::memcpy(&h, p, sizeof h);
  if (h.bytes < 1 || h.bytes > kMaxHandleBytes || HandleWireBytes(h.bytes) > len) return false;
  out->assign(reinterpret_cast<const char*>(p), sizeof h + h.bytes);
  out->resize(HandleWireBytes(h.bytes), '\0');
  return true;
}

ShareClient::ShareClient(const Options& o, ClientSink* sink)
    : mountpoint_(o.mountpoint), attr_timeout_ms_(o.attr_timeout_ms), slot_bytes_(SlotBytes()), sink_(sink) {
  if (o.slots < 2 || o.slots > kMaxSlots) throw FuseError("EINVAL", 0, "slots must be in [2, 256]");
  const bool adopt = o.adopt_fd >= 0;
  // An adopted connection is closed if the client cannot start (it cannot be served then).
  struct AdoptGuard {
    int fd;
    ~AdoptGuard() {
      if (fd >= 0) close(fd);
    }
  } guard{o.adopt_fd};
  if (adopt) {
    if (!LoadTable(o.table, o.next_nodeid)) throw FuseError("EINVAL", 0, "the nodeid table is malformed");
  } else {
    if (!S_ISDIR(o.root_mode)) throw FuseError("EINVAL", 0, "the root must be a directory");
    std::string root;
    if (!NormalizeHandle(reinterpret_cast<const uint8_t*>(o.root_handle.data()), o.root_handle.size(), &root)) {
      throw FuseError("EINVAL", 0, "the root handle is not a wire handle");
    }
    if (o.fsname.empty() || o.fsname.find_first_of(", \t\n") != std::string::npos) {
      throw FuseError("EINVAL", 0, "fsname must be a non-empty word without commas");
    }
    nodes_[FUSE_ROOT_ID] = Node{root, 1};
    nodeids_[root] = FUSE_ROOT_ID;
  }

  pool_ = std::make_shared<SlotPool>(o.slots, slot_bytes_);
  slots_.resize(o.slots);
  for (uint32_t i = o.slots; i-- > 0;) free_slots_.push_back(i);

  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0) throw SysError("eventfd", "");
  if (adopt) {
    const int fl = fcntl(o.adopt_fd, F_GETFL);
    if (fl < 0 || fcntl(o.adopt_fd, F_SETFL, fl | O_NONBLOCK) != 0 || fcntl(o.adopt_fd, F_SETFD, FD_CLOEXEC) != 0) {
      FuseError e = SysError("fcntl", "of the adopted FUSE connection");
      close(stop_fd_);
      throw e;
    }
    std::vector<std::pair<uint32_t, uint32_t>> handed;
    if (!LoadPending(o.pending, &handed)) {
      close(stop_fd_);
      throw FuseError("EINVAL", 0, "the pending requests are malformed");
    }
    // Ours from here on: closed when the client stops, as one it opened.
    fd_ = o.adopt_fd;
    guard.fd = -1;
    mounted_ = true;
    reader_ = std::thread([this] { Serve(); });
    for (const auto& [slot, generation] : handed) sink_->Request(slot, generation);
    return;
  }
  fd_ = open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd_ < 0) {
    FuseError e = SysError("open", "/dev/fuse");
    close(stop_fd_);
    throw e;
  }
  char mode[16];
  std::snprintf(mode, sizeof mode, "%o", o.root_mode & (S_IFMT | 07777));
  std::string opts = "fd=" + std::to_string(fd_) + ",rootmode=" + mode +
                     ",user_id=0,group_id=0,allow_other,default_permissions,max_read=" +
                     std::to_string(kMaxDataBytes);
  if (mount(o.fsname.c_str(), mountpoint_.c_str(), "fuse.pxd-shared", MS_NOSUID | MS_NODEV, opts.c_str()) != 0) {
    FuseError e = SysError("mount", mountpoint_);
    close(fd_);
    close(stop_fd_);
    throw e;
  }
  mounted_ = true;
  reader_ = std::thread([this] { Serve(); });
}

ShareClient::~ShareClient() {
  if (mounted_) umount2(mountpoint_.c_str(), UMOUNT_NOFOLLOW | MNT_DETACH);
  Stop();
}

void ShareClient::StopReader() {
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
}

void ShareClient::Stop() {
  StopReader();
  if (fd_ >= 0) {
    // A lazily detached mount still has users: their requests end now.
    for (uint32_t i = 0; i < slots(); i++) {
      uint64_t unique;
      uint32_t opcode;
      if (Claim(i, &unique, &opcode)) ReplyError(unique, ENOTCONN);
    }
    close(fd_);
  }
  if (stop_fd_ >= 0) close(stop_fd_);
  fd_ = stop_fd_ = -1;
}

void ShareClient::Unmount(bool lazy) {
  if (mounted_) {
    // EINVAL, ENOENT: not mounted there any more (unmounted from outside, and
    // perhaps the directory removed); the connection is let go of all the same.
    if (umount2(mountpoint_.c_str(), UMOUNT_NOFOLLOW | (lazy ? MNT_DETACH : 0)) != 0 && errno != EINVAL &&
        errno != ENOENT) {
      throw SysError("umount", mountpoint_);
    }
    mounted_ = false;
  }
  Stop();
}

bool ShareClient::AcquireSlot(uint32_t* slot) {
  std::unique_lock<std::mutex> lock(slots_mu_);
  slots_cv_.wait(lock, [this] { return stopping_ || !free_slots_.empty(); });
  if (stopping_) return false;
  *slot = free_slots_.back();
  free_slots_.pop_back();
  return true;
}

void ShareClient::ReleaseSlot(uint32_t slot) {
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    free_slots_.push_back(slot);
  }
  slots_cv_.notify_one();
}

bool ShareClient::Claim(uint32_t slot, uint64_t* unique, uint32_t* opcode, uint64_t* nodeid) {
  std::lock_guard<std::mutex> lock(slots_mu_);
  if (slot >= slots_.size() || !slots_[slot].pending || fd_ < 0) return false;
  Slot& s = slots_[slot];
  s.pending = false;
  *unique = s.unique;
  *opcode = s.opcode;
  if (nodeid != nullptr) *nodeid = s.nodeid;
  return true;
}

bool ShareClient::Pending(uint32_t slot, uint32_t generation, size_t* offset, size_t* length) const {
  std::lock_guard<std::mutex> lock(slots_mu_);
  if (slot >= slots_.size() || !slots_[slot].pending || slots_[slot].generation != generation) return false;
  *offset = slot * slot_bytes_ + slots_[slot].wire_at;
  *length = slots_[slot].wire_len;
  return true;
}

uint32_t ShareClient::Opcode(uint32_t slot) const {
  std::lock_guard<std::mutex> lock(slots_mu_);
  return slot < slots_.size() && slots_[slot].pending ? slots_[slot].opcode : 0;
}

void ShareClient::Reply(uint32_t slot, const uint8_t* reply, size_t len) {
  uint64_t unique;
  uint32_t opcode;
  uint64_t nodeid;
  if (!Claim(slot, &unique, &opcode, &nodeid)) return;
  // The slot is reused only after the write: the reply may lie in its memory.
  Translate(unique, opcode, nodeid, reply, len);
  ReleaseSlot(slot);
}

void ShareClient::Fail(uint32_t slot, int os_errno) {
  uint64_t unique;
  uint32_t opcode;
  if (!Claim(slot, &unique, &opcode)) return;
  ReplyError(unique, os_errno);
  ReleaseSlot(slot);
}

void ShareClient::ReplyError(uint64_t unique, int os_errno) {
  // The kernel refuses errors outside (-512, 0] and would leave the request
  // pending for ever: anything else is an I/O error.
  if (os_errno < 0 || os_errno >= 512) os_errno = EIO;
  fuse_out_header out{};
  out.len = sizeof out;
  out.error = -os_errno;
  out.unique = unique;
  // ENOENT: the request was interrupted and is gone. Other failures mean the
  // connection is going; the kernel fails the request.
  (void)!write(fd_, &out, sizeof out);
}

ClientStats ShareClient::stats() const {
  ClientStats s;
  s.requests = requests_.load(std::memory_order_relaxed);
  s.bytes_read = bytes_read_.load(std::memory_order_relaxed);
  s.bytes_written = bytes_written_.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(nodes_mu_);
  s.nodes = nodes_.size();
  return s;
}

void ShareClient::Serve() {
  pthread_setname_np(pthread_self(), "pxd-share");
  int stop_errno = 0;
  bool stop = false;
  uint32_t slot;
  while (!stop && AcquireSlot(&slot)) {
    uint8_t* msg = pool_->base() + slot * slot_bytes_ + kMsgOffset;
    ssize_t n = -1;
    while (!stop) {
      n = read(fd_, msg, kReadBytes);
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

void ShareClient::Handle(uint32_t slot, uint8_t* msg, size_t len) {
  if (len < sizeof(fuse_in_header)) return ReleaseSlot(slot);
  fuse_in_header h;
  std::memcpy(&h, msg, sizeof h);
  uint8_t* in = msg + sizeof h;
  const size_t in_len = std::min<size_t>(len, std::max<size_t>(h.len, sizeof h)) - sizeof h;
  bool kept = false;
  switch (h.opcode) {
    case FUSE_INIT:
      OnInit(h.unique, in, in_len);
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
    case FUSE_INTERRUPT:  // answered by the interrupted request's own reply
      OnInterrupt(in, in_len);
      break;
    case FUSE_NOTIFY_REPLY:  // never asked for; gets no answer
      break;
    case FUSE_DESTROY:
      ReplyError(h.unique, 0);
      break;
    case FUSE_COPY_FILE_RANGE:  // names a second nodeid in its body; the kernel falls back to read and write
    case FUSE_TMPFILE:          // an entry whose handle the wire does not carry
    case FUSE_IOCTL:
    case FUSE_POLL:
    case FUSE_BMAP:
    case FUSE_READDIRPLUS:
    case FUSE_SETUPMAPPING:
    case FUSE_REMOVEMAPPING:
      ReplyError(h.unique, ENOSYS);
      break;
    default:
      kept = Forward(slot, h, in, in_len);
  }
  if (!kept) ReleaseSlot(slot);
}

void ShareClient::OnInit(uint64_t unique, const uint8_t* in, size_t in_len) {
  fuse_init_in arg{};
  std::memcpy(&arg, in, std::min(in_len, sizeof arg));
  fuse_init_out out{};
  out.major = FUSE_KERNEL_VERSION;
  out.minor = std::min<uint32_t>(arg.minor, FUSE_KERNEL_MINOR_VERSION);
  if (arg.major != FUSE_KERNEL_VERSION) {
    // A newer major: answer with ours and the kernel asks again; older: refuse.
    if (arg.major < FUSE_KERNEL_VERSION) return ReplyError(unique, EPROTO);
    fuse_out_header oh{sizeof oh + 8, 0, unique};
    iovec iov[2] = {{&oh, sizeof oh}, {&out, 8}};
    (void)!writev(fd_, iov, 2);
    return;
  }
  out.max_readahead = std::min<uint32_t>(arg.max_readahead, kMaxDataBytes);
  out.flags = arg.flags & kWantFlags;
  out.max_background = kMaxBackground;
  out.congestion_threshold = kCongestionThreshold;
  out.max_write = kMaxDataBytes;
  out.time_gran = 1;
  out.max_pages = static_cast<uint16_t>(kMaxDataBytes / kPage);
  // Before 7.23 the reply was 24 bytes; the kernel checks the size it gets.
  const size_t size = out.minor < 23 ? 24 : sizeof out;
  fuse_out_header oh{static_cast<uint32_t>(sizeof oh + size), 0, unique};
  iovec iov[2] = {{&oh, sizeof oh}, {&out, size}};
  (void)!writev(fd_, iov, 2);
}

void ShareClient::OnInterrupt(const uint8_t* in, size_t in_len) {
  fuse_interrupt_in arg{};
  if (in_len < sizeof arg) return;
  std::memcpy(&arg, in, sizeof arg);
  uint32_t slot = 0;
  uint32_t generation = 0;
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    for (; slot < slots_.size(); slot++) {
      if (slots_[slot].pending && slots_[slot].unique == arg.unique) break;
    }
    // Not pending: answered already (the reader sees a request before its
    // interrupt, since the kernel interrupts only requests read from it).
    if (slot == slots_.size()) return;
    generation = slots_[slot].generation;
  }
  sink_->Interrupt(slot, generation);
}

}  // namespace share
}  // namespace pxd
