// JS bindings of the FUSE server: flat functions over an opaque handle.
//
// Requests reach JS through a thread-safe function: the reader thread queues
// only the slot number (no allocation), and the JS thread reads the request
// out of the server's table when it calls onRequest(kind, slot, key, offset,
// length). JS answers with fuseReply(handle, slot, result).
//
// Lifetime: the server is shared by the JS handle and the thread-safe
// function, so a request still queued when JS unmounts finds it alive (and
// is dropped). The slot memory is one external ArrayBuffer made once per
// server; its views in JS keep the memory alive after the server is gone.
//
// Here: mounting, the request queue, replies and the file table's functions.
// A live restart's hand-over of the session (fuseAdopt, fuseSession,
// fuseExport, ...) is in fuse_session_binding.cc; fuse_binding_internal.h has
// what the two share.
#include "fuse_binding.h"

#include <cstdint>
#include <memory>
#include <string>

#include "fuse_binding_internal.h"
#include "fuse_server.h"

namespace pxd {
namespace {

const napi_type_tag kFuseTag = {0x7078645f66757365ull, 0x5f73657276657221ull};
constexpr uintptr_t kStoppedEvent = ~uintptr_t{0};
constexpr uintptr_t kInitEvent = ~uintptr_t{1};

void CallJs(napi_env env, napi_value fn, void* context, void* data) {
  if (env == nullptr || fn == nullptr) return;
  JsFuse* self = static_cast<JsFusePtr*>(context)->get();
  if (self->unmounted) return;
  uintptr_t tag = reinterpret_cast<uintptr_t>(data);
  double argv_n[5];
  if (tag == kStoppedEvent || tag == kInitEvent) {
    const bool stopped = tag == kStoppedEvent;
    argv_n[0] = static_cast<double>(stopped ? FuseKind::kStopped : FuseKind::kInit);
    argv_n[1] = -1;
    argv_n[2] = 0;
    argv_n[3] = 0;
    argv_n[4] = stopped ? self->stop_errno : self->request_timeout;
  } else {
    uint32_t slot = static_cast<uint32_t>(tag - 1);
    const FuseRequest& r = self->server->request(slot);
    argv_n[0] = static_cast<double>(r.kind);
    argv_n[1] = slot;
    argv_n[2] = r.key;
    argv_n[3] = static_cast<double>(r.offset);
    argv_n[4] = r.length;
  }
  napi_value argv[5];
  for (int i = 0; i < 5; i++) {
    if (napi_create_double(env, argv_n[i], &argv[i]) != napi_ok) return;
  }
  napi_value recv;
  napi_value result;
  if (napi_get_undefined(env, &recv) != napi_ok) return;
  napi_call_function(env, recv, fn, 5, argv, &result);
}

void FinalizeTsfn(napi_env, void* context, void*) { delete static_cast<JsFusePtr*>(context); }

// Unmounts and stops the server; safe to call twice.
void Shutdown(napi_env env, JsFuse& f, bool lazy) {
  if (f.unmounted) return;
  f.server->Unmount(lazy);
  Release(env, f);
}

void FinalizeHandle(napi_env env, void* data, void*) {
  auto* p = static_cast<JsFusePtr*>(data);
  JsFuse& f = **p;
  if (!f.unmounted) {
    // Dropped while mounted: the server's destructor detaches lazily rather than
    // leave a dead mount (it cannot fail, unlike an unmount that reports errors).
    f.server.reset();
    Release(env, f);
  }
  delete p;
}

void FinalizeMemory(napi_env, void*, void* hint) { delete static_cast<std::shared_ptr<SlotPool>*>(hint); }

[[noreturn]] void ThrowFuseError(Napi::Env env, const FuseError& e) {
  Napi::Error err = Napi::Error::New(env, e.what());
  err.Set("code", e.code);
  if (e.os_errno != 0) err.Set("errno", static_cast<double>(e.os_errno));
  throw err;
}

// fuseMount(mountpoint, maxRequestBytes, slots, onRequest[, requestTimeoutSeconds]) -> handle
Napi::Value JsFuseMount(const Napi::CallbackInfo& info) {
  FuseServer::Options o = ArgOptions(info, "fuseMount(mountpoint, maxRequestBytes, slots, onRequest[, requestTimeoutSeconds])");
  if (info.Length() > 4 && !info[4].IsUndefined()) {
    const uint32_t seconds = ArgUint32(info, 4, "requestTimeoutSeconds");
    if (seconds > UINT16_MAX) throw Napi::RangeError::New(info.Env(), "requestTimeoutSeconds must be at most 65535");
    o.request_timeout = static_cast<uint16_t>(seconds);
  }
  return NewHandle(info.Env(), info[3], [&](FuseSink* sink) { return std::make_unique<FuseServer>(o, sink); });
}

// fuseLayout(handle) -> { memory, slots, slotBytes, dataOffset, maxRequestBytes }
Napi::Value JsFuseLayout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsFuse& f = ArgFuse(info);
  if (f.unmounted) throw Napi::Error::New(env, "the FUSE server is unmounted");
  napi_value memory;
  napi_get_reference_value(env, f.memory, &memory);
  Napi::Object out = Napi::Object::New(env);
  out.Set("memory", Napi::Value(env, memory));
  out.Set("slots", f.server->slots());
  out.Set("slotBytes", static_cast<double>(f.server->slot_bytes()));
  out.Set("dataOffset", static_cast<double>(FuseServer::kDataOffset));
  out.Set("maxRequestBytes", f.server->max_request_bytes());
  return out;
}

// fuseReply(handle, slot, result): result is a byte count, or -errno.
Napi::Value JsFuseReply(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsFuse& f = ArgFuse(info);
  uint32_t slot = ArgUint32(info, 1, "slot");
  if (info.Length() < 3 || !info[2].IsNumber()) throw Napi::TypeError::New(env, "result must be a number");
  if (slot >= f.server->slots()) throw Napi::RangeError::New(env, "no such slot");
  f.server->Reply(slot, info[2].As<Napi::Number>().Int64Value());
  return env.Undefined();
}

Napi::Value JsFuseAddFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsFuse& f = ArgFuse(info);
  if (info.Length() < 4 || !info[1].IsString() || !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, "fuseAddFile(handle, name, size, key)");
  }
  std::string name = info[1].As<Napi::String>().Utf8Value();
  if (name.empty() || name.size() > 255 || name.find('/') != std::string::npos || name == "." || name == "..") {
    throw Napi::TypeError::New(env, "a device file name must be one path component");
  }
  double size = info[2].As<Napi::Number>().DoubleValue();
  if (!(size >= 0 && size <= 9007199254740991.0)) throw Napi::TypeError::New(env, "size must be a safe integer");
  f.server->AddFile(name, static_cast<uint64_t>(size), ArgUint32(info, 3, "key"));
  return env.Undefined();
}

