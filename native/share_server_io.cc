// The shared-volume server's operations on open files, directories, locks and
// extended attributes; see share_server.h.
#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "share_server.h"

namespace pxd {
namespace share {
namespace {

constexpr uint64_t kMaxOffset = INT64_MAX;
constexpr size_t kMaxXattrBytes = 65536;  // XATTR_SIZE_MAX
constexpr size_t kMaxXattrName = 255;     // XATTR_NAME_MAX

ReplyBuf Err(int error) { return ErrorReply(error); }

template <typename T>
ReplyBuf StructReply(const ShareServer& s, const T& out) {
  ReplyWriter w(s.tag(), nullptr, sizeof out);
  std::memcpy(w.body(), &out, sizeof out);
  return w.Finish(sizeof out);
}

// The descriptor of the open file the request's fh names.
FdRef FileOf(ShareServer& s, const ServerRequest& r, uint64_t fh, int* err) {
  uint32_t flags;
  if ((*err = FhFlags(fh, &flags)) != 0) return nullptr;
  return s.OpenFile(r.client, r.handle[0], flags, err);
}

// A fresh descriptor of the directory behind an O_PATH one.
int OpenDir(int path_fd) {
  char path[32];
  FdPath(path_fd, path);
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

ReplyBuf ReadDir(ShareServer& s, const ServerRequest& r, const fuse_read_in& in, int path_fd) {
  if (in.size > kMaxDataBytes || in.offset > kMaxOffset) return Err(-EINVAL);
  CallerCreds creds;
  int err = creds.Enter(r);
  if (err != 0) return Err(err);
  int fd = OpenDir(path_fd);
  if (fd < 0) return Err(fd);
  ServerFd dir(fd, nullptr);
  if (lseek(fd, static_cast<off_t>(in.offset), SEEK_SET) < 0) return Err(-errno);
  ReplyWriter w(s.tag(), nullptr, in.size);
  size_t used = 0;
  alignas(8) char buf[32768];
  bool full = false;
  while (!full) {
    long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
    if (n < 0) {
      if (used == 0) return Err(-errno);
      break;
    }
    if (n == 0) break;
    for (long pos = 0; pos < n;) {
      uint64_t ino;
      int64_t off;
      uint16_t reclen;
      std::memcpy(&ino, buf + pos, 8);
      std::memcpy(&off, buf + pos + 8, 8);
      std::memcpy(&reclen, buf + pos + 16, 2);
      const unsigned char type = static_cast<unsigned char>(buf[pos + 18]);
      const char* name = buf + pos + 19;
      const size_t namelen = strnlen(name, reclen - 19);
      const size_t rec = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + namelen);
      if (used + rec > in.size) {
        full = true;
        break;
      }
      fuse_dirent d{};
      d.ino = ino;
      d.off = static_cast<uint64_t>(off);
      d.namelen = static_cast<uint32_t>(namelen);
      d.type = type;
      uint8_t* out = w.body() + used;
      std::memset(out, 0, rec);
      std::memcpy(out, &d, FUSE_NAME_OFFSET);
      std::memcpy(out + FUSE_NAME_OFFSET, name, namelen);
      used += rec;
      pos += reclen;
    }
  }
  return w.Finish(used);
}

// An xattr name (any bytes but NUL, 1..255) at `at` of the body.
int XattrName(const ServerRequest& r, size_t at, std::string* name, size_t* next) {
  if (at >= r.body_len) return -EINVAL;
  const char* p = reinterpret_cast<const char*>(r.body + at);
  const size_t room = r.body_len - at;
  const void* nul = std::memchr(p, '\0', room);
  if (nul == nullptr) return -EINVAL;
  const size_t n = static_cast<size_t>(static_cast<const char*>(nul) - p);
  if (n == 0) return -EINVAL;
  if (n > kMaxXattrName) return -ERANGE;
  name->assign(p, n);
  *next = at + n + 1;
  return 0;
}

}  // namespace

ReplyBuf OpRead(ShareServer& s, const ServerRequest& r) {
  fuse_read_in in;
  if (!BodyStruct(r, &in)) return Err(-EINVAL);
  if (in.size > kMaxDataBytes || in.offset > kMaxOffset) return Err(-EINVAL);
  int err = 0;
  FdRef file = FileOf(s, r, in.fh, &err);
  if (!file) return Err(err);
  ReplyWriter w(s.tag(), nullptr, in.size);
  size_t done = 0;
  while (done < in.size) {
    ssize_t n = pread(file->get(), w.body() + done, in.size - done, static_cast<off_t>(in.offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (done == 0) return Err(-errno);
      break;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  s.Count(done, 0);
  return w.Finish(done);
}

ReplyBuf OpWrite(ShareServer& s, const ServerRequest& r) {
  fuse_write_in in;
  if (!BodyStruct(r, &in)) return Err(-EINVAL);
  if (in.size > kMaxDataBytes || in.offset > kMaxOffset || r.body_len - sizeof in < in.size) return Err(-EINVAL);
  int err = 0;
  FdRef file = FileOf(s, r, in.fh, &err);
  if (!file) return Err(err);
  const int fd = file->get();
  if ((in.write_flags & FUSE_WRITE_KILL_SUIDGID) != 0) {
    struct stat st;
    if (fstat(fd, &st) != 0) return Err(-errno);
    const mode_t kill = S_ISUID | ((st.st_mode & S_IXGRP) != 0 ? S_ISGID : 0);
    if ((st.st_mode & kill) != 0 && fchmod(fd, st.st_mode & 07777 & ~kill) != 0) return Err(-errno);
  }
  const uint8_t* data = r.body + sizeof in;
  size_t done = 0;
  while (done < in.size) {
    // On an O_APPEND descriptor each pwrite appends, whatever the offset.
    ssize_t n = pwrite(fd, data + done, in.size - done, static_cast<off_t>(in.offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (done == 0) return Err(-errno);
      break;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  s.Count(0, done);
  fuse_write_out out{};
  out.size = static_cast<uint32_t>(done);
  return StructReply(s, out);
}

ReplyBuf OpFsyncFlushRelease(ShareServer& s, const ServerRequest& r) {
  if (r.opcode == FUSE_FLUSH) {
    fuse_flush_in in;
    if (!BodyStruct(r, &in)) return Err(-EINVAL);
    // The owner closed a descriptor: its POSIX locks on the file end.
    s.DropLockFd(r.client, in.lock_owner, r.handle[0]);
    return EmptyReply(s);
  }
  if (r.opcode == FUSE_RELEASE) {
    fuse_release_in in;
    if (!BodyStruct(r, &in)) return Err(-EINVAL);
    uint32_t flags;
    if (FhFlags(in.fh, &flags) == 0) s.ReleaseOpen(r.client, r.handle[0], flags);
    if ((in.release_flags & FUSE_RELEASE_FLOCK_UNLOCK) != 0) s.DropLockFd(r.client, in.lock_owner, r.handle[0]);
    return EmptyReply(s);
  }
  fuse_fsync_in in;
  if (!BodyStruct(r, &in)) return Err(-EINVAL);
  int err = 0;
  FdRef file = FileOf(s, r, in.fh, &err);
  if (!file) return Err(err);
  const int rc = (in.fsync_flags & FUSE_FSYNC_FDATASYNC) != 0 ? fdatasync(file->get()) : fsync(file->get());
  return rc != 0 ? Err(-errno) : EmptyReply(s);
}

ReplyBuf OpFallocateLseek(ShareServer& s, const ServerRequest& r) {
  int err = 0;
  if (r.opcode == FUSE_LSEEK) {
    fuse_lseek_in in;
    if (!BodyStruct(r, &in)) return Err(-EINVAL);
    if ((in.whence != SEEK_DATA && in.whence != SEEK_HOLE) || in.offset > kMaxOffset) return Err(-EINVAL);
    FdRef file = FileOf(s, r, in.fh, &err);
    if (!file) return Err(err);
    const off_t at = lseek(file->get(), static_cast<off_t>(in.offset), static_cast<int>(in.whence));
    if (at < 0) return Err(-errno);
    fuse_lseek_out out{};
    out.offset = static_cast<uint64_t>(at);
    return StructReply(s, out);
  }
  fuse_fallocate_in in;
  if (!BodyStruct(r, &in)) return Err(-EINVAL);
  if (in.offset > kMaxOffset || in.length > kMaxOffset) return Err(-EINVAL);
  FdRef file = FileOf(s, r, in.fh, &err);
  if (!file) return Err(err);
  CallerCreds creds;  // no capabilities: not the blocks kept for root
  if ((err = creds.Enter(r)) != 0) return Err(err);
  if (fallocate(file->get(), static_cast<int>(in.mode), static_cast<off_t>(in.offset),
                static_cast<off_t>(in.length)) != 0) {
    return Err(-errno);
  }
  return EmptyReply(s);
}

ReplyBuf OpStatfs(ShareServer& s, const ServerRequest& r) {
  int err = 0;
  FdRef fd = s.Resolve(r.nhandles != 0 ? r.handle[0] : s.root_key(), &err);
  if (!fd) return Err(err);
  struct statfs st;
  if (fstatfs(fd->get(), &st) != 0) return Err(-errno);
  fuse_statfs_out out{};
  out.st.blocks = st.f_blocks;
  out.st.bfree = st.f_bfree;
  out.st.bavail = st.f_bavail;
  out.st.files = st.f_files;
  out.st.ffree = st.f_ffree;
  out.st.bsize = static_cast<uint32_t>(st.f_bsize);
  out.st.namelen = static_cast<uint32_t>(st.f_namelen);
  out.st.frsize = static_cast<uint32_t>(st.f_frsize);
  return StructReply(s, out);
}

ReplyBuf OpDir(ShareServer& s, const ServerRequest& r) {
  if (r.opcode == FUSE_RELEASEDIR) return EmptyReply(s);
  int err = 0;
  FdRef path_fd = s.Resolve(r.handle[0], &err);
  if (!path_fd) return Err(err);
  if (r.opcode == FUSE_READDIR) {
    fuse_read_in in;
    if (!BodyStruct(r, &in)) return Err(-EINVAL);
    return ReadDir(s, r, in, path_fd->get());
  }
  if (r.opcode == FUSE_FSYNCDIR) {
    fuse_fsync_in in;
    if (!BodyStruct(r, &in)) return Err(-EINVAL);
    int fd = OpenDir(path_fd->get());  // root: the caller opened it already
    if (fd < 0) return Err(fd);
    ServerFd dir(fd, nullptr);
    const int rc = (in.fsync_flags & FUSE_FSYNC_FDATASYNC) != 0 ? fdatasync(fd) : fsync(fd);
    return rc != 0 ? Err(-errno) : EmptyReply(s);
  }
  // OPENDIR: the caller's permission to read it, checked by opening it.
  CallerCreds creds;
  if ((err = creds.Enter(r)) != 0) return Err(err);
  int fd = OpenDir(path_fd->get());
  if (fd < 0) return Err(fd);
  close(fd);
  fuse_open_out out{};
  return StructReply(s, out);
}

ReplyBuf OpLock(ShareServer& s, const ServerRequest& r) {
  fuse_lk_in in;
  if (!BodyStruct(r, &in)) return Err(-EINVAL);
  const fuse_file_lock& lk = in.lk;
  if (lk.type != F_RDLCK && lk.type != F_WRLCK && lk.type != F_UNLCK) return Err(-EINVAL);
  if (lk.start > kMaxOffset || lk.end > kMaxOffset || lk.end < lk.start) return Err(-EINVAL);
  int err = 0;
  FdRef fd = s.LockFd(r.client, in.owner, r.handle[0], &err);
  if (!fd) return Err(err);
  const uint8_t would_block = r.opcode == FUSE_SETLKW ? kReplyWouldBlock : 0;
  if ((in.lk_flags & FUSE_LK_FLOCK) != 0 && r.opcode != FUSE_GETLK) {
    const int op = lk.type == F_RDLCK ? LOCK_SH : lk.type == F_WRLCK ? LOCK_EX : LOCK_UN;
    if (flock(fd->get(), op | LOCK_NB) != 0) {
      const int e = errno;
      return e == EWOULDBLOCK ? ErrorReply(-EAGAIN, would_block) : Err(-e);
    }
    return EmptyReply(s);
  }
  struct flock fl{};
  fl.l_type = static_cast<short>(lk.type);
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(lk.start);
  fl.l_len = lk.end == kMaxOffset ? 0 : static_cast<off_t>(lk.end - lk.start + 1);
  fl.l_pid = 0;
  if (r.opcode == FUSE_GETLK) {
    if (fcntl(fd->get(), F_OFD_GETLK, &fl) != 0) return Err(-errno);
    fuse_lk_out out{};
    out.lk.type = static_cast<uint32_t>(fl.l_type);
    if (fl.l_type != F_UNLCK) {
      out.lk.start = static_cast<uint64_t>(fl.l_start);
      out.lk.end = fl.l_len == 0 ? kMaxOffset : static_cast<uint64_t>(fl.l_start + fl.l_len - 1);
    } else {
      out.lk.start = lk.start;
      out.lk.end = lk.end;
    }
    out.lk.pid = 0;
    return StructReply(s, out);
  }
  if (fcntl(fd->get(), F_OFD_SETLK, &fl) != 0) {
    const int e = errno;
    return e == EAGAIN || e == EACCES ? ErrorReply(-EAGAIN, would_block) : Err(-e);
  }
  return EmptyReply(s);
}

ReplyBuf OpXattr(ShareServer& s, const ServerRequest& r) {
  std::string name;
  size_t next = 0;
  fuse_getxattr_in get{};
  const char* value = nullptr;
  uint32_t value_len = 0;
  uint32_t set_flags = 0;
  int err = 0;
  if (r.opcode == FUSE_GETXATTR || r.opcode == FUSE_LISTXATTR) {
    if (!BodyStruct(r, &get)) return Err(-EINVAL);
    if (get.size > kMaxXattrBytes) get.size = kMaxXattrBytes;
    if (r.opcode == FUSE_GETXATTR) err = XattrName(r, sizeof get, &name, &next);
  } else if (r.opcode == FUSE_REMOVEXATTR) {
    err = XattrName(r, 0, &name, &next);
  } else {
    // The kernel sends the 8-byte form unless FUSE_SETXATTR_EXT was agreed:
    // take the form whose name and value end exactly at the body's end.
    fuse_setxattr_in in{};
    if (r.body_len < FUSE_COMPAT_SETXATTR_IN_SIZE) return Err(-EINVAL);
    std::memcpy(&in, r.body, FUSE_COMPAT_SETXATTR_IN_SIZE);  // size and flags, in both forms
    err = -EINVAL;
    for (size_t head : {size_t{FUSE_COMPAT_SETXATTR_IN_SIZE}, sizeof(fuse_setxattr_in)}) {
      if (r.body_len < head || XattrName(r, head, &name, &next) != 0) continue;
      if (r.body_len - next != in.size) continue;
      err = 0;
      break;
    }
    if (err == 0) {
      if (in.size > kMaxXattrBytes) return Err(-E2BIG);
      value = reinterpret_cast<const char*>(r.body + next);
      value_len = in.size;
      set_flags = in.flags;
    }
  }
  if (err != 0) return Err(err);
  int path_err = 0;
  FdRef fd = s.Resolve(r.handle[0], &path_err);
  if (!fd) return Err(path_err);
  struct stat st;
  if (fstatat(fd->get(), "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return Err(-errno);
  // A symlink's own attributes cannot be reached through its descriptor.
  if (S_ISLNK(st.st_mode)) return Err(-EOPNOTSUPP);
  char path[32];
  FdPath(fd->get(), path);
  CallerCreds creds;
  if ((err = creds.Enter(r)) != 0) return Err(err);
  if (r.opcode == FUSE_SETXATTR) {
    if (setxattr(path, name.c_str(), value, value_len, static_cast<int>(set_flags)) != 0) return Err(-errno);
    return EmptyReply(s);
  }
  if (r.opcode == FUSE_REMOVEXATTR) {
    if (removexattr(path, name.c_str()) != 0) return Err(-errno);
    return EmptyReply(s);
  }
  ReplyWriter w(s.tag(), nullptr, get.size);
  ssize_t n = r.opcode == FUSE_GETXATTR
                  ? getxattr(path, name.c_str(), get.size != 0 ? w.body() : nullptr, get.size)
                  : listxattr(path, get.size != 0 ? reinterpret_cast<char*>(w.body()) : nullptr, get.size);
  if (n < 0) return Err(-errno);
  if (get.size != 0) return w.Finish(static_cast<size_t>(n));
  fuse_getxattr_out out{};
  out.size = static_cast<uint32_t>(n);
  return StructReply(s, out);
}

}  // namespace share
}  // namespace pxd
