#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda_movers.h"

namespace thaw_cuda {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

constexpr int kThreads = 256;

// One thread block per (layer, page, segment); 16-byte vectors when everything is aligned.
template <bool kGather, typename Vec>
__global__ void copy_pages(PagePlan plan, uint8_t* packed, const int* gate) {
  if (gate != nullptr && *gate == 0) return;
  const int64_t tuple = blockIdx.x + static_cast<int64_t>(blockIdx.y) * gridDim.x;
  const int64_t total = plan.num_layers * plan.num_pages * plan.num_segments;
  if (tuple >= total) return;
  const int64_t seg = tuple % plan.num_segments;
  const int64_t page = (tuple / plan.num_segments) % plan.num_pages;
  const int64_t layer = tuple / (plan.num_segments * plan.num_pages);
  uint8_t* paged = reinterpret_cast<uint8_t*>(plan.layer_bases[layer]) +
                   plan.block_ids[page] * plan.block_stride + plan.segment_offsets[seg];
  uint8_t* flat = packed + tuple * plan.segment_bytes;
  const Vec* src = reinterpret_cast<const Vec*>(kGather ? paged : flat);
  Vec* dst = reinterpret_cast<Vec*>(kGather ? flat : paged);
  const int64_t n = plan.segment_bytes / sizeof(Vec);
  for (int64_t i = threadIdx.x; i < n; i += kThreads) dst[i] = src[i];
}

bool aligned16(const PagePlan& p, const void* packed) {
  return (p.block_stride % 16 == 0) && (p.segment_bytes % 16 == 0) &&
         (reinterpret_cast<uintptr_t>(packed) % 16 == 0);
}

template <bool kGather>
void launch(const PagePlan& plan, uint8_t* packed, uintptr_t stream, const int* gate) {
  const int64_t total = plan.num_layers * plan.num_pages * plan.num_segments;
  if (total == 0) return;
  if (plan.segment_bytes % 4) throw std::invalid_argument("segment_bytes must be a multiple of 4");
  dim3 grid(static_cast<unsigned>(total < 65535 ? total : 65535),
            static_cast<unsigned>((total + 65534) / 65535));
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (aligned16(plan, packed))
    copy_pages<kGather, uint4><<<grid, kThreads, 0, s>>>(plan, packed, gate);
  else
    copy_pages<kGather, uint32_t><<<grid, kThreads, 0, s>>>(plan, packed, gate);
  check(cudaGetLastError(), kGather ? "gather_pages launch" : "scatter_pages launch");
}

}  // namespace

void gather_pages(const PagePlan& plan, uint8_t* packed, uintptr_t stream) {
  launch<true>(plan, packed, stream, nullptr);
}

void scatter_pages(const PagePlan& plan, const uint8_t* packed, uintptr_t stream, const int* gate) {
  launch<false>(plan, const_cast<uint8_t*>(packed), stream, gate);
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

}  // namespace thaw_cuda
