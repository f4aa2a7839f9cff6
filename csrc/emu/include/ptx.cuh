// Host version of csrc/ptx.cuh for the CPU emulation (csrc/emu/runtime.h): the build puts this
// folder first on the include path, so every kernel's #include "ptx.cuh" lands here and the
// kernel sources compile unchanged as host code. Same names and signatures as the CUDA header;
// the CUDA keywords and the builtins the kernels use (threadIdx, barriers, shuffles, bit casts,
// explicitly rounded arithmetic) are defined for the host compiler.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "emu/runtime.h"

// The CUDA headers define these for nvcc; here they are plain C++.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#undef __restrict__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // blocks run one after the other: one array per kernel serves them all
#define __restrict__ __restrict

#define threadIdx (::skillkern::emu::g_thread)
#define blockIdx (::skillkern::emu::g_block_idx)
#define blockDim (::skillkern::emu::g_block_dim)
#define gridDim (::skillkern::emu::g_grid_dim)

using std::max;  // device code's integer min / max
using std::min;

inline void __syncthreads() { ::skillkern::emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::skillkern::emu::syncwarp(mask); }
template <typename V>
inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask) {
  return ::skillkern::emu::shfl_xor(mask, v, lane_mask);
}
template <typename V>
inline V __ldg(const V* p) { return *p; }
inline float __int_as_float(int v) { return ::skillkern::emu::from_u64<float>(static_cast<uint32_t>(v)); }
inline float __uint_as_float(unsigned v) { return ::skillkern::emu::from_u64<float>(v); }
inline unsigned __float_as_uint(float v) { return static_cast<unsigned>(::skillkern::emu::to_u64(v)); }
inline int __float_as_int(float v) { return static_cast<int>(::skillkern::emu::to_u64(v)); }
// the build uses -ffp-contract=off: these round like the GPU's explicitly rounded ops
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }

namespace skillkern {

constexpr unsigned kFullMask = 0xffffffffu;

template <typename V>
inline V warp_sum(V v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = std::fmax(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

inline void cp_async16(void* smem, const void* gmem, bool pred = true) { emu::cp_async16(smem, gmem, pred); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() { emu::cp_async_wait(N); }
inline void cp_async_wait_all() {  // commits the open copies too
  emu::cp_async_commit();
  emu::cp_async_wait(0);
}
inline unsigned char* dynamic_smem() { return emu::g_block->smem; }

inline uint32_t tf32_bits(float v) { return emu::tf32_rna(v); }
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) { emu::ldmatrix_x4(r, p, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) { emu::ldmatrix_x4(r, p, true); }
template <typename T>
inline void mma_m16n8(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu::mma_m16n8<T>(c, a, b0, b1);
}

template <typename Kernel>
inline void set_max_dynamic_smem(Kernel, int bytes) {
  if (static_cast<size_t>(bytes) > emu::kMaxDynamicSmem) {
    throw std::runtime_error("emulation: a shared-memory request of " + std::to_string(bytes) + " bytes");
  }
}

}  // namespace skillkern

#define SK_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::skillkern::emu::launch(dim3(grid), dim3(block), (smem), [&] { kernel(__VA_ARGS__); })
