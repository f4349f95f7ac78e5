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

int ShareClient::HandOff(std::string* table, uint64_t* next_nodeid, std::string* pending) {
  StopReader();
  if (fd_ < 0) throw FuseError("EIO", EIO, "the client has no connection to hand over");
  pending->clear();
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    // Per request still pending: unique, nodeid (u64 each), opcode, wire length (u32), the
    // wire request. The successor answers them; this process never will (fd_ goes below).
    for (uint32_t i = 0; i < slots_.size(); i++) {
      const Slot& s = slots_[i];
      if (!s.pending) continue;
      pending->append(reinterpret_cast<const char*>(&s.unique), 8);
      pending->append(reinterpret_cast<const char*>(&s.nodeid), 8);
      pending->append(reinterpret_cast<const char*>(&s.opcode), 4);
      pending->append(reinterpret_cast<const char*>(&s.wire_len), 4);
      pending->append(reinterpret_cast<const char*>(pool_->base() + i * slot_bytes_ + s.wire_at), s.wire_len);
    }
  }
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

bool ShareClient::LoadPending(const std::string& pending, std::vector<std::pair<uint32_t, uint32_t>>* loaded) {
  size_t at = 0;
  std::lock_guard<std::mutex> lock(slots_mu_);
  while (at < pending.size()) {
    uint64_t unique;
    uint64_t nodeid;
    uint32_t opcode;
    uint32_t len;
    if (pending.size() - at < 24) return false;
    std::memcpy(&unique, pending.data() + at, 8);
    std::memcpy(&nodeid, pending.data() + at + 8, 8);
    std::memcpy(&opcode, pending.data() + at + 16, 4);
    std::memcpy(&len, pending.data() + at + 20, 4);
    at += 24;
    if (len > pending.size() - at || len > slot_bytes_ || len < sizeof(WireRequest) || free_slots_.empty()) return false;
    const uint32_t slot = free_slots_.back();
    free_slots_.pop_back();
    std::memcpy(pool_->base() + slot * slot_bytes_, pending.data() + at, len);
    at += len;
    Slot& s = slots_[slot];
    s.unique = unique;
    s.opcode = opcode;
    s.nodeid = nodeid;
    s.generation++;
    s.wire_at = 0;
    s.wire_len = len;
    s.pending = true;
    loaded->emplace_back(slot, s.generation);
  }
  return true;
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
