// JS bindings of a shared volume's FUSE client: flat functions over an
// opaque handle.
//
// Events reach JS through a thread-safe function: the reader thread queues
// only numbers packed in the data pointer (event, slot, the slot's
// generation), so nothing is allocated per request here, and the JS thread
// looks the request up when it calls onEvent(event, slot, offset, length). An
// event whose request was answered in the meantime (an interrupt after the
// reply; anything after an unmount) is dropped.
//
// Lifetime: as the FUSE server's (fuse_binding.cc). The client is shared by
// the JS handle and the thread-safe function; the slot memory is one
// external ArrayBuffer whose views keep it alive after the client is gone.
#include <linux/fuse.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "share_binding.h"
#include "share_client.h"

namespace pxd {
namespace {

using share::ShareClient;

const napi_type_tag kShareClientTag = {0x7078645f73686172ull, 0x655f636c69656e74ull};

enum Event : uint32_t { kRequest = 1, kInterrupt = 2, kStopped = 3 };

void* Pack(Event event, uint32_t slot, uint32_t generation) {
  return reinterpret_cast<void*>(static_cast<uintptr_t>(event) | uintptr_t{slot} << 4 |
                                 static_cast<uintptr_t>(generation) << 16);
}

class JsShareClient : public share::ClientSink {
 public:
  std::unique_ptr<ShareClient> client;
  napi_threadsafe_function tsfn = nullptr;
  napi_ref memory = nullptr;
  bool unmounted = false;
  int stop_errno = 0;

  void Request(uint32_t slot, uint32_t generation) override { Queue(Pack(kRequest, slot, generation)); }
  void Interrupt(uint32_t slot, uint32_t generation) override { Queue(Pack(kInterrupt, slot, generation)); }
  void Stopped(int os_errno) override {
    stop_errno = os_errno;
    Queue(Pack(kStopped, 0, 0));
  }

