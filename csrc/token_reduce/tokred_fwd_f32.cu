// Forward kernels of token_reduce for float inputs (fwd_kernel.cuh, launch.cuh).
#include "token_reduce/launch.cuh"

namespace skillkern {
namespace tokred {

void launch_fwd_f32(const FwdParams& p, int mtn, size_t smem, cudaStream_t stream) {
  dispatch_fwd<float>(p, mtn, smem, stream);
}

}  // namespace tokred
}  // namespace skillkern
