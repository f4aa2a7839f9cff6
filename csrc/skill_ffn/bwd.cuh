// The skill-FFN backward (ffn_bwd.cu calls run_backward): the recompute + hidden-gradient
// GEMMs, the per-skill weight gradients, d skill_weights, and dX through down.cuh. The plan
// and its reasons: ffn_bwd.cu.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "common.h"
#include "skill_ffn/act.cuh"
#include "skill_ffn/down.cuh"
#include "skill_ffn/ffn.h"
#include "skill_ffn/gemm.cuh"

namespace skillkern {
namespace ffn {
namespace {

// 128 x 64 tiles (8 warps of 32 x 32): the recompute holds z (+ up for swiglu) and g.
template <typename T>
using UpBwdShape = TileShape<T, 128, 64, 4, 2>;

template <typename T, int NB>
constexpr int up_bwd_smem_bytes() {
  using S = UpBwdShape<T>;
  return std::max(LoopSmem<T, S, false, false, NB>::BYTES, LoopSmem<T, S, false, true, 1>::BYTES);
}

template <typename T, int NB>
__global__ void __launch_bounds__(UpBwdShape<T>::THREADS)
    _skill_up_bwd_kernel(const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ w1,
                         const T* __restrict__ b1, const T* __restrict__ w2, const float* __restrict__ scale,
                         T* __restrict__ hc, T* __restrict__ dz, float* __restrict__ dc_part,
                         const int32_t* __restrict__ order, const int32_t* __restrict__ offsets, int64_t N, int E,
                         int64_t d, int64_t h, int k, int act, bool vec_x, bool vec_w1, bool vec_w2, bool vec_o) {
  using S = UpBwdShape<T>;
  unsigned char* smem = dynamic_smem();
  __shared__ int64_t s_arow[S::BM];
  __shared__ int64_t s_slot[S::BM];
  __shared__ float s_rowpart[S::WARPS_N][S::BM];
  const int64_t h1 = NB * h;
  const int64_t n_ct = (h + S::BN - 1) / S::BN;
  const RowTile tile = row_tile(offsets, E, E, N, S::BM, n_ct);
  if (tile.skill < 0) return;  // whole block: surplus tile
  const int64_t n0 = int64_t(tile.pid_n) * S::BN;
  for (int r = threadIdx.x; r < S::BM; r += S::THREADS) {
    const int64_t pos = tile.row0 + r;
    const bool ok = pos < tile.row_end;
    const int64_t slot = ok ? int64_t(order[pos]) : int64_t(-1);
    s_slot[r] = slot;
    s_arow[r] = ok ? (slot / k) * d : int64_t(-1);  // x and dy are both (T, d)
  }
  __syncthreads();

  WarpAcc<T, S::FM, S::FN> z[NB];
  WarpAcc<T, S::FM, S::FN> g[1];
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) z[nb].zero();
  g[0].zero();
  const T* w1_e = w1 + tile.skill * d * h1;
  const T* bz[NB];
  bz[0] = w1_e;
  if constexpr (NB == 2) bz[1] = w1_e + h;
  row_mainloop<T, S, false, NB>(smem, s_arow, x, d, bz, h1, n0, h, vec_x, vec_w1, z);
  // G = dy @ w2[e]^T: B(k = c, n = j) = w2[e][j][c], the "col" layout with rows of length d
  const T* const bg[1] = {w2 + tile.skill * h * d};
  row_mainloop<T, S, true, 1>(smem, s_arow, dy, d, bg, d, n0, h, vec_x, vec_w2, g);

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int wm = warp / S::WARPS_N;
  const int wn = warp % S::WARPS_N;
  float* stage = reinterpret_cast<float*>(smem) + warp * 16 * kStageLd;
  const T* bias = b1 != nullptr ? b1 + tile.skill * h1 : nullptr;
  float rowsum[S::FM];
#pragma unroll
  for (int i = 0; i < S::FM; ++i) {
    rowsum[i] = 0.f;
#pragma unroll
    for (int j = 0; j < S::FN; ++j) {
      float zv[8], gv[8];
      block_values(z[0], i, j, stage, zv);
      float uv[8];
      if constexpr (NB == 2) block_values(z[1], i, j, stage, uv);
      block_values(g[0], i, j, stage, gv);
      const int r = wm * S::WM + 16 * i + (lane >> 1);
      const int64_t col = n0 + wn * S::WN + 16 * j + (lane & 1) * 8;
      const int64_t slot = s_slot[r];
      float part = 0.f;
      if (slot >= 0 && col < h) {
        const int64_t pos = tile.row0 + r;
        const int n = h - col < 8 ? int(h - col) : 8;
        const float c = scale[slot];
        add_bias8(zv, bias != nullptr ? bias + col : nullptr, n);
        float hv[8], dzv[8];
        if constexpr (NB == 2) {
          add_bias8(uv, bias != nullptr ? bias + h + col : nullptr, n);
          float duv[8];
#pragma unroll
          for (int q = 0; q < 8; ++q) {
            const float s = sigmoid(zv[q]);
            const float silu = zv[q] * s;
            const float dh = c * gv[q];
            hv[q] = silu * uv[q];
            dzv[q] = dh * uv[q] * s * (1.f + zv[q] * (1.f - s));
            duv[q] = dh * silu;
          }
          store8(dz + pos * h1 + h + col, duv, n, vec_o);
        } else {
#pragma unroll
          for (int q = 0; q < 8; ++q) {
            hv[q] = act_fwd(zv[q], act);
            dzv[q] = c * gv[q] * act_grad(zv[q], act);
          }
        }
        store8(dz + pos * h1 + col, dzv, n, vec_o);
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          if (q < n) part += gv[q] * to_f32(from_f32<T>(hv[q]));  // the H GEMM2 saw
          hv[q] *= c;
        }
        store8(hc + pos * h + col, hv, n, vec_o);
      }
      part += __shfl_xor_sync(kFullMask, part, 1);  // the row's other 8 columns of this block
      rowsum[i] += part;
    }
  }
  if (dc_part == nullptr) return;  // whole block
  if ((lane & 1) == 0) {
#pragma unroll
    for (int i = 0; i < S::FM; ++i) s_rowpart[wn][wm * S::WM + 16 * i + (lane >> 1)] = rowsum[i];
  }
  __syncthreads();
  for (int r = threadIdx.x; r < S::BM; r += S::THREADS) {
    if (s_slot[r] < 0) continue;
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < S::WARPS_N; ++w) sum += s_rowpart[w][r];  // fixed order: deterministic
    dc_part[(tile.row0 + r) * n_ct + tile.pid_n] = sum;
  }
}

