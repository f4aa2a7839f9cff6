// Forward of FILIP token-wise similarity: i2t, t2i and both arg-max index arrays from ONE pass
// over every (image, text) similarity, never storing more than one block tile of them.
//
// Roles (token_similarity.h): a block owns a tile of BT "R" items (the texts, normally) whose
// tokens it holds whole, as the RT rows of its similarity tile, and a group of "C" items (the
// images) whose tokens it streams as flat chunks of CT columns, item boundaries anywhere in a
// chunk. Per chunk:
//   1. GEMM  S (RT x CT, fp32) = R rows (RT x D) @ C chunk (CT x D)^T, K-loop over D in slices
//      of KC through a 3-stage cp.async pipeline; 8 warps, a WM x WN warp tile each, on tensor
//      cores (wmma m16n16k16, fp16/bf16 in, fp32 accumulate) or, for fp32 inputs, on CUDA cores
//      in exact fp32 FMA (the Triton backend's IEEE precision).
//   2. S goes to shared memory (aliasing the now idle stage buffers) and three phases reduce it:
//      R. per (C token j, R item t): max / arg-max over t's real tokens (complete: the block
//         holds all of them) -> the C-side index, and the value for the C-side mean;
//      C. per (R token r, C item a in the chunk): max / arg-max over a's real tokens in the
//         chunk, merged with the running state carried from the previous chunk when a started
//         there; a that runs on into the next chunk leaves its state as the next carry;
//      sums: per (C item, R item) pair finished in this chunk, both means, written out.
//   Padding never wins a max (only real tokens are candidates); a pair where either item has no
//   real token scores 0 and stores index 0, as the reference and the Triton kernels do. Ties go
//   to the lowest token index (argmax_update), so the indices equal the Triton backend's except
//   where the two backends' similarities differ in rounding.
//
// Tiling, and why. Rows hold whole R items (the max over an item's tokens must end in one tile)
// and columns are flat C tokens, so there is no per-item padding: Ni = 50 wastes nothing, where
// a power-of-two image chunk (the Triton kernel's NI_CHUNK = 64) wastes 22 % of the MMA work.
// Configurations (RT x CT, warp tile WM x WN): 128 x 128 (32 x 64), 256 x 64 (32 x 64) and
// 512 x 32 (64 x 32), all 64 fp32 accumulators per thread; the host picks the one whose rows
// are fullest for Nr (Nt = 32: 4 texts fill 128 rows exactly). 128 x 128 reads (RT + CT) * D
// operand elements per RT * CT similarities: 64 FLOP per byte of L2 traffic in bf16.
//
// Shared memory (bf16/fp16, 128 x 128, KC = 32): stages 3 x (128 + 128) x 40 x 2 B = 60 KB,
// aliased with S 128 x 132 x 4 B = 66 KB; + 12 KB reduction state = 78 KB per block. Registers:
// one block per SM (__launch_bounds__(256, 1): ~200-255 per thread; capped at 128 for two blocks,
// every instantiation spilled 140-790 B). The fp32 S tile is needed: reducing bf16-rounded
// similarities would create ties.
//
// Floor at the goal shape (Bi = Bt = 1024, Ni = 50, Nt = 32, D = 256, bf16): 8.6e11 FLOP,
// 1.09 ms at 790 TFLOP/s (benchmarks/NOTES.md); the reduction phases add ~8 CUDA-core ops per
// similarity (~0.56 ms of ALU time, not overlapped with the MMA at one block per SM).
//
// Deterministic: no atomics; every sum has a fixed order (column order within a chunk, chunk
// order across chunks, fixed butterflies across lanes). Offsets that multiply strides are int64.
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>

#include "token_similarity/tile.cuh"
#include "token_similarity/token_similarity.h"

