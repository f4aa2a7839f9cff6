// Meta (shape-only) kernels of skill_ffn_fwd_cuda / skill_ffn_bwd_cuda: what FakeTensor,
// torch.compile and opcheck run instead of the CUDA kernels. They apply the CUDA entry points'
// argument checks (ffn.h) and build outputs with SymInt sizes, so a dynamic token count stays
// symbolic. Host-only code, compiled by the C++ compiler (not nvcc).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/SymInt.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "skill_ffn/ffn.h"

namespace skillkern {
namespace ffn {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> skill_ffn_fwd_meta(
    const at::Tensor& x, const at::Tensor& skill_ids, const at::Tensor& scale, const at::Tensor& w1,
    const at::Tensor& w2, const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& b2,
    c10::string_view activation) {
  check_ffn_fwd_args(x, skill_ids, scale, w1, w2, b1, b2, activation);
  const auto index_opts = x.options().dtype(at::kInt);
  at::Tensor y = at::empty_symint({x.sym_size(0), x.sym_size(1)}, x.options());
  at::Tensor order = at::empty_symint({scale.sym_numel()}, index_opts);
  at::Tensor offsets = at::empty_symint({w1.sym_size(0) + 1}, index_opts);
  return {y, order, offsets};
}

std::vector<at::Tensor> skill_ffn_bwd_meta(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
                                           const at::Tensor& w1, const at::Tensor& w2,
                                           const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& b2,
                                           const at::Tensor& order, const at::Tensor& offsets,
                                           c10::string_view activation, bool need_dscale) {
  check_ffn_bwd_args(dy, x, scale, w1, w2, b1, b2, order, offsets, activation);
  const auto opts = x.options();
  const auto empty0 = [&] { return at::empty({0}, opts); };
  return {
      at::empty_symint(x.sym_sizes(), opts),
      at::empty_symint(w1.sym_sizes(), opts),
      at::empty_symint(w2.sym_sizes(), opts),
      b1.has_value() ? at::empty_symint(b1->sym_sizes(), opts) : empty0(),
      b2.has_value() ? at::empty_symint(b2->sym_sizes(), opts) : empty0(),
      need_dscale ? at::empty_symint(scale.sym_sizes(), scale.options()) : empty0(),
  };
}

}  // namespace
}  // namespace ffn

TORCH_LIBRARY_IMPL(skillkern, Meta, m) {
  m.impl("skill_ffn_fwd_cuda", &ffn::skill_ffn_fwd_meta);
  m.impl("skill_ffn_bwd_cuda", &ffn::skill_ffn_bwd_meta);
}

}  // namespace skillkern
