// The device-independent half of the native token_reduce ops: outputs allocated like x, the
// launches sized (token_reduce.h) and queued on `stream`. tokred_host.cpp calls these after its
// argument and device checks; the CPU emulation (csrc/emu/) calls them on CPU tensors with the
// kernels compiled as host code and chosen shared-memory limits.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "common.h"
#include "token_reduce/token_reduce.h"

namespace skillkern {
namespace tokred {

using OptTensor = std::optional<at::Tensor>;

constexpr const char* kFwd = "token_reduce_fwd_cuda";
constexpr const char* kBwd = "token_reduce_bwd_cuda";

// What the launch sizes depend on: the opt-in shared memory per block (the forward's and the
// backward's; a device gives one value for both) and the number of SMs.
struct DeviceLimits {
  size_t fwd_smem, bwd_smem;
  int n_sm;
};

// [dx, d_w_score, d_scores, d_ln_weight, d_ln_bias]; absent ones are 0-element tensors in x's dtype.
inline std::vector<at::Tensor> grads_like(const at::Tensor& x, const OptTensor& w_score, const OptTensor& scores,
                                          const OptTensor& ln_weight, const OptTensor& ln_bias) {
  auto like = [&](const OptTensor& t) {
    return t.has_value() ? at::empty_symint(t->sym_sizes(), t->options()) : at::empty({0}, x.options());
  };
  return {at::empty_symint(x.sym_sizes(), x.options()), like(w_score), like(scores), like(ln_weight),
          ln_weight.has_value() ? like(ln_bias) : at::empty({0}, x.options())};
}

inline int dtype_code(at::ScalarType t) {
  return t == at::kHalf ? kF16 : (t == at::kBFloat16 ? kBF16 : kF32);
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

inline at::Tensor contig(const OptTensor& t) { return t.has_value() ? t->contiguous() : at::Tensor(); }

inline const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

struct PrepOut {
  at::Tensor buffer;  // keeps the workspace alive until the launches are queued
  PrepParams p{};
};

// Prep workspace (fragments of W', c1, c2) and launch; the caller's kernels read it.
inline PrepOut run_prep(const at::Tensor& w, const at::Tensor& lnw, const at::Tensor& lnb, const at::Tensor& x,
                        const Geometry& geo, int S, bool with_dscore_frags, cudaStream_t stream) {
  const int elem = static_cast<int>(x.element_size());
  const int k_step = elem == 2 ? 16 : 8;
  PrepOut r;
  PrepParams& p = r.p;
  p.D = static_cast<int>(x.size(2));
  p.S = S;
  p.nt = geo.nt;
  p.nks = geo.nks;
  p.nks_tokens = bwd_token_rows(elem, geo.nt) / k_step;
  p.nt_features = geo.dp / 8;
  Carver c;
  const size_t at_score_frags = c.take(size_t(p.nks) * p.nt * 32 * sizeof(uint4));
  const size_t dscore_frag_bytes = size_t(p.nks_tokens) * p.nt_features * 32 * sizeof(uint4);
  const size_t at_dscore_frags = with_dscore_frags ? c.take(dscore_frag_bytes) : 0;
  const size_t at_c1 = c.take(size_t(8) * geo.nt * sizeof(float));
  const size_t at_c2 = c.take(size_t(8) * geo.nt * sizeof(float));
  r.buffer = at::empty({static_cast<int64_t>(c.used)}, x.options().dtype(at::kByte));
  uint8_t* base = r.buffer.mutable_data_ptr<uint8_t>();
  p.w = w.const_data_ptr();
  p.w_dtype = dtype_code(w.scalar_type());
  p.ln_w = ptr_or_null(lnw);
  p.ln_b = ptr_or_null(lnb);
  p.ln_w_dtype = lnw.defined() ? dtype_code(lnw.scalar_type()) : kF32;
  p.ln_b_dtype = lnb.defined() ? dtype_code(lnb.scalar_type()) : kF32;
  p.w_score_frags = reinterpret_cast<uint4*>(base + at_score_frags);
  p.w_dscore_frags = with_dscore_frags ? reinterpret_cast<uint4*>(base + at_dscore_frags) : nullptr;
  p.c1 = reinterpret_cast<float*>(base + at_c1);
  p.c2 = reinterpret_cast<float*>(base + at_c2);
  p.has_ln = lnw.defined();
  p.has_ln_bias = lnb.defined();
  SK_DISPATCH_FLOAT(x.scalar_type(), "token_reduce", [&] { launch_prep<scalar_t>(p, stream); });
  return r;
}

// The fields FwdParams and BwdParams share: the inputs, the prep outputs, sizes and switches.
template <class Params>
void set_common(Params& p, const at::Tensor& x, const at::Tensor& m, const at::Tensor& w, const at::Tensor& sc,
                const at::Tensor& lnw, const at::Tensor& lnb, const PrepOut& prep, int S, double eps,
                const Geometry& geo, int stages, bool pool_input) {
  p.x = x.const_data_ptr();
  p.mask = m.defined() ? reinterpret_cast<const uint8_t*>(m.const_data_ptr<bool>()) : nullptr;
  p.scores = ptr_or_null(sc);
  p.scores_dtype = sc.defined() ? dtype_code(sc.scalar_type()) : kF32;
  p.ln_w = ptr_or_null(lnw);
  p.ln_b = ptr_or_null(lnb);
  p.ln_w_dtype = lnw.defined() ? dtype_code(lnw.scalar_type()) : kF32;
  p.ln_b_dtype = lnb.defined() ? dtype_code(lnb.scalar_type()) : kF32;
  p.w_score_frags = prep.p.w_score_frags;
  p.c1 = prep.p.c1;
  p.c2 = prep.p.c2;
  p.B = x.size(0);
  p.N = static_cast<int>(x.size(1));
  p.D = static_cast<int>(x.size(2));
  p.S = S;
  p.eps = static_cast<float>(eps);
  p.geo = geo;
  p.stages = stages;
  p.has_ln = lnw.defined();
  p.has_ln_bias = lnb.defined();
  p.pool_ln = p.has_ln && !pool_input;
  p.scores_given = sc.defined();
  // W' = W (no LayerNorm) in x's 16-bit dtype is exact: its lo half is zero, skip those MMAs.
  p.w_exact = w.defined() && !p.has_ln && w.scalar_type() == x.scalar_type() && x.element_size() == 2;
}

// Whether the forward also returns out's rounding residual: 16-bit x pooled raw (pool_input,
// scores given: token_pool, or no LayerNorm at all), whose mean can dwarf its spread, so that
// delta = <d_out, out> on the rounded out would lose the gradient's small part. The Triton op's
// rule (triton_impl.needs_lo).
inline bool wants_lo(const at::Tensor& x, bool scores_given, bool has_ln, bool pool_input) {
  return (pool_input || scores_given || !has_ln) && x.element_size() == 2;
}

// (out, lse, out_lo) of skillkern::token_reduce_fwd; the arguments are checked (tokred_host.cpp).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> run_forward(const at::Tensor& x_in, const OptTensor& w_score,
                                                      const OptTensor& scores, const OptTensor& ln_weight,
                                                      const OptTensor& ln_bias, const OptTensor& mask, double eps,
                                                      bool pool_input, const DeviceLimits& dev, cudaStream_t stream) {
  const int S = static_cast<int>(w_score.has_value() ? w_score->size(1) : scores->size(2));
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0);
  const int N = static_cast<int>(x.size(1)), D = static_cast<int>(x.size(2));
  at::Tensor out = at::empty({B, S, D}, x.options());
  at::Tensor lse = at::empty({B, S}, x.options().dtype(at::kFloat));
  at::Tensor lo = wants_lo(x, scores.has_value(), ln_weight.has_value(), pool_input) ? at::empty({B, S, D}, x.options()) : x.new_empty({0});
  if (B == 0) return {out, lse, lo};