namespace skillkern {
namespace toksim {
namespace {

// At most this many R items per tile: bounds the per-(R item, column) row-max buffer. Items of
// fewer than 8 tokens leave rows of the 128-row tile empty (rare: texts are 32-77 tokens).
constexpr int kMaxTileItems = 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename T, int RT_, int CT_, int WARPS_M_, int KC_>
struct FwdCfg {
  static constexpr int RT = RT_;  // rows: tokens of the tile's R items, held whole
  static constexpr int CT = CT_;  // columns: C tokens per chunk
  static constexpr int WARPS_M = WARPS_M_;
  static constexpr int WARPS_N = kWarps / WARPS_M;
  static constexpr int WM = RT / WARPS_M;
  static constexpr int WN = CT / WARPS_N;
  static constexpr int KC = KC_;  // D slice per pipeline stage
  static constexpr int STAGES = 3;
  static constexpr int LDK = operand_pitch<T>(KC);
  // S pitch: a multiple of 4 floats (wmma store), = 4 (mod 32) so the rotated column scan of
  // phase C (32 rows, one column each) hits 32 distinct banks.
  static constexpr int LDS = CT + 4;
  static_assert(RT % (16 * WARPS_M) == 0 && CT % (16 * WARPS_N) == 0, "warp tiles of 16 x 16");
  static_assert(CT % 32 == 0, "phase R: a warp's 32 items share one R item");
  static_assert(KC % (sizeof(T) == 4 ? 4 : 16) == 0, "KC: whole wmma k-steps / 16-byte fp32 pieces");

