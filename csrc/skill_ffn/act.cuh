// Activations of the skill FFN in fp32, value and derivative, selected at run time by the
// codes of act_codes.h (one kernel instantiation serves all of them; the switch is uniform across a
// block, so it costs a few scalar instructions per tile). Math of reference.py::activation_ref:
// gelu is the exact erf form (no fast-math anywhere in csrc/), gelu_tanh torch's tanh form.
#pragma once

#include "skill_ffn/act_codes.h"

namespace skillkern {
namespace ffn {

constexpr float kSqrt1_2 = 0.70710678118654752f;    // 1 / sqrt(2): gelu(erf)
constexpr float kInvSqrt2Pi = 0.39894228040143268f; // 1 / sqrt(2 pi): the normal pdf
constexpr float kTanhC = 0.79788456080286536f;      // sqrt(2 / pi): gelu(tanh)
constexpr float kTanhA = 0.044715f;

__device__ __forceinline__ float sigmoid(float z) { return 1.f / (1.f + expf(-z)); }

// act(z) for the one-input activations (swiglu, silu(gate) * up, combines two values: its
// callers use kSilu).
__device__ __forceinline__ float act_fwd(float z, int act) {
  switch (act) {
    case kGelu: return 0.5f * z * (1.f + erff(z * kSqrt1_2));
    case kGeluTanh: return 0.5f * z * (1.f + tanhf(kTanhC * (z + kTanhA * z * z * z)));
    case kRelu: return z > 0.f ? z : 0.f;
    case kIdentity: return z;
    default: return z * sigmoid(z);  // kSilu
  }
}

// d act / dz.
__device__ __forceinline__ float act_grad(float z, int act) {
  switch (act) {
    case kGelu: return 0.5f * (1.f + erff(z * kSqrt1_2)) + z * kInvSqrt2Pi * expf(-0.5f * z * z);
    case kGeluTanh: {
      const float t = tanhf(kTanhC * (z + kTanhA * z * z * z));
      return 0.5f * (1.f + t) + 0.5f * z * (1.f - t * t) * kTanhC * (1.f + 3.f * kTanhA * z * z);
    }
    case kRelu: return z > 0.f ? 1.f : 0.f;
    default: {  // kSilu
      const float s = sigmoid(z);
      return s * (1.f + z * (1.f - s));
    }
  }
}

}  // namespace ffn
}  // namespace skillkern
