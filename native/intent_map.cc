// See intent_map.h.
#include "intent_map.h"

#include <endian.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

namespace pxd {
namespace {

// A flushed region stays marked this long after its last write, so a hot
// region is marked once; ClearIdle looks at most once per scan interval.
constexpr int64_t kIntentIdleNs = 5'000'000'000;
constexpr int64_t kIntentScanNs = 1'000'000'000;
constexpr char kIntentMagic[8] = {'P', 'X', 'D', 'I', 'N', 'T', '0', '1'};
constexpr uint8_t kMarked = 1;

}  // namespace

// Zeroes the marks of `regions` (ascending) in an intent file, one pwrite
// per run of adjacent regions.
void WriteClears(int fd, const std::string& path,
                 const std::vector<uint64_t>& regions) {
  static const uint8_t kZeros[4096] = {};
  for (size_t i = 0; i < regions.size();) {
    size_t j = i + 1;
    while (j < regions.size() && regions[j] == regions[j - 1] + 1) j++;
    uint64_t off = IntentMap::kHeaderBytes + regions[i];
    uint64_t left = j - i;
    while (left > 0) {
      const uint64_t n = std::min<uint64_t>(left, sizeof kZeros);
      FullPwrite(fd, kZeros, n, off, path);
      off += n;
      left -= n;
    }
    i = j;
  }
}

// An empty map for `regions` regions, durably: a header, then a zero byte
// per region.
void InitIntentFile(int fd, const std::string& path, uint64_t regions) {
  if (::ftruncate(fd, 0) != 0) throw OsFailure("ftruncate", path, errno);
  const off_t size = static_cast<off_t>(IntentMap::kHeaderBytes + regions);
  if (::ftruncate(fd, size) != 0) throw OsFailure("ftruncate", path, errno);
  uint8_t header[IntentMap::kHeaderBytes] = {};
  std::memcpy(header, kIntentMagic, sizeof kIntentMagic);
  const uint32_t shift = htole32(kIntentRegionShift);
  std::memcpy(header + sizeof kIntentMagic, &shift, sizeof shift);
  FullPwrite(fd, header, sizeof header, 0, path);
  Fdatasync(fd, path);
}

// The regions an intent file marks, ascending; false when the file is not a
// map of `regions` regions (then every region must be taken as marked).
bool ReadIntentFile(int fd, const std::string& path, uint64_t regions,
                    std::vector<uint64_t>* marked) {
  struct stat st;
  if (::fstat(fd, &st) != 0) throw OsFailure("fstat", path, errno);
  if (!S_ISREG(st.st_mode) ||
      static_cast<uint64_t>(st.st_size) != IntentMap::kHeaderBytes + regions) {
    return false;
  }
  uint8_t header[IntentMap::kHeaderBytes];
  FullPread(fd, header, sizeof header, 0, path);
  uint32_t shift;
  std::memcpy(&shift, header + sizeof kIntentMagic, sizeof shift);
  if (std::memcmp(header, kIntentMagic, sizeof kIntentMagic) != 0 ||
      le32toh(shift) != kIntentRegionShift) {
    return false;
  }
  constexpr uint64_t kChunk = 64 * 1024;
  std::vector<uint8_t> buf(std::min(kChunk, std::max<uint64_t>(regions, 1)));
  for (uint64_t at = 0; at < regions; at += kChunk) {
    const uint64_t n = std::min(kChunk, regions - at);
    FullPread(fd, buf.data(), n, IntentMap::kHeaderBytes + at, path);
    for (uint64_t i = 0; i < n; i++) {
      if (buf[i] != 0) marked->push_back(at + i);
    }
  }
  return true;
}

// ---- IntentMap -------------------------------------------------------------

IntentMap::IntentMap(std::string path, int fd, SyncHealth* health)
    : path_(std::move(path)), fd_(fd), health_(health), idle_ns_(kIntentIdleNs) {}

void IntentMap::SetIdle(int64_t ms) {
  idle_ns_.store(std::max<int64_t>(ms, 0) * 1'000'000, std::memory_order_relaxed);
}

void IntentMap::Begin(uint64_t r0, uint64_t r1) {
  uint64_t need = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t r = r0; r <= r1; r++) {
      auto it = marked_.find(r);
      if (it == marked_.end()) {
        try {
          // Under mu_: the file's byte follows the map, whatever the order
          // of marks and clears.
          FullPwrite(fd_, &kMarked, 1, kHeaderBytes + r, path_);
          it = marked_.emplace(r, Region{}).first;
        } catch (...) {
          if (r > r0) EndLocked(r0, r - 1, 0, 0);
          throw;
        }
        it->second.gen = ++mark_gen_;
      }
      it->second.active++;
      need = std::max(need, it->second.gen);
    }
  }
  if (need <= durable_gen_.load(std::memory_order_acquire)) return;
  try {
    Sync(need);
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    EndLocked(r0, r1, 0, 0);
    throw;
  }
}

void IntentMap::Sync(uint64_t gen) {
  // Writers that marked regions meanwhile share one fdatasync.
  std::lock_guard<std::mutex> lock(sync_mu_);
  if (durable_gen_.load(std::memory_order_acquire) >= gen) return;
  health_->Check();
  uint64_t target;
  {
    std::lock_guard<std::mutex> marks(mu_);
    target = mark_gen_;
  }
  if (::fdatasync(fd_) != 0) {
    StoreError e = OsFailure("fdatasync", path_, errno);
    health_->Fail(e);
    throw e;
  }
  durable_gen_.store(target, std::memory_order_release);
}

void IntentMap::End(uint64_t r0, uint64_t r1, uint64_t seq) {
  const int64_t now = NowNs();
  std::lock_guard<std::mutex> lock(mu_);
  EndLocked(r0, r1, seq, now);
}

void IntentMap::EndLocked(uint64_t r0, uint64_t r1, uint64_t seq,
                          int64_t now) {
  for (uint64_t r = r0; r <= r1; r++) {
    auto it = marked_.find(r);
    if (it == marked_.end()) continue;  // cannot happen: active > 0
    Region& g = it->second;
    g.active--;
    if (seq != 0) {
      g.last_seq = std::max(g.last_seq, seq);
      g.last_ns = now;
    }
  }
}

void IntentMap::ClearIdle(uint64_t flushed, bool all) {
  const int64_t now = NowNs();
  const int64_t idle = idle_ns_.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(mu_);
  if (marked_.empty()) return;
  if (!all && now - last_scan_ns_ < std::min(idle, kIntentScanNs)) return;
  last_scan_ns_ = now;
  std::vector<uint64_t> cleared;
  for (auto it = marked_.begin(); it != marked_.end();) {
    const Region& g = it->second;
    if (g.active == 0 && g.last_seq <= flushed &&
        (all || now - g.last_ns >= idle)) {
      cleared.push_back(it->first);
      it = marked_.erase(it);
    } else {
      ++it;
    }
  }
  std::sort(cleared.begin(), cleared.end());
  try {
    WriteClears(fd_, path_, cleared);
  } catch (const StoreError&) {
    // A clear that did not reach the file leaves its region marked: the next
    // open checks that region for nothing.
  }
}

void IntentMap::SyncQuietly() { (void)::fdatasync(fd_); }
}  // namespace pxd
