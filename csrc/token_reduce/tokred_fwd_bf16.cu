// Forward kernels of token_reduce for __nv_bfloat16 inputs (fwd_kernel.cuh, launch.cuh).
#include "token_reduce/launch.cuh"

namespace skillkern {
namespace tokred {

void launch_fwd_bf16(const FwdParams& p, int mtn, size_t smem, cudaStream_t stream) {
  dispatch_fwd<__nv_bfloat16>(p, mtn, smem, stream);
}

}  // namespace tokred
}  // namespace skillkern
