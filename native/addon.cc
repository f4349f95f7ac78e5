// JS bindings: flat functions over an opaque store handle, node-style
// callbacks. Argument types are checked here (TypeError, thrown
// synchronously); value errors come back through the callback with a code.
// What the snapshot layers' bindings (layer_binding.cc) share with these is
// in store_binding.h.
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

constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1

const napi_type_tag kStoreTag = {0x7078645f73746f72ull, 0x655f68616e646c65ull};

bool SetString(napi_env env, napi_value obj, const char* key,
               const std::string& value) {
  napi_value v;
  return napi_create_string_utf8(env, value.data(), value.size(), &v) ==
             napi_ok &&
         napi_set_named_property(env, obj, key, v) == napi_ok;
}

bool SetNumber(napi_env env, napi_value obj, const char* key, double value) {
  napi_value v;
  return napi_create_double(env, value, &v) == napi_ok &&
         napi_set_named_property(env, obj, key, v) == napi_ok;
}

}  // namespace

napi_value MakeError(napi_env env, const StoreError& e) {
  napi_value code;
  napi_value msg;
  napi_value err;
  if (napi_create_string_utf8(env, e.code.data(), e.code.size(), &code) !=
          napi_ok ||
      napi_create_string_utf8(env, e.message.data(), e.message.size(),
                              &msg) != napi_ok ||
      napi_create_error(env, code, msg, &err) != napi_ok) {
    return nullptr;
  }
  bool ok = true;
  if (e.os_errno != 0) {
    ok = ok && SetNumber(env, err, "errno", e.os_errno);
    ok = ok && SetString(env, err, "syscall", e.syscall);
  }
  if (!e.path.empty()) ok = ok && SetString(env, err, "path", e.path);
  if (e.block >= 0) {
    ok = ok && SetNumber(env, err, "block", static_cast<double>(e.block));
  }
  return ok ? err : nullptr;
}

napi_value Null(napi_env env) {
  napi_value v = nullptr;
  napi_get_null(env, &v);
  return v;
}

void Deliver(napi_env env, const Napi::FunctionReference& cb,
             const std::vector<napi_value>& args) {
  for (napi_value a : args) {
    if (a == nullptr) return;
  }
  napi_value fn;
  napi_value recv;
  napi_value result;
  if (napi_get_reference_value(env, cb, &fn) != napi_ok || fn == nullptr ||
      napi_get_undefined(env, &recv) != napi_ok) {
    return;
  }
  napi_call_function(env, recv, fn, args.size(), args.data(), &result);
}

StoreError ClosedError(const Handle& h) {
  StoreError e;
  e.code = "ECLOSED";
  e.message = "block store " + h.store->data_path() + " is closed";
  e.path = h.store->data_path();
  return e;
}

namespace {

class WriteWorker : public StoreWorker {
 public:
  WriteWorker(const Napi::Function& cb, HandlePtr h, int64_t offset,
              const Napi::Uint8Array& buf)
      : StoreWorker(cb, "pxd:storeWrite", std::move(h)),
        offset_(offset),
        buf_(Napi::Persistent(buf.As<Napi::Object>())),
        data_(buf.Data()),
        len_(buf.ByteLength()) {}

 protected:
  void Run(BlockStore& store) override { store.Write(offset_, data_, len_); }

 private:
  int64_t offset_;
  Napi::ObjectReference buf_;  // keeps the memory alive until the callback
  const uint8_t* data_;
  size_t len_;
};

class ReadWorker : public StoreWorker {
 public:
  ReadWorker(const Napi::Function& cb, HandlePtr h, int64_t offset,
             Napi::Uint8Array buf)
      : StoreWorker(cb, "pxd:storeRead", std::move(h)),
        offset_(offset),
        buf_(Napi::Persistent(buf.As<Napi::Object>())),
        data_(buf.Data()),
        len_(buf.ByteLength()) {}

 protected:
  void Run(BlockStore& store) override { store.Read(offset_, data_, len_); }

