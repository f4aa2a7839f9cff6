// token_similarity's kernels and launchers, compiled as host code (fwd.cu; bwd.cu in its own
// translation unit, token_similarity_bwd_kernels.cc).
#include "token_similarity/fwd.cu"
