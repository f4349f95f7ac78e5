// The shared-volume server's parsing of wire requests and its dispatch to the
// operations; see share_server.h.
#include <linux/fuse.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <new>

#include "share_server.h"

namespace pxd {
namespace share {
namespace {

int Parse(const ShareServer& s, uint32_t client, const uint8_t* p, size_t len, ServerRequest* r) {
  WireRequest h;
  if (len < sizeof h || len > kMaxMessageBytes) return -EPROTO;
  std::memcpy(&h, p, sizeof h);
  if (h.flags != 0 || h.reserved != 0 || h.ngroups > kMaxGroups || h.nhandles > 2) return -EINVAL;
  size_t at = sizeof h;
  const size_t group_bytes = Pad8(size_t{h.ngroups} * 4);
  if (len - at < group_bytes) return -EPROTO;
  std::memcpy(r->groups, p + at, size_t{h.ngroups} * 4);
  at += group_bytes;
  bool stale = false;
  for (uint32_t i = 0; i < h.nhandles; i++) {
    WireHandle wh;
    if (len - at < sizeof wh) return -EPROTO;
    std::memcpy(&wh, p + at, sizeof wh);
    if (wh.bytes < 1 || wh.bytes > kMaxHandleBytes) return -EINVAL;
    if (len - at < HandleWireBytes(wh.bytes)) return -EPROTO;
    if (wh.tag != s.tag()) stale = true;
    r->handle[i].assign(reinterpret_cast<const char*>(&wh.type), 4);
    r->handle[i].append(reinterpret_cast<const char*>(p + at + sizeof wh), wh.bytes);
    at += HandleWireBytes(wh.bytes);
  }
  if (len - at != h.body_len) return -EPROTO;
  if (stale) return -ESTALE;
  r->client = client;
  r->opcode = h.opcode;
  r->uid = h.uid;
  r->gid = h.gid;
  r->ngroups = h.ngroups;
  r->nhandles = h.nhandles;
  r->body = p + at;
  r->body_len = h.body_len;
  return 0;
}

ReplyBuf Err(int error) { return ErrorReply(error); }

ReplyBuf Dispatch(ShareServer& s, const ServerRequest& r) {
  uint32_t want = 1;
  switch (r.opcode) {
    case kOpRoot:
      want = 0;
      break;
    case FUSE_RENAME:
    case FUSE_RENAME2:
    case FUSE_LINK:
      want = 2;
      break;
    case FUSE_STATFS:
      want = r.nhandles == 0 ? 0 : 1;  // its nodeid, or none for the root
      break;
    case FUSE_LOOKUP: case FUSE_GETATTR: case FUSE_SETATTR: case FUSE_READLINK: case FUSE_SYMLINK:
    case FUSE_MKNOD: case FUSE_MKDIR: case FUSE_UNLINK: case FUSE_RMDIR: case FUSE_OPEN: case FUSE_CREATE:
    case FUSE_READ: case FUSE_WRITE: case FUSE_RELEASE: case FUSE_FSYNC: case FUSE_FLUSH: case FUSE_OPENDIR:
    case FUSE_READDIR: case FUSE_RELEASEDIR: case FUSE_FSYNCDIR: case FUSE_GETLK: case FUSE_SETLK:
    case FUSE_SETLKW: case FUSE_ACCESS: case FUSE_FALLOCATE: case FUSE_LSEEK: case FUSE_GETXATTR:
    case FUSE_LISTXATTR: case FUSE_SETXATTR: case FUSE_REMOVEXATTR:
      break;
    default:
      return Err(-ENOSYS);
  }
  if (r.nhandles != want) return Err(-EINVAL);
  switch (r.opcode) {
    case kOpRoot: return OpRoot(s, r);
    case FUSE_LOOKUP: return OpLookup(s, r);
    case FUSE_GETATTR: return OpGetattr(s, r);
    case FUSE_SETATTR: return OpSetattr(s, r);
    case FUSE_READLINK: return OpReadlink(s, r);
    case FUSE_SYMLINK: return OpSymlink(s, r);
    case FUSE_MKNOD:
    case FUSE_MKDIR: return OpMknodMkdir(s, r);
    case FUSE_UNLINK:
    case FUSE_RMDIR: return OpUnlink(s, r);
    case FUSE_RENAME:
    case FUSE_RENAME2: return OpRename(s, r);
    case FUSE_LINK: return OpLink(s, r);
    case FUSE_OPEN: return OpOpen(s, r);
    case FUSE_CREATE: return OpCreate(s, r);
    case FUSE_ACCESS: return OpAccess(s, r);
    case FUSE_READ: return OpRead(s, r);
    case FUSE_WRITE: return OpWrite(s, r);
    case FUSE_FSYNC:
    case FUSE_FLUSH:
    case FUSE_RELEASE: return OpFsyncFlushRelease(s, r);
    case FUSE_FALLOCATE:
    case FUSE_LSEEK: return OpFallocateLseek(s, r);
    case FUSE_STATFS: return OpStatfs(s, r);
    case FUSE_OPENDIR:
    case FUSE_READDIR:
    case FUSE_RELEASEDIR:
    case FUSE_FSYNCDIR: return OpDir(s, r);
    case FUSE_GETLK:
    case FUSE_SETLK:
    case FUSE_SETLKW: return OpLock(s, r);
    default: return OpXattr(s, r);
  }
}

}  // namespace

ReplyBuf EmptyReply(const ShareServer&, int error) { return ErrorReply(error); }

int BodyName(const ServerRequest& r, size_t at, char (&out)[kMaxNameBytes + 1], size_t* next) {
  if (at >= r.body_len) return -EINVAL;
  const uint8_t* p = r.body + at;
  const size_t room = r.body_len - at;
  const void* nul = std::memchr(p, '\0', room < kMaxNameBytes + 1 ? room : kMaxNameBytes + 1);
  if (nul == nullptr) return room > kMaxNameBytes ? -ENAMETOOLONG : -EINVAL;
  const size_t n = static_cast<size_t>(static_cast<const uint8_t*>(nul) - p);
  if (n == 0 || std::memchr(p, '/', n) != nullptr) return -EINVAL;
  if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) return -EINVAL;
  std::memcpy(out, p, n + 1);
  *next = at + n + 1;
  return 0;
}

int FhFlags(uint64_t fh, uint32_t* flags) {
  if ((fh & ~uint64_t{kFhFlagsMask}) != 0 || (fh & O_ACCMODE) == O_ACCMODE) return -EINVAL;
  *flags = static_cast<uint32_t>(fh);
  return 0;
}

ReplyBuf ExecuteRequest(ShareServer& s, uint32_t client, const uint8_t* req, size_t len) {
  try {
    ServerRequest r;
    int err = Parse(s, client, req, len, &r);
    return err != 0 ? Err(err) : Dispatch(s, r);
  } catch (const std::bad_alloc&) {
  } catch (...) {
  }
  try {
    return ErrorReply(-ENOMEM);
  } catch (...) {
    return ReplyBuf{};  // the caller answers -ENOMEM itself
  }
}

}  // namespace share
}  // namespace pxd
