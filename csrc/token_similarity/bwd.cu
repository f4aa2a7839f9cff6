// Backward of FILIP token-wise similarity: d_img and d_txt from the upstream gradients and the
// arg-max indices the forward saved (no similarity is recomputed).
//
// For a pair (a, b) the gradient w.r.t. its similarities is a sparse (Ni, Nt) matrix
//   P_ab[k, l] = [k, l real] * (g_i2t[a,b] / n_a * [row_idx[a,b,k] == l]
//                              + g_t2i[a,b] / n_b * [col_idx[a,b,l] == k])
// (zero for a pair where an item has no real token), and
//   d_img[a] = sum_b P_ab @ txt[b],   d_txt[b] = sum_a P_ab^T @ img[a].
// Both are one GEMM whose left operand is generated on the fly: out (X tokens x D) = P (X
// tokens x Y tokens) @ src (Y tokens x D), with X = img, Y = txt and then the roles exchanged
// (token_similarity.h, BwdProblem). This is the Triton backend's design (kernels.py).
//
// A block owns MT = 128 flat X tokens x NT = 128 features (item boundaries anywhere) and loops
// over all flat Y tokens in slices of KC. Per slice it builds the P tile in shared memory by
// scattering only its non-zeros into a zeroed buffer:
//   A. per (row m, Y item y of the slice): the row term at column idxA[x(m), y, i(m)];
//   B. per (X item x of the block, column c): the column term at row idxB[x, y(c), j(c)]; where
//      the row term hit the same element, B stores the sum (rounded once, as Triton's p does);
// then accumulates P @ src_slice on tensor cores (wmma, fp16/bf16 P and src, fp32 accumulate;
// P is rounded to the input dtype like Triton's p.to(y.dtype)) or, for fp32, on CUDA cores in
// exact fp32. src slices come through a 3-stage cp.async pipeline; P is double-buffered (the
// buffer the MMA just read is zeroed while the next one is built). Two barriers per slice.
//
// No atomics: every output element is owned by one thread of one block and accumulated over
// the Y tokens in a fixed order, so the result is the same bits on every run. Every output
// element is written (padding tokens get exact zeros). Offsets that multiply strides are int64.
//
// Shared memory (bf16, KC = 32): P 2 x 128 x 40 x 2 B = 20 KB, src 3 x 32 x 136 x 2 B = 26 KB,
// + 1.1 KB of row metadata = 47 KB (4 blocks per H100 SM). fp32 (KC = 16): 46 KB.
//
// Floor at the goal shape (Bi = Bt = 1024, Ni = 50, Nt = 32, D = 256, bf16): two GEMMs of the
// forward's size, 1.72e12 FLOP = 2.17 ms at 790 TFLOP/s; the dense P tile costs Ny x the
// FLOPs a gather would need, but runs on tensor cores (benchmarks/NOTES.md). Operand traffic:
// each block reads all of src once, 2 * 128 FLOP per element: 128 FLOP per byte of L2 in bf16.
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>

#include "token_similarity/tile.cuh"
#include "token_similarity/token_similarity.h"

namespace skillkern {
namespace toksim {
namespace {

template <typename T, int KC_>
struct BwdCfg {
  static constexpr int MT = 128;  // flat X tokens per block
  static constexpr int NT = 128;  // features per block
  static constexpr int KC = KC_;  // flat Y tokens per slice
  static constexpr int STAGES = 3;
  static constexpr int WARPS_M = 4;
  static constexpr int WARPS_N = kWarps / WARPS_M;
  static constexpr int WM = MT / WARPS_M;  // 32
  static constexpr int WN = NT / WARPS_N;  // 64
  static constexpr int LDP = operand_pitch<T>(KC);  // P tile [MT][KC]
  static constexpr int LDB = operand_pitch<T>(NT);  // src slice [KC][NT]
  static_assert(KC % 16 == 0, "KC");

