// Discard: a range of a replica reads back as zeros, and the host gets the
// space of its whole blocks back.
//
// A whole block becomes "never written": its crc entry is set to 0 and its
// data is punched out of the data file (FALLOC_FL_PUNCH_HOLE), so it reads as
// zeros, which is what crc 0 stands for. In a store with bases crc 0 would
// read the block from them, so it gets the crc of zeros instead. Where the
// data file's file system cannot punch holes, zeros are written instead (the
// same contents, without the space). The parts of blocks at either end of the
// range are merged with zeros like any partial write, old bytes (through the
// bases) verified first.
//
// Crashes: a discard is marked in the intent map like a write, so a crash
// between the crc and the data update (either order) leaves a marked region,
// and open rebuilds the crc from whatever data is there: the block reads back
// as its old contents or as zeros. Like a write, a discard is durable once a
// flush after it succeeded.
#include <endian.h>
#include <fcntl.h>
#include <linux/falloc.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "block_store.h"
#include "block_store_internal.h"

namespace pxd {
namespace {

// Blocks unwritten per crc write and per punch: bounds the zero buffers.
constexpr uint64_t kUnwriteChunkBlocks = 64 * 1024;

}  // namespace

void BlockStore::Discard(int64_t offset, uint64_t len) {
  CheckWritable("discard");
  CheckRange(offset, len, "discard");
  if (len == 0) return;
  const uint64_t bs = block_size_;
  const Span sp = SpanOf(offset, static_cast<size_t>(len));
  const uint64_t r0 = RegionOf(sp.first);
  const uint64_t r1 = RegionOf(sp.last);
  intent_->Begin(r0, r1);
  EndWrite ended(write_seq_, *intent_, r0, r1);
  StripeLock lock(*this, sp.first, sp.last, true);

  const uint64_t whole_first = sp.head_partial ? sp.first + 1 : sp.first;
  const uint64_t whole_end = sp.tail_partial ? sp.last : sp.last + 1;  // exclusive
  if (sp.head_partial) {
    ZeroPart(sp.first, sp.off - sp.first * bs,
             std::min(sp.end, (sp.first + 1) * bs) - sp.first * bs);
  }
  if (sp.tail_partial) ZeroPart(sp.last, 0, sp.end - sp.last * bs);
  if (whole_end > whole_first) Unwrite(whole_first, whole_end);
}

void BlockStore::ZeroPart(uint64_t block, uint64_t from, uint64_t to) {
  const uint64_t bs = block_size_;
  std::unique_ptr<uint8_t[]> buf(new uint8_t[bs]);
  ReadOld(block, buf.get());
  std::memset(buf.get() + from, 0, to - from);
  FullPwrite(data_fd_, buf.get(), bs, block * bs, data_path_);
  const uint32_t crc = htole32(BlockCrc(buf.get()));
  WriteCrcs(block, 1, &crc);
}

void BlockStore::Unwrite(uint64_t first, uint64_t end) {
  const uint64_t bs = block_size_;
  const uint32_t crc = bases_.empty() ? 0 : htole32(zero_block_crc_);
  const std::vector<uint32_t> zero_crcs(std::min(kUnwriteChunkBlocks, end - first), crc);
  std::unique_ptr<uint8_t[]> zeros;  // only where holes cannot be punched
  for (uint64_t b = first; b < end; b += kUnwriteChunkBlocks) {
    const uint64_t n = std::min(kUnwriteChunkBlocks, end - b);
    WriteCrcs(b, n, zero_crcs.data());
    const off_t at = static_cast<off_t>(b * bs);
    const off_t bytes = static_cast<off_t>(n * bs);
    if (!zeros && ::fallocate(data_fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, bytes) == 0) continue;
    if (!zeros) {
      if (errno != EOPNOTSUPP) throw OsFailure("fallocate", data_path_, errno);
      zeros.reset(new uint8_t[kUnwriteChunkBlocks * bs]());
    }
    FullPwrite(data_fd_, zeros.get(), static_cast<size_t>(bytes), static_cast<uint64_t>(at), data_path_);
  }
}

}  // namespace pxd
