// token_similarity's backward kernels and launchers, compiled as host code.
#include "token_similarity/bwd.cu"
