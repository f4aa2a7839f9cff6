// skill_ffn_bwd_cuda: the skill-routed FFN backward (contract in ffn.h; the same plan as the
// Triton skill_ffn_bwd). With Z = x W1 + b1, H = act(Z), y_slot = c (H W2 + b2):
//
//   1. _skill_up_bwd_kernel, per (sorted row tile of skill e, hidden column tile):
//        Z = x[tok] @ w1[e] + b1[e]          recomputed (the forward keeps no activations:
//                                             one extra GEMM for ~2000x less saved state)
//        G = dy[tok] @ w2[e]^T               (w2 read transposed through its layout)
//        dZ = c * G * act'(Z)                (swiglu: d gate, d up for both halves)
//        Hc = c * H                          (the dW2 operand: dW2 = sum_p (c_p H_p)^T dy_tok)
//        dc_part[p, tile] = sum_j G * H      (H rounded to x's dtype, as the forward used it)
//      Both K-loops run over d and gather x / dy rows through `order`; one tile of 128 rows x
//      64 hidden columns holds 2-3 fp32 accumulators (z, up, g) per thread.
//   2. _skill_wgrad_kernel: dW1[e] = X_e^T dZ_e, db1[e] = sum dZ_e; dW2[e] = Hc_e^T dY_e,
//      db2[e] = sum c dY_e. One block owns one (e, P tile, Q tile) of dW and runs over ALL
//      rows of skill e (no split-K, no atomics): deterministic, and an unused skill gets exact
//      zeros. The first P tile's blocks also sum their B tiles' columns for the bias grad.
//   3. dX = dZ @ w1^T with down.cuh (w1 read transposed), k slots combined in slot order.
//   4. _skill_dscale_kernel: dscale[slot] = sum of the dc partials + dy[tok] . b2[e], one warp
//      per slot in a fixed order (0 for empty slots).
//
// Code: bwd.cuh (kernels 1, 2, 4 and run_backward), down.cuh (3); this file is the entry point.
// On compute capability 9.0 (a build with sm_90a and the CUTLASS headers), 16-bit inputs (every
// activation) take bwd_sm90.cuh instead: the same five GEMMs as CUTLASS grouped GEMMs
// with TMA and wgmma (sm90_grouped.cu) on rows gathered into sorted order.
// Determinism: no atomics; every sum has a fixed order. Precision: fp32 accumulation
// everywhere; fp32 inputs take the SIMT fmaf path (exact fp32, see gemm.cuh).
// Shared memory: up_bwd 128 x 64 tiles, 3 stages of A + 2 B tiles = 57 KB (16-bit and fp32);
// wgrad 128 x 128, A^T + B per stage = 52 KB.
// Floor (goal shape d = 1024, h = 4096, E = 6, T = 32k, k = 1, bf16): 5 GEMMs of 2*T*d*h
// (recompute Z, G, dW1, dW2, dX) = 1.4 TFLOP -> ~1.7 ms at ~790 TFLOP/s; compute-bound.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <vector>

#include "skill_ffn/bwd.cuh"
#include "skill_ffn/bwd_sm90.cuh"
#include "cuda_device.h"
#include "skill_ffn/ffn.h"
#include "skill_ffn/sm90_path.h"

namespace skillkern {
namespace ffn {
namespace {

std::vector<at::Tensor> skill_ffn_bwd_cuda(const at::Tensor& dy_in, const at::Tensor& x_in,
                                           const at::Tensor& scale_in, const at::Tensor& w1_in,
                                           const at::Tensor& w2_in, const std::optional<at::Tensor>& b1_in,
                                           const std::optional<at::Tensor>& b2_in, const at::Tensor& order_in,
                                           const at::Tensor& offsets_in, c10::string_view activation,
                                           bool need_dscale) {
  const int act =
      check_ffn_bwd_args(dy_in, x_in, scale_in, w1_in, w2_in, b1_in, b2_in, order_in, offsets_in, activation);
  check_cuda_device(x_in, "skill_ffn", "x");
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  // dy from autograd is often strided (e.g. expanded from a sum): copy once to rows
  const at::Tensor dy = dy_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor w1 = w1_in.contiguous();
  const at::Tensor w2 = w2_in.contiguous();
  const at::Tensor order = order_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const std::optional<at::Tensor> b1 = contiguous_opt(b1_in);
  const std::optional<at::Tensor> b2 = contiguous_opt(b2_in);
  SK_CHECK_ARG(scale.numel() <= std::numeric_limits<int32_t>::max(), "skill_ffn", "scale",
               "has too many slots (T*k = ", scale.numel(), "; order is int32, so at most 2^31 - 1)");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (sm90_path(x, w1, w2, b1, b2, act, {&dy}))
    return run_backward_sm90(dy, x, scale, w1, w2, b1, b2, order, offsets, act, need_dscale, sm_count(x), stream);
  return run_backward(dy, x, scale, w1, w2, b1, b2, order, offsets, act, need_dscale, stream);
}

}  // namespace
}  // namespace ffn

TORCH_LIBRARY_IMPL(skillkern, CUDA, m) {
  m.impl("skill_ffn_bwd_cuda", &ffn::skill_ffn_bwd_cuda);
}

}  // namespace skillkern
