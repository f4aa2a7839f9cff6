// token_reduce / token_pool, native CUDA backend: what the host code (tokred_host.cpp) and the kernels
// (*.cu) share. Math: skillkern/ops/token_reduce/reference.py; the Triton kernels
// (skillkern/ops/token_reduce/kernels.py) are the behavioural specification.
//
// Kernels (one launch each, all on the current stream, no host sync, no float atomics):
//   prep    w_score -> tensor-core B fragments of W' = diag(ln_weight) W (split into hi + lo
//           parts), column sums c1 = sum_d W', c2 = ln_bias . W           (tokred_aux.cu)
//   fwd     one block per (item, D chunk): LN statistics, scores, online softmax over position
//           tiles, pooling; x is read once                    (fwd_kernel.cuh, tokred_fwd_*.cu)
//   bwd     one block per (group of items, D chunk): dx, d_scores and per-block partial sums of
//           d_w_score, d_ln_weight, d_ln_bias                 (bwd_kernel.cuh, tokred_bwd_*.cu)
//   reduce  sums the partials over blocks in a fixed order (deterministic) (tokred_aux.cu)
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace skillkern {
namespace tokred {

constexpr int kWarps = 8;  // 256 threads: one block per SM (shared memory bound), 255 regs/thread
constexpr int kThreads = kWarps * 32;
constexpr int kMaxS = 32;  // output tokens: up to 4 n-tiles of 8 (accumulators live in registers)

// Storage dtype codes for tensors read/written with a run-time dtype (parameters, scores).
enum DtypeCode : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// m-tiles of 16 features a warp keeps accumulators for: (D/16 per warp) x (S/8) x 4 fp32
// registers, at most 96 (S <= 24: 8 m-tiles = 128 features per warp, D chunk 1024).
constexpr int max_mtiles_per_warp(int nt) { return nt <= 3 ? 8 : 6; }

constexpr size_t align16(size_t v) { return (v + 15) & ~size_t(15); }

// Consecutive byte regions, each 16-byte aligned: the kernels' shared-memory layouts and the
// host's prep workspace.
struct Carver {
  size_t used = 0;
  __host__ __device__ size_t take(size_t bytes) {
    const size_t at = used;
    used = align16(used + bytes);
    return at;
  }
  // one region of `bytes` for each offset named, in order
  template <int K>
  __host__ __device__ void take_each(size_t* const (&offsets)[K], size_t bytes) {
    for (size_t* o : offsets) *o = take(bytes);
  }
};

// Shared-memory layout of the forward kernel (byte offsets; every region 16-byte aligned).
// xs doubles as the staging buffer of the output rows at the end (max(...) rows).
struct FwdSmem {
  size_t xs, zpart, zs, ph, pl, mean, rstd, valid, alpha, sl, sm, corr, total;
};

__host__ __device__ inline FwdSmem fwd_smem(int elem, int tn, int sp, int ldx, int stages, int ldp) {
  const int ksplit = kWarps / (tn / 16);
  const int x_rows = stages * tn > sp ? stages * tn : sp;
  FwdSmem L{};
  Carver c;
  L.xs = c.take(size_t(x_rows) * ldx * elem);
  L.zpart = c.take(size_t(ksplit) * tn * sp * 4);
  L.zs = c.take(size_t(tn) * sp * 4);
  c.take_each({&L.ph, &L.pl}, size_t(sp) * ldp * elem);
  c.take_each({&L.mean, &L.rstd, &L.valid}, size_t(tn) * 4);
  c.take_each({&L.alpha, &L.sl, &L.sm, &L.corr}, size_t(sp) * 4);
  L.total = c.used;
  return L;
}

// Shared-memory layout of the backward kernel (tn = 16 rows per tile).
//   xs: x tiles (dx is staged in place); dos: d_out[b] rows (skr rows, zero past S);
//   gs: ln_weight in fp32; part: GEMM3 K-split partials [ksplit][tn][2 sp];
//   aw*/dz*: softmax weights and d scores as split A operands [tn][lda];
//   dzb*: rstd * d scores as split B operands [sp][ldp]; c3c4_partials: per-warp token sums
//   [2][kWarps + 1][sp]. (The block's d_ln_* sums live in its own row of the global partial
//   buffers: 2 x 4 D bytes less shared memory.)
struct BwdSmem {
  size_t xs, dos, gs, part, awh, awl, dzh, dzl, dzbh, dzbl, mean, rstd, valid, s1, s2, lse, delta,
      gdo_sum, bdo_dot, c3c4_partials, total;
};

__host__ __device__ inline BwdSmem bwd_smem(int elem, int tn, int sp, int skr, int dp, int ldx, int stages,
                                            int lda, int ldp) {
  const int ksplit = kWarps / (tn / 16);
  BwdSmem L{};
  Carver c;
  L.xs = c.take(size_t(stages) * tn * ldx * elem);
  L.dos = c.take(size_t(skr) * ldx * elem);
  L.gs = c.take(size_t(dp) * 4);
  L.part = c.take(size_t(ksplit) * tn * 2 * sp * 4);
  c.take_each({&L.awh, &L.awl, &L.dzh, &L.dzl}, size_t(tn) * lda * elem);
  c.take_each({&L.dzbh, &L.dzbl}, size_t(sp) * ldp * elem);
  c.take_each({&L.mean, &L.rstd, &L.valid, &L.s1, &L.s2}, size_t(tn) * 4);
  c.take_each({&L.lse, &L.delta, &L.gdo_sum, &L.bdo_dot}, size_t(sp) * 4);
  L.c3c4_partials = c.take(size_t(2) * (kWarps + 1) * sp * 4);
  L.total = c.used;
  return L;
}

// Geometry both kernels derive from (B, N, D, S) and the dtype (host side, once per call).
struct Geometry {
  int nt;        // n-tiles of 8 output tokens: S_pad = 8 nt
  int dp;        // D rounded up to 16
  int ldx;       // smem row stride of x tiles / d_out rows (elements): dp + 8 (16-bit) or dp + 4 (fp32)
  int nks;       // k-steps over D: dp / 16 (16-bit) or dp / 8 (fp32)
  int mtiles_per_warp;  // m-tiles of 16 features per warp in a D chunk
  int n_chunks;  // D chunks (blocks per item); 1 unless D > 8 warps * 16 * mtiles_per_warp
};

struct FwdParams {
  const void* x;           // (B, N, D) contiguous, storage type T
  const uint8_t* mask;     // (B, N) contiguous bool, or null
  const void* scores;      // (B, N, S) contiguous, or null (token_reduce)
  int scores_dtype;
  const void* ln_w;        // (D,) or null
  const void* ln_b;        // (D,) or null
  int ln_w_dtype, ln_b_dtype;
  const uint4* w_score_frags;        // prep: W' B fragments [nks][nt][32 lanes] (null when scores given)
  const float* c1;         // prep: [8 nt]
  const float* c2;
  void* out;               // (B, S, D) T
  void* out_lo;            // (B, S, D) T: out's rounding residual (run.h: wants_lo), or null
  float* lse;              // (B, S) fp32
  int64_t B;
  int N, D, S;
  float eps;
  Geometry geo;
  int stages;              // x tiles in flight: 2 (cp.async double buffer) or 1
  bool has_ln, has_ln_bias, pool_ln, scores_given, w_exact;
  bool x_vec;              // x rows 16-byte aligned: cp.async 16 B, else element loads
  bool out_vec;            // out rows 16-byte aligned: 16 B stores
};

struct BwdParams {
  const void* x;           // (B, N, D) T
  const void* dout;        // (B, S, D) T
  const void* out;         // (B, S, D) T, or fp32 (out + out_lo: out as the forward computed it)
  int out_dtype;
  const float* lse;        // (B, S)
  const uint8_t* mask;
  const void* scores;
  int scores_dtype;
  void* dscores;           // (B, N, S) in the scores dtype, or null
  const void* w;           // (D, S) contiguous w_score, or null
  int w_dtype;
  const void* ln_w;
  const void* ln_b;
  int ln_w_dtype, ln_b_dtype;
  const uint4* w_score_frags;        // prep: W' fragments for the scores (k = feature, n = token)
  const uint4* w_dscore_frags;  // prep: W' fragments for d scores @ W'^T (k = token, n = feature)
  const float* c1;
  const float* c2;
  void* dx;                // (B, N, D) T
  float* dw_part;          // [groups][D][S]
  float* dg_part;          // [groups][D]; block (group, chunk) accumulates its columns in place
  float* db_part;          // [groups][D]
  int64_t B;
  int N, D, S;
  float eps;
  Geometry geo;
  int stages;
  int items_per_group;
  int nt_features;         // n-tiles of 8 features: dp / 8
  bool has_ln, has_ln_bias, pool_ln, scores_given, w_exact;
  bool x_vec;              // x / dx rows 16-byte aligned
  bool y_vec;              // d_out rows 16-byte aligned
};

struct PrepParams {
  const void* w;           // (D, S) contiguous
  int w_dtype;
  const void* ln_w;
  const void* ln_b;
  int ln_w_dtype, ln_b_dtype;
  uint4* w_score_frags;              // [nks][nt][32]
  uint4* w_dscore_frags;   // [nks_tokens][nt_features][32] or null (forward)
  float* c1;               // [8 nt]
  float* c2;
  int D, S;
  int nt, nks, nks_tokens, nt_features;
  bool has_ln, has_ln_bias;
};

struct ReduceParams {
  const float* dw_part;    // [groups][D * S] or null
  const float* dg_part;    // [groups][D] or null
  const float* db_part;
  void* dw;                // (D, S) in w's dtype
  void* dg;                // (D,)
  void* db;
  int dw_dtype, dg_dtype, db_dtype;
  int groups;
  int64_t DS;
  int D;
};

// ----------------------------------------------------------------------------- host-side choices
// (plain C++: shared by tokred_host.cpp and any harness that runs the kernels)

inline int round_up(int v, int m) { return (v + m - 1) / m * m; }

// elem: bytes per x element (2 or 4). The k-step of the tensor cores is 16 (16-bit) or 8 (tf32).
inline Geometry make_geometry(int elem, int D, int S) {
  Geometry g{};
  const int k_step = elem == 2 ? 16 : 8;
  g.nt = (S + 7) / 8;
  g.dp = round_up(D, 16);
  g.ldx = g.dp + (elem == 2 ? 8 : 4);
  g.nks = g.dp / k_step;
  const int mtd = g.dp / 16;
  const int per_warp = (mtd + kWarps - 1) / kWarps;
  const int mt_max = max_mtiles_per_warp(g.nt);
  g.mtiles_per_warp = per_warp < 1 ? 1 : (per_warp < mt_max ? per_warp : mt_max);
  g.n_chunks = (mtd + kWarps * g.mtiles_per_warp - 1) / (kWarps * g.mtiles_per_warp);
  if (g.n_chunks < 1) g.n_chunks = 1;
  return g;
}

struct FwdConfig {
  int mtn;       // position tile = 16 mtn rows
  int stages;    // x tiles in flight
  size_t smem;   // dynamic shared memory bytes
};

// The largest tile that fits smem_limit: 32 rows double-buffered first (more bytes in flight),
// 16 rows when N <= 16 (no empty half tile). Returns smem = 0 when even 16 rows do not fit.
inline FwdConfig pick_fwd_config(int elem, int N, const Geometry& g, size_t smem_limit) {
  const int pad = elem == 2 ? 8 : 4;
  const FwdConfig wide[] = {{2, 2, 0}, {1, 2, 0}, {2, 1, 0}, {1, 1, 0}};
  const FwdConfig narrow[] = {{1, 2, 0}, {1, 1, 0}, {1, 1, 0}, {1, 1, 0}};
  for (FwdConfig c : (N <= 16 ? narrow : wide)) {
    c.smem = fwd_smem(elem, 16 * c.mtn, 8 * g.nt, g.ldx, c.stages, 16 * c.mtn + pad).total;
    if (c.smem <= smem_limit) return c;
  }
  return {1, 1, 0};
}

struct BwdConfig {
  int stages;
  size_t smem;
};

inline int bwd_token_rows(int elem, int nt) { return round_up(8 * nt, elem == 2 ? 16 : 8); }

inline BwdConfig pick_bwd_config(int elem, const Geometry& g, size_t smem_limit) {
  const int pad = elem == 2 ? 8 : 4;
  const int skr = bwd_token_rows(elem, g.nt);
  for (int stages = 2; stages >= 1; --stages) {
    const size_t smem = bwd_smem(elem, 16, 8 * g.nt, skr, g.dp, g.ldx, stages, skr + pad, 16 + pad).total;
    if (smem <= smem_limit) return {stages, smem};
  }
  return {1, 0};
}

// Launchers; T is x's storage type (float, __half, __nv_bfloat16), from SK_DISPATCH_FLOAT.
// `smem` is the dynamic shared memory the host chose (fwd_smem / bwd_smem); mtn = tn / 16.
template <typename T>
void launch_prep(const PrepParams& p, cudaStream_t stream);
void launch_reduce(const ReduceParams& p, cudaStream_t stream);
template <typename T>
void launch_fwd(const FwdParams& p, int mtn, size_t smem, cudaStream_t stream);
template <typename T>
void launch_bwd(const BwdParams& p, int grid, size_t smem, cudaStream_t stream);

}  // namespace tokred
}  // namespace skillkern
