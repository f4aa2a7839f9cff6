// The skill-FFN forward after routing (ffn_fwd.cu calls run_forward): GEMM1 (the up
// kernel below), GEMM2 and the k-slot combine (down.cuh). Design notes: ffn_fwd.cu.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <optional>
#include <type_traits>

#include "common.h"
#include "skill_ffn/act.cuh"
#include "skill_ffn/down.cuh"
#include "skill_ffn/ffn.h"
#include "skill_ffn/gemm.cuh"

namespace skillkern {
namespace ffn {
namespace {

// NB = 1: one B tile per step, 128 x 128 (8 warps of 64 x 32). NB = 2 (swiglu: gate and up
// tiles): 128 x 64 (8 warps of 32 x 32), so the two accumulators stay at 64 registers.
template <typename T, int NB>
using UpShape = typename std::conditional<NB == 1, TileShape<T, 128, 128, 2, 4>, TileShape<T, 128, 64, 4, 2>>::type;

// hid[p, j] = act(x[order[p] / k] @ w1[e][:, j] + b1[e][j]) for the sorted positions p of
// skill e and hidden columns j < h. swiglu (NB = 2): w1[e] is (d, 2h), the gate is column j
// and the up value column h + j.
template <typename T, int NB>
__global__ void __launch_bounds__(UpShape<T, NB>::THREADS)
    _skill_up_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w1, const T* __restrict__ b1,
                         T* __restrict__ hid, const int32_t* __restrict__ order,
                         const int32_t* __restrict__ offsets, int64_t N, int E, int64_t d, int64_t h, int k,
                         int act, bool vec_a, bool vec_b, bool vec_o) {
  using S = UpShape<T, NB>;
  unsigned char* smem = dynamic_smem();
  __shared__ int64_t s_arow[S::BM];
  const int64_t h1 = NB * h;
  const int64_t n_ct = (h + S::BN - 1) / S::BN;
  const RowTile tile = row_tile(offsets, E, E, N, S::BM, n_ct);
  if (tile.skill < 0) return;  // whole block: surplus tile
  const int64_t n0 = int64_t(tile.pid_n) * S::BN;
  for (int r = threadIdx.x; r < S::BM; r += S::THREADS) {
    const int64_t pos = tile.row0 + r;
    s_arow[r] = pos < tile.row_end ? int64_t(order[pos] / k) * d : int64_t(-1);  // token row of x
  }
  __syncthreads();

  WarpAcc<T, S::FM, S::FN> acc[NB];
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) acc[nb].zero();
  const T* w_e = w1 + tile.skill * d * h1;
  const T* b[NB];
  b[0] = w_e;
  if constexpr (NB == 2) b[1] = w_e + h;  // up half
  row_mainloop<T, S, false, NB>(smem, s_arow, x, d, b, h1, n0, h, vec_a, vec_b, acc);

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  float* stage = reinterpret_cast<float*>(smem) + warp * 16 * kStageLd;
  const T* bias = b1 != nullptr ? b1 + tile.skill * h1 : nullptr;
#pragma unroll
  for (int i = 0; i < S::FM; ++i) {
#pragma unroll
    for (int j = 0; j < S::FN; ++j) {
      float z[8];
      block_values(acc[0], i, j, stage, z);
      float u[8];
      if constexpr (NB == 2) block_values(acc[1], i, j, stage, u);
      const int64_t pos = tile.row0 + (warp / S::WARPS_N) * S::WM + 16 * i + (lane >> 1);
      const int64_t col = n0 + (warp % S::WARPS_N) * S::WN + 16 * j + (lane & 1) * 8;
      if (pos >= tile.row_end || col >= h) continue;
      const int n = h - col < 8 ? int(h - col) : 8;
      add_bias8(z, bias != nullptr ? bias + col : nullptr, n);
      if constexpr (NB == 2) {
        add_bias8(u, bias != nullptr ? bias + h + col : nullptr, n);
#pragma unroll
        for (int q = 0; q < 8; ++q) z[q] = z[q] * sigmoid(z[q]) * u[q];
      } else {
#pragma unroll
        for (int q = 0; q < 8; ++q) z[q] = act_fwd(z[q], act);
      }
      store8(hid + pos * h + col, z, n, vec_o);
    }
  }
}

template <typename T, int NB>
void launch_up_fwd(const T* x, const T* w1, const T* b1, T* hid, const int32_t* order, const int32_t* offsets,
                   int64_t N, int E, int64_t d, int64_t h, int k, int act, cudaStream_t stream) {
  using S = UpShape<T, NB>;
  using L = LoopSmem<T, S, false, false, NB>;
  const int64_t n_ct = cdiv(h, S::BN);
  if (N == 0 || n_ct == 0) return;
  const int64_t grid = (cdiv(N, S::BM) + E) * n_ct;
  constexpr int V = kVec<T>;
  const bool vec_a = d % V == 0 && aligned16(x);
  const bool vec_b = h % V == 0 && aligned16(w1);  // rows of NB * h, the up half starts at h
  const bool vec_o = h % V == 0 && aligned16(hid);
  auto kernel = _skill_up_fwd_kernel<T, NB>;
  prepare_launch(kernel, L::BYTES, grid);
  SK_LAUNCH(kernel, unsigned(grid), S::THREADS, L::BYTES, stream, x, w1, b1, hid, order, offsets, N, E,
                       d, h, k, act, vec_a, vec_b, vec_o);
}

// The forward after routing, on `stream`: y (T, d). Inputs contiguous, on one device, checked
// (ffn.h); order / offsets from skill_route_cuda.
inline at::Tensor run_forward(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& w1,
                              const at::Tensor& w2, const std::optional<at::Tensor>& b1,
                              const std::optional<at::Tensor>& b2, int act, const at::Tensor& order,
                              const at::Tensor& offsets, cudaStream_t stream) {
  const int64_t n_tok = x.size(0), d = x.size(1), k = scale.size(1);
  const int64_t E = w1.size(0), h = w2.size(1);
  const int64_t N = n_tok * k;
  at::Tensor y = at::empty({n_tok, d}, x.options());
  if (N == 0) return y;
  at::Tensor hid = at::empty({N, h}, x.options());  // sorted order; empty-slot rows stay unwritten
  at::Tensor out = k == 1 ? y : at::empty({N, d}, x.options());
  SK_DISPATCH_FLOAT(x.scalar_type(), "skill_ffn", [&] {
    using T = scalar_t;
    const int32_t* ord = order.const_data_ptr<int32_t>();
    const int32_t* off = offsets.const_data_ptr<int32_t>();
    const T* xp = reinterpret_cast<const T*>(x.const_data_ptr());
    const T* w1p = reinterpret_cast<const T*>(w1.const_data_ptr());
    const T* w2p = reinterpret_cast<const T*>(w2.const_data_ptr());
    T* hidp = reinterpret_cast<T*>(hid.mutable_data_ptr());
    T* outp = reinterpret_cast<T*>(out.mutable_data_ptr());
    if (act == kSwiglu) {
      launch_up_fwd<T, 2>(xp, w1p, ptr_or_null<T>(b1), hidp, ord, off, N, int(E), d, h, int(k), act, stream);
    } else {
      launch_up_fwd<T, 1>(xp, w1p, ptr_or_null<T>(b1), hidp, ord, off, N, int(E), d, h, int(k), act, stream);
    }
    launch_down<T, false>(hidp, w2p, ptr_or_null<T>(b2), scale.const_data_ptr<float>(), outp, ord, off, N, int(E),
                          h, d, aligned16(w2p), stream);
    if (k > 1) launch_combine<T>(outp, reinterpret_cast<T*>(y.mutable_data_ptr()), n_tok, int(k), d, stream);
  });
  return y;
}

}  // namespace
}  // namespace ffn
}  // namespace skillkern