  static constexpr size_t kPElems = size_t(MT) * LDP;
  static constexpr size_t kPBytes = kPElems * sizeof(T);
  static constexpr size_t kSrcElems = size_t(KC) * LDB;
  static constexpr size_t kSrc = 2 * kPBytes;  // offsets in bytes
  static constexpr size_t kRowX = kSrc + STAGES * kSrcElems * sizeof(T);  // int [MT]
  static constexpr size_t kRowI = kRowX + sizeof(int) * MT;                // int [MT]
  static constexpr size_t kRowReal = kRowI + sizeof(int) * MT;             // uint8 [MT]
  static constexpr size_t kSmemBytes = kRowReal + MT;
  // The epilogue's per-warp 16 x 16 fp32 scratch reuses the P buffers.
  static_assert(2 * kPBytes >= size_t(kWarps) * 256 * sizeof(float), "epilogue scratch");
  static_assert(kPBytes % 16 == 0 && kSrc % 128 == 0 && (kSrcElems * sizeof(T)) % 128 == 0, "alignment");
};

template <typename T, class Cfg>
__global__ void __launch_bounds__(kThreads, 2)
    _token_similarity_bwd_kernel(const BwdProblem p, int64_t n_col_tiles) {
  constexpr int MT = Cfg::MT, NT = Cfg::NT, KC = Cfg::KC, STAGES = Cfg::STAGES;
  constexpr int LDP = Cfg::LDP, LDB = Cfg::LDB;
  extern __shared__ __align__(128) unsigned char smem[];
  T* p_buf = reinterpret_cast<T*>(smem);  // [2][MT][LDP]
  T* src_buf = reinterpret_cast<T*>(smem + Cfg::kSrc);  // [STAGES][KC][LDB]
  int* row_x = reinterpret_cast<int*>(smem + Cfg::kRowX);
  int* row_i = reinterpret_cast<int*>(smem + Cfg::kRowI);
  uint8_t* row_real = smem + Cfg::kRowReal;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const T* src = static_cast<const T*>(p.src);
  const int64_t Nx = p.Nx, Ny = p.Ny, D = p.D;
  const int64_t x_tokens = p.Bx * Nx;
  const int64_t y_tokens = p.By * Ny;
  // Column tiles of one row tile are consecutive blocks: they share the P inputs in L2.
  const int64_t m0 = (blockIdx.x / n_col_tiles) * MT;
  const int64_t n0 = (blockIdx.x % n_col_tiles) * NT;

  for (int m = tid; m < MT; m += kThreads) {
    const int64_t flat = m0 + m;
    if (flat < x_tokens) {
      const int64_t x = flat / Nx;
      row_x[m] = static_cast<int>(x);
      row_i[m] = static_cast<int>(flat - x * Nx);
      row_real[m] = (p.x_mask == nullptr || p.x_mask[flat] != 0) && p.n_x[x] > 0.f;
    } else {
      row_x[m] = -1;
      row_i[m] = 0;
      row_real[m] = 0;
    }
  }
  const uint4 zero4 = make_uint4(0u, 0u, 0u, 0u);
  for (size_t e = tid; e < 2 * Cfg::kPBytes / 16; e += kThreads) reinterpret_cast<uint4*>(p_buf)[e] = zero4;

  // The block's X items: x_lo .. x_lo + n_xb - 1.
  const int64_t x_lo = m0 / Nx;
  const int n_xb = static_cast<int>((std::min(m0 + MT, x_tokens) - 1) / Nx - x_lo + 1);
  const int64_t n_slices = ceil_div(y_tokens, KC);

  auto load_src = [&](int64_t s) {
    T* dst = src_buf + static_cast<int>(s % STAGES) * Cfg::kSrcElems;
    load_tile<T, KC, NT, LDB>(dst, src, s * KC, std::min<int64_t>(KC, y_tokens - s * KC), D, n0, p.vec);
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < n_slices) load_src(s);
    cp_async_commit();
  }

  using Tile = typename WarpTileFor<T, Cfg::WM, Cfg::WN, /*B_NK=*/false>::type;
  Tile acc;
  acc.zero();
  const int wm = warp / Cfg::WARPS_N;
  const int wn = warp % Cfg::WARPS_N;
  __syncthreads();  // row metadata and the zeroed P buffers

