// The skill-FFN backward on Hopper (ffn_bwd.cu picks it where sm90_path() holds): the five GEMMs
// of ffn_bwd.cu's plan as CUTLASS grouped GEMMs (sm90_grouped.cu), which want their operands in
// sorted rows. With Z = x W1 + b1, H = act(Z), y_slot = c (H W2 + b2):
//   1. gather (fwd_sm90.cuh's kernel, one pass): xs, dys = x and dy rows in sorted order, ss =
//      the slot scales, inv = the inverse permutation.
//   2. Z = xs @ w1[e] + b1[e]        GEMM1 with the identity code, rounded to x's dtype (swiglu:
//                                    both halves, (N, 2h))
//   3. G = dys @ w2[e]^T             dgrad (w2 (E, h, d) is w2^T K-major), rounded
//   4. _act_bwd_rows_kernel, one warp per sorted row, in place: dZ = c G act'(Z) and Hc = c act(Z)
//      (for swiglu, dZ of both halves), and dscale.
//   5. dW1 = xs^T dZ, dW2 = Hc^T dys  wgrad per skill, K = its rows; an unused skill gets zeros.
//   6. db1 = the column sums of dZ per skill, db2 those of c dy: fixed row splits, then a
//      fixed-order sum of the splits' partials.
//   7. dX slots = dZ @ w1[e]^T        dgrad (w1 (E, d, h) is w1^T K-major), into xs's buffer,
//      then the forward's combine (slot order, fp32).
// Deterministic: no atomics, every sum in a fixed order (CUTLASS's GEMMs run no split-K).
// Against the mma.sync backward (bwd.cuh), which keeps Z and G in fp32 registers: here they pass
// through memory rounded to 16 bits, so act(Z) and act'(Z) see Z rounded once more (a relative
// 2^-9 for bf16 in Z, within the 16-bit tolerances of the tests).
// Cost at the goal shape (N = 32k slots, d = 1024, h = 4096, bf16): the five GEMMs are 1.37
// TFLOP (~1.7 ms at 790 TFLOP/s, ~2.3 ms at a grouped GEMM's ~75 %); Z and G written and read
// and dZ and Hc written: 4 x 268 MB more than the fused mma.sync kernel moves, ~0.3 ms at
// 3.5 TB/s; the bias sums re-read dZ and dys (~0.1 ms). Prediction ~2.7 ms.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "common.h"
#include "skill_ffn/act.cuh"
#include "skill_ffn/fwd_sm90.cuh"
#include "skill_ffn/sm90_grouped.h"

