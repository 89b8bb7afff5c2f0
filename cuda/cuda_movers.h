// CUDA movers: batched KV page gather/scatter and CRC32C over device memory.
#pragma once
#include <cstdint>

namespace thaw_cuda {

// A page of layer l, block b consists of `num_segments` runs of `segment_bytes` bytes at
// layer_base[l] + b * block_stride + segment_offset[s]. The packed buffer holds, for each
// layer, each listed page, each segment, its bytes in that order.
struct PagePlan {
  const uint64_t* layer_bases;      // device array [num_layers]
  const int64_t* block_ids;         // device array [num_pages]
  const int64_t* segment_offsets;   // device array [num_segments]
  int64_t num_layers, num_pages, num_segments;
  int64_t block_stride, segment_bytes;
};

// packed <- pages (one launch). `packed` may be device memory or mapped pinned host memory.
void gather_pages(const PagePlan& plan, uint8_t* packed, uintptr_t stream);
// pages <- packed (one launch). With `gate` (a device int), nothing is written when *gate == 0.
void scatter_pages(const PagePlan& plan, const uint8_t* packed, uintptr_t stream,
                   const int* gate = nullptr);

// Bytes of device scratch a CRC32C over `padded_len` bytes needs (one word per 512 bytes).
uint64_t crc32c_scratch_bytes(uint64_t padded_len);

// Queues the CRC32C of each chunk of `padded_len` bytes at `data` (on the device) into device
// array `out`, without waiting; bytes at or past `data_len` are taken as zeros (the file's
// padding). `scratch` (device memory of `scratch_bytes`, at least crc32c_scratch_bytes) is the
// caller's, so that nothing is allocated per call; it may be reused by the next call on the
// same stream. Where `expected` (device array) is given, a chunk that differs sets the
// device int `*ok_flag` to 0.
void crc32c_chunks_async(const uint8_t* data, uint64_t data_len, uint64_t padded_len,
                         uint64_t chunk_size, uint32_t* scratch, uint64_t scratch_bytes,
                         uint32_t* out, const uint32_t* expected, int* ok_flag, uintptr_t stream);

int device_count();

}  // namespace thaw_cuda
