// Unix datagrams with descriptors attached (SCM_RIGHTS), which Node cannot
// send or receive itself:
// - the service manager's notify protocol (sd_notify(3)): "KEY=VALUE\n..."
//   lines to the socket named by $NOTIFY_SOCKET (a path, or "@name" for the
//   abstract namespace); "FDSTORE=1" with a descriptor asks it to keep that
//   descriptor for the next start of the service;
// - a live restart's handoff: the running pxd sends its FUSE session's
//   descriptor to the socket its successor bound.
// Receiving waits on a worker thread, never on the JS thread. Also memfdCreate: an
// anonymous in-memory file (never on a disk), for what the fd store keeps beside the
// session (the keys of mounted secure volumes).
#include "unix_datagram.h"

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace pxd {
namespace {

constexpr size_t kMaxFds = 16;
constexpr size_t kMaxPayload = 64 * 1024;

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

socklen_t AddressOf(const std::string& target, sockaddr_un* addr) {
  *addr = sockaddr_un{};
  addr->sun_family = AF_UNIX;
  if ((target.empty() || (target[0] != '/' && target[0] != '@')) || target.size() >= sizeof(addr->sun_path)) {
    return 0;
  }
  std::memcpy(addr->sun_path, target.data(), target.size());
  if (target[0] == '@') addr->sun_path[0] = '\0';
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + target.size());
}

std::vector<int> ArgFds(const Napi::CallbackInfo& info, size_t i) {
  std::vector<int> fds;
  if (info.Length() <= i || info[i].IsUndefined()) return fds;
  if (!info[i].IsArray()) throw Napi::TypeError::New(info.Env(), "descriptors must be an array of numbers");
  Napi::Array a = info[i].As<Napi::Array>();
  if (a.Length() > kMaxFds) throw Napi::TypeError::New(info.Env(), "at most 16 descriptors");
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value v = a.Get(k);
    if (!v.IsNumber()) throw Napi::TypeError::New(info.Env(), "descriptors must be numbers");
    fds.push_back(v.As<Napi::Number>().Int32Value());
  }
  return fds;
}

// One datagram to `target`; "" on success, else what failed.
std::string Send(const std::string& target, const std::string& payload, const std::vector<int>& fds) {
  sockaddr_un addr;
  socklen_t addr_len = AddressOf(target, &addr);
  if (addr_len == 0) return "not a unix socket path: " + target;
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return Errno("socket");
  iovec iov{const_cast<char*>(payload.data()), payload.size()};
  msghdr msg{};
  msg.msg_name = &addr;
  msg.msg_namelen = addr_len;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFds), 0);
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t sent = sendmsg(s, &msg, MSG_NOSIGNAL);
  std::string err = sent < 0 ? Errno(target) : "";
  close(s);
  return err;
}

// serviceNotify(state, fds?) -> false without $NOTIFY_SOCKET; throws when sending fails.
Napi::Value JsServiceNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "serviceNotify(state: string, fds?: number[])");
  std::vector<int> fds = ArgFds(info, 1);
  const char* target = std::getenv("NOTIFY_SOCKET");
  if (target == nullptr || target[0] == '\0') return Napi::Boolean::New(env, false);
  std::string err = Send(target, info[0].As<Napi::String>().Utf8Value(), fds);
  if (!err.empty()) throw Napi::Error::New(env, "NOTIFY_SOCKET " + err);
  return Napi::Boolean::New(env, true);
}

// sendDatagram(path, payload, fds?)
Napi::Value JsSendDatagram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    throw Napi::TypeError::New(env, "sendDatagram(path: string, payload: string, fds?: number[])");
  }
  std::string payload = info[1].As<Napi::String>().Utf8Value();
  if (payload.size() > kMaxPayload) throw Napi::RangeError::New(env, "a datagram payload is at most 64 KiB");
  std::string err = Send(info[0].As<Napi::String>().Utf8Value(), payload, ArgFds(info, 2));
  if (!err.empty()) throw Napi::Error::New(env, err);
  return env.Undefined();
}

// bindDatagram(path) -> fd: a datagram socket at a new path, mode 0600.
Napi::Value JsBindDatagram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "bindDatagram(path: string)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  sockaddr_un addr;
  socklen_t len = AddressOf(path, &addr);
  if (len == 0 || path[0] != '/') throw Napi::TypeError::New(env, "bindDatagram needs an absolute path");
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) throw Napi::Error::New(env, Errno("socket"));
  mode_t old = umask(0177);
  int rc = bind(s, reinterpret_cast<sockaddr*>(&addr), len);
  umask(old);
  if (rc != 0) {
    std::string err = Errno("bind " + path);
    close(s);
    throw Napi::Error::New(env, err);
  }
  return Napi::Number::New(env, s);
}

