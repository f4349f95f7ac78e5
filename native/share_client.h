// The client end of a shared volume: a FUSE file system, speaking the kernel
// protocol on /dev/fuse directly (no libfuse). Every file operation becomes
// a wire request (share_wire.h) that the sink (JavaScript) carries to the
// serving node; the wire reply it brings back is turned into the kernel's
// reply. Answered here: INIT, FORGET, DESTROY, requests naming a nodeid the
// kernel has forgotten (ESTALE), and the few opcodes the wire cannot carry
// (ENOSYS: COPY_FILE_RANGE, TMPFILE, IOCTL, POLL, BMAP, DAX mappings).
//
// Nodeids are the client's own: the server knows files only by their
// persistent handles. The table maps each handle the kernel holds a
// reference to (by LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE) to a nodeid,
// the same one for every entry naming the same file (hard links, repeated
// lookups), and drops it when the kernel forgets it. Nodeids are never
// reused while mounted. Nodeid 1 is the root's handle, given at mount.
//
// Memory: requests are read into a fixed pool of slots, allocated once. The
// kernel's message lands at kMsgOffset, so its body (what follows
// fuse_in_header) starts at kBodyOffset; the wire request's header, groups
// and handles are then written just before the body, over the kernel's
// header, making the wire request one contiguous range with no copy of the
// body. A request owns its slot until Reply() or Fail(); when every slot is
// taken the reader waits for one (the kernel keeps the rest queued).
#ifndef PXD_NATIVE_SHARE_CLIENT_H_
#define PXD_NATIVE_SHARE_CLIENT_H_

#include <linux/fuse.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "fuse_server.h"  // FuseError, SlotPool
#include "share_wire.h"

namespace pxd {
namespace share {

class ClientSink {
 public:
  virtual ~ClientSink() = default;
  // Called on the reader thread; must only queue the event for later. The
  // generation tells a slot's requests apart (see ShareClient::Pending).
  virtual void Request(uint32_t slot, uint32_t generation) = 0;
  virtual void Interrupt(uint32_t slot, uint32_t generation) = 0;
  // The reader stopped on its own (unmounted from outside: 0; else the errno).
  virtual void Stopped(int os_errno) = 0;
};

struct ClientStats {
  uint64_t requests = 0;       // wire requests handed to the sink
  uint64_t bytes_read = 0;     // READ data given to the kernel
  uint64_t bytes_written = 0;  // WRITE data the server acknowledged
  uint64_t nodes = 0;          // nodeids known, the root included
};

class ShareClient {
 public:
  // The longest wire prefix: header, kMaxGroups groups, two largest handles.
  static constexpr size_t kMaxPrefix =
      sizeof(WireRequest) + Pad8(kMaxGroups * sizeof(uint32_t)) + 2 * HandleWireBytes(kMaxHandleBytes);
  static constexpr size_t kBodyOffset = kMaxPrefix;
  static constexpr size_t kMsgOffset = kBodyOffset - sizeof(fuse_in_header);
  // What one read of /dev/fuse may bring: a 1 MiB WRITE with its headers,
  // and at least the kernel's minimum buffer.
  static constexpr size_t kReadBytes = kMaxMessageBytes;
  static_assert(kMaxPrefix == 448, "the wire prefix is 32 + 128 + 2 * 144 bytes at most");
  static_assert(kReadBytes >= sizeof(fuse_in_header) + sizeof(fuse_write_in) + kMaxDataBytes,
                "a slot holds a largest WRITE");

  struct Options {
    std::string mountpoint;
    std::string fsname;
    std::string root_handle;  // one WireHandle with its bytes and padding
    uint32_t root_mode = 0;   // S_IFDIR | permissions
    uint32_t slots = 32;      // 2..256
    uint32_t attr_timeout_ms = 1000;
    // A live restart: serve this connection (mounted at mountpoint, INIT done)
    // instead of mounting one, with the nodeid table HandOff() gave. The root
    // handle, mode and fsname are not used then.
    int adopt_fd = -1;
    std::string table;
    uint64_t next_nodeid = 0;
    // Requests the predecessor read and left to this process to answer (HandOff).
    std::string pending;
  };

  // Opens /dev/fuse, mounts it and starts the reader thread; or adopts a
  // connection (Options::adopt_fd). Throws FuseError.
  ShareClient(const Options& options, ClientSink* sink);
  // Detaches lazily if still mounted, and stops.
  ~ShareClient();
  ShareClient(const ShareClient&) = delete;
  ShareClient& operator=(const ShareClient&) = delete;

  // Where the wire request of a pending slot lies (offsets into the pool);
  // false when the slot holds no request of that generation any more.
  bool Pending(uint32_t slot, uint32_t generation, size_t* offset, size_t* length) const;
  // The FUSE opcode of the request pending in `slot`, 0 when none is.
  uint32_t Opcode(uint32_t slot) const;