 private:
  int64_t offset_;
  Napi::ObjectReference buf_;
  uint8_t* data_;
  size_t len_;
};

// Hashes of a block-aligned range into `out` (8 bytes per block); with a data
// buffer, the range's checked bytes too.
class HashWorker : public StoreWorker {
 public:
  HashWorker(const Napi::Function& cb, HandlePtr h, int64_t offset,
             Napi::Uint8Array out, Napi::Uint8Array data)
      : StoreWorker(cb, "pxd:storeHashes", std::move(h)),
        offset_(offset),
        out_ref_(Napi::Persistent(out.As<Napi::Object>())),
        out_(out.Data()),
        blocks_(out.ByteLength() / 8),
        data_ref_(data.IsEmpty() ? Napi::ObjectReference() : Napi::Persistent(data.As<Napi::Object>())),
        data_(data.IsEmpty() ? nullptr : data.Data()),
        data_len_(data.IsEmpty() ? 0 : data.ByteLength()) {}

 protected:
  void Run(BlockStore& store) override {
    const uint64_t len = blocks_ * store.block_size();
    if (data_ != nullptr && data_len_ != len) {
      throw Failure("EINVAL", "hashes: the data buffer holds " + std::to_string(data_len_) +
                                  " bytes, the range " + std::to_string(len));
    }
    store.Hashes(offset_, len, out_, data_);
  }

 private:
  int64_t offset_;
  Napi::ObjectReference out_ref_;
  uint8_t* out_;
  uint64_t blocks_;
  Napi::ObjectReference data_ref_;
  uint8_t* data_;
  size_t data_len_;
};

// A discard of a range: zeros from now on, whole blocks punched out.
class DiscardWorker : public StoreWorker {
 public:
  DiscardWorker(const Napi::Function& cb, HandlePtr h, int64_t offset,
                int64_t length)
      : StoreWorker(cb, "pxd:storeDiscard", std::move(h)),
        offset_(offset),
        length_(length) {}

 protected:
  void Run(BlockStore& store) override {
    if (length_ < 0) throw Failure("ERANGE", "discard of a negative length");
    store.Discard(offset_, static_cast<uint64_t>(length_));
  }

 private:
  int64_t offset_;
  int64_t length_;
};

// A flush syncs the data file and the crc file on two pool threads at once
// (measured: flush p50 0.69-0.72 ms this way, 0.96-0.98 ms one after the
// other, 4 KiB write+flush on a device file); the part that finishes second,
// on its pool thread, records the flush (which clears intent marks that are
// due) and calls back. A flush with no write since the last full one does
// nothing (kSkip): each fdatasync still costs a disk cache flush. Once an
// fdatasync failed no flush is skipped: each one fails.
struct FlushJoin {
  uint64_t seq = 0;
  std::atomic<int> pending{2};
  std::mutex mu;  // failed, error
  bool failed = false;
  StoreError error;
};

class FlushWorker : public StoreWorker {
 public:
  enum class Part { kSkip, kData, kCrc };

  FlushWorker(const Napi::Function& cb, HandlePtr h, Part part,
              std::shared_ptr<FlushJoin> join)
      : StoreWorker(cb, "pxd:storeFlush", std::move(h)),
        part_(part),
        join_(std::move(join)) {}

 protected:
  void Run(BlockStore& store) override {
    ran_ = true;
    if (part_ == Part::kSkip) {
      store.ClearIdle();
      return;
    }
    StoreError e;
    const bool ok = Capture(e, [&] {
      if (part_ == Part::kData) {
        store.SyncData();
      } else {
        store.SyncCrc();
      }
    });
    if (!ok) {
      std::lock_guard<std::mutex> lock(join_->mu);
      if (!join_->failed) {
        join_->failed = true;
        join_->error = e;
      }
    }
    last_ = join_->pending.fetch_sub(1, std::memory_order_acq_rel) == 1;
    if (last_ && !join_->failed) store.MarkFlushed(join_->seq);
  }

