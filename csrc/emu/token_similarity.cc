// token_similarity on the CPU emulation: the native ops' own layout and launches
// (token_similarity/run.h) on CPU tensors, the kernels compiled as host code.
#include <torch/library.h>

#include "token_similarity/run.h"

namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor> forward(const Tensor& img, const Tensor& txt,
                                                   const std::optional<Tensor>& img_mask,
                                                   const std::optional<Tensor>& txt_mask) {
  return skillkern::toksim::run_forward(img, txt, img_mask, txt_mask, /*stream=*/nullptr);
}

std::tuple<Tensor, Tensor> backward(const Tensor& g_i2t, const Tensor& g_t2i, const Tensor& img, const Tensor& txt,
                                    const std::optional<Tensor>& img_mask, const std::optional<Tensor>& txt_mask,
                                    const Tensor& row_idx, const Tensor& col_idx) {
  return skillkern::toksim::run_backward(g_i2t, g_t2i, img, txt, img_mask, txt_mask, row_idx, col_idx,
                                         /*stream=*/nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(skillkern_emu, CPU, m) {
  m.impl("token_similarity_fwd", &forward);
  m.impl("token_similarity_bwd", &backward);
}
