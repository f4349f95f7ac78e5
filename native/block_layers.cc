// Snapshot layers of a block store (redirect-on-write).
//
// A store may read through base layers, nearest first: the data and crc files
// of frozen snapshots, opened read-only. With bases, a live crc entry of 0
// means "absent here": the block comes from the first base whose entry is not
// 0, checked against that base's crc. The bottom layer (the last base) keeps
// crc 0 as zeros, and a block absent everywhere reads as zeros. A base may be
// smaller than the store (the volume grew after the snapshot): blocks past
// its end are absent in it.
//
// Writes and discards go to the live layer only. There a block of zeros gets
// the crc of zeros instead of 0, so that it hides what the bases hold. After
// a crash, a torn block of zeros gets crc 0 (Recover): mostly a write into an
// absent block whose data never landed, which then reads its old contents;
// zeros that did land over a block present in the live layer cannot be told
// from that, and such a block reads as the bases have it.
//
// Cost: a read only looks at the bases when a block of its range has live
// crc 0. Then each base's crc entries for the range take one pread, nearest
// first until every block is resolved, and each run of adjacent blocks from
// one base one pread of its data file.
//
// Merging layers (MergeBase, LayerMerge) is in block_merge.cc.
#include <endian.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "block_store.h"
#include "block_store_internal.h"
#include "crc32c.h"

