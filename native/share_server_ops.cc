// The shared-volume server's operations on attributes and opens (root,
// getattr, lookup, setattr, open, create, access), and the entry replies that
// every operation making a name answers with; see share_server.h. Making and
// removing names is share_server_names.cc's.
#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "share_server.h"

namespace pxd {
namespace share {
namespace {

constexpr uint64_t kMaxOffset = INT64_MAX;

ReplyBuf Err(int error) { return ErrorReply(error); }

void FillAttr(const struct stat& st, fuse_attr* a) {
  std::memset(a, 0, sizeof *a);
  a->ino = st.st_ino;
  a->size = static_cast<uint64_t>(st.st_size);
  a->blocks = static_cast<uint64_t>(st.st_blocks);
  a->atime = static_cast<uint64_t>(st.st_atim.tv_sec);
  a->mtime = static_cast<uint64_t>(st.st_mtim.tv_sec);
  a->ctime = static_cast<uint64_t>(st.st_ctim.tv_sec);
  a->atimensec = static_cast<uint32_t>(st.st_atim.tv_nsec);
  a->mtimensec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
  a->ctimensec = static_cast<uint32_t>(st.st_ctim.tv_nsec);
  a->mode = st.st_mode;
  a->nlink = static_cast<uint32_t>(st.st_nlink);
  a->uid = st.st_uid;
  a->gid = st.st_gid;
  // The kernel's 32-bit device encoding (new_encode_dev).
  const uint32_t ma = major(st.st_rdev);
  const uint32_t mi = minor(st.st_rdev);
  a->rdev = (mi & 0xff) | (ma << 8) | ((mi & ~0xffu) << 12);
  a->blksize = static_cast<uint32_t>(st.st_blksize);
}

int StatFd(int fd, struct stat* st) {
  return fstatat(fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
}

ReplyBuf AttrReply(const ShareServer& s, int fd) {
  struct stat st;
  int err = StatFd(fd, &st);
  if (err != 0) return Err(err);
  fuse_attr_out out{};
  out.attr_valid = 1;
  FillAttr(st, &out.attr);
  ReplyWriter w(s.tag(), nullptr, sizeof out);
  std::memcpy(w.body(), &out, sizeof out);
  return w.Finish(sizeof out);
}

}  // namespace

ReplyBuf EntryReply(ShareServer& s, const FdRef& fd, const void* extra, size_t extra_len, HandleKey* key_out,
                    ino_t* ino_out) {
  struct stat st;
  int err = StatFd(fd->get(), &st);
  if (err != 0) return Err(err);
  if (st.st_dev != s.dev()) return Err(-EXDEV);  // something mounted over a name: not the volume
  HandleKey key;
  err = HandleOf(fd->get(), &key);
  if (err != 0) return Err(err);
  s.Remember(key, fd, st.st_ino);
  fuse_entry_out out{};
  out.entry_valid = 1;
  out.attr_valid = 1;
  FillAttr(st, &out.attr);
  ReplyWriter w(s.tag(), &key, sizeof out + extra_len);
  std::memcpy(w.body(), &out, sizeof out);
  if (extra_len != 0) std::memcpy(w.body() + sizeof out, extra, extra_len);
  if (key_out != nullptr) *key_out = key;
  if (ino_out != nullptr) *ino_out = st.st_ino;
  return w.Finish(sizeof out + extra_len);
}

ReplyBuf NewEntry(ShareServer& s, int dir, const char* name) {
  int fd = openat(dir, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return Err(-errno);
  return EntryReply(s, s.Own(fd));
}

ReplyBuf OpRoot(ShareServer& s, const ServerRequest&) {
  int err = 0;
  FdRef root = s.Resolve(s.root_key(), &err);
  if (!root) return Err(err);
  struct stat st;
  if ((err = StatFd(root->get(), &st)) != 0) return Err(err);
  fuse_attr_out out{};
  out.attr_valid = 1;
  FillAttr(st, &out.attr);
  ReplyWriter w(s.tag(), &s.root_key(), sizeof out);
  std::memcpy(w.body(), &out, sizeof out);
  return w.Finish(sizeof out);
}

ReplyBuf OpGetattr(ShareServer& s, const ServerRequest& r) {
  Prepared p(s, r);
  return p.err != 0 ? Err(p.err) : AttrReply(s, p.fd[0]->get());
}

ReplyBuf OpLookup(ShareServer& s, const ServerRequest& r) {
  char name[kMaxNameBytes + 1];
  size_t next;
  int err = BodyName(r, 0, name, &next);
  if (err != 0) return Err(err);
  Prepared p(s, r);
  if (p.err != 0) return Err(p.err);
  return NewEntry(s, p.fd[0]->get(), name);
}

ReplyBuf OpSetattr(ShareServer& s, const ServerRequest& r) {
  fuse_setattr_in in;
  if (!BodyStruct(r, &in)) return Err(-EINVAL);
  FdRef file;  // the open file, for a size change through an fh
  int err = 0;
  if ((in.valid & FATTR_SIZE) != 0 && (in.valid & FATTR_FH) != 0) {
    uint32_t flags;
    if ((err = FhFlags(in.fh, &flags)) != 0) return Err(err);
    file = s.OpenFile(r.client, r.handle[0], flags, &err);
    if (!file) return Err(err);
  }
  Prepared p(s, r);
  if (p.err != 0) return Err(p.err);
  const int fd = p.fd[0]->get();
  struct stat st;
  if ((err = StatFd(fd, &st)) != 0) return Err(err);
  char path[32];
  FdPath(fd, path);
  if ((in.valid & FATTR_MODE) != 0) {
    if (S_ISLNK(st.st_mode)) return Err(-EOPNOTSUPP);
    if (chmod(path, in.mode & 07777) != 0) return Err(-errno);
  }
  if ((in.valid & (FATTR_UID | FATTR_GID)) != 0) {
    const uid_t uid = (in.valid & FATTR_UID) != 0 ? in.uid : static_cast<uid_t>(-1);
    const gid_t gid = (in.valid & FATTR_GID) != 0 ? in.gid : static_cast<gid_t>(-1);
    if (fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return Err(-errno);
  }
  if ((in.valid & FATTR_SIZE) != 0) {
    if (in.size > kMaxOffset) return Err(-EINVAL);
    if (S_ISDIR(st.st_mode)) return Err(-EISDIR);
    if (!S_ISREG(st.st_mode)) return Err(-EINVAL);
    const off_t size = static_cast<off_t>(in.size);
    if ((file ? ftruncate(file->get(), size) : truncate(path, size)) != 0) return Err(-errno);
  }
  if ((in.valid & (FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW)) != 0) {
    timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
    if ((in.valid & FATTR_ATIME_NOW) != 0) {
      ts[0].tv_nsec = UTIME_NOW;
    } else if ((in.valid & FATTR_ATIME) != 0) {
      if (in.atime > kMaxOffset || in.atimensec > 999999999) return Err(-EINVAL);
      ts[0] = {static_cast<time_t>(in.atime), static_cast<long>(in.atimensec)};
    }
    if ((in.valid & FATTR_MTIME_NOW) != 0) {
      ts[1].tv_nsec = UTIME_NOW;
    } else if ((in.valid & FATTR_MTIME) != 0) {
      if (in.mtime > kMaxOffset || in.mtimensec > 999999999) return Err(-EINVAL);
      ts[1] = {static_cast<time_t>(in.mtime), static_cast<long>(in.mtimensec)};
    }
    const int rc = S_ISLNK(st.st_mode) ? utimensat(fd, "", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)
                                       : utimensat(AT_FDCWD, path, ts, 0);
    if (rc != 0) return Err(-errno);
  }
  return AttrReply(s, fd);
}

namespace {

// Whether a file of this type may be opened here.
int OpenableType(mode_t mode) {
  if (S_ISREG(mode)) return 0;
  if (S_ISDIR(mode)) return -EISDIR;
  if (S_ISLNK(mode)) return -ELOOP;
  return -ENXIO;  // devices, fifos and sockets are the client kernel's own
}

// The caller's open flags as the fh, and the flags to open with.
int OpenFlags(uint32_t caller, uint32_t* fh, int* flags) {
  *fh = caller & kFhFlagsMask;
  if ((*fh & O_ACCMODE) == O_ACCMODE) return -EINVAL;
  *flags = static_cast<int>((*fh & ~static_cast<uint32_t>(O_DIRECT)) | (caller & O_TRUNC)) | O_CLOEXEC | O_NOCTTY;
  return 0;
}

}  // namespace

ReplyBuf OpOpen(ShareServer& s, const ServerRequest& r) {
  fuse_open_in in;
  if (!BodyStruct(r, &in)) return Err(-EINVAL);
  uint32_t fh;
  int flags;
  int err = OpenFlags(in.flags, &fh, &flags);
  if (err != 0) return Err(err);
  Prepared p(s, r);
  if (p.err != 0) return Err(p.err);
  struct stat st;
  if ((err = StatFd(p.fd[0]->get(), &st)) != 0) return Err(err);
  if ((err = OpenableType(st.st_mode)) != 0) return Err(err);
  char path[32];
  FdPath(p.fd[0]->get(), path);
  int fd = open(path, flags);  // the caller's permission check
  if (fd < 0) return Err(-errno);
  s.AddOpen(r.client, r.handle[0], fh, s.Own(fd), st.st_ino);
  fuse_open_out out{};
  out.fh = fh;
  ReplyWriter w(s.tag(), nullptr, sizeof out);
  std::memcpy(w.body(), &out, sizeof out);
  return w.Finish(sizeof out);
}

ReplyBuf OpCreate(ShareServer& s, const ServerRequest& r) {
  fuse_create_in in;
  if (!BodyStruct(r, &in)) return Err(-EINVAL);
  char name[kMaxNameBytes + 1];
  size_t next;
  int err = BodyName(r, sizeof in, name, &next);
  if (err != 0) return Err(err);
  uint32_t fh;
  int flags;
  if ((err = OpenFlags(in.flags, &fh, &flags)) != 0) return Err(err);
  flags |= O_CREAT | O_NOFOLLOW | O_NONBLOCK | static_cast<int>(in.flags & O_EXCL);
  Prepared p(s, r);
  if (p.err != 0) return Err(p.err);
  const int dir = p.fd[0]->get();
  struct stat st;
  // An existing name that is not a regular file is never opened here.
  if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && (in.flags & O_EXCL) == 0 && !S_ISREG(st.st_mode)) {
    return Err(S_ISDIR(st.st_mode) ? -EISDIR : -EEXIST);
  }
  int fd = openat(dir, name, flags, in.mode & 07777 & ~in.umask);
  if (fd < 0) return Err(-errno);
  FdRef file = s.Own(fd);
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return Err(-EEXIST);
  // O_NONBLOCK was for the open only (a fifo put there meanwhile).
  const int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) return Err(-errno);
  char path[32];
  FdPath(fd, path);
  int path_fd = open(path, O_PATH | O_CLOEXEC);
  if (path_fd < 0) return Err(-errno);
  fuse_open_out out{};
  out.fh = fh;
  HandleKey key;
  ino_t ino = 0;
  ReplyBuf reply = EntryReply(s, s.Own(path_fd), &out, sizeof out, &key, &ino);
  if (!key.empty()) s.AddOpen(r.client, key, fh, file, ino);
  return reply;
}

ReplyBuf OpAccess(ShareServer& s, const ServerRequest& r) {
  fuse_access_in in;
  if (!BodyStruct(r, &in)) return Err(-EINVAL);
  if ((in.mask & ~static_cast<uint32_t>(R_OK | W_OK | X_OK)) != 0) return Err(-EINVAL);
  Prepared p(s, r);
  if (p.err != 0) return Err(p.err);
  // AT_EACCESS: the fsuid's view, not the (root) real uid's.
  if (syscall(SYS_faccessat2, p.fd[0]->get(), "", in.mask, AT_EMPTY_PATH | AT_EACCESS) != 0) return Err(-errno);
  return EmptyReply(s);
}

}  // namespace share
}  // namespace pxd
