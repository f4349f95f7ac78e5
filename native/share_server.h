// The serving end of a shared volume: executes the file operations of
// share_wire.h, sent by other nodes, on the volume's mounted ext4, in a pool
// of worker threads of its own.
//
// Handles resolve to O_PATH descriptors (open_by_handle_at on the mount's
// root, with root credentials), kept in a bounded cache. Each operation that
// checks permissions runs with the caller's fsuid, fsgid and groups on its
// worker thread (raw syscalls: they change only that thread), and a caller
// other than root runs with no capabilities, so the file system's own checks
// decide. Open files are descriptors per (handle, open flags), referenced per
// client; locks are open file description locks on a descriptor per (client,
// lock owner, handle).
//
// Files: share_server.cc (threads, credentials, replies), share_server_tables.cc
// (handles, open files, lock descriptors), share_server_wire.cc (parsing and
// dispatch), share_server_ops.cc (attributes, opens, entry replies),
// share_server_names.cc (making and removing names) and share_server_io.cc
// (data, directories, locks, xattrs).
#ifndef PXD_NATIVE_SHARE_SERVER_H_
#define PXD_NATIVE_SHARE_SERVER_H_

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "share_wire.h"

namespace pxd {
namespace share {

// A failure to open a server: code is an errno name ('ENOENT', 'EOPNOTSUPP').
struct ServerError : std::runtime_error {
  ServerError(const std::string& code, int os_errno, const std::string& message)
      : std::runtime_error(message), code(code), os_errno(os_errno) {}
  std::string code;
  int os_errno;
};

// A wire reply in one block from malloc: its owner free()s `data`.
struct ReplyBuf {
  uint8_t* data = nullptr;
  size_t len = 0;
};

// A reply of `error` (-errno) without handle or body.
ReplyBuf ErrorReply(int error, uint8_t flags = 0);

// One request in flight. The request bytes stay valid and unchanged until
// Done(), which a worker thread calls once with `reply` filled in (the job then
// owns it).
class ServerJob {
 public:
  virtual ~ServerJob() = default;
  virtual void Done() = 0;

  uint32_t client = 0;
  const uint8_t* request = nullptr;
  size_t request_len = 0;
  ReplyBuf reply;
};

struct ServerStats {
  uint64_t requests = 0;
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  uint64_t open_fds = 0;
};

// A descriptor, closed when the last reference goes. Lookups hand out
// references, so a table may drop a descriptor another thread still uses.
// `live` (if any) counts the descriptors alive.
class ServerFd {
 public:
  ServerFd(int fd, std::atomic<uint64_t>* live);
  ~ServerFd();
  ServerFd(const ServerFd&) = delete;
  ServerFd& operator=(const ServerFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
  std::atomic<uint64_t>* live_;
};
using FdRef = std::shared_ptr<ServerFd>;

// A handle as a table key: its int32 type, then its bytes.
using HandleKey = std::string;

// A request whose framing, credentials and handles' tags were checked.
struct ServerRequest {
  uint32_t client = 0;
  uint32_t opcode = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t ngroups = 0;
  uint32_t groups[kMaxGroups] = {};
  uint32_t nhandles = 0;
  HandleKey handle[2];
  const uint8_t* body = nullptr;
  size_t body_len = 0;
};

// Switches the calling worker thread to a request's caller for its lifetime
// (fsuid, fsgid, groups; no capabilities unless the caller is root), and back
// to root afterwards. Only on the server's worker threads.
class CallerCreds {
 public:
  CallerCreds() = default;
  ~CallerCreds();
  CallerCreds(const CallerCreds&) = delete;
  CallerCreds& operator=(const CallerCreds&) = delete;
  // 0, or -errno when the switch failed (the thread is root again then).
  int Enter(const ServerRequest& r);

 private:
  void Leave();
  bool entered_ = false;
  bool dropped_caps_ = false;
};

// Builds a reply: the header, the handle if any, then up to `body_cap` bytes
// of body at body(). Throws std::bad_alloc.
class ReplyWriter {
 public:
  ReplyWriter(uint64_t tag, const HandleKey* handle, size_t body_cap);
  ~ReplyWriter();
  ReplyWriter(const ReplyWriter&) = delete;
  ReplyWriter& operator=(const ReplyWriter&) = delete;
  uint8_t* body() { return body_; }
  // The reply with `body_len` (<= body_cap) bytes of body.
  ReplyBuf Finish(size_t body_len, int error = 0, uint8_t flags = 0);

