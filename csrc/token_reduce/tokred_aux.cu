// Launchers of the prep and reduce kernels (aux_kernels.cuh).
#include <algorithm>

#include "ptx.cuh"
#include "token_reduce/aux_kernels.cuh"

namespace skillkern {
namespace tokred {

template <typename T>
void launch_prep(const PrepParams& p, cudaStream_t stream) {
  const int blocks = p.nks * p.nt + (p.w_dscore_frags != nullptr ? p.nks_tokens * p.nt_features : 0) + 8 * p.nt;
  auto* kernel = &token_reduce_prep_kernel<T>;
  SK_LAUNCH(kernel, blocks, 32, 0, stream, p);
}
SK_INSTANTIATE_FLOAT(template void launch_prep, (const PrepParams& p, cudaStream_t stream));

void launch_reduce(const ReduceParams& p, cudaStream_t stream) {
  const int64_t total = (p.dw != nullptr ? p.DS : 0) + (p.dg != nullptr ? p.D : 0) + (p.db != nullptr ? p.D : 0);
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 4096);  // grid-stride beyond
  SK_LAUNCH(token_reduce_sum_partials_kernel, static_cast<unsigned>(blocks), 256, 0, stream, p);
}

}  // namespace tokred
}  // namespace skillkern