// 128 x 128 tiles of dW (8 warps of 64 x 32); K runs over the rows (sorted positions) of one skill.
template <typename T>
using WgradShape = TileShape<T, 128, 128, 2, 4>;

// dw[e] (P x Q) = sum over sorted p of skill e of a[row_a(p)]^T b[row_b(p)], where row(p) is
// the token of slot order[p] (by_token) or p itself (a sorted buffer). db (if not null):
// db[e] = sum_p s_p * b[row_b(p)], s_p = scale[order[p]] (db_scaled) or 1.
template <typename T>
__global__ void __launch_bounds__(WgradShape<T>::THREADS, kTwoBlocks<T>)
    _skill_wgrad_kernel(const T* __restrict__ a, const T* __restrict__ b, const float* __restrict__ scale,
                        T* __restrict__ dw, T* __restrict__ db, const int32_t* __restrict__ order,
                        const int32_t* __restrict__ offsets, int64_t P, int64_t Q, int k, bool a_by_token,
                        bool b_by_token, bool db_scaled, bool vec_a, bool vec_b, bool vec_o) {
  using S = WgradShape<T>;
  using L = LoopSmem<T, S, true, false, 1>;
  constexpr int DB_GROUPS = S::THREADS / S::BN;      // threads per bias column
  constexpr int DB_ROWS = S::BK / DB_GROUPS;         // rows of a K step each of them sums
  static_assert(S::THREADS % S::BN == 0 && S::BK % DB_GROUPS == 0, "bias-grad split");
  unsigned char* smem = dynamic_smem();
  __shared__ float s_c[kStages][S::BK];
  __shared__ float s_db[S::THREADS];
  const int e = blockIdx.y;
  const int64_t n_q = (Q + S::BN - 1) / S::BN;
  const int64_t pid_p = blockIdx.x / n_q;
  const int64_t p0 = pid_p * S::BM;
  const int64_t q0 = (blockIdx.x % n_q) * S::BN;
  const int64_t lo = offsets[e];
  const int64_t hi = offsets[e + 1];
  const bool do_db = db != nullptr && pid_p == 0;  // uniform across the block

  WarpAcc<T, S::FM, S::FN> acc[1];
  acc[0].zero();
  float db_acc = 0.f;
  auto a_tile = [&](int s) { return reinterpret_cast<T*>(smem + s * L::STAGE_BYTES); };
  auto b_tile = [&](int s) { return reinterpret_cast<T*>(smem + s * L::STAGE_BYTES + L::A_BYTES); };
  auto load = [&](int s, int64_t kt) {
    const int64_t r0 = lo + kt * S::BK;
    load_tile<T, S::BK, S::BM, L::LDA, S::THREADS>(
        a_tile(s), a,
        [&](int r) -> int64_t {
          const int64_t pos = r0 + r;
          if (pos >= hi) return -1;
          return (a_by_token ? int64_t(order[pos] / k) : pos) * P;
        },
        p0, P, vec_a);
    load_tile<T, S::BK, S::BN, L::LDB, S::THREADS>(
        b_tile(s), b,
        [&](int r) -> int64_t {
          const int64_t pos = r0 + r;
          if (pos >= hi) return -1;
          return (b_by_token ? int64_t(order[pos] / k) : pos) * Q;
        },
        q0, Q, vec_b);
    if (do_db && threadIdx.x < S::BK) {
      const int64_t pos = r0 + threadIdx.x;
      s_c[s][threadIdx.x] = pos < hi ? (db_scaled ? scale[order[pos]] : 1.f) : 0.f;
    }
  };
  auto compute = [&](int s) {
    mma_stage<T, S, L, true, false, 1>(a_tile(s), b_tile(s), acc);
    if (do_db) {
      const T* Bs = b_tile(s);
      const int col = threadIdx.x % S::BN;
      const int r0 = (threadIdx.x / S::BN) * DB_ROWS;
#pragma unroll
      for (int r = r0; r < r0 + DB_ROWS; ++r) db_acc += s_c[s][r] * to_f32(Bs[r * L::LDB + col]);
    }
  };
  pipeline((hi - lo + S::BK - 1) / S::BK, load, compute);

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  float* stage = reinterpret_cast<float*>(smem) + warp * 16 * kStageLd;
  T* dw_e = dw + int64_t(e) * P * Q;
#pragma unroll
  for (int i = 0; i < S::FM; ++i) {
#pragma unroll
    for (int j = 0; j < S::FN; ++j) {
      float v[8];
      block_values(acc[0], i, j, stage, v);
      const int64_t p = p0 + (warp / S::WARPS_N) * S::WM + 16 * i + (lane >> 1);
      const int64_t col = q0 + (warp % S::WARPS_N) * S::WN + 16 * j + (lane & 1) * 8;
      if (p >= P || col >= Q) continue;
      store8(dw_e + p * Q + col, v, Q - col < 8 ? int(Q - col) : 8, vec_o);
    }
  }
  if (!do_db) return;  // whole block
  s_db[threadIdx.x] = db_acc;
  __syncthreads();
  if (threadIdx.x < S::BN && q0 + threadIdx.x < Q) {
    float sum = 0.f;
#pragma unroll
    for (int g = 0; g < DB_GROUPS; ++g) sum += s_db[g * S::BN + threadIdx.x];  // fixed order
    db[int64_t(e) * Q + q0 + threadIdx.x] = from_f32<T>(sum);
  }
}

