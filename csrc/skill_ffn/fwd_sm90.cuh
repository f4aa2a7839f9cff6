// The skill-FFN forward on Hopper (ffn_fwd.cu picks it where sm90_path() holds): the two GEMMs
// are CUTLASS grouped GEMMs with TMA and wgmma (sm90_grouped.cu), which need their A rows
// contiguous per skill. So, after routing:
//   1. gather (one pass): xs[p] = x[order[p] / k] and ss[p] = scale[order[p]] for the active
//      sorted positions p < offsets[E], and inv[order[p]] = p for every p (the inverse
//      permutation). 67 MB at the goal shape (T = 32k, d = 1024), ~22 us at 3 TB/s: cheaper
//      than giving up TMA for the whole GEMM (the mma.sync path gathers while it loads). The
//      backward (bwd_sm90.cuh) gathers dy's rows in the same pass.
//   2. GEMM1: hid = act(xs @ w1[e] + b1[e]), sorted rows. swiglu (w1[e] is (d, 2h), gate columns
//      first): GEMM1 with the identity code writes Z = xs @ w1[e] + b1[e] (N, 2h), whose gate and
//      up columns lie in different output tiles, and _swiglu_rows_kernel makes hid = silu(gate) *
//      up from it: one more round trip of Z through memory (6 N h bytes, ~0.15 ms at the goal
//      shape), no more CUTLASS instantiations, and gate and up rounded to x's dtype once before
//      the product (the mma.sync path keeps them in fp32).
//   3. GEMM2: ys = ss * (hid @ w2[e] + b2[e]), sorted rows, in x's dtype (as the mma.sync path
//      rounds its slot rows).
//   4. combine: y[t] = sum over j < k of ys[inv[t k + j]] in slot order in fp32, an empty
//      slot (inv >= offsets[E]) adding nothing: a fixed order, so bitwise reproducible.
// No host sync anywhere: offsets is read on the device only. The GEMMs' stand-ins in
// csrc/emu/sm90_host.cc run all of this on the CPU emulation (tests/test_emulation.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <optional>

#include "common.h"
#include "skill_ffn/act.cuh"
#include "skill_ffn/down.cuh"
#include "skill_ffn/ffn.h"
#include "skill_ffn/sm90_grouped.h"

namespace skillkern {
namespace ffn {
namespace {

template <typename T>
__device__ __forceinline__ void load8(const T* src, float (&v)[8]) {  // 16 aligned bytes, to fp32
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  const T* t = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int q = 0; q < 8; ++q) v[q] = to_f32(t[q]);
}

// Step 1. One thread per 16 bytes of a sorted row (d % 8 == 0, so rows are whole vectors). y,
// when given (the backward's dy, (T, d) like x), is gathered into ys the same way.
template <typename T>
__global__ void __launch_bounds__(256)
    _gather_sorted_kernel(const T* __restrict__ x, const T* __restrict__ y, const float* __restrict__ scale,
                          const int32_t* __restrict__ order, const int32_t* __restrict__ offsets, int E, int k,
                          int64_t N, int64_t d, T* __restrict__ xs, T* __restrict__ ys, float* __restrict__ ss,
                          int32_t* __restrict__ inv) {
  const int64_t vecs = d / 8;
  const int64_t active = offsets[E];
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N * vecs; i += stride) {
    const int64_t p = i / vecs, c = (i % vecs) * 8;
    const int32_t slot = order[p];
    if (c == 0) {
      inv[slot] = int32_t(p);
      if (p < active) ss[p] = scale[slot];
    }
    if (p < active) {
      const int64_t src = (slot / k) * d + c;
      *reinterpret_cast<uint4*>(xs + p * d + c) = *reinterpret_cast<const uint4*>(x + src);
      if (y != nullptr) *reinterpret_cast<uint4*>(ys + p * d + c) = *reinterpret_cast<const uint4*>(y + src);
    }
  }
}

// Step 2 for swiglu: hid[p, j] = silu(z[p, j]) * z[p, h + j] for the active sorted rows, one thread
// per 8 columns of hid (h % 8 == 0).
template <typename T>
__global__ void __launch_bounds__(256)
    _swiglu_rows_kernel(const T* __restrict__ z, const int32_t* __restrict__ offsets, int E, int64_t h,
                        T* __restrict__ hid) {
  const int64_t vecs = h / 8;
  const int64_t n = int64_t(offsets[E]) * vecs;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t p = i / vecs, c = (i % vecs) * 8;
    float g[8], u[8];
    load8(z + p * 2 * h + c, g);
    load8(z + p * 2 * h + h + c, u);
#pragma unroll
    for (int q = 0; q < 8; ++q) g[q] = act_fwd(g[q], kSilu) * u[q];
    store8(hid + p * h + c, g, 8, true);
  }
}

