// JS bindings of the shared-volume server (share_server.h): flat functions
// over an opaque handle.
//
// A request is executed in place on one of the server's threads; its bytes
// and the callback are held by references until the reply is delivered on the
// JS thread, through a thread-safe function, as a Buffer over the reply's own
// memory. The JS-side state (open, closing, closed; replies not yet delivered)
// lives on the JS thread only. A close waits for the replies of what the
// server was given, then stops it on the libuv pool, so the JS thread never
// waits for file I/O. Argument types are checked here (TypeError); a request
// never throws: its failures are in the reply.
#include <napi.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "share_binding.h"
#include "share_server.h"

namespace pxd {
namespace {

using share::ReplyBuf;
using share::ServerError;
using share::ShareServer;

const napi_type_tag kShareServerTag = {0x7078645f73686172ull, 0x655f736572766572ull};

struct JsServer {
  enum class State { kOpen, kClosing, kClosed };
  std::unique_ptr<ShareServer> server;
  napi_threadsafe_function tsfn = nullptr;
  State state = State::kOpen;
  uint64_t executing = 0;  // given to the server, reply not yet delivered
  uint64_t pending = 0;    // every reply not yet delivered (keeps the loop alive)
  bool shutdown_started = false;
  std::vector<napi_ref> close_waiters;
};
using JsServerPtr = std::shared_ptr<JsServer>;

class ExecJob : public share::ServerJob {
 public:
  ~ExecJob() override { std::free(reply.data); }
  void Done() override { napi_call_threadsafe_function(tsfn, this, napi_tsfn_nonblocking); }

  JsServerPtr owner;
  napi_threadsafe_function tsfn = nullptr;
  napi_ref request_ref = nullptr;
  napi_ref cb_ref = nullptr;
  bool executed = false;  // by the server (else answered here)
};

void CallRef(napi_env env, napi_ref ref, size_t argc, napi_value* argv) {
  napi_value fn;
  napi_value recv;
  napi_value result;
  if (napi_get_reference_value(env, ref, &fn) != napi_ok || fn == nullptr || napi_get_undefined(env, &recv) != napi_ok) {
    return;
  }
  napi_call_function(env, recv, fn, argc, argv, &result);
}

class CloseWorker : public Napi::AsyncWorker {
 public:
  CloseWorker(Napi::Env env, JsServerPtr self) : Napi::AsyncWorker(env, "pxd-share-server-close"), self_(std::move(self)) {}
  void Execute() override { self_->server->Shutdown(); }
  void OnOK() override { Finish(); }
  void OnError(const Napi::Error&) override { Finish(); }

 private:
  void Finish() {
    self_->state = JsServer::State::kClosed;
    std::vector<napi_ref> waiters;
    waiters.swap(self_->close_waiters);
    for (napi_ref w : waiters) {
      CallRef(Env(), w, 0, nullptr);
      napi_delete_reference(Env(), w);
    }
  }
  JsServerPtr self_;
};

// Calls back, later, a close made after the server was closed.
class ClosedWorker : public Napi::AsyncWorker {
 public:
  ClosedWorker(Napi::Env env, napi_ref cb) : Napi::AsyncWorker(env, "pxd-share-server-closed"), cb_(cb) {}
  void Execute() override {}
  void OnOK() override {
    CallRef(Env(), cb_, 0, nullptr);
    napi_delete_reference(Env(), cb_);
  }

