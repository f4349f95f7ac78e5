// Direct I/O beside the page cache, for a store's large transfers.
//
// A store's data file is opened once more with O_DIRECT, and the transfers the
// store hands it (at least kDirectMinBytes, offset and length page-aligned) go
// through that descriptor: a write into blocks never written (a resync into a
// new replica, a first write of a volume's region) and the reads behind block
// hashes (a resync's compare, its source read once). Those move gigabytes that
// nobody reads back from memory soon, and through the page cache each byte costs
// a copy into a freshly allocated page (on a guest whose memory the host backs
// lazily, the dearest part of the whole write). Overwrites and the volume's own
// reads stay buffered: there the cache is warm, write-back is asynchronous and
// readahead runs ahead of a sequential reader, which direct I/O gave up (in
// the main bench, seq read fell to a third and seq write at repl=1 by a third).
//
// Mixing is coherent: a direct transfer writes back and drops the cached pages
// of its range first. Only whole pages go direct, and the store's stripe locks
// serialize whole regions, so no page is written both ways at once.
//
// Durability is unchanged: a direct write is no more durable than a buffered
// one until the next fdatasync (the disk's cache, allocation metadata), which
// the store's flush issues as before.
//
// A caller's buffer that the device cannot take as it is (its address or its
// pieces misaligned) is copied through a page-aligned bounce buffer of this
// thread, a megabyte at a time. Where the file system refuses O_DIRECT (tmpfs,
// ramfs, some FUSE file systems), or refuses one transfer after all (EINVAL),
// the store stays buffered: Transfer returns false and the caller moves the
// bytes itself.
#ifndef PXD_NATIVE_DIRECT_IO_H_
#define PXD_NATIVE_DIRECT_IO_H_

#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace pxd {

constexpr size_t kDirectMinBytes = 64 << 10;

// Page-aligned memory, freed with free(): a buffer a direct transfer lands in
// as it is, without a bounce.
struct FreeDeleter {
  void operator()(uint8_t* p) const;
};
using AlignedBuffer = std::unique_ptr<uint8_t, FreeDeleter>;
// Null when out of memory.
AlignedBuffer AllocAligned(size_t bytes);

class DirectIo {
 public:
  DirectIo() = default;
  ~DirectIo() { Close(); }
  DirectIo(const DirectIo&) = delete;
  DirectIo& operator=(const DirectIo&) = delete;

  // A second, O_DIRECT descriptor of the open file `fd`. Leaves direct I/O off
  // (never throws) where the file system refuses it.
  void Open(int fd, bool writable);
  void Close();
  bool on() const { return fd_ >= 0 && !refused_.load(std::memory_order_relaxed); }
  // The descriptor, for tests (-1 when off).
  int fd() const { return on() ? fd_ : -1; }

  // Moves `len` bytes between the iovecs and the file at `off` directly, if
  // the transfer qualifies: true when done, false when the caller must do it
  // buffered (nothing qualifies, or the file system refused). Throws
  // StoreError naming `path` for any other failure.
  bool Transfer(bool write, const iovec* iov, int cnt, uint64_t off, size_t len,
                const std::string& path);

 private:
  bool Qualifies(uint64_t off, size_t len) const;
  bool Aligned(const iovec* iov, int cnt) const;
  // false once the file system refused (EINVAL).
  bool Move(bool write, const iovec* iov, int cnt, uint64_t off, const std::string& path);
  bool Bounced(bool write, const iovec* iov, int cnt, uint64_t off, size_t len,
               const std::string& path);

  int fd_ = -1;
  uint32_t mem_align_ = 4096;
  uint32_t off_align_ = 4096;
  std::atomic<bool> refused_{false};
};

}  // namespace pxd

#endif  // PXD_NATIVE_DIRECT_IO_H_
