// A shared volume's FUSE client: kernel requests into wire requests, wire
// replies into kernel replies, the nodeid table between the two, and the
// callers' supplementary groups that permission-checked requests carry.
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "share_client.h"

namespace pxd {
namespace share {
namespace {

constexpr auto kGroupsValid = std::chrono::seconds(1);
constexpr size_t kGroupsCacheMax = 1024;

// Operations the server checks permissions for: they carry the caller's
// supplementary groups. Others carry none.
bool ChecksPermissions(uint32_t opcode) {
  switch (opcode) {
    case FUSE_LOOKUP:
    case FUSE_ACCESS:
    case FUSE_OPEN:
    case FUSE_OPENDIR:
    case FUSE_CREATE:
    case FUSE_MKNOD:
    case FUSE_MKDIR:
    case FUSE_SYMLINK:
    case FUSE_LINK:
    case FUSE_UNLINK:
    case FUSE_RMDIR:
    case FUSE_RENAME:
    case FUSE_RENAME2:
    case FUSE_SETATTR:
    case FUSE_READDIR:
    case FUSE_READLINK:
    case FUSE_GETXATTR:
    case FUSE_SETXATTR:
    case FUSE_LISTXATTR:
    case FUSE_REMOVEXATTR:
      return true;
    default:
      return false;
  }
}

// Replies that name an entry: the server's handle becomes a nodeid here.
bool HasEntry(uint32_t opcode) {
  switch (opcode) {
    case FUSE_LOOKUP:
    case FUSE_MKNOD:
    case FUSE_MKDIR:
    case FUSE_SYMLINK:
    case FUSE_LINK:
    case FUSE_CREATE:
      return true;
    default:
      return false;
  }
}

void SetValid(uint32_t ms, uint64_t* seconds, uint32_t* nsec) {
  *seconds = ms / 1000;
  *nsec = (ms % 1000) * 1000000u;
}

// No FOPEN_KEEP_CACHE (nor a cached directory): close-to-open, every open
// sees the server's data as it is now.
void DropCaching(fuse_open_out* out) { out->open_flags &= ~static_cast<uint32_t>(FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR); }

// Direct writes to one file may be in flight together (the server writes each where it
// says; the kernel still serializes appends and writes that extend the file). The value is
// ABI; the header this is built with may predate it.
constexpr uint32_t kFopenParallelDirectWrites = 1u << 6;
void AllowParallelDirectWrites(fuse_open_out* out) {
  out->open_flags |= kFopenParallelDirectWrites;
  // Opened with O_DIRECT (the fh is the open flags, share_wire.h): the kernel's direct path,
  // where writes to one file go in parallel; its cached path holds the file's lock for each
  // whole direct write, one at a time.
  if ((out->fh & O_DIRECT) != 0) out->open_flags |= FOPEN_DIRECT_IO;
}

}  // namespace

bool ShareClient::Forward(uint32_t slot, const fuse_in_header& h, uint8_t* body, size_t body_len) {
  // The second handle some requests carry, from a nodeid in their body.
  uint64_t second = 0;
  bool has_second = false;
  if (h.opcode == FUSE_RENAME || h.opcode == FUSE_RENAME2 || h.opcode == FUSE_LINK) {
    const size_t need = h.opcode == FUSE_RENAME2 ? sizeof(fuse_rename2_in) : sizeof(uint64_t);
    if (body_len < need) return ReplyError(h.unique, EINVAL), false;
    // newdir of fuse_rename_in / fuse_rename2_in and oldnodeid of fuse_link_in all come first.
    std::memcpy(&second, body, sizeof second);
    has_second = true;
  }
  uint16_t ngroups = 0;
  const uint32_t* gids = nullptr;
  if (h.pid != 0 && ChecksPermissions(h.opcode)) {
    const Groups& g = GroupsOf(h.pid);
    ngroups = g.count;
    gids = g.gids;
  }
  const size_t groups_bytes = Pad8(ngroups * sizeof(uint32_t));
  uint8_t* const base = pool_->base() + slot * slot_bytes_;
  size_t prefix;
  {
    std::lock_guard<std::mutex> lock(nodes_mu_);
    const std::string* handles[2] = {nullptr, nullptr};
    uint8_t nhandles = 0;
    if (h.nodeid != 0) {
      auto it = nodes_.find(h.nodeid);
      // Forgotten (or never given): whoever came by a path looks it up again.
      if (it == nodes_.end()) return ReplyError(h.unique, ESTALE), false;
      handles[nhandles++] = &it->second.handle;
    }
    if (has_second) {
      auto it = nodes_.find(second);
      if (it == nodes_.end()) return ReplyError(h.unique, ESTALE), false;
      handles[nhandles++] = &it->second.handle;
    }
    prefix = sizeof(WireRequest) + groups_bytes;
    for (uint8_t i = 0; i < nhandles; i++) prefix += handles[i]->size();
    // Written over the kernel's header (already copied out), ending where the body starts.
    uint8_t* p = base + kBodyOffset - prefix;
    WireRequest w{};
    w.opcode = h.opcode;
    w.uid = h.uid;
    w.gid = h.gid;
    w.pid = h.pid;
    w.ngroups = ngroups;
    w.nhandles = nhandles;
    w.body_len = static_cast<uint32_t>(body_len);
    std::memcpy(p, &w, sizeof w);
    p += sizeof w;
    if (groups_bytes > 0) {
      std::memset(p, 0, groups_bytes);
      std::memcpy(p, gids, ngroups * sizeof(uint32_t));
      p += groups_bytes;
    }
    for (uint8_t i = 0; i < nhandles; i++) {
      std::memcpy(p, handles[i]->data(), handles[i]->size());
      p += handles[i]->size();
    }
  }
  uint32_t generation;
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    Slot& s = slots_[slot];
    s.unique = h.unique;
    s.opcode = h.opcode;
    s.nodeid = h.nodeid;
    s.generation++;
    s.wire_at = static_cast<uint32_t>(kBodyOffset - prefix);
    s.wire_len = static_cast<uint32_t>(prefix + body_len);
    s.pending = true;
    generation = s.generation;
  }
  requests_.fetch_add(1, std::memory_order_relaxed);
  sink_->Request(slot, generation);
  return true;
}

void ShareClient::OnForget(uint64_t nodeid, uint64_t nlookup) {
  std::lock_guard<std::mutex> lock(nodes_mu_);
  auto it = nodes_.find(nodeid);
  if (it == nodes_.end()) return;
  it->second.lookups -= std::min(nlookup, it->second.lookups);
  if (it->second.lookups == 0 && nodeid != FUSE_ROOT_ID) {
    nodeids_.erase(it->second.handle);
    nodes_.erase(it);
  }
}

void ShareClient::OnBatchForget(const uint8_t* in, size_t in_len) {
  fuse_batch_forget_in arg{};
  if (in_len < sizeof arg) return;
  std::memcpy(&arg, in, sizeof arg);
  const size_t n = std::min<size_t>(arg.count, (in_len - sizeof arg) / sizeof(fuse_forget_one));
  for (size_t i = 0; i < n; i++) {
    fuse_forget_one one;
    std::memcpy(&one, in + sizeof arg + i * sizeof one, sizeof one);
    OnForget(one.nodeid, one.nlookup);
  }
}

uint64_t ShareClient::Ref(const std::string& handle) {
  std::lock_guard<std::mutex> lock(nodes_mu_);
  auto it = nodeids_.find(handle);
  if (it != nodeids_.end()) {
    nodes_[it->second].lookups++;
    return it->second;
  }
  const uint64_t id = next_nodeid_++;
  nodes_[id] = Node{handle, 1};
  nodeids_[handle] = id;
  return id;
}

void ShareClient::InvalidateAttributes(uint64_t nodeid) {
  struct {
    fuse_out_header out;
    fuse_notify_inval_inode_out arg;
  } msg{};
  msg.out.len = sizeof msg;
  msg.out.error = FUSE_NOTIFY_INVAL_INODE;
  msg.arg.ino = nodeid;
  msg.arg.off = -1;  // attributes only: the open drops the page cache itself
  // ENOENT: the kernel holds no inode of it (nothing cached to drop).
  (void)!write(fd_, &msg, sizeof msg);
}

void ShareClient::Translate(uint64_t unique, uint32_t opcode, uint64_t nodeid, const uint8_t* reply, size_t len) {
  WireReply r;
  if (len < sizeof r) return ReplyError(unique, EIO);
  std::memcpy(&r, reply, sizeof r);
  size_t at = sizeof r;
  std::string handle;
  if (r.nhandles > 1) return ReplyError(unique, EIO);
  if (r.nhandles == 1) {
    if (!NormalizeHandle(reply + at, len - at, &handle)) return ReplyError(unique, EIO);
    at += handle.size();
  }
  if (r.body_len > len - at) return ReplyError(unique, EIO);
  // Positive, or beyond what the kernel takes (-512 and below): EIO.
  if (r.error != 0) return ReplyError(unique, r.error < 0 && r.error > -512 ? -r.error : EIO);
  const uint8_t* body = reply + at;
  size_t body_len = r.body_len;

  // The structs this end changes are copied out; the rest of the body (READ
  // data, names, xattr values) goes to the kernel from where it lies.
  fuse_out_header out{};
  fuse_entry_out entry{};
  fuse_open_out open{};
  fuse_attr_out attr{};
  iovec iov[4];
  int n = 1;
  uint64_t ref = 0;
  auto take = [&](void* local, size_t size) {
    std::memcpy(local, body, size);
    iov[n++] = {local, size};
    body += size;
    body_len -= size;
  };
  if (HasEntry(opcode)) {
    const size_t need = sizeof entry + (opcode == FUSE_CREATE ? sizeof open : 0);
    if (handle.empty() || body_len < need) return ReplyError(unique, EIO);
    take(&entry, sizeof entry);
    // Counted before the reply: the kernel may forget it as soon as it has it.
    ref = Ref(handle);
    entry.nodeid = ref;
    SetValid(attr_timeout_ms_, &entry.entry_valid, &entry.entry_valid_nsec);
    SetValid(attr_timeout_ms_, &entry.attr_valid, &entry.attr_valid_nsec);
    if (opcode == FUSE_CREATE) {
      take(&open, sizeof open);
      DropCaching(&open);
      AllowParallelDirectWrites(&open);
    }
  } else if (opcode == FUSE_OPEN || opcode == FUSE_OPENDIR) {
    if (body_len < sizeof open) return ReplyError(unique, EIO);
    take(&open, sizeof open);
    DropCaching(&open);
    if (opcode == FUSE_OPEN) AllowParallelDirectWrites(&open);
    // Close-to-open: the size and times another node left at its close are asked for again
    // before this open returns (a read past the cached size, a stat, refetch them).
    if (opcode == FUSE_OPEN) InvalidateAttributes(nodeid);
  } else if (opcode == FUSE_GETATTR || opcode == FUSE_SETATTR) {
    if (body_len < sizeof attr) return ReplyError(unique, EIO);
    take(&attr, sizeof attr);
    SetValid(attr_timeout_ms_, &attr.attr_valid, &attr.attr_valid_nsec);
  } else if (opcode == FUSE_READ) {
    bytes_read_.fetch_add(body_len, std::memory_order_relaxed);
  } else if (opcode == FUSE_WRITE && body_len >= sizeof(fuse_write_out)) {
    fuse_write_out w;
    std::memcpy(&w, body, sizeof w);
    bytes_written_.fetch_add(w.size, std::memory_order_relaxed);
  }
  if (body_len > 0) iov[n++] = {const_cast<uint8_t*>(body), body_len};
  size_t total = 0;
  for (int i = 1; i < n; i++) total += iov[i].iov_len;
  out.len = static_cast<uint32_t>(sizeof out + total);
  out.unique = unique;
  iov[0] = {&out, sizeof out};
  // ENOENT: the request was interrupted and is gone; EINVAL: the kernel
  // refused the reply's size (and fails the request EIO). Either way it never
  // took the entry, and will not forget it.
  if (writev(fd_, iov, n) < 0 && ref != 0) OnForget(ref, 1);
}

const ShareClient::Groups& ShareClient::GroupsOf(uint32_t pid) {
  const auto now = std::chrono::steady_clock::now();
  auto it = groups_.find(pid);
  if (it != groups_.end() && now - it->second.at < kGroupsValid) return it->second;
  if (it == groups_.end() && groups_.size() >= kGroupsCacheMax) {
    for (auto e = groups_.begin(); e != groups_.end();) {
      e = now - e->second.at < kGroupsValid ? std::next(e) : groups_.erase(e);
    }
    if (groups_.size() >= kGroupsCacheMax) groups_.clear();
  }
  Groups& g = groups_[pid];
  g.at = now;
  g.count = 0;
  char path[32];
  std::snprintf(path, sizeof path, "/proc/%u/status", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return g;  // gone: no groups
  char buf[4096];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return g;
  buf[n] = '\0';
  // The name is escaped in this file, so a line starts only where one does.
  const char* p = std::strstr(buf, "\nGroups:");
  if (p == nullptr) return g;
  p += std::strlen("\nGroups:");
  while (g.count < kMaxGroups) {
    while (*p == ' ' || *p == '\t') p++;
    if (*p < '0' || *p > '9') break;
    char* end;
    unsigned long gid = std::strtoul(p, &end, 10);
    g.gids[g.count++] = static_cast<uint32_t>(gid);
    p = end;
  }
  return g;
}

}  // namespace share
}  // namespace pxd
