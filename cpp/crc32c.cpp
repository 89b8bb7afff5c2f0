#include "crc32c.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "worker_pool.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define THAW_HW 1
#define THAW_HW_TARGET __attribute__((target("sse4.2")))
#define THAW_HW_NAME "sse4.2"
#elif defined(__aarch64__) && defined(__linux__)
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#define THAW_HW 1
#define THAW_HW_TARGET __attribute__((target("+crc")))
#define THAW_HW_NAME "armv8-crc"
#endif

namespace thaw {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;

struct Tables {
  uint32_t t[8][256];
  Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};
const Tables& tables() {
  static const Tables instance;
  return instance;
}

// Raw register update, slicing-by-8. `state` is the pre-conditioned register.
uint32_t update_portable(uint32_t state, const uint8_t* p, size_t n) {
  const auto& t = tables().t;
  while (n && (reinterpret_cast<uintptr_t>(p) & 7)) {
    state = (state >> 8) ^ t[0][(state ^ *p++) & 0xFF];
    --n;
  }
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);  // little-endian hosts only (checked in CMake)
    w ^= state;
    state = t[7][w & 0xFF] ^ t[6][(w >> 8) & 0xFF] ^ t[5][(w >> 16) & 0xFF] ^
            t[4][(w >> 24) & 0xFF] ^ t[3][(w >> 32) & 0xFF] ^ t[2][(w >> 40) & 0xFF] ^
            t[1][(w >> 48) & 0xFF] ^ t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) state = (state >> 8) ^ t[0][(state ^ *p++) & 0xFF];
  return state;
}

// Multiplies two polynomials modulo the CRC polynomial (bit-reflected representation,
// x^0 in the top bit).
uint32_t mul_mod_poly(uint32_t a, uint32_t b) {
  uint32_t product = 0;
  for (uint32_t bit = 0x80000000u; bit; bit >>= 1) {
    if (a & bit) product ^= b;
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return product;
}

// x^(8 * nbytes) modulo the polynomial, by square-and-multiply over x^(2^k).
uint32_t x_pow_8n(uint64_t nbytes) {
  static const std::array<uint32_t, 64> x_pow_2k = [] {
    std::array<uint32_t, 64> table{};
    uint32_t p = 0x40000000u;  // x^1
    for (auto& entry : table) {
      entry = p;
      p = mul_mod_poly(p, p);
    }
    return table;
  }();
  uint32_t result = 0x80000000u;  // x^0
  uint64_t bits = nbytes;         // exponent is 8 * nbytes = bits << 3
  for (int k = 3; bits; ++k, bits >>= 1)
    if (bits & 1) result = mul_mod_poly(x_pow_2k[k], result);
  return result;
}

// Advances a raw register past `nbytes` bytes of zeros: multiplies it by x^(8n).
inline uint32_t shift_register(uint32_t state, uint64_t nbytes) {
  return mul_mod_poly(x_pow_8n(nbytes), state);
}

#ifdef THAW_HW
// The CPU's CRC32C instructions: SSE4.2 on x86-64, the ARMv8 CRC extension on AArch64
// (Graviton, Grace). The same code serves both through these two steps.
#if defined(__x86_64__) || defined(_M_X64)
THAW_HW_TARGET inline uint64_t hw_step64(uint64_t s, uint64_t w) { return _mm_crc32_u64(s, w); }
THAW_HW_TARGET inline uint32_t hw_step8(uint32_t s, uint8_t b) { return _mm_crc32_u8(s, b); }
bool cpu_has_crc() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#else
THAW_HW_TARGET inline uint64_t hw_step64(uint64_t s, uint64_t w) {
  return __crc32cd(static_cast<uint32_t>(s), w);
}
THAW_HW_TARGET inline uint32_t hw_step8(uint32_t s, uint8_t b) { return __crc32cb(s, b); }
bool cpu_has_crc() {
  static const bool has = (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0;
  return has;
}
#endif

THAW_HW_TARGET uint32_t update_hw_serial(uint32_t state, const uint8_t* p, size_t n) {
  uint64_t s = state;
  while (n && (reinterpret_cast<uintptr_t>(p) & 7)) {
    s = hw_step8(static_cast<uint32_t>(s), *p++);
    --n;
  }
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    s = hw_step64(s, w);
    p += 8;
    n -= 8;
  }
  while (n--) s = hw_step8(static_cast<uint32_t>(s), *p++);
  return static_cast<uint32_t>(s);
}

// Three independent streams hide the instruction's 3-cycle latency; their registers are
// merged with a carry-less shift by the stream length.
THAW_HW_TARGET uint32_t update_hw(uint32_t state, const uint8_t* p, size_t n) {
  constexpr size_t kStream = 16384;  // bytes per stream per block
  static const uint32_t shift_stream = x_pow_8n(kStream);
  while (n >= 3 * kStream) {
    uint64_t a = state, b = 0, c = 0;
    const uint8_t* pa = p;
    const uint8_t* pb = p + kStream;
    const uint8_t* pc = p + 2 * kStream;
    for (size_t i = 0; i < kStream; i += 8) {
      uint64_t wa, wb, wc;
      std::memcpy(&wa, pa + i, 8);
      std::memcpy(&wb, pb + i, 8);
      std::memcpy(&wc, pc + i, 8);
      a = hw_step64(a, wa);
      b = hw_step64(b, wb);
      c = hw_step64(c, wc);
    }
    uint32_t ab = mul_mod_poly(shift_stream, static_cast<uint32_t>(a)) ^ static_cast<uint32_t>(b);
    state = mul_mod_poly(shift_stream, ab) ^ static_cast<uint32_t>(c);
    p += 3 * kStream;
    n -= 3 * kStream;
  }
  return update_hw_serial(state, p, n);
}
#endif

uint32_t update(uint32_t state, const uint8_t* p, size_t n) {
#ifdef THAW_HW
  if (cpu_has_crc()) return update_hw(state, p, n);
#endif
  return update_portable(state, p, n);
}

}  // namespace

