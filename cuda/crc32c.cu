// CRC32C over device memory, equal to the CPU result for the same bytes.
//
// Pass 1: every thread computes the raw (zero-initialised) CRC of one 512-byte piece with
// slicing-by-4 tables in shared memory. Pass 2: one thread block per chunk folds its pieces
// together, using crc(A||B) = crc(A) * x^(8|B|) + crc(B) over GF(2), then applies the
// standard pre/post conditioning for the chunk's length.
#include <cuda_runtime.h>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>

#include "cuda_movers.h"

namespace thaw_cuda {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;
constexpr int kPiece = 512;                 // bytes folded by one thread in pass 1
constexpr int kTilePieces = 128;           // pieces (threads) per block in pass 1
constexpr int kRowWords = kPiece / 4 + 1;  // padded shared-memory row
constexpr int kThreads = 256;              // threads per block in pass 2
constexpr size_t kPieceSmem = (4 * 256 + kTilePieces * kRowWords) * sizeof(uint32_t);

__constant__ uint32_t c_table[4 * 256];  // slicing-by-4: table[k][b] = CRC of b followed by k zero bytes
__constant__ uint32_t c_x_pow_2k[64];  // x^(2^k) mod P

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

__host__ __device__ uint32_t mul_mod(uint32_t a, uint32_t b) {
  uint32_t p = 0;
  for (uint32_t bit = 0x80000000u; bit; bit >>= 1) {
    if (a & bit) p ^= b;
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return p;
}

__device__ uint32_t shift(uint32_t crc, uint64_t nbytes) {
  uint32_t x = 0x80000000u;  // x^0
  uint64_t bits = nbytes;
  for (int k = 3; bits; ++k, bits >>= 1)
    if (bits & 1) x = mul_mod(c_x_pow_2k[k], x);
  return mul_mod(x, crc);
}

// One thread block loads a tile of kTilePieces pieces with coalesced 16-byte loads into
// shared memory (each piece's row padded by one word, so that the threads of a warp read
// different banks), then each thread folds its own piece with slicing-by-4 tables.
__global__ void __launch_bounds__(kTilePieces) piece_crcs(const uint8_t* data, uint64_t data_len,
                                                           uint64_t padded_len, uint32_t* out) {
  extern __shared__ uint32_t smem[];
  uint32_t* table = smem;                 // 4 x 256 words
  uint32_t* tile = smem + 4 * 256;        // kTilePieces x kRowWords words
  for (int i = threadIdx.x; i < 4 * 256; i += blockDim.x) table[i] = c_table[i];
  const uint64_t tile_begin = static_cast<uint64_t>(blockIdx.x) * kTilePieces * kPiece;
  const int vecs_per_piece = kPiece / 16;
  for (int v = threadIdx.x; v < kTilePieces * vecs_per_piece; v += blockDim.x) {
    const uint64_t at = tile_begin + static_cast<uint64_t>(v) * 16;
    uint32_t w[4] = {0, 0, 0, 0};
    if (at + 16 <= data_len && (reinterpret_cast<uintptr_t>(data) % 16) == 0) {
      uint4 q = *reinterpret_cast<const uint4*>(data + at);
      w[0] = q.x; w[1] = q.y; w[2] = q.z; w[3] = q.w;
    } else {
      for (int b = 0; b < 16; ++b)
        if (at + b < data_len) w[b / 4] |= static_cast<uint32_t>(data[at + b]) << (8 * (b % 4));
    }
    const int piece = v / vecs_per_piece, word = (v % vecs_per_piece) * 4;
    uint32_t* row = tile + piece * kRowWords + word;
    row[0] = w[0]; row[1] = w[1]; row[2] = w[2]; row[3] = w[3];
  }
  __syncthreads();
  const uint64_t piece = static_cast<uint64_t>(blockIdx.x) * kTilePieces + threadIdx.x;
  if (piece * kPiece >= padded_len) return;
  const uint32_t* row = tile + threadIdx.x * kRowWords;
  uint32_t crc = 0;
#pragma unroll 8
  for (int i = 0; i < kPiece / 4; ++i) {
    uint32_t x = crc ^ row[i];
    crc = table[3 * 256 + (x & 0xFF)] ^ table[2 * 256 + ((x >> 8) & 0xFF)] ^
          table[256 + ((x >> 16) & 0xFF)] ^ table[x >> 24];
  }
  out[piece] = crc;
}

__global__ void chunk_crcs(const uint32_t* pieces, uint64_t padded_len, uint64_t chunk_size,
                           uint32_t* out, const uint32_t* expected, int* ok_flag) {
  __shared__ uint32_t crc_s[kThreads];
  __shared__ uint64_t len_s[kThreads];
  const uint64_t chunk = blockIdx.x;
  const uint64_t begin = chunk * chunk_size;
  const uint64_t len = min(chunk_size, padded_len - begin);
  const uint64_t n = len / kPiece;
  const uint64_t first = begin / kPiece;
  const uint64_t per = (n + kThreads - 1) / kThreads;
  const uint64_t lo = min(n, threadIdx.x * per), hi = min(n, lo + per);
  uint32_t acc = 0;
  for (uint64_t k = lo; k < hi; ++k) acc = shift(acc, kPiece) ^ pieces[first + k];
  crc_s[threadIdx.x] = acc;
  len_s[threadIdx.x] = (hi - lo) * kPiece;
  __syncthreads();
  for (int stride = 1; stride < kThreads; stride *= 2) {
    int i = threadIdx.x * 2 * stride;
    if (i + stride < kThreads) {
      crc_s[i] = shift(crc_s[i], len_s[i + stride]) ^ crc_s[i + stride];
      len_s[i] += len_s[i + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const uint32_t crc = ~(shift(0xFFFFFFFFu, len) ^ crc_s[0]);
    out[chunk] = crc;
    if (expected != nullptr && crc != expected[chunk]) atomicExch(ok_flag, 0);
  }
}

// __constant__ memory exists once per device: upload to each device the first time a
// kernel runs there (the device current on the calling thread).
void upload_tables() {
  static std::mutex lock;
  static std::set<int> uploaded;
  int device = 0;
  check(cudaGetDevice(&device), "current device");
  std::lock_guard<std::mutex> guard(lock);
  if (uploaded.count(device)) return;
  uint32_t table[4 * 256], pow2k[64];
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    table[i] = c;
  }
  for (int k = 1; k < 4; ++k)
    for (uint32_t i = 0; i < 256; ++i)
      table[k * 256 + i] = (table[(k - 1) * 256 + i] >> 8) ^ table[table[(k - 1) * 256 + i] & 0xFF];
  check(cudaFuncSetAttribute(piece_crcs, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(kPieceSmem)), "raise shared memory limit");
  uint32_t p = 0x40000000u;  // x^1
  for (auto& e : pow2k) {
    e = p;
    p = mul_mod(p, p);
  }
  check(cudaMemcpyToSymbol(c_table, table, sizeof(table)), "upload CRC table");
  check(cudaMemcpyToSymbol(c_x_pow_2k, pow2k, sizeof(pow2k)), "upload CRC powers");
  uploaded.insert(device);
}

}  // namespace

uint64_t crc32c_scratch_bytes(uint64_t padded_len) { return padded_len / kPiece * 4; }

void crc32c_chunks_async(const uint8_t* data, uint64_t data_len, uint64_t padded_len,
                         uint64_t chunk_size, uint32_t* scratch, uint64_t scratch_bytes,
                         uint32_t* out, const uint32_t* expected, int* ok_flag, uintptr_t stream) {
  if (padded_len % 4096 || data_len > padded_len || chunk_size == 0 || chunk_size % 4096)
    throw std::invalid_argument("crc32c_chunks: lengths must be multiples of 4096 and cover the data");
  const uint64_t num_chunks = (padded_len + chunk_size - 1) / chunk_size;
  if (num_chunks == 0) return;
  if (scratch_bytes < crc32c_scratch_bytes(padded_len))
    throw std::invalid_argument("crc32c_chunks: scratch holds " + std::to_string(scratch_bytes) +
                                " bytes, " + std::to_string(crc32c_scratch_bytes(padded_len)) +
                                " needed");
  upload_tables();
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const uint64_t num_pieces = padded_len / kPiece;
  piece_crcs<<<static_cast<unsigned>((num_pieces + kTilePieces - 1) / kTilePieces), kTilePieces,
               kPieceSmem, s>>>(data, data_len, padded_len, scratch);
  chunk_crcs<<<static_cast<unsigned>(num_chunks), kThreads, 0, s>>>(scratch, padded_len, chunk_size,
                                                                     out, expected, ok_flag);
  check(cudaGetLastError(), "crc32c kernels");
}

}  // namespace thaw_cuda
