// The CUDA-only parts of the skill-FFN code, in one header: cp.async (16-byte global ->
// shared copies with zero-fill), the dynamic shared-memory base, the kernel launch and the
// shared-memory limit. Everything else (kernels, launchers, host orchestration) is plain
// C++ on threads, so tests/test_extension_skill_ffn.py runs those real sources on the CPU with
// stand-ins for exactly these (csrc/skill_ffn/emulation/skill_ffn/ptx.cuh).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>

namespace skillkern {
namespace ffn {

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = pred ? 16 : 0;  // 0: nothing is read, the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// The block's dynamic shared memory (sized at launch), 128-byte aligned.
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char skillkern_ffn_smem[];
  return skillkern_ffn_smem;
}

// Raises the dynamic shared-memory limit of `kernel` to `bytes` (needed above 48 KB).
template <typename Kernel>
inline void set_max_dynamic_smem(Kernel kernel, int bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

}  // namespace ffn
}  // namespace skillkern

// kernel<<<grid, block, smem, stream>>>(args...) and the launch-error check. `kernel` is a
// plain name (bind template kernels to a variable first: the macro splits on commas).
#define SKILLKERN_FFN_LAUNCH(kernel, grid, block, smem, stream, ...)   \
  do {                                                                 \
    kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__);        \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                    \
  } while (0)
