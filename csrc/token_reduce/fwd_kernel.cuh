// Forward kernel of token_reduce / token_pool (instantiated per dtype in tokred_fwd_*.cu).
//
// Algorithm. One block (8 warps) per (item b, D chunk); the chunk is all of D unless
// D > 8 warps x 16 x mtiles_per_warp (D > 1024 for S <= 24). The block walks the item's positions in tiles
// of TN = 16 or 32 rows; each tile of x (all D features, storage type) is copied to shared
// memory once (cp.async, double-buffered when it fits) and everything else reads it there:
//   1. LayerNorm statistics per row (warp per row, two passes over the smem row, fp32);
//   2. scores z = LN(x) @ w_score without materialising LN(x):
//        z[n, s] = rstd_n (x[n] . W'[:, s] - mean_n c1[s]) + c2[s],  W' = diag(ln_weight) W,
//      c1 = sum_d W', c2 = ln_bias . W (prep kernel, tokred_aux.cu). Tensor cores: A = x exactly,
//      B = W' split hi + lo (fragment-ordered in global memory, L1/L2 resident). The 8 warps
//      split K = D (KSPLIT groups) and add their partials in a fixed order;
//   3. online softmax over positions per output token s (warp per s, running max / sum);
//   4. pooling acc[d, s] += sum_n x[n, d] p'[n, s] into register accumulators (each warp owns
//      mtiles_per_warp m-tiles of 16 features), A = x^T by ldmatrix.trans, B = p' split. With LN pooling,
//      p' = p rstd_n and corr[s] = sum_n p'[n, s] mean_n, so at the end
//        out[s, d] = ln_weight_d (acc[d, s] - corr[s]) / l[s] + ln_bias_d
//      (the weights of a token sum to one); without, out = acc / l.
// The subtraction x . W' - mean c1 (and acc - corr) uses the same represented W' (p') on both
// sides, so it cancels exactly up to fp32 accumulation rounding, even for large row means.
// A token of an item with no real position gets out = 0 and lse = +inf, as the Triton kernel.
// No atomics: each output element has one writer and every sum has a fixed order, so the
// results are bitwise reproducible. Precision: see mma.cuh (x exact, fp32 intermediates
// split hi + lo; fp32 inputs 3xTF32).
//
// Shared memory (bf16, D = 768, S = 24, TN = 32, two stages): x tiles 2 x 32 x 776 x 2 B =
// 99 KB, K-split partials 4 x 32 x 24 x 4 B = 12 KB, scores 3 KB, p' 3.8 KB: ~119 KB (the host
// picks TN / stages that fit the device: 227 KB on H100, 163 KB on A100).
// Floor at the typical shape (B = 1024, N = 256, D = 768, S = 24, bf16): x = 403 MB read once,
// out 38 MB: ~0.14 ms at 3 TB/s. Tensor-core work 2 x 2 x B N D S x 2 (split) = 39 GFLOP
// (~0.06 ms of mma.sync): memory bound if the x stream keeps going, which the 49 KB tile in
// flight per SM (one block per SM) is sized for.
#pragma once

#include "token_reduce/mma.cuh"

