// The two small kernels around token_reduce's forward / backward (token_reduce.h):
//
// prep    w_score (D, S) -> tensor-core B fragments of W' = diag(ln_weight) W (W without a
//         LayerNorm), split into hi + lo storage-type parts and stored in fragment order, one
//         uint4 per lane {b0 hi, b1 hi, b0 lo, b1 lo}, so that a warp loads a fragment with one
//         coalesced 512-byte request:
//           w_score_frags [D / k-step][S / 8][32]  element (k = feature, n = token)   (scores, GEMM3)
//           w_dscore_frags [S / k-step][D / 8][32]  element (k = token, n = feature)   (d scores @ W'^T)
//         and c1[s] = sum_d W'[d, s] (of the represented hi + lo values, so that
//         x . W' - mean c1 cancels exactly), c2[s] = sum_d ln_bias[d] W[d, s].
//         One warp per fragment tile / per token: D = 768, S = 24 -> 360 warps, a few us.
// reduce  the backward's per-block partial sums of d_w_score, d_ln_weight, d_ln_bias, added
//         block by block in index order (deterministic), written in the parameters' dtypes.
#pragma once

#include "token_reduce/mma.cuh"

namespace skillkern {
namespace tokred {

// W'[d, s] in fp32, 0 outside (D, S). __fmul_rn: the same bits wherever it is recomputed.
__device__ __forceinline__ float w_prime(const PrepParams& p, int d, int s) {
  if (d >= p.D || s >= p.S) return 0.f;
  const float w = load_any(p.w, p.w_dtype, static_cast<int64_t>(d) * p.S + s);
  return p.has_ln ? __fmul_rn(load_any(p.ln_w, p.ln_w_dtype, d), w) : w;
}

// The B fragment (lane's two registers, hi and lo) of the tile whose element (k, n) is
// W'[feature(k, n), token(k, n)]; by_feature: k = feature (w_score_frags), else k = token (w_dscore_frags).
template <typename T>
__device__ __forceinline__ uint4 w_fragment(const PrepParams& p, int k0, int n0, bool by_feature, int lane) {
  const int g = lane >> 2, t = lane & 3;
  uint32_t hi[2], lo[2];
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    if constexpr (Traits<T>::k16) {
      const int k = k0 + 2 * t + 8 * j;
      uint16_t h0, l0, h1, l1;
      if (by_feature) {
        split<T>(w_prime(p, k, n0 + g), h0, l0);
        split<T>(w_prime(p, k + 1, n0 + g), h1, l1);
      } else {
        split<T>(w_prime(p, n0 + g, k), h0, l0);
        split<T>(w_prime(p, n0 + g, k + 1), h1, l1);
      }
      hi[j] = pack16(h0, h1);
      lo[j] = pack16(l0, l1);
    } else {
      const int k = k0 + t + 4 * j;
      split<T>(by_feature ? w_prime(p, k, n0 + g) : w_prime(p, n0 + g, k), hi[j], lo[j]);
    }
  }
  return make_uint4(hi[0], hi[1], lo[0], lo[1]);
}

template <typename T>
__global__ void __launch_bounds__(32) token_reduce_prep_kernel(const PrepParams p) {
  constexpr int kK = Traits<T>::kK;
  const int lane = threadIdx.x;
  const int n_sf = p.nks * p.nt;
  const int n_bf = p.w_dscore_frags != nullptr ? p.nks_tokens * p.nt_features : 0;
  const int blk = blockIdx.x;
  if (blk < n_sf) {
    const int ks = blk / p.nt, nt = blk - ks * p.nt;
    p.w_score_frags[static_cast<size_t>(blk) * 32 + lane] = w_fragment<T>(p, ks * kK, nt * 8, true, lane);
  } else if (blk < n_sf + n_bf) {
    const int b2 = blk - n_sf;
    const int k5 = b2 / p.nt_features, nt = b2 - k5 * p.nt_features;
    p.w_dscore_frags[static_cast<size_t>(b2) * 32 + lane] = w_fragment<T>(p, k5 * kK, nt * 8, false, lane);
  } else {
    const int s = blk - n_sf - n_bf;  // < 8 nt; tokens past S get 0
    float c1 = 0.f, c2 = 0.f;
    if (s < p.S) {
      for (int d = lane; d < p.D; d += 32) {
        typename Traits<T>::Bits h, l;
        split<T>(w_prime(p, d, s), h, l);
        c1 += joined<T>(h, l);
        if (p.has_ln_bias) {
          c2 += load_any(p.ln_b, p.ln_b_dtype, d) * load_any(p.w, p.w_dtype, static_cast<int64_t>(d) * p.S + s);
        }
      }
    }
    c1 = warp_sum(c1);
    c2 = warp_sum(c2);
    if (lane == 0) {
      p.c1[s] = c1;
      p.c2[s] = c2;
    }
  }
}

__global__ void __launch_bounds__(256) token_reduce_sum_partials_kernel(const ReduceParams p) {
  const int64_t n_dw = p.dw != nullptr ? p.DS : 0;
  const int64_t n_dg = p.dg != nullptr ? p.D : 0;
  const int64_t n_db = p.db != nullptr ? p.D : 0;
  const int64_t total = n_dw + n_dg + n_db;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    if (e < n_dw) {
      for (int g = 0; g < p.groups; ++g) acc += p.dw_part[g * p.DS + e];
      store_any(p.dw, p.dw_dtype, e, acc);
    } else if (e < n_dw + n_dg) {
      const int64_t i = e - n_dw;
      for (int g = 0; g < p.groups; ++g) acc += p.dg_part[g * int64_t(p.D) + i];
      store_any(p.dg, p.dg_dtype, i, acc);
    } else {
      const int64_t i = e - n_dw - n_dg;
      for (int g = 0; g < p.groups; ++g) acc += p.db_part[g * int64_t(p.D) + i];
      store_any(p.db, p.db_dtype, i, acc);
    }
  }
}

}  // namespace tokred
}  // namespace skillkern
