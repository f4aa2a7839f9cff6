// The tile machinery of the skill-FFN kernels (ffn_fwd.cu, ffn_bwd.cu): one block tile GEMM
// with a gathered A operand, a device-side grouped tile schedule, and an epilogue that hands
// each lane 8 consecutive output columns of one row.
//
// Block tile. BM x BN outputs per block, K in steps of BK = 64 bytes of operand (32 bf16/fp16
// or 16 fp32 elements), 3-stage cp.async pipeline (16-byte copies, zero-fill past the edges).
// Warps own (BM / WARPS_M) x (BN / WARPS_N) warp tiles made of 16 x 16 blocks.
//  - fp16 / bf16: mma.sync m16n8k16 with fp32 accumulators, operand fragments loaded by
//    ldmatrix.x4 (.trans where the tile's contiguous dimension is not the fragment's): two 16 x 8
//    MMAs per 16 x 16 block, four ldmatrix.x4 per 16 x 16 x 16 step of A and B together.
//  - fp32: the same tiles and pipeline, SIMT fmaf (exact IEEE fp32 products and sums, like
//    torch.mm under the default "highest" precision and the Triton backend's "ieee" dots).
// Shared memory rows are padded by 16 bytes: 8 consecutive rows then start in 8 different
// 4-bank groups, so the ldmatrix phases (8 rows x 16 bytes) are conflict-free.
// Smem per stage: A BM x (BK + pad) + B BK x (BN + pad) (or BN x (BK + pad) when B is read
// transposed). 128 x 128, 16-bit: 10,240 + 8,704 (10,240) bytes -> 3 stages = 56.8 (61.4) KB,
// so shared memory would let 3 blocks share an H100 SM (227 KB) and 2 an A100 SM (164 KB);
// registers allow that only where kTwoBlocks (below) holds.
//
// Operand layouts in shared memory ("row" = the second index is contiguous):
//   A row: [BM][BK + pad], A(m, k) = As[m * lda + k]   (activations, gathered by row)
//   A col: [BK][BM + pad], A(m, k) = As[k * lda + m]   (weight gradients: A^T of a row buffer)
//   B row: [BK][BN + pad], B(k, n) = Bs[k * ldb + n]   (w1, w2 as stored)
//   B col: [BN][BK + pad], B(k, n) = Bs[n * ldb + k]   (w1^T, w2^T: read through the transpose)
// The global tile is always copied row by row in its own layout (its contiguous dim stays
// contiguous), and ldmatrix's .trans does the transpose.
//
// Unaligned shapes (a row length that is not a multiple of 16 bytes, or an unaligned base)
// take a synchronous element-wise copy into the same buffers (a uniform runtime branch), so
// every size works; the fast path needs 16-byte aligned rows.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common.h"
#include "ptx.cuh"

