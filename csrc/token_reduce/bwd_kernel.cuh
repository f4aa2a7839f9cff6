// Backward kernel of token_reduce / token_pool (instantiated per dtype in tokred_bwd_*.cu).
//
// Math (per item; A = softmax weights, v = pooled values = LN(x) or x, u = LN(x)):
//   delta[s] = <d_out[s], out[s]>,  dA = v d_out^T,  dz = A (dA - delta)   (= d_scores)
//   dv = A d_out,  g_s = dz W'^T (= d u_scores * ln_weight),  W' = diag(ln_weight) W
//   LayerNorm backward of g = g_s (+ dv * ln_weight when the pooled values are LN(x)):
//   dx = rstd (g - mean_d g - xhat mean_d(g xhat)) (+ dv when x itself is pooled)
// The row sums of g never need a pass over D: with zc = z - c2 = rstd (x . W' - mean c1) and
// dAc = dA - bdo_dot = rstd (x . dO' - mean gdo_sum) (dO' = diag(ln_weight) d_out: "g" for
// gamma = ln_weight, "b" for beta = ln_bias; gdo_sum = sum_d dO', bdo_dot = ln_bias . d_out),
// sum_d g = dz . c1 + A . gdo_sum and sum_d g xhat = dz . zc + A . dAc.
// Parameter gradients, with dz' = rstd dz and R = x^T dz' summed over the block's positions:
//   Q = xhat^T dz = R - sum_n mean_n dz'_n;  d_w_score = ln_weight Q + ln_bias sum_n dz;
//   d_ln_weight = sum_s W Q + sum_n dv xhat;  d_ln_bias = sum_s W sum_n dz + sum_n dv.
// Each block writes these as partial sums for its items; tokred_aux.cu adds them up in a fixed order
// (no atomics: deterministic).
//
// Tiling. One block (8 warps) per (group of items, D chunk), 16 positions per tile (one m-tile:
// the GEMMs here have K = S and the register accumulators of d_w_score, D/8 x S per warp,
// leave no room for a second). Per tile:
//   GEMM3  [z | dA] = x [W' | dO'] (K = D, split over the 8 warps, partials added in order);
//   finalize (warp per row, lane per token): A, dz, d_scores, split operands, row sums;
//   per warp over its own m-tiles of 16 features: R += x^T dz' (GEMM7), dv = A dO and
//   g_s = dz W'^T (GEMM5, K = S), dx, then dx overwrites those x columns in smem;
//   the dx tile leaves with 16-byte stores.
// Shared memory (bf16, D = 768, S = 24, 2 stages): x 2 x 16 x 776 x 2 B = 50 KB, d_out rows
// 32 x 776 x 2 B = 50 KB, K-split partials 8 x 16 x 48 x 4 B = 25 KB, ln_weight 3 KB, operands
// 8 KB: ~136 KB (fp32, one stage: 165 KB, which still fits an A100's 163 KB at D = 768).
// Floor at the typical shape (B = 1024, N = 256, D = 768, S = 24, bf16): read x + write dx
// = 805 MB, d_out / out 75 MB: ~0.29 ms at 3 TB/s; tensor cores ~2 x 4 x 2 B N D S = 80 GFLOP
// of split products (~0.12 ms of mma.sync).
#pragma once

#include "token_reduce/fwd_kernel.cuh"