 private:
  void Queue(void* data) { napi_call_threadsafe_function(tsfn, data, napi_tsfn_nonblocking); }
};

using ClientPtr = std::shared_ptr<JsShareClient>;

static_assert(sizeof(uintptr_t) == 8, "events are packed into 64-bit pointers");

void CallJs(napi_env env, napi_value fn, void* context, void* data) {
  if (env == nullptr || fn == nullptr) return;
  JsShareClient* self = static_cast<ClientPtr*>(context)->get();
  if (self->unmounted) return;
  const uintptr_t packed = reinterpret_cast<uintptr_t>(data);
  const auto event = static_cast<Event>(packed & 0xf);
  const uint32_t slot = static_cast<uint32_t>((packed >> 4) & 0xfff);
  const uint32_t generation = static_cast<uint32_t>(packed >> 16);
  double argv_n[4] = {static_cast<double>(event), static_cast<double>(slot), 0, 0};
  if (event == kStopped) {
    argv_n[1] = -1;
    argv_n[3] = self->stop_errno;
  } else {
    size_t offset;
    size_t length;
    if (!self->client->Pending(slot, generation, &offset, &length)) return;
    argv_n[2] = static_cast<double>(offset);
    argv_n[3] = static_cast<double>(length);
  }
  napi_value argv[4];
  for (int i = 0; i < 4; i++) {
    if (napi_create_double(env, argv_n[i], &argv[i]) != napi_ok) return;
  }
  napi_value recv;
  napi_value result;
  if (napi_get_undefined(env, &recv) != napi_ok) return;
  napi_call_function(env, recv, fn, 4, argv, &result);
}

void FinalizeTsfn(napi_env, void* context, void*) { delete static_cast<ClientPtr*>(context); }

// Lets go of the JS side: no event reaches JS any more, and the slot memory
// is left to the ArrayBuffer's views.
void Release(napi_env env, JsShareClient& c) {
  c.unmounted = true;
  napi_release_threadsafe_function(c.tsfn, napi_tsfn_release);
  if (c.memory != nullptr) {
    napi_delete_reference(env, c.memory);
    c.memory = nullptr;
  }
}

// Unmounts and stops the client; safe to call twice.
void Shutdown(napi_env env, JsShareClient& c, bool lazy) {
  if (c.unmounted) return;
  c.client->Unmount(lazy);
  Release(env, c);
}

void FinalizeHandle(napi_env env, void* data, void*) {
  auto* p = static_cast<ClientPtr*>(data);
  JsShareClient& c = **p;
  if (!c.unmounted) {
    // Dropped while mounted: the destructor detaches lazily.
    c.client.reset();
    Release(env, c);
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

JsShareClient& ArgClient(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool ok = false;
  if (info.Length() < 1 || !info[0].IsExternal() ||
      napi_check_object_type_tag(env, info[0], &kShareClientTag, &ok) != napi_ok || !ok) {
    throw Napi::TypeError::New(env, "argument 0 must be a share client handle");
  }
  return **info[0].As<Napi::External<ClientPtr>>().Data();
}

uint32_t ToUint32(Napi::Env env, const Napi::Value& value, const std::string& what) {
  if (!value.IsNumber()) throw Napi::TypeError::New(env, what + " must be a number");
  double v = value.As<Napi::Number>().DoubleValue();
  if (!(v >= 0 && v <= 4294967295.0) || v != static_cast<double>(static_cast<uint32_t>(v))) {
    throw Napi::TypeError::New(env, what + " must be an unsigned 32-bit integer");
  }
  return static_cast<uint32_t>(v);
}

uint32_t ArgUint32(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
  return ToUint32(info.Env(), info[i], what);
}

Napi::Uint8Array ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a Uint8Array");
  }
  return info[i].As<Napi::Uint8Array>();
}

void ReadOptions(Napi::Env env, const Napi::Object& opts, ShareClient::Options* o) {
  Napi::Value slots = opts.Get("slots");
  if (!slots.IsUndefined()) o->slots = ToUint32(env, slots, "options.slots");
  Napi::Value timeout = opts.Get("attrTimeoutMs");
  if (!timeout.IsUndefined()) o->attr_timeout_ms = ToUint32(env, timeout, "options.attrTimeoutMs");
}

// Starts the client (mounting, or adopting a connection) and wraps it in a JS handle.
Napi::Value StartClient(Napi::Env env, const ShareClient::Options& o, const Napi::Value& on_event) {
  auto self = std::make_shared<JsShareClient>();
  auto* tsfn_ref = new ClientPtr(self);
  napi_value name = Napi::String::New(env, "pxd-share-client");
  if (napi_create_threadsafe_function(env, on_event, nullptr, name, 0, 1, tsfn_ref, FinalizeTsfn, tsfn_ref, CallJs,
                                      &self->tsfn) != napi_ok) {
    delete tsfn_ref;
    throw Napi::Error::New(env, "cannot create the share client's event queue");
  }
  // The mount itself keeps nothing alive: the daemon decides when to exit.
  napi_unref_threadsafe_function(env, self->tsfn);
  try {
    self->client = std::make_unique<ShareClient>(o, self.get());
  } catch (const FuseError& e) {
    Release(env, *self);
    ThrowFuseError(env, e);
  }
  auto* pool = new std::shared_ptr<SlotPool>(self->client->pool());
  napi_value memory;
  if (napi_create_external_arraybuffer(env, (*pool)->base(), (*pool)->bytes(), FinalizeMemory, pool, &memory) !=
      napi_ok) {
    delete pool;
    Shutdown(env, *self, true);
    throw Napi::Error::New(env, "cannot expose the share client's request buffers");
  }
  napi_create_reference(env, memory, 1, &self->memory);

  auto* handle_ref = new ClientPtr(self);
  napi_value handle;
  if (napi_create_external(env, handle_ref, FinalizeHandle, nullptr, &handle) != napi_ok ||
      napi_type_tag_object(env, handle, &kShareClientTag) != napi_ok) {
    Shutdown(env, *self, true);
    throw Napi::Error::New(env, "cannot create a share client handle");
  }
  return Napi::Value(env, handle);
}

// shareClientMount(mountpoint, rootHandle, rootAttr, options, onEvent) -> handle
Napi::Value JsMount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsString() || !info[3].IsObject() || !info[4].IsFunction()) {
    throw Napi::TypeError::New(env, "shareClientMount(mountpoint, rootHandle, rootAttr, options, onEvent)");
  }
  ShareClient::Options o;
  o.mountpoint = info[0].As<Napi::String>().Utf8Value();
  Napi::Uint8Array handle_bytes = ArgBytes(info, 1, "rootHandle");
  o.root_handle.assign(reinterpret_cast<const char*>(handle_bytes.Data()), handle_bytes.ByteLength());
  Napi::Uint8Array attr = ArgBytes(info, 2, "rootAttr");
  if (attr.ByteLength() < sizeof(fuse_attr_out)) throw Napi::TypeError::New(env, "rootAttr must be a fuse_attr_out");
  std::memcpy(&o.root_mode, attr.Data() + offsetof(fuse_attr_out, attr) + offsetof(fuse_attr, mode),
              sizeof o.root_mode);
  Napi::Object opts = info[3].As<Napi::Object>();
  Napi::Value fsname = opts.Get("fsname");
  if (!fsname.IsString()) throw Napi::TypeError::New(env, "options.fsname must be a string");
  o.fsname = fsname.As<Napi::String>().Utf8Value();
  ReadOptions(env, opts, &o);
  return StartClient(env, o, info[4]);
}