// dscale[order[p]] = sum_t dc_part[p, t] + dy[tok] . b2[e] for active p (skill e), 0 for the
// empty slots. One warp per sorted position; lane-strided sums + a shuffle tree (fixed order).
template <typename T>
__global__ void __launch_bounds__(256)
    _skill_dscale_kernel(const float* __restrict__ dc_part, int64_t n_ct, const T* __restrict__ dy,
                         const T* __restrict__ b2, const int32_t* __restrict__ order,
                         const int32_t* __restrict__ offsets, int64_t N, int E, int64_t d, int k,
                         float* __restrict__ dscale) {
  const int lane = threadIdx.x % 32;
  const int64_t n_warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t n_active = offsets[E];
  for (int64_t p = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; p < N; p += n_warps) {
    const int64_t slot = order[p];
    float s = 0.f;
    if (p < n_active) {
      for (int64_t t = lane; t < n_ct; t += 32) s += dc_part[p * n_ct + t];
      if (b2 != nullptr) {
        const T* dy_row = dy + (slot / k) * d;
        const T* b2_row = b2 + int64_t(skill_of_row(offsets, E, p)) * d;
        for (int64_t c = lane; c < d; c += 32) s += to_f32(dy_row[c]) * to_f32(b2_row[c]);
      }
    }
    s = warp_sum(s);
    if (lane == 0) dscale[slot] = s;
  }
}