  for (int64_t s = 0; s < n_slices; ++s) {
    T* P = p_buf + static_cast<int>(s & 1) * Cfg::kPElems;
    T* P_other = p_buf + static_cast<int>((s + 1) & 1) * Cfg::kPElems;
    const int64_t k0 = s * KC;
    const int64_t y_lo = k0 / Ny;
    const int n_ys = static_cast<int>((std::min(k0 + KC, y_tokens) - 1) / Ny - y_lo + 1);

    // A. row terms: row m's pick among the tokens of Y item y, if it lies in this slice.
    for (int it = tid; it < MT * n_ys; it += kThreads) {
      const int m = it % MT;
      const int64_t y = y_lo + it / MT;
      if (!row_real[m]) continue;
      const int64_t x = row_x[m];
      const float n_y = p.n_y[y];
      if (!(n_y > 0.f)) continue;
      const int64_t j = load_index(p.idxA, p.idxA_bytes, x * p.idxA_sx + y * p.idxA_sy + row_i[m]);
      const int64_t c = y * Ny + j - k0;
      if (j < 0 || j >= Ny || c < 0 || c >= KC) continue;
      if (p.y_mask != nullptr && p.y_mask[y * Ny + j] == 0) continue;
      P[m * LDP + c] = from_f32<T>(p.gA[x * p.gA_sx + y * p.gA_sy] / p.n_x[x]);
    }
    __syncthreads();  // B may overwrite A's elements

    // The src stage MMA(s - 1) read is free now (every warp has passed the barrier above).
    if (s + STAGES - 1 < n_slices) load_src(s + STAGES - 1);
    cp_async_commit();

    // B. column terms: Y token (y, j)'s pick among the tokens of X item x, if it is a row here.
    for (int it = tid; it < n_xb * KC; it += kThreads) {
      const int c = it % KC;
      const int64_t x = x_lo + it / KC;
      const int64_t flat = k0 + c;
      if (flat >= y_tokens) continue;
      if (p.y_mask != nullptr && p.y_mask[flat] == 0) continue;
      const int64_t y = flat / Ny;
      const int64_t j = flat - y * Ny;
      const float n_x = p.n_x[x];
      const float n_y = p.n_y[y];
      if (!(n_x > 0.f) || !(n_y > 0.f)) continue;
      const int64_t i = load_index(p.idxB, p.idxB_bytes, x * p.idxB_sx + y * p.idxB_sy + j);
      const int64_t m = x * Nx + i - m0;
      if (i < 0 || i >= Nx || m < 0 || m >= MT || !row_real[m]) continue;
      float v = p.gB[x * p.gB_sx + y * p.gB_sy] / n_y;
      if (load_index(p.idxA, p.idxA_bytes, x * p.idxA_sx + y * p.idxA_sy + i) == j) {
        v = p.gA[x * p.gA_sx + y * p.gA_sy] / n_x + v;  // the element A wrote: store the sum
      }
      P[m * LDP + c] = from_f32<T>(v);
    }
    // MMA(s - 1) read P_other before the barrier above; A(s + 1) writes it after the next one.
    for (size_t e = tid; e < Cfg::kPBytes / 16; e += kThreads) reinterpret_cast<uint4*>(P_other)[e] = zero4;
    cp_async_wait<STAGES - 1>();  // slice s has landed (this thread's copies) ...
    __syncthreads();              // ... everyone's, and P is complete

    const T* sb = src_buf + static_cast<int>(s % STAGES) * Cfg::kSrcElems;
    acc.template mma<KC>(P + wm * Cfg::WM * LDP, LDP, sb + wn * Cfg::WN, LDB);
  }
  __syncthreads();  // the P buffers become the epilogue's scratch

  T* out = static_cast<T*>(p.out);
  float* scratch = reinterpret_cast<float*>(smem) + warp * 256;
  const int64_t row0 = m0 + wm * Cfg::WM;
  const int64_t col0 = n0 + wn * Cfg::WN;
  acc.visit(scratch, [&](int r, int c, float v) {
    const int64_t row = row0 + r;
    const int64_t col = col0 + c;
    if (row < x_tokens && col < D) out[row * D + col] = from_f32<T>(v);
  });
}

__global__ void __launch_bounds__(kThreads)
    _count_real_kernel(const uint8_t* __restrict__ mask, int64_t B, int64_t N, float* __restrict__ n_out) {
  const int64_t item = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (item >= B) return;  // whole warps
  int n = 0;
  for (int64_t q = lane; q < N; q += 32) n += mask[item * N + q] != 0;
  n = warp_sum(n);
  if (lane == 0) n_out[item] = static_cast<float>(n);
}

template <typename T, int KC>
void launch_typed(const BwdProblem& p, cudaStream_t stream) {
  using Cfg = BwdCfg<T, KC>;
  const int64_t n_row_tiles = ceil_div(p.Bx * p.Nx, Cfg::MT);
  const int64_t n_col_tiles = ceil_div(p.D, Cfg::NT);
  TORCH_CHECK(n_row_tiles * n_col_tiles <= std::numeric_limits<int32_t>::max(),
              "token_similarity: ", p.Bx * p.Nx, " tokens x D = ", p.D, " need more than 2^31 - 1 CUDA blocks");
  auto kernel = _token_similarity_bwd_kernel<T, Cfg>;
  constexpr size_t smem = Cfg::kSmemBytes;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<static_cast<unsigned>(n_row_tiles * n_col_tiles), kThreads, smem, stream>>>(p, n_col_tiles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_count_real(const uint8_t* mask, int64_t B, int64_t N, float* n_out, cudaStream_t stream) {
  const int64_t blocks = ceil_div(B, kWarps);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "token_similarity: too many items (", B, ")");
  _count_real_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(mask, B, N, n_out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_backward(const BwdProblem& p, cudaStream_t stream) {
  // KC: 32 tokens of 16-bit P (64 B rows); fp32 takes 16 for the same bytes.
  switch (p.dtype) {
    case DType::kFloat: launch_typed<float, 16>(p, stream); break;
    case DType::kHalf: launch_typed<__half, 32>(p, stream); break;
    case DType::kBFloat16: launch_typed<__nv_bfloat16, 32>(p, stream); break;
  }
}

}  // namespace toksim
}  // namespace skillkern