  static constexpr size_t kStageElems = size_t(RT + CT) * LDK;
  static constexpr size_t kStageBytes = STAGES * kStageElems * sizeof(T);
  static constexpr size_t kSBytes = size_t(RT) * LDS * sizeof(float);
  static constexpr size_t kUnion = ((kStageBytes > kSBytes ? kStageBytes : kSBytes) + 127) / 128 * 128;
  // Reduction state after the union (4-byte arrays first, then byte arrays).
  static constexpr size_t kRowBest = kUnion;                                    // float [kMaxTileItems][CT]
  static constexpr size_t kCarryV = kRowBest + sizeof(float) * kMaxTileItems * CT;  // float [2][RT]
  static constexpr size_t kCarryQ = kCarryV + sizeof(float) * 2 * RT;           // int [2][RT]
  static constexpr size_t kSumCarry = kCarryQ + sizeof(int) * 2 * RT;           // float [2][kMaxTileItems]
  static constexpr size_t kCntCarry = kSumCarry + sizeof(float) * 2 * kMaxTileItems;  // int [2]
  static constexpr size_t kNRealR = kCntCarry + sizeof(int) * 2;                // int [kMaxTileItems]
  static constexpr size_t kColItem = kNRealR + sizeof(int) * kMaxTileItems;     // int [CT]
  static constexpr size_t kColTok = kColItem + sizeof(int) * CT;                // int [CT]
  static constexpr size_t kColReal = kColTok + sizeof(int) * CT;                // uint8 [CT]
  static constexpr size_t kRowReal = kColReal + CT;                             // uint8 [RT]
  static constexpr size_t kSmemBytes = kRowReal + RT;
};

template <typename T, class Cfg>
__global__ void __launch_bounds__(kThreads, 1)
    _token_similarity_fwd_kernel(const FwdProblem p, int tile_items, int64_t group_items, int64_t n_groups) {
  constexpr int RT = Cfg::RT, CT = Cfg::CT, KC = Cfg::KC, STAGES = Cfg::STAGES;
  constexpr int LDK = Cfg::LDK, LDS = Cfg::LDS;
  unsigned char* const smem = dynamic_smem();
  T* stage_base = reinterpret_cast<T*>(smem);
  float* S = reinterpret_cast<float*>(smem);  // aliases the stages once the K-loop is done
  float* row_best = reinterpret_cast<float*>(smem + Cfg::kRowBest);
  float* carry_v = reinterpret_cast<float*>(smem + Cfg::kCarryV);
  int* carry_q = reinterpret_cast<int*>(smem + Cfg::kCarryQ);
  float* sum_carry = reinterpret_cast<float*>(smem + Cfg::kSumCarry);
  int* cnt_carry = reinterpret_cast<int*>(smem + Cfg::kCntCarry);
  int* n_real_r = reinterpret_cast<int*>(smem + Cfg::kNRealR);
  int* col_item = reinterpret_cast<int*>(smem + Cfg::kColItem);
  int* col_tok = reinterpret_cast<int*>(smem + Cfg::kColTok);
  uint8_t* col_real = smem + Cfg::kColReal;
  uint8_t* row_real = smem + Cfg::kRowReal;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const T* r_feat = static_cast<const T*>(p.r_feat);
  const T* c_feat = static_cast<const T*>(p.c_feat);
  const int64_t D = p.D;
  const int Nr = static_cast<int>(p.Nr);  // <= kMaxRowTokens
  const int64_t Nc = p.Nc;

  // This block: R items [b0, b0 + bt_valid), C items of group `group` (blocks of one R tile are
  // consecutive, so the ~2 waves in flight share a few R tiles in L2).
  const int64_t tile = blockIdx.x / n_groups;
  const int64_t group = blockIdx.x % n_groups;
  const int64_t b0 = tile * tile_items;
  const int bt_valid = static_cast<int>(std::min<int64_t>(tile_items, p.Br - b0));
  const int rows_used = bt_valid * Nr;  // <= RT
  const int64_t c_begin = group * group_items * Nc;
  const int64_t c_end = std::min(group * group_items + group_items, p.Bc) * Nc;

  // Row flags and real-token counts of the R items, once per block.
  const uint8_t* r_mask = p.r_mask ? p.r_mask + b0 * Nr : nullptr;  // the tile's first row
  for (int r = tid; r < RT; r += kThreads) {
    row_real[r] = r < rows_used && (r_mask == nullptr || r_mask[r] != 0);
  }
  __syncthreads();
  for (int t = warp; t < kMaxTileItems; t += kWarps) {
    int n = 0;
    if (t < bt_valid) {
      for (int q = lane; q < Nr; q += 32) n += row_real[t * Nr + q];
    }
    n = warp_sum(n);
    if (lane == 0) n_real_r[t] = n;
  }

  using Tile = typename WarpTileFor<T, Cfg::WM, Cfg::WN, /*B_NK=*/true>::type;
  Tile acc;
  const int wm = warp / Cfg::WARPS_N;
  const int wn = warp % Cfg::WARPS_N;
  const int n_ks = static_cast<int>(std::max<int64_t>(1, ceil_div(D, KC)));  // D = 0: one all-zero slice

  int chunk = 0;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += CT, ++chunk) {
    const int c_eff = static_cast<int>(std::min<int64_t>(CT, c_end - c0));

    // Column metadata of this chunk (read after the K-loop's barriers).
    token_metadata<CT>(c0, c_eff, Nc, p.c_mask, col_item, col_tok, col_real);

    // ---- 1. S = R rows @ C chunk^T
    auto load_stage = [&](int buf, int ks) {
      T* rs = stage_base + buf * Cfg::kStageElems;
      T* cs = rs + RT * LDK;
      load_tile<T, RT, KC, LDK>(rs, r_feat, b0 * Nr, rows_used, r_mask, D, ks * KC, p.vec);
      load_tile<T, CT, KC, LDK>(cs, c_feat, c0, c_eff, p.c_mask ? p.c_mask + c0 : nullptr, D, ks * KC, p.vec);
    };
    acc.zero();
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < n_ks) load_stage(s, s);
      cp_async_commit();
    }
    for (int ks = 0; ks < n_ks; ++ks) {
      cp_async_wait<STAGES - 2>();  // slice ks has landed (this thread's copies) ...
      __syncthreads();              // ... everyone's; and slice ks - 1's buffer is free again
      const int next = ks + STAGES - 1;
      if (next < n_ks) load_stage(next % STAGES, next);
      cp_async_commit();
      const T* rs = stage_base + (ks % STAGES) * Cfg::kStageElems;
      const T* cs = rs + RT * LDK;
      acc.template mma<KC>(rs + wm * Cfg::WM * LDK, LDK, cs + wn * Cfg::WN * LDK, LDK);
    }
    __syncthreads();  // every warp is done with the stages before S overwrites them
    acc.store(S + wm * Cfg::WM * LDS + wn * Cfg::WN, LDS);
    __syncthreads();

    // The chunk's C items: a_lo .. a_lo + na - 1. The first may have started in the previous
    // chunk (its state comes from the carry), the last may go on into the next one.
    const int64_t a_lo = c0 / Nc;
    const int na = static_cast<int>((c0 + c_eff - 1) / Nc - a_lo + 1);
    const bool first_started_before = c0 != a_lo * Nc;
    const bool last_goes_on = c0 + c_eff < (a_lo + na) * Nc;
    const int cin = (chunk + 1) & 1;  // carry written by the previous chunk
    const int cout = chunk & 1;       // carry for the next chunk
    auto col_begin = [&](int al) { return static_cast<int>(std::max<int64_t>((a_lo + al) * Nc, c0) - c0); };
    auto col_end = [&](int al) {
      return static_cast<int>(std::min<int64_t>((a_lo + al + 1) * Nc, c0 + c_eff) - c0);
    };

