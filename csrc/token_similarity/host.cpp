// token_similarity_fwd_cuda / token_similarity_bwd_cuda: argument checks (shared by the CUDA and
// the Meta kernels, messages "token_similarity: `<arg>` ..."), the Meta (shape) kernels that
// FakeTensor / torch.compile / opcheck use, and the CUDA entry points, which lay the problem out
// for the kernels in fwd.cu / bwd.cu. Contract: the Triton ops skillkern::token_similarity_fwd /
// _bwd (skillkern/ops/token_similarity/op.py): same arguments, outputs, dtypes and shapes.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
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
#include "cuda_device.h"
#include "token_similarity/run.h"

namespace skillkern {
namespace {

using at::Tensor;
using toksim::kMaxRowTokens;

using toksim::index_dtype;

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

std::tuple<Tensor, Tensor, Tensor, Tensor> token_similarity_fwd_cuda(const Tensor& img, const Tensor& txt,
                                                                     const std::optional<Tensor>& img_mask,
                                                                     const std::optional<Tensor>& txt_mask) {
  check_fwd_args(img, txt, img_mask, txt_mask);
  check_cuda_device(img, "token_similarity", "img");
  const c10::cuda::CUDAGuard guard(img.device());
  return toksim::run_forward(img, txt, img_mask, txt_mask, at::cuda::getCurrentCUDAStream());
}

std::tuple<Tensor, Tensor> token_similarity_bwd_cuda(const Tensor& g_i2t, const Tensor& g_t2i, const Tensor& img,
                                                     const Tensor& txt, const std::optional<Tensor>& img_mask,
                                                     const std::optional<Tensor>& txt_mask, const Tensor& row_idx,
                                                     const Tensor& col_idx) {
  check_bwd_args(g_i2t, g_t2i, img, txt, img_mask, txt_mask, row_idx, col_idx);
  check_cuda_device(img, "token_similarity", "img");
  const c10::cuda::CUDAGuard guard(img.device());
  return toksim::run_backward(g_i2t, g_t2i, img, txt, img_mask, txt_mask, row_idx, col_idx,
                              at::cuda::getCurrentCUDAStream());
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
