// A shared volume's FUSE client across a live restart: the old process
// pauses its reader, answers what it had read, and hands the connection over
// with its nodeid table; the new one adopts both (the ShareClient
// constructor with Options::adopt_fd). The kernel keeps the mount and queues
// requests meanwhile.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "share_client.h"

namespace pxd {
namespace share {

void ShareClient::Pause() { StopReader(); }

int ShareClient::HandOff(std::string* table, uint64_t* next_nodeid) {
  StopReader();
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    for (const Slot& s : slots_) {
      if (s.pending) throw FuseError("EBUSY", EBUSY, "requests are still pending");
    }
  }
  if (fd_ < 0) throw FuseError("EIO", EIO, "the client has no connection to hand over");
  table->clear();
  {
    std::lock_guard<std::mutex> lock(nodes_mu_);
    // Per node: nodeid, lookups (u64 each), handle length (u32), the wire handle.
    for (const auto& [nodeid, node] : nodes_) {
      const uint32_t len = static_cast<uint32_t>(node.handle.size());
      table->append(reinterpret_cast<const char*>(&nodeid), 8);
      table->append(reinterpret_cast<const char*>(&node.lookups), 8);
      table->append(reinterpret_cast<const char*>(&len), 4);
      table->append(node.handle);
    }
    *next_nodeid = next_nodeid_;
  }
  const int fd = fd_;
  fd_ = -1;
  mounted_ = false;  // it stays mounted, for whoever takes the connection
  return fd;
}

bool ShareClient::LoadTable(const std::string& table, uint64_t next_nodeid) {
  size_t at = 0;
  uint64_t highest = 0;
  while (at < table.size()) {
    uint64_t nodeid;
    uint64_t lookups;
    uint32_t len;
    if (table.size() - at < 20) return false;
    std::memcpy(&nodeid, table.data() + at, 8);
    std::memcpy(&lookups, table.data() + at + 8, 8);
    std::memcpy(&len, table.data() + at + 16, 4);
    at += 20;
    if (len > table.size() - at || nodeid == 0 || nodes_.count(nodeid) != 0) return false;
    std::string handle;
    if (!NormalizeHandle(reinterpret_cast<const uint8_t*>(table.data() + at), len, &handle) || handle.size() != len ||
        nodeids_.count(handle) != 0) {
      return false;
    }
    at += len;
    nodes_[nodeid] = Node{handle, lookups};
    nodeids_[handle] = nodeid;
    highest = std::max(highest, nodeid);
  }
  if (nodes_.count(FUSE_ROOT_ID) == 0 || next_nodeid <= highest) return false;
  next_nodeid_ = next_nodeid;
  return true;
}

}  // namespace share
}  // namespace pxd
