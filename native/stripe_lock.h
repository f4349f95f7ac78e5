// The striped reader/writer locks of a BlockStore (see block_store.cc): shared
// by the files that implement BlockStore, not part of its interface.
#ifndef PXD_NATIVE_STRIPE_LOCK_H_
#define PXD_NATIVE_STRIPE_LOCK_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <shared_mutex>
#include <vector>

#include "block_store.h"

namespace pxd {

constexpr uint32_t kRegionShift = 5;  // 32 blocks per region
constexpr size_t kStripes = 1024;

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

}  // namespace pxd

#endif  // PXD_NATIVE_STRIPE_LOCK_H_
