// Registers the JS functions of a shared volume's two ends: the executor that
// serves a volume's files (shareServer*, share_server.h) and the FUSE file
// system that forwards a client node's file operations (shareClient*,
// share_client.h). Both speak share_wire.h.
#ifndef PXD_NATIVE_SHARE_BINDING_H_
#define PXD_NATIVE_SHARE_BINDING_H_

#include <napi.h>

namespace pxd {
void InitShareServer(Napi::Env env, Napi::Object exports);
void InitShareClient(Napi::Env env, Napi::Object exports);
}  // namespace pxd

#endif  // PXD_NATIVE_SHARE_BINDING_H_