template <typename T, int NB>
void launch_up_bwd(const T* x, const T* dy, const T* w1, const T* b1, const T* w2, const float* scale, T* hc,
                   T* dz, float* dc_part, const int32_t* order, const int32_t* offsets, int64_t N, int E,
                   int64_t d, int64_t h, int k, int act, cudaStream_t stream) {
  using S = UpBwdShape<T>;
  constexpr int smem_bytes = up_bwd_smem_bytes<T, NB>();
  const int64_t n_ct = cdiv(h, S::BN);
  if (N == 0 || n_ct == 0) return;
  const int64_t grid = (cdiv(N, S::BM) + E) * n_ct;
  constexpr int V = kVec<T>;
  const bool vec_x = d % V == 0 && aligned16(x) && aligned16(dy);
  const bool vec_w1 = h % V == 0 && aligned16(w1);
  const bool vec_w2 = d % V == 0 && aligned16(w2);
  const bool vec_o = h % V == 0 && aligned16(hc) && aligned16(dz);
  auto kernel = _skill_up_bwd_kernel<T, NB>;
  prepare_launch(kernel, smem_bytes, grid);
  SK_LAUNCH(kernel, unsigned(grid), S::THREADS, smem_bytes, stream, x, dy, w1, b1, w2, scale, hc, dz,
                       dc_part, order, offsets, N, E, d, h, k, act, vec_x, vec_w1, vec_w2, vec_o);
}

template <typename T>
void launch_wgrad(const T* a, const T* b, const float* scale, T* dw, T* db, const int32_t* order,
                  const int32_t* offsets, int E, int64_t P, int64_t Q, int k, bool a_by_token, bool b_by_token,
                  bool db_scaled, cudaStream_t stream) {
  using S = WgradShape<T>;
  using L = LoopSmem<T, S, true, false, 1>;
  const int64_t n_q = cdiv(Q, S::BN);
  if (n_q == 0) return;
  // at least one P tile: with P == 0 (d == 0) the bias grad still has to be written
  const int64_t n_p = std::max<int64_t>(cdiv(P, S::BM), 1);
  constexpr int V = kVec<T>;
  auto kernel = _skill_wgrad_kernel<T>;
  prepare_launch(kernel, L::BYTES, n_p * n_q);
  const dim3 grid(unsigned(n_p * n_q), unsigned(E));
  SK_LAUNCH(kernel, grid, S::THREADS, L::BYTES, stream, a, b, scale, dw, db, order, offsets, P, Q, k,
                       a_by_token, b_by_token, db_scaled, P % V == 0 && aligned16(a), Q % V == 0 && aligned16(b),
                       Q % V == 0 && aligned16(dw));
}

template <typename T>
T* mutable_or_null(at::Tensor& t, bool present) {
  return present ? reinterpret_cast<T*>(t.mutable_data_ptr()) : nullptr;
}

