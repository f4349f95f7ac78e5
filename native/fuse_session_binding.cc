// JS bindings of a FUSE session handed from one pxd process to the next (a
// live restart, fuse_session.cc): a successor adopts the descriptor and the
// file table (fuseAdopt), binds each file to its volume (fuseBindFile) and
// only then reads requests (fuseServe); a predecessor stops reading, waits for
// what JS still holds (fuseStopReading, fuseInFlight), and gives the session
// away (fuseSession, fuseExport). Mounting, replies and the file table are in
// fuse_binding.cc.
#include <poll.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fuse_binding_internal.h"
#include "fuse_server.h"

namespace pxd {
namespace {

double ArgSafeInteger(const Napi::Value& v, const char* what) {
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<uint64_t>(d))) {
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a safe non-negative integer");
  }
  return d;
}

// fuseAdopt(mountpoint, maxRequestBytes, slots, onRequest, { fd, files: [{ name, nodeid, size }], nextNodeid, mountedAt })
// -> handle. Serves nothing until fuseServe.
Napi::Value JsFuseAdopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "fuseAdopt(mountpoint, maxRequestBytes, slots, onRequest, { fd, files, nextNodeid, mountedAt })";
  FuseServer::Options o = ArgOptions(info, usage);
  if (info.Length() < 5 || !info[4].IsObject()) throw Napi::TypeError::New(env, usage);
  Napi::Object s = info[4].As<Napi::Object>();
  FuseServer::Adopted a;
  a.fd = static_cast<int>(ArgSafeInteger(s.Get("fd"), "fd"));
  a.next_nodeid = static_cast<uint64_t>(ArgSafeInteger(s.Get("nextNodeid"), "nextNodeid"));
  a.mounted_at = static_cast<int64_t>(ArgSafeInteger(s.Get("mountedAt"), "mountedAt"));
  Napi::Value files = s.Get("files");
  if (!files.IsArray()) throw Napi::TypeError::New(env, "files must be an array");
  Napi::Array arr = files.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value e = arr.Get(i);
    if (!e.IsObject() || !e.As<Napi::Object>().Get("name").IsString()) throw Napi::TypeError::New(env, "each file needs a name");
    Napi::Object f = e.As<Napi::Object>();
    a.files.push_back({f.Get("name").As<Napi::String>().Utf8Value(), static_cast<uint64_t>(ArgSafeInteger(f.Get("nodeid"), "nodeid")),
                       static_cast<uint64_t>(ArgSafeInteger(f.Get("size"), "size"))});
  }
  return NewHandle(env, info[3], [&](FuseSink* sink) { return std::make_unique<FuseServer>(o, sink, a); });
}

// fuseBindFile(handle, name, key) -> false when the session has no such file.
Napi::Value JsFuseBindFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsFuse& f = ArgFuse(info);
  if (info.Length() < 3 || !info[1].IsString()) throw Napi::TypeError::New(env, "fuseBindFile(handle, name, key)");
  uint32_t key = ArgUint32(info, 2, "key");
  if (key == 0) throw Napi::RangeError::New(env, "key 0 is reserved for unbound files");
  return Napi::Boolean::New(env, f.server->BindFile(info[1].As<Napi::String>().Utf8Value(), key));
}

// fuseServe(handle, resend) -> whether the kernel took the resend request.
Napi::Value JsFuseServe(const Napi::CallbackInfo& info) {
  JsFuse& f = ArgFuse(info);
  if (f.unmounted) throw Napi::Error::New(info.Env(), "the FUSE server is unmounted");
  return Napi::Boolean::New(info.Env(), f.server->Serve(info.Length() > 1 && info[1].ToBoolean().Value()));
}

// fuseSession(handle) -> { files, nextNodeid, mountedAt, maxRequestBytes, fd }: what a successor adopts.
Napi::Value JsFuseSession(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsFuse& f = ArgFuse(info);
  if (f.unmounted) throw Napi::Error::New(env, "the FUSE server is unmounted");
  std::vector<FuseServer::AdoptedFile> files = f.server->Files();
  Napi::Array arr = Napi::Array::New(env, files.size());
  for (size_t i = 0; i < files.size(); i++) {
    Napi::Object e = Napi::Object::New(env);
    e.Set("name", files[i].name);
    e.Set("nodeid", static_cast<double>(files[i].nodeid));
    e.Set("size", static_cast<double>(files[i].size));
    arr.Set(static_cast<uint32_t>(i), e);
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("files", arr);
  out.Set("nextNodeid", static_cast<double>(f.server->next_nodeid()));
  out.Set("mountedAt", static_cast<double>(f.server->mounted_at()));
  out.Set("maxRequestBytes", f.server->max_request_bytes());
  out.Set("fd", f.server->fd());
  return out;
}

// fuseStopReading(handle) -> requests still with JS.
Napi::Value JsFuseStopReading(const Napi::CallbackInfo& info) {
  JsFuse& f = ArgFuse(info);
  if (f.unmounted) return Napi::Number::New(info.Env(), 0);
  f.server->StopReading();
  return Napi::Number::New(info.Env(), f.server->InFlight());
}

Napi::Value JsFuseInFlight(const Napi::CallbackInfo& info) {
  JsFuse& f = ArgFuse(info);
  return Napi::Number::New(info.Env(), f.unmounted ? 0 : f.server->InFlight());
}

// fuseExport(handle) -> fd: the session's descriptor, now the caller's; the handle is done.
Napi::Value JsFuseExport(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsFuse& f = ArgFuse(info);
  if (f.unmounted) throw Napi::Error::New(env, "the FUSE server is unmounted");
  int fd = f.server->Export();
  Release(env, f);
  return Napi::Number::New(env, fd);
}

// fuseSessionAborted(fd) -> whether the kernel aborted the FUSE connection on fd (a
// request outlived the connection's timeout, or someone aborted it through
// /sys/fs/fuse/connections): poll answers POLLERR then. Reads nothing.
Napi::Value JsFuseSessionAborted(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1) throw Napi::TypeError::New(env, "fuseSessionAborted(fd)");
  pollfd p{static_cast<int>(ArgSafeInteger(info[0], "fd")), POLLIN, 0};
  if (poll(&p, 1, 0) < 0) throw Napi::Error::New(env, std::string("poll: ") + std::strerror(errno));
  return Napi::Boolean::New(env, (p.revents & (POLLERR | POLLNVAL)) != 0);
}

}  // namespace

void InitFuseSession(Napi::Env env, Napi::Object exports) {
  exports.Set("fuseAdopt", Napi::Function::New<JsFuseAdopt>(env, "fuseAdopt"));
  exports.Set("fuseBindFile", Napi::Function::New<JsFuseBindFile>(env, "fuseBindFile"));
  exports.Set("fuseServe", Napi::Function::New<JsFuseServe>(env, "fuseServe"));
  exports.Set("fuseSession", Napi::Function::New<JsFuseSession>(env, "fuseSession"));
  exports.Set("fuseStopReading", Napi::Function::New<JsFuseStopReading>(env, "fuseStopReading"));
  exports.Set("fuseInFlight", Napi::Function::New<JsFuseInFlight>(env, "fuseInFlight"));
  exports.Set("fuseExport", Napi::Function::New<JsFuseExport>(env, "fuseExport"));
  exports.Set("fuseSessionAborted", Napi::Function::New<JsFuseSessionAborted>(env, "fuseSessionAborted"));
}

}  // namespace pxd
