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
#include <tuple>
#include <vector>

#include "common.h"
#include "token_reduce/token_reduce.h"

namespace skillkern {
namespace {

using OptTensor = std::optional<at::Tensor>;

constexpr const char* kFwd = "token_reduce_fwd_cuda";
constexpr const char* kBwd = "token_reduce_bwd_cuda";

// "<op>: `<arg>` <problem>", as SK_CHECK_ARG, for an op name chosen at run time.
#define TR_CHECK(cond, op, arg, ...) TORCH_CHECK((cond), op, ": `" arg "` ", __VA_ARGS__)

void check_float_on(const char* op, const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(is_float_dtype(t.scalar_type()), op, ": `", name, "` must be float32, float16 or bfloat16, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": `", name, "` is on ", t.device(), " but x is on ", x.device());
}

// Checks shared by the CUDA and Meta kernels of both ops; sym_size keeps them valid for
// symbolic shapes (a comparison guards on the value). Returns S.
c10::SymInt check_common(const char* op, const at::Tensor& x, const OptTensor& w_score, const OptTensor& scores,
                         const OptTensor& ln_weight, const OptTensor& ln_bias, const OptTensor& mask, double eps) {
  TR_CHECK(x.dim() == 3, op, "x", "must have shape (B, N, D), got ", x.sym_sizes());
  TR_CHECK(is_float_dtype(x.scalar_type()), op, "x", "must be float32, float16 or bfloat16, got ", x.scalar_type());
  const c10::SymInt B = x.sym_size(0), N = x.sym_size(1), D = x.sym_size(2);
  TR_CHECK(D > 0, op, "x", "must have D >= 1 features, got shape ", x.sym_sizes());
  TR_CHECK(w_score.has_value() != scores.has_value(), op, "w_score",
           "and `scores`: exactly one must be given (token_reduce passes w_score, token_pool scores)");
  c10::SymInt S;
  if (w_score.has_value()) {
    const at::Tensor& w = *w_score;
    TR_CHECK(w.dim() == 2 && w.sym_size(0) == D, op, "w_score", "must have shape (D=", D, ", S), got ",
             w.sym_sizes());
    check_float_on(op, w, "w_score", x);
    S = w.sym_size(1);
  } else {
    const at::Tensor& sc = *scores;
    TR_CHECK(sc.dim() == 3 && sc.sym_size(0) == B && sc.sym_size(1) == N, op, "scores", "must have shape (B=", B,
             ", N=", N, ", S), got ", sc.sym_sizes());
    check_float_on(op, sc, "scores", x);
    S = sc.sym_size(2);
  }
  TORCH_CHECK(S >= 1 && S <= tokred::kMaxS, op, ": `", scores.has_value() ? "scores" : "w_score", "` gives S = ", S,
              " output tokens; the cuda backend supports 1 <= S <= ", tokred::kMaxS, " (use backend='triton' beyond)");
  if (ln_weight.has_value()) {
    TR_CHECK(ln_weight->dim() == 1 && ln_weight->sym_size(0) == D, op, "ln_weight", "must have shape (D=", D,
             ",), got ", ln_weight->sym_sizes());
    check_float_on(op, *ln_weight, "ln_weight", x);
  }
  if (ln_bias.has_value()) {
    TR_CHECK(ln_weight.has_value(), op, "ln_bias", "needs ln_weight (LayerNorm without a weight is not supported)");
    TR_CHECK(ln_bias->dim() == 1 && ln_bias->sym_size(0) == D, op, "ln_bias", "must have shape (D=", D, ",), got ",
             ln_bias->sym_sizes());
    check_float_on(op, *ln_bias, "ln_bias", x);
  }
  if (mask.has_value()) {
    TR_CHECK(mask->scalar_type() == at::kBool, op, "mask", "must be a bool tensor (True = real position), got ",
             mask->scalar_type());
    TR_CHECK(mask->dim() == 2 && mask->sym_size(0) == B && mask->sym_size(1) == N, op, "mask",
             "must have shape (B=", B, ", N=", N, "), got ", mask->sym_sizes());
    TR_CHECK(mask->device() == x.device(), op, "mask", "is on ", mask->device(), " but x is on ", x.device());
  }
  TR_CHECK(eps > 0.0, op, "eps", "must be > 0, got ", eps);
  return S;
}

void check_bwd_extra(const at::Tensor& d_out, const at::Tensor& out, const at::Tensor& x, const at::Tensor& lse,
                     const c10::SymInt& S) {
  const c10::SymInt B = x.sym_size(0), D = x.sym_size(2);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{d_out, "d_out"}, {out, "out"}}) {
    TORCH_CHECK(t.dim() == 3 && t.sym_size(0) == B && t.sym_size(1) == S && t.sym_size(2) == D, kBwd, ": `", name,
                "` must have shape (B=", B, ", S=", S, ", D=", D, "), got ", t.sym_sizes());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), kBwd, ": `", name, "` must have x's dtype ", x.scalar_type(),
                ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), kBwd, ": `", name, "` is on ", t.device(), " but x is on ", x.device());
  }
  TR_CHECK(lse.dim() == 2 && lse.sym_size(0) == B && lse.sym_size(1) == S, kBwd, "lse", "must have shape (B=", B,
           ", S=", S, "), got ", lse.sym_sizes());
  TR_CHECK(lse.scalar_type() == at::kFloat, kBwd, "lse", "must be float32, got ", lse.scalar_type());
  TR_CHECK(lse.device() == x.device(), kBwd, "lse", "is on ", lse.device(), " but x is on ", x.device());
}

