// token_reduce's prep / reduce / forward kernels and launchers, compiled as host code (the
// backward in token_reduce_bwd_kernels.cc: the two compile in parallel).
#include "token_reduce/launch.cuh"
#include "token_reduce/tokred_aux.cu"

SK_TOKRED_INSTANTIATE(fwd, float);
SK_TOKRED_INSTANTIATE(fwd, __half);
SK_TOKRED_INSTANTIATE(fwd, __nv_bfloat16);