namespace skillkern {
namespace ffn {

constexpr int kStages = 3;       // cp.async pipeline depth: 2 tiles in flight while one computes
constexpr int kStageLd = 20;     // fp32 row stride of a warp's 16 x 16 epilogue staging block
constexpr int kGroupM = 8;       // row tiles that sweep a weight's column tiles together (L2 reuse)

template <typename T>
constexpr bool kTensorCore = !std::is_same<T, float>::value;
template <typename T>
constexpr int kVec = 16 / int(sizeof(T));  // elements per 16-byte copy
template <typename T>
constexpr int kBK = 64 / int(sizeof(T));   // K step: 64-byte operand rows
// __launch_bounds__'s minimum blocks per SM for the kernels that take it. 2 caps an 8-warp
// kernel at 128 registers, so that two blocks share an SM (shared memory allows 2 on an A100 and
// 3 on an H100, above). Only the kernels that fit 128 registers without spilling take it (read
// from the machine code, sm_80 and sm_90): the 16-bit weight-gradient and dX kernels. GEMM1 with
// its activation epilogue, GEMM2 with its fp32 row staging and the backward's two-accumulator
// up kernel spill 16-1200 B at 128 (the fp32 SIMT kernels 90-1600 B), so they keep 164-205
// registers and one block of 8 warps per SM.
template <typename T>
constexpr int kTwoBlocks = kTensorCore<T> ? 2 : 1;

__host__ __device__ constexpr int round_up128(int bytes) { return (bytes + 127) / 128 * 128; }

// ----------------------------------------------------------------------------- tile copies

// Copies a ROWS x COLS tile whose columns are contiguous in global memory into shared memory
// (row stride LD). row_off(r) is the element offset of tile row r in `g`, or -1 for a row
// past the edge; columns col0 + c >= ncols are zero-filled. vec: 16-byte copies, which needs
// `g` 16-byte aligned and every row offset, col0 and ncols multiples of kVec<T> (then a
// 16-byte chunk is either wholly inside or wholly outside the valid columns).
template <typename T, int ROWS, int COLS, int LD, int THREADS, class RowOff>
__device__ __forceinline__ void load_tile(T* s, const T* __restrict__ g, RowOff row_off, int64_t col0,
                                          int64_t ncols, bool vec) {
  constexpr int VEC = kVec<T>;
  static_assert(COLS % VEC == 0 && LD % VEC == 0, "tile rows must be whole 16-byte chunks");
  if (vec) {
    constexpr int CPR = COLS / VEC;  // chunks per row
    for (int i = threadIdx.x; i < ROWS * CPR; i += THREADS) {
      const int r = i / CPR;
      const int c = (i % CPR) * VEC;
      const int64_t off = row_off(r);
      const bool ok = off >= 0 && col0 + c < ncols;
      cp_async16(s + r * LD + c, ok ? g + off + col0 + c : g, ok);
    }
  } else {
    for (int i = threadIdx.x; i < ROWS * COLS; i += THREADS) {
      const int r = i / COLS;
      const int c = i % COLS;
      const int64_t off = row_off(r);
      s[r * LD + c] = (off >= 0 && col0 + c < ncols) ? g[off + col0 + c] : from_f32<T>(0.f);
    }
  }
}

// ----------------------------------------------------------------------------- tile shapes

template <typename T, int BM_, int BN_, int WARPS_M_, int WARPS_N_>
struct TileShape {
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // warp tile
  static constexpr int FM = WM / 16, FN = WN / 16;            // 16 x 16 blocks per warp tile
  static constexpr int BK = kBK<T>, PAD = kVec<T>;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tiles are made of 16 x 16 blocks");
  // the epilogue stages one 16 x 16 fp32 block per warp at the start of shared memory
  static constexpr int EPILOGUE_BYTES = WARPS_M * WARPS_N * 16 * kStageLd * 4;
};

// Smem geometry of one main loop: A (row or col layout) + NB B tiles (row or col) per stage.
template <typename T, class S, bool A_COL, bool B_COL, int NB>
struct LoopSmem {
  static constexpr int LDA = A_COL ? S::BM + S::PAD : S::BK + S::PAD;
  static constexpr int LDB = B_COL ? S::BK + S::PAD : S::BN + S::PAD;
  static constexpr int A_BYTES = round_up128((A_COL ? S::BK : S::BM) * LDA * int(sizeof(T)));
  static constexpr int B_BYTES = round_up128((B_COL ? S::BN : S::BK) * LDB * int(sizeof(T)));
  static constexpr int STAGE_BYTES = A_BYTES + NB * B_BYTES;
  static constexpr int BYTES = kStages * STAGE_BYTES;
  static_assert(BYTES >= S::EPILOGUE_BYTES, "the epilogue staging reuses the pipeline buffers");
};

// ----------------------------------------------------------------------------- accumulators

// A warp's accumulators: FM x FN blocks of 16 x 16. fp32 (SIMT): lane L holds row L / 2,
// columns (L % 2) * 8 + q (q < 8) of every block: the epilogue's layout, so no staging.
template <typename T, int FM, int FN, bool TC = kTensorCore<T>>
struct WarpAcc {
  float v[FM][FN][8];
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
#pragma unroll
        for (int q = 0; q < 8; ++q) v[i][j][q] = 0.f;
  }
};

// fp16 / bf16: mma.sync m16n8 accumulators, two per 16 x 16 block (h = the column half). Lane
// L = 4g + t holds c[h][0..1] = rows g, columns 8h + 2t, +1 and c[h][2..3] = row g + 8, the same
// columns; the epilogue regroups them through a per-warp staging block in shared memory.
template <typename T, int FM, int FN>
struct WarpAcc<T, FM, FN, true> {
  float c[FM][FN][2][4];
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int q = 0; q < 4; ++q) c[i][j][h][q] = 0.f;
  }
};

