// JS bindings of a block store's snapshot layers (block_layers.cc, merges in
// block_merge.cc): opening a store over base layers or read-only, merging its
// nearest base into it, and merging two frozen layers' files. Same
// conventions as addon.cc: type errors thrown synchronously, the rest through
// a node-style callback.
#include <napi.h>

#include <string>
#include <utility>
#include <vector>

#include "block_store.h"
#include "store_binding.h"

namespace pxd {
namespace {

class MergeBaseWorker : public StoreWorker {
 public:
  MergeBaseWorker(const Napi::Function& cb, HandlePtr h)
      : StoreWorker(cb, "pxd:storeMergeBase", std::move(h)) {}

 protected:
  void Run(BlockStore& store) override { store.MergeBase(); }
};

class LayerMergeWorker : public Napi::AsyncWorker {
 public:
  LayerMergeWorker(const Napi::Function& cb, std::vector<std::string> paths, bool overwrite,
                   int64_t block_size)
      : Napi::AsyncWorker(cb, "pxd:layerMerge"),
        paths_(std::move(paths)),
        block_size_(block_size),
        overwrite_(overwrite) {}

 protected:
  void Execute() override {
    ok_ = Capture(error_, [this] {
      BlockStore::LayerMerge(paths_[0], paths_[1], paths_[2], paths_[3], block_size_, overwrite_);
    });
  }

  void OnOK() override {
    napi_env env = Env();
    Deliver(env, Callback(), {ok_ ? Null(env) : MakeError(env, error_)});
  }

 private:
  std::vector<std::string> paths_;  // from data, from crc, into data, into crc
  int64_t block_size_;
  bool overwrite_;
  bool ok_ = false;
  StoreError error_;
};

// [data0, crc0, data1, crc1, ...] as pairs, nearest first.
std::vector<std::pair<std::string, std::string>> ArgBases(const Napi::CallbackInfo& info,
                                                          size_t i) {
  Napi::Value v = info[i];
  if (!v.IsArray()) ThrowType(info.Env(), "bases must be an array of paths");
  Napi::Array a = v.As<Napi::Array>();
  const uint32_t n = a.Length();
  if (n % 2 != 0) ThrowType(info.Env(), "bases must hold a data and a crc path per layer");
  std::vector<std::pair<std::string, std::string>> out;
  for (uint32_t k = 0; k < n; k += 2) {
    Napi::Value d = a.Get(k);
    Napi::Value c = a.Get(k + 1);
    if (!d.IsString() || !c.IsString()) ThrowType(info.Env(), "bases must be an array of paths");
    out.emplace_back(d.As<Napi::String>().Utf8Value(), c.As<Napi::String>().Utf8Value());
  }
  return out;
}

Napi::Value JsStoreOpenLayered(const Napi::CallbackInfo& info) {
  std::string data_path = ArgString(info, 0, "dataPath");
  std::string crc_path = ArgString(info, 1, "crcPath");
  std::string intent_path = ArgString(info, 2, "intentPath");
  int64_t size = ArgInteger(info, 3, "size");
  int64_t block_size = ArgInteger(info, 4, "blockSize");
  bool create = ArgBoolean(info, 5, "create");
  StoreOptions options;
  options.read_only = ArgBoolean(info, 6, "readOnly");
  options.bases = ArgBases(info, 7);
  Napi::Function cb = ArgCallback(info, 8);
  // A read-only store has no intent map.
  if (options.read_only) intent_path.clear();
  QueueStoreOpen(cb, std::move(data_path), std::move(crc_path), std::move(intent_path),
                 size, block_size, create, std::move(options));
  return info.Env().Undefined();
}

Napi::Value JsStoreMergeBase(const Napi::CallbackInfo& info) {
  HandlePtr h = ArgHandle(info, 0);
  Napi::Function cb = ArgCallback(info, 1);
  (new MergeBaseWorker(cb, std::move(h)))->Start();
  return info.Env().Undefined();
}

template <bool kOverwrite>
Napi::Value JsLayerMerge(const Napi::CallbackInfo& info) {
  std::vector<std::string> paths;
  paths.push_back(ArgString(info, 0, "fromData"));
  paths.push_back(ArgString(info, 1, "fromCrc"));
  paths.push_back(ArgString(info, 2, "intoData"));
  paths.push_back(ArgString(info, 3, "intoCrc"));
  int64_t block_size = ArgInteger(info, 4, "blockSize");
  Napi::Function cb = ArgCallback(info, 5);
  (new LayerMergeWorker(cb, std::move(paths), kOverwrite, block_size))->Queue();
  return info.Env().Undefined();
}

}  // namespace

void InitLayers(Napi::Env env, Napi::Object exports) {
  exports.Set("storeOpenLayered", Napi::Function::New<JsStoreOpenLayered>(env, "storeOpenLayered"));
  exports.Set("storeMergeBase", Napi::Function::New<JsStoreMergeBase>(env, "storeMergeBase"));
  exports.Set("layerMerge", Napi::Function::New<JsLayerMerge<false>>(env, "layerMerge"));
  exports.Set("layerOverlay", Napi::Function::New<JsLayerMerge<true>>(env, "layerOverlay"));
}

}  // namespace pxd
