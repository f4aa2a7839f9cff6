// skill_ffn on the CPU emulation: the real fwd.cuh / bwd.cuh / down.cuh / gemm.cuh with their
// kernels, launchers and host orchestration (run_forward, run_backward), with this folder's
// include/ptx.cuh and include/mma.h in place of the CUDA ones. Only the routing is replaced, by
// a host counting sort (route.cu has its own tests). Registered as
// torch.ops.skillkern_emu.skill_ffn_fwd / _bwd with the arguments of skill_ffn_fwd_cuda /
// _bwd_cuda, on CPU tensors. skill_ffn_fwd_sm90 / _bwd_sm90 run the Hopper path instead
// (fwd_sm90.cuh, bwd_sm90.cuh) with sm90_host.cc's loops in place of the CUTLASS GEMMs, for the
// inputs that path takes (16-bit, d and h multiples of 8) (contiguous, as the tests pass them: views at chosen offsets reach
// both the 16-byte and the element-wise copy paths).
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "skill_ffn/bwd.cuh"
#include "skill_ffn/bwd_sm90.cuh"
#include "skill_ffn/ffn.h"
#include "skill_ffn/fwd.cuh"
#include "skill_ffn/fwd_sm90.cuh"

namespace skillkern {
namespace ffn {
namespace {

// Stable counting sort of the slots by skill (reference.py route_ref): order, offsets.
std::tuple<at::Tensor, at::Tensor> route_host(const at::Tensor& skill_ids, int64_t E) {
  const at::Tensor ids = skill_ids.reshape({-1}).to(at::kLong).contiguous();
  const int64_t n = ids.numel();
  const int64_t* v = ids.const_data_ptr<int64_t>();
  at::Tensor order = at::empty({n}, ids.options().dtype(at::kInt));
  at::Tensor offsets = at::zeros({E + 1}, ids.options().dtype(at::kInt));
  std::vector<int64_t> start(E + 2, 0);
  auto bucket = [&](int64_t id) { return id >= 0 && id < E ? id : E; };
  for (int64_t i = 0; i < n; ++i) ++start[bucket(v[i]) + 1];
  for (int64_t b = 0; b <= E; ++b) start[b + 1] += start[b];
  for (int64_t e = 0; e <= E; ++e) offsets.mutable_data_ptr<int32_t>()[e] = int32_t(start[e]);
  for (int64_t i = 0; i < n; ++i) order.mutable_data_ptr<int32_t>()[start[bucket(v[i])]++] = int32_t(i);
  return {order, offsets};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> emu_forward(const at::Tensor& x, const at::Tensor& skill_ids,
                                                           const at::Tensor& scale, const at::Tensor& w1,
                                                           const at::Tensor& w2, const std::optional<at::Tensor>& b1,
                                                           const std::optional<at::Tensor>& b2,
                                                           c10::string_view activation) {
  const int act = check_ffn_fwd_args(x, skill_ids, scale, w1, w2, b1, b2, activation);
  at::Tensor order, offsets;
  std::tie(order, offsets) = route_host(skill_ids, w1.size(0));
  TORCH_CHECK(x.is_contiguous() && w1.is_contiguous() && w2.is_contiguous() && scale.is_contiguous(),
              "emulation: pass contiguous tensors");
  const at::Tensor y = run_forward(x, scale, w1, w2, contiguous_opt(b1), contiguous_opt(b2), act, order, offsets,
                                   /*stream=*/nullptr);
  return {y, order, offsets};
}

std::vector<at::Tensor> emu_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
                                     const at::Tensor& w1, const at::Tensor& w2, const std::optional<at::Tensor>& b1,
                                     const std::optional<at::Tensor>& b2, const at::Tensor& order,
                                     const at::Tensor& offsets, c10::string_view activation, bool need_dscale) {
  const int act = check_ffn_bwd_args(dy, x, scale, w1, w2, b1, b2, order, offsets, activation);
  TORCH_CHECK(dy.is_contiguous() && x.is_contiguous() && w1.is_contiguous() && w2.is_contiguous(),
              "emulation: pass contiguous tensors");
  return run_backward(dy, x, scale.contiguous(), w1, w2, contiguous_opt(b1), contiguous_opt(b2), order, offsets, act,
                      need_dscale, /*stream=*/nullptr);
}

void check_sm90_inputs(const at::Tensor& x, const at::Tensor& w2) {
  TORCH_CHECK((x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf) &&
                  x.size(1) % 8 == 0 && w2.size(1) % 8 == 0 && x.size(1) > 0 && w2.size(1) > 0,
              "emulation: the sm_90 path takes 16-bit x, d and h positive multiples of 8");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> emu_forward_sm90(const at::Tensor& x, const at::Tensor& skill_ids,
                                                                const at::Tensor& scale, const at::Tensor& w1,
                                                                const at::Tensor& w2,
                                                                const std::optional<at::Tensor>& b1,
                                                                const std::optional<at::Tensor>& b2,
                                                                c10::string_view activation) {
  const int act = check_ffn_fwd_args(x, skill_ids, scale, w1, w2, b1, b2, activation);
  check_sm90_inputs(x, w2);
  at::Tensor order, offsets;
  std::tie(order, offsets) = route_host(skill_ids, w1.size(0));
  at::Tensor y = at::empty({x.size(0), x.size(1)}, x.options());
  run_forward_sm90(y, x.contiguous(), scale.contiguous(), w1.contiguous(), w2.contiguous(), contiguous_opt(b1),
                   contiguous_opt(b2), act, order, offsets, /*sms=*/1, /*stream=*/nullptr);
  return {y, order, offsets};
}

std::vector<at::Tensor> emu_backward_sm90(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
                                          const at::Tensor& w1, const at::Tensor& w2,
                                          const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& b2,
                                          const at::Tensor& order, const at::Tensor& offsets,
                                          c10::string_view activation, bool need_dscale) {
  const int act = check_ffn_bwd_args(dy, x, scale, w1, w2, b1, b2, order, offsets, activation);
  check_sm90_inputs(x, w2);
  return run_backward_sm90(dy.contiguous(), x.contiguous(), scale.contiguous(), w1.contiguous(), w2.contiguous(),
                           contiguous_opt(b1), contiguous_opt(b2), order, offsets, act, need_dscale, /*sms=*/1,
                           /*stream=*/nullptr);
}

}  // namespace
}  // namespace ffn
}  // namespace skillkern

TORCH_LIBRARY_IMPL(skillkern_emu, CPU, m) {
  m.impl("skill_ffn_fwd", &skillkern::ffn::emu_forward);
  m.impl("skill_ffn_bwd", &skillkern::ffn::emu_backward);
  m.impl("skill_ffn_fwd_sm90", &skillkern::ffn::emu_forward_sm90);
  m.impl("skill_ffn_bwd_sm90", &skillkern::ffn::emu_backward_sm90);
}
