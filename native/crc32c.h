// CRC-32C (Castagnoli, reflected, init and final xor 0xFFFFFFFF).
//
// Every function takes the previous result as `crc` (0 to start), so
// crc32c(b, crc32c(a)) == crc32c(a + b).
#ifndef PXD_NATIVE_CRC32C_H_
#define PXD_NATIVE_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace pxd {

// Slicing-by-8 tables; runs anywhere.
uint32_t Crc32cSoftware(const void* data, size_t len, uint32_t crc = 0);

// SSE4.2 crc32 instruction, three interleaved streams for long inputs.
// Only call when HasHardwareCrc32c() is true.
uint32_t Crc32cHardware(const void* data, size_t len, uint32_t crc = 0);

bool HasHardwareCrc32c();

// Picks the hardware path when the CPU has it.
uint32_t Crc32c(const void* data, size_t len, uint32_t crc = 0);

}  // namespace pxd

#endif  // PXD_NATIVE_CRC32C_H_
