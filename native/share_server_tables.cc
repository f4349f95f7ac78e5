// The shared-volume server's tables: handles to descriptors, open files and
// lock descriptors; see share_server.h.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "share_server.h"

namespace pxd {
namespace share {
namespace {

// Handle bytes as the kernel's struct file_handle.
struct KernelHandle {
  file_handle fh;
  unsigned char bytes[kMaxHandleBytes];
};

bool ToKernelHandle(const HandleKey& key, KernelHandle* out) {
  if (key.size() < 5 || key.size() > 4 + kMaxHandleBytes) return false;
  int32_t type;
  std::memcpy(&type, key.data(), 4);
  out->fh.handle_bytes = static_cast<unsigned>(key.size() - 4);
  out->fh.handle_type = type;
  std::memcpy(out->fh.f_handle, key.data() + 4, key.size() - 4);
  return true;
}

HandleKey KeyOf(const file_handle& fh) {
  HandleKey key(4 + fh.handle_bytes, '\0');
  std::memcpy(&key[0], &fh.handle_type, 4);
  std::memcpy(&key[4], fh.f_handle, fh.handle_bytes);
  return key;
}

std::string OpenKey(const HandleKey& key, uint32_t flags) {
  std::string k = key;
  k.append(reinterpret_cast<const char*>(&flags), sizeof flags);
  return k;
}

std::string LockKey(uint64_t owner, const HandleKey& key) {
  std::string k(reinterpret_cast<const char*>(&owner), sizeof owner);
  return k + key;
}

}  // namespace

int HandleOf(int fd, HandleKey* key, int* mount_id) {
  KernelHandle kh{};
  kh.fh.handle_bytes = kMaxHandleBytes;
  int mid;
  if (name_to_handle_at(fd, "", &kh.fh, mount_id != nullptr ? mount_id : &mid, AT_EMPTY_PATH) != 0) return -errno;
  if (kh.fh.handle_bytes < 1 || kh.fh.handle_bytes > kMaxHandleBytes) return -EOVERFLOW;
  *key = KeyOf(kh.fh);
  return 0;
}

int OpenByHandle(int mount_fd, const HandleKey& key, int flags) {
  KernelHandle kh{};
  if (!ToKernelHandle(key, &kh)) return -EINVAL;
  int fd = open_by_handle_at(mount_fd, &kh.fh, flags);
  return fd < 0 ? -errno : fd;
}

// ---- handles -----------------------------------------------------------------------

FdRef ShareServer::Resolve(const HandleKey& key, int* err) {
  if (key == root_key_) return mount_fd_;
  {
    std::lock_guard<std::mutex> lock(handles_mu_);
    auto it = handles_.find(key);
    if (it != handles_.end()) {
      handles_lru_.splice(handles_lru_.begin(), handles_lru_, it->second.lru);
      return it->second.fd;
    }
  }
  int fd = OpenByHandle(mount_fd_->get(), key, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    *err = fd == -ENOENT ? -ESTALE : fd;
    return nullptr;
  }
  FdRef ref = Own(fd);
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_dev != dev_) {
    *err = -ESTALE;
    return nullptr;
  }
  Remember(key, ref, st.st_ino);
  return ref;
}

void ShareServer::Remember(const HandleKey& key, const FdRef& fd, ino_t ino) {
  if (key == root_key_) return;
  FdRef evicted;
  std::lock_guard<std::mutex> lock(handles_mu_);
  auto it = handles_.find(key);
  if (it != handles_.end()) {
    handles_lru_.splice(handles_lru_.begin(), handles_lru_, it->second.lru);
    return;  // another thread was first: either descriptor will do
  }
  handles_lru_.push_front(key);
  handles_[key] = CachedHandle{fd, ino, handles_lru_.begin()};
  if (handles_.size() > kHandleCacheMax) {
    auto last = handles_.find(handles_lru_.back());
    evicted = std::move(last->second.fd);  // closed after the lock, with `lock`'s end
    handles_.erase(last);
    handles_lru_.pop_back();
  }
}

void ShareServer::Forget(ino_t ino) {
  std::vector<FdRef> dropped;
  {
    std::lock_guard<std::mutex> lock(handles_mu_);
    for (auto it = handles_.begin(); it != handles_.end();) {
      if (it->second.ino != ino) {
        ++it;
        continue;
      }
      dropped.push_back(std::move(it->second.fd));
      handles_lru_.erase(it->second.lru);
      it = handles_.erase(it);
    }
  }
  std::lock_guard<std::mutex> lock(open_mu_);
  for (auto it = open_.begin(); it != open_.end();) {
    if (it->second.ino != ino || !it->second.idle) {
      ++it;
      continue;
    }
    dropped.push_back(std::move(it->second.fd));
    idle_lru_.erase(it->second.lru);
    it = open_.erase(it);
  }
}

// ---- open files ------------------------------------------------------------------

int ShareServer::Reopen(const FdRef& path_fd, int flags, ino_t* ino) {
  struct stat st;
  if (fstat(path_fd->get(), &st) != 0) return -errno;
  if (!S_ISREG(st.st_mode)) return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
  *ino = st.st_ino;
  char path[32];
  FdPath(path_fd->get(), path);
  // Not O_NOFOLLOW: the path is the descriptor's magic link, to a regular file.
  int fd = open(path, (flags & ~(O_CREAT | O_EXCL | O_TRUNC)) | O_CLOEXEC | O_NOCTTY);
  return fd < 0 ? -errno : fd;
}

// Must hold open_mu_.
void ShareServer::MakeIdle(const std::string& key, OpenEntry& e, std::vector<FdRef>* dropped) {
  if (e.total != 0 || e.idle) return;
  idle_lru_.push_front(key);
  e.idle = true;
  e.lru = idle_lru_.begin();
  while (idle_lru_.size() > kIdleOpenMax) {
    auto last = open_.find(idle_lru_.back());
    dropped->push_back(std::move(last->second.fd));
    open_.erase(last);
    idle_lru_.pop_back();
  }
}

FdRef ShareServer::OpenFile(uint32_t client, const HandleKey& key, uint32_t flags, int* err) {
  const std::string okey = OpenKey(key, flags);
  {
    std::lock_guard<std::mutex> lock(open_mu_);
    auto it = open_.find(okey);
    if (it != open_.end()) {
      if (it->second.idle) idle_lru_.splice(idle_lru_.begin(), idle_lru_, it->second.lru);
      return it->second.fd;
    }
  }
  FdRef path_fd = Resolve(key, err);
  if (!path_fd) return nullptr;
  ino_t ino = 0;
  // O_DIRECT is kept in the fh but not used here: the reply buffers are not
  // aligned for it, and the page cache here is the only one in the way.
  int fd = Reopen(path_fd, static_cast<int>(flags) & ~O_DIRECT, &ino);
  if (fd < 0) {
    *err = fd;
    return nullptr;
  }
  FdRef ref = Own(fd);
  AddOpen(client, key, flags, ref, ino);
  std::lock_guard<std::mutex> lock(open_mu_);
  auto it = open_.find(okey);
  return it != open_.end() ? it->second.fd : ref;
}

void ShareServer::AddOpen(uint32_t client, const HandleKey& key, uint32_t flags, const FdRef& fd, ino_t ino) {
  const std::string okey = OpenKey(key, flags);
  std::lock_guard<std::mutex> lock(open_mu_);
  OpenEntry& e = open_[okey];
  if (!e.fd) {
    e.fd = fd;
    e.ino = ino;
  }
  if (e.idle) {
    idle_lru_.erase(e.lru);
    e.idle = false;
  }
  e.refs[client]++;
  e.total++;
}

void ShareServer::ReleaseOpen(uint32_t client, const HandleKey& key, uint32_t flags) {
  std::vector<FdRef> dropped;
  const std::string okey = OpenKey(key, flags);
  std::lock_guard<std::mutex> lock(open_mu_);
  auto it = open_.find(okey);
  if (it == open_.end()) return;
  auto r = it->second.refs.find(client);
  if (r == it->second.refs.end()) return;  // opened through another server: nothing counted here
  if (--r->second == 0) it->second.refs.erase(r);
  it->second.total--;
  MakeIdle(okey, it->second, &dropped);
}

void ShareServer::DropClient(uint32_t client) {
  std::vector<FdRef> dropped;
  std::unordered_map<std::string, FdRef> locks;
  std::lock_guard<std::mutex> lock(open_mu_);
  auto l = locks_.find(client);
  if (l != locks_.end()) {
    locks.swap(l->second);
    locks_.erase(l);
  }
  std::vector<std::string> idle;
  for (auto& [okey, e] : open_) {
    auto r = e.refs.find(client);
    if (r == e.refs.end()) continue;
    e.total -= r->second;
    e.refs.erase(r);
    if (e.total == 0) idle.push_back(okey);
  }
  for (const auto& okey : idle) {
    auto it = open_.find(okey);
    if (it != open_.end()) MakeIdle(okey, it->second, &dropped);
  }
}

// ---- locks -------------------------------------------------------------------------

FdRef ShareServer::LockFd(uint32_t client, uint64_t owner, const HandleKey& key, int* err) {
  const std::string lkey = LockKey(owner, key);
  {
    std::lock_guard<std::mutex> lock(open_mu_);
    auto c = locks_.find(client);
    if (c != locks_.end()) {
      auto it = c->second.find(lkey);
      if (it != c->second.end()) return it->second;
    }
  }
  FdRef path_fd = Resolve(key, err);
  if (!path_fd) return nullptr;
  struct stat st;
  if (fstat(path_fd->get(), &st) != 0) {
    *err = -errno;
    return nullptr;
  }
  char path[32];
  FdPath(path_fd->get(), path);
  int fd;
  if (S_ISREG(st.st_mode)) {
    fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    // Read-only or busy executables: read locks still work.
    if (fd < 0) fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  } else if (S_ISDIR(st.st_mode)) {
    fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  } else {
    *err = -ENOLCK;  // devices, fifos and sockets are not opened here
    return nullptr;
  }
  if (fd < 0) {
    *err = -errno;
    return nullptr;
  }
  FdRef ref = Own(fd);
  std::lock_guard<std::mutex> lock(open_mu_);
  auto& slot = locks_[client][lkey];
  if (!slot) slot = ref;
  return slot;
}

void ShareServer::DropLockFd(uint32_t client, uint64_t owner, const HandleKey& key) {
  FdRef dropped;
  std::lock_guard<std::mutex> lock(open_mu_);
  auto c = locks_.find(client);
  if (c == locks_.end()) return;
  auto it = c->second.find(LockKey(owner, key));
  if (it == c->second.end()) return;
  dropped = std::move(it->second);
  c->second.erase(it);
  if (c->second.empty()) locks_.erase(c);
}

}  // namespace share
}  // namespace pxd
