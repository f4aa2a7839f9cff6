// token_reduce on the CPU emulation: the native ops' own sizing and launches
// (token_reduce/run.h) on CPU tensors, the kernels compiled as host code, for the shared-memory
// limits and SM count a test chooses (an A100's, or small ones that force single-stage tiles).
#include <torch/library.h>

#include "token_reduce/run.h"

namespace {

using at::Tensor;
using skillkern::tokred::OptTensor;

std::tuple<Tensor, Tensor, Tensor> forward(const Tensor& x, const OptTensor& w_score, const OptTensor& scores,
                                   const OptTensor& ln_weight, const OptTensor& ln_bias, const OptTensor& mask,
                                   double eps, bool pool_input, int64_t fwd_smem, int64_t n_sm) {
  const skillkern::tokred::DeviceLimits dev{size_t(fwd_smem), size_t(fwd_smem), int(n_sm)};
  return skillkern::tokred::run_forward(x, w_score, scores, ln_weight, ln_bias, mask, eps, pool_input, dev,
                                        /*stream=*/nullptr);
}

std::vector<Tensor> backward(const Tensor& d_out, const Tensor& out, const Tensor& x, const OptTensor& w_score,
                             const OptTensor& scores, const OptTensor& ln_weight, const OptTensor& ln_bias,
                             const OptTensor& mask, const Tensor& lse, double eps, bool pool_input, int64_t bwd_smem,
                             int64_t n_sm) {
  const skillkern::tokred::DeviceLimits dev{size_t(bwd_smem), size_t(bwd_smem), int(n_sm)};
  return skillkern::tokred::run_backward(d_out, out, x, w_score, scores, ln_weight, ln_bias, mask, lse, eps,
                                         pool_input, dev, /*stream=*/nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(skillkern_emu, CPU, m) {
  m.impl("token_reduce_fwd", &forward);
  m.impl("token_reduce_bwd", &backward);
}
