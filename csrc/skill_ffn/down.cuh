// The "down" row GEMM shared by the forward (GEMM2: hidden @ w2 + b2, times the slot weight)
// and the backward (dX = dZ @ w1^T), and the deterministic k-slot combine after it.
//
//   out[order[p], :] = scale[order[p]] * (a[p, :] @ w[e] + bias[e])   for sorted p of skill e
//
// a is a sorted-order buffer (N, K) written by the up kernel; out has one row per slot, so
// the unpermute is this epilogue's scattered row store (no permuted copy). The empty slots
// [offsets[E], N) form one more bucket whose tiles only write zero rows (so `out` needs no
// memset: every row is written exactly once). For k = 1, out IS the result (slot = token);
// for k > 1 combine_slots sums each token's k rows in slot order in fp32 - a fixed order, so
// the result is bitwise reproducible (no atomics), the same scheme as the Triton backend.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

#include "skill_ffn/gemm.cuh"

namespace skillkern {
namespace ffn {
namespace {

// 128 x 128 tile, 8 warps of 64 x 32: 64 fp32 accumulators per thread.
template <typename T>
using DownShape = TileShape<T, 128, 128, 2, 4>;

template <typename T, bool B_COL>
__global__ void __launch_bounds__(DownShape<T>::THREADS, B_COL ? kTwoBlocks<T> : 1)
    _skill_down_kernel(const T* __restrict__ a, const T* __restrict__ w, const T* __restrict__ bias,
                       const float* __restrict__ scale, T* __restrict__ out, const int32_t* __restrict__ order,
                       const int32_t* __restrict__ offsets, int64_t N, int E, int64_t K, int64_t n_out,
                       int64_t w_skill_stride, int64_t ldb, bool vec_a, bool vec_b, bool vec_o) {
  using S = DownShape<T>;
  unsigned char* smem = dynamic_smem();
  __shared__ int64_t s_arow[S::BM];
  __shared__ int64_t s_slot[S::BM];
  const int64_t n_ct = (n_out + S::BN - 1) / S::BN;
  const RowTile tile = row_tile(offsets, E, E + 1, N, S::BM, n_ct);
  if (tile.skill < 0) return;  // whole block: surplus tile
  const int64_t n0 = int64_t(tile.pid_n) * S::BN;
  for (int r = threadIdx.x; r < S::BM; r += S::THREADS) {
    const int64_t pos = tile.row0 + r;
    const bool ok = pos < tile.row_end;
    s_slot[r] = ok ? int64_t(order[pos]) : int64_t(-1);
    s_arow[r] = ok ? pos * K : int64_t(-1);
  }
  __syncthreads();

  if (tile.skill == E) {  // empty slots: zero rows, no GEMM (whole block)
    for (int i = threadIdx.x; i < S::BM * S::BN; i += S::THREADS) {
      const int r = i / S::BN;
      const int64_t col = n0 + i % S::BN;
      if (s_slot[r] >= 0 && col < n_out) out[s_slot[r] * n_out + col] = from_f32<T>(0.f);
    }
    return;
  }

  WarpAcc<T, S::FM, S::FN> acc[1];
  acc[0].zero();
  const T* const b[1] = {w + tile.skill * w_skill_stride};
  row_mainloop<T, S, B_COL, 1>(smem, s_arow, a, K, b, ldb, n0, n_out, vec_a, vec_b, acc);

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  float* stage = reinterpret_cast<float*>(smem) + warp * 16 * kStageLd;
  const T* bias_e = bias != nullptr ? bias + tile.skill * n_out : nullptr;
#pragma unroll
  for (int i = 0; i < S::FM; ++i) {
#pragma unroll
    for (int j = 0; j < S::FN; ++j) {
      float v[8];
      block_values(acc[0], i, j, stage, v);
      const int r = (warp / S::WARPS_N) * S::WM + 16 * i + (lane >> 1);
      const int64_t col = n0 + (warp % S::WARPS_N) * S::WN + 16 * j + (lane & 1) * 8;
      const int64_t slot = s_slot[r];
      if (slot < 0 || col >= n_out) continue;
      const int n = n_out - col < 8 ? int(n_out - col) : 8;
      add_bias8(v, bias_e != nullptr ? bias_e + col : nullptr, n);
      if (scale != nullptr) {
        const float c = scale[slot];
#pragma unroll
        for (int q = 0; q < 8; ++q) v[q] *= c;
      }
      store8(out + slot * n_out + col, v, n, vec_o);
    }
  }
}

// y[t, c] = sum_j buf[t * k + j, c] for j = 0 .. k-1 in that order, accumulated in fp32.
// Each thread handles 8 consecutive columns (16-byte loads/stores when vec).
template <typename T>
__global__ void __launch_bounds__(256)
    _combine_slots_kernel(const T* __restrict__ buf, T* __restrict__ y, int64_t n_tok, int k, int64_t d,
                          bool vec) {
  const int64_t groups = (d + 7) / 8;  // 8-column groups per row
  const int64_t total = n_tok * groups;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t t = i / groups;
    const int64_t c0 = (i % groups) * 8;
    const int n = d - c0 < 8 ? int(d - c0) : 8;
    float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int j = 0; j < k; ++j) {
      const T* src = buf + (t * k + j) * d + c0;
#pragma unroll
      for (int q = 0; q < 8; ++q)
        if (q < n) s[q] += to_f32(src[q]);
    }
    store8(y + t * d + c0, s, n, vec);
  }
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Sets the dynamic shared-memory limit of `kernel` (needed above 48 KB) and checks the grid.
template <typename Kernel>
inline void prepare_launch(Kernel kernel, int smem_bytes, int64_t grid_x) {
  TORCH_CHECK(grid_x < (int64_t(1) << 31), "skill_ffn: problem too large (", grid_x, " blocks)");
  set_max_dynamic_smem(kernel, smem_bytes);
}

// GEMM2 (B_COL = false: w = w2 (E, K = h, n_out = d)) or dX (B_COL = true: w = w1 (E, n_out = d,
// K = h1) read transposed). bias / scale may be null.
template <typename T, bool B_COL>
void launch_down(const T* a, const T* w, const T* bias, const float* scale, T* out, const int32_t* order,
                 const int32_t* offsets, int64_t N, int E, int64_t K, int64_t n_out, bool w_aligned,
                 cudaStream_t stream) {
  using S = DownShape<T>;
  using L = LoopSmem<T, S, false, B_COL, 1>;
  const int64_t n_ct = cdiv(n_out, S::BN);
  if (N == 0 || n_ct == 0) return;
  const int64_t grid = (cdiv(N, S::BM) + E + 1) * n_ct;
  constexpr int V = kVec<T>;
  // B row layout: rows of length n_out (stride n_out); col layout: rows of length K (stride K)
  const bool vec_a = K % V == 0 && aligned16(a);
  const bool vec_b = w_aligned && (B_COL ? K % V == 0 : n_out % V == 0);
  const bool vec_o = n_out % V == 0 && aligned16(out);
  auto kernel = _skill_down_kernel<T, B_COL>;
  prepare_launch(kernel, L::BYTES, grid);
  SK_LAUNCH(kernel, unsigned(grid), S::THREADS, L::BYTES, stream, a, w, bias, scale, out, order, offsets,
                       N, E, K, n_out, K * n_out, B_COL ? K : n_out, vec_a, vec_b, vec_o);
}

template <typename T>
void launch_combine(const T* buf, T* y, int64_t n_tok, int k, int64_t d, cudaStream_t stream) {
  const int64_t total = n_tok * cdiv(d, 8);
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>(cdiv(total, 256), int64_t(1) << 20);  // grid-stride past that
  const bool vec = d % kVec<T> == 0 && aligned16(buf) && aligned16(y);
  auto kernel = _combine_slots_kernel<T>;
  SK_LAUNCH(kernel, unsigned(blocks), 256, 0, stream, buf, y, n_tok, k, d, vec);
}

}  // namespace
}  // namespace ffn
}  // namespace skillkern
