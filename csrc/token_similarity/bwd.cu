// Backward of FILIP token-wise similarity: d_img and d_txt from the upstream gradients and the
// arg-max indices the forward saved (no similarity is recomputed).
//
// For a pair (a, b) the gradient w.r.t. its similarities is a sparse (Ni, Nt) matrix
//   P_ab[k, l] = c_i2t[a,b] * [k real] * [row_idx[a,b,k] == l] + c_t2i[a,b] * [l real] * [col_idx[a,b,l] == k]
// with c_i2t = g_i2t / n_a, c_t2i = g_t2i / n_b (zero for a pair where an item has no real
// token; _coefficients_kernel), and
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
//      the row term hit the same element (A's picks are kept in shared memory), B stores the
//      sum, rounded once as Triton's p is;
// then accumulates P @ src_slice on tensor cores (wmma, fp16/bf16 P and src, fp32 accumulate;
// P is rounded to the input dtype like Triton's p.to(y.dtype)) or, for fp32, on CUDA cores in
// exact fp32. src slices come through a 3-stage cp.async pipeline; P is double-buffered.
//
// Latency, not FLOPs, is what a naive loop would wait on: each slice's terms need an index and a
// coefficient from global memory (the index arrays, 86 MB at the goal shape, live in HBM). So
// the loads of slice s + 1's terms (up to kPrefetch per thread and kind; more, e.g. for items
// of a few tokens, are loaded when used) are issued before slice s's MMA and consumed after it:
//   sync1 | B(s) stores, src prefetch, zero P(s+1) | sync2 | issue loads A(s+1), B(s+1) |
//   MMA(s) | A(s+1) stores
// Every term is one round trip (no load depends on another).
//
// No atomics: every output element is owned by one thread of one block and accumulated over
// the Y tokens in a fixed order, so the result is the same bits on every run. Every output
// element is written (padding tokens get exact zeros). Offsets that multiply strides are int64.
//
// Shared memory (bf16, KC = 32): P 2 x 128 x 40 x 2 B = 20 KB, src 3 x 32 x 136 x 2 B = 26 KB,
// + 3.1 KB of row metadata and A's picks = 49 KB; fp32 (KC = 16): 48 KB. One block (8 warps) per
// SM: __launch_bounds__(256, 1) lets it use 180-255 registers (at 128, for two blocks, it spilled
// 48-544 B), hence the explicit load pipelining.
//
// Floor at the goal shape (Bi = Bt = 1024, Ni = 50, Nt = 32, D = 256, bf16): two GEMMs of the
// forward's size, 1.72e12 FLOP = 2.17 ms at 790 TFLOP/s; the dense P tile costs Ny x the
// FLOPs a gather would need, but runs on tensor cores (benchmarks/NOTES.md). Operand traffic:
// each block reads all of src once, 2 * 128 FLOP per element: 128 FLOP per byte of L2 in bf16.
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>

#include "token_similarity/tile.cuh"
#include "token_similarity/token_similarity.h"

namespace skillkern {
namespace toksim {
namespace {

constexpr int kPrefetch = 2;  // terms of each kind per thread whose loads run ahead (2 x 256 per slice)
constexpr int kPickRows = 4;  // Y items per slice whose row picks B reads from shared memory

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
  static_assert(KC % 16 == 0 && (KC & (KC - 1)) == 0, "KC: a power of two, whole wmma k-steps");