uint32_t crc32c_extend(uint32_t crc, const uint8_t* data, size_t len) {
  return ~update(~crc, data, len);
}

uint32_t crc32c_extend_portable(uint32_t crc, const uint8_t* data, size_t len) {
  return ~update_portable(~crc, data, len);
}

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  return shift_register(crc_a, len_b) ^ crc_b;
}

uint32_t crc32c_parallel(const uint8_t* data, size_t len, int shards, int threads) {
  shards = std::max(1, shards);
  const size_t shard_len = (len + shards - 1) / shards;
  std::vector<uint32_t> crcs(shards, 0);
  std::vector<size_t> lens(shards, 0);
  for (int i = 0; i < shards; ++i) {
    size_t begin = std::min(len, i * shard_len);
    lens[i] = std::min(len, begin + shard_len) - begin;
  }
  parallel_for(static_cast<uint64_t>(shards), threads, [&](uint64_t i, int) {
    crcs[i] = crc32c_extend(0, data + std::min(len, i * shard_len), lens[i]);
  });
  uint32_t total = 0;
  for (int i = 0; i < shards; ++i) total = crc32c_combine(total, crcs[i], lens[i]);
  return total;
}

std::vector<uint32_t> crc32c_chunks(const uint8_t* data, size_t len, size_t chunk_size,
                                    int threads) {
  if (chunk_size == 0) throw std::invalid_argument("chunk_size must be positive");
  const size_t n = (len + chunk_size - 1) / chunk_size;
  std::vector<uint32_t> crcs(n, 0);
  parallel_for(n, threads, [&](uint64_t k, int) {
    const size_t begin = k * chunk_size;
    crcs[k] = crc32c_extend(0, data + begin, std::min(chunk_size, len - begin));
  });
  return crcs;
}

const char* crc32c_backend() {
#ifdef THAW_HW
  if (cpu_has_crc()) return THAW_HW_NAME;
#endif
  return "portable";
}

}  // namespace thaw
