// A FUSE file server for the node's device directory, speaking the kernel
// protocol on /dev/fuse directly (no libfuse).
//
// Why not libfuse 2 (fuse-native): it never negotiates FUSE_ASYNC_DIO, so the
// loop device's direct I/O reaches the daemon one request at a time, and it
// caps requests at 128 KiB. Here the kernel is asked for asynchronous direct
// I/O and up to 1 MiB per request, so a loop device keeps many requests in
// flight and the engine's replicas work on them in parallel.
//
// The directory is flat and small: one regular file per attached volume. The
// server's reader thread answers every metadata request (lookup, getattr,
// readdir, open, statfs, ...) from its own table; only READ, WRITE, FLUSH,
// FSYNC and FALLOCATE (discard: a loop device's punch-hole or zero-range) go to
// the sink (JavaScript), which answers them with Reply().
//
// Memory: requests are read into a fixed pool of slots, allocated once. A
// request handed to the sink owns its slot until Reply(); the payload of a
// WRITE lands page-aligned at slot + kDataOffset, and READ data is put there.
// No copy is made between the kernel and the block store or the peer socket.
//
// Where it lives: fuse_server.cc has the connection, the slots, the reader and
// the data requests, fuse_fallocate.cc FALLOCATE's modes; fuse_directory.cc the
// file table and the metadata requests; fuse_session.cc the hand-over of a
// session to another process.
#ifndef PXD_NATIVE_FUSE_SERVER_H_
#define PXD_NATIVE_FUSE_SERVER_H_

#include <cstddef>
#include <cstdint>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace pxd {

struct FuseError : std::runtime_error {
  FuseError(const std::string& code, int os_errno, const std::string& message)
      : std::runtime_error(message), code(code), os_errno(os_errno) {}
  std::string code;
  int os_errno;
};

// The slot memory; shared with JS views of it, so it outlives the server
// until both let go.
class SlotPool {
 public:
  SlotPool(size_t slots, size_t slot_bytes);
  ~SlotPool();
  SlotPool(const SlotPool&) = delete;
  SlotPool& operator=(const SlotPool&) = delete;
  uint8_t* base() const { return base_; }
  size_t bytes() const { return bytes_; }

 private:
  uint8_t* base_;
  size_t bytes_;
};

enum class FuseKind : uint32_t {
  kStopped = 0,  // the server stopped on its own; length carries the errno
  kRead = 1,
  kWrite = 2,
  kFlush = 3,  // FLUSH (a handle closed) and FSYNC alike
  kDiscard = 4,  // FALLOCATE punching a hole or zeroing a range
  kInit = 5,  // INIT answered; length carries the request timeout in force (s), 0 if none
};

// What the sink is told about a request; lives in the slot's table entry.
struct FuseRequest {
  uint64_t unique = 0;
  FuseKind kind = FuseKind::kRead;
  uint32_t key = 0;  // the file's key, given by AddFile
  uint64_t offset = 0;
  uint64_t length = 0;  // a discard's may pass 4 GiB; reads and writes fit a slot
};

class FuseSink {
 public:
  virtual ~FuseSink() = default;
  // Called on the reader thread; must only queue the slot for later.
  virtual void Dispatch(uint32_t slot) = 0;
  virtual void Stopped(int os_errno) = 0;
  // Called on the reader thread once INIT is answered: the request timeout the
  // kernel was asked for (seconds), 0 when none was asked or the kernel offers none.
  virtual void Initialized(uint16_t request_timeout) { (void)request_timeout; }
};

class FuseServer {
 public:
  // Page-aligned payloads: a WRITE's 80 bytes of headers end here.
  static constexpr size_t kDataOffset = 4096;

  struct Options {
    std::string mountpoint;
    uint32_t max_request_bytes = 1 << 20;  // a multiple of 4096, <= 1 MiB
    uint32_t slots = 32;
    uint16_t max_background = 16;
    // Seconds a request may wait for its answer before the kernel aborts the
    // whole connection (FUSE_REQUEST_TIMEOUT, Linux 6.14); 0: no bound.
    uint16_t request_timeout = 0;
  };

  // Opens /dev/fuse, mounts it at options.mountpoint and starts serving.
  FuseServer(const Options& options, FuseSink* sink);

  // A session another process mounted and served (a live restart,
  // fuse_session.cc): the kernel's connection on `fd` (owned from now on), the
  // files it knows by nodeid. Nothing is served until Serve(): bind the files
  // first (BindFile), so no request reaches a volume that is not open yet.
  struct AdoptedFile {
    std::string name;
    uint64_t nodeid = 0;
    uint64_t size = 0;
  };
  struct Adopted {
    int fd = -1;
    std::vector<AdoptedFile> files;
    uint64_t next_nodeid = 2;
    int64_t mounted_at = 0;
  };
  FuseServer(const Options& options, FuseSink* sink, const Adopted& adopted);
  ~FuseServer();
  FuseServer(const FuseServer&) = delete;
  FuseServer& operator=(const FuseServer&) = delete;

  // Every file added gets a nodeid of its own, never used again while the
  // server runs, also when the name was there before: what still holds the
  // earlier file (a lazily detached loop device) cannot reach this one.
  void AddFile(const std::string& name, uint64_t size, uint32_t key);
  // A file's new size (its volume grew); false when there is no such file.
  bool SetFileSize(const std::string& name, uint64_t size);
  // Later requests for the file fail (EIO; ESTALE for open and attributes, so
  // an open by name retries the lookup); lookups no longer find it.
  void RemoveFile(const std::string& name);