  bool Answer(napi_env env, bool, std::vector<napi_value>& args) override {
    // Not run: the store was closed; one part reports it.
    if (!ran_) return part_ != Part::kCrc;
    if (part_ == Part::kSkip) return true;
    if (!last_) return false;
    if (join_->failed) args.assign(1, MakeError(env, join_->error));
    return true;
  }

 private:
  Part part_;
  std::shared_ptr<FlushJoin> join_;
  bool ran_ = false;
  bool last_ = false;
};

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

class OpenWorker : public Napi::AsyncWorker {
 public:
  OpenWorker(const Napi::Function& cb, std::string data_path,
             std::string crc_path, std::string intent_path, int64_t size,
             int64_t block_size, bool create, StoreOptions options)
      : Napi::AsyncWorker(cb, "pxd:storeOpen"),
        data_path_(std::move(data_path)),
        crc_path_(std::move(crc_path)),
        intent_path_(std::move(intent_path)),
        size_(size),
        block_size_(block_size),
        create_(create),
        options_(std::move(options)) {}

 protected:
  void Execute() override {
    ok_ = Capture(error_, [this] {
      store_ = BlockStore::Open(data_path_, crc_path_, intent_path_, size_,
                                block_size_, create_, options_);
    });
  }

  void OnOK() override {
    napi_env env = Env();
    if (!ok_) {
      Deliver(env, Callback(), {MakeError(env, error_)});
      return;
    }
    auto handle = std::make_shared<Handle>();
    handle->store = std::move(store_);
    auto* owned = new HandlePtr(std::move(handle));
    napi_value ext;
    if (napi_create_external(
            env, owned,
            [](napi_env, void* data, void*) {
              delete static_cast<HandlePtr*>(data);
            },
            nullptr, &ext) != napi_ok) {
      delete owned;  // closes the files
      return;
    }
    if (napi_type_tag_object(env, ext, &kStoreTag) != napi_ok) return;
    Deliver(env, Callback(), {Null(env), ext});
  }

 private:
  std::string data_path_;
  std::string crc_path_;
  std::string intent_path_;
  int64_t size_;
  int64_t block_size_;
  bool create_;
  StoreOptions options_;
  bool ok_ = false;
  StoreError error_;
  std::unique_ptr<BlockStore> store_;
};

}  // namespace

void QueueStoreOpen(const Napi::Function& cb, std::string data_path,
                    std::string crc_path, std::string intent_path, int64_t size,
                    int64_t block_size, bool create, StoreOptions options) {
  (new OpenWorker(cb, std::move(data_path), std::move(crc_path),
                  std::move(intent_path), size, block_size, create,
                  std::move(options)))
      ->Queue();
}

// ---- argument checks -------------------------------------------------------

[[noreturn]] void ThrowType(Napi::Env env, const std::string& msg) {
  throw Napi::TypeError::New(env, msg);
}

HandlePtr ArgHandle(const Napi::CallbackInfo& info, size_t i) {
  Napi::Value v = info[i];
  if (!v.IsExternal() ||
      !v.As<Napi::External<HandlePtr>>().CheckTypeTag(&kStoreTag)) {
    ThrowType(info.Env(), "argument " + std::to_string(i + 1) +
                              " must be a store handle");
  }
  return *v.As<Napi::External<HandlePtr>>().Data();
}

int64_t ArgInteger(const Napi::CallbackInfo& info, size_t i,
                   const char* name) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) ThrowType(info.Env(), std::string(name) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::trunc(d) != d || std::fabs(d) > kMaxSafeInteger) {
    ThrowType(info.Env(), std::string(name) + " must be a safe integer");
  }
  return static_cast<int64_t>(d);
}

Napi::Uint8Array ArgBuffer(const Napi::CallbackInfo& info, size_t i) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray() ||
      v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowType(info.Env(), "argument " + std::to_string(i + 1) +
                              " must be a Uint8Array or Buffer");
  }
  return v.As<Napi::Uint8Array>();
}

