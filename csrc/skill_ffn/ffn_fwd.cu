// skill_ffn_fwd_cuda: the skill-routed FFN forward, natively (contract in ffn.h, math in
// skillkern/ops/skill_ffn/reference.py, the same design as the Triton kernels.py):
//
//   1. route (route.cu): stable counting sort of the N = T*k slots by skill -> order, offsets.
//   2. GEMM1 (_skill_up_fwd_kernel): hid[p] = act(x[token(order[p])] @ w1[e] + b1[e]) for the
//      sorted positions p of skill e. x rows are gathered through `order` while they are
//      copied to shared memory (no permuted copy of x); bias and activation run in the
//      epilogue; swiglu accumulates the gate and up column tiles side by side (two B tiles,
//      one A tile) and stores silu(gate) * up. hid is (N, h) in x's dtype, sorted order.
//   3. GEMM2 (down.cuh): y_slot = c * (hid @ w2[e] + b2[e]) scattered to slot rows, then the
//      k slots of each token are summed in slot order (k = 1 writes y directly).
//
// Grouped GEMM. cuBLAS grouped/batched GEMM takes each group's size (tokens per skill) on the
// host, i.e. a device->host copy of `offsets` and a stream sync every step, which also breaks
// CUDA graphs. Here each block finds its skill and row tile from `offsets` on the device
// (gemm.cuh row_tile: a loop over E, like Triton's _row_tile); the grid is sized for the worst
// case, ceil(N / BM) + E row tiles, and surplus blocks exit at once. A tile never spans two
// skills, so every block runs one dense GEMM against one skill's weights.
//
// Tiling (gemm.cuh): 128 x 128 x BK blocks, 8 warps, wmma bf16/fp16 -> fp32 (fp32 inputs: SIMT
// fmaf, exact fp32), 3-stage cp.async pipeline, 57-61 KB of shared memory; swiglu's GEMM1
// uses 128 x 64 tiles (two accumulators per thread). Determinism: no atomics anywhere; every
// output element is written by exactly one thread with a fixed summation order.
//
// Floor (goal shape d = 1024, h = 4096, E = 6, T = 32k, k = 1, bf16): 2 GEMMs x 2*T*d*h =
// 0.55 TFLOP -> ~0.7 ms at the ~790 TFLOP/s of wgmma on an H100/H200; memory (x, w, hid
// written + read, y) ~0.4 GB -> ~0.13 ms, so compute-bound. This kernel uses mma.sync-class
// wmma (no wgmma / TMA), whose ceiling on Hopper is roughly 60% of that peak.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <tuple>

#include "skill_ffn/act.cuh"
#include "skill_ffn/down.cuh"
#include "skill_ffn/ffn.h"
#include "skill_ffn/gemm.cuh"
#include "skill_ffn/route.h"

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
  extern __shared__ __align__(128) unsigned char smem[];
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
  kernel<<<unsigned(grid), S::THREADS, L::BYTES, stream>>>(x, w1, b1, hid, order, offsets, N, E, d, h, k, act,
                                                           vec_a, vec_b, vec_o);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
const T* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? reinterpret_cast<const T*>(t->const_data_ptr()) : nullptr;
}

std::optional<at::Tensor> contiguous_opt(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> skill_ffn_fwd_cuda(
    const at::Tensor& x_in, const at::Tensor& skill_ids, const at::Tensor& scale_in, const at::Tensor& w1_in,
    const at::Tensor& w2_in, const std::optional<at::Tensor>& b1_in, const std::optional<at::Tensor>& b2_in,
    c10::string_view activation) {
  const int act = check_ffn_fwd_args(x_in, skill_ids, scale_in, w1_in, w2_in, b1_in, b2_in, activation);
  SK_CHECK_ARG(x_in.is_cuda(), "skill_ffn", "x", "must be a CUDA tensor, got ", x_in.device());
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  // Strided inputs (e.g. transposed weight views) are copied once; contiguous ones pass as is.
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor w1 = w1_in.contiguous();
  const at::Tensor w2 = w2_in.contiguous();
  const std::optional<at::Tensor> b1 = contiguous_opt(b1_in);
  const std::optional<at::Tensor> b2 = contiguous_opt(b2_in);
  const int64_t n_tok = x.size(0), d = x.size(1), k = scale.size(1);
  const int64_t E = w1.size(0), h = w2.size(1);
  const int64_t N = n_tok * k;
  SK_CHECK_ARG(N <= std::numeric_limits<int32_t>::max(), "skill_ffn", "skill_ids",
               "has too many slots (T*k = ", N, "; order is int32, so at most 2^31 - 1)");

  at::Tensor order, offsets;
  std::tie(order, offsets) = skill_route_cuda(skill_ids, E);
  at::Tensor y = at::empty({n_tok, d}, x.options());
  if (N == 0) return {y, order, offsets};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
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
  return {y, order, offsets};
}

}  // namespace
}  // namespace ffn

TORCH_LIBRARY_IMPL(skillkern, CUDA, m) {
  m.impl("skill_ffn_fwd_cuda", &ffn::skill_ffn_fwd_cuda);
}

}  // namespace skillkern
