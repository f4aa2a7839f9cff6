// The ops of the CPU emulation (torch.ops.skillkern_emu.*), declared once: each kernel family's
// entry points with the arguments of its native op (csrc/ops.cpp), on CPU tensors, and the
// emulation's settings. The implementations register from skill_ffn.cc, token_similarity.cc and
// token_reduce.cc.
#include <torch/library.h>

#include <cstdint>

#include "emu/runtime.h"

namespace {

// The thread schedule (seed), the cp.async timing and the injected bug (runtime.h Config) of the
// launches that follow.
void configure(int64_t seed, bool copies_at_issue, int64_t wait_short, bool no_zero_fill, int64_t drop_barrier) {
  skillkern::emu::Config& c = skillkern::emu::config();
  c.seed = static_cast<uint64_t>(seed);
  c.copies_at_issue = copies_at_issue;
  c.wait_short = static_cast<int>(wait_short);
  c.no_zero_fill = no_zero_fill;
  c.drop_barrier = drop_barrier;
}

}  // namespace

TORCH_LIBRARY(skillkern_emu, m) {
  m.def("configure(int seed, bool copies_at_issue, int wait_short=0, bool no_zero_fill=False, "
        "int drop_barrier=-1) -> ()", &configure);
  m.def("skill_ffn_fwd(Tensor x, Tensor skill_ids, Tensor scale, Tensor w1, Tensor w2, Tensor? b1, Tensor? b2, "
        "str activation) -> (Tensor, Tensor, Tensor)");
  m.def("skill_ffn_bwd(Tensor dy, Tensor x, Tensor scale, Tensor w1, Tensor w2, Tensor? b1, Tensor? b2, "
        "Tensor order, Tensor offsets, str activation, bool need_dscale) -> Tensor[]");
  m.def("skill_ffn_fwd_sm90(Tensor x, Tensor skill_ids, Tensor scale, Tensor w1, Tensor w2, Tensor? b1, "
        "Tensor? b2, str activation) -> (Tensor, Tensor, Tensor)");
  m.def("skill_ffn_bwd_sm90(Tensor dy, Tensor x, Tensor scale, Tensor w1, Tensor w2, Tensor? b1, Tensor? b2, "
        "Tensor order, Tensor offsets, str activation, bool need_dscale) -> Tensor[]");
  m.def("token_similarity_fwd(Tensor img, Tensor txt, Tensor? img_mask, Tensor? txt_mask) -> "
        "(Tensor, Tensor, Tensor, Tensor)");
  m.def("token_similarity_bwd(Tensor g_i2t, Tensor g_t2i, Tensor img, Tensor txt, Tensor? img_mask, "
        "Tensor? txt_mask, Tensor row_idx, Tensor col_idx) -> (Tensor, Tensor)");
  // token_reduce's ops plus the device limits the launches are sized for (bytes of shared memory
  // per block for the forward and the backward, number of SMs)
  m.def("token_reduce_fwd(Tensor x, Tensor? w_score, Tensor? scores, Tensor? ln_weight, Tensor? ln_bias, "
        "Tensor? mask, float eps, bool pool_input, int fwd_smem, int n_sm) -> (Tensor, Tensor, Tensor)");
  m.def("token_reduce_bwd(Tensor d_out, Tensor out, Tensor x, Tensor? w_score, Tensor? scores, Tensor? ln_weight, "
        "Tensor? ln_bias, Tensor? mask, Tensor lse, float eps, bool pool_input, int bwd_smem, int n_sm) -> Tensor[]");
}
