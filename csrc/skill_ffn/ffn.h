// skill_ffn_fwd_cuda / skill_ffn_bwd_cuda: what the CUDA entry points (ffn_fwd.cu, ffn_bwd.cu)
// and the Meta kernels (ffn_meta.cpp) share: the activation codes and the argument checks.
//
// Contract (the Triton ops skillkern::skill_ffn_fwd / _bwd in skillkern/ops/skill_ffn/op.py):
//   x (T, d) float32/float16/bfloat16; skill_ids (T, k) integer (ids outside [0, E) = empty
//   slots); scale (T, k) float32 (slot weight, 0 on empty slots); w1 (E, d, h1) with h1 = h, or
//   2h for swiglu (gate half first); w2 (E, h, d); b1 (E, h1), b2 (E, d) optional; all float
//   tensors in x's dtype, everything on x's device.
//   fwd -> y (T, d) x.dtype, order (T*k,) int32, offsets (E+1,) int32 (see route.h).
//   bwd(dy, x, scale, w1, w2, b1, b2, order, offsets, activation, need_dscale)
//       -> [dx (T, d), dw1, dw2, db1 | 0-element, db2 | 0-element, dscale (T, k) f32 | 0-element].
//
// The checks take sizes as SymInts, so the same code guards the CUDA kernels (concrete sizes)
// and the Meta kernels under torch.compile with dynamic shapes (symbolic T). Messages name the
// argument in skillkern's format "skill_ffn: `<arg>` <problem>".
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <optional>
#include <string>

#include "common.h"
#include "skill_ffn/act_codes.h"
#include "skill_ffn/route.h"

namespace skillkern {
namespace ffn {

inline int activation_code(c10::string_view activation) {
  const std::string a(activation.data(), activation.size());
  if (a == "gelu") return kGelu;
  if (a == "gelu_tanh") return kGeluTanh;
  if (a == "relu") return kRelu;
  if (a == "silu") return kSilu;
  if (a == "swiglu") return kSwiglu;
  SK_CHECK_ARG(false, "skill_ffn", "activation",
               "must be one of ('gelu', 'gelu_tanh', 'relu', 'silu', 'swiglu'), got '", a, "'");
  return -1;
}

inline void check_float_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "skill_ffn: `", name, "` has dtype ",
              t.scalar_type(), " but x has ", x.scalar_type());
  TORCH_CHECK(t.device() == x.device(), "skill_ffn: `", name, "` is on ", t.device(),
              " but x is on ", x.device());
}

inline void check_shape2(const at::Tensor& t, const char* name, const c10::SymInt& a,
                         const c10::SymInt& b) {
  TORCH_CHECK(t.dim() == 2 && t.sym_size(0) == a && t.sym_size(1) == b, "skill_ffn: `", name,
              "` must have shape (", a, ", ", b, "), got ", t.sym_sizes());
}

// The checks every entry point (CUDA and Meta, forward and backward) shares: x, scale, the
// weights and biases, the activation. Returns the activation code.
inline int check_ffn_common(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& w1,
                            const at::Tensor& w2, const std::optional<at::Tensor>& b1,
                            const std::optional<at::Tensor>& b2, c10::string_view activation) {
  const int act = activation_code(activation);
  SK_CHECK_ARG(is_float_dtype(x.scalar_type()), "skill_ffn", "x",
               "must be float32, float16 or bfloat16, got ", x.scalar_type());
  SK_CHECK_ARG(x.dim() == 2, "skill_ffn", "x", "must be 2-d (T, d), got ", x.dim(), " dims");
  SK_CHECK_ARG(w1.dim() == 3, "skill_ffn", "w1", "must be 3-d (E, d, h) ((E, d, 2h) for swiglu), got ",
               w1.dim(), " dims");
  check_float_like(w1, x, "w1");
  const c10::SymInt& T = x.sym_size(0);
  const c10::SymInt& d = x.sym_size(1);
  const c10::SymInt& E = w1.sym_size(0);
  const c10::SymInt& h1 = w1.sym_size(2);
  SK_CHECK_ARG(E >= 1 && E <= kMaxSkills, "skill_ffn", "w1", "must hold between 1 and ", kMaxSkills,
               " skills (E = w1.shape[0]), got ", E);
  SK_CHECK_ARG(w1.sym_size(1) == d, "skill_ffn", "w1", "must have shape (E, d, h) with d = x.shape[1] = ",
               d, ", got ", w1.sym_sizes());
  SK_CHECK_ARG(act != kSwiglu || h1 % 2 == 0, "skill_ffn", "w1",
               "must have an even last dim for swiglu, got ", h1);
  const c10::SymInt h = act == kSwiglu ? h1 / 2 : h1;
  SK_CHECK_ARG(w2.dim() == 3 && w2.sym_size(0) == E && w2.sym_size(1) == h && w2.sym_size(2) == d,
               "skill_ffn", "w2", "must have shape (", E, ", ", h, ", ", d, "), got ", w2.sym_sizes());
  check_float_like(w2, x, "w2");
  if (b1.has_value()) {
    check_shape2(*b1, "b1", E, h1);
    check_float_like(*b1, x, "b1");
  }
  if (b2.has_value()) {
    check_shape2(*b2, "b2", E, d);
    check_float_like(*b2, x, "b2");
  }
  SK_CHECK_ARG(scale.scalar_type() == at::kFloat, "skill_ffn", "scale", "must be float32, got ",
               scale.scalar_type());
  SK_CHECK_ARG(scale.dim() == 2 && scale.sym_size(0) == T && scale.sym_size(1) >= 1, "skill_ffn",
               "scale", "must have shape (T, k) with T = x.shape[0] = ", T, ", got ", scale.sym_sizes());
  SK_CHECK_ARG(scale.device() == x.device(), "skill_ffn", "scale", "is on ", scale.device(),
               " but x is on ", x.device());
  return act;
}

