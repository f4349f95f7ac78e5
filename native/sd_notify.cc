// The service manager's readiness protocol (sd_notify(3)): one datagram with
// "KEY=VALUE\n..." lines to the AF_UNIX socket named by $NOTIFY_SOCKET (a path,
// or "@name" for the abstract namespace). Node cannot send unix datagrams itself.
// Without $NOTIFY_SOCKET it does nothing and returns false.
#include "sd_notify.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace pxd {
namespace {

Napi::Value JsServiceNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    throw Napi::TypeError::New(env, "serviceNotify(state: string)");
  }
  std::string state = info[0].As<Napi::String>().Utf8Value();
  const char* target = std::getenv("NOTIFY_SOCKET");
  if (target == nullptr || target[0] == '\0') return Napi::Boolean::New(env, false);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  size_t len = std::strlen(target);
  if ((target[0] != '/' && target[0] != '@') || len >= sizeof(addr.sun_path)) {
    throw Napi::Error::New(env, std::string("NOTIFY_SOCKET is not a unix socket path: ") + target);
  }
  std::memcpy(addr.sun_path, target, len);
  if (target[0] == '@') addr.sun_path[0] = '\0';
  socklen_t addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw Napi::Error::New(env, std::string("socket: ") + std::strerror(errno));
  ssize_t sent = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                        reinterpret_cast<sockaddr*>(&addr), addr_len);
  int err = errno;
  close(fd);
  if (sent < 0) throw Napi::Error::New(env, std::string("NOTIFY_SOCKET ") + target + ": " + std::strerror(err));
  return Napi::Boolean::New(env, true);
}

}  // namespace

void InitServiceNotify(Napi::Env env, Napi::Object exports) {
  exports.Set("serviceNotify", Napi::Function::New<JsServiceNotify>(env, "serviceNotify"));
}

}  // namespace pxd
