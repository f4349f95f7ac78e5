// serviceNotify(state): readiness and status to the service manager (sd_notify.cc).
#ifndef PXD_NATIVE_SD_NOTIFY_H_
#define PXD_NATIVE_SD_NOTIFY_H_

#include <napi.h>

namespace pxd {
void InitServiceNotify(Napi::Env env, Napi::Object exports);
}  // namespace pxd

#endif  // PXD_NATIVE_SD_NOTIFY_H_
