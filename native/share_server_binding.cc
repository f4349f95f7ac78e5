#include "share_binding.h"
namespace pxd {
void InitShareServer(Napi::Env, Napi::Object) {}
}  // namespace pxd
