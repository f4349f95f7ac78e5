// Block store: data file + crc file, checked on every read.
//
// Consistency: a block's data and its crc entry are written by two separate
// system calls, so every request holds striped reader/writer locks covering
// its blocks: reads shared, writes exclusive. Blocks are grouped in regions
// of kRegionBlocks; region r maps to stripe r % kStripes. A request locks its
// stripes in ascending order, each once, so two requests never wait on each
// other in a cycle.
//
// Partial-block writes read the old block back and verify it before merging,
// so a corrupt block is reported instead of being re-checksummed.
//
// Crashes: a write cut short between its two system calls (the process
// killed, or power lost before a flush) leaves blocks whose data and crc
// disagree. Every write first marks its regions in the intent map (durably),
// and a mark lasts until a flush covered every write into the region. Open
// (block_open.cc, with the rest of opening or creating a store) rebuilds the
// crc of each block in a marked region from its data, so such a block reads
// back as its old or its new contents, like a disk; a block that fails its
// crc outside a marked region is still reported (bit rot).
//
// Layers (block_layers.cc): with bases, a live crc 0 is a block absent here;
// Read resolves such blocks through the bases, and only a range holding one
// pays for it. A block written as zeros stores the crc of zeros instead of 0,
// so it does not fall through. Recovery gives a torn all-zero block crc 0: a
// write into an absent block leaves a hole until its data lands.
#include "block_store.h"

#include <endian.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "crc32c.h"
#include "block_store_internal.h"

