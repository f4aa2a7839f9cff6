// The device check of every CUDA entry point (host code; the CPU emulation does not include it).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>

#include "common.h"

namespace skillkern {

// `t` (the op's first tensor; the shared checks put the others on its device) must be a CUDA
// tensor on a GPU with cp.async and bf16 tensor cores.
inline void check_cuda_device(const at::Tensor& t, const char* op, const char* arg) {
  SK_CHECK_ARG(t.is_cuda(), op, arg, "must be a CUDA tensor for the cuda backend, got ", t.device());
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(t.get_device());
  TORCH_CHECK(prop->major >= 8, op, ": the CUDA kernels need compute capability 8.0 or newer (tensor cores "
              "with bf16, cp.async); ", prop->name, " is ", prop->major, ".", prop->minor,
              ". Use backend='triton' or 'torch'");
}

}  // namespace skillkern
