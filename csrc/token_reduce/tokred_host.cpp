// token_reduce_fwd_cuda / token_reduce_bwd_cuda: argument checks, Meta (shape) kernels and the
// CUDA entry points that size the launches (token_reduce.h) and call the kernels (*.cu).
// Schemas: csrc/ops.cpp. Same arguments and outputs as skillkern::token_reduce_fwd / _bwd
// (skillkern/ops/token_reduce/op.py), whose Python autograd formula is reused for these ops.
//
// Contract details the kernels rely on: x, d_out, out, lse, mask, scores and w_score are made
// contiguous here (a copy only when they are not); outputs are fresh contiguous tensors;
// S <= 32 (register accumulators); D is bounded by shared memory, checked with a clear error.
// Largest D (token_reduce.h's configurations, S = 24; the backward is the binding one):
//   bf16/fp16: forward 4480, backward 1968 on an H100 (227 KB); 3120 / 1312 on an A100 (163 KB)
//   fp32:      forward 2224, backward 1168 on an H100;          1536 /  768 on an A100
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "common.h"
#include "cuda_device.h"
#include "token_reduce/run.h"

namespace skillkern {
namespace {

using tokred::grads_like;
using tokred::kBwd;
using tokred::kFwd;
using tokred::OptTensor;

void check_float_on(const char* op, const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(is_float_dtype(t.scalar_type()), op, ": `", name, "` must be float32, float16 or bfloat16, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": `", name, "` is on ", t.device(), " but x is on ", x.device());
}

// Checks shared by the CUDA and Meta kernels of both ops; sym_size keeps them valid for
// symbolic shapes (a comparison guards on the value). Returns S.
c10::SymInt check_common(const char* op, const at::Tensor& x, const OptTensor& w_score, const OptTensor& scores,
                         const OptTensor& ln_weight, const OptTensor& ln_bias, const OptTensor& mask, double eps) {
  SK_CHECK_ARG(x.dim() == 3, op, "x", "must have shape (B, N, D), got ", x.sym_sizes());
  SK_CHECK_ARG(is_float_dtype(x.scalar_type()), op, "x", "must be float32, float16 or bfloat16, got ", x.scalar_type());
  const c10::SymInt B = x.sym_size(0), N = x.sym_size(1), D = x.sym_size(2);
  SK_CHECK_ARG(D > 0, op, "x", "must have D >= 1 features, got shape ", x.sym_sizes());
  SK_CHECK_ARG(w_score.has_value() != scores.has_value(), op, "w_score",
               "and `scores`: exactly one must be given (token_reduce passes w_score, token_pool scores)");
  c10::SymInt S;
  if (w_score.has_value()) {
    const at::Tensor& w = *w_score;
    SK_CHECK_ARG(w.dim() == 2 && w.sym_size(0) == D, op, "w_score", "must have shape (D=", D, ", S), got ",
                 w.sym_sizes());
    check_float_on(op, w, "w_score", x);
    S = w.sym_size(1);
  } else {
    const at::Tensor& sc = *scores;
    SK_CHECK_ARG(sc.dim() == 3 && sc.sym_size(0) == B && sc.sym_size(1) == N, op, "scores", "must have shape (B=", B,
                 ", N=", N, ", S), got ", sc.sym_sizes());
    check_float_on(op, sc, "scores", x);
    S = sc.sym_size(2);
  }
  TORCH_CHECK(S >= 1 && S <= tokred::kMaxS, op, ": `", scores.has_value() ? "scores" : "w_score", "` gives S = ", S,
              " output tokens; the cuda backend supports 1 <= S <= ", tokred::kMaxS, " (use backend='triton' beyond)");
  if (ln_weight.has_value()) {
    SK_CHECK_ARG(ln_weight->dim() == 1 && ln_weight->sym_size(0) == D, op, "ln_weight", "must have shape (D=", D,
                 ",), got ", ln_weight->sym_sizes());
    check_float_on(op, *ln_weight, "ln_weight", x);
  }
  if (ln_bias.has_value()) {
    SK_CHECK_ARG(ln_weight.has_value(), op, "ln_bias", "needs ln_weight (LayerNorm without a weight is not supported)");
    SK_CHECK_ARG(ln_bias->dim() == 1 && ln_bias->sym_size(0) == D, op, "ln_bias", "must have shape (D=", D, ",), got ",
                 ln_bias->sym_sizes());
    check_float_on(op, *ln_bias, "ln_bias", x);
  }
  if (mask.has_value()) {
    SK_CHECK_ARG(mask->scalar_type() == at::kBool, op, "mask", "must be a bool tensor (True = real position), got ",
                 mask->scalar_type());
    SK_CHECK_ARG(mask->dim() == 2 && mask->sym_size(0) == B && mask->sym_size(1) == N, op, "mask",
                 "must have shape (B=", B, ", N=", N, "), got ", mask->sym_sizes());
    SK_CHECK_ARG(mask->device() == x.device(), op, "mask", "is on ", mask->device(), " but x is on ", x.device());
  }
  SK_CHECK_ARG(eps > 0.0, op, "eps", "must be > 0, got ", eps);
  return S;
}

void check_bwd_extra(const at::Tensor& d_out, const at::Tensor& out, const at::Tensor& x, const at::Tensor& lse,
                     const c10::SymInt& S) {
  const c10::SymInt B = x.sym_size(0), D = x.sym_size(2);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{d_out, "d_out"}, {out, "out"}}) {
    TORCH_CHECK(t.dim() == 3 && t.sym_size(0) == B && t.sym_size(1) == S && t.sym_size(2) == D, kBwd, ": `", name,
                "` must have shape (B=", B, ", S=", S, ", D=", D, "), got ", t.sym_sizes());
    // out may also be float32: out + out_lo, out as the forward computed it
    const bool is_out = std::string_view(name) == "out";
    TORCH_CHECK(t.scalar_type() == x.scalar_type() || (is_out && t.scalar_type() == at::kFloat), kBwd, ": `", name,
                "` must have x's dtype ", x.scalar_type(), is_out ? " (or float32)" : "", ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), kBwd, ": `", name, "` is on ", t.device(), " but x is on ", x.device());
  }
  SK_CHECK_ARG(lse.dim() == 2 && lse.sym_size(0) == B && lse.sym_size(1) == S, kBwd, "lse", "must have shape (B=", B,
               ", S=", S, "), got ", lse.sym_sizes());
  SK_CHECK_ARG(lse.scalar_type() == at::kFloat, kBwd, "lse", "must be float32, got ", lse.scalar_type());
  SK_CHECK_ARG(lse.device() == x.device(), kBwd, "lse", "is on ", lse.device(), " but x is on ", x.device());
}