// Step 4. One thread per 8 columns of a token.
template <typename T>
__global__ void __launch_bounds__(256)
    _combine_sorted_kernel(const T* __restrict__ ys, const int32_t* __restrict__ inv, const int32_t* __restrict__ offsets,
                           int E, int64_t n_tok, int k, int64_t d, T* __restrict__ y) {
  const int64_t vecs = d / 8;
  const int64_t active = offsets[E];
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n_tok * vecs; i += stride) {
    const int64_t t = i / vecs, c = (i % vecs) * 8;
    float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int j = 0; j < k; ++j) {
      const int64_t p = inv[t * k + j];
      if (p >= active) continue;  // an empty slot (its skill id out of range)
      const T* src = ys + p * d + c;
#pragma unroll
      for (int q = 0; q < 8; ++q) s[q] += to_f32(src[q]);
    }
    store8(y + t * d + c, s, 8, true);
  }
}

// The gather of step 1 for x (and y, or null), on `stream`.
template <typename T>
void launch_gather_sorted(const at::Tensor& x, const T* y, const at::Tensor& scale, const at::Tensor& order,
                          const at::Tensor& offsets, int E, int k, int64_t N, int64_t d, at::Tensor& xs, T* ys,
                          at::Tensor& ss, at::Tensor& inv, cudaStream_t stream) {
  const int64_t grid = std::min<int64_t>(cdiv(N * (d / 8), 256), int64_t(1) << 20);  // grid-stride past that
  auto gather = _gather_sorted_kernel<T>;
  SK_LAUNCH(gather, unsigned(grid), 256, 0, stream, reinterpret_cast<const T*>(x.const_data_ptr()), y,
            scale.const_data_ptr<float>(), order.const_data_ptr<int32_t>(), offsets.const_data_ptr<int32_t>(), E, k,
            N, d, reinterpret_cast<T*>(xs.mutable_data_ptr()), ys, ss.mutable_data_ptr<float>(),
            inv.mutable_data_ptr<int32_t>());
}

// The combine of step 4: y (n_tok, d) from the sorted slot rows ys (N, d), on `stream`.
template <typename T>
void launch_combine_sorted(const at::Tensor& ys, const at::Tensor& inv, const at::Tensor& offsets, int E,
                           int64_t n_tok, int k, int64_t d, at::Tensor& y, cudaStream_t stream) {
  const int64_t grid = std::min<int64_t>(cdiv(n_tok * (d / 8), 256), int64_t(1) << 20);
  auto combine = _combine_sorted_kernel<T>;
  SK_LAUNCH(combine, unsigned(grid), 256, 0, stream, reinterpret_cast<const T*>(ys.const_data_ptr()),
            inv.const_data_ptr<int32_t>(), offsets.const_data_ptr<int32_t>(), E, n_tok, k, d,
            reinterpret_cast<T*>(y.mutable_data_ptr()));
}

