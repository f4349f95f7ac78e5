// The shared-volume server's threads, credentials and replies; see
// share_server.h.
#include "share_server.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <system_error>
#include <utility>

#include "store_io.h"

namespace pxd {
namespace share {
namespace {

// The worker's own capabilities, saved when it starts: what a caller other
// than root runs without, and gets back afterwards.
struct WorkerState {
  bool ready = false;
  bool broken = false;  // could not become root again: the thread refuses work
  __user_cap_header_struct cap_header{};
  __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3] = {};
};
thread_local WorkerState t_worker;

// The directory of its file system that mount `mount_id` shows ("/": all of
// it), from /proc/self/mountinfo; empty if not found.
std::string MountRootOf(int mount_id) {
  FILE* f = std::fopen("/proc/self/mountinfo", "re");
  if (f == nullptr) return std::string();
  char* line = nullptr;
  size_t cap = 0;
  std::string out;
  while (getline(&line, &cap, f) > 0) {
    int id;
    char dir[4096];
    if (std::sscanf(line, "%d %*d %*s %4095s", &id, dir) == 2 && id == mount_id) {
      out = dir;
      break;
    }
  }
  std::free(line);
  std::fclose(f);
  return out;
}

[[noreturn]] void Fail(const std::string& what, int err) {
  throw ServerError(ErrnoCode(err), err, what + ": " + std::strerror(err));
}

}  // namespace

void FdPath(int fd, char (&out)[32]) { std::snprintf(out, sizeof out, "/proc/self/fd/%d", fd); }

// ---- descriptors and replies -------------------------------------------------

ServerFd::ServerFd(int fd, std::atomic<uint64_t>* live) : fd_(fd), live_(live) {
  if (live_ != nullptr) live_->fetch_add(1, std::memory_order_relaxed);
}

ServerFd::~ServerFd() {
  close(fd_);
  if (live_ != nullptr) live_->fetch_sub(1, std::memory_order_relaxed);
}

ReplyBuf ErrorReply(int error, uint8_t flags) {
  ReplyBuf b;
  b.data = static_cast<uint8_t*>(std::calloc(1, sizeof(WireReply)));
  if (b.data == nullptr) throw std::bad_alloc();
  WireReply h{};
  h.error = error;
  h.flags = flags;
  std::memcpy(b.data, &h, sizeof h);
  b.len = sizeof h;
  return b;
}

ReplyWriter::ReplyWriter(uint64_t tag, const HandleKey* handle, size_t body_cap) : cap_(body_cap) {
  size_t hbytes = handle != nullptr ? handle->size() - 4 : 0;
  head_ = sizeof(WireReply) + (handle != nullptr ? HandleWireBytes(static_cast<uint32_t>(hbytes)) : 0);
  data_ = static_cast<uint8_t*>(std::malloc(head_ + body_cap));
  if (data_ == nullptr) throw std::bad_alloc();
  std::memset(data_, 0, head_);
  body_ = data_ + head_;
  if (handle != nullptr) {
    WireHandle wh{};
    wh.tag = tag;
    std::memcpy(&wh.type, handle->data(), 4);
    wh.bytes = static_cast<uint32_t>(hbytes);
    std::memcpy(data_ + sizeof(WireReply), &wh, sizeof wh);
    std::memcpy(data_ + sizeof(WireReply) + sizeof wh, handle->data() + 4, hbytes);
    data_[offsetof(WireReply, nhandles)] = 1;
  }
}

ReplyWriter::~ReplyWriter() { std::free(data_); }

ReplyBuf ReplyWriter::Finish(size_t body_len, int error, uint8_t flags) {
  if (body_len > cap_) body_len = cap_;
  WireReply h;
  std::memcpy(&h, data_, sizeof h);
  h.error = error;
  h.flags = flags;
  h.body_len = static_cast<uint32_t>(body_len);
  std::memcpy(data_, &h, sizeof h);
  ReplyBuf b;
  b.data = data_;
  b.len = head_ + body_len;
  data_ = nullptr;
  return b;
}

// ---- credentials ---------------------------------------------------------------

int CallerCreds::Enter(const ServerRequest& r) {
  if (!t_worker.ready || t_worker.broken) return -EIO;
  constexpr uint32_t kNone = ~uint32_t{0};  // "unchanged" to the kernel, never a caller
  if (r.uid == kNone || r.gid == kNone) return -EINVAL;
  gid_t groups[kMaxGroups];
  for (uint32_t i = 0; i < r.ngroups; i++) {
    if (r.groups[i] == kNone) return -EINVAL;
    groups[i] = r.groups[i];
  }
  entered_ = true;
  if (syscall(SYS_setgroups, static_cast<size_t>(r.ngroups), groups) != 0) {
    int err = errno;
    Leave();
    return -err;
  }
  syscall(SYS_setfsgid, r.gid);
  bool ok = static_cast<uint32_t>(syscall(SYS_setfsgid, kNone)) == r.gid;
  if (ok) {
    syscall(SYS_setfsuid, r.uid);
    ok = static_cast<uint32_t>(syscall(SYS_setfsuid, kNone)) == r.uid;
  }
  if (ok && r.uid != 0) {
    __user_cap_header_struct hdr = t_worker.cap_header;
    __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3];
    std::memcpy(none, t_worker.caps, sizeof none);
    for (auto& c : none) c.effective = 0;
    dropped_caps_ = true;
    ok = syscall(SYS_capset, &hdr, none) == 0;
  }
  if (!ok) {
    Leave();
    return -EPERM;
  }
  return 0;
}