// The 8 values of block (i, j) that this lane handles in the epilogue: block row lane / 2,
// block columns (lane % 2) * 8 + q. `stage` is this warp's 16 x kStageLd fp32 buffer (32-byte
// aligned). Every lane of the warp must call this (it has __syncwarp inside).
template <typename T, int FM, int FN>
__device__ __forceinline__ void block_values(const WarpAcc<T, FM, FN>& acc, int i, int j, float* stage,
                                             float (&out)[8]) {
  if constexpr (kTensorCore<T>) {
    const int lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      *reinterpret_cast<float2*>(stage + g * kStageLd + 8 * h + 2 * t) =
          make_float2(acc.c[i][j][h][0], acc.c[i][j][h][1]);
      *reinterpret_cast<float2*>(stage + (g + 8) * kStageLd + 8 * h + 2 * t) =
          make_float2(acc.c[i][j][h][2], acc.c[i][j][h][3]);
    }
    __syncwarp();
    const float4* src = reinterpret_cast<const float4*>(stage + (lane >> 1) * kStageLd + (lane & 1) * 8);
    const float4 lo = src[0], hi = src[1];
    out[0] = lo.x; out[1] = lo.y; out[2] = lo.z; out[3] = lo.w;
    out[4] = hi.x; out[5] = hi.y; out[6] = hi.z; out[7] = hi.w;
    __syncwarp();  // all lanes have read before the next block overwrites the stage
  } else {
#pragma unroll
    for (int q = 0; q < 8; ++q) out[q] = acc.v[i][j][q];
  }
}

// One BK step of the block tile: acc[nb] += A_tile * B_tile[nb] for this warp's blocks.
template <typename T, class S, class L, bool A_COL, bool B_COL, int NB>
__device__ __forceinline__ void mma_stage(const T* As, const T* Bs0, WarpAcc<T, S::FM, S::FN> (&acc)[NB]) {
  const int warp = threadIdx.x / 32;
  const int m0 = (warp / S::WARPS_N) * S::WM;
  const int n0 = (warp % S::WARPS_N) * S::WN;
  constexpr int LDA = L::LDA, LDB = L::LDB;
  constexpr int B_STRIDE = L::B_BYTES / int(sizeof(T));  // elements between the NB B tiles
  if constexpr (kTensorCore<T>) {
    // ldmatrix.x4: lane 8q + r gives row r of 8 x 8 matrix q. A (m16 x k16, row operand):
    // matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15); B (k16 x n16,
    // col operand of two n8 MMAs): (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15,
    // n 8-15). A tile stored k-major (A col) and B stored k-major (B row) load with .trans.
    const int lane = threadIdx.x % 32;
    const int q = lane >> 3, r = lane & 7;
    __syncwarp();  // ldmatrix and mma.sync are warp-collective (the copy loops may diverge)
#pragma unroll
    for (int kk = 0; kk < S::BK; kk += 16) {
      uint32_t fa[S::FM][4];
#pragma unroll
      for (int i = 0; i < S::FM; ++i) {
        const int m = m0 + 16 * i + (q & 1) * 8, k = kk + (q >> 1) * 8;
        if constexpr (A_COL) {
          ldmatrix_x4_trans(fa[i], As + (k + r) * LDA + m);
        } else {
          ldmatrix_x4(fa[i], As + (m + r) * LDA + k);
        }
      }
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
        const T* Bs = Bs0 + nb * B_STRIDE;
#pragma unroll
        for (int j = 0; j < S::FN; ++j) {
          const int n = n0 + 16 * j + (q >> 1) * 8, k = kk + (q & 1) * 8;
          uint32_t fb[4];  // {b0, b1} of columns n0 + 16j .. +7, then of +8 .. +15
          if constexpr (B_COL) {
            ldmatrix_x4(fb, Bs + (n + r) * LDB + k);
          } else {
            ldmatrix_x4_trans(fb, Bs + (k + r) * LDB + n);
          }
#pragma unroll
          for (int i = 0; i < S::FM; ++i) {
            mma_m16n8<T>(acc[nb].c[i][j][0], fa[i], fb[0], fb[1]);
            mma_m16n8<T>(acc[nb].c[i][j][1], fa[i], fb[2], fb[3]);
          }
        }
      }
    }
  } else {
    const int lane = threadIdx.x % 32;
#pragma unroll 4
    for (int kk = 0; kk < S::BK; ++kk) {
      float av[S::FM];
#pragma unroll
      for (int i = 0; i < S::FM; ++i) {
        const int m = m0 + 16 * i + (lane >> 1);
        av[i] = A_COL ? As[kk * LDA + m] : As[m * LDA + kk];
      }
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
        const T* Bs = Bs0 + nb * B_STRIDE;
#pragma unroll
        for (int j = 0; j < S::FN; ++j) {
          const int n = n0 + 16 * j + (lane & 1) * 8;
          float bv[8];
          if constexpr (B_COL) {
#pragma unroll
            for (int q = 0; q < 8; ++q) bv[q] = Bs[(n + q) * LDB + kk];
          } else {
            const float4 lo = *reinterpret_cast<const float4*>(Bs + kk * LDB + n);
            const float4 hi = *reinterpret_cast<const float4*>(Bs + kk * LDB + n + 4);
            bv[0] = lo.x; bv[1] = lo.y; bv[2] = lo.z; bv[3] = lo.w;
            bv[4] = hi.x; bv[5] = hi.y; bv[6] = hi.z; bv[7] = hi.w;
          }
#pragma unroll
          for (int i = 0; i < S::FM; ++i)
#pragma unroll
            for (int q = 0; q < 8; ++q) acc[nb].v[i][j][q] = fmaf(av[i], bv[q], acc[nb].v[i][j][q]);
        }
      }
    }
  }
}