namespace pxd {
namespace {

std::unique_ptr<uint8_t[]> Bounce(uint32_t block_size) {
  return std::unique_ptr<uint8_t[]>(new uint8_t[block_size]);
}

}  // namespace

// ---- BlockStore ------------------------------------------------------------

BlockStore::BlockStore(std::string data_path, std::string crc_path,
                       std::string intent_path, int data_fd, int crc_fd,
                       int intent_fd, uint64_t size, uint32_t block_size,
                       bool read_only, std::vector<Layer> bases)
    : data_path_(std::move(data_path)),
      crc_path_(std::move(crc_path)),
      intent_path_(std::move(intent_path)),
      data_fd_(data_fd),
      crc_fd_(crc_fd),
      intent_fd_(intent_fd),
      size_(size),
      block_size_(block_size),
      block_shift_(static_cast<uint32_t>(__builtin_ctz(block_size))),
      read_only_(read_only),
      bases_(std::move(bases)),
      stripes_(new std::shared_mutex[kStripes]),
      intent_(new IntentMap(intent_path_, intent_fd, &health_)) {
  direct_.Open(data_fd_, !read_only_);
  std::vector<uint8_t> zeros(block_size_, 0);
  zero_block_crc_ = Crc32c(zeros.data(), block_size_);
  // Nothing a read-only store could flush: every flush is skipped.
  if (read_only_) flushed_seq_.store(write_seq_.load());
}

BlockStore::~BlockStore() {
  // Marks stay: a store dropped without Close() is what a crash leaves.
  StoreError ignored;
  CloseFiles(&ignored);
}

void BlockStore::CheckRange(int64_t offset, uint64_t len,
                            const char* op) const {
  if (offset < 0 || static_cast<uint64_t>(offset) > size_ ||
      len > size_ - static_cast<uint64_t>(offset)) {
    throw Failure("ERANGE", std::string(op) + " of " + std::to_string(len) +
                                " bytes at offset " + std::to_string(offset) +
                                " is outside " + data_path_ + " (size " +
                                std::to_string(size_) + ")",
                  data_path_);
  }
}

uint32_t BlockStore::BlockCrc(const uint8_t* data) const {
  const uint32_t c = Crc32c(data, block_size_);
  // Only a block whose crc equals that of zeros can be all zero: test just those.
  if (c == zero_block_crc_ && bases_.empty() && AllZero(data, block_size_)) return 0;
  return c;
}

bool BlockStore::Matches(const uint8_t* data, uint32_t stored) const {
  // crc 0 with all-zero data is a block never written.
  if (stored == 0 && AllZero(data, block_size_)) return true;
  return Crc32c(data, block_size_) == stored;
}

void BlockStore::VerifyBlock(uint64_t block, const uint8_t* data,
                             uint32_t stored, const std::string* path) const {
  if (Matches(data, stored)) return;
  const std::string& file = path != nullptr ? *path : data_path_;
  StoreError e = Failure("ECHECKSUM", "checksum mismatch in block " +
                                          std::to_string(block) + " of " + file,
                         file);
  e.block = static_cast<int64_t>(block);
  throw e;
}

void BlockStore::ReadCrcs(uint64_t first, uint64_t count,
                          uint32_t* out) const {
  FullPread(crc_fd_, out, count * 4, first * 4, crc_path_);
  for (uint64_t i = 0; i < count; i++) out[i] = le32toh(out[i]);
}

void BlockStore::WriteCrcs(uint64_t first, uint64_t count,
                           const uint32_t* crcs) const {
  // crcs are already little-endian.
  FullPwrite(crc_fd_, crcs, count * 4, first * 4, crc_path_);
}

BlockStore::Span BlockStore::SpanOf(int64_t offset, size_t len) const {
  // Which blocks [offset, offset+len) touches, and whether its first and last block
  // are only partly covered (those go through bounce buffers in Read and Write).
  const uint64_t bs = block_size_;
  Span sp;
  sp.off = static_cast<uint64_t>(offset);
  sp.end = sp.off + len;
  sp.first = sp.off >> block_shift_;
  sp.last = (sp.end - 1) >> block_shift_;
  sp.count = sp.last - sp.first + 1;
  sp.head_partial = (sp.off & (bs - 1)) != 0 || sp.end < (sp.first + 1) * bs;
  sp.tail_partial = sp.last != sp.first && (sp.end & (bs - 1)) != 0;
  return sp;
}

void BlockStore::Write(int64_t offset, const uint8_t* data, size_t len) {
  CheckWritable("write");
  CheckRange(offset, len, "write");
  if (len == 0) return;
  const uint64_t bs = block_size_;
  const Span sp = SpanOf(offset, len);
  const uint64_t off = sp.off, end = sp.end, first = sp.first, last = sp.last, count = sp.count;
  const bool head_partial = sp.head_partial;
  const bool tail_partial = sp.tail_partial;
  const uint64_t r0 = RegionOf(first);
  const uint64_t r1 = RegionOf(last);
  intent_->Begin(r0, r1);
  EndWrite ended(write_seq_, *intent_, r0, r1);

  std::vector<uint32_t> crcs(count);
  std::unique_ptr<uint8_t[]> head;
  std::unique_ptr<uint8_t[]> tail;
  StripeLock lock(*this, first, last, true);
  // A large write into blocks never written (all crc 0) goes direct (direct_io.h); the
  // entries are read into `crcs`, which the new ones then overwrite.
  bool unwritten = false;
  if (count * bs >= kDirectMinBytes) {
    ReadCrcs(first, count, crcs.data());
    unwritten = std::all_of(crcs.begin(), crcs.end(), [](uint32_t c) { return c == 0; });
  }

  if (head_partial) {
    head = Bounce(block_size_);
    ReadOld(first, head.get());
    uint64_t n = std::min(end, (first + 1) * bs) - off;
    std::memcpy(head.get() + (off - first * bs), data, n);
  }
  if (tail_partial) {
    tail = Bounce(block_size_);
    ReadOld(last, tail.get());
    std::memcpy(tail.get(), data + (last * bs - off), end - last * bs);
  }

  iovec iov[3];
  int cnt = 0;
  uint64_t mid_first = head ? first + 1 : first;
  uint64_t mid_end = tail ? last : last + 1;  // exclusive
  if (head) {
    iov[cnt++] = {head.get(), bs};
    crcs[0] = htole32(BlockCrc(head.get()));
  }
  if (mid_end > mid_first) {
    const uint8_t* p = data + (mid_first * bs - off);
    iov[cnt++] = {const_cast<uint8_t*>(p), (mid_end - mid_first) * bs};
    for (uint64_t b = mid_first; b < mid_end; b++, p += bs) {
      crcs[b - first] = htole32(BlockCrc(p));
    }
  }
  if (tail) {
    iov[cnt++] = {tail.get(), bs};
    crcs[count - 1] = htole32(BlockCrc(tail.get()));
  }
  if (!(unwritten && direct_.Transfer(true, iov, cnt, first * bs, count * bs, data_path_))) {
    FullPwritev(data_fd_, iov, cnt, first * bs, data_path_);
  }
  WriteCrcs(first, count, crcs.data());
}

void BlockStore::Read(int64_t offset, uint8_t* data, size_t len) {
  CheckRange(offset, len, "read");
  if (len == 0) return;
  const uint64_t bs = block_size_;
  const Span sp = SpanOf(offset, len);
  const uint64_t off = sp.off, end = sp.end, first = sp.first, last = sp.last, count = sp.count;
  const bool head_partial = sp.head_partial;
  const bool tail_partial = sp.tail_partial;

  // Partial blocks go through bounce buffers so that only verified bytes
  // ever reach the caller's buffer.
  std::vector<uint32_t> crcs(count);
  std::unique_ptr<uint8_t[]> head;
  std::unique_ptr<uint8_t[]> tail;
  if (head_partial) head = Bounce(block_size_);
  if (tail_partial) tail = Bounce(block_size_);

  iovec iov[3];
  int cnt = 0;
  uint64_t mid_first = head ? first + 1 : first;
  uint64_t mid_end = tail ? last : last + 1;
  uint8_t* mid = mid_end > mid_first ? data + (mid_first * bs - off) : nullptr;
  if (head) iov[cnt++] = {head.get(), bs};
  if (mid) iov[cnt++] = {mid, (mid_end - mid_first) * bs};
  if (tail) iov[cnt++] = {tail.get(), bs};

  StripeLock lock(*this, first, last, false);
  ReadCrcs(first, count, crcs.data());
  FullPreadv(data_fd_, iov, cnt, first * bs, data_path_);

  // With bases, blocks with live crc 0 are absent here and read from them.
  const bool layered = !bases_.empty() &&
                       std::find(crcs.begin(), crcs.end(), 0u) != crcs.end();
  if (head && (!layered || crcs[0] != 0)) VerifyBlock(first, head.get(), crcs[0]);
  for (uint64_t b = mid_first; b < mid_end; b++) {
    if (layered && crcs[b - first] == 0) continue;
    VerifyBlock(b, mid + (b - mid_first) * bs, crcs[b - first]);
  }
  if (tail && (!layered || crcs[count - 1] != 0)) VerifyBlock(last, tail.get(), crcs[count - 1]);
  if (layered) ResolveAbsent({first, count, head.get(), mid, tail.get()}, crcs.data(), true);

  if (head) {
    uint64_t n = std::min(end, (first + 1) * bs) - off;
    std::memcpy(data, head.get() + (off - first * bs), n);
  }
  if (tail) {
    std::memcpy(data + (last * bs - off), tail.get(), end - last * bs);
  }
}

void BlockStore::Sync(std::mutex& mu, int fd, const std::string& path) {
  // One at a time per file: of two overlapping fdatasyncs only one would
  // see a write-back error, and the other would report success.
  std::lock_guard<std::mutex> lock(mu);
  health_.Check();
  if (::fdatasync(fd) != 0) {
    StoreError e = OsFailure("fdatasync", path, errno);
    health_.Fail(e);
    throw e;
  }
}

void BlockStore::SyncData() { Sync(data_sync_mu_, data_fd_, data_path_); }

void BlockStore::SyncCrc() { Sync(crc_sync_mu_, crc_fd_, crc_path_); }

void BlockStore::MarkFlushed(uint64_t seq) {
  uint64_t cur = flushed_seq_.load(std::memory_order_relaxed);
  while (cur < seq && !flushed_seq_.compare_exchange_weak(cur, seq, std::memory_order_acq_rel)) {
  }
  ClearIdle();
}

void BlockStore::ClearIdle() {
  intent_->ClearIdle(flushed_seq_.load(std::memory_order_acquire), false);
}

void BlockStore::Close() {
  StoreError error;
  bool ok = true;
  // After a failed fdatasync the marks stay, for the next open to recover.
  if (!health_.failed() && !read_only_) {
    try {
      const uint64_t seq = WriteSeq();
      if (!IsFlushed(seq)) {
        SyncData();
        SyncCrc();
        MarkFlushed(seq);
      }
      intent_->ClearIdle(flushed_seq_.load(std::memory_order_acquire), true);
      intent_->SyncQuietly();
    } catch (const StoreError& e) {
      error = e;
      ok = false;
    }
  }
  StoreError close_error;
  if (!CloseFiles(&close_error) && ok) {
    error = close_error;
    ok = false;
  }
  if (!ok) throw error;
}

void BlockStore::Abandon() {
  StoreError ignored;
  CloseFiles(&ignored);
}

bool BlockStore::CloseFiles(StoreError* error) {
  bool ok = true;
  for (Layer& base : bases_) base.Close();  // read-only: nothing to report
  direct_.Close();  // read and write only: nothing of its own to report
  for (auto [fd, path] : {std::pair<int*, const std::string*>{&data_fd_, &data_path_},
                          {&crc_fd_, &crc_path_},
                          {&intent_fd_, &intent_path_}}) {
    if (*fd < 0) continue;
    const int rc = ::close(*fd);
    const int err = errno;
    *fd = -1;
    // Linux releases the fd even when close fails; report, never retry.
    if (rc != 0 && err != EINTR && ok) {
      *error = OsFailure("close", *path, err);
      ok = false;
    }
  }
  return ok;
}

}  // namespace pxd

