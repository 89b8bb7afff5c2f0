// Python bindings of the CUDA movers: thaw._cuda. Pointers and streams are passed as
// integers (tensor.data_ptr(), stream.cuda_stream); thaw.core.gpu checks them first.
#include <nanobind/nanobind.h>

#include "cuda_movers.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

thaw_cuda::PagePlan make_plan(uintptr_t layer_bases, uintptr_t block_ids, uintptr_t segment_offsets,
                              int64_t num_layers, int64_t num_pages, int64_t num_segments,
                              int64_t block_stride, int64_t segment_bytes) {
  return {reinterpret_cast<const uint64_t*>(layer_bases), reinterpret_cast<const int64_t*>(block_ids),
          reinterpret_cast<const int64_t*>(segment_offsets), num_layers, num_pages, num_segments,
          block_stride, segment_bytes};
}

}  // namespace

NB_MODULE(_cuda, m) {
  m.doc() = "CUDA movers of thaw: batched KV page gather/scatter and CRC32C over device memory.";
  m.def("device_count", &thaw_cuda::device_count);
  m.def(
      "gather_pages",
      [](uintptr_t layer_bases, uintptr_t block_ids, uintptr_t segment_offsets, int64_t num_layers,
         int64_t num_pages, int64_t num_segments, int64_t block_stride, int64_t segment_bytes,
         uintptr_t packed, uintptr_t stream) {
        nb::gil_scoped_release unlocked;
        thaw_cuda::gather_pages(make_plan(layer_bases, block_ids, segment_offsets, num_layers,
                                          num_pages, num_segments, block_stride, segment_bytes),
                                reinterpret_cast<uint8_t*>(packed), stream);
      },
      "layer_bases"_a, "block_ids"_a, "segment_offsets"_a, "num_layers"_a, "num_pages"_a,
      "num_segments"_a, "block_stride"_a, "segment_bytes"_a, "packed"_a, "stream"_a);
  m.def(
      "scatter_pages",
      [](uintptr_t layer_bases, uintptr_t block_ids, uintptr_t segment_offsets, int64_t num_layers,
         int64_t num_pages, int64_t num_segments, int64_t block_stride, int64_t segment_bytes,
         uintptr_t packed, uintptr_t stream, uintptr_t gate) {
        nb::gil_scoped_release unlocked;
        thaw_cuda::scatter_pages(make_plan(layer_bases, block_ids, segment_offsets, num_layers,
                                           num_pages, num_segments, block_stride, segment_bytes),
                                 reinterpret_cast<const uint8_t*>(packed), stream,
                                 reinterpret_cast<const int*>(gate));
      },
      "layer_bases"_a, "block_ids"_a, "segment_offsets"_a, "num_layers"_a, "num_pages"_a,
      "num_segments"_a, "block_stride"_a, "segment_bytes"_a, "packed"_a, "stream"_a, "gate"_a = 0,
      "Scatter; with `gate` (device int pointer, 0 = none), nothing is written if *gate == 0.");
  m.def("crc32c_scratch_bytes", &thaw_cuda::crc32c_scratch_bytes, "padded_len"_a,
        "Bytes of device scratch crc32c_chunks_async needs for `padded_len` bytes.");
  m.def(
      "crc32c_chunks_async",
      [](uintptr_t data, uint64_t data_len, uint64_t padded_len, uint64_t chunk_size, uintptr_t scratch,
         uint64_t scratch_bytes, uintptr_t out, uintptr_t expected, uintptr_t ok_flag, uintptr_t stream) {
        nb::gil_scoped_release unlocked;
        thaw_cuda::crc32c_chunks_async(reinterpret_cast<const uint8_t*>(data), data_len, padded_len,
                                       chunk_size, reinterpret_cast<uint32_t*>(scratch), scratch_bytes,
                                       reinterpret_cast<uint32_t*>(out),
                                       reinterpret_cast<const uint32_t*>(expected),
                                       reinterpret_cast<int*>(ok_flag), stream);
      },
      "data"_a, "data_len"_a, "padded_len"_a, "chunk_size"_a, "scratch"_a, "scratch_bytes"_a, "out"_a,
      "expected"_a, "ok_flag"_a, "stream"_a,
      "Queues CRC32C per chunk into device array `out` (scratch: the caller's device memory of "
      "crc32c_scratch_bytes(padded_len)); with `expected` (0: none), clears *ok_flag on a mismatch.");
}