  const int elem = static_cast<int>(x.element_size());
  const Geometry geo = make_geometry(elem, D, S);
  SK_CHECK_ARG(B * geo.n_chunks <= std::numeric_limits<int32_t>::max(), kFwd, "x", "has B = ", B,
               " items: the grid (one block per item and feature chunk) is limited to 2^31 - 1 blocks");
  const FwdConfig cfg = pick_fwd_config(elem, N, geo, dev.fwd_smem);
  SK_CHECK_ARG(cfg.smem > 0, kFwd, "x", "has D = ", D,
               " features: a 16-position tile needs more shared memory than the ",
               dev.fwd_smem, " bytes this device allows per block (use backend='triton')");

  const at::Tensor w = contig(w_score), sc = contig(scores), lnw = contig(ln_weight), lnb = contig(ln_bias);
  const at::Tensor m = contig(mask);
  PrepOut prep;
  if (w.defined()) prep = run_prep(w, lnw, lnb, x, geo, S, /*with_dscore_frags=*/false, stream);

  FwdParams p{};
  set_common(p, x, m, w, sc, lnw, lnb, prep, S, eps, geo, cfg.stages, pool_input);
  p.out = out.mutable_data_ptr();
  p.out_lo = lo.numel() ? lo.mutable_data_ptr() : nullptr;
  p.lse = lse.mutable_data_ptr<float>();
  p.x_vec = (int64_t(D) * elem) % 16 == 0 && aligned16(p.x);
  p.out_vec = (int64_t(D) * elem) % 16 == 0 && aligned16(p.out) && (p.out_lo == nullptr || aligned16(p.out_lo));
  SK_DISPATCH_FLOAT(x.scalar_type(), kFwd, [&] { launch_fwd<scalar_t>(p, cfg.mtn, cfg.smem, stream); });
  return {out, lse, lo};
}

// [dx, d_w_score, d_scores, d_ln_weight, d_ln_bias] of skillkern::token_reduce_bwd (absent ones
// are 0-element tensors); the arguments are checked (tokred_host.cpp).
inline std::vector<at::Tensor> run_backward(const at::Tensor& d_out_in, const at::Tensor& out_in,
                                            const at::Tensor& x_in, const OptTensor& w_score, const OptTensor& scores,
                                            const OptTensor& ln_weight, const OptTensor& ln_bias,
                                            const OptTensor& mask, const at::Tensor& lse_in, double eps,
                                            bool pool_input, const DeviceLimits& dev, cudaStream_t stream) {
  const int S = static_cast<int>(w_score.has_value() ? w_score->size(1) : scores->size(2));
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
  const Geometry geo = make_geometry(elem, D, S);
  const BwdConfig cfg = pick_bwd_config(elem, geo, dev.bwd_smem);
  SK_CHECK_ARG(cfg.smem > 0, kBwd, "x", "has D = ", D, " features: a 16-position tile and the item's d_out rows need "
               "more shared memory than the ", dev.bwd_smem,
               " bytes this device allows per block (use backend='triton')");
  // One block per SM (shared memory and ~200 registers per thread allow no second one): the
  // items are split into that many groups; each group's block writes one set of partial sums.
  const int64_t want = std::max<int64_t>(1, dev.n_sm / geo.n_chunks);
  const int64_t items_per_group = (B + std::min(B, want) - 1) / std::min(B, want);
  const int64_t groups = (B + items_per_group - 1) / items_per_group;

  PrepOut prep;
  if (w.defined()) prep = run_prep(w, lnw, lnb, x, geo, S, /*with_dscore_frags=*/true, stream);
  const bool has_ln = lnw.defined();
  at::Tensor dw_part, dg_part, db_part;
  const auto f32 = x.options().dtype(at::kFloat);
  if (w.defined()) dw_part = at::empty({groups, D, S}, f32);
  if (has_ln) {
    dg_part = at::empty({groups, D}, f32);
    db_part = at::empty({groups, D}, f32);
  }

  BwdParams p{};
  set_common(p, x, m, w, sc, lnw, lnb, prep, S, eps, geo, cfg.stages, pool_input);
  p.dout = d_out.const_data_ptr();
  p.out = out.const_data_ptr();
  p.out_dtype = dtype_code(out.scalar_type());
  p.lse = lse.const_data_ptr<float>();
  p.dscores = sc.defined() ? ds.mutable_data_ptr() : nullptr;
  p.w = ptr_or_null(w);
  p.w_dtype = w.defined() ? dtype_code(w.scalar_type()) : kF32;
  p.w_dscore_frags = prep.p.w_dscore_frags;
  p.dx = dx.mutable_data_ptr();
  p.dw_part = dw_part.defined() ? dw_part.mutable_data_ptr<float>() : nullptr;
  p.dg_part = has_ln ? dg_part.mutable_data_ptr<float>() : nullptr;
  p.db_part = has_ln ? db_part.mutable_data_ptr<float>() : nullptr;
  p.items_per_group = static_cast<int>(items_per_group);
  p.nt_features = geo.dp / 8;
  p.x_vec = (int64_t(D) * elem) % 16 == 0 && aligned16(p.x) && aligned16(p.dx);
  p.y_vec = (int64_t(D) * elem) % 16 == 0 && aligned16(p.dout);
  const int grid = static_cast<int>(groups * geo.n_chunks);
  SK_DISPATCH_FLOAT(x.scalar_type(), kBwd, [&] { launch_bwd<scalar_t>(p, grid, cfg.smem, stream); });

  ReduceParams r{};
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
  launch_reduce(r, stream);
  return grads;
}

}  // namespace tokred
}  // namespace skillkern
