// Pipelined section reader and writer for thaw snapshot files.
//
// A section occupies [offset, offset + padded_len) of the file: `data_len` bytes of payload
// followed by zero padding up to a 4 KiB boundary. Its CRC32C is kept per chunk of
// `chunk_size` bytes over the padded extent, so chunks can be checked in parallel and in
// streaming order. Both calls split the extent into chunks and hand them to `threads`
// worker threads; each worker moves a chunk and checksums it in the same pass while the
// others keep further requests in flight.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace thaw {

struct IoError : std::runtime_error {
  int err;
  IoError(const std::string& what, int err_) : std::runtime_error(what), err(err_) {}
};

struct ReadResult {
  std::vector<uint32_t> chunk_crcs;
  bool used_direct;  // true when the file was read with O_DIRECT
};

// Fills `dest` (data_len bytes) from the section and returns the CRC of every chunk of the
// padded extent. With `direct`, the file is opened with O_DIRECT; where the filesystem
// refuses it (EINVAL, e.g. tmpfs) the read proceeds buffered and used_direct says so.
ReadResult read_section(const std::string& path, uint64_t offset, uint8_t* dest,
                        uint64_t data_len, uint64_t padded_len, uint64_t chunk_size,
                        int threads, bool direct);

// Checksums every chunk of a section's padded extent without keeping the bytes: each
// worker reads into its own small buffer, so the data never leaves the CPU cache.
std::vector<uint32_t> check_section(const std::string& path, uint64_t offset,
                                    uint64_t padded_len, uint64_t chunk_size, int threads);

// Writes `src` (data_len bytes) then zeros up to padded_len at `offset` of the open file
// descriptor `fd`; returns the CRC of every chunk of the padded extent. With `direct_fd`
// >= 0 (the same file opened with O_DIRECT; `offset` then 4096-aligned) every byte goes
// through it instead, past the page cache: straight from `src` where its address is
// 4096-aligned, else through a per-worker aligned buffer; the block holding the payload's
// tail and its zero padding always through that buffer.
std::vector<uint32_t> write_section(int fd, uint64_t offset, const uint8_t* src,
                                    uint64_t data_len, uint64_t padded_len,
                                    uint64_t chunk_size, int threads, int direct_fd = -1);

// Copies `src` (data_len bytes) then zeros up to padded_len into `dest` (which holds at
// least padded_len bytes: e.g. a shared mapping of the file, so that the copy lands in its
// page cache without a write call per chunk); returns the CRC of every chunk of the padded
// extent, as write_section. Pieces of up to 1 MiB are copied on up to `threads` threads at once.
std::vector<uint32_t> copy_section(uint8_t* dest, const uint8_t* src, uint64_t data_len,
                                   uint64_t padded_len, uint64_t chunk_size, int threads);

}  // namespace thaw