namespace skillkern {
namespace tokred {

// B fragment of d_out (element (k = feature, n = token) = dos[n][k]), optionally scaled by
// ln_weight and split (dO' for the LN-pooled dA). The same products and split as gdo_sum.
template <typename T>
__device__ __forceinline__ BFrag dout_frag(const T* dos, int ldx, const float* gs, int n0, int k0, int lane,
                                           bool scale) {
  const int g = lane >> 2, t = lane & 3;
  BFrag f;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    if constexpr (Traits<T>::k16) {
      const int k = k0 + 2 * t + 8 * j;
      const uint32_t raw = *reinterpret_cast<const uint32_t*>(dos + (n0 + g) * ldx + k);
      if (!scale) {
        f.h[j] = raw;
        f.l[j] = 0u;
      } else {
        uint16_t h0, l0, h1, l1;
        split<T>(__fmul_rn(gs[k], f32_of_bits<T>(static_cast<uint16_t>(raw & 0xffffu))), h0, l0);
        split<T>(__fmul_rn(gs[k + 1], f32_of_bits<T>(static_cast<uint16_t>(raw >> 16))), h1, l1);
        f.h[j] = pack16(h0, h1);
        f.l[j] = pack16(l0, l1);
      }
    } else {
      const int k = k0 + t + 4 * j;
      float v = dos[(n0 + g) * ldx + k];
      if (scale) v = __fmul_rn(gs[k], v);
      split<T>(v, f.h[j], f.l[j]);
    }
  }
  return f;
}

template <typename T, int NT>
__global__ void __launch_bounds__(kThreads, 1) token_reduce_bwd_kernel(const BwdParams p) {
  using Bits = typename Traits<T>::Bits;
  constexpr bool k16 = Traits<T>::k16;
  constexpr int kK = Traits<T>::kK;
  constexpr int TN = 16;                          // positions per tile: one m-tile
  constexpr int SP = 8 * NT;                      // output tokens padded to whole n-tiles
  constexpr int SKR = (SP + kK - 1) / kK * kK;    // ... and to whole k-steps (GEMM5's K)
  constexpr int KS5 = SKR / kK;
  constexpr int MT_MAX = max_mtiles_per_warp(NT);
  constexpr int LDA = SKR + Traits<T>::kPad;
  constexpr int LDP = TN + Traits<T>::kPad;
  constexpr int KT = TN / kK;
  constexpr int NC3 = 2 * SP;                     // GEMM3 columns: scores | dA

  unsigned char* const smem = dynamic_smem();
  const int N = p.N, D = p.D, S = p.S;
  const int ldx = p.geo.ldx, dp = p.geo.dp, mtiles_per_warp = p.geo.mtiles_per_warp;
  const BwdSmem L = bwd_smem(sizeof(T), TN, SP, SKR, dp, ldx, p.stages, LDA, LDP);
  T* xs = reinterpret_cast<T*>(smem + L.xs);
  T* dos = reinterpret_cast<T*>(smem + L.dos);
  float* gs = reinterpret_cast<float*>(smem + L.gs);
  float* part = reinterpret_cast<float*>(smem + L.part);
  Bits* awh = reinterpret_cast<Bits*>(smem + L.awh);
  Bits* awl = reinterpret_cast<Bits*>(smem + L.awl);
  Bits* dzh = reinterpret_cast<Bits*>(smem + L.dzh);
  Bits* dzl = reinterpret_cast<Bits*>(smem + L.dzl);
  Bits* dzbh = reinterpret_cast<Bits*>(smem + L.dzbh);
  Bits* dzbl = reinterpret_cast<Bits*>(smem + L.dzbl);
  float* s_mean = reinterpret_cast<float*>(smem + L.mean);
  float* s_rstd = reinterpret_cast<float*>(smem + L.rstd);
  int* s_valid = reinterpret_cast<int*>(smem + L.valid);
  float* s_s1 = reinterpret_cast<float*>(smem + L.s1);
  float* s_s2 = reinterpret_cast<float*>(smem + L.s2);
  float* s_lse = reinterpret_cast<float*>(smem + L.lse);
  float* s_delta = reinterpret_cast<float*>(smem + L.delta);
  float* s_gdo_sum = reinterpret_cast<float*>(smem + L.gdo_sum);
  float* s_bdo_dot = reinterpret_cast<float*>(smem + L.bdo_dot);
  float* c3c4_partials = reinterpret_cast<float*>(smem + L.c3c4_partials);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t grp = blockIdx.x / p.geo.n_chunks;
  const int chunk = static_cast<int>(blockIdx.x - grp * p.geo.n_chunks);
  const int dt0 = chunk * kWarps * mtiles_per_warp + warp * mtiles_per_warp;
  const int c0 = chunk * kWarps * mtiles_per_warp * 16;
  const int width = min(kWarps * mtiles_per_warp * 16, D - c0);
  const int64_t b_begin = grp * p.items_per_group;
  const int64_t b_end = min(p.B, b_begin + p.items_per_group);
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ dout = static_cast<const T*>(p.dout);
  T* __restrict__ dx = static_cast<T*>(p.dx);
  const float inf = __int_as_float(0x7f800000);
  const bool ln_bwd = p.has_ln && (p.pool_ln || !p.scores_given);  // does dx go through LN?

  // This block's d_ln_weight / d_ln_bias sums: its chunk's columns of row grp of the partial
  // buffers, each column read-modify-written only by the one thread that owns it at that point
  // (barriers order the owners of the two phases that add to it). Deterministic.
  float* dg_row = p.has_ln ? p.dg_part + grp * D : nullptr;
  float* db_row = p.has_ln ? p.db_part + grp * D : nullptr;
  {  // block set-up: zero pads and accumulators, ln_weight in fp32
    const T zero = from_f32<T>(0.f);
    const int padw = dp - D;
    for (int i = threadIdx.x; i < p.stages * TN * padw; i += kThreads) {
      const int r = i / padw;
      xs[r * ldx + D + (i - r * padw)] = zero;
    }
    for (int i = threadIdx.x; i < SKR * ldx; i += kThreads) dos[i] = zero;  // rows >= S, cols >= D stay 0
    for (int d = threadIdx.x; d < dp; d += kThreads) {
      gs[d] = (p.has_ln && d < D) ? load_any(p.ln_w, p.ln_w_dtype, d) : 0.f;
    }
    if (p.has_ln) {
      for (int c = threadIdx.x; c < width; c += kThreads) {
        dg_row[c0 + c] = 0.f;
        db_row[c0 + c] = 0.f;
      }
    }
  }
  __syncthreads();  // the zeroed dos rows / sums before the first item's d_out rows land in them
  float c3acc = 0.f, c4acc = 0.f;  // sum_n mean_n dz'[n, s], sum_n dz[n, s] of this warp's rows, s = lane
  float R[MT_MAX][NT][4];          // x^T dz' of this warp's features
#pragma unroll
  for (int mi = 0; mi < MT_MAX; ++mi)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j) R[mi][nt][j] = 0.f;

