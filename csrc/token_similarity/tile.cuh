// Device building blocks shared by the token-similarity forward (fwd.cu) and backward (bwd.cu):
// asynchronous tile loads into shared memory, one warp's share of a block GEMM tile on tensor
// cores (nvcuda::wmma, fp16/bf16 in, fp32 accumulate) or on CUDA cores (exact fp32 FMA), and
// warp reductions. Every block has kThreads = 256 threads (8 warps).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "common.h"
#include "ptx.cuh"

namespace skillkern {
namespace toksim {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Shared-memory row pitch (elements) of a staged operand tile with `cols` columns: +16 bytes, so
// rows start 16-byte aligned (cp.async, wmma) and consecutive rows fall on different banks.
template <typename T>
__host__ __device__ constexpr int operand_pitch(int cols) { return cols + 16 / int(sizeof(T)); }

// ---------------------------------------------------------------------------- async copies

// Stage rows [first_row, first_row + ROWS) x columns [col0, col0 + COLS) of a row-major
// (n_rows_total, ld) matrix into smem (pitch LDS). Rows at or past n_rows_valid (relative to
// first_row) and columns at or past ld are zero-filled by plain stores (no global address is
// formed for them); so are padding rows (row_mask[r] == 0; row_mask = the mask entry of
// first_row, or null): whatever padding holds (NaN, inf) is selected away, never multiplied by
// a zero coefficient (0 * NaN = NaN). `vec`: ld is a multiple of 16 bytes and the base is 16-byte aligned, so
// whole 16-byte pieces go through cp.async; otherwise a plain element-wise copy (same result,
// synchronous). Either way the caller's cp_async_wait + __syncthreads publish the tile.
template <typename T, int ROWS, int COLS, int LDS>
__device__ __forceinline__ void load_tile(T* __restrict__ smem, const T* __restrict__ base, int64_t first_row,
                                          int64_t n_rows_valid, const uint8_t* __restrict__ row_mask, int64_t ld,
                                          int64_t col0, bool vec) {
  constexpr int kVec = 16 / int(sizeof(T));
  static_assert(COLS % kVec == 0, "tile width must be a whole number of 16-byte pieces");
  static_assert((LDS * int(sizeof(T))) % 16 == 0, "smem rows must stay 16-byte aligned");
  const T* tile = base + first_row * ld + col0;  // only dereferenced inside the problem
  if (vec) {
    constexpr int kPieces = COLS / kVec;
#pragma unroll
    for (int e = threadIdx.x; e < ROWS * kPieces; e += kThreads) {
      const int r = e / kPieces;
      const int c = (e % kPieces) * kVec;
      T* dst = smem + r * LDS + c;
      if (r < n_rows_valid && col0 + c < ld) {  // ld % kVec == 0: a piece is all in or all out
        // a padding row's copy reads nothing and zero-fills
        cp_async16(dst, tile + r * ld + c, row_mask == nullptr || row_mask[r] != 0);
      } else {
        *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
      }
    }
  } else {
    for (int e = threadIdx.x; e < ROWS * COLS; e += kThreads) {
      const int r = e / COLS;
      const int c = e % COLS;
      const bool ok = r < n_rows_valid && col0 + c < ld && (row_mask == nullptr || row_mask[r] != 0);
      smem[r * LDS + c] = ok ? tile[r * ld + c] : from_f32<T>(0.f);
    }
  }
}

// Item, token within the item and real flag of the flat tokens first .. first + COUNT - 1
// (n_tok tokens per item; mask (B, n_tok) bytes or null), one thread each; positions at or past
// `count` get item -1, token 0, not real.
template <int COUNT>
__device__ __forceinline__ void token_metadata(int64_t first, int64_t count, int64_t n_tok,
                                               const uint8_t* __restrict__ mask, int* item, int* tok,
                                               uint8_t* real) {
  for (int j = threadIdx.x; j < COUNT; j += kThreads) {
    const int64_t flat = first + j;
    const int64_t b = flat / n_tok;
    item[j] = j < count ? static_cast<int>(b) : -1;
    tok[j] = j < count ? static_cast<int>(flat - b * n_tok) : 0;
    real[j] = j < count && (mask == nullptr || mask[flat] != 0);
  }
}

// ---------------------------------------------------------------------------- warp tiles

// A warp's WM x WN share of C += A @ B on tensor cores (m16n16k16, fp32 accumulators).
// A is row-major in smem ([m][k], pitch lda). B is either [n][k] (B_NK = true: each B column is
// a contiguous token row, the forward's layout) or [k][n] (the backward's).
template <typename T, int WM, int WN, bool B_NK>
struct TensorCoreTile {
  static constexpr int FM = WM / 16;
  static constexpr int FN = WN / 16;
  using BLayout = typename std::conditional<B_NK, nvcuda::wmma::col_major, nvcuda::wmma::row_major>::type;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[FM][FN];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.f);
  }

