// JS bindings: flat functions over an opaque store handle, node-style
// callbacks. Argument types are checked here (TypeError, thrown
// synchronously); value errors come back through the callback with a code.
// What the store's I/O (store_io_binding.cc) and the snapshot layers'
// bindings (layer_binding.cc) share with these is in store_binding.h, defined
// in store_binding.cc.
//
// Callbacks are made with raw N-API calls whose status is checked: while a
// worker thread is being terminated calls into JS fail, and node-addon-api
// would turn that failure into a fatal error. An exception thrown by a JS
// callback stays pending and Node reports it as uncaught.
//
// Lifetime: a handle owns a Handle (shared with every worker using it), so a
// store is freed only once JS dropped the handle and no work is queued. The
// open/closing/closed state and the in-flight count live on the JS thread
// only: a request made after close() is rejected with ECLOSED, and the close
// itself is queued only when the last in-flight request has called back, so
// it never holds a pool thread while waiting.
#include <napi.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "block_store.h"
#include "crc32c.h"
#include "fuse_binding.h"
#include "unix_datagram.h"
#include "share_binding.h"
#include "store_binding.h"

namespace pxd {
void InitXts(Napi::Env env, Napi::Object exports);  // xts.cc
namespace {

// The first close() closes the files; later ones only report completion.
// An abandon closes them as a crash would, leaving the intent marks.
class CloseWorker : public Napi::AsyncWorker {
 public:
  CloseWorker(const Napi::Function& cb, HandlePtr h, bool closes,
              bool abandon = false)
      : Napi::AsyncWorker(cb, "pxd:storeClose"),
        handle_(std::move(h)),
        closes_(closes),
        abandon_(abandon) {}

 protected:
  void Execute() override {
    if (!closes_) return;
    ok_ = Capture(error_, [this] {
      if (abandon_) {
        handle_->store->Abandon();
      } else {
        handle_->store->Close();
      }
    });
  }

  void OnOK() override {
    napi_env env = Env();
    if (closes_) {
      handle_->state = Handle::State::kClosed;
      for (Napi::AsyncWorker* w : handle_->after_close) w->Queue();
      handle_->after_close.clear();
    }
    Deliver(env, Callback(), {ok_ ? Null(env) : MakeError(env, error_)});
  }

 private:
  HandlePtr handle_;
  bool closes_;
  bool abandon_;
  bool ok_ = true;
  StoreError error_;
};

uint32_t ArgCrcInit(const Napi::CallbackInfo& info, size_t i) {
  Napi::Value v = info[i];
  if (v.IsUndefined()) return 0;
  if (!v.IsNumber()) ThrowType(info.Env(), "init must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 4294967295.0) || std::trunc(d) != d) {
    ThrowType(info.Env(), "init must be an integer in [0, 2^32)");
  }
  return static_cast<uint32_t>(d);
}

// ---- exports ---------------------------------------------------------------

template <uint32_t (*Fn)(const void*, size_t, uint32_t)>
Napi::Value JsCrc(const Napi::CallbackInfo& info) {
  Napi::Uint8Array buf = ArgBuffer(info, 0);
  uint32_t init = ArgCrcInit(info, 1);
  return Napi::Number::New(info.Env(), Fn(buf.Data(), buf.ByteLength(), init));
}

Napi::Value JsCrc32cHardware(const Napi::CallbackInfo& info) {
  if (!HasHardwareCrc32c()) {
    Napi::Error err = Napi::Error::New(
        info.Env(), "the CPU has no SSE4.2 crc32 instruction");
    err.Set("code", Napi::String::New(info.Env(), "ENOTSUP"));
    throw err;
  }
  return JsCrc<Crc32cHardware>(info);
}

Napi::Value JsHasHardwareCrc32c(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), HasHardwareCrc32c());
}

Napi::Value JsStoreOpen(const Napi::CallbackInfo& info) {
  std::string data_path = ArgString(info, 0, "dataPath");
  std::string crc_path = ArgString(info, 1, "crcPath");
  std::string intent_path = ArgString(info, 2, "intentPath");
  int64_t size = ArgInteger(info, 3, "size");
  int64_t block_size = ArgInteger(info, 4, "blockSize");
  bool create = ArgBoolean(info, 5, "create");
  Napi::Function cb = ArgCallback(info, 6);
  QueueStoreOpen(cb, std::move(data_path), std::move(crc_path),
                 std::move(intent_path), size, block_size, create, StoreOptions());
  return info.Env().Undefined();
}

