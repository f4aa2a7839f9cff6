// The skill FFN's GEMMs on Hopper (sm_90a): CUTLASS ptr-array grouped GEMMs with TMA and
// wgmma, warp-specialized and persistent (sm90_grouped.cu). Torch-free: raw device pointers,
// everything ordered on `stream`, no host sync.
//
//   up:    hid[rows of e] = act(a[rows of e] @ w1[e] + b1[e])           (GEMM1; act = kIdentity
//                                                                         gives the backward's Z)
//   down:  out[rows of e] = scale[rows] * (a[rows of e] @ w2[e] + b2[e])  (GEMM2)
//   dgrad: out[rows of e] = a[rows of e] @ w[e]^T, w (E, N, K) row-major   (G = dY w2^T, dX = dZ w1^T)
//   wgrad: dw[e] = a[rows of e]^T @ b[rows of e], a (rows, M), b (rows, N), dw (E, M, N); a skill
//          with no rows gets exact zeros                                (dW1 = X^T dZ, dW2 = (cH)^T dY)
//
// a (rows, K) and the outputs (rows, N) are row-major and sorted by skill: skill e owns rows
// offsets[e] .. offsets[e+1] - 1 (offsets: E + 1 int32 on the device, read only by a small
// device kernel that builds the per-skill shapes, pointers and strides, so the host never sees
// them). w (E, K, N) row-major; b (E, N) or null; scale (rows,) fp32 or null (= 1). All 16-bit
// tensors share one dtype (bf16 or fp16); K, N and M must be positive multiples of 8 and every
// pointer 16-byte aligned (TMA); otherwise cudaErrorInvalidValue. act: the codes of act_codes.h
// except kSwiglu, whose gate and up columns sit in different output tiles (the callers run it
// as kIdentity over 2h columns and a row kernel).
#pragma once

#include <cuda_runtime_api.h>  // cudaError_t, cudaStream_t (not cuda_runtime.h: the CPU emulation includes this too)

#include <cstddef>
#include <cstdint>

namespace skillkern {
namespace ffn {
namespace sm90 {

// Whether this build holds the kernels: the CUTLASS headers were found and sm_90a is in the
// arch list (setup.py defines SKILLKERN_SM90_GROUPED). They run on compute capability 9.0 only.
bool built();

enum class Dtype : int { kBf16 = 0, kFp16 = 1 };

// Device memory each call needs (128-byte aligned): the argument arrays of E skills plus
// CUTLASS's own workspace for `sm_count` persistent blocks; enough for any of the four. Calls on
// one stream may share it (each call's argument kernel runs after the previous GEMM).
size_t workspace_bytes(int E, int sm_count);

cudaError_t up(Dtype dt, const void* a, const void* w1, const void* b1, void* hid, const int32_t* offsets, int E,
               int K, int N, int act, int sm_count, void* workspace, cudaStream_t stream);

cudaError_t down(Dtype dt, const void* a, const void* w2, const void* b2, const float* scale, void* out,
                 const int32_t* offsets, int E, int K, int N, int sm_count, void* workspace, cudaStream_t stream);

cudaError_t dgrad(Dtype dt, const void* a, const void* w, void* out, const int32_t* offsets, int E, int K, int N,
                  int sm_count, void* workspace, cudaStream_t stream);

cudaError_t wgrad(Dtype dt, const void* a, const void* b, void* dw, const int32_t* offsets, int E, int M, int N,
                  int sm_count, void* workspace, cudaStream_t stream);

}  // namespace sm90
}  // namespace ffn
}  // namespace skillkern