    // ---- R. per (R item t, column j): best real R token for C token j
    for (int it = tid; it < kMaxTileItems * CT; it += kThreads) {
      const int t = it / CT;
      const int j = it % CT;  // a warp shares t (CT % 32 == 0): same trip count, banks j..j+31
      if (t >= bt_valid || j >= c_eff) continue;
      float best = kNegInf;
      int best_q = kNone;
      const float* col = S + t * Nr * LDS + j;
      for (int q = 0; q < Nr; ++q) {
        if (row_real[t * Nr + q]) argmax_update(col[q * LDS], q, best, best_q);
      }
      const bool found = best_q != kNone;
      store_index(p.c_idx, p.c_idx_bytes, col_item[j] * p.c_idx_sc + (b0 + t) * p.c_idx_sr + col_tok[j],
                  found ? best_q : 0);
      row_best[t * CT + j] = (found && col_real[j]) ? best : 0.f;
    }
    __syncthreads();  // phase C writes into S

    // ---- C. per (row r, C item al): best real token of al in this chunk, merged with the carry
    for (int it = tid; it < na * RT; it += kThreads) {
      const int al = it / RT;
      const int r = it % RT;  // a warp shares al: same columns, same trip count
      if (r >= rows_used) continue;
      const int jb = col_begin(al);
      const int je = col_end(al);
      const int len = je - jb;
      float best = kNegInf;
      int best_q = kNone;
      // Lanes r..r+31 read one column each step; starting lane r at offset (r / 8) % 4 puts
      // the 32 reads on 32 banks (LDS = 4 mod 32). The tie rule makes the order irrelevant.
      int j = jb + ((r >> 3) & 3) % len;
      const float* row = S + r * LDS;
      const int q_of_j = col_tok[jb] - jb;  // an item's tokens sit in consecutive columns
      for (int s = 0; s < len; ++s) {
        if (col_real[j]) argmax_update(row[j], q_of_j + j, best, best_q);
        if (++j == je) j = jb;
      }
      if (al == 0 && first_started_before) argmax_update(carry_v[cin * RT + r], carry_q[cin * RT + r], best, best_q);
      if (al == na - 1 && last_goes_on) {
        carry_v[cout * RT + r] = best;
        carry_q[cout * RT + r] = best_q;
      } else {
        const bool found = best_q != kNone;
        const int t = r / Nr;
        const int q = r - t * Nr;
        store_index(p.r_idx, p.r_idx_bytes, (a_lo + al) * p.r_idx_sc + (b0 + t) * p.r_idx_sr + q,
                    found ? best_q : 0);
        // Only this item reads S[r][jb .. je) in this phase: reuse S[r][jb] for the result.
        S[r * LDS + jb] = (found && row_real[r]) ? best : 0.f;
      }
    }
    __syncthreads();

    // ---- sums: one warp per (C item al, R item t)
    for (int it = warp; it < na * kMaxTileItems; it += kWarps) {
      const int al = it / kMaxTileItems;
      const int t = it % kMaxTileItems;
      if (t >= bt_valid) continue;  // warp-uniform
      const int jb = col_begin(al);
      const int je = col_end(al);
      float s_c = 0.f;  // sum over the chunk's real C tokens of al of their best R match
      int n_c = 0;      // real C tokens of al in this chunk
      for (int j = jb + lane; j < je; j += 32) {
        s_c += row_best[t * CT + j];
        n_c += col_real[j];
      }
      s_c = warp_sum(s_c);
      n_c = warp_sum(n_c);
      if (al == 0 && first_started_before) {
        s_c = sum_carry[cin * kMaxTileItems + t] + s_c;
        n_c += cnt_carry[cin];
      }
      if (al == na - 1 && last_goes_on) {
        if (lane == 0) {
          sum_carry[cout * kMaxTileItems + t] = s_c;
          if (t == 0) cnt_carry[cout] = n_c;
        }
        continue;
      }
      float s_r = 0.f;  // sum over t's real R tokens of their best match in item al
      for (int q = lane; q < Nr; q += 32) s_r += S[(t * Nr + q) * LDS + jb];
      s_r = warp_sum(s_r);
      if (lane == 0) {
        const int64_t a = a_lo + al;
        const int64_t b = b0 + t;
        p.c_score[a * p.c_score_sc + b * p.c_score_sr] = s_c / static_cast<float>(std::max(n_c, 1));
        p.r_score[a * p.r_score_sc + b * p.r_score_sr] = s_r / static_cast<float>(std::max(n_real_r[t], 1));
      }
    }
    __syncthreads();  // S, row_best and the column metadata are rewritten by the next chunk
  }
}