// Close, or with `abandon` the close a crash amounts to (for tests).
Napi::Value CloseStore(const Napi::CallbackInfo& info, bool abandon) {
  HandlePtr h = ArgHandle(info, 0);
  Napi::Function cb = ArgCallback(info, 1);
  Handle& handle = *h;
  switch (handle.state) {
    case Handle::State::kOpen: {
      handle.state = Handle::State::kClosing;
      auto* w = new CloseWorker(cb, std::move(h), true, abandon);
      if (handle.inflight == 0) {
        w->Queue();
      } else {
        handle.pending_close = w;
      }
      break;
    }
    case Handle::State::kClosing:
      handle.after_close.push_back(new CloseWorker(cb, std::move(h), false));
      break;
    case Handle::State::kClosed:
      (new CloseWorker(cb, std::move(h), false))->Queue();
      break;
  }
  return info.Env().Undefined();
}

Napi::Value JsStoreClose(const Napi::CallbackInfo& info) {
  return CloseStore(info, false);
}

Napi::Value JsStoreAbandon(const Napi::CallbackInfo& info) {
  return CloseStore(info, true);
}

// What the open recovered: { regions, blocks }.
Napi::Value JsStoreRecovery(const Napi::CallbackInfo& info) {
  HandlePtr h = ArgHandle(info, 0);
  const BlockStore::Recovery& r = h->store->recovery();
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("regions", static_cast<double>(r.regions));
  out.Set("blocks", static_cast<double>(r.blocks));
  return out;
}

Napi::Value JsStoreSetIntentIdle(const Napi::CallbackInfo& info) {
  HandlePtr h = ArgHandle(info, 0);
  int64_t ms = ArgInteger(info, 1, "ms");
  if (ms < 0) ThrowType(info.Env(), "ms must not be negative");
  h->store->SetIntentIdle(ms);
  return info.Env().Undefined();
}

// Detaches an ArrayBuffer, so its memory goes back now instead of at a major
// GC: large received messages otherwise get promoted while a write holds
// them, and their bytes then force frequent full collections.
Napi::Value JsReleaseArrayBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) ThrowType(env, "argument 1 must be an ArrayBuffer");
  if (napi_detach_arraybuffer(env, info[0]) != napi_ok) {
    throw Napi::Error::New(env, "the ArrayBuffer cannot be detached");
  }
  return env.Undefined();
}

// Opens (creating) a file and takes an exclusive flock on it without waiting;
// returns the descriptor, which holds the lock until it is closed or the process
// ends. Throws an Error with code EAGAIN when another process holds it.
Napi::Value JsLockFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) ThrowType(env, "argument 1 must be a path");
  const std::string path = info[0].As<Napi::String>();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  int err = fd < 0 ? errno : 0;
  if (fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    err = errno;
    ::close(fd);
  }
  if (err != 0) {
    Napi::Error e = Napi::Error::New(env, std::string(fd < 0 ? "open " : "flock ") + path + ": " + std::strerror(err));
    e.Set("code", Napi::String::New(env, ErrnoCode(err)));
    e.Set("errno", Napi::Number::New(env, err));
    throw e;
  }
  return Napi::Number::New(env, fd);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("crc32c", Napi::Function::New<JsCrc<Crc32c>>(env, "crc32c"));
  exports.Set("crc32cHardware",
              Napi::Function::New<JsCrc32cHardware>(env, "crc32cHardware"));
  exports.Set("crc32cSoftware", Napi::Function::New<JsCrc<Crc32cSoftware>>(
                                    env, "crc32cSoftware"));
  exports.Set("hasHardwareCrc32c", Napi::Function::New<JsHasHardwareCrc32c>(
                                       env, "hasHardwareCrc32c"));
  exports.Set("storeOpen", Napi::Function::New<JsStoreOpen>(env, "storeOpen"));
  exports.Set("storeClose",
              Napi::Function::New<JsStoreClose>(env, "storeClose"));
  exports.Set("storeAbandon",
              Napi::Function::New<JsStoreAbandon>(env, "storeAbandon"));
  exports.Set("storeRecovery",
              Napi::Function::New<JsStoreRecovery>(env, "storeRecovery"));
  exports.Set("storeSetIntentIdle", Napi::Function::New<JsStoreSetIntentIdle>(
                                        env, "storeSetIntentIdle"));
  exports.Set("lockFile", Napi::Function::New<JsLockFile>(env, "lockFile"));
  exports.Set("releaseArrayBuffer", Napi::Function::New<JsReleaseArrayBuffer>(env, "releaseArrayBuffer"));
  InitStoreIo(env, exports);
  InitLayers(env, exports);
  InitFuse(env, exports);
  InitShareServer(env, exports);
  InitShareClient(env, exports);
  InitUnixDatagram(env, exports);
  InitXts(env, exports);
  return exports;
}

}  // namespace
}  // namespace pxd

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  return pxd::Init(env, exports);
}

NODE_API_MODULE(pxd_native, InitModule)