Napi::Value JsFuseRemoveFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsFuse& f = ArgFuse(info);
  if (info.Length() < 2 || !info[1].IsString()) throw Napi::TypeError::New(env, "fuseRemoveFile(handle, name)");
  f.server->RemoveFile(info[1].As<Napi::String>().Utf8Value());
  return env.Undefined();
}

// fuseSetFileSize(handle, name, size): a file's new size; throws ENOENT without it.
Napi::Value JsFuseSetFileSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsFuse& f = ArgFuse(info);
  if (info.Length() < 3 || !info[1].IsString() || !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, "fuseSetFileSize(handle, name, size)");
  }
  const double size = info[2].As<Napi::Number>().DoubleValue();
  if (!(size >= 0) || size > 9007199254740992.0) throw Napi::TypeError::New(env, "fuseSetFileSize: size must be a safe non-negative integer");
  if (!f.server->SetFileSize(info[1].As<Napi::String>().Utf8Value(), static_cast<uint64_t>(size))) {
    Napi::Error e = Napi::Error::New(env, "no such file in the device directory");
    e.Set("code", Napi::String::New(env, "ENOENT"));
    throw e;
  }
  return env.Undefined();
}

// fuseUnmount(handle, lazy). Without lazy, throws with code EBUSY while a
// loop device still holds a file; the server keeps serving then.
Napi::Value JsFuseUnmount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsFuse& f = ArgFuse(info);
  bool lazy = info.Length() > 1 && info[1].ToBoolean().Value();
  try {
    Shutdown(env, f, lazy);
  } catch (const FuseError& e) {
    ThrowFuseError(env, e);
  }
  return env.Undefined();
}

}  // namespace

void JsFuse::Dispatch(uint32_t slot) {
  napi_call_threadsafe_function(tsfn, reinterpret_cast<void*>(uintptr_t{slot} + 1), napi_tsfn_nonblocking);
}

void JsFuse::Stopped(int os_errno) {
  stop_errno = os_errno;
  napi_call_threadsafe_function(tsfn, reinterpret_cast<void*>(kStoppedEvent), napi_tsfn_nonblocking);
}

