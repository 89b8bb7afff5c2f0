#include "section_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "crc32c.h"
#include "worker_pool.h"

namespace thaw {
namespace {

constexpr uint64_t kAlign = 4096;
constexpr uint64_t kPiece = 256 * 1024;
constexpr uint64_t kCopyPiece = 1 << 20;  // copy_section's unit of work

struct AlignedBuffer {
  uint8_t* ptr = nullptr;
  explicit AlignedBuffer(size_t n) {
    if (posix_memalign(reinterpret_cast<void**>(&ptr), kAlign, std::max<size_t>(n, kAlign)))
      throw std::bad_alloc();
  }
  ~AlignedBuffer() { std::free(ptr); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
};

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads exactly n bytes at off, or throws (short read = file shorter than claimed).
void pread_full(int fd, uint8_t* buf, size_t n, uint64_t off) {
  while (n) {
    ssize_t got = ::pread(fd, buf, n, static_cast<off_t>(off));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw IoError("pread failed at offset " + std::to_string(off), errno);
    }
    if (got == 0) throw IoError("unexpected end of file at offset " + std::to_string(off), 0);
    buf += got;
    off += static_cast<uint64_t>(got);
    n -= static_cast<size_t>(got);
  }
}

void pwrite_full(int fd, const uint8_t* buf, size_t n, uint64_t off) {
  while (n) {
    ssize_t put = ::pwrite(fd, buf, n, static_cast<off_t>(off));
    if (put < 0) {
      if (errno == EINTR) continue;
      throw IoError("pwrite failed at offset " + std::to_string(off), errno);
    }
    buf += put;
    off += static_cast<uint64_t>(put);
    n -= static_cast<size_t>(put);
  }
}

void check_extent(uint64_t data_len, uint64_t padded_len, uint64_t chunk_size) {
  if (chunk_size == 0 || chunk_size % kAlign)
    throw std::invalid_argument("chunk_size must be a positive multiple of 4096");
  if (padded_len < data_len || padded_len - data_len >= kAlign || padded_len % kAlign)
    throw std::invalid_argument("padded_len must be data_len rounded up to 4096");
}

}  // namespace

ReadResult read_section(const std::string& path, uint64_t offset, uint8_t* dest,
                        uint64_t data_len, uint64_t padded_len, uint64_t chunk_size,
                        int threads, bool direct) {
  check_extent(data_len, padded_len, chunk_size);
  if (offset % kAlign) throw std::invalid_argument("section offset must be 4096-aligned");
  Fd file;
  bool used_direct = false;
  if (direct) {
    file.fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (file.fd >= 0) used_direct = true;
    else if (errno != EINVAL) throw IoError("cannot open " + path, errno);
  }
  if (file.fd < 0) {
    file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (file.fd < 0) throw IoError("cannot open " + path, errno);
  }
  const uint64_t num_chunks = (padded_len + chunk_size - 1) / chunk_size;
  ReadResult result{std::vector<uint32_t>(num_chunks, 0), used_direct};
  int workers = static_cast<int>(std::max<uint64_t>(1, std::min<uint64_t>(threads, num_chunks)));
  // One bounce buffer per worker: used for padding, and for O_DIRECT chunks whose
  // destination address is not aligned.
  std::vector<std::unique_ptr<AlignedBuffer>> bounce(workers);
  const size_t bounce_size = used_direct ? chunk_size : kAlign;
  for (auto& b : bounce) b = std::make_unique<AlignedBuffer>(bounce_size);

  parallel_for(num_chunks, workers, [&](uint64_t k, int w) {
    const uint64_t begin = k * chunk_size;
    const uint64_t end = std::min(padded_len, begin + chunk_size);
    const uint64_t data_end = std::min(end, std::max(begin, data_len));
    uint8_t* scratch = bounce[w]->ptr;
    uint32_t crc = 0;
    if (used_direct) {
      uint8_t* target = dest + begin;
      bool in_place = data_end == end && (reinterpret_cast<uintptr_t>(target) % kAlign) == 0;
      if (in_place) {
        pread_full(file.fd, target, end - begin, offset + begin);
        crc = crc32c_extend(0, target, end - begin);
      } else {
        pread_full(file.fd, scratch, end - begin, offset + begin);
        crc = crc32c_extend(0, scratch, end - begin);
        std::memcpy(dest + begin, scratch, data_end - begin);
      }
    } else {
      // Read and checksum in cache-sized pieces, so each piece is summed while it is
      // still in the CPU cache rather than fetched again from memory.
      for (uint64_t pos = begin; pos < data_end; pos += kPiece) {
        const uint64_t n = std::min(kPiece, data_end - pos);
        pread_full(file.fd, dest + pos, n, offset + pos);
        crc = crc32c_extend(crc, dest + pos, n);
      }
      if (end > data_end) {  // the section's tail padding, less than 4 KiB
        pread_full(file.fd, scratch, end - data_end, offset + data_end);
        crc = crc32c_extend(crc, scratch, end - data_end);
      }
    }
    result.chunk_crcs[k] = crc;
  });
  return result;
}

std::vector<uint32_t> check_section(const std::string& path, uint64_t offset,
                                    uint64_t padded_len, uint64_t chunk_size, int threads) {
  check_extent(padded_len, padded_len, chunk_size);
  if (offset % kAlign) throw std::invalid_argument("section offset must be 4096-aligned");
  Fd file;
  file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (file.fd < 0) throw IoError("cannot open " + path, errno);
  const uint64_t num_chunks = (padded_len + chunk_size - 1) / chunk_size;
  std::vector<uint32_t> crcs(num_chunks, 0);
  int workers = static_cast<int>(std::max<uint64_t>(1, std::min<uint64_t>(threads, num_chunks)));
  std::vector<std::unique_ptr<AlignedBuffer>> piece(workers);
  for (auto& b : piece) b = std::make_unique<AlignedBuffer>(kPiece);
  parallel_for(num_chunks, workers, [&](uint64_t k, int w) {
    const uint64_t begin = k * chunk_size;
    const uint64_t end = std::min(padded_len, begin + chunk_size);
    uint32_t crc = 0;
    for (uint64_t pos = begin; pos < end; pos += kPiece) {
      const uint64_t n = std::min(kPiece, end - pos);
      pread_full(file.fd, piece[w]->ptr, n, offset + pos);
      crc = crc32c_extend(crc, piece[w]->ptr, n);
    }
    crcs[k] = crc;
  });
  return crcs;
}

std::vector<uint32_t> write_section(int fd, uint64_t offset, const uint8_t* src,
                                    uint64_t data_len, uint64_t padded_len,
                                    uint64_t chunk_size, int threads, int direct_fd) {
  check_extent(data_len, padded_len, chunk_size);
  const bool direct = direct_fd >= 0;
  if (direct && offset % kAlign) throw std::invalid_argument("section offset must be 4096-aligned");
  const uint64_t num_chunks = (padded_len + chunk_size - 1) / chunk_size;
  std::vector<uint32_t> crcs(num_chunks, 0);
  static const uint8_t zeros[kAlign] = {};
  const int workers = static_cast<int>(std::max<uint64_t>(1, std::min<uint64_t>(threads, num_chunks)));
  // Aligned buffers for O_DIRECT, one per worker, made on first use.
  std::vector<std::unique_ptr<AlignedBuffer>> bounce(direct ? workers : 0);
  auto aligned = [&](int w) {
    if (!bounce[w]) bounce[w] = std::make_unique<AlignedBuffer>(chunk_size);
    return bounce[w]->ptr;
  };
  parallel_for(num_chunks, workers, [&](uint64_t k, int w) {
    const uint64_t begin = k * chunk_size;
    const uint64_t end = std::min(padded_len, begin + chunk_size);
    const uint64_t data_end = std::min(end, std::max(begin, data_len));
    uint32_t crc = 0;
    if (!direct) {
      if (data_end > begin) {
        pwrite_full(fd, src + begin, data_end - begin, offset + begin);
        crc = crc32c_extend(0, src + begin, data_end - begin);
      }
      if (end > data_end) {
        pwrite_full(fd, zeros, end - data_end, offset + data_end);
        crc = crc32c_extend(crc, zeros, end - data_end);
      }
      crcs[k] = crc;
      return;
    }
    // The whole blocks of payload, then (in the last chunk) one block: tail + padding.
    const uint64_t blocks_end = begin + (data_end - begin) / kAlign * kAlign;
    if (end - blocks_end > kAlign) throw std::logic_error("write_section: padding longer than a block");
    if (blocks_end > begin) {
      const uint8_t* from = src + begin;
      if (reinterpret_cast<uintptr_t>(from) % kAlign) {
        std::memcpy(aligned(w), from, blocks_end - begin);
        from = aligned(w);
      }
      pwrite_full(direct_fd, from, blocks_end - begin, offset + begin);
      crc = crc32c_extend(0, from, blocks_end - begin);
    }
    if (end > blocks_end) {
      uint8_t* block = aligned(w);
      std::memset(block, 0, kAlign);
      std::memcpy(block, src + blocks_end, data_end - blocks_end);
      pwrite_full(direct_fd, block, end - blocks_end, offset + blocks_end);
      crc = crc32c_extend(crc, block, end - blocks_end);
    }
    crcs[k] = crc;
  });
  return crcs;
}

std::vector<uint32_t> copy_section(uint8_t* dest, const uint8_t* src, uint64_t data_len,
                                   uint64_t padded_len, uint64_t chunk_size, int threads) {
  check_extent(data_len, padded_len, chunk_size);
  const uint64_t num_chunks = (padded_len + chunk_size - 1) / chunk_size;
  // Pieces smaller than a chunk, so that a section of few chunks (a KV layer) still keeps
  // every thread copying; each chunk's CRC is its pieces' CRCs combined in order.
  const uint64_t piece = std::min(chunk_size, kCopyPiece);
  const uint64_t per_chunk = (chunk_size + piece - 1) / piece;
  std::vector<uint32_t> piece_crcs(num_chunks * per_chunk, 0);
  parallel_for(num_chunks * per_chunk, threads, [&](uint64_t i, int) {
    const uint64_t chunk_begin = (i / per_chunk) * chunk_size;
    const uint64_t chunk_end = std::min(padded_len, chunk_begin + chunk_size);
    const uint64_t begin = std::min(chunk_end, chunk_begin + (i % per_chunk) * piece);
    const uint64_t end = std::min(chunk_end, begin + piece);
    const uint64_t data_end = std::min(end, std::max(begin, data_len));
    uint32_t crc = 0;
    if (data_end > begin) {
      std::memcpy(dest + begin, src + begin, data_end - begin);
      crc = crc32c_extend(0, src + begin, data_end - begin);
    }
    if (end > data_end) {
      std::memset(dest + data_end, 0, end - data_end);
      crc = crc32c_extend(crc, dest + data_end, end - data_end);
    }
    piece_crcs[i] = crc;
  });
  std::vector<uint32_t> crcs(num_chunks, 0);
  for (uint64_t k = 0; k < num_chunks; ++k) {
    const uint64_t chunk_begin = k * chunk_size;
    const uint64_t chunk_end = std::min(padded_len, chunk_begin + chunk_size);
    uint32_t crc = 0;
    for (uint64_t j = 0; j < per_chunk; ++j) {
      const uint64_t begin = chunk_begin + j * piece;
      if (begin >= chunk_end) break;
      crc = j == 0 ? piece_crcs[k * per_chunk] : crc32c_combine(crc, piece_crcs[k * per_chunk + j],
                                                                 std::min(chunk_end, begin + piece) - begin);
    }
    crcs[k] = crc;
  }
  return crcs;
}

}  // namespace thaw
