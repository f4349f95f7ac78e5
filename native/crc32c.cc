// CRC-32C, software and SSE4.2.
//
// The crc32 instruction has a latency of 3 cycles and a throughput of 1 per
// cycle, so one dependency chain runs at a third of the possible speed. Long
// inputs are therefore cut into three equal parts whose crcs are computed in
// one loop, then joined: crc(A|B) = shift(crc(A), |B|) ^ crc(B), where shift
// appends |B| zero bytes. The CRC register update is linear over GF(2), so
// shift by a fixed length is a 32x32 bit matrix, applied here as four
// 256-entry tables (one per byte of the register).
#include "crc32c.h"

#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace pxd {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli

// Part lengths for the three-stream loop: the long one amortises the join on
// big buffers, the short one still helps for a 4 KiB block.
constexpr size_t kLong = 8192;
constexpr size_t kShort = 256;

struct Tables {
  uint32_t slice[8][256];
  uint32_t shift_long[4][256];
  uint32_t shift_short[4][256];

  Tables() {
    for (uint32_t n = 0; n < 256; n++) {
      uint32_t c = n;
      for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
      slice[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
      uint32_t c = slice[0][n];
      for (int k = 1; k < 8; k++) {
        c = slice[0][c & 0xff] ^ (c >> 8);
        slice[k][n] = c;
      }
    }
    BuildShift(shift_long, kLong);
    BuildShift(shift_short, kShort);
  }

  // Raw register (no pre/post inversion) after feeding `len` zero bytes.
  uint32_t Zeros(uint32_t reg, size_t len) const {
    for (size_t i = 0; i < len; i++) reg = slice[0][reg & 0xff] ^ (reg >> 8);
    return reg;
  }

  void BuildShift(uint32_t (&table)[4][256], size_t len) const {
    uint32_t basis[32];
    for (int b = 0; b < 32; b++) basis[b] = Zeros(1u << b, len);
    for (int k = 0; k < 4; k++) {
      for (uint32_t v = 0; v < 256; v++) {
        uint32_t r = 0;
        for (int b = 0; b < 8; b++) {
          if (v & (1u << b)) r ^= basis[8 * k + b];
        }
        table[k][v] = r;
      }
    }
  }
};

const Tables kTables;

inline uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

inline uint32_t Shift(const uint32_t (&table)[4][256], uint32_t reg) {
  return table[0][reg & 0xff] ^ table[1][(reg >> 8) & 0xff] ^
         table[2][(reg >> 16) & 0xff] ^ table[3][reg >> 24];
}

bool DetectHardware() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
#else
  return false;
#endif
}

const bool kHasHardware = DetectHardware();

}  // namespace

uint32_t Crc32cSoftware(const void* data, size_t len, uint32_t crc) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  const auto& t = kTables.slice;
  uint32_t c = ~crc;
  while (len > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    c = t[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    len--;
  }
  while (len >= 8) {
    uint64_t w = Load64(p) ^ c;
    c = t[7][w & 0xff] ^ t[6][(w >> 8) & 0xff] ^ t[5][(w >> 16) & 0xff] ^
        t[4][(w >> 24) & 0xff] ^ t[3][(w >> 32) & 0xff] ^
        t[2][(w >> 40) & 0xff] ^ t[1][(w >> 48) & 0xff] ^ t[0][w >> 56];
    p += 8;
    len -= 8;
  }
  while (len > 0) {
    c = t[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    len--;
  }
  return ~c;
}

#if defined(__x86_64__)

namespace {

// Three interleaved streams over parts of `part` bytes, while they last.
__attribute__((target("sse4.2"))) inline uint64_t Crc3Way(
    uint64_t c0, const uint8_t*& p, size_t& len, size_t part,
    const uint32_t (&table)[4][256]) {
  while (len >= 3 * part) {
    uint64_t c1 = 0;
    uint64_t c2 = 0;
    const uint8_t* end = p + part;
    do {
      c0 = _mm_crc32_u64(c0, Load64(p));
      c1 = _mm_crc32_u64(c1, Load64(p + part));
      c2 = _mm_crc32_u64(c2, Load64(p + 2 * part));
      p += 8;
    } while (p < end);
    c0 = Shift(table, static_cast<uint32_t>(c0)) ^ c1;
    c0 = Shift(table, static_cast<uint32_t>(c0)) ^ c2;
    p += 2 * part;
    len -= 3 * part;
  }
  return c0;
}

}  // namespace

__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(const void* data,
                                                           size_t len,
                                                           uint32_t crc) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint64_t c = static_cast<uint32_t>(~crc);
  while (len > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
    len--;
  }
  c = Crc3Way(c, p, len, kLong, kTables.shift_long);
  c = Crc3Way(c, p, len, kShort, kTables.shift_short);
  while (len >= 8) {
    c = _mm_crc32_u64(c, Load64(p));
    p += 8;
    len -= 8;
  }
  while (len > 0) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
    len--;
  }
  return ~static_cast<uint32_t>(c);
}

#else

uint32_t Crc32cHardware(const void* data, size_t len, uint32_t crc) {
  return Crc32cSoftware(data, len, crc);
}

#endif

bool HasHardwareCrc32c() { return kHasHardware; }

uint32_t Crc32c(const void* data, size_t len, uint32_t crc) {
  return kHasHardware ? Crc32cHardware(data, len, crc)
                      : Crc32cSoftware(data, len, crc);
}

}  // namespace pxd