void JsFuse::Initialized(uint16_t seconds) {
  request_timeout = seconds;
  napi_call_threadsafe_function(tsfn, reinterpret_cast<void*>(kInitEvent), napi_tsfn_nonblocking);
}

// Lets go of the JS side: no request reaches JS any more, and the slot memory
// is left to the ArrayBuffer's views.
void Release(napi_env env, JsFuse& f) {
  f.unmounted = true;
  napi_release_threadsafe_function(f.tsfn, napi_tsfn_release);
  if (f.memory != nullptr) {
    napi_delete_reference(env, f.memory);
    f.memory = nullptr;
  }
}

JsFuse& ArgFuse(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal()) throw Napi::TypeError::New(env, "argument 0 must be a FUSE handle");
  bool ok = false;
  if (napi_check_object_type_tag(env, info[0], &kFuseTag, &ok) != napi_ok || !ok) {
    throw Napi::TypeError::New(env, "argument 0 is not a FUSE handle");
  }
  return **info[0].As<Napi::External<JsFusePtr>>().Data();
}

uint32_t ArgUint32(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0 && v <= 4294967295.0) || v != static_cast<double>(static_cast<uint32_t>(v))) {
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be an unsigned 32-bit integer");
  }
  return static_cast<uint32_t>(v);
}

FuseServer::Options ArgOptions(const Napi::CallbackInfo& info, const char* usage) {
  if (info.Length() < 4 || !info[0].IsString() || !info[3].IsFunction()) throw Napi::TypeError::New(info.Env(), usage);
  FuseServer::Options o;
  o.mountpoint = info[0].As<Napi::String>().Utf8Value();
  o.max_request_bytes = ArgUint32(info, 1, "maxRequestBytes");
  o.slots = ArgUint32(info, 2, "slots");
  return o;
}

// A handle over the server `make` builds: the request queue to `on_request`,
// the slot memory as one ArrayBuffer.
Napi::Value NewHandle(Napi::Env env, Napi::Value on_request, const MakeServer& make) {
  auto self = std::make_shared<JsFuse>();
  auto* tsfn_ref = new JsFusePtr(self);
  napi_value name = Napi::String::New(env, "pxd-fuse");
  if (napi_create_threadsafe_function(env, on_request, nullptr, name, 0, 1, tsfn_ref, FinalizeTsfn, tsfn_ref, CallJs,
                                      &self->tsfn) != napi_ok) {
    delete tsfn_ref;
    throw Napi::Error::New(env, "cannot create the FUSE request queue");
  }
  // The mount itself keeps nothing alive: the daemon decides when to exit.
  napi_unref_threadsafe_function(env, self->tsfn);
  try {
    self->server = make(self.get());
  } catch (const FuseError& e) {
    Release(env, *self);
    ThrowFuseError(env, e);
  }
  auto* pool = new std::shared_ptr<SlotPool>(self->server->pool());
  napi_value memory;
  if (napi_create_external_arraybuffer(env, (*pool)->base(), (*pool)->bytes(), FinalizeMemory, pool, &memory) !=
      napi_ok) {
    delete pool;
    Shutdown(env, *self, true);
    throw Napi::Error::New(env, "cannot expose the FUSE request buffers");
  }
  napi_create_reference(env, memory, 1, &self->memory);

  auto* handle_ref = new JsFusePtr(self);
  napi_value handle;
  if (napi_create_external(env, handle_ref, FinalizeHandle, nullptr, &handle) != napi_ok ||
      napi_type_tag_object(env, handle, &kFuseTag) != napi_ok) {
    Shutdown(env, *self, true);
    throw Napi::Error::New(env, "cannot create a FUSE handle");
  }
  return Napi::Value(env, handle);
}

void InitFuse(Napi::Env env, Napi::Object exports) {
  exports.Set("fuseMount", Napi::Function::New<JsFuseMount>(env, "fuseMount"));
  exports.Set("fuseLayout", Napi::Function::New<JsFuseLayout>(env, "fuseLayout"));
  exports.Set("fuseReply", Napi::Function::New<JsFuseReply>(env, "fuseReply"));
  exports.Set("fuseAddFile", Napi::Function::New<JsFuseAddFile>(env, "fuseAddFile"));
  exports.Set("fuseRemoveFile", Napi::Function::New<JsFuseRemoveFile>(env, "fuseRemoveFile"));
  exports.Set("fuseSetFileSize", Napi::Function::New<JsFuseSetFileSize>(env, "fuseSetFileSize"));
  exports.Set("fuseUnmount", Napi::Function::New<JsFuseUnmount>(env, "fuseUnmount"));
  InitFuseSession(env, exports);
}

}  // namespace pxd