namespace pxd {
namespace {

// Where a block comes from in ResolveAbsent, besides a base's index.
constexpr uint32_t kFromLive = 0xffffffffu;
constexpr uint32_t kFromNone = 0xfffffffeu;

}  // namespace

uint64_t OpenLayerFiles(const std::string& data_path, const std::string& crc_path,
                        uint64_t block_size, int flags, Fd* data, Fd* crc) {
  uint64_t bytes[2] = {0, 0};
  const std::string* paths[2] = {&data_path, &crc_path};
  Fd* fds[2] = {data, crc};
  for (int i = 0; i < 2; i++) {
    const std::string& path = *paths[i];
    fds[i]->reset(::open(path.c_str(), flags | O_CLOEXEC));
    if (fds[i]->get() < 0) throw OsFailure("open", path, errno);
    struct stat st;
    if (::fstat(fds[i]->get(), &st) != 0) throw OsFailure("fstat", path, errno);
    if (!S_ISREG(st.st_mode)) throw Failure("EINVAL", path + " is not a regular file", path);
    bytes[i] = static_cast<uint64_t>(st.st_size);
  }
  const uint64_t blocks = bytes[1] / 4;
  if (bytes[1] % 4 != 0 || bytes[0] != blocks * block_size) {
    throw Failure("EINVAL", "layer " + data_path + " has " + std::to_string(bytes[0]) +
                                " bytes of data and " + std::to_string(bytes[1]) +
                                " of checksums (4 per " + std::to_string(block_size) +
                                "-byte block)",
                  data_path);
  }
  return blocks;
}

void ReadEntries(int fd, const std::string& path, uint64_t first, uint64_t count,
                 uint32_t* out) {
  FullPread(fd, out, count * 4, first * 4, path);
  for (uint64_t i = 0; i < count; i++) out[i] = le32toh(out[i]);
}

BlockStore::Layer::Layer(Layer&& other) noexcept
    : data_path(std::move(other.data_path)),
      crc_path(std::move(other.crc_path)),
      data_fd(other.data_fd),
      crc_fd(other.crc_fd),
      blocks(other.blocks) {
  other.data_fd = -1;
  other.crc_fd = -1;
}

BlockStore::Layer& BlockStore::Layer::operator=(Layer&& other) noexcept {
  if (this == &other) return *this;
  Close();
  data_path = std::move(other.data_path);
  crc_path = std::move(other.crc_path);
  data_fd = other.data_fd;
  crc_fd = other.crc_fd;
  blocks = other.blocks;
  other.data_fd = -1;
  other.crc_fd = -1;
  return *this;
}

void BlockStore::Layer::Close() {
  if (data_fd >= 0) ::close(data_fd);
  if (crc_fd >= 0) ::close(crc_fd);
  data_fd = -1;
  crc_fd = -1;
}

uint8_t* BlockStore::Slots::At(uint64_t block, uint32_t shift) const {
  if (head != nullptr && block == first) return head;
  if (tail != nullptr && block == first + count - 1) return tail;
  return mid + ((block - first - (head != nullptr ? 1 : 0)) << shift);
}

std::vector<BlockStore::Layer> BlockStore::OpenLayers(
    const std::vector<std::pair<std::string, std::string>>& paths,
    uint64_t size, uint32_t block_size) {
  std::vector<Layer> layers;
  layers.reserve(paths.size());
  for (const auto& [data_path, crc_path] : paths) {
    Fd data;
    Fd crc;
    const uint64_t blocks = OpenLayerFiles(data_path, crc_path, block_size, O_RDONLY, &data, &crc);
    if (blocks * block_size > size) {
      throw Failure("EINVAL", "base layer " + data_path + " has " +
                                  std::to_string(blocks * block_size) +
                                  " bytes, more than the store's " + std::to_string(size),
                    data_path);
    }
    Layer layer;
    layer.data_path = data_path;
    layer.crc_path = crc_path;
    layer.blocks = blocks;
    layer.data_fd = data.release();
    layer.crc_fd = crc.release();
    layers.push_back(std::move(layer));
  }
  return layers;
}

void BlockStore::CheckWritable(const char* op) const {
  if (!read_only_) return;
  throw Failure("EROFS", std::string(op) + " refused: " + data_path_ + " is open read-only",
                data_path_);
}

void BlockStore::ResolveAbsent(const Slots& slots, uint32_t* crcs, bool verify) const {
  const uint64_t n = slots.count;
  // Per block where it comes from, then a base's crc entries for the range.
  std::vector<uint32_t> scratch(2 * n);
  uint32_t* from = scratch.data();
  uint32_t* entries = from + n;
  uint64_t lo = n, hi = 0, left = 0;
  for (uint64_t i = 0; i < n; i++) {
    from[i] = crcs[i] != 0 ? kFromLive : kFromNone;
    if (crcs[i] != 0) continue;
    lo = std::min(lo, i);
    hi = i;
    left++;
  }
  for (uint32_t k = 0; k < bases_.size() && left > 0; k++) {
    const Layer& base = bases_[k];
    if (slots.first + lo >= base.blocks) continue;
    // Only [lo, hi] is still unresolved; the base may end inside it.
    const uint64_t m = std::min(hi + 1, base.blocks - slots.first) - lo;
    ReadEntries(base.crc_fd, base.crc_path, slots.first + lo, m, entries);
    uint64_t next_lo = n, next_hi = 0;
    for (uint64_t i = lo; i <= hi; i++) {
      if (from[i] != kFromNone) continue;
      if (i - lo < m && entries[i - lo] != 0) {
        from[i] = k;
        crcs[i] = entries[i - lo];
        left--;
        continue;
      }
      next_lo = std::min(next_lo, i);
      next_hi = i;
    }
    lo = next_lo;
    hi = next_hi;
  }
  const uint64_t bs = block_size_;
  for (uint64_t i = 0; i < n;) {
    uint8_t* p = slots.At(slots.first + i, block_shift_);
    if (from[i] == kFromLive) {
      i++;
      continue;
    }
    if (from[i] == kFromNone) {
      std::memset(p, 0, bs);
      i++;
      continue;
    }
    // A run from the same base that is contiguous in memory: one pread.
    uint64_t j = i + 1;
    while (j < n && from[j] == from[i] &&
           slots.At(slots.first + j, block_shift_) == p + ((j - i) << block_shift_)) {
      j++;
    }
    const Layer& base = bases_[from[i]];
    FullPread(base.data_fd, p, (j - i) << block_shift_, (slots.first + i) << block_shift_,
              base.data_path);
    for (uint64_t b = i; verify && b < j; b++) {
      VerifyBlock(slots.first + b, p + ((b - i) << block_shift_), crcs[b], &base.data_path);
    }
    i = j;
  }
}

void BlockStore::ReadOld(uint64_t block, uint8_t* buf) const {
  uint32_t stored;
  ReadCrcs(block, 1, &stored);
  if (stored == 0 && !bases_.empty()) {
    ResolveAbsent({block, 1, nullptr, buf, nullptr}, &stored, true);
    return;
  }
  FullPread(data_fd_, buf, block_size_, block << block_shift_, data_path_);
  VerifyBlock(block, buf, stored);
}

}  // namespace pxd
