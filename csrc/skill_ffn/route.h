// skill_route: stable counting sort of token slots by skill (the routing step of the
// skill-routed FFN). Math: skillkern/ops/skill_ffn/reference.py::route_ref.
//
//   skill_ids: any shape, integer; flattened to N slots. Slot i goes to bucket
//              ids[i] if 0 <= ids[i] < num_skills, else to the "inactive" bucket num_skills.
//   order:     (N,) int32, order[p] = slot index at sorted position p; stable (slot order
//              within a bucket), inactive slots last.
//   offsets:   (num_skills + 1,) int32, skill e owns positions [offsets[e], offsets[e+1]);
//              offsets[num_skills] = number of active slots.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "common.h"

namespace skillkern {

// The CUDA kernel keeps one histogram row of num_skills + 1 ints per warp in shared memory
// (8 warps x 1025 x 4 B = 32.8 KB at the limit, under the 48 KB static budget).
constexpr int64_t kMaxSkills = 1024;

// Checks that hold on every device (CPU, CUDA, Meta). Messages name the argument.
inline void check_skill_route_args(const at::Tensor& skill_ids, int64_t num_skills) {
  SK_CHECK_ARG(c10::isIntegralType(skill_ids.scalar_type(), /*includeBool=*/false), "skill_route", "skill_ids",
               "must be an integer tensor (uint8, int8, int16, int32 or int64), got ", skill_ids.scalar_type());
  SK_CHECK_ARG(num_skills >= 1 && num_skills <= kMaxSkills, "skill_route", "num_skills", "must be in [1, ",
               kMaxSkills, "], got ", num_skills);
}

// Slot counts are stored as int32 (order values < N, offsets <= N), so N must fit.
inline void check_skill_route_numel(int64_t n) {
  SK_CHECK_ARG(n <= std::numeric_limits<int32_t>::max(), "skill_route", "skill_ids", "has ", n,
               " elements; at most 2^31 - 1 are supported (order/offsets are int32)");
}

// int32 and int64 ids are read as they are; every other integer dtype (uint8, int8, int16) is
// widened to int64 first (values kept, so bucketing matches route_ref's .long(): uint8 255 is
// out of range like any id >= num_skills, an empty slot).
inline at::Tensor flat_ids(const at::Tensor& skill_ids) {
  at::Tensor flat = skill_ids.reshape({-1});
  if (flat.scalar_type() != at::kInt && flat.scalar_type() != at::kLong) {
    flat = flat.to(at::kLong);
  }
  return flat.contiguous();
}

// What every device's entry point starts with: checks, flattened ids, uninitialised outputs.
struct RouteBuffers {
  at::Tensor ids;      // (N,) contiguous int32 or int64
  at::Tensor order;    // (N,) int32
  at::Tensor offsets;  // (num_skills + 1,) int32
};

inline RouteBuffers prepare_skill_route(const at::Tensor& skill_ids, int64_t num_skills) {
  check_skill_route_args(skill_ids, num_skills);
  RouteBuffers buf;
  buf.ids = flat_ids(skill_ids);
  check_skill_route_numel(buf.ids.numel());
  const auto opts = buf.ids.options().dtype(at::kInt);
  buf.order = at::empty({buf.ids.numel()}, opts);
  buf.offsets = at::empty({num_skills + 1}, opts);
  return buf;
}

// The CUDA routing (route.cu), on the current stream with no host sync; skill_ffn_fwd_cuda
// calls it too. skill_ids: any shape, on a CUDA device.
std::tuple<at::Tensor, at::Tensor> skill_route_cuda(const at::Tensor& skill_ids, int64_t num_skills);

}  // namespace skillkern