namespace skillkern {
namespace tokred {

// Positions n0 .. n0 + ROWS - 1 of item b, all D features, into dst[ROWS][ldx]; rows past N and
// masked positions (mask (B, N) or null) are zero-filled: whatever padding holds (NaN, inf) is
// selected away, never multiplied by a zero weight (0 * NaN = NaN). 16-byte cp.async when x rows
// are 16-byte aligned (the caller commits and waits), element copies otherwise.
template <typename T, int ROWS>
__device__ __forceinline__ void load_x_tile(T* dst, const T* __restrict__ x, const uint8_t* __restrict__ mask,
                                            int64_t b, int n0, int N, int D, int ldx, bool vec) {
  if (vec) {
    constexpr int kE = 16 / sizeof(T);
    const int cpr = D / kE;  // 16-byte chunks per row
    for (int i = threadIdx.x; i < ROWS * cpr; i += kThreads) {
      const int r = i / cpr;
      const int c = (i - r * cpr) * kE;
      const int n = n0 + r;
      T* d = dst + r * ldx + c;
      if (n < N) {  // a masked row's copy reads nothing and zero-fills
        cp_async16(d, x + (b * N + n) * D + c, mask == nullptr || mask[b * N + n] != 0);
      } else {
        *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
      }
    }
  } else {
    const T zero = from_f32<T>(0.f);
    for (int i = threadIdx.x; i < ROWS * D; i += kThreads) {
      const int r = i / D;
      const int c = i - r * D;
      const int n = n0 + r;
      dst[r * ldx + c] = n < N && (mask == nullptr || mask[b * N + n] != 0) ? x[(b * N + n) * D + c] : zero;
    }
  }
}

// rows x width elements from src (row stride src_ld) to dst (row stride dst_ld) by the block's
// threads: 16-byte copies when vec (width * sizeof(T) a multiple of 16, both sides 16-byte
// aligned at every row), element copies otherwise. Staging rows to global memory and back.
template <typename T>
__device__ __forceinline__ void copy_rows(T* __restrict__ dst, int64_t dst_ld, const T* __restrict__ src,
                                          int64_t src_ld, int rows, int width, bool vec) {
  if (vec) {
    constexpr int kE = 16 / sizeof(T);
    const int vpr = width / kE;
    for (int i = threadIdx.x; i < rows * vpr; i += kThreads) {
      const int r = i / vpr;
      const int c = (i - r * vpr) * kE;
      *reinterpret_cast<uint4*>(dst + r * dst_ld + c) = *reinterpret_cast<const uint4*>(src + r * src_ld + c);
    }
  } else {
    for (int i = threadIdx.x; i < rows * width; i += kThreads) {
      const int r = i / width;
      const int c = i - r * width;
      dst[r * dst_ld + c] = src[r * src_ld + c];
    }
  }
}

// Mean and 1/std over D of the ROWS rows of a smem tile, warp per row, two passes (no
// cancellation for large means). 16-byte smem reads; pad columns [D, dp) are skipped.
template <typename T, int ROWS>
__device__ __forceinline__ void ln_stats(const T* xt, int ldx, int D, int dp, float eps, float* s_mean,
                                         float* s_rstd, int warp, int lane) {
  constexpr int kE = 16 / sizeof(T);
  for (int r = warp; r < ROWS; r += kWarps) {
    const T* row = xt + r * ldx;
    float sum = 0.f;
    for (int c = lane * kE; c < dp; c += 32 * kE) {
      const uint4 v = *reinterpret_cast<const uint4*>(row + c);
      const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
      for (int i = 0; i < kE; ++i) sum += c + i < D ? to_f32(e[i]) : 0.f;
    }
    const float mean = warp_sum(sum) / static_cast<float>(D);
    float sq = 0.f;
    for (int c = lane * kE; c < dp; c += 32 * kE) {
      const uint4 v = *reinterpret_cast<const uint4*>(row + c);
      const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
      for (int i = 0; i < kE; ++i) {
        const float d = c + i < D ? to_f32(e[i]) - mean : 0.f;
        sq += d * d;
      }
    }
    const float var = warp_sum(sq) / static_cast<float>(D);
    if (lane == 0) {
      s_mean[r] = mean;
      s_rstd[r] = 1.f / sqrtf(var + eps);
    }
  }
}

template <typename T, int NT, int MTN>
__global__ void __launch_bounds__(kThreads, 1) token_reduce_fwd_kernel(const FwdParams p) {
  using Bits = typename Traits<T>::Bits;
  constexpr bool k16 = Traits<T>::k16;
  constexpr int kK = Traits<T>::kK;
  constexpr int TN = 16 * MTN;              // positions per tile
  constexpr int SP = 8 * NT;                // output tokens, padded to whole n-tiles
  constexpr int KSPLIT = kWarps / MTN;      // warps sharing one m-tile of the scores GEMM
  constexpr int MT_MAX = max_mtiles_per_warp(NT);
  constexpr int LDP = TN + Traits<T>::kPad; // p' rows: conflict-free B-fragment loads
  constexpr int KT = TN / kK;               // k-steps over a tile's positions

  unsigned char* const smem = dynamic_smem();
  const int N = p.N, D = p.D, S = p.S;
  const int ldx = p.geo.ldx, dp = p.geo.dp, mtiles_per_warp = p.geo.mtiles_per_warp;
  const FwdSmem L = fwd_smem(sizeof(T), TN, SP, ldx, p.stages, LDP);
  T* xs = reinterpret_cast<T*>(smem + L.xs);
  float* zpart = reinterpret_cast<float*>(smem + L.zpart);
  float* zs = reinterpret_cast<float*>(smem + L.zs);
  Bits* ph = reinterpret_cast<Bits*>(smem + L.ph);
  Bits* pl = reinterpret_cast<Bits*>(smem + L.pl);
  float* s_mean = reinterpret_cast<float*>(smem + L.mean);
  float* s_rstd = reinterpret_cast<float*>(smem + L.rstd);
  int* s_valid = reinterpret_cast<int*>(smem + L.valid);
  float* s_alpha = reinterpret_cast<float*>(smem + L.alpha);
  float* s_l = reinterpret_cast<float*>(smem + L.sl);
  float* s_m = reinterpret_cast<float*>(smem + L.sm);
  float* s_corr = reinterpret_cast<float*>(smem + L.corr);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t b = blockIdx.x / p.geo.n_chunks;
  const int chunk = static_cast<int>(blockIdx.x - b * p.geo.n_chunks);
  const int dt0 = chunk * kWarps * mtiles_per_warp + warp * mtiles_per_warp;  // this warp's first m-tile of features
  const int c0 = chunk * kWarps * mtiles_per_warp * 16;           // the block's first feature
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const float inf = __int_as_float(0x7f800000);

  // Pad columns [D, dp) of the tile rows: read by the GEMMs, never written by the loads.
  if (dp > D) {
    const int padw = dp - D;
    const T zero = from_f32<T>(0.f);
    for (int i = threadIdx.x; i < p.stages * TN * padw; i += kThreads) {
      const int r = i / padw;
      xs[r * ldx + D + (i - r * padw)] = zero;
    }
  }

  // Softmax state of the output tokens s = warp + 8 j this warp owns (same in every lane).
  float run_max[NT], run_sum[NT], run_corr[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    run_max[j] = -inf;
    run_sum[j] = 0.f;
    run_corr[j] = 0.f;
  }
  float acc[MT_MAX][NT][4];
#pragma unroll
  for (int mi = 0; mi < MT_MAX; ++mi)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mi][nt][j] = 0.f;

