// Host stand-ins of the sm_90 grouped GEMMs (skill_ffn/sm90_grouped.h) for the CPU emulation:
// the header's contract computed by plain loops (fp32 accumulation in k order, the epilogue in
// fp32 as CUTLASS's visitor trees compute it, one rounding to the 16-bit type). With them the
// orchestration around the GEMMs (fwd_sm90.cuh, bwd_sm90.cuh: the gathers, the backward's row
// kernel, the bias sums, the combines) runs on the CPU and is tested there. The CUTLASS kernels
// themselves only compile here (tests/test_inspect_extension.py reads their machine code); the
// GPU tests run them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "common.h"
#include "skill_ffn/act.cuh"
#include "skill_ffn/sm90_grouped.h"

namespace skillkern {
namespace ffn {
namespace sm90 {
namespace {

bool sizes_ok(int E, std::initializer_list<int> dims) {
  if (E <= 0) return false;
  for (int n : dims)
    if (n <= 0 || n % 8 != 0) return false;
  return true;
}

// out[r, n] = epi(r, e, sum_k A(r, k) B(e, k, n)) for every row r of every skill e.
template <typename T, typename A, typename B, typename Epi>
void rows_gemm(const int32_t* offsets, int E, int K, int N, A a, B b, Epi epi, T* out) {
  std::vector<float> acc(N);
  for (int e = 0; e < E; ++e)
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int k = 0; k < K; ++k) {
        const float av = a(r, k);
        for (int n = 0; n < N; ++n) acc[n] += av * b(e, k, n);
      }
      for (int n = 0; n < N; ++n) out[r * N + n] = from_f32<T>(epi(r, e, n, acc[n]));
    }
}

template <typename T>
cudaError_t up_t(const T* a, const T* w1, const T* b1, T* hid, const int32_t* offsets, int E, int K, int N, int act) {
  rows_gemm<T>(
      offsets, E, K, N, [&](int64_t r, int k) { return to_f32(a[r * K + k]); },
      [&](int e, int k, int n) { return to_f32(w1[(int64_t(e) * K + k) * N + n]); },
      [&](int64_t, int e, int n, float acc) {
        return act_fwd(acc + (b1 != nullptr ? to_f32(b1[int64_t(e) * N + n]) : 0.f), act);
      },
      hid);
  return cudaSuccess;
}

template <typename T>
cudaError_t down_t(const T* a, const T* w2, const T* b2, const float* scale, T* out, const int32_t* offsets, int E,
                   int K, int N) {
  rows_gemm<T>(
      offsets, E, K, N, [&](int64_t r, int k) { return to_f32(a[r * K + k]); },
      [&](int e, int k, int n) { return to_f32(w2[(int64_t(e) * K + k) * N + n]); },
      [&](int64_t r, int e, int n, float acc) {
        const float v = acc + (b2 != nullptr ? to_f32(b2[int64_t(e) * N + n]) : 0.f);
        return (scale != nullptr ? scale[r] : 1.f) * v;
      },
      out);
  return cudaSuccess;
}

template <typename T>
cudaError_t dgrad_t(const T* a, const T* w, T* out, const int32_t* offsets, int E, int K, int N) {
  rows_gemm<T>(
      offsets, E, K, N, [&](int64_t r, int k) { return to_f32(a[r * K + k]); },
      [&](int e, int k, int n) { return to_f32(w[(int64_t(e) * N + n) * K + k]); },
      [](int64_t, int, int, float acc) { return acc; }, out);
  return cudaSuccess;
}

template <typename T>
cudaError_t wgrad_t(const T* a, const T* b, T* dw, const int32_t* offsets, int E, int M, int N) {
  std::vector<float> acc(int64_t(M) * N);
  for (int e = 0; e < E; ++e) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r)
      for (int m = 0; m < M; ++m) {
        const float av = to_f32(a[r * M + m]);
        for (int n = 0; n < N; ++n) acc[int64_t(m) * N + n] += av * to_f32(b[r * N + n]);
      }
    for (int64_t i = 0; i < int64_t(M) * N; ++i) dw[int64_t(e) * M * N + i] = from_f32<T>(acc[i]);
  }
  return cudaSuccess;
}

// fn(T{}) for the 16-bit type of dt.
template <typename Fn>
cudaError_t by_dtype(Dtype dt, Fn fn) {
  return dt == Dtype::kBf16 ? fn(__nv_bfloat16{}) : fn(__half{});
}

}  // namespace

bool built() { return true; }
size_t workspace_bytes(int, int) { return 0; }

cudaError_t up(Dtype dt, const void* a, const void* w1, const void* b1, void* hid, const int32_t* offsets, int E,
               int K, int N, int act, int, void*, cudaStream_t) {
  if (act == kSwiglu || !sizes_ok(E, {K, N})) return cudaErrorInvalidValue;
  return by_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return up_t<T>(static_cast<const T*>(a), static_cast<const T*>(w1), static_cast<const T*>(b1),
                   static_cast<T*>(hid), offsets, E, K, N, act);
  });
}

cudaError_t down(Dtype dt, const void* a, const void* w2, const void* b2, const float* scale, void* out,
                 const int32_t* offsets, int E, int K, int N, int, void*, cudaStream_t) {
  if (!sizes_ok(E, {K, N})) return cudaErrorInvalidValue;
  return by_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return down_t<T>(static_cast<const T*>(a), static_cast<const T*>(w2), static_cast<const T*>(b2), scale,
                     static_cast<T*>(out), offsets, E, K, N);
  });
}

cudaError_t dgrad(Dtype dt, const void* a, const void* w, void* out, const int32_t* offsets, int E, int K, int N, int,
                  void*, cudaStream_t) {
  if (!sizes_ok(E, {K, N})) return cudaErrorInvalidValue;
  return by_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return dgrad_t<T>(static_cast<const T*>(a), static_cast<const T*>(w), static_cast<T*>(out), offsets, E, K, N);
  });
}

cudaError_t wgrad(Dtype dt, const void* a, const void* b, void* dw, const int32_t* offsets, int E, int M, int N, int,
                  void*, cudaStream_t) {
  if (!sizes_ok(E, {M, N})) return cudaErrorInvalidValue;
  return by_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return wgrad_t<T>(static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(dw), offsets, E, M, N);
  });
}

}  // namespace sm90
}  // namespace ffn
}  // namespace skillkern