// ----------------------------------------------------------------------------- Meta

std::tuple<at::Tensor, at::Tensor> fwd_meta(const at::Tensor& x, const OptTensor& w_score, const OptTensor& scores,
                                            const OptTensor& ln_weight, const OptTensor& ln_bias,
                                            const OptTensor& mask, double eps, bool /*pool_input*/) {
  const c10::SymInt S = check_common(kFwd, x, w_score, scores, ln_weight, ln_bias, mask, eps);
  const c10::SymInt B = x.sym_size(0), D = x.sym_size(2);
  at::Tensor out = at::empty_symint({B, S, D}, x.options());
  at::Tensor lse = at::empty_symint({B, S}, x.options().dtype(at::kFloat));
  return {out, lse};
}

// [dx, d_w_score, d_scores, d_ln_weight, d_ln_bias]; absent ones are 0-element tensors in x's dtype.
std::vector<at::Tensor> grads_like(const at::Tensor& x, const OptTensor& w_score, const OptTensor& scores,
                                   const OptTensor& ln_weight, const OptTensor& ln_bias) {
  auto like = [&](const OptTensor& t) {
    return t.has_value() ? at::empty_symint(t->sym_sizes(), t->options()) : at::empty({0}, x.options());
  };
  return {at::empty_symint(x.sym_sizes(), x.options()), like(w_score), like(scores), like(ln_weight),
          ln_weight.has_value() ? like(ln_bias) : at::empty({0}, x.options())};
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

int dtype_code(at::ScalarType t) {
  return t == at::kHalf ? tokred::kF16 : (t == at::kBFloat16 ? tokred::kBF16 : tokred::kF32);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

at::Tensor contig(const OptTensor& t) { return t.has_value() ? t->contiguous() : at::Tensor(); }

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

void check_cuda_inputs(const char* op, const at::Tensor& x) {
  TR_CHECK(x.is_cuda(), op, "x", "must be a CUDA tensor for the cuda backend, got ", x.device());
  TR_CHECK(x.size(1) <= std::numeric_limits<int32_t>::max() - 64, op, "x", "has N = ", x.size(1),
           " positions; at most 2^31 - 65 are supported (int32 position index)");
}

// Byte workspace carved into 16-byte aligned pieces.
struct Carver {
  size_t used = 0;
  size_t take(size_t bytes) {
    const size_t at = used;
    used = tokred::align16(used + bytes);
    return at;
  }
};

struct PrepOut {
  at::Tensor buffer;  // keeps the workspace alive until the launches are queued
  tokred::PrepParams p{};
};

// Prep workspace (fragments of W', c1, c2) and launch; the caller's kernels read it.
PrepOut run_prep(const at::Tensor& w, const at::Tensor& lnw, const at::Tensor& lnb, const at::Tensor& x,
                 const tokred::Geometry& geo, int S, bool with_wbf, cudaStream_t stream) {
  const int elem = static_cast<int>(x.element_size());
  const int k_step = elem == 2 ? 16 : 8;
  PrepOut r;
  tokred::PrepParams& p = r.p;
  p.D = static_cast<int>(x.size(2));
  p.S = S;
  p.nt = geo.nt;
  p.nks = geo.nks;
  p.nks5 = tokred::bwd_token_rows(elem, geo.nt) / k_step;
  p.ntd = geo.dp / 8;
  Carver c;
  const size_t o_wsf = c.take(size_t(p.nks) * p.nt * 32 * sizeof(uint4));
  const size_t o_wbf = with_wbf ? c.take(size_t(p.nks5) * p.ntd * 32 * sizeof(uint4)) : 0;
  const size_t o_c1 = c.take(size_t(8) * geo.nt * sizeof(float));
  const size_t o_c2 = c.take(size_t(8) * geo.nt * sizeof(float));
  r.buffer = at::empty({static_cast<int64_t>(c.used)}, x.options().dtype(at::kByte));
  uint8_t* base = r.buffer.mutable_data_ptr<uint8_t>();
  p.w = w.const_data_ptr();
  p.w_dtype = dtype_code(w.scalar_type());
  p.ln_w = ptr_or_null(lnw);
  p.ln_b = ptr_or_null(lnb);
  p.ln_w_dtype = lnw.defined() ? dtype_code(lnw.scalar_type()) : tokred::kF32;
  p.ln_b_dtype = lnb.defined() ? dtype_code(lnb.scalar_type()) : tokred::kF32;
  p.wsf = reinterpret_cast<uint4*>(base + o_wsf);
  p.wbf = with_wbf ? reinterpret_cast<uint4*>(base + o_wbf) : nullptr;
  p.c1 = reinterpret_cast<float*>(base + o_c1);
  p.c2 = reinterpret_cast<float*>(base + o_c2);
  p.has_ln = lnw.defined();
  p.has_ln_bias = lnb.defined();
  tokred::launch_prep(p, dtype_code(x.scalar_type()), stream);
  return r;
}

std::tuple<at::Tensor, at::Tensor> fwd_cuda(const at::Tensor& x_in, const OptTensor& w_score, const OptTensor& scores,
                                            const OptTensor& ln_weight, const OptTensor& ln_bias,
                                            const OptTensor& mask, double eps, bool pool_input) {
  const int S = static_cast<int>(check_common(kFwd, x_in, w_score, scores, ln_weight, ln_bias, mask, eps).expect_int());
  check_cuda_inputs(kFwd, x_in);
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0);
  const int N = static_cast<int>(x.size(1)), D = static_cast<int>(x.size(2));
  at::Tensor out = at::empty({B, S, D}, x.options());
  at::Tensor lse = at::empty({B, S}, x.options().dtype(at::kFloat));
  if (B == 0) return {out, lse};

  const int elem = static_cast<int>(x.element_size());
  const tokred::Geometry geo = tokred::make_geometry(elem, D, S);
  TR_CHECK(B * geo.n_chunks <= std::numeric_limits<int32_t>::max(), kFwd, "x", "has B = ", B,
           " items: the grid (one block per item and feature chunk) is limited to 2^31 - 1 blocks");
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const tokred::FwdConfig cfg = tokred::pick_fwd_config(elem, N, geo, prop->sharedMemPerBlockOptin);
  TR_CHECK(cfg.smem > 0, kFwd, "x", "has D = ", D, " features: a 16-position tile needs more shared memory than the ",
           prop->sharedMemPerBlockOptin, " bytes this device allows per block (use backend='triton')");

  const at::Tensor w = contig(w_score), sc = contig(scores), lnw = contig(ln_weight), lnb = contig(ln_bias);
  const at::Tensor m = contig(mask);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  PrepOut prep;
  if (w.defined()) prep = run_prep(w, lnw, lnb, x, geo, S, /*with_wbf=*/false, stream);

  tokred::FwdParams p{};
  p.x = x.const_data_ptr();
  p.mask = m.defined() ? reinterpret_cast<const uint8_t*>(m.const_data_ptr<bool>()) : nullptr;
  p.scores = ptr_or_null(sc);
  p.scores_dtype = sc.defined() ? dtype_code(sc.scalar_type()) : tokred::kF32;
  p.ln_w = ptr_or_null(lnw);
  p.ln_b = ptr_or_null(lnb);
  p.ln_w_dtype = lnw.defined() ? dtype_code(lnw.scalar_type()) : tokred::kF32;
  p.ln_b_dtype = lnb.defined() ? dtype_code(lnb.scalar_type()) : tokred::kF32;
  p.wsf = prep.p.wsf;
  p.c1 = prep.p.c1;
  p.c2 = prep.p.c2;
  p.out = out.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr<float>();
  p.B = B;
  p.N = N;
  p.D = D;
  p.S = S;
  p.eps = static_cast<float>(eps);
  p.geo = geo;
  p.stages = cfg.stages;
  p.has_ln = lnw.defined();
  p.has_ln_bias = lnb.defined();
  p.pool_ln = p.has_ln && !pool_input;
  p.scores_given = sc.defined();
  // W' = W (no LayerNorm) in x's 16-bit dtype is exact: its lo half is zero, skip those MMAs.
  p.w_exact = w.defined() && !p.has_ln && w.scalar_type() == x.scalar_type() && elem == 2;
  p.x_vec = (int64_t(D) * elem) % 16 == 0 && aligned16(p.x);
  p.out_vec = (int64_t(D) * elem) % 16 == 0 && aligned16(p.out);
  switch (x.scalar_type()) {
    case at::kHalf: tokred::launch_fwd_f16(p, cfg.mtn, cfg.smem, stream); break;
    case at::kBFloat16: tokred::launch_fwd_bf16(p, cfg.mtn, cfg.smem, stream); break;
    default: tokred::launch_fwd_f32(p, cfg.mtn, cfg.smem, stream);
  }
  return {out, lse};
}

std::vector<at::Tensor> bwd_cuda(const at::Tensor& d_out_in, const at::Tensor& out_in, const at::Tensor& x_in,
                                 const OptTensor& w_score, const OptTensor& scores, const OptTensor& ln_weight,
                                 const OptTensor& ln_bias, const OptTensor& mask, const at::Tensor& lse_in, double eps,
                                 bool pool_input) {
  const int S = static_cast<int>(check_common(kBwd, x_in, w_score, scores, ln_weight, ln_bias, mask, eps).expect_int());
  check_bwd_extra(d_out_in, out_in, x_in, lse_in, S);
  check_cuda_inputs(kBwd, x_in);
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), d_out = d_out_in.contiguous(), out = out_in.contiguous();
  const at::Tensor lse = lse_in.contiguous();
  const at::Tensor w = contig(w_score), sc = contig(scores), lnw = contig(ln_weight), lnb = contig(ln_bias);
  const at::Tensor m = contig(mask);
  std::vector<at::Tensor> grads = grads_like(x, w_score, scores, ln_weight, ln_bias);
  at::Tensor &dx = grads[0], &dw = grads[1], &ds = grads[2], &dlnw = grads[3], &dlnb = grads[4];
  const int64_t B = x.size(0);
  const int N = static_cast<int>(x.size(1)), D = static_cast<int>(x.size(2));
  if (B == 0 || N == 0) {  // no position: every parameter gradient is 0 (dx, d_scores are empty)
    for (at::Tensor* t : {&dw, &dlnw, &dlnb}) {
      if (t->numel() > 0) t->zero_();
    }
    return grads;
  }

  const int elem = static_cast<int>(x.element_size());
  const tokred::Geometry geo = tokred::make_geometry(elem, D, S);
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const tokred::BwdConfig cfg = tokred::pick_bwd_config(elem, geo, prop->sharedMemPerBlockOptin);
  TR_CHECK(cfg.smem > 0, kBwd, "x", "has D = ", D, " features: a 16-position tile and the item's d_out rows need "
           "more shared memory than the ", prop->sharedMemPerBlockOptin,
           " bytes this device allows per block (use backend='triton')");
  // One block per SM (shared memory and ~200 registers per thread allow no second one): the
  // items are split into that many groups; each group's block writes one set of partial sums.
  const int64_t want = std::max<int64_t>(1, prop->multiProcessorCount / geo.n_chunks);
  const int64_t items_per_group = (B + std::min(B, want) - 1) / std::min(B, want);
  const int64_t groups = (B + items_per_group - 1) / items_per_group;

  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  PrepOut prep;
  if (w.defined()) prep = run_prep(w, lnw, lnb, x, geo, S, /*with_wbf=*/true, stream);
  const bool has_ln = lnw.defined();
  at::Tensor dw_part, dg_part, db_part;
  const auto f32 = x.options().dtype(at::kFloat);
  if (w.defined()) dw_part = at::empty({groups, D, S}, f32);
  if (has_ln) {
    dg_part = at::empty({groups, D}, f32);
    db_part = at::empty({groups, D}, f32);
  }

  tokred::BwdParams p{};
  p.x = x.const_data_ptr();
  p.dout = d_out.const_data_ptr();
  p.out = out.const_data_ptr();
  p.lse = lse.const_data_ptr<float>();
  p.mask = m.defined() ? reinterpret_cast<const uint8_t*>(m.const_data_ptr<bool>()) : nullptr;
  p.scores = ptr_or_null(sc);
  p.scores_dtype = sc.defined() ? dtype_code(sc.scalar_type()) : tokred::kF32;
  p.dscores = sc.defined() ? ds.mutable_data_ptr() : nullptr;
  p.w = ptr_or_null(w);
  p.w_dtype = w.defined() ? dtype_code(w.scalar_type()) : tokred::kF32;
  p.ln_w = ptr_or_null(lnw);
  p.ln_b = ptr_or_null(lnb);
  p.ln_w_dtype = has_ln ? dtype_code(lnw.scalar_type()) : tokred::kF32;
  p.ln_b_dtype = lnb.defined() ? dtype_code(lnb.scalar_type()) : tokred::kF32;
  p.wsf = prep.p.wsf;
  p.wbf = prep.p.wbf;
  p.c1 = prep.p.c1;
  p.c2 = prep.p.c2;
  p.dx = dx.mutable_data_ptr();
  p.dw_part = dw_part.defined() ? dw_part.mutable_data_ptr<float>() : nullptr;
  p.dg_part = has_ln ? dg_part.mutable_data_ptr<float>() : nullptr;
  p.db_part = has_ln ? db_part.mutable_data_ptr<float>() : nullptr;
  p.B = B;
  p.N = N;
  p.D = D;
  p.S = S;
  p.eps = static_cast<float>(eps);
  p.geo = geo;
  p.stages = cfg.stages;
  p.items_per_group = static_cast<int>(items_per_group);
  p.ntd = geo.dp / 8;
  p.has_ln = has_ln;
  p.has_ln_bias = lnb.defined();
  p.pool_ln = has_ln && !pool_input;
  p.scores_given = sc.defined();
  p.w_exact = w.defined() && !has_ln && w.scalar_type() == x.scalar_type() && elem == 2;
  p.x_vec = (int64_t(D) * elem) % 16 == 0 && aligned16(p.x) && aligned16(p.dx);
  p.y_vec = (int64_t(D) * elem) % 16 == 0 && aligned16(p.dout);
  const int grid = static_cast<int>(groups * geo.n_chunks);
  switch (x.scalar_type()) {
    case at::kHalf: tokred::launch_bwd_f16(p, grid, cfg.smem, stream); break;
    case at::kBFloat16: tokred::launch_bwd_bf16(p, grid, cfg.smem, stream); break;
    default: tokred::launch_bwd_f32(p, grid, cfg.smem, stream);
  }

  tokred::ReduceParams r{};
  r.dw_part = p.dw_part;
  r.dg_part = p.dg_part;
  r.db_part = p.db_part;
  r.dw = w.defined() ? dw.mutable_data_ptr() : nullptr;
  r.dg = has_ln ? dlnw.mutable_data_ptr() : nullptr;
  r.db = lnb.defined() ? dlnb.mutable_data_ptr() : nullptr;
  r.dw_dtype = p.w_dtype;
  r.dg_dtype = p.ln_w_dtype;
  r.db_dtype = p.ln_b_dtype;
  r.groups = static_cast<int>(groups);
  r.DS = int64_t(D) * S;
  r.D = D;
  tokred::launch_reduce(r, stream);
  return grads;
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
