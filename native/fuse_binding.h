// Registers the FUSE server's JS functions (fuseMount, fuseReply, ...).
#ifndef PXD_NATIVE_FUSE_BINDING_H_
#define PXD_NATIVE_FUSE_BINDING_H_

#include <napi.h>

namespace pxd {
void InitFuse(Napi::Env env, Napi::Object exports);
}  // namespace pxd

#endif  // PXD_NATIVE_FUSE_BINDING_H_