namespace skillkern {
namespace ffn {
namespace {

constexpr int kColsumSplits = 32;  // row splits per skill of the bias-gradient column sums

// Step 4. One warp per sorted row p; each lane takes 8 columns at a time (h % 8 == 0). z is Z's
// buffer (N, h1), g G's (N, h), both rewritten in place. One-input activations: g becomes dZ =
// c G act'(Z) and z becomes Hc = c act(Z). swiglu (h1 = 2h, Z = [gate | up], H = silu(gate) up):
// z becomes dZ = [c G up silu'(gate) | c G silu(gate)] and g becomes Hc. dscale[slot] = sum_j G_j
// H_j + dy . b2[e], with H rounded to x's dtype as the forward's GEMM2 saw it (0 for an empty slot).
template <typename T>
__global__ void __launch_bounds__(256)
    _act_bwd_rows_kernel(T* __restrict__ z, T* __restrict__ g, const float* __restrict__ ss,
                         const T* __restrict__ dys, const T* __restrict__ b2, const int32_t* __restrict__ order,
                         const int32_t* __restrict__ offsets, int E, int64_t N, int64_t h, int64_t d, int act,
                         float* __restrict__ dscale) {
  const int lane = threadIdx.x % 32;
  const int64_t n_warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t active = offsets[E];
  const bool glu = act == kSwiglu;
  const int64_t h1 = glu ? 2 * h : h;
  for (int64_t p = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; p < N; p += n_warps) {
    if (p >= active) {  // an empty slot: no rows to write, a zero scale gradient
      if (dscale != nullptr && lane == 0) dscale[order[p]] = 0.f;
      continue;
    }
    const float c = ss[p];
    float part = 0.f;
    for (int64_t col = int64_t(lane) * 8; col < h; col += 32 * 8) {
      T* zp = z + p * h1 + col;
      T* gp = g + p * h + col;
      float zv[8], gv[8], up[8], hc[8], dz[8], dup[8];
      load8(zp, zv);
      load8(gp, gv);
      if (glu) load8(zp + h, up);
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        float hv;
        if (glu) {
          const float s = act_fwd(zv[q], kSilu);
          hv = s * up[q];
          dz[q] = c * gv[q] * up[q] * act_grad(zv[q], kSilu);
          dup[q] = c * gv[q] * s;
        } else {
          hv = act_fwd(zv[q], act);
          dz[q] = c * gv[q] * act_grad(zv[q], act);
        }
        part += gv[q] * to_f32(from_f32<T>(hv));  // the H GEMM2 saw
        hc[q] = c * hv;
      }
      if (glu) {
        store8(zp, dz, 8, true);
        store8(zp + h, dup, 8, true);
        store8(gp, hc, 8, true);
      } else {
        store8(gp, dz, 8, true);
        store8(zp, hc, 8, true);
      }
    }
    if (dscale == nullptr) continue;
    if (b2 != nullptr) {
      const T* b2_row = b2 + int64_t(skill_of_row(offsets, E, p)) * d;
      for (int64_t col = lane; col < d; col += 32) part += to_f32(dys[p * d + col]) * to_f32(b2_row[col]);
    }
    part = warp_sum(part);
    if (lane == 0) dscale[order[p]] = part;
  }
}

// Step 6, first half. Block (e * S + s, column block): rows of split s of skill e, one column per
// thread, scaled by rowscale[row] when given. partial is (E, S, n) fp32.
template <typename T>
__global__ void __launch_bounds__(256)
    _skill_colsum_partial_kernel(const T* __restrict__ src, const float* __restrict__ rowscale,
                                 const int32_t* __restrict__ offsets, int64_t n, float* __restrict__ partial) {
  const int e = blockIdx.x / kColsumSplits, s = blockIdx.x % kColsumSplits;
  const int64_t col = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (col >= n) return;
  const int64_t r0 = offsets[e], len = offsets[e + 1] - offsets[e];
  const int64_t a = r0 + len * s / kColsumSplits, b = r0 + len * (s + 1) / kColsumSplits;
  float acc = 0.f;
  for (int64_t r = a; r < b; ++r) acc += to_f32(src[r * n + col]) * (rowscale != nullptr ? rowscale[r] : 1.f);
  partial[int64_t(blockIdx.x) * n + col] = acc;
}

// Step 6, second half: out[e, col] = the sum of the S partials in split order.
template <typename T>
__global__ void __launch_bounds__(256)
    _skill_colsum_final_kernel(const float* __restrict__ partial, int64_t E, int64_t n, T* __restrict__ out) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < E * n; i += stride) {
    const int64_t e = i / n, col = i % n;
    float acc = 0.f;
    for (int s = 0; s < kColsumSplits; ++s) acc += partial[(e * kColsumSplits + s) * n + col];
    out[i] = from_f32<T>(acc);
  }
}

// out (E, n) = the per-skill column sums of src (N, n) sorted rows, each row times rowscale (or 1).
template <typename T>
void launch_skill_colsum(const T* src, const float* rowscale, const int32_t* offsets, int64_t E, int64_t n,
                         float* partial, T* out, cudaStream_t stream) {
  const dim3 grid(unsigned(E * kColsumSplits), unsigned(cdiv(n, 256)));
  auto part = _skill_colsum_partial_kernel<T>;
  SK_LAUNCH(part, grid, 256, 0, stream, src, rowscale, offsets, n, partial);
  const int64_t fgrid = std::min<int64_t>(cdiv(E * n, 256), int64_t(1) << 20);
  auto fin = _skill_colsum_final_kernel<T>;
  SK_LAUNCH(fin, unsigned(fgrid), 256, 0, stream, partial, E, n, out);
}

