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
// MergeBase copies what the nearest base has and the live layer lacks into
// the live layer like a write (intent-marked, under the blocks' exclusive
// stripe locks, the live crc checked again under them, so a racing write is
// never overwritten), then syncs and drops that base from its chain (under
// every stripe lock). LayerMerge does the same for two frozen layers, from file to file: all data first, synced, then the crc entries.
// Until an entry lands the block is still absent in `into` and reads from
// `from`, which exists until the merge is done, so a crash changes nothing.
// With `overwrite` (a collapse: the live layer copied down into the layer it
// sits on, which then takes its place) every block `from` has is copied, over
// what `into` has; a crash can leave such a block torn in `into`, which is
// harmless because `from` still has it and is read first, and the collapse
// is done again from the start.
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

// Blocks per crc read (and data buffer) in a merge: bounds its memory.
constexpr uint64_t kMergeChunkBlocks = 256;
// Where a block comes from in ResolveAbsent, besides a base's index.
constexpr uint32_t kFromLive = 0xffffffffu;
constexpr uint32_t kFromNone = 0xfffffffeu;

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

void CheckBlockSize(int64_t block_size) {
  if (block_size < 512 || block_size > 65536 || (block_size & (block_size - 1)) != 0) {
    throw Failure("EINVAL", "block size " + std::to_string(block_size) +
                                " is not a power of two between 512 and 65536");
  }
}

// Opens one layer's two files and returns its block count: its crc file's
// entries, which its data file must match.
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

void WriteEntries(int fd, const std::string& path, uint64_t first, uint64_t count,
                  uint32_t* crcs) {
  for (uint64_t i = 0; i < count; i++) crcs[i] = htole32(crcs[i]);
  FullPwrite(fd, crcs, count * 4, first * 4, path);
}

[[noreturn]] void Mismatch(uint64_t block, const std::string& path) {
  StoreError e = Failure("ECHECKSUM", "checksum mismatch in block " +
                                          std::to_string(block) + " of " + path,
                         path);
  e.block = static_cast<int64_t>(block);
  throw e;
}

// The blocks a merge copies: `from` has them, `into` lacks them; the first
// and last of the chunk, false if none.
bool Wanted(const uint32_t* from, const uint32_t* into, uint64_t count,
            bool overwrite, uint64_t* lo, uint64_t* hi) {
  *lo = count;
  for (uint64_t i = 0; i < count; i++) {
    if (from[i] == 0 || (!overwrite && into[i] != 0)) continue;
    if (*lo == count) *lo = i;
    *hi = i;
  }
  return *lo != count;
}

}  // namespace

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

void BlockStore::MergeBase() {
  CheckWritable("merge");
  if (bases_.empty()) {
    throw Failure("EINVAL", "merge refused: " + data_path_ + " has no base layer", data_path_);
  }
  const Layer& base = bases_[0];
  const uint64_t blocks = std::min(size_ >> block_shift_, base.blocks);
  std::vector<uint32_t> theirs(kMergeChunkBlocks);
  std::vector<uint32_t> ours(kMergeChunkBlocks);
  std::unique_ptr<uint8_t[]> buf;
  for (uint64_t start = 0; start < blocks; start += kMergeChunkBlocks) {
    const uint64_t count = std::min(kMergeChunkBlocks, blocks - start);
    ReadEntries(base.crc_fd, base.crc_path, start, count, theirs.data());
    // Unlocked, only to skip chunks with nothing to copy; checked again below.
    ReadCrcs(start, count, ours.data());
    uint64_t lo = 0, hi = 0;
    if (!Wanted(theirs.data(), ours.data(), count, false, &lo, &hi)) continue;
    if (!buf) buf.reset(new uint8_t[kMergeChunkBlocks << block_shift_]);
    // The base is frozen: read and checked before taking any lock.
    const uint64_t first = start + lo, last = start + hi, span = hi - lo + 1;
    FullPread(base.data_fd, buf.get(), span << block_shift_, first << block_shift_,
              base.data_path);
    for (uint64_t i = lo; i <= hi; i++) {
      if (theirs[i] == 0 || ours[i] != 0) continue;
      VerifyBlock(start + i, buf.get() + ((i - lo) << block_shift_), theirs[i], &base.data_path);
    }
    const uint64_t r0 = RegionOf(first);
    const uint64_t r1 = RegionOf(last);
    intent_->Begin(r0, r1);
    EndWrite ended(write_seq_, *intent_, r0, r1);
    StripeLock lock(*this, first, last, true);
    ReadCrcs(first, span, ours.data() + lo);
    bool copied = false;
    for (uint64_t i = lo; i <= hi;) {
      if (theirs[i] == 0 || ours[i] != 0) {
        i++;
        continue;
      }
      uint64_t j = i + 1;
      while (j <= hi && theirs[j] != 0 && ours[j] == 0) j++;
      FullPwrite(data_fd_, buf.get() + ((i - lo) << block_shift_), (j - i) << block_shift_,
                 (start + i) << block_shift_, data_path_);
      for (uint64_t b = i; b < j; b++) ours[b] = theirs[b];
      copied = true;
      i = j;
    }
    // Data before crc, like a write; entries not copied are rewritten as read.
    if (copied) WriteEntries(crc_fd_, crc_path_, first, span, ours.data() + lo);
  }
  const uint64_t seq = WriteSeq();
  SyncData();
  SyncCrc();
  MarkFlushed(seq);
  // The view no longer needs the base: it leaves the chain, so that a next merge takes the
  // layer below it. Every stripe held: no read or write is between its lookups.
  StripeLock all(*this, 0, (size_ >> block_shift_) - 1, true);
  bases_.erase(bases_.begin());
}