inline int check_ffn_fwd_args(const at::Tensor& x, const at::Tensor& skill_ids, const at::Tensor& scale,
                              const at::Tensor& w1, const at::Tensor& w2,
                              const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& b2,
                              c10::string_view activation) {
  const int act = check_ffn_common(x, scale, w1, w2, b1, b2, activation);
  SK_CHECK_ARG(c10::isIntegralType(skill_ids.scalar_type(), /*includeBool=*/false), "skill_ffn",
               "skill_ids", "must be an integer tensor, got ", skill_ids.scalar_type());
  SK_CHECK_ARG(skill_ids.dim() == 2 && skill_ids.sym_size(0) == x.sym_size(0) &&
                   skill_ids.sym_size(1) == scale.sym_size(1),
               "skill_ffn", "skill_ids", "must have shape (T, k) = ", scale.sym_sizes(), " (like scale), got ",
               skill_ids.sym_sizes());
  SK_CHECK_ARG(skill_ids.device() == x.device(), "skill_ffn", "skill_ids", "is on ", skill_ids.device(),
               " but x is on ", x.device());
  return act;
}

inline int check_ffn_bwd_args(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
                              const at::Tensor& w1, const at::Tensor& w2,
                              const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& b2,
                              const at::Tensor& order, const at::Tensor& offsets,
                              c10::string_view activation) {
  const int act = check_ffn_common(x, scale, w1, w2, b1, b2, activation);
  check_shape2(dy, "dy", x.sym_size(0), x.sym_size(1));
  check_float_like(dy, x, "dy");
  SK_CHECK_ARG(order.scalar_type() == at::kInt && order.dim() == 1 &&
                   order.sym_size(0) == scale.sym_numel(),
               "skill_ffn", "order", "must be int32 of shape (T*k,) = (", scale.sym_numel(),
               ",) (the forward's routing), got ", order.scalar_type(), " ", order.sym_sizes());
  SK_CHECK_ARG(offsets.scalar_type() == at::kInt && offsets.dim() == 1 &&
                   offsets.sym_size(0) == w1.sym_size(0) + 1,
               "skill_ffn", "offsets", "must be int32 of shape (E+1,) = (", w1.sym_size(0) + 1,
               ",) (the forward's routing), got ", offsets.scalar_type(), " ", offsets.sym_sizes());
  SK_CHECK_ARG(order.device() == x.device(), "skill_ffn", "order", "is on ", order.device(),
               " but x is on ", x.device());
  SK_CHECK_ARG(offsets.device() == x.device(), "skill_ffn", "offsets", "is on ", offsets.device(),
               " but x is on ", x.device());
  return act;
}

inline std::optional<at::Tensor> contiguous_opt(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

template <typename T>
const T* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? reinterpret_cast<const T*>(t->const_data_ptr()) : nullptr;
}

}  // namespace ffn
}  // namespace skillkern