  const int n_tiles = (N + TN - 1) / TN;
  const int64_t total = (b_end - b_begin) * n_tiles;
  if (p.stages == 2 && total > 0) {
    load_x_tile<T, TN>(xs, x, p.mask, b_begin, 0, N, D, ldx, p.x_vec);
    cp_async_commit();
  }
  for (int64_t f = 0; f < total; ++f) {
    const int64_t bi = b_begin + f / n_tiles;
    const int n0 = static_cast<int>(f % n_tiles) * TN;
    const bool new_item = n0 == 0;
    T* xt = xs;
    if (p.stages == 2) {
      xt = xs + (f & 1) * TN * ldx;
      if (f + 1 < total) {
        const int64_t bn = b_begin + (f + 1) / n_tiles;
        load_x_tile<T, TN>(xs + ((f + 1) & 1) * TN * ldx, x, p.mask, bn, static_cast<int>((f + 1) % n_tiles) * TN,
                           N, D, ldx, p.x_vec);
      }
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      load_x_tile<T, TN>(xs, x, p.mask, bi, n0, N, D, ldx, p.x_vec);
      cp_async_commit();
      cp_async_wait<0>();
    }
    if (new_item) {  // d_out[bi] rows into dos (read by GEMM3 and GEMM5)
      copy_rows<T>(dos, ldx, dout + bi * S * D, D, S, D, p.y_vec);
    }
    if (threadIdx.x < TN) {
      const int n = n0 + threadIdx.x;
      s_valid[threadIdx.x] = n < N && (p.mask == nullptr || p.mask[bi * N + n] != 0);
    }
    __syncthreads();  // tile, d_out rows, s_valid visible

    if (p.has_ln) ln_stats<T, TN>(xt, ldx, D, dp, p.eps, s_mean, s_rstd, warp, lane);
    if (new_item) {  // per-token item constants: delta, gdo_sum, bdo_dot, lse (warp per token)
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int s = warp + 8 * j;
        float delta = 0.f, gdo_sum = 0.f, bdo_dot = 0.f;
        if (s < S) {
          for (int d = lane; d < D; d += 32) {
            const float go = to_f32(dos[s * ldx + d]);
            delta += go * load_any(p.out, p.out_dtype, (bi * S + s) * D + d);
            if (p.pool_ln) {
              Bits h, l;
              split<T>(__fmul_rn(gs[d], go), h, l);
              gdo_sum += joined<T>(h, l);
              if (p.has_ln_bias) bdo_dot += load_any(p.ln_b, p.ln_b_dtype, d) * go;
            }
          }
        }
        delta = warp_sum(delta);
        gdo_sum = warp_sum(gdo_sum);
        bdo_dot = warp_sum(bdo_dot);
        if (lane == 0) {
          s_delta[s] = delta;
          s_gdo_sum[s] = gdo_sum;
          s_bdo_dot[s] = bdo_dot;
          s_lse[s] = s < S ? p.lse[bi * S + s] : inf;
        }
      }
    }

