// FALLOCATE on a volume's file, whose size is fixed: a punch-hole or a
// zero-range inside the file goes to the sink as a discard (answered by Reply()
// like any data request), a plain allocation inside it has nothing to do, and
// anything that would grow the file or that the block store cannot do is refused.
// The request's slot and the rest of the data path are fuse_server.cc's.
#include <linux/falloc.h>
#include <linux/fuse.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "fuse_server.h"

namespace pxd {

bool FuseServer::OnFallocate(uint32_t slot, uint64_t unique, uint64_t size, const uint8_t* in,
                             size_t in_len) {
  // Never an ENOSYS: the kernel would stop sending FALLOCATE for every file of the mount.
  fuse_fallocate_in arg{};
  if (in_len < sizeof arg) return ReplyBytes(unique, EINVAL, nullptr, 0), false;
  std::memcpy(&arg, in, sizeof arg);
  const uint32_t punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
  const bool zero = (arg.mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE;
  const uint64_t end = arg.length > UINT64_MAX - arg.offset ? UINT64_MAX : arg.offset + arg.length;
  if (arg.mode != punch && !zero) {
    // Plain allocation inside the file has nothing to do (its size is fixed, no
    // write ever fails for space the host lacks here); anything else is refused.
    const bool allocate = (arg.mode & ~FALLOC_FL_KEEP_SIZE) == 0;
    if (allocate && (end <= size || (arg.mode & FALLOC_FL_KEEP_SIZE) != 0)) return ReplyBytes(unique, 0, nullptr, 0), false;
    return ReplyBytes(unique, allocate ? ENOSPC : EOPNOTSUPP, nullptr, 0), false;
  }
  // The file cannot grow: zeroing past its end without KEEP_SIZE is refused.
  if (zero && (arg.mode & FALLOC_FL_KEEP_SIZE) == 0 && end > size) return ReplyBytes(unique, ENOSPC, nullptr, 0), false;
  if (arg.offset >= size || arg.length == 0) return ReplyBytes(unique, 0, nullptr, 0), false;
  FuseRequest& r = requests_[slot];
  r.kind = FuseKind::kDiscard;
  r.offset = arg.offset;
  r.length = std::min(end, size) - arg.offset;
  sink_->Dispatch(slot);
  return true;
}

}  // namespace pxd
