// Whether the skill FFN runs on the CUTLASS kernels (fwd_sm90.cuh, bwd_sm90.cuh) or on the
// mma.sync path (fwd.cuh, bwd.cuh): ffn_fwd.cu and ffn_bwd.cu ask the same question.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>

#include <cstdint>
#include <initializer_list>
#include <optional>

#include "skill_ffn/act_codes.h"
#include "skill_ffn/sm90_grouped.h"

namespace skillkern {
namespace ffn {

// Built for sm_90a, a compute capability 9.0 device, 16-bit (any activation), d and h positive multiples of 8, and every tensor 16-byte aligned (TMA's rows and bases: a
// contiguous view may still start at an odd offset). `more`: further tensors that must be
// aligned (the backward's dy).
inline bool sm90_path(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
                      const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& b2, int act,
                      std::initializer_list<const at::Tensor*> more = {}) {
  if (!sm90::built()) return false;
  if (x.scalar_type() != at::kBFloat16 && x.scalar_type() != at::kHalf) return false;
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(x.get_device());
  const int64_t d = x.size(1), h = w2.size(1);
  if (prop->major != 9 || prop->minor != 0 || d == 0 || h == 0 || d % 8 != 0 || h % 8 != 0) return false;
  auto ok = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0; };
  for (const at::Tensor* t : more)
    if (!ok(*t)) return false;
  return ok(x) && ok(w1) && ok(w2) && (!b1.has_value() || ok(*b1)) && (!b2.has_value() || ok(*b2));
}

inline int sm_count(const at::Tensor& x) {
  return at::cuda::getDeviceProperties(x.get_device())->multiProcessorCount;
}

}  // namespace ffn
}  // namespace skillkern
