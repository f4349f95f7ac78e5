// Merging snapshot layers of a block store (the layers are block_layers.cc's).
//
// MergeBase copies what the nearest base has and the live layer lacks into
// the live layer like a write (intent-marked, under the blocks' exclusive
// stripe locks, the live crc checked again under them, so a racing write is
// never overwritten), then syncs and drops that base from its chain (under
// every stripe lock). LayerMerge does the same for two frozen layers, from
// file to file: all data first, synced, then the crc entries.
// Until an entry lands the block is still absent in `into` and reads from
// `from`, which exists until the merge is done, so a crash changes nothing.
// With `overwrite` (a collapse: the live layer copied down into the layer it
// sits on, which then takes its place) every block `from` has is copied, over
// what `into` has; a crash can leave such a block torn in `into`, which is
// harmless because `from` still has it and is read first, and the collapse
// is done again from the start.
#include <endian.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "block_store.h"
#include "block_store_internal.h"
#include "crc32c.h"

namespace pxd {
namespace {

// Blocks per crc read (and data buffer) in a merge: bounds its memory.
constexpr uint64_t kMergeChunkBlocks = 256;

void CheckBlockSize(int64_t block_size) {
  if (block_size < 512 || block_size > 65536 || (block_size & (block_size - 1)) != 0) {
    throw Failure("EINVAL", "block size " + std::to_string(block_size) +
                                " is not a power of two between 512 and 65536");
  }
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