// The 3-stage pipeline over KT K-steps. load(stage, kt) issues the copies of step kt into
// `stage` (cp.async, or plain stores on the unaligned path); compute(stage) consumes it.
// One __syncthreads per step: it publishes step kt to every warp AND tells the loader that
// every warp has finished step kt - 1, whose stage (kt + kStages - 1) % kStages is refilled
// right after it. Ends with every copy landed and a barrier, so the caller may reuse smem.
template <class Load, class Compute>
__device__ __forceinline__ void pipeline(int64_t KT, Load load, Compute compute) {
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < KT) load(s, int64_t(s));
    cp_async_commit();  // empty groups keep the group count = steps issued
  }
  for (int64_t kt = 0; kt < KT; ++kt) {
    cp_async_wait<kStages - 2>();  // this thread's copies of step kt have landed
    __syncthreads();
    const int64_t next = kt + kStages - 1;
    if (next < KT) load(int(next % kStages), next);
    cp_async_commit();
    compute(int(kt % kStages));
  }
  cp_async_wait_all();
  __syncthreads();
}

// Row GEMM main loop: acc[nb] += A[rows] * B[nb][:, n0 : n0 + BN] over K.
//   A rows: s_arow[r] = element offset of tile row r in `a` (-1: past the skill's rows, zeros);
//           row length K (contiguous).
//   B[nb]:  row layout (B_COL = false): K x n_valid, row stride ldb (w1, w2 as stored);
//           col layout (B_COL = true):  n_valid x K, row stride ldb (w^T read through w).
template <typename T, class S, bool B_COL, int NB>
__device__ __forceinline__ void row_mainloop(unsigned char* smem, const int64_t* s_arow, const T* a, int64_t K,
                                             const T* const* b, int64_t ldb, int64_t n0, int64_t n_valid,
                                             bool vec_a, bool vec_b, WarpAcc<T, S::FM, S::FN> (&acc)[NB]) {
  using L = LoopSmem<T, S, false, B_COL, NB>;
  auto a_tile = [&](int s) { return reinterpret_cast<T*>(smem + s * L::STAGE_BYTES); };
  auto b_tile = [&](int s, int nb) {
    return reinterpret_cast<T*>(smem + s * L::STAGE_BYTES + L::A_BYTES + nb * L::B_BYTES);
  };
  auto load = [&](int s, int64_t kt) {
    const int64_t k0 = kt * S::BK;
    load_tile<T, S::BM, S::BK, L::LDA, S::THREADS>(
        a_tile(s), a, [&](int r) { return s_arow[r]; }, k0, K, vec_a);
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      if constexpr (B_COL) {
        load_tile<T, S::BN, S::BK, L::LDB, S::THREADS>(
            b_tile(s, nb), b[nb],
            [&](int r) -> int64_t { return n0 + r < n_valid ? (n0 + r) * ldb : int64_t(-1); }, k0, K, vec_b);
      } else {
        load_tile<T, S::BK, S::BN, L::LDB, S::THREADS>(
            b_tile(s, nb), b[nb],
            [&](int r) -> int64_t { return k0 + r < K ? (k0 + r) * ldb : int64_t(-1); }, n0, n_valid, vec_b);
      }
    }
  };
  auto compute = [&](int s) { mma_stage<T, S, L, false, B_COL, NB>(a_tile(s), b_tile(s, 0), acc); };
  pipeline((K + S::BK - 1) / S::BK, load, compute);
}