  // Answers the request in `slot` (result: bytes, or -errno) and frees the
  // slot. For a READ, the data is the first `result` bytes at the slot's
  // data area.
  void Reply(uint32_t slot, int64_t result);

  // An adopted file's requests carry `key` from now on; false when there is
  // no such file.
  bool BindFile(const std::string& name, uint32_t key);
  // Starts the reader of an adopted session. Files never bound are removed
  // first. With `resend`, the kernel is asked to send again every request the
  // earlier process read and never answered (FUSE_NOTIFY_RESEND, Linux 6.9);
  // false when it cannot.
  bool Serve(bool resend);
  // The session's files as the kernel knows them (what a successor adopts).
  std::vector<AdoptedFile> Files() const;
  uint64_t next_nodeid() const;
  int64_t mounted_at() const { return mounted_at_; }
  // The connection's descriptor (for the service manager's fd store); still owned here.
  int fd() const { return fd_; }
  // Requests with the sink now.
  uint32_t InFlight();
  // Stops reading requests; those with the sink may still be answered. The
  // kernel queues what comes meanwhile.
  void StopReading();
  // Gives the connection away (the caller owns the returned descriptor) and
  // stops: no unmount, nothing answered any more.
  int Export();

  // Unmounts and stops the reader thread. Without `lazy` it fails with EBUSY
  // while a loop device holds a file (and keeps serving); with it the mount
  // is detached and the kernel fails whatever still uses it. Requests still
  // with the sink are answered by nobody: the kernel fails them when the
  // connection goes.
  void Unmount(bool lazy);

  const FuseRequest& request(uint32_t slot) const { return requests_[slot]; }
  const std::shared_ptr<SlotPool>& pool() const { return pool_; }
  size_t slot_bytes() const { return slot_bytes_; }
  uint32_t slots() const { return static_cast<uint32_t>(requests_.size()); }
  uint32_t max_request_bytes() const { return max_request_bytes_; }

 private:
  struct File {
    std::string name;
    uint64_t size = 0;
    uint32_t key = 0;
    bool present = false;
    uint64_t lookups = 0;  // the kernel's references, dropped by FORGET
  };

  void ServeLoop();
  void InitSlots(uint32_t slots);
  bool AcquireSlot(uint32_t* slot);
  void ReleaseSlot(uint32_t slot);
  void Handle(uint32_t slot, uint8_t* msg, size_t len);
  void ReplyBytes(uint64_t unique, int error, const void* data, size_t len);
  void Stop();

  // Handlers answer from the reader thread, except Read/Write/Flush which
  // return true when the slot went to the sink.
  void OnInit(uint64_t unique, const uint8_t* in, size_t in_len);
  void OnLookup(uint64_t unique, uint64_t parent, const char* name, size_t len);
  void OnGetattr(uint64_t unique, uint64_t nodeid);
  void OnSetattr(uint64_t unique, uint64_t nodeid, const uint8_t* in, size_t in_len);
  void OnOpen(uint64_t unique, uint64_t nodeid);
  void OnOpendir(uint64_t unique, uint64_t nodeid);
  void OnReaddir(uint64_t unique, uint64_t nodeid, const uint8_t* in, size_t in_len);
  void OnStatfs(uint64_t unique);
  void OnForget(uint64_t nodeid, uint64_t nlookup);
  void OnBatchForget(const uint8_t* in, size_t in_len);
  bool OnData(uint32_t slot, uint64_t unique, uint32_t opcode, uint64_t nodeid,
              const uint8_t* in, size_t in_len);
  // FALLOCATE: a punch-hole or zero-range inside the file goes to the sink as a
  // discard; allocation has nothing to do; other modes are refused.
  bool OnFallocate(uint32_t slot, uint64_t unique, uint64_t size, const uint8_t* in, size_t in_len);
  void FillAttr(void* attr, uint64_t nodeid, const File* file) const;
  // The attached file behind a nodeid, or nullptr (unknown or removed). Hold files_mu_.
  const File* PresentFile(uint64_t nodeid) const;
  // Forgets a removed file once the kernel holds no reference to it. Hold files_mu_.
  void DropIfUnused(std::unordered_map<uint64_t, File>::iterator it);

  const std::string mountpoint_;
  const uint32_t max_request_bytes_;
  const uint16_t max_background_;
  const uint16_t request_timeout_;
  const size_t slot_bytes_;
  FuseSink* const sink_;
  std::shared_ptr<SlotPool> pool_;
  std::vector<FuseRequest> requests_;

  int fd_ = -1;
  int stop_fd_ = -1;
  bool mounted_ = false;
  std::thread reader_;
  int64_t mounted_at_;

  std::mutex slots_mu_;
  std::condition_variable slots_cv_;
  std::vector<uint32_t> free_slots_;
  bool stopping_ = false;

  // name -> nodeid of the files present; nodeid -> file, for those and for
  // removed ones the kernel may still name (until it forgets them). Nodeids
  // are never reused, so a kernel that cached an entry or holds an open
  // file never reaches another file by it.
  mutable std::mutex files_mu_;
  std::map<std::string, uint64_t> nodeids_;
  std::unordered_map<uint64_t, File> files_;
  uint64_t next_nodeid_ = 2;  // 1 is the root directory
};

}  // namespace pxd

#endif  // PXD_NATIVE_FUSE_SERVER_H_
