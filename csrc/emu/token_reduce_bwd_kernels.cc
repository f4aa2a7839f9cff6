// token_reduce's backward kernels and launchers, compiled as host code.
#include "token_reduce/launch.cuh"

SK_TOKRED_INSTANTIATE(bwd, float);
SK_TOKRED_INSTANTIATE(bwd, __half);
SK_TOKRED_INSTANTIATE(bwd, __nv_bfloat16);