// shareClientAdopt(fd, mountpoint, table, nextNodeid, options, onEvent) -> handle
Napi::Value JsAdopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6 || !info[1].IsString() || !info[4].IsObject() || !info[5].IsFunction()) {
    throw Napi::TypeError::New(env, "shareClientAdopt(fd, mountpoint, table, nextNodeid, options, onEvent)");
  }
  ShareClient::Options o;
  o.adopt_fd = static_cast<int>(ArgUint32(info, 0, "fd"));
  o.mountpoint = info[1].As<Napi::String>().Utf8Value();
  Napi::Uint8Array table = ArgBytes(info, 2, "table");
  o.table.assign(reinterpret_cast<const char*>(table.Data()), table.ByteLength());
  if (!info[3].IsNumber()) throw Napi::TypeError::New(env, "nextNodeid must be a number");
  const double next = info[3].As<Napi::Number>().DoubleValue();
  if (!(next >= 2 && next <= 9007199254740991.0) || next != static_cast<double>(static_cast<uint64_t>(next))) {
    throw Napi::TypeError::New(env, "nextNodeid must be an integer above 1");
  }
  o.next_nodeid = static_cast<uint64_t>(next);
  Napi::Object opts = info[4].As<Napi::Object>();
  ReadOptions(env, opts, &o);
  Napi::Value pending = opts.Get("pending");
  if (!pending.IsUndefined()) {
    if (!pending.IsTypedArray() || pending.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      throw Napi::TypeError::New(env, "options.pending must be a Uint8Array");
    }
    Napi::Uint8Array bytes = pending.As<Napi::Uint8Array>();
    o.pending.assign(reinterpret_cast<const char*>(bytes.Data()), bytes.ByteLength());
  }
  return StartClient(env, o, info[5]);
}

ShareClient& Mounted(const Napi::CallbackInfo& info, JsShareClient& c) {
  if (c.unmounted) throw Napi::Error::New(info.Env(), "the share client is unmounted");
  return *c.client;
}

// shareClientLayout(handle) -> { memory, slots, slotBytes }
Napi::Value JsLayout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsShareClient& c = ArgClient(info);
  ShareClient& client = Mounted(info, c);
  napi_value memory;
  napi_get_reference_value(env, c.memory, &memory);
  Napi::Object out = Napi::Object::New(env);
  out.Set("memory", Napi::Value(env, memory));
  out.Set("slots", client.slots());
  out.Set("slotBytes", static_cast<double>(client.slot_bytes()));
  return out;
}

uint32_t ArgSlot(const Napi::CallbackInfo& info, const ShareClient& client) {
  uint32_t slot = ArgUint32(info, 1, "slot");
  if (slot >= client.slots()) throw Napi::RangeError::New(info.Env(), "no such slot");
  return slot;
}

