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
// Code: fwd.cuh (GEMM1 kernel, run_forward), down.cuh (GEMM2, combine), gemm.cuh (tiles),
// csrc/ptx.cuh (the CUDA-only primitives; csrc/emu/ runs the rest on the CPU in the tests).
// On compute capability 9.0 (a build with sm_90a and the CUTLASS headers), 16-bit inputs (every
// activation) take fwd_sm90.cuh instead: x gathered into sorted order, then
// CUTLASS ptr-array grouped GEMMs with TMA and wgmma (sm90_grouped.cu), then the combine.
// Tiling (gemm.cuh): 128 x 128 x BK blocks, 8 warps, mma.sync bf16/fp16 -> fp32 on ldmatrix
// fragments (fp32 inputs: SIMT fmaf, exact fp32), 3-stage cp.async pipeline, 57-61 KB of
// shared memory; swiglu's GEMM1 uses 128 x 64 tiles (two accumulators per thread).
// Determinism: no atomics anywhere; every output element is written by exactly one thread with
// a fixed summation order.
//
// Floor (goal shape d = 1024, h = 4096, E = 6, T = 32k, k = 1, bf16): 2 GEMMs x 2*T*d*h =
// 0.55 TFLOP -> ~0.7 ms at the ~790 TFLOP/s of wgmma on an H100/H200; memory (x, w, hid
// written + read, y) ~0.4 GB -> ~0.13 ms, so compute-bound. The mma.sync kernels (no wgmma /
// TMA) top out near 60% of that peak on Hopper: hence the sm_90 path above.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <tuple>

#include "cuda_device.h"
#include "skill_ffn/ffn.h"
#include "skill_ffn/fwd.cuh"
#include "skill_ffn/fwd_sm90.cuh"
#include "skill_ffn/sm90_path.h"
#include "skill_ffn/route.h"

namespace skillkern {
namespace ffn {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> skill_ffn_fwd_cuda(
    const at::Tensor& x_in, const at::Tensor& skill_ids, const at::Tensor& scale_in, const at::Tensor& w1_in,
    const at::Tensor& w2_in, const std::optional<at::Tensor>& b1_in, const std::optional<at::Tensor>& b2_in,
    c10::string_view activation) {
  const int act = check_ffn_fwd_args(x_in, skill_ids, scale_in, w1_in, w2_in, b1_in, b2_in, activation);
  check_cuda_device(x_in, "skill_ffn", "x");
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  // Strided inputs (e.g. transposed weight views) are copied once; contiguous ones pass as is.
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor w1 = w1_in.contiguous();
  const at::Tensor w2 = w2_in.contiguous();
  const std::optional<at::Tensor> b1 = contiguous_opt(b1_in);
  const std::optional<at::Tensor> b2 = contiguous_opt(b2_in);
  const int64_t E = w1.size(0);
  const int64_t N = scale.numel();  // T * k slots
  SK_CHECK_ARG(N <= std::numeric_limits<int32_t>::max(), "skill_ffn", "skill_ids",
               "has too many slots (T*k = ", N, "; order is int32, so at most 2^31 - 1)");

  at::Tensor order, offsets;
  std::tie(order, offsets) = skill_route_cuda(skill_ids, E);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor y;
  if (sm90_path(x, w1, w2, b1, b2, act)) {
    y = at::empty({x.size(0), x.size(1)}, x.options());
    run_forward_sm90(y, x, scale, w1, w2, b1, b2, act, order, offsets, sm_count(x), stream);
  } else {
    y = run_forward(x, scale, w1, w2, b1, b2, act, order, offsets, stream);
  }
  return {y, order, offsets};
}

}  // namespace
}  // namespace ffn

TORCH_LIBRARY_IMPL(skillkern, CUDA, m) {
  m.impl("skill_ffn_fwd_cuda", &ffn::skill_ffn_fwd_cuda);
}

}  // namespace skillkern
