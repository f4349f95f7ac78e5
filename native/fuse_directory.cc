// The flat directory a FuseServer presents: the file table (one regular file
// per attached volume, each with a nodeid never used again) and the metadata
// requests the reader thread answers from it (lookup, forget, getattr, setattr,
// open, opendir, readdir, statfs). The connection, the slots and the data
// requests are in fuse_server.cc.
#include <linux/fuse.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "fuse_server.h"

namespace pxd {
namespace {

constexpr uint64_t kRootId = FUSE_ROOT_ID;
constexpr uint32_t kPage = 4096;
// The kernel header this is built with may predate these; the values are ABI.
constexpr uint32_t kFopenParallelDirectWrites = 1u << 6;
// Entries and attributes are cached briefly: files only come and go with
// attach and detach, and their size changes only when a volume grows (whoever
// grows one waits this long before the kernel is asked for the new size).
constexpr uint64_t kValidSeconds = 1;

}  // namespace

void FuseServer::AddFile(const std::string& name, uint64_t size, uint32_t key) {
  std::lock_guard<std::mutex> lock(files_mu_);
  auto it = nodeids_.find(name);
  if (it != nodeids_.end()) {
    auto old = files_.find(it->second);
    old->second.present = false;
    DropIfUnused(old);
  }
  const uint64_t id = next_nodeid_++;
  nodeids_[name] = id;
  File& f = files_[id];
  f.name = name;
  f.size = size;
  f.key = key;
  f.present = true;
}

bool FuseServer::SetFileSize(const std::string& name, uint64_t size) {
  std::lock_guard<std::mutex> lock(files_mu_);
  auto it = nodeids_.find(name);
  if (it == nodeids_.end()) return false;
  files_.at(it->second).size = size;
  return true;
}

void FuseServer::RemoveFile(const std::string& name) {
  std::lock_guard<std::mutex> lock(files_mu_);
  auto it = nodeids_.find(name);
  if (it == nodeids_.end()) return;
  auto f = files_.find(it->second);
  nodeids_.erase(it);
  f->second.present = false;
  DropIfUnused(f);
}

void FuseServer::DropIfUnused(std::unordered_map<uint64_t, File>::iterator it) {
  if (!it->second.present && it->second.lookups == 0) files_.erase(it);
}

const FuseServer::File* FuseServer::PresentFile(uint64_t nodeid) const {
  auto it = files_.find(nodeid);
  return it == files_.end() || !it->second.present ? nullptr : &it->second;
}

void FuseServer::OnForget(uint64_t nodeid, uint64_t nlookup) {
  std::lock_guard<std::mutex> lock(files_mu_);
  auto it = files_.find(nodeid);
  if (it == files_.end()) return;
  it->second.lookups -= std::min(nlookup, it->second.lookups);
  DropIfUnused(it);
}

void FuseServer::OnBatchForget(const uint8_t* in, size_t in_len) {
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

void FuseServer::FillAttr(void* attr_out, uint64_t nodeid, const File* file) const {
  fuse_attr& a = *static_cast<fuse_attr*>(attr_out);
  std::memset(&a, 0, sizeof a);
  a.ino = nodeid;
  a.atime = a.mtime = a.ctime = static_cast<uint64_t>(mounted_at_);
  a.blksize = kPage;
  if (file == nullptr) {
    a.mode = S_IFDIR | 0700;
    a.nlink = 2;
    a.size = kPage;
  } else {
    a.mode = S_IFREG | 0600;
    a.nlink = 1;
    a.size = file->size;
    a.blocks = file->size / 512;
  }
}

void FuseServer::OnLookup(uint64_t unique, uint64_t parent, const char* name, size_t len) {
  if (parent != kRootId) return ReplyBytes(unique, ENOTDIR, nullptr, 0);
  std::string key(name, strnlen(name, len));
  fuse_entry_out out{};
  {
    std::lock_guard<std::mutex> lock(files_mu_);
    auto it = nodeids_.find(key);
    if (it == nodeids_.end()) return ReplyBytes(unique, ENOENT, nullptr, 0);
    File& f = files_.at(it->second);
    // Counted before the reply: the kernel may forget it as soon as it has it.
    f.lookups++;
    out.nodeid = it->second;
    FillAttr(&out.attr, it->second, &f);
  }
  out.entry_valid = out.attr_valid = kValidSeconds;
  ReplyBytes(unique, 0, &out, sizeof out);
}

void FuseServer::OnGetattr(uint64_t unique, uint64_t nodeid) {
  fuse_attr_out out{};
  out.attr_valid = kValidSeconds;
  if (nodeid == kRootId) {
    FillAttr(&out.attr, nodeid, nullptr);
  } else {
    std::lock_guard<std::mutex> lock(files_mu_);
    const File* f = PresentFile(nodeid);
    // ESTALE: a caller that came by a path looks the name up again.
    if (f == nullptr) return ReplyBytes(unique, ESTALE, nullptr, 0);
    FillAttr(&out.attr, nodeid, f);
  }
  ReplyBytes(unique, 0, &out, sizeof out);
}

void FuseServer::OnSetattr(uint64_t unique, uint64_t nodeid, const uint8_t* in, size_t in_len) {
  fuse_setattr_in arg{};
  std::memcpy(&arg, in, std::min(in_len, sizeof arg));
  fuse_attr_out out{};
  out.attr_valid = kValidSeconds;
  if (nodeid == kRootId) return ReplyBytes(unique, EPERM, nullptr, 0);
  {
    std::lock_guard<std::mutex> lock(files_mu_);
    const File* f = PresentFile(nodeid);
    if (f == nullptr) return ReplyBytes(unique, ESTALE, nullptr, 0);
    // A volume's size is fixed while attached; a no-op truncate (O_TRUNC of
    // an opener, a tool setting times) is allowed.
    if ((arg.valid & FATTR_SIZE) != 0 && arg.size != f->size) {
      return ReplyBytes(unique, EPERM, nullptr, 0);
    }
    FillAttr(&out.attr, nodeid, f);
  }
  ReplyBytes(unique, 0, &out, sizeof out);
}

void FuseServer::OnOpen(uint64_t unique, uint64_t nodeid) {
  if (nodeid == kRootId) return ReplyBytes(unique, EISDIR, nullptr, 0);
  {
    std::lock_guard<std::mutex> lock(files_mu_);
    // ESTALE: open(2) retries the lookup, which finds the file now under the
    // name (if any) instead of one removed while the kernel cached its entry.
    if (PresentFile(nodeid) == nullptr) return ReplyBytes(unique, ESTALE, nullptr, 0);
  }
  fuse_open_out out{};
  out.fh = nodeid;
  // No page cache for device files: another node may have written the volume
  // since this one last had it. Direct writes of one file may run in parallel.
  out.open_flags = FOPEN_DIRECT_IO | kFopenParallelDirectWrites;
  ReplyBytes(unique, 0, &out, sizeof out);
}

void FuseServer::OnReaddir(uint64_t unique, uint64_t nodeid, const uint8_t* in, size_t in_len) {
  if (nodeid != kRootId) return ReplyBytes(unique, ENOTDIR, nullptr, 0);
  fuse_read_in arg{};
  std::memcpy(&arg, in, std::min(in_len, sizeof arg));
  struct Entry {
    uint64_t ino;
    std::string name;
    uint32_t type;
  };
  std::vector<Entry> entries = {{kRootId, ".", S_IFDIR >> 12}, {kRootId, "..", S_IFDIR >> 12}};
  {
    std::lock_guard<std::mutex> lock(files_mu_);
    for (const auto& [name, id] : nodeids_) entries.push_back({id, name, S_IFREG >> 12});
  }
  std::vector<uint8_t> out;
  size_t limit = std::min<size_t>(arg.size, 64 * 1024);
  for (size_t i = arg.offset; i < entries.size(); i++) {
    const Entry& e = entries[i];
    size_t rec = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + e.name.size());
    if (out.size() + rec > limit) break;
    size_t at = out.size();
    out.resize(at + rec, 0);
    fuse_dirent d{};
    d.ino = e.ino;
    d.off = i + 1;
    d.namelen = static_cast<uint32_t>(e.name.size());
    d.type = e.type;
    std::memcpy(out.data() + at, &d, FUSE_NAME_OFFSET);
    std::memcpy(out.data() + at + FUSE_NAME_OFFSET, e.name.data(), e.name.size());
  }
  ReplyBytes(unique, 0, out.data(), out.size());
}

void FuseServer::OnOpendir(uint64_t unique, uint64_t nodeid) {
  if (nodeid != kRootId) return ReplyBytes(unique, ENOTDIR, nullptr, 0);
  fuse_open_out out{};
  ReplyBytes(unique, 0, &out, sizeof out);
}

void FuseServer::OnStatfs(uint64_t unique) {
  fuse_statfs_out out{};
  out.st.bsize = kPage;
  out.st.frsize = kPage;
  out.st.namelen = 255;
  ReplyBytes(unique, 0, &out, sizeof out);
}

}  // namespace pxd