// The backward on `stream`: [dx, dw1, dw2, db1, db2, dscale] (absent ones 0-element). Inputs
// contiguous, on one device, checked (ffn.h); order / offsets are the forward's routing.
inline std::vector<at::Tensor> run_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
                                            const at::Tensor& w1, const at::Tensor& w2,
                                            const std::optional<at::Tensor>& b1,
                                            const std::optional<at::Tensor>& b2, const at::Tensor& order,
                                            const at::Tensor& offsets, int act, bool need_dscale,
                                            cudaStream_t stream) {
  const int64_t n_tok = x.size(0), d = x.size(1), k = scale.size(1);
  const int64_t E = w1.size(0), h1 = w1.size(2), h = w2.size(1);
  const int64_t N = n_tok * k;
  const bool has_b1 = b1.has_value(), has_b2 = b2.has_value();
  const auto opts = x.options();

  at::Tensor dx = at::empty({n_tok, d}, opts);
  at::Tensor dw1 = at::empty({E, d, h1}, opts);
  at::Tensor dw2 = at::empty({E, h, d}, opts);
  at::Tensor db1 = has_b1 ? at::empty({E, h1}, opts) : at::empty({0}, opts);
  at::Tensor db2 = has_b2 ? at::empty({E, d}, opts) : at::empty({0}, opts);
  at::Tensor dscale = need_dscale ? at::empty({n_tok, k}, scale.options()) : at::empty({0}, opts);
  const int64_t n_ct = cdiv(h, UpBwdShape<float>::BN);  // hidden column tiles: same BN for every dtype
  static_assert(UpBwdShape<float>::BN == UpBwdShape<__half>::BN &&
                    UpBwdShape<float>::BN == UpBwdShape<__nv_bfloat16>::BN,
                "dc_part has one column per up_bwd column tile");
  at::Tensor hc = at::empty({N, h}, opts);   // c * H, sorted order
  at::Tensor dz = at::empty({N, h1}, opts);  // sorted order
  at::Tensor dc_part = need_dscale ? at::empty({N, n_ct}, scale.options()) : at::Tensor();
  at::Tensor dx_slots = k == 1 ? dx : at::empty({N, d}, opts);

  SK_DISPATCH_FLOAT(x.scalar_type(), "skill_ffn", [&] {
    using T = scalar_t;
    const int32_t* ord = order.const_data_ptr<int32_t>();
    const int32_t* off = offsets.const_data_ptr<int32_t>();
    const float* sc = scale.const_data_ptr<float>();
    const T* xp = reinterpret_cast<const T*>(x.const_data_ptr());
    const T* dyp = reinterpret_cast<const T*>(dy.const_data_ptr());
    const T* w1p = reinterpret_cast<const T*>(w1.const_data_ptr());
    const T* w2p = reinterpret_cast<const T*>(w2.const_data_ptr());
    const T* b1p = has_b1 ? reinterpret_cast<const T*>(b1->const_data_ptr()) : nullptr;
    const T* b2p = has_b2 ? reinterpret_cast<const T*>(b2->const_data_ptr()) : nullptr;
    T* hcp = reinterpret_cast<T*>(hc.mutable_data_ptr());
    T* dzp = reinterpret_cast<T*>(dz.mutable_data_ptr());
    float* dcp = need_dscale ? dc_part.mutable_data_ptr<float>() : nullptr;
    if (act == kSwiglu) {
      launch_up_bwd<T, 2>(xp, dyp, w1p, b1p, w2p, sc, hcp, dzp, dcp, ord, off, N, int(E), d, h, int(k), act, stream);
    } else {
      launch_up_bwd<T, 1>(xp, dyp, w1p, b1p, w2p, sc, hcp, dzp, dcp, ord, off, N, int(E), d, h, int(k), act, stream);
    }
    // dW1 = X^T dZ, db1 = sum dZ;  dW2 = (cH)^T dY, db2 = sum c dY
    launch_wgrad<T>(xp, dzp, sc, reinterpret_cast<T*>(dw1.mutable_data_ptr()), mutable_or_null<T>(db1, has_b1), ord,
                    off, int(E), d, h1, int(k), /*a_by_token=*/true, /*b_by_token=*/false, /*db_scaled=*/false, stream);
    launch_wgrad<T>(hcp, dyp, sc, reinterpret_cast<T*>(dw2.mutable_data_ptr()), mutable_or_null<T>(db2, has_b2), ord,
                    off, int(E), h, d, int(k), /*a_by_token=*/false, /*b_by_token=*/true, /*db_scaled=*/true, stream);
    // dX = dZ @ w1^T per slot (w1[e] is (d, h1): the "col" layout of B = w1[e]^T), then combined
    T* dxs = reinterpret_cast<T*>(dx_slots.mutable_data_ptr());
    launch_down<T, true>(dzp, w1p, nullptr, nullptr, dxs, ord, off, N, int(E), h1, d, aligned16(w1p), stream);
    if (k > 1) launch_combine<T>(dxs, reinterpret_cast<T*>(dx.mutable_data_ptr()), n_tok, int(k), d, stream);
    if (need_dscale && N > 0) {
      const int64_t blocks = std::min<int64_t>(cdiv(N, 8), int64_t(1) << 20);  // 8 warps per block
      auto kernel = _skill_dscale_kernel<T>;
      SK_LAUNCH(kernel, unsigned(blocks), 256, 0, stream, dcp, n_ct, dyp, b2p, ord, off, N, int(E), d,
                           int(k), dscale.mutable_data_ptr<float>());
    }
  });
  return {dx, dw1, dw2, db1, db2, dscale};
}

}  // namespace
}  // namespace ffn
}  // namespace skillkern