// shareClientReply(handle, slot, reply): ignored once unmounted.
Napi::Value JsReply(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsShareClient& c = ArgClient(info);
  Napi::Uint8Array reply = ArgBytes(info, 2, "reply");
  if (c.unmounted) return env.Undefined();
  c.client->Reply(ArgSlot(info, *c.client), reply.Data(), reply.ByteLength());
  return env.Undefined();
}

// shareClientFail(handle, slot, errno): ignored once unmounted.
Napi::Value JsFail(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsShareClient& c = ArgClient(info);
  uint32_t os_errno = ArgUint32(info, 2, "errno");
  if (c.unmounted) return env.Undefined();
  c.client->Fail(ArgSlot(info, *c.client), static_cast<int>(os_errno == 0 || os_errno > 4095 ? EIO : os_errno));
  return env.Undefined();
}

Napi::Value JsOpcode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsShareClient& c = ArgClient(info);
  if (c.unmounted) return Napi::Number::New(env, 0);
  return Napi::Number::New(env, c.client->Opcode(ArgSlot(info, *c.client)));
}

// shareClientUnmount(handle, lazy). Without lazy, throws with code EBUSY
// while the mount is in use; the client keeps serving then.
Napi::Value JsUnmount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsShareClient& c = ArgClient(info);
  bool lazy = info.Length() > 1 && info[1].ToBoolean().Value();
  try {
    Shutdown(env, c, lazy);
  } catch (const FuseError& e) {
    ThrowFuseError(env, e);
  }
  return env.Undefined();
}

// shareClientPause(handle): the reader stops; pending requests stay answerable.
Napi::Value JsPause(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsShareClient& c = ArgClient(info);
  Mounted(info, c).Pause();
  return env.Undefined();
}

// shareClientHandOff(handle) -> { fd, table, nextNodeid, pending }; the handle is let go of.
Napi::Value JsHandOff(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsShareClient& c = ArgClient(info);
  std::string table;
  std::string pending;
  uint64_t next = 0;
  int fd;
  try {
    fd = Mounted(info, c).HandOff(&table, &next, &pending);
  } catch (const FuseError& e) {
    ThrowFuseError(env, e);
  }
  Release(env, c);
  Napi::Object out = Napi::Object::New(env);
  out.Set("fd", fd);
  out.Set("table", Napi::Buffer<char>::Copy(env, table.data(), table.size()));
  out.Set("nextNodeid", static_cast<double>(next));
  out.Set("pending", Napi::Buffer<char>::Copy(env, pending.data(), pending.size()));
  return out;
}

Napi::Value JsStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsShareClient& c = ArgClient(info);
  share::ClientStats s;
  // Counters stay readable after an unmount (the client object lives on
  // until the handle goes), the table as it was left.
  if (c.client) s = c.client->stats();
  Napi::Object out = Napi::Object::New(env);
  out.Set("requests", static_cast<double>(s.requests));
  out.Set("bytesRead", static_cast<double>(s.bytes_read));
  out.Set("bytesWritten", static_cast<double>(s.bytes_written));
  out.Set("nodes", static_cast<double>(s.nodes));
  return out;
}

}  // namespace

void InitShareClient(Napi::Env env, Napi::Object exports) {
  exports.Set("shareClientMount", Napi::Function::New<JsMount>(env, "shareClientMount"));
  exports.Set("shareClientAdopt", Napi::Function::New<JsAdopt>(env, "shareClientAdopt"));
  exports.Set("shareClientPause", Napi::Function::New<JsPause>(env, "shareClientPause"));
  exports.Set("shareClientHandOff", Napi::Function::New<JsHandOff>(env, "shareClientHandOff"));
  exports.Set("shareClientLayout", Napi::Function::New<JsLayout>(env, "shareClientLayout"));
  exports.Set("shareClientReply", Napi::Function::New<JsReply>(env, "shareClientReply"));
  exports.Set("shareClientFail", Napi::Function::New<JsFail>(env, "shareClientFail"));
  exports.Set("shareClientOpcode", Napi::Function::New<JsOpcode>(env, "shareClientOpcode"));
  exports.Set("shareClientUnmount", Napi::Function::New<JsUnmount>(env, "shareClientUnmount"));
  exports.Set("shareClientStats", Napi::Function::New<JsStats>(env, "shareClientStats"));
}

}  // namespace pxd
