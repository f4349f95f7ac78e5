// Opening a BlockStore: the data and crc files created (their sizes durable
// before anything else) or checked against the size and block size asked for,
// the base layers opened (block_layers.cc), the intent map created or read,
// and the crash recovery its marks call for: the crc of every block in a
// marked region rebuilt from its data (see block_store.cc), both files
// synced, then the marks cleared. The data path is in block_store.cc.
#include <endian.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <utility>
#include <vector>

#include "block_store.h"
#include "block_store_internal.h"

namespace pxd {
namespace {

constexpr uint32_t kMinBlockSize = 512;
constexpr uint32_t kMaxBlockSize = 65536;
constexpr uint64_t kMaxSize = 1ull << 53;  // offsets arrive as JS numbers

}  // namespace

std::unique_ptr<BlockStore> BlockStore::Open(const std::string& data_path,
                                             const std::string& crc_path,
                                             const std::string& intent_path,
                                             int64_t size, int64_t block_size,
                                             bool create,
                                             const StoreOptions& options) {
  if (options.read_only && create) {
    throw Failure("EINVAL", "a read-only store cannot be created", data_path);
  }
  if (block_size < kMinBlockSize || block_size > kMaxBlockSize ||
      (block_size & (block_size - 1)) != 0) {
    throw Failure("EINVAL", "block size " + std::to_string(block_size) +
                                " is not a power of two between 512 and 65536");
  }
  if (size <= 0 || static_cast<uint64_t>(size) > kMaxSize ||
      size % block_size != 0) {
    throw Failure("EINVAL", "store size " + std::to_string(size) +
                                " is not a positive multiple of the block "
                                "size " +
                                std::to_string(block_size) + " (at most 2^53)");
  }
  const uint64_t blocks = static_cast<uint64_t>(size / block_size);
  const uint64_t crc_size = blocks * 4;
  const int flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC |
                    (create ? O_CREAT | O_EXCL : 0);

  int data_fd = -1;
  int crc_fd = -1;
  int intent_fd = -1;
  bool data_created = false;
  bool crc_created = false;
  bool intent_created = false;
  // Undo a half-done open; a failed create leaves no files behind.
  auto fail = [&](StoreError e) -> StoreError {
    if (data_fd >= 0) ::close(data_fd);
    if (crc_fd >= 0) ::close(crc_fd);
    if (intent_fd >= 0) ::close(intent_fd);
    if (intent_created) ::unlink(intent_path.c_str());
    if (crc_created) ::unlink(crc_path.c_str());
    if (data_created) ::unlink(data_path.c_str());
    return e;
  };

  data_fd = ::open(data_path.c_str(), flags, 0600);
  if (data_fd < 0) throw fail(OsFailure("open", data_path, errno));
  data_created = create;
  crc_fd = ::open(crc_path.c_str(), flags, 0600);
  if (crc_fd < 0) throw fail(OsFailure("open", crc_path, errno));
  crc_created = create;

  if (create) {
    if (::ftruncate(data_fd, size) != 0) {
      throw fail(OsFailure("ftruncate", data_path, errno));
    }
    if (::ftruncate(crc_fd, static_cast<off_t>(crc_size)) != 0) {
      throw fail(OsFailure("ftruncate", crc_path, errno));
    }
    // The sizes durable: after a power cut before the first flush the files
    // must still open. The directory sync for the intent file below makes
    // their names durable too when they share its directory.
    try {
      Fdatasync(data_fd, data_path);
      Fdatasync(crc_fd, crc_path);
    } catch (const StoreError& e) {
      throw fail(e);
    }
  } else {
    struct stat st;
    if (::fstat(data_fd, &st) != 0) {
      throw fail(OsFailure("fstat", data_path, errno));
    }
    if (!S_ISREG(st.st_mode)) {
      throw fail(Failure("EINVAL", data_path + " is not a regular file",
                         data_path));
    }
    if (static_cast<uint64_t>(st.st_size) != static_cast<uint64_t>(size)) {
      throw fail(Failure("EINVAL", "data file " + data_path + " has " +
                                       std::to_string(st.st_size) +
                                       " bytes, expected " +
                                       std::to_string(size),
                         data_path));
    }
    if (::fstat(crc_fd, &st) != 0) {
      throw fail(OsFailure("fstat", crc_path, errno));
    }
    if (!S_ISREG(st.st_mode)) {
      throw fail(
          Failure("EINVAL", crc_path + " is not a regular file", crc_path));
    }
    if (static_cast<uint64_t>(st.st_size) != crc_size) {
      throw fail(Failure("EINVAL", "checksum file " + crc_path + " has " +
                                       std::to_string(st.st_size) +
                                       " bytes, expected " +
                                       std::to_string(crc_size) + " (4 per " +
                                       std::to_string(block_size) +
                                       "-byte block)",
                         crc_path));
    }
  }

  const uint64_t regions =
      (static_cast<uint64_t>(size) + kIntentRegionBytes - 1) >> kIntentRegionShift;
  std::vector<uint64_t> marked;
  bool reset_intent = false;
  std::vector<Layer> bases;
  try {
    bases = OpenLayers(options.bases, static_cast<uint64_t>(size),
                       static_cast<uint32_t>(block_size));
  } catch (const StoreError& e) {
    throw fail(e);
  }
  // A read-only store is never written: nothing to mark or recover.
  if (!options.read_only) {
    intent_fd = ::open(intent_path.c_str(), flags, 0600);
    // A replica from before the intent map has none: it starts empty.
    const bool intent_missing = !create && intent_fd < 0 && errno == ENOENT;
    if (intent_missing) {
      intent_fd = ::open(intent_path.c_str(), flags | O_CREAT | O_EXCL, 0600);
    }
    if (intent_fd < 0) throw fail(OsFailure("open", intent_path, errno));
    intent_created = create;
    try {
      if (create || intent_missing) {
        InitIntentFile(intent_fd, intent_path, regions);
        SyncDirOf(intent_path);
      } else if (!ReadIntentFile(intent_fd, intent_path, regions, &marked)) {
        // Not a map we know: any block may be torn.
        reset_intent = true;
        marked.clear();
        for (uint64_t r = 0; r < regions; r++) marked.push_back(r);
      }
    } catch (const StoreError& e) {
      throw fail(e);
    }
  }
  std::unique_ptr<BlockStore> store(
      new BlockStore(data_path, crc_path, intent_path, data_fd, crc_fd,
                     intent_fd, static_cast<uint64_t>(size),
                     static_cast<uint32_t>(block_size), options.read_only,
                     std::move(bases)));
  store->Recover(marked, reset_intent);
  return store;
}


void BlockStore::Recover(const std::vector<uint64_t>& regions,
                         bool reset_intent) {
  if (regions.empty() && !reset_intent) return;
  const uint64_t blocks = size_ >> block_shift_;
  const uint64_t per_region = kIntentRegionBytes >> block_shift_;
  std::unique_ptr<uint8_t[]> buf(new uint8_t[kIntentRegionBytes]);
  std::vector<uint32_t> crcs(per_region);
  uint64_t rebuilt = 0;
  for (uint64_t r : regions) {
    const uint64_t first = r * per_region;
    if (first >= blocks) continue;
    const uint64_t count = std::min(per_region, blocks - first);
    ReadCrcs(first, count, crcs.data());
    FullPread(data_fd_, buf.get(), count << block_shift_, first << block_shift_,
              data_path_);
    bool changed = false;
    for (uint64_t i = 0; i < count; i++) {
      const uint8_t* p = buf.get() + (i << block_shift_);
      if (Matches(p, crcs[i])) continue;
      // With bases, zeros that do not match are a write into an absent block
      // whose data never landed: absent again, it reads its old contents.
      crcs[i] = !bases_.empty() && AllZero(p, block_size_) ? 0 : BlockCrc(p);
      changed = true;
      rebuilt++;
    }
    if (changed) {
      for (uint64_t i = 0; i < count; i++) crcs[i] = htole32(crcs[i]);
      WriteCrcs(first, count, crcs.data());
    }
  }
  // Both durable before a mark goes: a crc rebuilt from data still in the
  // page cache (a daemon crash keeps it) must not outlive that data.
  Fdatasync(data_fd_, data_path_);
  Fdatasync(crc_fd_, crc_path_);
  if (reset_intent) {
    InitIntentFile(intent_fd_, intent_path_, (size_ + kIntentRegionBytes - 1) >> kIntentRegionShift);
  } else {
    WriteClears(intent_fd_, intent_path_, regions);
    Fdatasync(intent_fd_, intent_path_);
  }
  recovery_.regions = regions.size();
  recovery_.blocks = rebuilt;
}

}  // namespace pxd
