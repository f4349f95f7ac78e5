#include "share_binding.h"
namespace pxd {
void InitShareClient(Napi::Env, Napi::Object) {}
}  // namespace pxd
