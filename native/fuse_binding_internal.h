// What the FUSE server's JS bindings share (fuse_binding.cc, and
// fuse_session_binding.cc for a live restart): the state behind a handle, the
// argument helpers, and making a handle over a server.
#ifndef PXD_NATIVE_FUSE_BINDING_INTERNAL_H_
#define PXD_NATIVE_FUSE_BINDING_INTERNAL_H_

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "fuse_server.h"

namespace pxd {

// The sink of one server: requests go to JS through the thread-safe function.
class JsFuse : public FuseSink {
 public:
  std::unique_ptr<FuseServer> server;
  napi_threadsafe_function tsfn = nullptr;
  napi_ref memory = nullptr;
  bool unmounted = false;
  int stop_errno = 0;
  uint16_t request_timeout = 0;

  void Dispatch(uint32_t slot) override;
  void Stopped(int os_errno) override;
  void Initialized(uint16_t seconds) override;
};

using JsFusePtr = std::shared_ptr<JsFuse>;
using MakeServer = std::function<std::unique_ptr<FuseServer>(FuseSink*)>;

// A handle over the server `make` builds: the request queue to `on_request`,
// the slot memory as one ArrayBuffer.
Napi::Value NewHandle(Napi::Env env, Napi::Value on_request, const MakeServer& make);
// Lets go of the JS side: no request reaches JS any more, and the slot memory
// is left to the ArrayBuffer's views.
void Release(napi_env env, JsFuse& f);

JsFuse& ArgFuse(const Napi::CallbackInfo& info);
uint32_t ArgUint32(const Napi::CallbackInfo& info, size_t i, const char* what);
// mountpoint, maxRequestBytes, slots, onRequest: what fuseMount and fuseAdopt share.
FuseServer::Options ArgOptions(const Napi::CallbackInfo& info, const char* usage);

// Registers fuseAdopt, fuseBindFile, fuseServe, fuseSession, fuseStopReading,
// fuseInFlight, fuseExport and fuseSessionAborted (fuse_session_binding.cc).
void InitFuseSession(Napi::Env env, Napi::Object exports);

}  // namespace pxd

#endif  // PXD_NATIVE_FUSE_BINDING_INTERNAL_H_
