// The activation codes of the skill FFN: a runtime switch inside the GEMM epilogues, so one
// template instantiation serves all five. Torch-free, so that the CUTLASS translation unit
// (sm90_grouped.cu) shares them with the rest of csrc/skill_ffn.
#pragma once

namespace skillkern {
namespace ffn {

enum Act : int { kGelu = 0, kGeluTanh = 1, kRelu = 2, kSilu = 3, kSwiglu = 4 };

// Not a user activation: the sm_90 backward recomputes the pre-activation Z through the forward's
// GEMM1 epilogue with this code (act_fwd returns z).
constexpr int kIdentity = 5;

}  // namespace ffn
}  // namespace skillkern