 private:
  uint8_t* data_ = nullptr;
  uint8_t* body_ = nullptr;
  size_t head_ = 0;
  size_t cap_ = 0;
};

class ShareServer {
 public:
  static constexpr size_t kHandleCacheMax = 4096;
  static constexpr size_t kIdleOpenMax = 256;
  static constexpr unsigned kMaxThreads = 16;

  // Serves the file system whose root is mounted at `root`. Throws ServerError.
  ShareServer(const std::string& root, uint64_t tag, unsigned threads);
  ~ShareServer();
  ShareServer(const ShareServer&) = delete;
  ShareServer& operator=(const ShareServer&) = delete;

  // Queues a job; a worker runs it and calls job->Done(). Not after Shutdown().
  void Submit(ServerJob* job);
  // Releases the client's locks and open references.
  void DropClient(uint32_t client);
  // Runs what is queued, stops the workers and closes every descriptor. Idempotent.
  void Shutdown();
  ServerStats stats() const;

  // ---- for the executor ------------------------------------------------------

  uint64_t tag() const { return tag_; }
  // Takes ownership of a descriptor (counted in stats().open_fds).
  FdRef Own(int fd) { return std::make_shared<ServerFd>(fd, &open_fds_); }
  const HandleKey& root_key() const { return root_key_; }
  dev_t dev() const { return dev_; }
  // The handle's O_PATH descriptor; null with *err = -errno. Root credentials.
  FdRef Resolve(const HandleKey& key, int* err);
  // Caches `fd`, an O_PATH descriptor of inode `ino`, as the handle's.
  void Remember(const HandleKey& key, const FdRef& fd, ino_t ino);
  // Drops the descriptors of inode `ino` kept only for later use (after it
  // lost its last name), so that its space is freed.
  void Forget(ino_t ino);
  // The open file (handle, fh flags); reopened when there is none (root
  // credentials), which then counts as a reference of `client`.
  FdRef OpenFile(uint32_t client, const HandleKey& key, uint32_t flags, int* err);
  // One more reference of `client` to (handle, flags); `fd` (just opened by
  // the caller) becomes the descriptor if there is none yet.
  void AddOpen(uint32_t client, const HandleKey& key, uint32_t flags, const FdRef& fd, ino_t ino);
  void ReleaseOpen(uint32_t client, const HandleKey& key, uint32_t flags);
  // The lock descriptor of (client, owner, handle), opened if needed. Root credentials.
  FdRef LockFd(uint32_t client, uint64_t owner, const HandleKey& key, int* err);
  // Closes it (releasing its locks) once no request uses it.
  void DropLockFd(uint32_t client, uint64_t owner, const HandleKey& key);
  void Count(uint64_t read, uint64_t written) {
    if (read != 0) bytes_read_.fetch_add(read, std::memory_order_relaxed);
    if (written != 0) bytes_written_.fetch_add(written, std::memory_order_relaxed);
  }

 private:
  struct CachedHandle {
    FdRef fd;
    ino_t ino = 0;
    std::list<HandleKey>::iterator lru;
  };
  struct OpenEntry {
    FdRef fd;
    ino_t ino = 0;
    std::unordered_map<uint32_t, uint32_t> refs;  // per client
    uint64_t total = 0;
    bool idle = false;  // in idle_lru_
    std::list<std::string>::iterator lru;
  };

  void Work(unsigned index);
  // Reopens a regular file from its O_PATH descriptor, as root.
  int Reopen(const FdRef& path_fd, int flags, ino_t* ino);
  void MakeIdle(const std::string& key, OpenEntry& e, std::vector<FdRef>* dropped);

  std::atomic<uint64_t> open_fds_{0};  // first: outlives every descriptor member
  uint64_t tag_;
  FdRef mount_fd_;
  HandleKey root_key_;
  dev_t dev_ = 0;

  std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  std::deque<ServerJob*> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
  unsigned ready_ = 0;
  int start_error_ = 0;

  std::mutex handles_mu_;
  std::unordered_map<HandleKey, CachedHandle> handles_;
  std::list<HandleKey> handles_lru_;  // most recent first

