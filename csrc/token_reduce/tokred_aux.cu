// Launchers of the prep and reduce kernels (aux_kernels.cuh).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "token_reduce/aux_kernels.cuh"

namespace skillkern {
namespace tokred {

void launch_prep(const PrepParams& p, int x_dtype, cudaStream_t stream) {
  const int blocks = p.nks * p.nt + (p.wbf != nullptr ? p.nks5 * p.ntd : 0) + 8 * p.nt;
  switch (x_dtype) {
    case kF16:
      token_reduce_prep_kernel<__half><<<blocks, 32, 0, stream>>>(p);
      break;
    case kBF16:
      token_reduce_prep_kernel<__nv_bfloat16><<<blocks, 32, 0, stream>>>(p);
      break;
    default:
      token_reduce_prep_kernel<float><<<blocks, 32, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_reduce(const ReduceParams& p, cudaStream_t stream) {
  const int64_t total = (p.dw != nullptr ? p.DS : 0) + (p.dg != nullptr ? p.D : 0) + (p.db != nullptr ? p.D : 0);
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 4096);  // grid-stride beyond
  token_reduce_sum_partials_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace tokred
}  // namespace skillkern