// fn(T{}) for x's 16-bit type: the sm_90 path takes bf16 and fp16 only (a generic lambda, so
// that nothing is instantiated for fp32).
template <typename Fn>
void dispatch_16bit(const at::Tensor& x, Fn&& fn) {
  if (x.scalar_type() == at::kBFloat16) {
    fn(__nv_bfloat16{});
  } else {
    TORCH_CHECK(x.scalar_type() == at::kHalf, "skill_ffn: the sm_90 path takes bf16 or fp16, got ", x.scalar_type());
    fn(__half{});
  }
}

inline sm90::Dtype sm90_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 ? sm90::Dtype::kBf16 : sm90::Dtype::kFp16;
}

inline const void* opt_ptr(const std::optional<at::Tensor>& t) { return t.has_value() ? t->const_data_ptr() : nullptr; }

inline void check_sm90(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "skill_ffn: the sm_90 grouped GEMM (", what, ") failed: ", cudaGetErrorString(err));
}

// Writes y (T, d), x's dtype and device; the same inputs as run_forward (fwd.cuh), plus the
// device's SM count (the persistent GEMMs' grid). Callers have checked sm90_path (sm90_path.h).
inline void run_forward_sm90(at::Tensor& y, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& w1,
                             const at::Tensor& w2, const std::optional<at::Tensor>& b1,
                             const std::optional<at::Tensor>& b2, int act, const at::Tensor& order,
                             const at::Tensor& offsets, int sms, cudaStream_t stream) {
  const int64_t n_tok = y.size(0), d = y.size(1), k = scale.size(1), N = n_tok * k, E = w1.size(0), h = w2.size(1);
  if (N == 0) return;
  TORCH_CHECK(d <= INT32_MAX && h <= INT32_MAX, "skill_ffn: d and h must fit in int32");
  at::Tensor xs = at::empty({N, d}, x.options());
  at::Tensor ss = at::empty({N}, x.options().dtype(at::kFloat));
  at::Tensor inv = at::empty({N}, x.options().dtype(at::kInt));
  const bool glu = act == kSwiglu;
  at::Tensor hid = at::empty({N, h}, x.options());
  at::Tensor z = glu ? at::empty({N, 2 * h}, x.options()) : hid;  // swiglu: GEMM1's Z, both halves
  at::Tensor ys = at::empty({N, d}, x.options());
  at::Tensor ws = at::empty({int64_t(sm90::workspace_bytes(int(E), sms))}, x.options().dtype(at::kByte));
  const sm90::Dtype dt = sm90_dtype(x);
  const int32_t* off = offsets.const_data_ptr<int32_t>();
  dispatch_16bit(x, [&](auto tag) {
    using T = decltype(tag);
    launch_gather_sorted<T>(x, nullptr, scale, order, offsets, int(E), int(k), N, d, xs, nullptr, ss, inv, stream);
    check_sm90(sm90::up(dt, xs.const_data_ptr(), w1.const_data_ptr(), opt_ptr(b1), z.mutable_data_ptr(), off,
                        int(E), int(d), int(glu ? 2 * h : h), glu ? kIdentity : act, sms, ws.mutable_data_ptr(),
                        stream),
               "GEMM1");
    if (glu) {
      const int64_t grid = std::min<int64_t>(cdiv(N * (h / 8), 256), int64_t(1) << 20);
      auto swiglu = _swiglu_rows_kernel<T>;
      SK_LAUNCH(swiglu, unsigned(grid), 256, 0, stream, reinterpret_cast<const T*>(z.const_data_ptr()), off, int(E),
                h, reinterpret_cast<T*>(hid.mutable_data_ptr()));
    }
    check_sm90(sm90::down(dt, hid.const_data_ptr(), w2.const_data_ptr(), opt_ptr(b2), ss.const_data_ptr<float>(),
                          ys.mutable_data_ptr(), off, int(E), int(h), int(d), sms, ws.mutable_data_ptr(), stream),
               "GEMM2");
    launch_combine_sorted<T>(ys, inv, offsets, int(E), n_tok, int(k), d, y, stream);
  });
}

}  // namespace
}  // namespace ffn
}  // namespace skillkern
