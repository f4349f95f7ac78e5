// What the block store's JS bindings share (store_binding.h): errors as JS
// values, the callback made with raw N-API calls, the store handle's type tag,
// the open, and the argument checks.
#include <napi.h>

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
#include "store_binding.h"

namespace pxd {
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

}  // namespace pxd