  static constexpr size_t kPElems = size_t(MT) * LDP;
  static constexpr size_t kPBytes = kPElems * sizeof(T);
  static constexpr size_t kSrcElems = size_t(KC) * LDB;
  static constexpr size_t kSrc = 2 * kPBytes;  // offsets in bytes
  static constexpr size_t kRowX = kSrc + STAGES * kSrcElems * sizeof(T);  // int [MT]
  static constexpr size_t kRowI = kRowX + sizeof(int) * MT;                // int [MT]
  static constexpr size_t kPick = kRowI + sizeof(int) * MT;                // int [kPickRows][MT]
  static constexpr size_t kRowReal = kPick + sizeof(int) * kPickRows * MT;  // uint8 [MT]
  static constexpr size_t kSmemBytes = kRowReal + MT;
  // The epilogue's per-warp 16 x 16 fp32 scratch reuses the P buffers.
  static_assert(2 * kPBytes >= size_t(kWarps) * 256 * sizeof(float), "epilogue scratch");
  static_assert(kPBytes % 16 == 0 && kSrc % 128 == 0 && (kSrcElems * sizeof(T)) % 128 == 0, "alignment");
};

// The slice of flat Y tokens [k0, k0 + KC) and its Y items y_lo .. y_lo + n_ys - 1.
struct Slice {
  int64_t k0;
  int64_t y_lo;
  int first_tok;  // token index of column 0 within item y_lo
  int n_ys;
};

// A row term in flight: the pick j (or -1) and the coefficient (0: no term).
struct RowTerm {
  int j;
  float c;
};
// A column term in flight: X token i picked by (x, Y token), and both coefficients of the pair
// (cB = 0: no term, also for a padding Y token or a column past the end).
struct ColTerm {
  int i;
  float cA;
  float cB;
};

// Index loads narrowed to int: uint8 / int16 / int32 fit as they are (no use of the loaded value,
// so the load stays in flight); int64 values outside int range become -1 (match nothing).
__device__ __forceinline__ int load_index32(const void* base, int bytes, int64_t off) {
  if (bytes == 8) {
    const int64_t v = static_cast<const int64_t*>(base)[off];
    return (v >= 0 && v <= std::numeric_limits<int>::max()) ? static_cast<int>(v) : -1;
  }
  return static_cast<int>(load_index(base, bytes, off));
}

template <typename T, class Cfg>
__global__ void __launch_bounds__(kThreads, 1)
    _token_similarity_bwd_kernel(const BwdProblem p, int64_t n_col_tiles) {
  constexpr int MT = Cfg::MT, NT = Cfg::NT, KC = Cfg::KC, STAGES = Cfg::STAGES;
  constexpr int LDP = Cfg::LDP, LDB = Cfg::LDB;
  unsigned char* const smem = dynamic_smem();
  T* p_buf = reinterpret_cast<T*>(smem);  // [2][MT][LDP]
  T* src_buf = reinterpret_cast<T*>(smem + Cfg::kSrc);  // [STAGES][KC][LDB]
  int* row_x = reinterpret_cast<int*>(smem + Cfg::kRowX);
  int* row_i = reinterpret_cast<int*>(smem + Cfg::kRowI);
  int* row_pick = reinterpret_cast<int*>(smem + Cfg::kPick);  // [kPickRows][MT]: A's j, or -1
  uint8_t* row_real = smem + Cfg::kRowReal;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const T* src = static_cast<const T*>(p.src);
  const int64_t Nx = p.Nx, D = p.D;
  const int Ny = static_cast<int>(p.Ny);  // < 2^31 (host check)
  const int64_t x_tokens = p.Bx * Nx;
  const int64_t y_tokens = p.By * Ny;
  // Column tiles of one row tile are consecutive blocks: they share the P inputs in L2.
  const int64_t m0 = (blockIdx.x / n_col_tiles) * MT;
  const int64_t n0 = (blockIdx.x % n_col_tiles) * NT;

  token_metadata<MT>(m0, x_tokens - m0, Nx, p.x_mask, row_x, row_i, row_real);
  const uint4 zero4 = make_uint4(0u, 0u, 0u, 0u);
  for (size_t e = tid; e < 2 * Cfg::kPBytes / 16; e += kThreads) reinterpret_cast<uint4*>(p_buf)[e] = zero4;

  // The block's X items: x_lo .. x_lo + n_xb - 1.
  const int64_t x_lo = m0 / Nx;
  const int n_xb = static_cast<int>((std::min(m0 + MT, x_tokens) - 1) / Nx - x_lo + 1);
  const int64_t n_slices = ceil_div(y_tokens, KC);
  auto slice = [&](int64_t s) {
    Slice sl;
    sl.k0 = s * KC;
    sl.y_lo = sl.k0 / Ny;
    sl.first_tok = static_cast<int>(sl.k0 - sl.y_lo * Ny);
    sl.n_ys = static_cast<int>((std::min(sl.k0 + KC, y_tokens) - 1) / Ny - sl.y_lo + 1);
    return sl;
  };

  // ---- A: row terms. Item it = (Y item yl of the slice, row m).
  auto row_load = [&](const Slice& sl, int it) {
    RowTerm t{-1, 0.f};
    const int m = it % MT;
    if (row_real[m]) {
      const int64_t x = row_x[m];
      const int64_t y = sl.y_lo + it / MT;
      t.j = load_index32(p.idxA, p.idxA_bytes, x * p.idxA_sx + y * p.idxA_sy + row_i[m]);
      t.c = p.cA[x * p.cA_sx + y * p.cA_sy];
    }
    return t;
  };
  auto row_store = [&](const Slice& sl, int it, const RowTerm& t, T* P) {
    const int m = it % MT;
    const int yl = it / MT;
    int pick = -1;
    // column of Y token j of item yl; a pick outside this slice belongs to another slice
    const int c = yl * Ny + t.j - sl.first_tok;
    if (t.c != 0.f && t.j >= 0 && t.j < Ny && c >= 0 && c < KC) {
      P[m * LDP + c] = from_f32<T>(t.c);
      pick = t.j;
    }
    if (yl < kPickRows) row_pick[yl * MT + m] = pick;
  };
  // ---- B: column terms. Item it = (X item xl of the block, column c).
  auto col_load = [&](const Slice& sl, int it) {
    ColTerm t{-1, 0.f, 0.f};
    const int c = it % KC;
    const int64_t flat = sl.k0 + c;
    if (flat < y_tokens) {
      const int rel = sl.first_tok + c;  // < Ny + KC
      const int64_t y = sl.y_lo + rel / Ny;
      const int j = rel % Ny;
      const int64_t x = x_lo + it / KC;
      const bool real = p.y_mask == nullptr || p.y_mask[flat] != 0;
      t.i = load_index32(p.idxB, p.idxB_bytes, x * p.idxB_sx + y * p.idxB_sy + j);
      t.cB = real ? p.cB[x * p.cB_sx + y * p.cB_sy] : 0.f;
      t.cA = p.cA[x * p.cA_sx + y * p.cA_sy];
    }
    return t;
  };
  auto col_store = [&](const Slice& sl, int it, const ColTerm& t, T* P) {
    if (t.cB == 0.f || t.i < 0 || t.i >= Nx) return;
    const int c = it % KC;
    const int64_t x = x_lo + it / KC;
    const int64_t m = x * Nx + t.i - m0;
    if (m < 0 || m >= MT || !row_real[m]) return;
    const int rel = sl.first_tok + c;
    const int yl = rel / Ny;
    const int j = rel % Ny;
    // did the row term (x, i) pick this Y token? then the element holds it: store the sum
    const bool row_term = yl < kPickRows ? row_pick[yl * MT + m] == j
                                         : load_index32(p.idxA, p.idxA_bytes,
                                                        x * p.idxA_sx + (sl.y_lo + yl) * p.idxA_sy + t.i) == j;
    P[m * LDP + c] = from_f32<T>(row_term ? t.cA + t.cB : t.cB);
  };

  auto load_src = [&](int64_t s) {
    T* dst = src_buf + static_cast<int>(s % STAGES) * Cfg::kSrcElems;
    load_tile<T, KC, NT, LDB>(dst, src, s * KC, std::min<int64_t>(KC, y_tokens - s * KC),
                              p.y_mask ? p.y_mask + s * KC : nullptr, D, n0, p.vec);
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

  RowTerm ra[kPrefetch] = {};
  ColTerm rb[kPrefetch] = {};
  if (n_slices > 0) {  // slice 0's terms: A stored now, B's loads in flight
    const Slice sl = slice(0);
    for (int it = tid; it < MT * sl.n_ys; it += kThreads) row_store(sl, it, row_load(sl, it), p_buf);
#pragma unroll
    for (int u = 0; u < kPrefetch; ++u) {
      const int it = tid + u * kThreads;
      if (it < n_xb * KC) rb[u] = col_load(sl, it);
    }
  }

  for (int64_t s = 0; s < n_slices; ++s) {
    T* P = p_buf + static_cast<int>(s & 1) * Cfg::kPElems;
    T* P_next = p_buf + static_cast<int>((s + 1) & 1) * Cfg::kPElems;
    const Slice sl = slice(s);
    __syncthreads();  // sync1: A(s) and its picks are in; MMA(s - 1) is done with P_next and its src stage

    // B(s): the prefetched terms, then any beyond kPrefetch per thread
#pragma unroll
    for (int u = 0; u < kPrefetch; ++u) {
      const int it = tid + u * kThreads;
      if (it < n_xb * KC) col_store(sl, it, rb[u], P);
    }
    for (int it = tid + kPrefetch * kThreads; it < n_xb * KC; it += kThreads) col_store(sl, it, col_load(sl, it), P);
    if (s + STAGES - 1 < n_slices) load_src(s + STAGES - 1);
    cp_async_commit();
    for (size_t e = tid; e < Cfg::kPBytes / 16; e += kThreads) reinterpret_cast<uint4*>(P_next)[e] = zero4;
    cp_async_wait<STAGES - 1>();  // slice s has landed (this thread's copies) ...
    __syncthreads();              // sync2: ... everyone's; P complete; P_next zeroed; picks read

    // Slice s + 1's loads go out before the MMA and are consumed after it.
    const bool more = s + 1 < n_slices;
    const Slice nx = more ? slice(s + 1) : sl;
    if (more) {
#pragma unroll
      for (int u = 0; u < kPrefetch; ++u) {
        const int it = tid + u * kThreads;
        if (it < MT * nx.n_ys) ra[u] = row_load(nx, it);
        if (it < n_xb * KC) rb[u] = col_load(nx, it);
      }
    }
    const T* sb = src_buf + static_cast<int>(s % STAGES) * Cfg::kSrcElems;
    acc.template mma<KC>(P + wm * Cfg::WM * LDP, LDP, sb + wn * Cfg::WN, LDB);
    if (more) {
#pragma unroll
      for (int u = 0; u < kPrefetch; ++u) {
        const int it = tid + u * kThreads;
        if (it < MT * nx.n_ys) row_store(nx, it, ra[u], P_next);
      }
      for (int it = tid + kPrefetch * kThreads; it < MT * nx.n_ys; it += kThreads) {
        row_store(nx, it, row_load(nx, it), P_next);
      }
    }
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

// g / n for pairs whose items both have a real token, else 0 (the reference's `valid`).
__global__ void __launch_bounds__(kThreads)
    _coefficients_kernel(const float* __restrict__ g_i2t, const float* __restrict__ g_t2i,
                         const float* __restrict__ n_img, const float* __restrict__ n_txt, int64_t Bi, int64_t Bt,
                         float* __restrict__ c_i2t, float* __restrict__ c_t2i) {
  const int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= Bi * Bt) return;
  const int64_t a = e / Bt;
  const float na = n_img[a];
  const float nb = n_txt[e - a * Bt];
  const bool valid = na > 0.f && nb > 0.f;
  c_i2t[e] = valid ? g_i2t[e] / na : 0.f;
  c_t2i[e] = valid ? g_t2i[e] / nb : 0.f;
}

}  // namespace

template <typename T>
void launch_backward(const BwdProblem& p, cudaStream_t stream) {
  using Cfg = BwdCfg<T, 64 / int(sizeof(T))>;  // KC: 32 tokens of 16-bit P (64-byte rows), 16 in fp32
  const int64_t n_row_tiles = ceil_div(p.Bx * p.Nx, Cfg::MT);
  const int64_t n_col_tiles = ceil_div(p.D, Cfg::NT);
  TORCH_CHECK(n_row_tiles * n_col_tiles <= std::numeric_limits<int32_t>::max(),
              "token_similarity: ", p.Bx * p.Nx, " tokens x D = ", p.D, " need more than 2^31 - 1 CUDA blocks");
  auto* kernel = &_token_similarity_bwd_kernel<T, Cfg>;
  constexpr int smem = Cfg::kSmemBytes;
  set_max_dynamic_smem(kernel, smem);
  SK_LAUNCH(kernel, static_cast<unsigned>(n_row_tiles * n_col_tiles), kThreads, smem, stream, p, n_col_tiles);
}
SK_INSTANTIATE_FLOAT(template void launch_backward, (const BwdProblem& p, cudaStream_t stream));

void launch_count_real(const uint8_t* mask, int64_t B, int64_t N, float* n_out, cudaStream_t stream) {
  const int64_t blocks = ceil_div(B, kWarps);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "token_similarity: too many items (", B, ")");
  SK_LAUNCH(_count_real_kernel, static_cast<unsigned>(blocks), kThreads, 0, stream, mask, B, N, n_out);
}

void launch_coefficients(const float* g_i2t, const float* g_t2i, const float* n_img, const float* n_txt, int64_t Bi,
                         int64_t Bt, float* c_i2t, float* c_t2i, cudaStream_t stream) {
  const int64_t blocks = ceil_div(Bi * Bt, kThreads);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "token_similarity: too many pairs (", Bi * Bt, ")");
  SK_LAUNCH(_coefficients_kernel, static_cast<unsigned>(blocks), kThreads, 0, stream, g_i2t, g_t2i, n_img, n_txt, Bi,
            Bt, c_i2t, c_t2i);
}


}  // namespace toksim
}  // namespace skillkern