 private:
  napi_ref cb_;
};

void MaybeStopServer(napi_env env, const JsServerPtr& self) {
  if (self->state != JsServer::State::kClosing || self->executing != 0 || self->shutdown_started) return;
  self->shutdown_started = true;
  (new CloseWorker(Napi::Env(env), self))->Queue();
}

void FreeReply(napi_env, void* data, void*) { std::free(data); }

void CallJs(napi_env env, napi_value, void*, void* data) {
  std::unique_ptr<ExecJob> job(static_cast<ExecJob*>(data));
  if (env == nullptr) return;  // the environment is going away
  JsServer& self = *job->owner;
  ReplyBuf reply = job->reply;
  napi_value buffer = nullptr;
  if (reply.data == nullptr) {
    share::WireReply h{};
    h.error = -ENOMEM;
    napi_create_buffer_copy(env, sizeof h, &h, nullptr, &buffer);
  } else if (napi_create_external_buffer(env, reply.len, reply.data, FreeReply, nullptr, &buffer) == napi_ok) {
    job->reply = ReplyBuf{};  // the Buffer owns it now
  } else {
    buffer = nullptr;
    napi_create_buffer_copy(env, reply.len, reply.data, nullptr, &buffer);
  }
  if (buffer != nullptr) CallRef(env, job->cb_ref, 1, &buffer);
  napi_delete_reference(env, job->cb_ref);
  napi_delete_reference(env, job->request_ref);
  if (job->executed) self.executing--;
  if (--self.pending == 0) napi_unref_threadsafe_function(env, self.tsfn);
  try {
    MaybeStopServer(env, job->owner);
  } catch (const Napi::Error&) {
    // Queuing the close failed (out of memory); it stays pending.
  }
}

void FinalizeTsfn(napi_env, void* context, void*) {
  auto* p = static_cast<JsServerPtr*>(context);
  (*p)->tsfn = nullptr;  // gone (at the environment's end, possibly before the handle)
  delete p;
}

void FinalizeHandle(napi_env, void* data, void*) {
  auto* p = static_cast<JsServerPtr*>(data);
  JsServer& self = **p;
  // Dropped without a close: stop here (what is queued still runs and is answered).
  if (!self.shutdown_started) {
    self.shutdown_started = true;
    self.server->Shutdown();
  }
  if (self.tsfn != nullptr) napi_release_threadsafe_function(self.tsfn, napi_tsfn_release);
  delete p;
}

[[noreturn]] void ThrowServerError(Napi::Env env, const ServerError& e) {
  Napi::Error err = Napi::Error::New(env, e.what());
  err.Set("code", e.code);
  if (e.os_errno != 0) err.Set("errno", static_cast<double>(e.os_errno));
  throw err;
}

JsServerPtr& ArgServer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal()) throw Napi::TypeError::New(env, "argument 0 must be a share server handle");
  bool ok = false;
  if (napi_check_object_type_tag(env, info[0], &kShareServerTag, &ok) != napi_ok || !ok) {
    throw Napi::TypeError::New(env, "argument 0 is not a share server handle");
  }
  return *info[0].As<Napi::External<JsServerPtr>>().Data();
}

uint32_t ArgUint32(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0 && v <= 4294967295.0) || v != static_cast<double>(static_cast<uint32_t>(v))) {
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be an unsigned 32-bit integer");
  }
  return static_cast<uint32_t>(v);
}

// shareServerOpen(rootPath, tag, threads) -> handle
Napi::Value JsShareServerOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString()) {
    throw Napi::TypeError::New(env, "shareServerOpen(rootPath, tag, threads)");
  }
  const std::string root = info[0].As<Napi::String>().Utf8Value();
  const std::string tag_hex = info[1].As<Napi::String>().Utf8Value();
  const uint32_t threads = ArgUint32(info, 2, "threads");
  uint64_t tag = 0;
  bool tag_ok = tag_hex.size() == 16;
  for (char c : tag_hex) {
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) tag_ok = false;
    tag = tag << 4 | static_cast<uint64_t>(d & 15);
  }
  if (!tag_ok) ThrowServerError(env, ServerError("EINVAL", 0, "tag must be 16 hex digits"));
  if (threads < 1 || threads > ShareServer::kMaxThreads) {
    ThrowServerError(env, ServerError("EINVAL", 0, "threads must be in [1, 16]"));
  }

  auto self = std::make_shared<JsServer>();
  try {
    self->server = std::make_unique<ShareServer>(root, tag, threads);
  } catch (const ServerError& e) {
    ThrowServerError(env, e);
  }
  auto* tsfn_ref = new JsServerPtr(self);
  napi_value name = Napi::String::New(env, "pxd-share-server");
  // The finalizer gets thread_finalize_data (the same pointer as the context).
  if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, tsfn_ref, FinalizeTsfn, tsfn_ref, CallJs,
                                      &self->tsfn) != napi_ok) {
    delete tsfn_ref;
    self->server->Shutdown();
    throw Napi::Error::New(env, "cannot create the share server's reply queue");
  }
  // Only replies on their way keep the process alive.
  napi_unref_threadsafe_function(env, self->tsfn);
  auto* handle_ref = new JsServerPtr(self);
  napi_value handle;
  if (napi_create_external(env, handle_ref, FinalizeHandle, nullptr, &handle) != napi_ok) {
    delete handle_ref;
    self->server->Shutdown();
    napi_release_threadsafe_function(self->tsfn, napi_tsfn_release);
    throw Napi::Error::New(env, "cannot create a share server handle");
  }
  if (napi_type_tag_object(env, handle, &kShareServerTag) != napi_ok) {
    throw Napi::Error::New(env, "cannot tag a share server handle");
  }
  return Napi::Value(env, handle);
}