class ReceiveWorker : public Napi::AsyncWorker {
 public:
  ReceiveWorker(Napi::Env env, int fd, int timeout_ms)
      : Napi::AsyncWorker(env, "pxd:receiveDatagram"), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd), timeout_ms_(timeout_ms) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    pollfd p{fd_, POLLIN, 0};
    int rc;
    do rc = poll(&p, 1, timeout_ms_);
    while (rc < 0 && errno == EINTR);
    if (rc == 0) return SetError("ETIMEDOUT: no datagram arrived in time");
    if (rc < 0) return SetError(Errno("poll"));
    payload_.resize(kMaxPayload);
    iovec iov{payload_.data(), payload_.size()};
    std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFds), 0);
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    ssize_t n = recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) return SetError(Errno("recvmsg"));
    payload_.resize(static_cast<size_t>(n));
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t k = 0; k < count; k++) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof fd);
        fds_.push_back(fd);
      }
    }
    if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
      for (int fd : fds_) close(fd);
      fds_.clear();
      SetError("the datagram was truncated");
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object out = Napi::Object::New(env);
    out.Set("payload", Napi::String::New(env, payload_));
    Napi::Array fds = Napi::Array::New(env, fds_.size());
    for (size_t k = 0; k < fds_.size(); k++) fds.Set(static_cast<uint32_t>(k), Napi::Number::New(env, fds_[k]));
    out.Set("fds", fds);
    deferred_.Resolve(out);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  int timeout_ms_;
  std::string payload_;
  std::vector<int> fds_;
};

// receiveDatagram(fd, timeoutMs) -> Promise<{ payload, fds }>
Napi::Value JsReceiveDatagram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "receiveDatagram(fd: number, timeoutMs: number)");
  }
  auto* w = new ReceiveWorker(env, info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int32Value());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// closeDescriptor(fd): a descriptor this process got from a datagram or its parent.
Napi::Value JsCloseDescriptor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "closeDescriptor(fd: number)");
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (fd < 3) throw Napi::RangeError::New(env, "refusing to close a standard descriptor");
  close(fd);
  return env.Undefined();
}

// memfdCreate(name) -> fd: an anonymous file in memory, close-on-exec.
Napi::Value JsMemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "memfdCreate(name: string)");
  int fd = memfd_create(info[0].As<Napi::String>().Utf8Value().c_str(), MFD_CLOEXEC);
  if (fd < 0) throw Napi::Error::New(env, Errno("memfd_create"));
  return Napi::Number::New(env, fd);
}

// peekByte(fd) -> the first byte waiting on a stream socket, without taking it; -1 when
// nothing has arrived yet, -2 when the peer closed. (A peer port tells TLS from plain
// HTTP by it during a rolling upgrade, before any reader takes the socket.)
Napi::Value JsPeekByte(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "peekByte(fd: number)");
  unsigned char b = 0;
  ssize_t n = recv(info[0].As<Napi::Number>().Int32Value(), &b, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 1) return Napi::Number::New(env, b);
  if (n == 0) return Napi::Number::New(env, -2);
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return Napi::Number::New(env, -1);
  return Napi::Number::New(env, -2);
}

}  // namespace

void InitUnixDatagram(Napi::Env env, Napi::Object exports) {
  exports.Set("serviceNotify", Napi::Function::New<JsServiceNotify>(env, "serviceNotify"));
  exports.Set("sendDatagram", Napi::Function::New<JsSendDatagram>(env, "sendDatagram"));
  exports.Set("bindDatagram", Napi::Function::New<JsBindDatagram>(env, "bindDatagram"));
  exports.Set("receiveDatagram", Napi::Function::New<JsReceiveDatagram>(env, "receiveDatagram"));
  exports.Set("closeDescriptor", Napi::Function::New<JsCloseDescriptor>(env, "closeDescriptor"));
  exports.Set("memfdCreate", Napi::Function::New<JsMemfdCreate>(env, "memfdCreate"));
  exports.Set("peekByte", Napi::Function::New<JsPeekByte>(env, "peekByte"));
}

}  // namespace pxd
