// A FUSE session handed from one pxd process to the next (a live restart).
//
// The kernel's side of the device directory is a connection on a /dev/fuse
// descriptor: the mount, the nodeids it looked up, the files the loop devices
// hold open (their handle is the nodeid), and the requests queued for an
// answer. None of it belongs to the process that reads the descriptor, so
// whoever holds the descriptor next can serve the same mount, provided it
// answers the same nodeids with the same files and sizes. The successor gets
// the table (Files(), next_nodeid()) from its predecessor and binds each file
// to its volume before it reads a single request; the INIT handshake is not
// repeated (the kernel did it once per connection).
//
// A predecessor that stopped cleanly answered everything it read before it
// gave the descriptor away (StopReading, then InFlight() == 0, then Export).
// One that died took the requests it had read with it: the kernel keeps them
// in its processing list until they are answered, and FUSE_NOTIFY_RESEND
// (Linux 6.9) puts them back in the queue, marked with the top bit of their
// unique id, which a reply simply echoes.
#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "fuse_server.h"

namespace pxd {
namespace {
// The notification code; the kernel header this is built with may predate it.
constexpr int32_t kNotifyResend = 7;
// Adopted files' lookup counts are unknown: never forget them for lack of one.
constexpr uint64_t kUnknownLookups = uint64_t{1} << 40;
}  // namespace

FuseServer::FuseServer(const Options& o, FuseSink* sink, const Adopted& adopted)
    : mountpoint_(o.mountpoint),
      max_request_bytes_(o.max_request_bytes),
      max_background_(o.max_background),
      request_timeout_(o.request_timeout),  // the connection keeps the one set at its INIT
      slot_bytes_(kDataOffset + o.max_request_bytes),
      sink_(sink),
      mounted_at_(adopted.mounted_at) {
  InitSlots(o.slots);
  if (adopted.fd < 0) throw FuseError("EINVAL", 0, "no FUSE session descriptor to adopt");
  const int flags = fcntl(adopted.fd, F_GETFL);
  if (flags < 0 || fcntl(adopted.fd, F_SETFL, flags | O_NONBLOCK) != 0 || fcntl(adopted.fd, F_SETFD, FD_CLOEXEC) != 0) {
    throw FuseError("EBADF", errno, std::string("the adopted FUSE descriptor is not usable: ") + std::strerror(errno));
  }
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0) throw FuseError("EIO", errno, std::string("eventfd: ") + std::strerror(errno));
  fd_ = adopted.fd;
  uint64_t next = std::max<uint64_t>(adopted.next_nodeid, 2);
  for (const AdoptedFile& a : adopted.files) {
    if (a.nodeid < 2 || a.name.empty() || nodeids_.count(a.name) != 0 || files_.count(a.nodeid) != 0) {
      throw FuseError("EINVAL", 0, "the adopted FUSE table names a file twice or a reserved nodeid");
    }
    nodeids_[a.name] = a.nodeid;
    File& f = files_[a.nodeid];
    f.name = a.name;
    f.size = a.size;
    f.key = 0;
    f.present = true;
    f.lookups = kUnknownLookups;
    next = std::max(next, a.nodeid + 1);
  }
  next_nodeid_ = next;
  mounted_ = true;
}

bool FuseServer::BindFile(const std::string& name, uint32_t key) {
  std::lock_guard<std::mutex> lock(files_mu_);
  auto it = nodeids_.find(name);
  if (it == nodeids_.end()) return false;
  files_.at(it->second).key = key;
  return true;
}

bool FuseServer::Serve(bool resend) {
  if (reader_.joinable()) return false;
  {
    std::lock_guard<std::mutex> lock(files_mu_);
    for (auto it = nodeids_.begin(); it != nodeids_.end();) {
      File& f = files_.at(it->second);
      if (f.key != 0) {
        ++it;
        continue;
      }
      f.present = false;
      it = nodeids_.erase(it);
    }
  }
  bool resent = false;
  if (resend) {
    fuse_out_header out{};
    out.len = sizeof out;
    out.error = kNotifyResend;
    out.unique = 0;
    resent = write(fd_, &out, sizeof out) == static_cast<ssize_t>(sizeof out);
  }
  reader_ = std::thread([this] { ServeLoop(); });
  return resent;
}

std::vector<FuseServer::AdoptedFile> FuseServer::Files() const {
  std::lock_guard<std::mutex> lock(files_mu_);
  std::vector<AdoptedFile> out;
  out.reserve(nodeids_.size());
  for (const auto& [name, id] : nodeids_) out.push_back({name, id, files_.at(id).size});
  return out;
}

uint64_t FuseServer::next_nodeid() const {
  std::lock_guard<std::mutex> lock(files_mu_);
  return next_nodeid_;
}

uint32_t FuseServer::InFlight() {
  std::lock_guard<std::mutex> lock(slots_mu_);
  // The reader holds one slot while it waits for a request (until StopReading joined it).
  const size_t idle = free_slots_.size() + (reader_.joinable() ? 1 : 0);
  return static_cast<uint32_t>(requests_.size() - std::min(idle, requests_.size()));
}

void FuseServer::StopReading() {
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    stopping_ = true;
  }
  slots_cv_.notify_all();
  uint64_t one = 1;
  if (stop_fd_ >= 0) (void)!write(stop_fd_, &one, sizeof one);
  if (reader_.joinable()) reader_.join();
}

int FuseServer::Export() {
  StopReading();
  const int fd = fd_;
  fd_ = -1;
  mounted_ = false;
  Stop();
  return fd;
}

}  // namespace pxd
