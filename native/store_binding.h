// What the block store's JS bindings share: the handle JS holds a store by,
// the base of a request on an open store, and the callback and argument
// helpers (store_binding.cc). addon.cc has the store's open and close,
// store_io_binding.cc its I/O, layer_binding.cc the snapshot layers' functions
// (storeOpenLayered, storeMergeBase, layerMerge).
#ifndef PXD_NATIVE_STORE_BINDING_H_
#define PXD_NATIVE_STORE_BINDING_H_

#include <napi.h>

#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "block_store.h"

namespace pxd {

struct Handle {
  enum class State { kOpen, kClosing, kClosed };

  std::unique_ptr<BlockStore> store;
  State state = State::kOpen;
  uint64_t inflight = 0;
  // The close, deferred until inflight drops to zero.
  Napi::AsyncWorker* pending_close = nullptr;
  // Repeated close() calls, answered once the first one finished.
  std::vector<Napi::AsyncWorker*> after_close;
};

using HandlePtr = std::shared_ptr<Handle>;

// An Error with code/errno/syscall/path/block; nullptr if JS is unavailable.
napi_value MakeError(napi_env env, const StoreError& e);
napi_value Null(napi_env env);
// Calls cb(args...); does nothing if any argument could not be made.
void Deliver(napi_env env, const Napi::FunctionReference& cb,
             const std::vector<napi_value>& args);
StoreError ClosedError(const Handle& h);

// Runs `fn`, turning anything it throws into a StoreError.
template <typename Fn>
bool Capture(StoreError& out, Fn&& fn) {
  try {
    fn();
    return true;
  } catch (const StoreError& e) {
    out = e;
  } catch (const std::bad_alloc&) {
    out.code = "ENOMEM";
    out.message = "out of memory";
  } catch (const std::exception& e) {
    out.code = "EIO";
    out.message = e.what();
  }
  return false;
}

// A request on an open store. Start() must be called on the JS thread.
class StoreWorker : public Napi::AsyncWorker {
 public:
  void Start() {
    if (handle_->state == Handle::State::kOpen) {
      handle_->inflight++;
      counted_ = true;
    }
    Queue();
  }

 protected:
  StoreWorker(const Napi::Function& cb, const char* name, HandlePtr handle)
      : Napi::AsyncWorker(cb, name), handle_(std::move(handle)) {}

  virtual void Run(BlockStore& store) = 0;

  void Execute() override {
    if (!counted_) return;
    ok_ = Capture(error_, [this] { Run(*handle_->store); });
  }

  void OnOK() override {
    napi_env env = Env();
    if (counted_) Done();
    std::vector<napi_value> args;
    if (!counted_) {
      args.push_back(MakeError(env, ClosedError(*handle_)));
    } else if (!ok_) {
      args.push_back(MakeError(env, error_));
    } else {
      args.push_back(Null(env));
    }
    if (Answer(env, counted_ && ok_, args)) Deliver(env, Callback(), args);
  }

  // Last say over the callback's arguments; false: this worker does not call back.
  virtual bool Answer(napi_env, bool, std::vector<napi_value>&) { return true; }

 private:
  void Done() {
    if (--handle_->inflight == 0 && handle_->pending_close != nullptr) {
      Napi::AsyncWorker* close = handle_->pending_close;
      handle_->pending_close = nullptr;
      close->Queue();
    }
  }

  HandlePtr handle_;
  bool counted_ = false;
  bool ok_ = false;
  StoreError error_;
};

// Opens a store on a pool thread; cb(null, handle) or cb(err).
void QueueStoreOpen(const Napi::Function& cb, std::string data_path,
                    std::string crc_path, std::string intent_path, int64_t size,
                    int64_t block_size, bool create, StoreOptions options);

// Argument checks: a TypeError, thrown synchronously.
[[noreturn]] void ThrowType(Napi::Env env, const std::string& msg);
HandlePtr ArgHandle(const Napi::CallbackInfo& info, size_t i);
// A safe integer; range checks are the store's job (ERANGE via callback).
int64_t ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::Uint8Array ArgBuffer(const Napi::CallbackInfo& info, size_t i);
Napi::Function ArgCallback(const Napi::CallbackInfo& info, size_t i);
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name);
bool ArgBoolean(const Napi::CallbackInfo& info, size_t i, const char* name);

// Registers storeWrite, storeRead, storeHashes, storeDiscard and storeFlush (store_io_binding.cc).
void InitStoreIo(Napi::Env env, Napi::Object exports);
// Registers storeOpenLayered, storeMergeBase and layerMerge.
void InitLayers(Napi::Env env, Napi::Object exports);

}  // namespace pxd

#endif  // PXD_NATIVE_STORE_BINDING_H_