    {  // GEMM3: K-split partials of [x . W' | x . dO'] for the 16 positions
      float a3[2 * NT][4];
#pragma unroll
      for (int c = 0; c < 2 * NT; ++c)
#pragma unroll
        for (int j = 0; j < 4; ++j) a3[c][j] = 0.f;
      for (int ks = warp; ks < p.geo.nks; ks += kWarps) {
        uint32_t raw[4];
        load_a_row<k16>(raw, xt, ldx, 0, ks * kK, lane);
        const AFrag a = a_from_storage<T>(raw);
        if (!p.scores_given) {
          const uint4* wf = p.w_score_frags + static_cast<size_t>(ks) * NT * 32 + lane;
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) mma_xs<T>(a3[nt], a, bfrag_of(__ldg(wf + nt * 32)), !p.w_exact);
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const BFrag bd = dout_frag<T>(dos, ldx, gs, nt * 8, ks * kK, lane, p.pool_ln);
          mma_xs<T>(a3[NT + nt], a, bd, p.pool_ln || !k16);
        }
      }
      float* pp = part + warp * TN * NC3;
#pragma unroll
      for (int c = 0; c < 2 * NT; ++c) {
        const int col = c * 8 + 2 * t;
        *reinterpret_cast<float2*>(pp + g * NC3 + col) = make_float2(a3[c][0], a3[c][1]);
        *reinterpret_cast<float2*>(pp + (g + 8) * NC3 + col) = make_float2(a3[c][2], a3[c][3]);
      }
    }
    __syncthreads();  // partials, LN statistics and item constants visible

    // Finalize: warp per position row, lane per token s.
    for (int r = warp; r < TN; r += kWarps) {
      const int s = lane;
      const int n = n0 + r;
      const bool in_sp = s < SP;
      const bool valid = s < S && s_valid[r] != 0;
      const float mean = p.has_ln ? s_mean[r] : 0.f;
      const float rstd = p.has_ln ? s_rstd[r] : 1.f;
      float z = -inf, zc = 0.f, dA = 0.f, dAc = 0.f;
      if (valid) {
        if (p.scores_given) {
          z = load_any(p.scores, p.scores_dtype, (bi * N + n) * S + s);
        } else {
          float a = 0.f;
#pragma unroll
          for (int k = 0; k < kWarps; ++k) a += part[(k * TN + r) * NC3 + s];
          if (p.has_ln) {
            zc = rstd * (a - mean * p.c1[s]);
            z = zc + p.c2[s];
          } else {
            z = a;
          }
        }
        float a = 0.f;
#pragma unroll
        for (int k = 0; k < kWarps; ++k) a += part[(k * TN + r) * NC3 + SP + s];
        if (p.pool_ln) {
          dAc = rstd * (a - mean * s_gdo_sum[s]);
          dA = dAc + s_bdo_dot[s];
        } else {
          dA = a;
        }
      }
      const float A = valid ? expf(z - s_lse[s]) : 0.f;
      const float dz = valid ? A * (dA - s_delta[s]) : 0.f;
      if (p.scores_given && chunk == 0 && s < S && n < N) {
        store_any(p.dscores, p.scores_dtype, (bi * N + n) * S + s, dz);
      }
      if (s < SKR) {
        split<T>(A, awh[r * LDA + s], awl[r * LDA + s]);
        split<T>(dz, dzh[r * LDA + s], dzl[r * LDA + s]);
      }
      if (!p.scores_given && in_sp) {
        Bits h, l;
        split<T>(rstd * dz, h, l);
        dzbh[s * LDP + r] = h;
        dzbl[s * LDP + r] = l;
        c3acc += mean * joined<T>(h, l);
        c4acc += dz;
      }
      if (ln_bwd) {
        float t1 = 0.f, t2 = 0.f;
        if (in_sp && !p.scores_given) {
          t1 += dz * p.c1[s];
          t2 += dz * zc;
        }
        if (in_sp && p.pool_ln) {
          t1 += A * s_gdo_sum[s];
          t2 += A * dAc;
        }
        t1 = warp_sum(t1);
        t2 = warp_sum(t2);
        if (lane == 0) {
          s_s1[r] = t1 / static_cast<float>(D);
          s_s2[r] = t2 / static_cast<float>(D);
        }
      }
    }
    __syncthreads();  // operands and row sums visible

    {  // this warp's features: R += x^T dz', dv = A dO, g_s = dz W'^T, dx
      float mean_r[2] = {0.f, 0.f}, rstd_r[2] = {1.f, 1.f}, s1_r[2] = {0.f, 0.f}, s2_r[2] = {0.f, 0.f};
      if (p.has_ln) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          mean_r[h] = s_mean[g + 8 * h];
          rstd_r[h] = s_rstd[g + 8 * h];
          if (ln_bwd) {
            s1_r[h] = s_s1[g + 8 * h];
            s2_r[h] = s_s2[g + 8 * h];
          }
        }
      }
      BFrag bz[KT][NT];
      if (!p.scores_given) {
#pragma unroll
        for (int kk = 0; kk < KT; ++kk)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) bz[kk][nt] = load_b_split<T>(dzbh, dzbl, LDP, nt * 8, kk * kK, lane);
      }
      AFrag aw[KS5], adz[KS5];
