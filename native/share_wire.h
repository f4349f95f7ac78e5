// The wire format of a shared volume's file operations, between a client
// node's FUSE file system (share_client) and the serving node's executor
// (share_server). JavaScript on both ends only moves these bytes inside a
// peer frame; it never parses them.
//
// A request is a FUSE request with its nodeids replaced by the file system's
// own persistent handles (name_to_handle_at), so a request means the same
// thing to whichever node serves the volume next, and the server keeps no
// table of nodeids. A reply is what the kernel expects after fuse_out_header,
// plus the handle of any entry it names; the client gives that handle a
// nodeid of its own.
//
// Request:  WireRequest | uint32 groups[ngroups] (padded to 8) |
//           nhandles x (WireHandle | bytes, padded to 8) |
//           body: the kernel's bytes after fuse_in_header, unchanged
// Reply:    WireReply | nhandles x (WireHandle | bytes, padded to 8) | body
//
// All fields little-endian (both ends are the same architecture family; the
// handshake of the peer link already requires the same protocol version).
//
// Which handles a request carries:
//   handle[0]: the request's nodeid (every opcode that has one)
//   handle[1]: RENAME / RENAME2: newdir; LINK: oldnodeid (the body's nodeid
//              fields are ignored by the server)
// Which replies carry a handle: LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE
// and kOpRoot, when error == 0: the new entry's. fuse_entry_out.nodeid is 0
// on the wire; the client fills it in.
//
// File handles (fh): the server answers OPEN and CREATE with
// fuse_open_out.fh = the open flags it opened the file with (kFhFlagsMask of
// the caller's flags). Requests that name an fh (READ, WRITE, FLUSH, RELEASE,
// FSYNC, GETLK, SETLK, SETLKW, FALLOCATE, LSEEK) send it back unchanged with
// handle[0]; the server finds or reopens its descriptor from (handle, flags),
// so an open file keeps working when another node takes over. OPENDIR answers
// fh = 0; READDIR reads from the handle at the given offset (ext4's offsets
// are stable hash cookies).
//
// Locks: the server is the lock manager. GETLK/SETLK/SETLKW take open file
// description locks on a descriptor of the server's per (client, lock owner,
// handle), so locks of different client processes conflict as they would on
// one host, and with POSIX locks of processes on the server node. FLUSH with
// its lock_owner releases that owner's POSIX locks; RELEASE with
// FUSE_RELEASE_FLOCK_UNLOCK releases its flock locks. A SETLKW that cannot
// have the lock now is answered with error -EAGAIN and kReplyWouldBlock: the
// server's JavaScript asks again until it gets it or the client interrupts.
// Dropping a client (shareServerDropClient) releases all its locks.
//
// Credentials: uid, gid and the supplementary groups of the calling process;
// the server runs each operation with them as fsuid/fsgid/groups on its worker
// thread, so the checks are the file system's own.
#ifndef PXD_NATIVE_SHARE_WIRE_H_
#define PXD_NATIVE_SHARE_WIRE_H_

#include <fcntl.h>

#include <cstddef>
#include <cstdint>

namespace pxd {
namespace share {

constexpr uint32_t kMaxHandleBytes = 128;  // MAX_HANDLE_SZ
constexpr uint32_t kMaxGroups = 32;
constexpr uint32_t kMaxNameBytes = 255;
constexpr uint32_t kMaxDataBytes = 1u << 20;  // largest READ/WRITE payload
// Largest request or reply: data + body structs + headers + two handles.
constexpr uint32_t kMaxMessageBytes = kMaxDataBytes + 4096;

// Our own opcodes, outside FUSE's range.
// kOpRoot: no handles, no body. Reply: handle of the root directory and a
// fuse_attr_out body. The first request a client sends.
constexpr uint32_t kOpRoot = 0x10001;

// Open flags an fh keeps (the server opens with these).
constexpr uint32_t kFhFlagsMask = O_ACCMODE | O_APPEND | O_DIRECT | O_SYNC | O_DSYNC | O_NOATIME;

struct WireHandle {
  uint64_t tag;    // the volume's tag; a handle with another tag is refused (ESTALE)
  int32_t type;    // file_handle.handle_type
  uint32_t bytes;  // file_handle.handle_bytes, 1..kMaxHandleBytes
  // then `bytes` bytes of handle, then zero padding to a multiple of 8
};
static_assert(sizeof(WireHandle) == 16, "WireHandle is 16 bytes");

struct WireRequest {
  uint32_t opcode;   // FUSE opcode, or kOpRoot
  uint32_t uid;
  uint32_t gid;
  uint32_t pid;
  uint16_t ngroups;  // <= kMaxGroups
  uint8_t nhandles;  // 0..2
  uint8_t flags;     // 0
  uint32_t body_len;
  uint64_t reserved; // 0
};
static_assert(sizeof(WireRequest) == 32, "WireRequest is 32 bytes");

constexpr uint8_t kReplyWouldBlock = 1;

struct WireReply {
  int32_t error;     // 0 or -errno
  uint32_t body_len;
  uint8_t nhandles;  // 0 or 1
  uint8_t flags;     // kReplyWouldBlock
  uint8_t pad[6];
};
static_assert(sizeof(WireReply) == 16, "WireReply is 16 bytes");

inline constexpr size_t Pad8(size_t n) { return (n + 7) & ~size_t{7}; }
inline constexpr size_t HandleWireBytes(uint32_t bytes) { return sizeof(WireHandle) + Pad8(bytes); }

}  // namespace share
}  // namespace pxd

#endif  // PXD_NATIVE_SHARE_WIRE_H_