void BlockStore::LayerMerge(const std::string& from_data, const std::string& from_crc,
                            const std::string& into_data, const std::string& into_crc,
                            int64_t block_size, bool overwrite) {
  CheckBlockSize(block_size);
  const uint64_t bs = static_cast<uint64_t>(block_size);
  Fd from_d, from_c, into_d, into_c;
  const uint64_t blocks = OpenLayerFiles(from_data, from_crc, bs, O_RDONLY, &from_d, &from_c);
  const uint64_t into_blocks = OpenLayerFiles(into_data, into_crc, bs, O_RDWR, &into_d, &into_c);
  if (into_blocks < blocks) {
    throw Failure("EINVAL", "layer " + into_data + " has fewer blocks (" +
                                std::to_string(into_blocks) + ") than " + from_data + " (" +
                                std::to_string(blocks) + ")",
                  into_data);
  }
  std::vector<uint32_t> theirs(kMergeChunkBlocks);
  std::vector<uint32_t> ours(kMergeChunkBlocks);
  std::unique_ptr<uint8_t[]> buf;
  // Two passes over the same blocks (nothing else writes frozen layers):
  // data, synced, then crc entries, so memory stays one chunk's worth.
  for (int pass = 0; pass < 2; pass++) {
    for (uint64_t start = 0; start < blocks; start += kMergeChunkBlocks) {
      const uint64_t count = std::min(kMergeChunkBlocks, blocks - start);
      ReadEntries(from_c.get(), from_crc, start, count, theirs.data());
      ReadEntries(into_c.get(), into_crc, start, count, ours.data());
      uint64_t lo = 0, hi = 0;
      if (!Wanted(theirs.data(), ours.data(), count, overwrite, &lo, &hi)) continue;
      const uint64_t span = hi - lo + 1;
      if (pass == 1) {
        for (uint64_t i = lo; i <= hi; i++) {
          if (theirs[i] != 0 && (overwrite || ours[i] == 0)) ours[i] = theirs[i];
        }
        WriteEntries(into_c.get(), into_crc, start + lo, span, ours.data() + lo);
        continue;
      }
      if (!buf) buf.reset(new uint8_t[kMergeChunkBlocks * bs]);
      FullPread(from_d.get(), buf.get(), span * bs, (start + lo) * bs, from_data);
      for (uint64_t i = lo; i <= hi;) {
        if (theirs[i] == 0 || (!overwrite && ours[i] != 0)) {
          i++;
          continue;
        }
        uint64_t j = i + 1;
        while (j <= hi && theirs[j] != 0 && (overwrite || ours[j] == 0)) j++;
        uint8_t* p = buf.get() + (i - lo) * bs;
        for (uint64_t b = i; b < j; b++) {
          // from's crc is never 0 here: a plain compare.
          if (Crc32c(p + (b - i) * bs, bs) != theirs[b]) Mismatch(start + b, from_data);
        }
        FullPwrite(into_d.get(), p, (j - i) * bs, (start + i) * bs, into_data);
        i = j;
      }
    }
    Fdatasync(pass == 0 ? into_d.get() : into_c.get(), pass == 0 ? into_data : into_crc);
  }
}

}  // namespace pxd
