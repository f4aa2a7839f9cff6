// The torch.ops.skillkern namespace: the one TORCH_LIBRARY block (schemas of the C++ ops),
// their CPU and Meta kernels, and the Python module init that makes `import skillkern._C`
// load this library. CUDA kernels register themselves in their .cu files.
//
// Python registers skillkern's Triton ops into the same namespace with
// torch.library.custom_op (library fragments), so no other TORCH_LIBRARY(skillkern, ...)
// may exist anywhere.
#include <Python.h>

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <string>
#include <vector>

// setup.py passes the arch list as one token, e.g. -DSKILLKERN_CUDA_ARCHS=80_90.
#define SKILLKERN_STR2(x) #x
#define SKILLKERN_STR(x) SKILLKERN_STR2(x)
#ifdef SKILLKERN_CUDA_ARCHS
#define SKILLKERN_CUDA_ARCHS_STR SKILLKERN_STR(SKILLKERN_CUDA_ARCHS)
#else
#define SKILLKERN_CUDA_ARCHS_STR "unknown"
#endif

#include "skill_ffn/route.h"

namespace skillkern {
namespace {

template <typename id_t>
void skill_route_cpu_impl(const id_t* ids, int64_t n, int64_t num_skills, int32_t* order,
                          int32_t* offsets) {
  const int64_t inactive = num_skills;
  auto bucket_of = [&](id_t id) -> int64_t {
    const int64_t v = static_cast<int64_t>(id);
    return (v >= 0 && v < num_skills) ? v : inactive;
  };
  // start[b] = first sorted position of bucket b (exclusive prefix sum of the counts).
  std::vector<int64_t> start(num_skills + 2, 0);
  for (int64_t i = 0; i < n; ++i) {
    ++start[bucket_of(ids[i]) + 1];
  }
  for (int64_t b = 0; b <= num_skills; ++b) {
    start[b + 1] += start[b];
  }
  for (int64_t e = 0; e <= num_skills; ++e) {
    offsets[e] = static_cast<int32_t>(start[e]);
  }
  // Visiting slots in increasing i makes the sort stable.
  for (int64_t i = 0; i < n; ++i) {
    order[start[bucket_of(ids[i])]++] = static_cast<int32_t>(i);
  }
}

std::tuple<at::Tensor, at::Tensor> skill_route_cpu(const at::Tensor& skill_ids, int64_t num_skills) {
  TORCH_CHECK(skill_ids.device().is_cpu(), "skill_route (CPU): skill_ids must be on the CPU, got ",
              skill_ids.device());
  RouteBuffers b = prepare_skill_route(skill_ids, num_skills);
  const int64_t n = b.ids.numel();
  int32_t* order = b.order.mutable_data_ptr<int32_t>();
  int32_t* offsets = b.offsets.mutable_data_ptr<int32_t>();
  if (b.ids.scalar_type() == at::kInt) {
    skill_route_cpu_impl(b.ids.const_data_ptr<int32_t>(), n, num_skills, order, offsets);
  } else {
    skill_route_cpu_impl(b.ids.const_data_ptr<int64_t>(), n, num_skills, order, offsets);
  }
  return {b.order, b.offsets};
}

// Shapes only, for FakeTensor / torch.compile / opcheck. sym_numel keeps dynamic shapes
// symbolic; the N < 2^31 check needs a concrete N and is left to the real kernels.
std::tuple<at::Tensor, at::Tensor> skill_route_meta(const at::Tensor& skill_ids, int64_t num_skills) {
  check_skill_route_args(skill_ids, num_skills);
  const auto opts = skill_ids.options().dtype(at::kInt);
  const c10::SymInt n = skill_ids.sym_numel();
  at::Tensor order = at::empty_symint(c10::SymIntArrayRef(n), opts);
  at::Tensor offsets = at::empty({num_skills + 1}, opts);
  return {order, offsets};
}

// Compute capabilities compiled in, "80_90" = sm_80 and sm_90 (from TORCH_CUDA_ARCH_LIST).
// No tensor arguments, so a catch-all kernel.
std::string build_info() {
  return SKILLKERN_CUDA_ARCHS_STR;
}

}  // namespace

// Every C++ op's schema, declared once. The *_cuda ops are the native backend
// (backend="cuda"): they take the same arguments and return the same outputs as the Triton
// ops of the same name without the suffix (skillkern/ops/<op>/op.py), so the Python side
// shares one setup_context/backward between the two. Their CUDA kernels and Meta (shape)
// kernels register in csrc/<op>/; their autograd formulas are registered from Python
// (skillkern/ops/<op>/op.py, once this library is loaded).
TORCH_LIBRARY(skillkern, m) {
  m.def("skill_route(Tensor skill_ids, int num_skills) -> (Tensor, Tensor)");
  // -> (y (T, d), order (T*k,) int32, offsets (E+1,) int32)
  m.def("skill_ffn_fwd_cuda(Tensor x, Tensor skill_ids, Tensor scale, Tensor w1, Tensor w2, "
        "Tensor? b1, Tensor? b2, str activation) -> (Tensor, Tensor, Tensor)");
  // -> [dx, dw1, dw2, db1, db2, dscale]; absent ones are 0-element tensors
  m.def("skill_ffn_bwd_cuda(Tensor dy, Tensor x, Tensor scale, Tensor w1, Tensor w2, Tensor? b1, "
        "Tensor? b2, Tensor order, Tensor offsets, str activation, bool need_dscale) -> Tensor[]");
  // -> (i2t (Bi, Bt) f32, t2i (Bi, Bt) f32, row_idx (Bi, Bt, Ni), col_idx (Bi, Bt, Nt))
  m.def("token_similarity_fwd_cuda(Tensor img, Tensor txt, Tensor? img_mask, Tensor? txt_mask) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  // -> (d_img, d_txt)
  m.def("token_similarity_bwd_cuda(Tensor g_i2t, Tensor g_t2i, Tensor img, Tensor txt, "
        "Tensor? img_mask, Tensor? txt_mask, Tensor row_idx, Tensor col_idx) -> (Tensor, Tensor)");
  // -> (out (B, S, D), lse (B, S) f32, out_lo: out's rounding residual (B, S, D) where x is
  //     16-bit and pooled raw (pool_input, scores given, or no ln_weight), else 0-element: the
  //     backward adds it back for delta)
  m.def("token_reduce_fwd_cuda(Tensor x, Tensor? w_score, Tensor? scores, Tensor? ln_weight, "
        "Tensor? ln_bias, Tensor? mask, float eps, bool pool_input) -> (Tensor, Tensor, Tensor)");
  // out: x's dtype, or float32 (out + out_lo, as the forward computed it)
  // -> [dx, d_w_score, d_scores, d_ln_weight, d_ln_bias]; absent ones are 0-element tensors
  m.def("token_reduce_bwd_cuda(Tensor d_out, Tensor out, Tensor x, Tensor? w_score, "
        "Tensor? scores, Tensor? ln_weight, Tensor? ln_bias, Tensor? mask, Tensor lse, float eps, "
        "bool pool_input) -> Tensor[]");
  // The archs this library was compiled for, e.g. "8.0;9.0" (for skillkern.info()).
  m.def("build_info() -> str", &build_info);
}

TORCH_LIBRARY_IMPL(skillkern, CPU, m) {
  m.impl("skill_route", &skill_route_cpu);
}

TORCH_LIBRARY_IMPL(skillkern, Meta, m) {
  m.impl("skill_route", &skill_route_meta);
}

}  // namespace skillkern

// `import skillkern._C` only has to dlopen this library (the static initialisers above
// register the ops); an empty module is enough, and avoids pybind11 in the build.
extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "skillkern C++/CUDA ops; they live in torch.ops.skillkern once this module is imported.",
      -1,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