// The outputs of run_backward (bwd.cuh): {dx, dw1, dw2, db1, db2, dscale}, for the inputs that
// sm90_path (sm90_path.h) accepts; sms: the device's SM count.
inline std::vector<at::Tensor> run_backward_sm90(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
                                                 const at::Tensor& w1, const at::Tensor& w2,
                                                 const std::optional<at::Tensor>& b1,
                                                 const std::optional<at::Tensor>& b2, const at::Tensor& order,
                                                 const at::Tensor& offsets, int act, bool need_dscale, int sms,
                                                 cudaStream_t stream) {
  const int64_t n_tok = x.size(0), d = x.size(1), k = scale.size(1), N = n_tok * k;
  const int64_t E = w1.size(0), h = w2.size(1);
  const bool has_b1 = b1.has_value(), has_b2 = b2.has_value();
  const auto opts = x.options();
  const auto f32 = opts.dtype(at::kFloat);
  TORCH_CHECK(d <= INT32_MAX && h <= INT32_MAX, "skill_ffn: d and h must fit in int32");

  const bool glu = act == kSwiglu;
  const int64_t h1 = glu ? 2 * h : h;  // Z's width (w1 (E, d, h1))
  at::Tensor dx = at::empty({n_tok, d}, opts);
  at::Tensor dw1 = at::empty({E, d, h1}, opts);
  at::Tensor dw2 = at::empty({E, h, d}, opts);
  at::Tensor db1 = has_b1 ? at::empty({E, h1}, opts) : at::empty({0}, opts);
  at::Tensor db2 = has_b2 ? at::empty({E, d}, opts) : at::empty({0}, opts);
  at::Tensor dscale = need_dscale ? at::empty({n_tok, k}, scale.options()) : at::empty({0}, opts);
  if (N == 0) {  // no slot: every skill unused
    for (at::Tensor* t : {&dw1, &dw2, &db1, &db2}) t->zero_();
    return {dx, dw1, dw2, db1, db2, dscale};
  }

  at::Tensor xs = at::empty({N, d}, opts);    // x rows, sorted; later the dX slot rows
  at::Tensor dys = at::empty({N, d}, opts);   // dy rows, sorted
  at::Tensor ss = at::empty({N}, f32);
  at::Tensor inv = at::empty({N}, opts.dtype(at::kInt));
  at::Tensor z = at::empty({N, h1}, opts);      // Z; then Hc (one-input) or dZ (swiglu)
  at::Tensor g = at::empty({N, h}, opts);       // G; then dZ (one-input) or Hc (swiglu)
  at::Tensor& dz = glu ? z : g;
  at::Tensor& hc = glu ? g : z;
  at::Tensor partial = at::empty({E * kColsumSplits * std::max(d, h1)}, f32);
  at::Tensor ws = at::empty({int64_t(sm90::workspace_bytes(int(E), sms))}, opts.dtype(at::kByte));
  const sm90::Dtype dt = sm90_dtype(x);
  const int32_t* off = offsets.const_data_ptr<int32_t>();
  void* wsp = ws.mutable_data_ptr();

  dispatch_16bit(x, [&](auto tag) {
    using T = decltype(tag);
    auto p = [](at::Tensor& t) { return reinterpret_cast<T*>(t.mutable_data_ptr()); };
    launch_gather_sorted<T>(x, reinterpret_cast<const T*>(dy.const_data_ptr()), scale, order, offsets, int(E),
                            int(k), N, d, xs, p(dys), ss, inv, stream);
    check_sm90(sm90::up(dt, xs.const_data_ptr(), w1.const_data_ptr(), opt_ptr(b1), z.mutable_data_ptr(), off,
                        int(E), int(d), int(h1), kIdentity, sms, wsp, stream),
               "backward Z");
    check_sm90(sm90::dgrad(dt, dys.const_data_ptr(), w2.const_data_ptr(), g.mutable_data_ptr(), off, int(E),
                           int(d), int(h), sms, wsp, stream),
               "backward G");
    const int64_t grid = std::min<int64_t>(cdiv(N, 8), int64_t(1) << 20);  // 8 warps per block
    auto act_bwd = _act_bwd_rows_kernel<T>;
    SK_LAUNCH(act_bwd, unsigned(grid), 256, 0, stream, p(z), p(g), ss.const_data_ptr<float>(), p(dys),
              has_b2 ? reinterpret_cast<const T*>(b2->const_data_ptr()) : nullptr, order.const_data_ptr<int32_t>(),
              off, int(E), N, h, d, act, need_dscale ? dscale.mutable_data_ptr<float>() : nullptr);
    check_sm90(sm90::wgrad(dt, xs.const_data_ptr(), dz.const_data_ptr(), dw1.mutable_data_ptr(), off, int(E),
                           int(d), int(h1), sms, wsp, stream),
               "backward dW1");
    check_sm90(sm90::wgrad(dt, hc.const_data_ptr(), dys.const_data_ptr(), dw2.mutable_data_ptr(), off, int(E),
                           int(h), int(d), sms, wsp, stream),
               "backward dW2");
    float* pp = partial.mutable_data_ptr<float>();
    if (has_b1) launch_skill_colsum<T>(p(dz), nullptr, off, E, h1, pp, p(db1), stream);
    if (has_b2) launch_skill_colsum<T>(p(dys), ss.const_data_ptr<float>(), off, E, d, pp, p(db2), stream);
    check_sm90(sm90::dgrad(dt, dz.const_data_ptr(), w1.const_data_ptr(), xs.mutable_data_ptr(), off, int(E),
                           int(h1), int(d), sms, wsp, stream),
               "backward dX");
    launch_combine_sorted<T>(xs, inv, offsets, int(E), n_tok, int(k), d, dx, stream);
  });
  return {dx, dw1, dw2, db1, db2, dscale};
}

}  // namespace
}  // namespace ffn
}  // namespace skillkern