// C items per block: about 8 chunks' worth of tokens, choosing the count whose last chunk is
// fullest (Ni = 50, CT = 128: 20 images = 1000 tokens in 8 chunks, 98 % full).
int64_t pick_group_items(int64_t Nc, int64_t CT, int64_t Bc) {
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>(8 * CT / Nc, Bc));
  int64_t best = most;
  double best_fill = 0.0;
  for (int64_t g = most; g >= std::max<int64_t>(1, most / 2); --g) {
    const int64_t tokens = g * Nc;
    const double fill = double(tokens) / double(ceil_div(tokens, CT) * CT);
    if (fill > best_fill + 1e-9) {
      best_fill = fill;
      best = g;
    }
  }
  return best;
}

// Rows of the three configurations and the share of them the R items fill.
struct RowChoice {
  int rows;
  int tile_items;
};

RowChoice pick_rows(int64_t Nr, int64_t Br) {
  RowChoice best{0, 0};
  double best_fill = -1.0;
  for (int rows : {128, 256, 512}) {
    if (Nr > rows) continue;
    const int items = static_cast<int>(std::min<int64_t>(kMaxTileItems, rows / Nr));
    const double fill = double(std::min<int64_t>(items, Br) * Nr) / rows;
    if (fill > best_fill + 1e-9) {  // ties keep the smaller tile
      best_fill = fill;
      best = {rows, items};
    }
  }
  return best;
}

template <typename T, class Cfg>
void launch_cfg(const FwdProblem& p, int tile_items, cudaStream_t stream) {
  const int64_t n_tiles = ceil_div(p.Br, tile_items);
  const int64_t group_items = pick_group_items(p.Nc, Cfg::CT, p.Bc);
  const int64_t n_groups = ceil_div(p.Bc, group_items);
  TORCH_CHECK(n_tiles * n_groups <= std::numeric_limits<int32_t>::max(),
              "token_similarity: ", p.Br, " x ", p.Bc, " items need more than 2^31 - 1 CUDA blocks");
  auto* kernel = &_token_similarity_fwd_kernel<T, Cfg>;
  constexpr int smem = Cfg::kSmemBytes;
  set_max_dynamic_smem(kernel, smem);
  SK_LAUNCH(kernel, static_cast<unsigned>(n_tiles * n_groups), kThreads, smem, stream, p, tile_items, group_items,
            n_groups);
}

}  // namespace

template <typename T>
void launch_forward(const FwdProblem& p, cudaStream_t stream) {
  // KC: 64 bytes of operand row per stage (32 fp16 / bf16, 16 fp32), half that for the 512-row
  // tile, to fit 3 stages in ~77 KB.
  constexpr int kc_large = 64 / int(sizeof(T));
  constexpr int kc_small = kc_large / 2;
  const RowChoice rc = pick_rows(p.Nr, p.Br);
  switch (rc.rows) {
    case 128: launch_cfg<T, FwdCfg<T, 128, 128, 4, kc_large>>(p, rc.tile_items, stream); break;
    case 256: launch_cfg<T, FwdCfg<T, 256, 64, 8, kc_large>>(p, rc.tile_items, stream); break;
    case 512: launch_cfg<T, FwdCfg<T, 512, 32, 8, kc_small>>(p, rc.tile_items, stream); break;
    default: TORCH_CHECK(false, "token_similarity: ", p.Nr, " tokens per item in one tile (max ", kMaxRowTokens, ")");
  }
}
SK_INSTANTIATE_FLOAT(template void launch_forward, (const FwdProblem& p, cudaStream_t stream));

}  // namespace toksim
}  // namespace skillkern
