// The shared-volume server's operations that make, change and remove names:
// readlink and symlink, mknod and mkdir, unlink and rmdir, rename, link; see
// share_server.h. Each one that makes a name answers with its entry
// (EntryReply, share_server_ops.cc).
#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "share_server.h"

namespace pxd {
namespace share {
namespace {

constexpr uint32_t kMaxLinkBytes = 4095;  // PATH_MAX less its NUL

ReplyBuf Err(int error) { return ErrorReply(error); }

}  // namespace

ReplyBuf OpReadlink(ShareServer& s, const ServerRequest& r) {
  Prepared p(s, r);
  if (p.err != 0) return Err(p.err);
  ReplyWriter w(s.tag(), nullptr, kMaxLinkBytes + 1);
  ssize_t n = readlinkat(p.fd[0]->get(), "", reinterpret_cast<char*>(w.body()), kMaxLinkBytes + 1);
  if (n < 0) return Err(-errno);
  if (static_cast<size_t>(n) > kMaxLinkBytes) return Err(-ENAMETOOLONG);
  return w.Finish(static_cast<size_t>(n));
}

ReplyBuf OpSymlink(ShareServer& s, const ServerRequest& r) {
  char name[kMaxNameBytes + 1];
  size_t next;
  int err = BodyName(r, 0, name, &next);
  if (err != 0) return Err(err);
  const char* target = reinterpret_cast<const char*>(r.body + next);
  const size_t room = r.body_len - next;
  const void* nul = std::memchr(target, '\0', room);
  if (nul == nullptr) return Err(-EINVAL);
  const size_t target_len = static_cast<size_t>(static_cast<const char*>(nul) - target);
  if (target_len == 0) return Err(-ENOENT);
  if (target_len > kMaxLinkBytes) return Err(-ENAMETOOLONG);
  std::string link(target, target_len);
  Prepared p(s, r);
  if (p.err != 0) return Err(p.err);
  if (symlinkat(link.c_str(), p.fd[0]->get(), name) != 0) return Err(-errno);
  return NewEntry(s, p.fd[0]->get(), name);
}

ReplyBuf OpMknodMkdir(ShareServer& s, const ServerRequest& r) {
  char name[kMaxNameBytes + 1];
  size_t next;
  uint32_t mode;
  uint32_t umask_bits;
  uint32_t rdev = 0;
  int err;
  if (r.opcode == FUSE_MKDIR) {
    fuse_mkdir_in in;
    if (!BodyStruct(r, &in)) return Err(-EINVAL);
    mode = in.mode;
    umask_bits = in.umask;
    err = BodyName(r, sizeof in, name, &next);
  } else {
    fuse_mknod_in in;
    if (!BodyStruct(r, &in)) return Err(-EINVAL);
    mode = in.mode;
    umask_bits = in.umask;
    rdev = in.rdev;
    err = BodyName(r, sizeof in, name, &next);
    const uint32_t type = mode & S_IFMT;
    if (type != S_IFREG && type != S_IFIFO && type != S_IFCHR && type != S_IFBLK && type != S_IFSOCK) {
      return Err(-EINVAL);
    }
  }
  if (err != 0) return Err(err);
  // The kernel masked the mode already unless told not to; masking again is the same.
  const mode_t perms = mode & 07777 & ~umask_bits;
  Prepared p(s, r);
  if (p.err != 0) return Err(p.err);
  const int dir = p.fd[0]->get();
  if (r.opcode == FUSE_MKDIR) {
    if (mkdirat(dir, name, perms) != 0) return Err(-errno);
  } else {
    // The kernel's 32-bit encoding (new_decode_dev).
    const dev_t dev = makedev((rdev & 0xfff00) >> 8, (rdev & 0xff) | ((rdev >> 12) & 0xfff00));
    if (mknodat(dir, name, (mode & S_IFMT) | perms, dev) != 0) return Err(-errno);
  }
  return NewEntry(s, dir, name);
}

namespace {

// The inode `name` in `dir` is, if its removal would free it (its last name).
ino_t LastNameOf(int dir, const char* name) {
  struct stat st;
  if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return 0;
  return S_ISDIR(st.st_mode) || st.st_nlink <= 1 ? st.st_ino : 0;
}

}  // namespace

ReplyBuf OpUnlink(ShareServer& s, const ServerRequest& r) {
  char name[kMaxNameBytes + 1];
  size_t next;
  int err = BodyName(r, 0, name, &next);
  if (err != 0) return Err(err);
  Prepared p(s, r);
  if (p.err != 0) return Err(p.err);
  const int dir = p.fd[0]->get();
  const ino_t gone = LastNameOf(dir, name);
  if (unlinkat(dir, name, r.opcode == FUSE_RMDIR ? AT_REMOVEDIR : 0) != 0) return Err(-errno);
  if (gone != 0) s.Forget(gone);
  return EmptyReply(s);
}

ReplyBuf OpRename(ShareServer& s, const ServerRequest& r) {
  uint32_t flags = 0;
  size_t at;
  if (r.opcode == FUSE_RENAME2) {
    fuse_rename2_in in;
    if (!BodyStruct(r, &in)) return Err(-EINVAL);
    flags = in.flags;
    at = sizeof in;
  } else {
    fuse_rename_in in;
    if (!BodyStruct(r, &in)) return Err(-EINVAL);
    at = sizeof in;
  }
  if ((flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) != 0) return Err(-EINVAL);
  char from[kMaxNameBytes + 1];
  char to[kMaxNameBytes + 1];
  size_t next;
  int err = BodyName(r, at, from, &next);
  if (err == 0) err = BodyName(r, next, to, &next);
  if (err != 0) return Err(err);
  Prepared p(s, r);
  if (p.err != 0) return Err(p.err);
  const int olddir = p.fd[0]->get();
  const int newdir = p.fd[1]->get();
  const ino_t replaced = (flags & RENAME_EXCHANGE) != 0 ? 0 : LastNameOf(newdir, to);
  if (syscall(SYS_renameat2, olddir, from, newdir, to, flags) != 0) return Err(-errno);
  if (replaced != 0) s.Forget(replaced);
  return EmptyReply(s);
}

ReplyBuf OpLink(ShareServer& s, const ServerRequest& r) {
  fuse_link_in in;
  if (!BodyStruct(r, &in)) return Err(-EINVAL);
  char name[kMaxNameBytes + 1];
  size_t next;
  int err = BodyName(r, sizeof in, name, &next);
  if (err != 0) return Err(err);
  Prepared p(s, r);
  if (p.err != 0) return Err(p.err);
  char path[32];
  FdPath(p.fd[1]->get(), path);
  // linkat(AT_EMPTY_PATH) would need CAP_DAC_READ_SEARCH; the magic link does not.
  if (linkat(AT_FDCWD, path, p.fd[0]->get(), name, AT_SYMLINK_FOLLOW) != 0) return Err(-errno);
  return EntryReply(s, p.fd[1]);
}

}  // namespace share
}  // namespace pxd
