// What every skillkern CUDA C++ op shares: argument checks whose messages name the argument,
// the float dtype dispatch (fp32 / fp16 / bf16), and fp32 <-> storage conversions usable in
// device code. Kernels index with int64 (see the *_off helpers in each op's .cu).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

namespace skillkern {

// TORCH_CHECK with skillkern's message format: "<op>: `<arg>` <what is wrong>" (op and arg may
// be literals or run-time strings).
#define SK_CHECK_ARG(cond, op, arg, ...) TORCH_CHECK((cond), op, ": `", arg, "` ", __VA_ARGS__)

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// fp32 accumulators <-> storage types, in device and host code.
template <typename T>
__host__ __device__ __forceinline__ float to_f32(T v) { return static_cast<float>(v); }
template <>
__host__ __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <>
__host__ __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__host__ __device__ __forceinline__ T from_f32(float v) { return static_cast<T>(v); }
template <>
__host__ __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__host__ __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// at::ScalarType -> the CUDA storage type (float, __half, __nv_bfloat16) as `scalar_t`.
#define SK_DISPATCH_FLOAT(dtype, op, ...)                                        \
  [&] {                                                                         \
    switch (dtype) {                                                            \
      case at::kFloat: { using scalar_t = float; return __VA_ARGS__(); }        \
      case at::kHalf: { using scalar_t = __half; return __VA_ARGS__(); }        \
      case at::kBFloat16: { using scalar_t = __nv_bfloat16; return __VA_ARGS__(); } \
      default:                                                                  \
        TORCH_CHECK(false, op, ": unsupported dtype ", dtype,                   \
                    " (float32, float16 or bfloat16)");                         \
    }                                                                           \
  }()

// Explicit instantiations of a function template for the three storage types, e.g.
// SK_INSTANTIATE_FLOAT(template void launch_forward, (const FwdProblem& p, cudaStream_t stream));
#define SK_INSTANTIATE_FLOAT(decl, params) \
  decl<float> params;                      \
  decl<__half> params;                     \
  decl<__nv_bfloat16> params

}  // namespace skillkern