  // a: the warp's first A row (k = 0); b: its first B column (k = 0). KC: the k extent.
  template <int KC>
  __device__ __forceinline__ void mma(const T* a, int lda, const T* b, int ldb) {
#pragma unroll
    for (int kk = 0; kk < KC; kk += 16) {
      nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T, nvcuda::wmma::row_major> fa[FM];
      nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T, BLayout> fb[FN];
#pragma unroll
      for (int i = 0; i < FM; ++i) nvcuda::wmma::load_matrix_sync(fa[i], a + i * 16 * lda + kk, lda);
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        const T* pb = B_NK ? b + j * 16 * ldb + kk : b + kk * ldb + j * 16;
        nvcuda::wmma::load_matrix_sync(fb[j], pb, ldb);
      }
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) nvcuda::wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }

  // Row-major fp32 store of the warp tile at c (its first element), pitch ldc (multiple of 4).
  __device__ __forceinline__ void store(float* c, int ldc) const {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
        nvcuda::wmma::store_matrix_sync(c + i * 16 * ldc + j * 16, acc[i][j], ldc, nvcuda::wmma::mem_row_major);
  }

  // f(row, col, value) for every element of the warp tile, two 16-element rows per step
  // (coalesced writes). The fragment layout is opaque, so each 16 x 16 fragment
  // passes through `scratch`: 256 floats of shared memory owned by this warp.
  template <class F>
  __device__ __forceinline__ void visit(float* scratch, F&& f) const {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        nvcuda::wmma::store_matrix_sync(scratch, acc[i][j], 16, nvcuda::wmma::mem_row_major);
        __syncwarp();
#pragma unroll
        for (int e = lane; e < 256; e += 32) f(i * 16 + e / 16, j * 16 + e % 16, scratch[e]);
        __syncwarp();  // every lane has read scratch before the next fragment lands in it
      }
  }
};

// The same warp tile on CUDA cores in exact fp32 (one FMA per product, k in order), for fp32
// inputs: the Triton backend's "ieee" precision. Lane (lr = lane / 8, lc = lane % 8) owns rows
// lr + 4 i and columns lc + 8 j: with smem pitches of 4 x (an odd number) words the 4 row
// addresses and 8 column addresses a warp reads per k fall on distinct banks.
template <int WM, int WN, bool B_NK>
struct SimtTile {
  static constexpr int MI = WM / 4;
  static constexpr int NJ = WN / 8;
  float acc[MI][NJ];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NJ; ++j) acc[i][j] = 0.f;
  }

  template <int KC>
  __device__ __forceinline__ void mma(const float* a, int lda, const float* b, int ldb) {
    const int lane = threadIdx.x % 32;
    const float* pa = a + (lane / 8) * lda;
    const float* pb = B_NK ? b + (lane % 8) * ldb : b + (lane % 8);
#pragma unroll 4
    for (int k = 0; k < KC; ++k) {
      float av[MI], bv[NJ];
#pragma unroll
      for (int i = 0; i < MI; ++i) av[i] = pa[4 * i * lda + k];
#pragma unroll
      for (int j = 0; j < NJ; ++j) bv[j] = B_NK ? pb[8 * j * ldb + k] : pb[k * ldb + 8 * j];
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
  }

  __device__ __forceinline__ void store(float* c, int ldc) const {
    const int lane = threadIdx.x % 32;
    float* pc = c + (lane / 8) * ldc + (lane % 8);
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NJ; ++j) pc[4 * i * ldc + 8 * j] = acc[i][j];
  }

  // f(row, col, value) for every element this lane holds (scratch unused: the layout is known).
  template <class F>
  __device__ __forceinline__ void visit(float* /*scratch*/, F&& f) const {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NJ; ++j) f(lane / 8 + 4 * i, lane % 8 + 8 * j, acc[i][j]);
  }
};

// Tensor cores for 16-bit inputs, exact fp32 on CUDA cores for fp32.
template <typename T, int WM, int WN, bool B_NK>
struct WarpTileFor {
  using type = TensorCoreTile<T, WM, WN, B_NK>;
};
template <int WM, int WN, bool B_NK>
struct WarpTileFor<float, WM, WN, B_NK> {
  using type = SimtTile<WM, WN, B_NK>;
};

// ---------------------------------------------------------------------------- arg-max

// Arg-max with skillkern's tie rule (the Triton kernels' and torch.max's): among equal values
// the lowest token index wins, whatever order the candidates are visited in. kNone marks "no
// real token seen yet" (the stored index is then 0).
constexpr int kNone = 0x7fffffff;
__device__ __forceinline__ void argmax_update(float v, int q, float& best, int& best_q) {
  if (v > best || (v == best && q < best_q)) {
    best = v;
    best_q = q;
  }
}

// Token indices are stored as uint8 / int16 / int32 (op.py index_dtype) and read as any of
// those or int64 (bytes = element size).
__device__ __forceinline__ void store_index(void* base, int bytes, int64_t off, int v) {
  switch (bytes) {
    case 1: static_cast<uint8_t*>(base)[off] = static_cast<uint8_t>(v); break;
    case 2: static_cast<int16_t*>(base)[off] = static_cast<int16_t>(v); break;
    default: static_cast<int32_t*>(base)[off] = v; break;
  }
}
__device__ __forceinline__ int64_t load_index(const void* base, int bytes, int64_t off) {
  switch (bytes) {
    case 1: return static_cast<const uint8_t*>(base)[off];
    case 2: return static_cast<const int16_t*>(base)[off];
    case 4: return static_cast<const int32_t*>(base)[off];
    default: return static_cast<const int64_t*>(base)[off];
  }
}

}  // namespace toksim
}  // namespace skillkern
