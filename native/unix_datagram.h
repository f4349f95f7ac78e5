// Unix datagrams that carry descriptors (unix_datagram.cc): the service
// manager's notify protocol and the handoff of a live restart.
#ifndef PXD_NATIVE_UNIX_DATAGRAM_H_
#define PXD_NATIVE_UNIX_DATAGRAM_H_

#include <napi.h>

namespace pxd {
void InitUnixDatagram(Napi::Env env, Napi::Object exports);
}  // namespace pxd

#endif  // PXD_NATIVE_UNIX_DATAGRAM_H_
