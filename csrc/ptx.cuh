// The CUDA-only primitives of every skillkern kernel family (skill_ffn, token_similarity,
// token_reduce), in one header: the full-warp mask, warp reductions, cp.async (16-byte global ->
// shared copies, commit / wait), the dynamic shared-memory base, tensor-core fragments
// (ldmatrix, mma.sync, tf32 rounding) and the kernel launch. Everything else in csrc/ is plain
// C++ on threads: the CPU emulation (csrc/emu/) puts its host version of this header
// (csrc/emu/include/ptx.cuh) first on the include path, so the kernels compile unchanged as host
// code. Include it as "ptx.cuh" from an op folder (never from a file in csrc/ itself, whose own
// folder would shadow the emulation's copy).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <type_traits>

namespace skillkern {

constexpr unsigned kFullMask = 0xffffffffu;  // every lane of a warp takes part

// Butterfly reductions: every lane ends with the same value, and the association is fixed by
// the lane layout, so the result is the same bits on every run.
template <typename V>
__device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// ----------------------------------------------------------------------------- cp.async

// 16-byte global -> shared copy that bypasses L1. pred = false reads nothing and zero-fills the
// 16 bytes (the source size operand is 0). The "memory" clobbers keep the compiler from moving
// shared-memory accesses across the copy, its commit or its wait.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred = true) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// All but the N most recently committed groups of this thread's copies have landed.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// The block's dynamic shared memory (sized at launch), 128-byte aligned.
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char skillkern_dynamic_smem[];
  return skillkern_dynamic_smem;
}

// ----------------------------------------------------------------------------- tensor cores

// fp32 -> tf32 bit pattern, round to nearest (ties away): what the tf32 tensor cores multiply.
__device__ __forceinline__ uint32_t tf32_bits(float v) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return r;
}

// ldmatrix.m8n8.x4 (.trans) of 16-bit elements: lanes 8q..8q+7 give the 16-byte aligned row
// addresses of matrix q; r[q] is this lane's pair of matrix q.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// c += a * b on tensor cores, fp32 accumulate, row.col: m16n8k16 for fp16 / bf16 operands
// (T = the storage type), m16n8k8 tf32 for T = float (operands are tf32 bit patterns).
template <typename T>
__device__ __forceinline__ void mma_m16n8(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else if constexpr (std::is_same<T, __half>::value) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// ----------------------------------------------------------------------------- launches

// Raises the dynamic shared-memory limit of `kernel` to `bytes` (needed above 48 KB).
template <typename Kernel>
inline void set_max_dynamic_smem(Kernel kernel, int bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

}  // namespace skillkern

// kernel<<<grid, block, smem, stream>>>(args...) and the launch-error check. `kernel` is a
// plain name or a pointer (bind template kernels to a variable first: the macro splits on commas).
#define SK_LAUNCH(kernel, grid, block, smem, stream, ...)        \
  do {                                                           \
    kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__);  \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                              \
  } while (0)