// shareServerExec(handle, client, request, cb)
Napi::Value JsShareServerExec(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsServerPtr& self = ArgServer(info);
  const uint32_t client = ArgUint32(info, 1, "client");
  if (info.Length() < 4 || !info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      !info[3].IsFunction()) {
    throw Napi::TypeError::New(env, "shareServerExec(handle, client, request: Uint8Array, cb)");
  }
  Napi::Uint8Array request = info[2].As<Napi::Uint8Array>();
  auto job = std::make_unique<ExecJob>();
  job->owner = self;
  job->tsfn = self->tsfn;
  job->client = client;
  job->request = request.Data();
  job->request_len = request.ByteLength();
  if (napi_create_reference(env, info[2], 1, &job->request_ref) != napi_ok ||
      napi_create_reference(env, info[3], 1, &job->cb_ref) != napi_ok) {
    if (job->request_ref != nullptr) napi_delete_reference(env, job->request_ref);
    throw Napi::Error::New(env, "cannot hold the request");
  }
  if (self->pending++ == 0) napi_ref_threadsafe_function(env, self->tsfn);
  if (self->state != JsServer::State::kOpen) {
    try {
      job->reply = share::ErrorReply(-ENOTCONN);
    } catch (const std::bad_alloc&) {
      job->reply = ReplyBuf{};  // answered -ENOMEM
    }
    job.release()->Done();
    return env.Undefined();
  }
  job->executed = true;
  self->executing++;
  self->server->Submit(job.release());
  return env.Undefined();
}

Napi::Value JsShareServerDropClient(const Napi::CallbackInfo& info) {
  JsServerPtr& self = ArgServer(info);
  self->server->DropClient(ArgUint32(info, 1, "client"));
  return info.Env().Undefined();
}

// shareServerClose(handle, cb): idempotent; cb runs once the server stopped.
Napi::Value JsShareServerClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsServerPtr& self = ArgServer(info);
  if (info.Length() < 2 || !info[1].IsFunction()) throw Napi::TypeError::New(env, "shareServerClose(handle, cb)");
  napi_ref cb;
  if (napi_create_reference(env, info[1], 1, &cb) != napi_ok) throw Napi::Error::New(env, "cannot hold the callback");
  if (self->state == JsServer::State::kClosed) {
    (new ClosedWorker(env, cb))->Queue();
    return env.Undefined();
  }
  self->state = JsServer::State::kClosing;
  self->close_waiters.push_back(cb);
  MaybeStopServer(env, self);
  return env.Undefined();
}

Napi::Value JsShareServerStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  JsServerPtr& self = ArgServer(info);
  share::ServerStats st = self->server->stats();
  Napi::Object out = Napi::Object::New(env);
  out.Set("requests", static_cast<double>(st.requests));
  out.Set("bytesRead", static_cast<double>(st.bytes_read));
  out.Set("bytesWritten", static_cast<double>(st.bytes_written));
  out.Set("openFds", static_cast<double>(st.open_fds));
  return out;
}

}  // namespace

void InitShareServer(Napi::Env env, Napi::Object exports) {
  exports.Set("shareServerOpen", Napi::Function::New<JsShareServerOpen>(env, "shareServerOpen"));
  exports.Set("shareServerExec", Napi::Function::New<JsShareServerExec>(env, "shareServerExec"));
  exports.Set("shareServerDropClient", Napi::Function::New<JsShareServerDropClient>(env, "shareServerDropClient"));
  exports.Set("shareServerClose", Napi::Function::New<JsShareServerClose>(env, "shareServerClose"));
  exports.Set("shareServerStats", Napi::Function::New<JsShareServerStats>(env, "shareServerStats"));
}

}  // namespace pxd