  std::mutex open_mu_;  // open_, idle_lru_ and locks_
  std::unordered_map<std::string, OpenEntry> open_;
  std::list<std::string> idle_lru_;  // most recent first
  std::unordered_map<uint32_t, std::unordered_map<std::string, FdRef>> locks_;

  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<uint64_t> bytes_written_{0};
  bool shut_down_ = false;
};

// ---- the executor ------------------------------------------------------------

// Executes one wire request; never throws (a failure is an error reply).
ReplyBuf ExecuteRequest(ShareServer& s, uint32_t client, const uint8_t* req, size_t len);

// Copies the body struct T from the request's body; false if the body is too short.
template <typename T>
bool BodyStruct(const ServerRequest& r, T* out, size_t at = 0);

// The opcodes of share_server_ops.cc: each returns the reply.
ReplyBuf OpRoot(ShareServer& s, const ServerRequest& r);
ReplyBuf OpGetattr(ShareServer& s, const ServerRequest& r);
ReplyBuf OpLookup(ShareServer& s, const ServerRequest& r);
ReplyBuf OpSetattr(ShareServer& s, const ServerRequest& r);
ReplyBuf OpOpen(ShareServer& s, const ServerRequest& r);
ReplyBuf OpCreate(ShareServer& s, const ServerRequest& r);
ReplyBuf OpAccess(ShareServer& s, const ServerRequest& r);

// The opcodes of share_server_names.cc.
ReplyBuf OpReadlink(ShareServer& s, const ServerRequest& r);
ReplyBuf OpSymlink(ShareServer& s, const ServerRequest& r);
ReplyBuf OpMknodMkdir(ShareServer& s, const ServerRequest& r);
ReplyBuf OpUnlink(ShareServer& s, const ServerRequest& r);  // UNLINK RMDIR
ReplyBuf OpRename(ShareServer& s, const ServerRequest& r);  // RENAME RENAME2
ReplyBuf OpLink(ShareServer& s, const ServerRequest& r);

// The opcodes of share_server_io.cc.
ReplyBuf OpRead(ShareServer& s, const ServerRequest& r);
ReplyBuf OpWrite(ShareServer& s, const ServerRequest& r);
ReplyBuf OpFsyncFlushRelease(ShareServer& s, const ServerRequest& r);
ReplyBuf OpFallocateLseek(ShareServer& s, const ServerRequest& r);
ReplyBuf OpStatfs(ShareServer& s, const ServerRequest& r);
ReplyBuf OpDir(ShareServer& s, const ServerRequest& r);  // OPENDIR READDIR RELEASEDIR FSYNCDIR
ReplyBuf OpLock(ShareServer& s, const ServerRequest& r);  // GETLK SETLK SETLKW
ReplyBuf OpXattr(ShareServer& s, const ServerRequest& r);

// ---- helpers of the executor's files ---------------------------------------

// Resolves the request's handles (as root: open_by_handle_at needs it), then
// becomes the caller until it goes out of scope. err: 0 or -errno.
struct Prepared {
  FdRef fd[2];
  CallerCreds creds;
  int err = 0;
  Prepared(ShareServer& s, const ServerRequest& r) {
    for (uint32_t i = 0; i < r.nhandles && err == 0; i++) fd[i] = s.Resolve(r.handle[i], &err);
    if (err == 0) err = creds.Enter(r);
  }
};

ReplyBuf EmptyReply(const ShareServer& s, int error = 0);
// Copies a NUL-terminated name starting at `at` in the body into `out`
// (1..kMaxNameBytes bytes, one path component); *next is past its NUL.
int BodyName(const ServerRequest& r, size_t at, char (&out)[kMaxNameBytes + 1], size_t* next);
// The handle of what `fd` is (name_to_handle_at), and its mount's id; 0 or -errno.
int HandleOf(int fd, HandleKey* key, int* mount_id = nullptr);
// open_by_handle_at; the descriptor or -errno.
int OpenByHandle(int mount_fd, const HandleKey& key, int flags);
// "/proc/self/fd/N".
void FdPath(int fd, char (&out)[32]);
// The fh's flags, checked: -EINVAL for bits outside kFhFlagsMask.
int FhFlags(uint64_t fh, uint32_t* flags);
// The entry reply of `fd` (an O_PATH descriptor of the new entry), followed by
// `extra` bytes of body; caches the descriptor as its handle's
// (share_server_ops.cc).
ReplyBuf EntryReply(ShareServer& s, const FdRef& fd, const void* extra = nullptr, size_t extra_len = 0,
                    HandleKey* key_out = nullptr, ino_t* ino_out = nullptr);
// Looks up a name just made in `dir` and answers its entry (share_server_ops.cc).
ReplyBuf NewEntry(ShareServer& s, int dir, const char* name);

template <typename T>
bool BodyStruct(const ServerRequest& r, T* out, size_t at) {
  if (r.body_len < at || r.body_len - at < sizeof(T)) return false;
  std::memcpy(out, r.body + at, sizeof(T));
  return true;
}

}  // namespace share
}  // namespace pxd

#endif  // PXD_NATIVE_SHARE_SERVER_H_
