// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI (RFC 3720).
// Conventions match the usual "crc32c(data, value)" API: crc32c("123456789") == 0xE3069283
// and crc32c(b, crc32c(a)) == crc32c(a + b).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace thaw {

// Extends `crc` (a finished CRC32C value, 0 for empty input) with `len` bytes.
uint32_t crc32c_extend(uint32_t crc, const uint8_t* data, size_t len);

// Same result as crc32c_extend, always through the portable table-driven code.
uint32_t crc32c_extend_portable(uint32_t crc, const uint8_t* data, size_t len);

// CRC of A||B given crc(A), crc(B) and len(B).
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

// Splits the buffer into `shards` contiguous pieces, checksums them on up to `threads`
// threads, and combines the results. Equal to crc32c_extend(0, data, len).
uint32_t crc32c_parallel(const uint8_t* data, size_t len, int shards, int threads);

// CRC32C of each `chunk_size` piece of the buffer (the last may be shorter), computed on
// up to `threads` threads.
std::vector<uint32_t> crc32c_chunks(const uint8_t* data, size_t len, size_t chunk_size,
                                    int threads);

// "sse4.2" (x86-64) or "armv8-crc" (AArch64) where the CPU's CRC32C instructions are
// used, else "portable".
const char* crc32c_backend();

}  // namespace thaw