Napi::Function ArgCallback(const Napi::CallbackInfo& info, size_t i) {
  Napi::Value v = info[i];
  if (!v.IsFunction()) {
    ThrowType(info.Env(), "argument " + std::to_string(i + 1) +
                              " must be a callback function");
  }
  return v.As<Napi::Function>();
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i,
                      const char* name) {
  Napi::Value v = info[i];
  if (!v.IsString()) ThrowType(info.Env(), std::string(name) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

bool ArgBoolean(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsBoolean()) ThrowType(info.Env(), std::string(name) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

namespace {

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

Napi::Value JsStoreWrite(const Napi::CallbackInfo& info) {
  HandlePtr h = ArgHandle(info, 0);
  int64_t offset = ArgInteger(info, 1, "offset");
  Napi::Uint8Array buf = ArgBuffer(info, 2);
  Napi::Function cb = ArgCallback(info, 3);
  (new WriteWorker(cb, std::move(h), offset, buf))->Start();
  return info.Env().Undefined();
}

Napi::Value JsStoreRead(const Napi::CallbackInfo& info) {
  HandlePtr h = ArgHandle(info, 0);
  int64_t offset = ArgInteger(info, 1, "offset");
  Napi::Uint8Array buf = ArgBuffer(info, 2);
  Napi::Function cb = ArgCallback(info, 3);
  (new ReadWorker(cb, std::move(h), offset, buf))->Start();
  return info.Env().Undefined();
}

Napi::Value JsStoreHashes(const Napi::CallbackInfo& info) {
  HandlePtr h = ArgHandle(info, 0);
  int64_t offset = ArgInteger(info, 1, "offset");
  Napi::Uint8Array out = ArgBuffer(info, 2);
  Napi::Function cb = ArgCallback(info, 3);
  if (out.ByteLength() % 8 != 0) {
    throw Napi::TypeError::New(info.Env(), "hashes: the output buffer must hold 8 bytes per block");
  }
  // Optional: where the range's data goes too.
  Napi::Uint8Array data = info.Length() > 4 && !info[4].IsUndefined() ? ArgBuffer(info, 4) : Napi::Uint8Array();
  (new HashWorker(cb, std::move(h), offset, out, data))->Start();
  return info.Env().Undefined();
}

Napi::Value JsStoreDiscard(const Napi::CallbackInfo& info) {
  HandlePtr h = ArgHandle(info, 0);
  int64_t offset = ArgInteger(info, 1, "offset");
  int64_t length = ArgInteger(info, 2, "length");
  Napi::Function cb = ArgCallback(info, 3);
  (new DiscardWorker(cb, std::move(h), offset, length))->Start();
  return info.Env().Undefined();
}

Napi::Value JsStoreFlush(const Napi::CallbackInfo& info) {
  HandlePtr h = ArgHandle(info, 0);
  Napi::Function cb = ArgCallback(info, 1);
  auto join = std::make_shared<FlushJoin>();
  if (h->state != Handle::State::kOpen) {
    (new FlushWorker(cb, std::move(h), FlushWorker::Part::kSkip, join))->Start();
    return info.Env().Undefined();
  }
  // Writes answered before this flush was asked for have all been counted.
  join->seq = h->store->WriteSeq();
  if (!h->store->SyncFailed() && h->store->IsFlushed(join->seq)) {
    (new FlushWorker(cb, std::move(h), FlushWorker::Part::kSkip, join))->Start();
    return info.Env().Undefined();
  }
  (new FlushWorker(cb, h, FlushWorker::Part::kData, join))->Start();
  (new FlushWorker(cb, std::move(h), FlushWorker::Part::kCrc, join))->Start();
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
  exports.Set("storeWrite",
              Napi::Function::New<JsStoreWrite>(env, "storeWrite"));
  exports.Set("storeRead", Napi::Function::New<JsStoreRead>(env, "storeRead"));
  exports.Set("storeHashes",
              Napi::Function::New<JsStoreHashes>(env, "storeHashes"));
  exports.Set("storeDiscard",
              Napi::Function::New<JsStoreDiscard>(env, "storeDiscard"));
  exports.Set("storeFlush",
              Napi::Function::New<JsStoreFlush>(env, "storeFlush"));
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