  const int n_tiles = (N + TN - 1) / TN;
  if (p.stages == 2 && n_tiles > 0) {
    load_x_tile<T, TN>(xs, x, p.mask, b, 0, N, D, ldx, p.x_vec);
    cp_async_commit();
  }
  for (int it = 0; it < n_tiles; ++it) {
    const int n0 = it * TN;
    T* xt = xs;
    if (p.stages == 2) {
      xt = xs + (it & 1) * TN * ldx;
      if (it + 1 < n_tiles) {
        load_x_tile<T, TN>(xs + ((it + 1) & 1) * TN * ldx, x, p.mask, b, n0 + TN, N, D, ldx, p.x_vec);
      }
      cp_async_commit();  // possibly empty: keeps "all but the newest group" = this tile
      cp_async_wait<1>();
    } else {
      load_x_tile<T, TN>(xs, x, p.mask, b, n0, N, D, ldx, p.x_vec);
      cp_async_commit();
      cp_async_wait<0>();
    }
    if (threadIdx.x < TN) {
      const int n = n0 + threadIdx.x;
      s_valid[threadIdx.x] = n < N && (p.mask == nullptr || p.mask[b * N + n] != 0);
    }
    __syncthreads();  // the tile, its pad rows and s_valid are visible

    if (p.has_ln) ln_stats<T, TN>(xt, ldx, D, dp, p.eps, s_mean, s_rstd, warp, lane);

    if (!p.scores_given) {  // K-split partial scores x . W' of one m-tile of positions
      const int mi = warp % MTN, kg = warp / MTN;
      float za[NT][4];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int j = 0; j < 4; ++j) za[nt][j] = 0.f;
      for (int ks = kg; ks < p.geo.nks; ks += KSPLIT) {
        uint32_t raw[4];
        load_a_row<k16>(raw, xt, ldx, mi * 16, ks * kK, lane);
        const AFrag a = a_from_storage<T>(raw);
        const uint4* wf = p.w_score_frags + static_cast<size_t>(ks) * NT * 32 + lane;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_xs<T>(za[nt], a, bfrag_of(__ldg(wf + nt * 32)), !p.w_exact);
      }
      float* zp = zpart + kg * TN * SP;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int r = mi * 16 + g, s = nt * 8 + 2 * t;
        *reinterpret_cast<float2*>(zp + r * SP + s) = make_float2(za[nt][0], za[nt][1]);
        *reinterpret_cast<float2*>(zp + (r + 8) * SP + s) = make_float2(za[nt][2], za[nt][3]);
      }
    }
    __syncthreads();  // partials and LN statistics are visible

    // Final scores, -inf where the position is padding / past N or s is a pad token.
    for (int e = threadIdx.x; e < TN * SP; e += kThreads) {
      const int r = e / SP, s = e - r * SP;
      float z = -inf;
      if (s < S && s_valid[r]) {
        if (p.scores_given) {
          z = load_any(p.scores, p.scores_dtype, (b * N + n0 + r) * S + s);
        } else {
          float a = 0.f;
#pragma unroll
          for (int k = 0; k < KSPLIT; ++k) a += zpart[(k * TN + r) * SP + s];
          z = p.has_ln ? s_rstd[r] * (a - s_mean[r] * p.c1[s]) + p.c2[s] : a;
        }
      }
      zs[e] = z;
    }
    __syncthreads();

