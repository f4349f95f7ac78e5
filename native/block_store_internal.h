// What the files that implement BlockStore (block_store.cc, block_open.cc,
// block_hashes.cc, block_discard.cc, block_layers.cc, block_merge.cc) share
// and its interface does not show: the striped reader/writer locks (see
// block_store.cc), the end of a write begun in the intent map, a test for
// zeros, and opening and reading a layer's files.
#ifndef PXD_NATIVE_BLOCK_STORE_INTERNAL_H_
#define PXD_NATIVE_BLOCK_STORE_INTERNAL_H_

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <shared_mutex>
#include <string>
#include <vector>

#include "block_store.h"

namespace pxd {

constexpr uint32_t kRegionShift = 5;  // 32 blocks per region
constexpr size_t kStripes = 1024;

inline bool AllZero(const uint8_t* p, size_t len) {
  constexpr size_t kStep = 256;
  for (size_t i = 0; i < len; i += kStep) {
    size_t n = std::min(kStep, len - i);
    uint64_t acc = 0;
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
      uint64_t w;
      std::memcpy(&w, p + i + j, 8);
      acc |= w;
    }
    for (; j < n; j++) acc |= p[i + j];
    if (acc != 0) return false;
  }
  return true;
}

// Locks the stripes covering blocks [first, last], ascending, each once.
class BlockStore::StripeLock {
 public:
  StripeLock(const BlockStore& store, uint64_t first, uint64_t last,
             bool exclusive)
      : mutexes_(store.stripes_.get()), exclusive_(exclusive) {
    uint64_t r0 = first >> kRegionShift;
    uint64_t r1 = last >> kRegionShift;
    if (r1 - r0 + 1 >= kStripes) {
      for (size_t i = 0; i < kStripes; i++) held_.push_back(i);
    } else {
      for (uint64_t r = r0; r <= r1; r++) held_.push_back(r % kStripes);
      std::sort(held_.begin(), held_.end());
    }
    for (size_t i : held_) {
      if (exclusive_) {
        mutexes_[i].lock();
      } else {
        mutexes_[i].lock_shared();
      }
    }
  }

  ~StripeLock() {
    for (auto it = held_.rbegin(); it != held_.rend(); ++it) {
      if (exclusive_) {
        mutexes_[*it].unlock();
      } else {
        mutexes_[*it].unlock_shared();
      }
    }
  }

  StripeLock(const StripeLock&) = delete;
  StripeLock& operator=(const StripeLock&) = delete;

 private:
  std::shared_mutex* mutexes_;
  bool exclusive_;
  std::vector<size_t> held_;
};

// Ends a write begun in the intent map: counts it as done when it leaves,
// failed or not (either way it may have left dirty pages that the next flush
// must sync), then tells the map which count it got.
class EndWrite {
 public:
  EndWrite(std::atomic<uint64_t>& seq, IntentMap& intent, uint64_t r0,
           uint64_t r1)
      : seq_(seq), intent_(intent), r0_(r0), r1_(r1) {}
  ~EndWrite() {
    intent_.End(r0_, r1_, seq_.fetch_add(1, std::memory_order_acq_rel) + 1);
  }
  EndWrite(const EndWrite&) = delete;
  EndWrite& operator=(const EndWrite&) = delete;

 private:
  std::atomic<uint64_t>& seq_;
  IntentMap& intent_;
  const uint64_t r0_, r1_;
};

// A file descriptor closed when it goes out of scope.
class Fd {
 public:
  Fd() = default;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void reset(int fd) { fd_ = fd; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

// Opens one layer's two files and returns its block count: its crc file's
// entries, which its data file must match (block_layers.cc).
uint64_t OpenLayerFiles(const std::string& data_path, const std::string& crc_path,
                        uint64_t block_size, int flags, Fd* data, Fd* crc);

// Reads `count` crc entries of a layer from block `first`, in host order.
void ReadEntries(int fd, const std::string& path, uint64_t first, uint64_t count,
                 uint32_t* out);

}  // namespace pxd

#endif  // PXD_NATIVE_BLOCK_STORE_INTERNAL_H_