// ----------------------------------------------------------------------------- schedule

// The tile of a row-tiled block. Sorted positions of bucket b (skill b < E; bucket E = the
// empty slots when the kernel asks for it) are [offsets[b], offsets[b+1]) (bucket E ends at
// N); each bucket gets ceil(count / BM) row tiles of its own, so a tile never spans two skills.
// That is at most ceil(N / BM) + num_buckets row tiles: the grid is sized for that worst case
// from shapes alone (no host sync), and a block past the last real tile gets skill = -1.
struct RowTile {
  int skill;        // bucket of the tile, -1 = surplus block (exit)
  int pid_n;        // column tile
  int64_t row0;     // first sorted position of the tile
  int64_t row_end;  // end of the bucket's positions (rows >= row_end are masked)
};

__device__ __forceinline__ int64_t num_row_tiles(int64_t N, int BM, int num_buckets) {
  return (N + BM - 1) / BM + num_buckets;
}

__device__ __forceinline__ RowTile row_tile(const int32_t* __restrict__ offsets, int E, int num_buckets,
                                            int64_t N, int BM, int64_t n_col_tiles) {
  // grouped launch order (Triton's _swizzle): kGroupM row tiles sweep the column tiles
  // together, so the weight tiles they share are read while still in L2
  const int64_t pid = blockIdx.x;
  const int64_t n_m = num_row_tiles(N, BM, num_buckets);
  const int64_t width = int64_t(kGroupM) * n_col_tiles;
  const int64_t first_m = (pid / width) * kGroupM;
  const int64_t size_m = n_m - first_m < kGroupM ? n_m - first_m : int64_t(kGroupM);
  const int64_t pid_m = first_m + (pid % width) % size_m;
  RowTile t{-1, int((pid % width) / size_m), 0, 0};
  int64_t base = 0;
  int64_t lo = 0;  // offsets[0] == 0
  for (int b = 0; b < num_buckets; ++b) {
    const int64_t hi = b < E ? int64_t(offsets[b + 1]) : N;
    const int64_t n_tiles = (hi - lo + BM - 1) / BM;
    if (pid_m < base + n_tiles) {
      t.skill = b;
      t.row0 = lo + (pid_m - base) * BM;
      t.row_end = hi;
      break;
    }
    base += n_tiles;
    lo = hi;
  }
  return t;
}

// The skill of sorted row p < offsets[E]: the last e with offsets[e] <= p (an empty skill shares
// its offset with the next one, so the last such e is the one that holds p).
__device__ __forceinline__ int skill_of_row(const int32_t* __restrict__ offsets, int E, int64_t p) {
  int lo = 0, hi = E - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= p) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// ----------------------------------------------------------------------------- epilogue I/O

__device__ __forceinline__ unsigned bits16(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

// Stores v[0 : n] to dst[0 : n] (n <= 8) in T; one or two 16-byte stores when vec and n == 8
// (vec: dst is 16-byte aligned).
template <typename T>
__device__ __forceinline__ void store8(T* dst, const float (&v)[8], int n, bool vec) {
  if (vec && n == 8) {
    if constexpr (std::is_same<T, float>::value) {
      reinterpret_cast<float4*>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
      reinterpret_cast<float4*>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
      unsigned w[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) w[q] = bits16(from_f32<T>(v[2 * q])) | (bits16(from_f32<T>(v[2 * q + 1])) << 16);
      *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
    }
  } else {
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if (q < n) dst[q] = from_f32<T>(v[q]);
  }
}

// v[q] += bias[q] for q < n (bias may be null).
template <typename T>
__device__ __forceinline__ void add_bias8(float (&v)[8], const T* bias, int n) {
  if (bias == nullptr) return;
#pragma unroll
  for (int q = 0; q < 8; ++q)
    if (q < n) v[q] += to_f32(bias[q]);
}

template <typename T>
inline bool aligned16(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace ffn
}  // namespace skillkern
