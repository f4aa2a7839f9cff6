// token_similarity_fwd_cuda / token_similarity_bwd_cuda: argument checks (shared by the CUDA and
// the Meta kernels, messages "token_similarity: `<arg>` ..."), the Meta (shape) kernels that
// FakeTensor / torch.compile / opcheck use, and the CUDA entry points, which lay the problem out
// for the kernels in fwd.cu / bwd.cu. Contract: the Triton ops skillkern::token_similarity_fwd /
// _bwd (skillkern/ops/token_similarity/op.py): same arguments, outputs, dtypes and shapes.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>

#include "common.h"
#include "token_similarity/token_similarity.h"

namespace skillkern {
namespace {

using at::Tensor;
using toksim::kMaxRowTokens;

// Smallest integer dtype that holds token indices 0..n-1 (op.py index_dtype).
at::ScalarType index_dtype(int64_t n) {
  return n <= 256 ? at::kByte : n <= 32768 ? at::kShort : at::kInt;
}

int index_bytes(at::ScalarType t) {
  return static_cast<int>(c10::elementSize(t));
}

bool is_index_dtype(at::ScalarType t) {
  return t == at::kByte || t == at::kShort || t == at::kInt || t == at::kLong;
}

// Checks shared by every device. Sizes are compared as SymInts (guards under dynamic shapes).
void check_features(const Tensor& img, const Tensor& txt) {
  SK_CHECK_ARG(img.dim() == 3, "token_similarity", "img", "must have shape (B, N, D), got ", img.sym_sizes());
  SK_CHECK_ARG(txt.dim() == 3, "token_similarity", "txt", "must have shape (B, N, D), got ", txt.sym_sizes());
  SK_CHECK_ARG(is_float_dtype(img.scalar_type()), "token_similarity", "img",
               "must be float32, float16 or bfloat16, got ", img.scalar_type());
  SK_CHECK_ARG(txt.scalar_type() == img.scalar_type(), "token_similarity", "txt", "has dtype ", txt.scalar_type(),
               " but img has ", img.scalar_type());
  SK_CHECK_ARG(txt.device() == img.device(), "token_similarity", "txt", "is on ", txt.device(), " but img is on ",
               img.device());
  SK_CHECK_ARG(txt.sym_size(2) == img.sym_size(2), "token_similarity", "txt", "has feature size D=",
               txt.sym_size(2), " but img has D=", img.sym_size(2));
}

void check_mask(const std::optional<Tensor>& mask, const Tensor& x, const char* name) {
  if (!mask.has_value()) return;
  const Tensor& m = *mask;
  TORCH_CHECK(m.scalar_type() == at::kBool, "token_similarity: `", name,
              "` must be a bool Tensor (True = real token), got ", m.scalar_type());
  TORCH_CHECK(m.dim() == 2 && m.sym_size(0) == x.sym_size(0) && m.sym_size(1) == x.sym_size(1),
              "token_similarity: `", name, "` must have shape ", x.sym_sizes().slice(0, 2), ", got ", m.sym_sizes());
  TORCH_CHECK(m.device() == x.device(), "token_similarity: `", name, "` is on ", m.device(),
              " but its features are on ", x.device());
}

// Token counts the kernels cannot take: each forward block holds all tokens of one side's items
// in a tile of at most kMaxRowTokens rows (the longer side is streamed in chunks, any length).
void check_token_counts(int64_t Ni, int64_t Nt) {
  TORCH_CHECK(std::min(Ni, Nt) <= kMaxRowTokens, "token_similarity: `txt` has Nt=", Nt, " and `img` has Ni=", Ni,
              " tokens per item; the CUDA kernels need one side with at most ", kMaxRowTokens,
              " tokens per item (that side's tokens are held whole in one tile; the other side may have any "
              "number). Use backend='torch' for such inputs");
  TORCH_CHECK(std::max(Ni, Nt) <= std::numeric_limits<int32_t>::max(), "token_similarity: `",
              Ni >= Nt ? "img" : "txt", "` has ", std::max(Ni, Nt), " tokens per item; at most 2^31 - 1");
}

// Checks of the forward's arguments (also the backward's). Returns (Ni, Nt), guarded: the index
// dtypes depend on them. Batch sizes and D stay symbolic for the Meta kernels.
std::pair<int64_t, int64_t> check_fwd_args(const Tensor& img, const Tensor& txt,
                                           const std::optional<Tensor>& img_mask,
                                           const std::optional<Tensor>& txt_mask) {
  check_features(img, txt);
  check_mask(img_mask, img, "img_mask");
  check_mask(txt_mask, txt, "txt_mask");
  const int64_t Ni = img.sym_size(1).guard_int(__FILE__, __LINE__);
  const int64_t Nt = txt.sym_size(1).guard_int(__FILE__, __LINE__);
  check_token_counts(Ni, Nt);
  return {Ni, Nt};
}

void check_grad(const Tensor& g, const Tensor& img, const Tensor& txt, const char* name) {
  TORCH_CHECK(is_float_dtype(g.scalar_type()), "token_similarity: `", name,
              "` must be a float32, float16 or bfloat16 gradient, got ", g.scalar_type());
  TORCH_CHECK(g.dim() == 2 && g.sym_size(0) == img.sym_size(0) && g.sym_size(1) == txt.sym_size(0),
              "token_similarity: `", name, "` must have shape (Bi, Bt) = (", img.sym_size(0), ", ",
              txt.sym_size(0), "), got ", g.sym_sizes());
  TORCH_CHECK(g.device() == img.device(), "token_similarity: `", name, "` is on ", g.device(), " but img is on ",
              img.device());
}

// idx: (Bi, Bt, n_tokens) token indices.
void check_indices(const Tensor& idx, const Tensor& img, const Tensor& txt, const c10::SymInt& n_tokens,
                   const char* name) {
  TORCH_CHECK(is_index_dtype(idx.scalar_type()), "token_similarity: `", name,
              "` must be uint8, int16, int32 or int64 token indices, got ", idx.scalar_type());
  TORCH_CHECK(idx.dim() == 3 && idx.sym_size(0) == img.sym_size(0) && idx.sym_size(1) == txt.sym_size(0) &&
                  idx.sym_size(2) == n_tokens,
              "token_similarity: `", name, "` must have shape (", img.sym_size(0), ", ", txt.sym_size(0), ", ",
              n_tokens, "), got ", idx.sym_sizes());
  TORCH_CHECK(idx.device() == img.device(), "token_similarity: `", name, "` is on ", idx.device(),
              " but img is on ", img.device());
}

void check_bwd_args(const Tensor& g_i2t, const Tensor& g_t2i, const Tensor& img, const Tensor& txt,
                    const std::optional<Tensor>& img_mask, const std::optional<Tensor>& txt_mask,
                    const Tensor& row_idx, const Tensor& col_idx) {
  check_fwd_args(img, txt, img_mask, txt_mask);
  check_grad(g_i2t, img, txt, "g_i2t");
  check_grad(g_t2i, img, txt, "g_t2i");
  check_indices(row_idx, img, txt, img.sym_size(1), "row_idx");
  check_indices(col_idx, img, txt, txt.sym_size(1), "col_idx");
}

// ----------------------------------------------------------------------------- Meta

std::tuple<Tensor, Tensor, Tensor, Tensor> token_similarity_fwd_meta(const Tensor& img, const Tensor& txt,
                                                                     const std::optional<Tensor>& img_mask,
                                                                     const std::optional<Tensor>& txt_mask) {
  const auto [Ni, Nt] = check_fwd_args(img, txt, img_mask, txt_mask);
  const c10::SymInt Bi = img.sym_size(0);
  const c10::SymInt Bt = txt.sym_size(0);
  const auto f32 = img.options().dtype(at::kFloat);
  return {at::empty_symint({Bi, Bt}, f32), at::empty_symint({Bi, Bt}, f32),
          at::empty_symint({Bi, Bt, img.sym_size(1)}, img.options().dtype(index_dtype(Nt))),
          at::empty_symint({Bi, Bt, txt.sym_size(1)}, img.options().dtype(index_dtype(Ni)))};
}

std::tuple<Tensor, Tensor> token_similarity_bwd_meta(const Tensor& g_i2t, const Tensor& g_t2i, const Tensor& img,
                                                     const Tensor& txt, const std::optional<Tensor>& img_mask,
                                                     const std::optional<Tensor>& txt_mask, const Tensor& row_idx,
                                                     const Tensor& col_idx) {
  check_bwd_args(g_i2t, g_t2i, img, txt, img_mask, txt_mask, row_idx, col_idx);
  return {at::empty_symint(img.sym_sizes(), img.options()), at::empty_symint(txt.sym_sizes(), txt.options())};
}

// ----------------------------------------------------------------------------- CUDA

struct Sizes {
  int64_t Bi, Ni, Bt, Nt, D;
};

// Concrete sizes for the kernels, which index items (not tokens) with int32.
Sizes sizes_of(const Tensor& img, const Tensor& txt) {
  const Sizes s{img.size(0), img.size(1), txt.size(0), txt.size(1), img.size(2)};
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  SK_CHECK_ARG(s.Bi <= kMax, "token_similarity", "img", "has ", s.Bi, " items; at most 2^31 - 1");
  SK_CHECK_ARG(s.Bt <= kMax, "token_similarity", "txt", "has ", s.Bt, " items; at most 2^31 - 1");
  return s;
}

toksim::DType kernel_dtype(at::ScalarType t) {
  return t == at::kFloat ? toksim::DType::kFloat : t == at::kHalf ? toksim::DType::kHalf : toksim::DType::kBFloat16;
}

const uint8_t* mask_ptr(const std::optional<Tensor>& contiguous_mask) {
  // bool is one byte (0 / 1): the kernels read it as uint8
  return contiguous_mask ? static_cast<const uint8_t*>(contiguous_mask->const_data_ptr()) : nullptr;
}

std::optional<Tensor> contiguous(const std::optional<Tensor>& t) {
  return t ? std::optional<Tensor>(t->contiguous()) : std::nullopt;
}

// cp.async moves 16-byte pieces: rows must be whole pieces and the bases 16-byte aligned.
bool vec_ok(int64_t D, int64_t elt, std::initializer_list<const void*> bases) {
  bool ok = (D * elt) % 16 == 0;
  for (const void* b : bases) ok = ok && reinterpret_cast<uintptr_t>(b) % 16 == 0;
  return ok;
}

// Every other tensor argument is on img's device (checked with the shared arguments).
void check_cuda(const Tensor& img) {
  SK_CHECK_ARG(img.is_cuda(), "token_similarity", "img", "must be a CUDA tensor for the CUDA kernels, got ",
               img.device());
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(img.get_device());
  TORCH_CHECK(prop->major >= 8, "token_similarity: the CUDA kernels need compute capability 8.0 or newer "
              "(tensor cores with bf16, cp.async); ", prop->name, " is ", prop->major, ".", prop->minor,
              ". Use backend='triton' or 'torch'");
}

std::tuple<Tensor, Tensor, Tensor, Tensor> token_similarity_fwd_cuda(const Tensor& img_in, const Tensor& txt_in,
                                                                     const std::optional<Tensor>& img_mask_in,
                                                                     const std::optional<Tensor>& txt_mask_in) {
  check_fwd_args(img_in, txt_in, img_mask_in, txt_mask_in);
  check_cuda(img_in);
  const c10::cuda::CUDAGuard guard(img_in.device());
  const Tensor img = img_in.contiguous();
  const Tensor txt = txt_in.contiguous();
  const std::optional<Tensor> img_mask = contiguous(img_mask_in);
  const std::optional<Tensor> txt_mask = contiguous(txt_mask_in);
  const Sizes s = sizes_of(img, txt);

  const auto f32 = img.options().dtype(at::kFloat);
  Tensor i2t = at::empty({s.Bi, s.Bt}, f32);
  Tensor t2i = at::empty({s.Bi, s.Bt}, f32);
  Tensor row_idx = at::empty({s.Bi, s.Bt, s.Ni}, img.options().dtype(index_dtype(s.Nt)));
  Tensor col_idx = at::empty({s.Bi, s.Bt, s.Nt}, img.options().dtype(index_dtype(s.Ni)));
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
  toksim::FwdProblem p{};
  p.dtype = kernel_dtype(img.scalar_type());
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
    p.c_idx_bytes = index_bytes(row_idx.scalar_type());
    p.r_idx_bytes = index_bytes(col_idx.scalar_type());
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
    p.c_idx_bytes = index_bytes(col_idx.scalar_type());
    p.r_idx_bytes = index_bytes(row_idx.scalar_type());
  }
  toksim::launch_forward(p, at::cuda::getCurrentCUDAStream());
  return {i2t, t2i, row_idx, col_idx};
}

// Real tokens per item, float (B,).
Tensor real_counts(const std::optional<Tensor>& mask, int64_t B, int64_t N, const Tensor& like) {
  const auto f32 = like.options().dtype(at::kFloat);
  if (!mask) return at::full({B}, static_cast<double>(N), f32);
  Tensor n = at::empty({B}, f32);
  if (B > 0) toksim::launch_count_real(mask_ptr(mask), B, N, n.mutable_data_ptr<float>(), at::cuda::getCurrentCUDAStream());
  return n;
}

std::tuple<Tensor, Tensor> token_similarity_bwd_cuda(const Tensor& g_i2t_in, const Tensor& g_t2i_in,
                                                     const Tensor& img_in, const Tensor& txt_in,
                                                     const std::optional<Tensor>& img_mask_in,
                                                     const std::optional<Tensor>& txt_mask_in,
                                                     const Tensor& row_idx_in, const Tensor& col_idx_in) {
  check_bwd_args(g_i2t_in, g_t2i_in, img_in, txt_in, img_mask_in, txt_mask_in, row_idx_in, col_idx_in);
  check_cuda(img_in);
  const c10::cuda::CUDAGuard guard(img_in.device());
  const Tensor img = img_in.contiguous();
  const Tensor txt = txt_in.contiguous();
  const std::optional<Tensor> img_mask = contiguous(img_mask_in);
  const std::optional<Tensor> txt_mask = contiguous(txt_mask_in);
  const Tensor g_i2t = g_i2t_in.to(at::kFloat).contiguous();
  const Tensor g_t2i = g_t2i_in.to(at::kFloat).contiguous();
  const Tensor row_idx = row_idx_in.contiguous();
  const Tensor col_idx = col_idx_in.contiguous();
  const Sizes s = sizes_of(img, txt);

  Tensor d_img = at::empty({s.Bi, s.Ni, s.D}, img.options());
  Tensor d_txt = at::empty({s.Bt, s.Nt, s.D}, txt.options());
  if (d_img.numel() == 0 && d_txt.numel() == 0) return {d_img, d_txt};
  const Tensor n_img = real_counts(img_mask, s.Bi, s.Ni, img);
  const Tensor n_txt = real_counts(txt_mask, s.Bt, s.Nt, img);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // upstream gradients over the real-token counts, 0 for pairs without real tokens
  Tensor c_i2t = at::empty({s.Bi, s.Bt}, g_i2t.options());
  Tensor c_t2i = at::empty({s.Bi, s.Bt}, g_i2t.options());
  if (c_i2t.numel() > 0) {
    toksim::launch_coefficients(g_i2t.const_data_ptr<float>(), g_t2i.const_data_ptr<float>(),
                                n_img.const_data_ptr<float>(), n_txt.const_data_ptr<float>(), s.Bi, s.Bt,
                                c_i2t.mutable_data_ptr<float>(), c_t2i.mutable_data_ptr<float>(), stream);
  }

  toksim::BwdProblem p{};
  p.dtype = kernel_dtype(img.scalar_type());
  p.D = s.D;
  p.vec = vec_ok(s.D, img.element_size(), {img.const_data_ptr(), txt.const_data_ptr()});
  const int row_bytes = index_bytes(row_idx.scalar_type());
  const int col_bytes = index_bytes(col_idx.scalar_type());

  if (d_img.numel() > 0) {  // X = img (a, k), Y = txt (b, l)
    p.src = txt.const_data_ptr();
    p.out = d_img.mutable_data_ptr();
    p.x_mask = mask_ptr(img_mask), p.y_mask = mask_ptr(txt_mask);
    p.cA = c_i2t.const_data_ptr<float>(), p.cA_sx = s.Bt, p.cA_sy = 1;
    p.cB = c_t2i.const_data_ptr<float>(), p.cB_sx = s.Bt, p.cB_sy = 1;
    p.idxA = row_idx.const_data_ptr(), p.idxA_bytes = row_bytes, p.idxA_sx = s.Bt * s.Ni, p.idxA_sy = s.Ni;
    p.idxB = col_idx.const_data_ptr(), p.idxB_bytes = col_bytes, p.idxB_sx = s.Bt * s.Nt, p.idxB_sy = s.Nt;
    p.Bx = s.Bi, p.Nx = s.Ni, p.By = s.Bt, p.Ny = s.Nt;
    toksim::launch_backward(p, stream);
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
    toksim::launch_backward(p, stream);
  }
  return {d_img, d_txt};
}

}  // namespace

TORCH_LIBRARY_IMPL(skillkern, CUDA, m) {
  m.impl("token_similarity_fwd_cuda", &token_similarity_fwd_cuda);
  m.impl("token_similarity_bwd_cuda", &token_similarity_bwd_cuda);
}

TORCH_LIBRARY_IMPL(skillkern, Meta, m) {
  m.impl("token_similarity_fwd_cuda", &token_similarity_fwd_meta);
  m.impl("token_similarity_bwd_cuda", &token_similarity_bwd_meta);
}

}  // namespace skillkern
