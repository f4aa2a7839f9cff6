#include "token_reduce/launch.cuh"
SK_TOKRED_INSTANTIATE(bwd, __half);
