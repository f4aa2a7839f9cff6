// FILIP token-wise similarity, native backend: what the host code (host.cpp: checks, Meta and
// CUDA entry points) and the kernels (fwd.cu, bwd.cu) share. Math: skillkern/ops/
// token_similarity/reference.py; the Triton design it mirrors: kernels.py in the same folder.
//
// The kernels are written for two roles instead of "image" and "text":
//   forward:  R = the items whose tokens a block holds whole (rows of its similarity tile),
//             C = the items whose tokens it streams in flat chunks (columns, any count per item).
//             Normally R = txt, C = img; a caller with more than kMaxRowTokens text tokens per
//             item gets R = img, C = txt (the outputs are written through strides either way).
//   backward: X = the side whose gradient is computed (rows), Y = the partner side (the GEMM's
//             reduction dimension, in flat chunks). One kernel, launched for X = img and X = txt.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace skillkern {
namespace toksim {

// A forward block holds all tokens of its R items in one tile of at most this many rows.
// Larger rows would need a running maximum across row tiles (state per (C token, R item)); with
// one side <= 512 tokens the roles are swapped instead, so only both sides > 512 is refused.
constexpr int64_t kMaxRowTokens = 512;

struct FwdProblem {
  const void* r_feat;     // (Br, Nr, D) contiguous
  const void* c_feat;     // (Bc, Nc, D) contiguous
  const uint8_t* r_mask;  // (Br, Nr) bool as bytes, or null (all real)
  const uint8_t* c_mask;  // (Bc, Nc) or null
  int64_t Br, Nr, Bc, Nc, D;
  bool vec;  // both feature bases 16-byte aligned and D * sizeof(T) % 16 == 0: cp.async path
  // Outputs. Item pair (c, r) lives at c * s_c + r * s_r (+ token index for the index arrays).
  void* c_idx;  // per C token: index of its best R token (int of c_idx_bytes bytes)
  int c_idx_bytes;
  int64_t c_idx_sc, c_idx_sr;
  float* c_score;  // mean over real C tokens of their best match
  int64_t c_score_sc, c_score_sr;
  void* r_idx;  // per R token: index of its best C token
  int r_idx_bytes;
  int64_t r_idx_sc, r_idx_sr;
  float* r_score;  // mean over real R tokens of their best match
  int64_t r_score_sc, r_score_sr;
};

// out[x, i, :] = sum over y, j of P[(x, i), (y, j)] * src[y, j, :] with
//   P = cA[x, y] * [x_mask[x, i]] * [idxA[x, y, i] == j]  +  cB[x, y] * [y_mask[y, j]] * [idxB[x, y, j] == i]
// where cA, cB are the upstream gradients over the real-token counts, zero for a pair where an
// item has no real token (launch_coefficients). For X = img: cA = c_i2t, idxA = row_idx, cB =
// c_t2i, idxB = col_idx; for X = txt the same arrays with the roles (and strides) exchanged.
// As in the Triton kernels, a row term needs its X token real and a column term its Y token.
struct BwdProblem {
  const void* src;  // (By, Ny, D) contiguous
  void* out;        // (Bx, Nx, D) contiguous, every element written
  const uint8_t* x_mask;
  const uint8_t* y_mask;
  const float* cA;  // pair (x, y) at x * cA_sx + y * cA_sy
  int64_t cA_sx, cA_sy;
  const float* cB;
  int64_t cB_sx, cB_sy;
  const void* idxA;  // + token i
  int idxA_bytes;
  int64_t idxA_sx, idxA_sy;
  const void* idxB;  // + token j
  int idxB_bytes;
  int64_t idxB_sx, idxB_sy;
  int64_t Bx, Nx, By, Ny, D;
  bool vec;  // src 16-byte aligned, D * sizeof(T) % 16 == 0
};

// T: the features' storage type (float, __half, __nv_bfloat16), from SK_DISPATCH_FLOAT.
template <typename T>
void launch_forward(const FwdProblem& p, cudaStream_t stream);
// n_out[b] = real tokens of item b (mask non-null), float.
void launch_count_real(const uint8_t* mask, int64_t B, int64_t N, float* n_out, cudaStream_t stream);
// c_i2t = g_i2t / n_img[a], c_t2i = g_t2i / n_txt[b] for pairs where both items have a real
// token, else 0; all (Bi, Bt) fp32 contiguous.
void launch_coefficients(const float* g_i2t, const float* g_t2i, const float* n_img, const float* n_txt, int64_t Bi,
                         int64_t Bt, float* c_i2t, float* c_t2i, cudaStream_t stream);
template <typename T>
void launch_backward(const BwdProblem& p, cudaStream_t stream);

}  // namespace toksim
}  // namespace skillkern
