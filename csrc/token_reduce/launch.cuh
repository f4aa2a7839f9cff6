// Template launchers of the forward / backward kernels: the compile-time tile shapes (n-tiles
// of output tokens NT = ceil(S / 8), position m-tiles MTN per forward tile) are picked here from
// the run-time geometry. Each tokred_{fwd,bwd}_<dtype>.cu instantiates one dtype
// (SK_TOKRED_INSTANTIATE), so the build compiles them in parallel.
#pragma once

#include <c10/util/Exception.h>

#include "ptx.cuh"
#include "token_reduce/bwd_kernel.cuh"

namespace skillkern {
namespace tokred {

template <typename T, int NT, int MTN>
void run_fwd(const FwdParams& p, size_t smem, cudaStream_t stream) {
  auto* kernel = &token_reduce_fwd_kernel<T, NT, MTN>;
  set_max_dynamic_smem(kernel, static_cast<int>(smem));
  const dim3 grid(static_cast<unsigned>(p.B * p.geo.n_chunks));  // <= 2^31 - 1, checked by the host
  SK_LAUNCH(kernel, grid, kThreads, smem, stream, p);
}

template <typename T>
void launch_fwd(const FwdParams& p, int mtn, size_t smem, cudaStream_t stream) {
  switch (p.geo.nt * 10 + mtn) {
    case 11: return run_fwd<T, 1, 1>(p, smem, stream);
    case 12: return run_fwd<T, 1, 2>(p, smem, stream);
    case 21: return run_fwd<T, 2, 1>(p, smem, stream);
    case 22: return run_fwd<T, 2, 2>(p, smem, stream);
    case 31: return run_fwd<T, 3, 1>(p, smem, stream);
    case 32: return run_fwd<T, 3, 2>(p, smem, stream);
    case 41: return run_fwd<T, 4, 1>(p, smem, stream);
    case 42: return run_fwd<T, 4, 2>(p, smem, stream);
    default: TORCH_CHECK(false, "token_reduce_fwd_cuda: no kernel for ", p.geo.nt, " token tiles x ", mtn,
                         " position tiles");
  }
}

template <typename T, int NT>
void run_bwd(const BwdParams& p, int grid, size_t smem, cudaStream_t stream) {
  auto* kernel = &token_reduce_bwd_kernel<T, NT>;
  set_max_dynamic_smem(kernel, static_cast<int>(smem));
  SK_LAUNCH(kernel, dim3(static_cast<unsigned>(grid)), kThreads, smem, stream, p);
}

template <typename T>
void launch_bwd(const BwdParams& p, int grid, size_t smem, cudaStream_t stream) {
  switch (p.geo.nt) {
    case 1: return run_bwd<T, 1>(p, grid, smem, stream);
    case 2: return run_bwd<T, 2>(p, grid, smem, stream);
    case 3: return run_bwd<T, 3>(p, grid, smem, stream);
    case 4: return run_bwd<T, 4>(p, grid, smem, stream);
    default: TORCH_CHECK(false, "token_reduce_bwd_cuda: no kernel for ", p.geo.nt, " token tiles");
  }
}

}  // namespace tokred
}  // namespace skillkern

// The launcher `fwd` or `bwd` for storage type T, in one translation unit per (direction, dtype).
#define SK_TOKRED_INSTANTIATE_fwd(T) \
  template void skillkern::tokred::launch_fwd<T>(const skillkern::tokred::FwdParams&, int, size_t, cudaStream_t)
#define SK_TOKRED_INSTANTIATE_bwd(T) \
  template void skillkern::tokred::launch_bwd<T>(const skillkern::tokred::BwdParams&, int, size_t, cudaStream_t)
#define SK_TOKRED_INSTANTIATE(direction, T) SK_TOKRED_INSTANTIATE_##direction(T)
