// Known-answer check of thaw's C++ CRC32C on whatever CPU runs it (built and run by
// tests/test_crc32c_native.py, natively and under qemu for AArch64). RFC 3720 B.4 vectors,
// the common "123456789" check value, and the hardware path against the portable one on
// lengths that cross every branch (alignment head, 8-byte body, 3-stream blocks, tail).
// Prints the backend, then "N passed, M failed"; exits non-zero on any failure.
#include <cstdio>
#include <cstring>
#include <vector>

#include "crc32c.h"

static int passed = 0, failed = 0;

static void expect(const char* what, uint32_t got, uint32_t want) {
  if (got == want) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAIL %s: 0x%08x, expected 0x%08x\n", what, got, want);
  }
}

int main() {
  std::printf("backend %s\n", thaw::crc32c_backend());
  unsigned char buf[32];
  std::memset(buf, 0x00, 32);
  expect("32 x 0x00", thaw::crc32c_extend(0, buf, 32), 0x8A9136AAu);
  std::memset(buf, 0xFF, 32);
  expect("32 x 0xFF", thaw::crc32c_extend(0, buf, 32), 0x62A8AB43u);
  for (int i = 0; i < 32; ++i) buf[i] = static_cast<unsigned char>(i);
  expect("0..31", thaw::crc32c_extend(0, buf, 32), 0x46DD794Eu);
  for (int i = 0; i < 32; ++i) buf[i] = static_cast<unsigned char>(31 - i);
  expect("31..0", thaw::crc32c_extend(0, buf, 32), 0x113FDB5Cu);
  const char* digits = "123456789";
  expect("123456789", thaw::crc32c_extend(0, reinterpret_cast<const uint8_t*>(digits), 9), 0xE3069283u);

  std::vector<uint8_t> data(3 * 16384 * 2 + 4096 + 13);
  uint32_t x = 12345;
  for (auto& b : data) b = static_cast<uint8_t>((x = x * 1103515245u + 12345u) >> 16);
  const size_t lengths[] = {0, 1, 7, 8, 9, 63, 4096, 3 * 16384 - 1, 3 * 16384, 3 * 16384 + 5, data.size() - 3};
  for (size_t offset = 0; offset < 3; ++offset) {
    for (size_t n : lengths) {
      char what[64];
      std::snprintf(what, sizeof what, "hw vs portable, offset %zu length %zu", offset, n);
      expect(what, thaw::crc32c_extend(0, data.data() + offset, n),
             thaw::crc32c_extend_portable(0, data.data() + offset, n));
    }
  }
  const uint32_t whole = thaw::crc32c_extend(0, data.data(), data.size());
  const uint32_t head = thaw::crc32c_extend(0, data.data(), 1000);
  const uint32_t tail = thaw::crc32c_extend(0, data.data() + 1000, data.size() - 1000);
  expect("combine", thaw::crc32c_combine(head, tail, data.size() - 1000), whole);
  expect("parallel", thaw::crc32c_parallel(data.data(), data.size(), 5, 3), whole);
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