void CallerCreds::Leave() {
  if (!entered_) return;
  entered_ = false;
  bool ok = true;
  if (dropped_caps_) {
    __user_cap_header_struct hdr = t_worker.cap_header;
    ok = syscall(SYS_capset, &hdr, t_worker.caps) == 0;
    dropped_caps_ = false;
  }
  syscall(SYS_setfsuid, 0);
  syscall(SYS_setfsgid, 0);
  ok = ok && syscall(SYS_setfsuid, ~uint32_t{0}) == 0 && syscall(SYS_setfsgid, ~uint32_t{0}) == 0;
  ok = ok && syscall(SYS_setgroups, size_t{0}, nullptr) == 0;
  if (!ok) t_worker.broken = true;
}

CallerCreds::~CallerCreds() { Leave(); }

// ---- the server ------------------------------------------------------------------

ShareServer::ShareServer(const std::string& root, uint64_t tag, unsigned threads) : tag_(tag) {
  if (threads < 1 || threads > kMaxThreads) throw ServerError("EINVAL", 0, "threads must be in [1, 16]");
  // Not O_PATH: open_by_handle_at wants a descriptor it can fdget().
  int fd = open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) Fail("open " + root, errno);
  mount_fd_ = Own(fd);
  struct statx stx{};
  if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &stx) != 0) Fail("statx " + root, errno);
  // Handles decode anywhere in the file system: serve only the whole of one.
  if ((stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) != 0 && (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) == 0) {
    throw ServerError("EINVAL", 0, root + " is not the root of a mounted file system");
  }
  struct stat st;
  if (fstat(fd, &st) != 0) Fail("stat " + root, errno);
  dev_ = st.st_dev;
  int mount_id = -1;
  int err = HandleOf(fd, &root_key_, &mount_id);
  if (err == -EOPNOTSUPP) {
    throw ServerError("EOPNOTSUPP", EOPNOTSUPP, "the file system at " + root + " has no file handles (name_to_handle_at)");
  }
  if (err != 0) Fail("name_to_handle_at " + root, -err);
  const std::string mount_root = MountRootOf(mount_id);
  if (!mount_root.empty() && mount_root != "/") {
    throw ServerError("EINVAL", 0, root + " mounts " + mount_root + " of its file system, not all of it");
  }
  const int check = OpenByHandle(fd, root_key_, O_PATH | O_CLOEXEC);
  if (check == -EPERM) throw ServerError("EPERM", EPERM, "open_by_handle_at needs CAP_DAC_READ_SEARCH");
  if (check < 0) Fail("open_by_handle_at " + root, -check);
  close(check);

  try {
    for (unsigned i = 0; i < threads; i++) workers_.emplace_back([this, i] { Work(i); });
  } catch (const std::system_error& e) {
    Shutdown();
    throw ServerError("EAGAIN", EAGAIN, std::string("cannot start a worker thread: ") + e.what());
  }
  std::unique_lock<std::mutex> lock(queue_mu_);
  queue_cv_.wait(lock, [&] { return ready_ == threads; });
  if (start_error_ != 0) {
    const int start_error = start_error_;
    lock.unlock();
    Shutdown();
    Fail("unshare(CLONE_FS) on a worker thread", start_error);
  }
}

ShareServer::~ShareServer() { Shutdown(); }

void ShareServer::Work(unsigned index) {
  char name[16];
  std::snprintf(name, sizeof name, "pxd-shsrv-%u", index);
  pthread_setname_np(pthread_self(), name);
  // A file system context of its own: the umask is the caller's, applied by
  // the client's kernel, not the daemon's.
  int err = 0;
  if (unshare(CLONE_FS) != 0) {
    err = errno;
  } else {
    umask(0);
    t_worker.cap_header.version = _LINUX_CAPABILITY_VERSION_3;
    t_worker.cap_header.pid = 0;
    if (syscall(SYS_capget, &t_worker.cap_header, t_worker.caps) != 0) err = errno;
  }
  t_worker.ready = err == 0;
  std::unique_lock<std::mutex> lock(queue_mu_);
  if (err != 0 && start_error_ == 0) start_error_ = err;
  ready_++;
  queue_cv_.notify_all();
  for (;;) {
    queue_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left
    ServerJob* job = queue_.front();
    queue_.pop_front();
    lock.unlock();
    job->reply = ExecuteRequest(*this, job->client, job->request, job->request_len);
    requests_.fetch_add(1, std::memory_order_relaxed);
    job->Done();
    lock.lock();
  }
}

void ShareServer::Submit(ServerJob* job) {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    queue_.push_back(job);
  }
  queue_cv_.notify_one();
}

void ShareServer::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (shut_down_) return;
    shut_down_ = true;
    stopping_ = true;
  }
  queue_cv_.notify_all();
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
  std::unordered_map<HandleKey, CachedHandle> handles;
  std::unordered_map<std::string, OpenEntry> open;
  std::unordered_map<uint32_t, std::unordered_map<std::string, FdRef>> locks;
  {
    std::lock_guard<std::mutex> lock(handles_mu_);
    handles.swap(handles_);
    handles_lru_.clear();
  }
  {
    std::lock_guard<std::mutex> lock(open_mu_);
    open.swap(open_);
    idle_lru_.clear();
    locks.swap(locks_);
  }
  mount_fd_.reset();
}

ServerStats ShareServer::stats() const {
  ServerStats s;
  s.requests = requests_.load(std::memory_order_relaxed);
  s.bytes_read = bytes_read_.load(std::memory_order_relaxed);
  s.bytes_written = bytes_written_.load(std::memory_order_relaxed);
  s.open_fds = open_fds_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace share
}  // namespace pxd