// ----------------------------------------------------------------------------- Meta

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd_meta(const at::Tensor& x, const OptTensor& w_score,
                                                        const OptTensor& scores, const OptTensor& ln_weight,
                                                        const OptTensor& ln_bias, const OptTensor& mask, double eps,
                                                        bool pool_input) {
  const c10::SymInt S = check_common(kFwd, x, w_score, scores, ln_weight, ln_bias, mask, eps);
  const c10::SymInt B = x.sym_size(0), D = x.sym_size(2);
  at::Tensor out = at::empty_symint({B, S, D}, x.options());
  at::Tensor lse = at::empty_symint({B, S}, x.options().dtype(at::kFloat));
  at::Tensor lo = tokred::wants_lo(x, scores.has_value(), ln_weight.has_value(), pool_input) ? at::empty_symint({B, S, D}, x.options())
                                                                        : x.new_empty({0});
  return {out, lse, lo};
}

std::vector<at::Tensor> bwd_meta(const at::Tensor& d_out, const at::Tensor& out, const at::Tensor& x,
                                 const OptTensor& w_score, const OptTensor& scores, const OptTensor& ln_weight,
                                 const OptTensor& ln_bias, const OptTensor& mask, const at::Tensor& lse, double eps,
                                 bool /*pool_input*/) {
  const c10::SymInt S = check_common(kBwd, x, w_score, scores, ln_weight, ln_bias, mask, eps);
  check_bwd_extra(d_out, out, x, lse, S);
  return grads_like(x, w_score, scores, ln_weight, ln_bias);
}

// ----------------------------------------------------------------------------- CUDA

void check_cuda_inputs(const char* op, const at::Tensor& x) {
  check_cuda_device(x, op, "x");
  SK_CHECK_ARG(x.size(1) <= std::numeric_limits<int32_t>::max() - 64, op, "x", "has N = ", x.size(1),
               " positions; at most 2^31 - 65 are supported (int32 position index)");
}

tokred::DeviceLimits limits_of_current_device() {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  return {prop->sharedMemPerBlockOptin, prop->sharedMemPerBlockOptin, prop->multiProcessorCount};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd_cuda(const at::Tensor& x, const OptTensor& w_score,
                                                        const OptTensor& scores, const OptTensor& ln_weight,
                                                        const OptTensor& ln_bias, const OptTensor& mask, double eps,
                                                        bool pool_input) {
  check_common(kFwd, x, w_score, scores, ln_weight, ln_bias, mask, eps);
  check_cuda_inputs(kFwd, x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  return tokred::run_forward(x, w_score, scores, ln_weight, ln_bias, mask, eps, pool_input,
                             limits_of_current_device(), at::cuda::getCurrentCUDAStream());
}

std::vector<at::Tensor> bwd_cuda(const at::Tensor& d_out, const at::Tensor& out, const at::Tensor& x,
                                 const OptTensor& w_score, const OptTensor& scores, const OptTensor& ln_weight,
                                 const OptTensor& ln_bias, const OptTensor& mask, const at::Tensor& lse, double eps,
                                 bool pool_input) {
  const c10::SymInt S = check_common(kBwd, x, w_score, scores, ln_weight, ln_bias, mask, eps);
  check_bwd_extra(d_out, out, x, lse, S);
  check_cuda_inputs(kBwd, x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  return tokred::run_backward(d_out, out, x, w_score, scores, ln_weight, ln_bias, mask, lse, eps, pool_input,
                              limits_of_current_device(), at::cuda::getCurrentCUDAStream());
}

}  // namespace

TORCH_LIBRARY_IMPL(skillkern, CUDA, m) {
  m.impl("token_reduce_fwd_cuda", &fwd_cuda);
  m.impl("token_reduce_bwd_cuda", &bwd_cuda);
}

TORCH_LIBRARY_IMPL(skillkern, Meta, m) {
  m.impl("token_reduce_fwd_cuda", &fwd_meta);
  m.impl("token_reduce_bwd_cuda", &bwd_meta);
}

}  // namespace skillkern
