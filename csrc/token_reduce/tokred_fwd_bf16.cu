#include "token_reduce/launch.cuh"
SK_TOKRED_INSTANTIATE(fwd, __nv_bfloat16);