    {  // online softmax over positions: warp per output token, lane per position
      const bool row_ok = lane < TN;
      const float mean = (p.has_ln && row_ok) ? s_mean[lane] : 0.f;
      const float rstd = (p.has_ln && row_ok) ? s_rstd[lane] : 1.f;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int s = warp + 8 * j;
        const float z = row_ok ? zs[lane * SP + s] : -inf;
        const float new_max = fmaxf(run_max[j], warp_max(z));
        const float safe = new_max == -inf ? 0.f : new_max;  // no -inf - -inf
        const float pz = expf(z - safe);  // 0 at -inf (padding, pad tokens)
        const float alpha = expf(run_max[j] - safe);
        run_sum[j] = run_sum[j] * alpha + warp_sum(pz);
        Bits hi, lo;
        split<T>(p.pool_ln ? pz * rstd : pz, hi, lo);
        if (row_ok) {
          ph[s * LDP + lane] = hi;
          pl[s * LDP + lane] = lo;
        }
        if (p.pool_ln) run_corr[j] = run_corr[j] * alpha + warp_sum(joined<T>(hi, lo) * mean);
        run_max[j] = new_max;
        if (lane == 0) s_alpha[s] = alpha;
      }
    }
    __syncthreads();

    {  // rescale and accumulate this warp's features: acc[d, s] += sum_n x[n, d] p'[n, s]
      BFrag pb[KT][NT];
#pragma unroll
      for (int kk = 0; kk < KT; ++kk)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) pb[kk][nt] = load_b_split<T>(ph, pl, LDP, nt * 8, kk * kK, lane);
      float al[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        al[nt][0] = s_alpha[nt * 8 + 2 * t];
        al[nt][1] = s_alpha[nt * 8 + 2 * t + 1];
      }
#pragma unroll
      for (int mi = 0; mi < MT_MAX; ++mi) {
        const int dt = dt0 + mi;
        if (mi < mtiles_per_warp && dt * 16 < dp) {
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[mi][nt][j] *= al[nt][j & 1];
#pragma unroll
          for (int kk = 0; kk < KT; ++kk) {
            uint32_t raw[4];
            load_a_trans<k16>(raw, xt, ldx, dt * 16, kk * kK, lane);
            const AFrag a = a_from_storage<T>(raw);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mma_xs<T>(acc[mi][nt], a, pb[kk][nt], true);
          }
        }
      }
    }
    __syncthreads();  // the tile buffer, zs, p' and s_alpha are free for the next tile
  }
  cp_async_wait<0>();  // only empty groups can be left; never exit with copies in flight

  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int s = warp + 8 * j;
      s_l[s] = run_sum[j];
      s_m[s] = run_max[j];
      s_corr[s] = run_corr[j];
    }
  }
  __syncthreads();

  // Normalise into the staging rows os[s][d - c0] (the x buffer), then coalesced stores: out,
  // then (p.out_lo) what rounding out to T dropped, through the same staging rows.
  T* os = xs;
  const int width = min(kWarps * mtiles_per_warp * 16, D - c0);
  for (int pass = 0; pass < (p.out_lo != nullptr ? 2 : 1); ++pass) {
    if (pass == 1) __syncthreads();  // the stores of out have read the staging rows
#pragma unroll
    for (int mi = 0; mi < MT_MAX; ++mi) {
      const int dt = dt0 + mi;
      if (mi < mtiles_per_warp && dt * 16 < dp) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int s = nt * 8 + 2 * t + (j & 1);
            const int d = dt * 16 + g + 8 * (j >> 1);
            if (s < S && d < D) {
              const float l = s_l[s];
              float o = 0.f;  // an item with no real position
              if (l > 0.f) {
                const float inv = 1.f / l;
                if (p.pool_ln) {
                  o = load_any(p.ln_w, p.ln_w_dtype, d) * ((acc[mi][nt][j] - s_corr[s]) * inv);
                  if (p.has_ln_bias) o += load_any(p.ln_b, p.ln_b_dtype, d);
                } else {
                  o = acc[mi][nt][j] * inv;
                }
              }
              const T rounded = from_f32<T>(o);
              os[s * ldx + d - c0] = pass == 0 ? rounded : from_f32<T>(o - to_f32(rounded));
            }
          }
      }
    }
    __syncthreads();

    T* out = static_cast<T*>(pass == 0 ? p.out : p.out_lo);
    // width * sizeof(T) is a multiple of 16 when out_vec
    copy_rows<T>(out + b * S * D + c0, D, os, ldx, S, width, p.out_vec);
  }
  if (chunk == 0 && static_cast<int>(threadIdx.x) < S) {
    const int s = threadIdx.x;
    const float l = s_l[s];
    p.lse[b * S + s] = l > 0.f ? s_m[s] + logf(l) : inf;
  }
}

}  // namespace tokred
}  // namespace skillkern