#pragma unroll
      for (int k5 = 0; k5 < KS5; ++k5) {
        aw[k5] = load_a_split<T>(awh, awl, LDA, 0, k5 * kK, lane);
        if (!p.scores_given) adz[k5] = load_a_split<T>(dzh, dzl, LDA, 0, k5 * kK, lane);
      }
#pragma unroll
      for (int mi = 0; mi < MT_MAX; ++mi) {
        const int dt = dt0 + mi;
        if (mi < mtiles_per_warp && dt * 16 < dp) {
          const int d0 = dt * 16;
          if (!p.scores_given) {
#pragma unroll
            for (int kk = 0; kk < KT; ++kk) {
              uint32_t raw[4];
              load_a_trans<k16>(raw, xt, ldx, d0, kk * kK, lane);
              const AFrag a = a_from_storage<T>(raw);
#pragma unroll
              for (int nt = 0; nt < NT; ++nt) mma_xs<T>(R[mi][nt], a, bz[kk][nt], true);
            }
          }
          float gsa[2][4], dv[2][4];  // two n-tiles of 8 features
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              gsa[h][j] = 0.f;
              dv[h][j] = 0.f;
            }
#pragma unroll
          for (int k5 = 0; k5 < KS5; ++k5) {
            uint32_t r4[4];
            load_b_kn_x2<k16>(r4, dos, ldx, d0, k5 * kK, lane);
            mma_sx<T>(dv[0], aw[k5], b_from_storage<T>(r4[0], r4[1]));
            mma_sx<T>(dv[1], aw[k5], b_from_storage<T>(r4[2], r4[3]));
            if (!p.scores_given) {
              const uint4* wf = p.w_dscore_frags + (static_cast<size_t>(k5) * p.nt_features + dt * 2) * 32 + lane;
              mma_ss<T>(gsa[0], adz[k5], bfrag_of(__ldg(wf)), !p.w_exact);
              mma_ss<T>(gsa[1], adz[k5], bfrag_of(__ldg(wf + 32)), !p.w_exact);
            }
          }
          float dxv[2][4];
          float cg[2][2] = {{0.f, 0.f}, {0.f, 0.f}}, cb[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              const int hr = j >> 1;  // row g + 8 hr
              const int d = d0 + h * 8 + 2 * t + (j & 1);
              if (p.has_ln) {
                const float xhat = (to_f32(xt[(g + 8 * hr) * ldx + d]) - mean_r[hr]) * rstd_r[hr];
                if (p.pool_ln) {
                  const float gt = gsa[h][j] + dv[h][j] * gs[d];
                  dxv[h][j] = rstd_r[hr] * (gt - s1_r[hr] - xhat * s2_r[hr]);
                  cg[h][j & 1] += dv[h][j] * xhat;
                  cb[h][j & 1] += dv[h][j];
                } else {
                  dxv[h][j] = rstd_r[hr] * (gsa[h][j] - s1_r[hr] - xhat * s2_r[hr]) + dv[h][j];
                }
              } else {
                dxv[h][j] = gsa[h][j] + dv[h][j];
              }
            }
          if (p.has_ln && p.pool_ln) {  // column sums over the 16 rows: d_ln_* of the pooled values
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                float vg = cg[h][e], vb = cb[h][e];
#pragma unroll
                for (int o = 4; o < 32; o <<= 1) {
                  vg += __shfl_xor_sync(kFullMask, vg, o);
                  vb += __shfl_xor_sync(kFullMask, vb, o);
                }
                const int d = d0 + h * 8 + 2 * t + e;
                if (g == 0 && d < D) {  // one lane per column; columns are this warp's own
                  dg_row[d] += vg;
                  db_row[d] += vb;
                }
              }
          }
          __syncwarp();  // every lane's reads of these x columns are done
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              const int d = d0 + h * 8 + 2 * t + (j & 1);
              if (d < D) xt[(g + 8 * (j >> 1)) * ldx + d] = from_f32<T>(dxv[h][j]);
            }
        }
      }
    }
    __syncthreads();  // the dx tile (this chunk's columns) is complete

    {
      const int rows = min(TN, N - n0);
      if (p.x_vec) {
        constexpr int kE = 16 / sizeof(T);
        const int vpr = width / kE;
        for (int i = threadIdx.x; i < rows * vpr; i += kThreads) {
          const int r = i / vpr;
          const int c = c0 + (i - r * vpr) * kE;
          *reinterpret_cast<uint4*>(dx + (bi * N + n0 + r) * D + c) = *reinterpret_cast<const uint4*>(xt + r * ldx + c);
        }
      } else {
        for (int i = threadIdx.x; i < rows * width; i += kThreads) {
          const int r = i / width;
          const int c = c0 + i - r * width;
          dx[(bi * N + n0 + r) * D + c] = xt[r * ldx + c];
        }
      }
    }
    __syncthreads();  // the tile buffer is free for the prefetch two tiles ahead
  }
  cp_async_wait<0>();

  if (!p.scores_given) {
    // The block's token sums: warp partials added in warp order.
    if (lane < SP) {
      c3c4_partials[warp * SP + lane] = c3acc;
      c3c4_partials[(kWarps + warp) * SP + lane] = c4acc;
    }
    __syncthreads();
    float* s_c3 = c3c4_partials + 2 * kWarps * SP;
    float* s_c4 = s_c3 + SP;
    if (threadIdx.x < SP) {
      float a = 0.f, c = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        a += c3c4_partials[w * SP + threadIdx.x];
        c += c3c4_partials[(kWarps + w) * SP + threadIdx.x];
      }
      s_c3[threadIdx.x] = a;
      s_c4[threadIdx.x] = c;
    }
    __syncthreads();
    // d_w_score partials and the score path's d_ln_* (sum over s of W Q, W sum dz).
