// The device-independent half of the native token-similarity ops: outputs allocated like the
// inputs, the problem laid out for the kernels (fwd.cu / bwd.cu) and launched on `stream`.
// host.cpp calls these after its argument and device checks; the CPU emulation (csrc/emu/)
// calls them on CPU tensors with the kernels compiled as host code. Arguments are checked.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <tuple>

#include "common.h"
#include "token_similarity/token_similarity.h"

namespace skillkern {
namespace toksim {

// Smallest integer dtype that holds token indices 0..n-1 (op.py index_dtype).
inline at::ScalarType index_dtype(int64_t n) { return n <= 256 ? at::kByte : n <= 32768 ? at::kShort : at::kInt; }

inline int index_bytes(const at::Tensor& idx) { return static_cast<int>(idx.element_size()); }

struct Sizes {
  int64_t Bi, Ni, Bt, Nt, D;
};

// Concrete sizes for the kernels, which index items (not tokens) with int32.
inline Sizes sizes_of(const at::Tensor& img, const at::Tensor& txt) {
  const Sizes s{img.size(0), img.size(1), txt.size(0), txt.size(1), img.size(2)};
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  SK_CHECK_ARG(s.Bi <= kMax, "token_similarity", "img", "has ", s.Bi, " items; at most 2^31 - 1");
  SK_CHECK_ARG(s.Bt <= kMax, "token_similarity", "txt", "has ", s.Bt, " items; at most 2^31 - 1");
  return s;
}

inline const uint8_t* mask_ptr(const std::optional<at::Tensor>& contiguous_mask) {
  // bool is one byte (0 / 1): the kernels read it as uint8
  return contiguous_mask ? static_cast<const uint8_t*>(contiguous_mask->const_data_ptr()) : nullptr;
}

inline std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

// cp.async moves 16-byte pieces: rows must be whole pieces and the bases 16-byte aligned.
inline bool vec_ok(int64_t D, int64_t elt, std::initializer_list<const void*> bases) {
  bool ok = (D * elt) % 16 == 0;
  for (const void* b : bases) ok = ok && reinterpret_cast<uintptr_t>(b) % 16 == 0;
  return ok;
}

// (i2t, t2i, row_idx, col_idx) of skillkern::token_similarity_fwd.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> run_forward(
    const at::Tensor& img_in, const at::Tensor& txt_in, const std::optional<at::Tensor>& img_mask_in,
    const std::optional<at::Tensor>& txt_mask_in, cudaStream_t stream) {
  const at::Tensor img = img_in.contiguous();
  const at::Tensor txt = txt_in.contiguous();
  const std::optional<at::Tensor> img_mask = contiguous(img_mask_in);
  const std::optional<at::Tensor> txt_mask = contiguous(txt_mask_in);
  const Sizes s = sizes_of(img, txt);

  const auto f32 = img.options().dtype(at::kFloat);
  at::Tensor i2t = at::empty({s.Bi, s.Bt}, f32);
  at::Tensor t2i = at::empty({s.Bi, s.Bt}, f32);
  at::Tensor row_idx = at::empty({s.Bi, s.Bt, s.Ni}, img.options().dtype(index_dtype(s.Nt)));
  at::Tensor col_idx = at::empty({s.Bi, s.Bt, s.Nt}, img.options().dtype(index_dtype(s.Ni)));
  if (s.Bi == 0 || s.Bt == 0) return {i2t, t2i, row_idx, col_idx};
  if (s.Ni == 0 || s.Nt == 0) {  // no similarity at all: every pair scores 0, indices 0
    i2t.zero_();
    t2i.zero_();
    row_idx.zero_();
    col_idx.zero_();
    return {i2t, t2i, row_idx, col_idx};
  }

  // Rows of a block tile hold whole text items unless texts are longer than a tile; then the
  // images take that role (check_token_counts guarantees Ni <= kMaxRowTokens there).
  const bool swap = s.Nt > kMaxRowTokens;
  FwdProblem p{};
  p.D = s.D;
  p.vec = vec_ok(s.D, img.element_size(), {img.const_data_ptr(), txt.const_data_ptr()});
  const int64_t pair_img = s.Bt;  // i2t / t2i: pair (a, b) at a * Bt + b
  const int64_t pair_txt = 1;
  if (!swap) {  // R = txt (b, l), C = img (a, k)
    p.r_feat = txt.const_data_ptr();
    p.c_feat = img.const_data_ptr();
    p.r_mask = mask_ptr(txt_mask);
    p.c_mask = mask_ptr(img_mask);
    p.Br = s.Bt, p.Nr = s.Nt, p.Bc = s.Bi, p.Nc = s.Ni;
    // per image token: best text token -> row_idx[a, b, k]; mean -> i2t
    p.c_idx = row_idx.mutable_data_ptr(), p.c_idx_sc = s.Bt * s.Ni, p.c_idx_sr = s.Ni;
    p.c_score = i2t.mutable_data_ptr<float>(), p.c_score_sc = pair_img, p.c_score_sr = pair_txt;
    // per text token: best image token -> col_idx[a, b, l]; mean -> t2i
    p.r_idx = col_idx.mutable_data_ptr(), p.r_idx_sc = s.Bt * s.Nt, p.r_idx_sr = s.Nt;
    p.r_score = t2i.mutable_data_ptr<float>(), p.r_score_sc = pair_img, p.r_score_sr = pair_txt;
    p.c_idx_bytes = index_bytes(row_idx);
    p.r_idx_bytes = index_bytes(col_idx);
  } else {  // R = img (a, k), C = txt (b, l)
    p.r_feat = img.const_data_ptr();
    p.c_feat = txt.const_data_ptr();
    p.r_mask = mask_ptr(img_mask);
    p.c_mask = mask_ptr(txt_mask);
    p.Br = s.Bi, p.Nr = s.Ni, p.Bc = s.Bt, p.Nc = s.Nt;
    // per text token: best image token -> col_idx[a, b, l]; mean -> t2i (C item b, R item a)
    p.c_idx = col_idx.mutable_data_ptr(), p.c_idx_sc = s.Nt, p.c_idx_sr = s.Bt * s.Nt;
    p.c_score = t2i.mutable_data_ptr<float>(), p.c_score_sc = pair_txt, p.c_score_sr = pair_img;
    p.r_idx = row_idx.mutable_data_ptr(), p.r_idx_sc = s.Ni, p.r_idx_sr = s.Bt * s.Ni;
    p.r_score = i2t.mutable_data_ptr<float>(), p.r_score_sc = pair_txt, p.r_score_sr = pair_img;
    p.c_idx_bytes = index_bytes(col_idx);
    p.r_idx_bytes = index_bytes(row_idx);
  }
  SK_DISPATCH_FLOAT(img.scalar_type(), "token_similarity", [&] { launch_forward<scalar_t>(p, stream); });
  return {i2t, t2i, row_idx, col_idx};
}

// Real tokens per item, float (B,).
inline at::Tensor real_counts(const std::optional<at::Tensor>& mask, int64_t B, int64_t N, const at::Tensor& like,
                              cudaStream_t stream) {
  const auto f32 = like.options().dtype(at::kFloat);
  if (!mask) return at::full({B}, static_cast<double>(N), f32);
  at::Tensor n = at::empty({B}, f32);
  if (B > 0) launch_count_real(mask_ptr(mask), B, N, n.mutable_data_ptr<float>(), stream);
  return n;
}

// (d_img, d_txt) of skillkern::token_similarity_bwd.
inline std::tuple<at::Tensor, at::Tensor> run_backward(const at::Tensor& g_i2t_in, const at::Tensor& g_t2i_in,
                                                       const at::Tensor& img_in, const at::Tensor& txt_in,
                                                       const std::optional<at::Tensor>& img_mask_in,
                                                       const std::optional<at::Tensor>& txt_mask_in,
                                                       const at::Tensor& row_idx_in, const at::Tensor& col_idx_in,
                                                       cudaStream_t stream) {
  const at::Tensor img = img_in.contiguous();
  const at::Tensor txt = txt_in.contiguous();
  const std::optional<at::Tensor> img_mask = contiguous(img_mask_in);
  const std::optional<at::Tensor> txt_mask = contiguous(txt_mask_in);
  const at::Tensor g_i2t = g_i2t_in.to(at::kFloat).contiguous();
  const at::Tensor g_t2i = g_t2i_in.to(at::kFloat).contiguous();
  const at::Tensor row_idx = row_idx_in.contiguous();
  const at::Tensor col_idx = col_idx_in.contiguous();
  const Sizes s = sizes_of(img, txt);

  at::Tensor d_img = at::empty({s.Bi, s.Ni, s.D}, img.options());
  at::Tensor d_txt = at::empty({s.Bt, s.Nt, s.D}, txt.options());
  if (d_img.numel() == 0 && d_txt.numel() == 0) return {d_img, d_txt};
  const at::Tensor n_img = real_counts(img_mask, s.Bi, s.Ni, img, stream);
  const at::Tensor n_txt = real_counts(txt_mask, s.Bt, s.Nt, img, stream);
  // upstream gradients over the real-token counts, 0 for pairs without real tokens
  at::Tensor c_i2t = at::empty({s.Bi, s.Bt}, g_i2t.options());
  at::Tensor c_t2i = at::empty({s.Bi, s.Bt}, g_i2t.options());
  if (c_i2t.numel() > 0) {
    launch_coefficients(g_i2t.const_data_ptr<float>(), g_t2i.const_data_ptr<float>(), n_img.const_data_ptr<float>(),
                        n_txt.const_data_ptr<float>(), s.Bi, s.Bt, c_i2t.mutable_data_ptr<float>(),
                        c_t2i.mutable_data_ptr<float>(), stream);
  }

  BwdProblem p{};
  p.D = s.D;
  p.vec = vec_ok(s.D, img.element_size(), {img.const_data_ptr(), txt.const_data_ptr()});
  const int row_bytes = index_bytes(row_idx);
  const int col_bytes = index_bytes(col_idx);
  auto launch = [&] {
    SK_DISPATCH_FLOAT(img.scalar_type(), "token_similarity", [&] { launch_backward<scalar_t>(p, stream); });
  };
  if (d_img.numel() > 0) {  // X = img (a, k), Y = txt (b, l)
    p.src = txt.const_data_ptr();
    p.out = d_img.mutable_data_ptr();
    p.x_mask = mask_ptr(img_mask), p.y_mask = mask_ptr(txt_mask);
    p.cA = c_i2t.const_data_ptr<float>(), p.cA_sx = s.Bt, p.cA_sy = 1;
    p.cB = c_t2i.const_data_ptr<float>(), p.cB_sx = s.Bt, p.cB_sy = 1;
    p.idxA = row_idx.const_data_ptr(), p.idxA_bytes = row_bytes, p.idxA_sx = s.Bt * s.Ni, p.idxA_sy = s.Ni;
    p.idxB = col_idx.const_data_ptr(), p.idxB_bytes = col_bytes, p.idxB_sx = s.Bt * s.Nt, p.idxB_sy = s.Nt;
    p.Bx = s.Bi, p.Nx = s.Ni, p.By = s.Bt, p.Ny = s.Nt;
    launch();
  }
  if (d_txt.numel() > 0) {  // X = txt (b, l), Y = img (a, k)
    p.src = img.const_data_ptr();
    p.out = d_txt.mutable_data_ptr();
    p.x_mask = mask_ptr(txt_mask), p.y_mask = mask_ptr(img_mask);
    p.cA = c_t2i.const_data_ptr<float>(), p.cA_sx = 1, p.cA_sy = s.Bt;
    p.cB = c_i2t.const_data_ptr<float>(), p.cB_sx = 1, p.cB_sy = s.Bt;
    p.idxA = col_idx.const_data_ptr(), p.idxA_bytes = col_bytes, p.idxA_sx = s.Nt, p.idxA_sy = s.Bt * s.Nt;
    p.idxB = row_idx.const_data_ptr(), p.idxB_bytes = row_bytes, p.idxB_sx = s.Ni, p.idxB_sy = s.Bt * s.Ni;
    p.Bx = s.Bt, p.Nx = s.Nt, p.By = s.Bi, p.Ny = s.Ni;
    launch();
  }
  return {d_img, d_txt};
}

}  // namespace toksim
}  // namespace skillkern