  // Answers the request in `slot` with a wire reply (a malformed one: -EIO),
  // or with -os_errno, and frees the slot. Ignored when nothing is pending
  // there (answered already, or unmounted).
  void Reply(uint32_t slot, const uint8_t* reply, size_t len);
  void Fail(uint32_t slot, int os_errno);

  // Unmounts (MNT_DETACH when lazy) and stops the reader; without `lazy` it
  // throws EBUSY while the mount is in use, and keeps serving. Requests still
  // pending are answered ENOTCONN. Idempotent.
  void Unmount(bool lazy);

  // A live restart, in two steps. Pause: the reader stops reading (the kernel
  // queues what comes meanwhile); requests pending stay answerable. HandOff:
  // gives up the connection (returned, open, still mounted), writes the
  // nodeid table for Options::table and the requests still pending for
  // Options::pending (the successor answers them); the client is stopped
  // then. Throws FuseError.
  void Pause();
  int HandOff(std::string* table, uint64_t* next_nodeid, std::string* pending);

  ClientStats stats() const;
  const std::shared_ptr<SlotPool>& pool() const { return pool_; }
  size_t slot_bytes() const { return slot_bytes_; }
  uint32_t slots() const { return static_cast<uint32_t>(slots_.size()); }

 private:
  struct Slot {
    uint64_t unique = 0;
    uint32_t opcode = 0;
    uint64_t nodeid = 0;  // the request's, for what the reply makes of it
    uint32_t generation = 0;
    uint32_t wire_at = 0;  // offset of the wire request inside the slot
    uint32_t wire_len = 0;
    bool pending = false;  // with the sink, not answered yet
  };
  struct Node {
    std::string handle;  // the wire form: WireHandle, bytes, zero padding
    uint64_t lookups = 0;
  };
  struct Groups {
    std::chrono::steady_clock::time_point at;
    uint16_t count = 0;
    uint32_t gids[kMaxGroups];
  };

  // share_client.cc: the mount, the reader and its slots.
  void Serve();
  bool AcquireSlot(uint32_t* slot);
  void ReleaseSlot(uint32_t slot);
  // Takes the request out of `slot` for answering: false when none is pending.
  bool Claim(uint32_t slot, uint64_t* unique, uint32_t* opcode, uint64_t* nodeid = nullptr);
  void Handle(uint32_t slot, uint8_t* msg, size_t len);
  void OnInit(uint64_t unique, const uint8_t* in, size_t in_len);
  void OnInterrupt(const uint8_t* in, size_t in_len);
  void ReplyError(uint64_t unique, int os_errno);
  void Stop();
  void StopReader();
  // Fills the nodeid table from Options::table; false when malformed.
  bool LoadTable(const std::string& table, uint64_t next_nodeid);
  // Takes over Options::pending into free slots; false when malformed or too many.
  bool LoadPending(const std::string& pending, std::vector<std::pair<uint32_t, uint32_t>>* loaded);
  // The caller's supplementary groups (cached per pid for a second).
  const Groups& GroupsOf(uint32_t pid);

  // share_client_wire.cc: requests, replies and the nodeid table.
  // Builds the wire request in place and hands the slot to the sink; false
  // when it was answered here (and the slot is free to reuse).
  bool Forward(uint32_t slot, const fuse_in_header& h, uint8_t* body, size_t body_len);
  void OnForget(uint64_t nodeid, uint64_t nlookup);
  void OnBatchForget(const uint8_t* in, size_t in_len);
  // The nodeid for a reply's handle, its lookup count raised by one.
  uint64_t Ref(const std::string& handle);
  // Writes the kernel's reply for a wire reply (-EIO for a malformed one). A
  // reference taken for an entry the kernel then refused is given back.
  void Translate(uint64_t unique, uint32_t opcode, uint64_t nodeid, const uint8_t* reply, size_t len);
  // Marks a nodeid's cached attributes stale (FUSE_NOTIFY_INVAL_INODE, attributes only).
  void InvalidateAttributes(uint64_t nodeid);

  const std::string mountpoint_;
  const uint32_t attr_timeout_ms_;
  const size_t slot_bytes_;
  ClientSink* const sink_;
  std::shared_ptr<SlotPool> pool_;

  int fd_ = -1;
  int stop_fd_ = -1;
  bool mounted_ = false;
  std::thread reader_;

  mutable std::mutex slots_mu_;
  std::condition_variable slots_cv_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  bool stopping_ = false;

  mutable std::mutex nodes_mu_;
  std::unordered_map<uint64_t, Node> nodes_;
  std::unordered_map<std::string, uint64_t> nodeids_;  // by wire handle
  uint64_t next_nodeid_ = FUSE_ROOT_ID + 1;

  // Reader thread only.
  std::unordered_map<uint32_t, Groups> groups_;

  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<uint64_t> bytes_written_{0};
};

// A handle given by JS (rootHandle) or a reply, checked and in wire form with
// zero padding; false when malformed. `len` may exceed the handle's bytes.
bool NormalizeHandle(const uint8_t* p, size_t len, std::string* out);

}  // namespace share
}  // namespace pxd

#endif  // PXD_NATIVE_SHARE_CLIENT_H_