#pragma unroll
    for (int mi = 0; mi < MT_MAX; ++mi) {
      const int dt = dt0 + mi;
      if (mi < mtiles_per_warp && dt * 16 < dp) {
        float pg[2] = {0.f, 0.f}, pb[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int s = nt * 8 + 2 * t + (j & 1);
            const int d = dt * 16 + g + 8 * (j >> 1);
            if (s < S && d < D) {
              float dw = R[mi][nt][j];
              if (p.has_ln) {
                const float q = dw - s_c3[s];
                const float c4 = s_c4[s];
                dw = gs[d] * q;
                if (p.has_ln_bias) dw += load_any(p.ln_b, p.ln_b_dtype, d) * c4;
                const float wv = load_any(p.w, p.w_dtype, static_cast<int64_t>(d) * S + s);
                pg[j >> 1] += wv * q;
                pb[j >> 1] += wv * c4;
              }
              p.dw_part[(grp * D + d) * S + s] = dw;
            }
          }
        if (p.has_ln) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float vg = pg[h], vb = pb[h];
            vg += __shfl_xor_sync(kFullMask, vg, 1);
            vb += __shfl_xor_sync(kFullMask, vb, 1);
            vg += __shfl_xor_sync(kFullMask, vg, 2);
            vb += __shfl_xor_sync(kFullMask, vb, 2);
            const int d = dt * 16 + g + 8 * h;
            if (t == 0 && d < D) {  // after the barriers above: phase B's adds are visible
              dg_row[d] += vg;
              db_row[d] += vb;
            }
          }
        }
      }
    }
  }
}

}  // namespace tokred
}  // namespace skillkern
