// Backward kernels of token_reduce for __nv_bfloat16 inputs (bwd_kernel.cuh, launch.cuh).
#include "token_reduce/launch.cuh"

namespace skillkern {
namespace tokred {

void launch_bwd_bf16(const BwdParams& p, int grid, size_t smem, cudaStream_t stream) {
  dispatch_bwd<__nv_bfloat16>(p, grid, smem, stream);
}

}  // namespace tokred
}  // namespace skillkern
