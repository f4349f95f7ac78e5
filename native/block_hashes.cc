// Block hashes: what replicas compare to find the blocks that differ.
//
// The stored crc32c cannot serve for that. A CRC is linear, so a block whose
// bytes end in their own crc32c (an ext4 superblock or directory block with
// metadata_csum, a jbd2 descriptor block, an XFS v5 header) has one and the
// same crc32c whatever else it holds: two replicas with different ext4
// superblocks have equal crc entries. The crc stays what it is good at
// (telling a torn or rotten block on every read); comparing uses XXH3-64 of
// each block's data, which has no such structure.
//
// A block whose crc entry is 0 (never written, or all zeros) hashes to 0
// without being read, so a sparse replica's holes cost nothing; so does a
// block stored as zeros with their crc (a store with bases keeps that, see
// block_layers.cc), so layered and flat replicas of the same bytes agree. In
// a store with bases, blocks absent from the live layer are hashed as they
// read, from the base they come from. Blocks are read a chunk at a time under
// the chunk's stripe locks (shared, as a read takes them), so a hash is never
// taken of a block half written.
//
// With a data buffer the range's bytes are returned too, checked as a read
// checks them: a resync that copies what differs reads its source once.
#define XXH_INLINE_ALL
#include <endian.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "block_store.h"
#include "block_store_internal.h"

namespace pxd {

namespace {
// Blocks hashed per chunk: one pread of the data file, one of the crc file.
constexpr uint64_t kHashChunkBlocks = 256;
}  // namespace

void BlockStore::Hashes(int64_t offset, uint64_t len, uint8_t* out, uint8_t* data) {
  CheckRange(offset, len, "hash");
  if (offset % block_size_ != 0 || len % block_size_ != 0) {
    throw Failure("EINVAL", "hashes of " + std::to_string(len) + " bytes at " +
                                std::to_string(offset) + " are not block-aligned in " +
                                data_path_,
                  data_path_);
  }
  const uint64_t first = static_cast<uint64_t>(offset) >> block_shift_;
  const uint64_t blocks = len >> block_shift_;
  std::vector<uint32_t> crcs(std::min(blocks, kHashChunkBlocks));
  AlignedBuffer own;  // a direct read lands in it without a bounce
  for (uint64_t done = 0; done < blocks;) {
    const uint64_t start = first + done;
    const uint64_t count = std::min(kHashChunkBlocks, blocks - done);
    const size_t bytes = count << block_shift_;
    StripeLock lock(*this, start, start + count - 1, false);
    ReadCrcs(start, count, crcs.data());
    const uint64_t zeros = static_cast<uint64_t>(std::count(crcs.begin(), crcs.begin() + count, 0u));
    const bool absent = zeros != 0 && !bases_.empty();
    uint8_t* buf = data != nullptr ? data + (done << block_shift_) : nullptr;
    if (zeros < count || absent) {
      if (buf == nullptr) {
        if (!own) {
          own = AllocAligned(kHashChunkBlocks << block_shift_);
          if (!own) throw Failure("ENOMEM", "no memory for a hash buffer of " + data_path_, data_path_);
        }
        buf = own.get();
      }
      if (zeros < count) {
        iovec iov{buf, bytes};
        if (!direct_.Transfer(false, &iov, 1, start << block_shift_, bytes, data_path_)) {
          FullPread(data_fd_, buf, bytes, start << block_shift_, data_path_);
        }
      } else {
        std::memset(buf, 0, bytes);
      }
      // The data a caller takes is checked, as a read checks it; a hash alone only
      // tells blocks apart, and is not.
      if (data != nullptr) {
        for (uint64_t i = 0; i < count; i++) {
          if (absent && crcs[i] == 0) continue;
          VerifyBlock(start + i, buf + (i << block_shift_), crcs[i]);
        }
      }
      if (absent) ResolveAbsent({start, count, nullptr, buf, nullptr}, crcs.data(), data != nullptr);
    } else if (buf != nullptr) {
      std::memset(buf, 0, bytes);  // every block unwritten: zeros, unread
    }
    for (uint64_t i = 0; i < count; i++) {
      const uint8_t* p = crcs[i] == 0 ? nullptr : buf + (i << block_shift_);
      const bool zero = p == nullptr || (crcs[i] == zero_block_crc_ && AllZero(p, block_size_));
      const uint64_t h = zero ? 0 : XXH3_64bits(p, block_size_);
      const uint64_t le = htole64(h == 0 && !zero ? 1 : h);
      std::memcpy(out + (done + i) * 8, &le, 8);
    }
    done += count;
  }
}

}  // namespace pxd
