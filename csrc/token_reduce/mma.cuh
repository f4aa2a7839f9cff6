// Device helpers of the token_reduce kernels: warp-level tensor-core tiles (mma.sync through
// ptx.cuh's mma_m16n8), their fragment loads and operand splitting.
//
// Tensor-core shapes (PTX ISA "mma.m16n8k16" / "mma.m16n8k8" fragment layouts), lane = 4 g + t:
//   fp16/bf16  m16n8k16: A regs a0..a3 = rows (g, g+8, g, g+8), k pairs (2t, 2t, 2t+8, 2t+8) (+1);
//                        B regs b0, b1 = k pairs (2t, 2t+8) (+1), column g
//   fp32       m16n8k8 (tf32): A regs = rows (g, g+8, g, g+8), k (t, t, t+4, t+4);
//                        B regs = k (t, t+4), column g
//   C (both): c0, c1 = row g, columns 2t, 2t+1; c2, c3 = row g+8, same columns. fp32 accumulate.
//
// Precision. Every product is accumulated in fp32. Operands that are exact in the storage type
// (x, d_out, and w_score when it has x's dtype and there is no LayerNorm) enter as they are;
// fp32 intermediates (softmax weights, d scores, ln_weight * w_score, ...) are split into
// hi + lo in the storage type, v = hi + lo + O(2^-16 |v|) for bf16, and multiplied as
// x*hi + x*lo (2 MMAs). fp32 inputs use 3xTF32 (a_hi b_hi + a_hi b_lo + a_lo b_hi, ~fp32
// accuracy) for every product: the same precision as the Triton backend's "ieee" fp32 dots
// up to fp32 summation order.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common.h"
#include "ptx.cuh"
#include "token_reduce/token_reduce.h"

namespace skillkern {
namespace tokred {

template <typename T>
struct Traits {  // 16-bit storage types
  static constexpr bool k16 = true;
  static constexpr int kK = 16;   // mma k per step
  static constexpr int kPad = 8;  // smem row padding (elements): conflict-free ldmatrix / 32-bit loads
  using Bits = uint16_t;          // split operands are stored as raw storage-type bits
};
template <>
struct Traits<float> {
  static constexpr bool k16 = false;
  static constexpr int kK = 8;
  static constexpr int kPad = 4;
  using Bits = uint32_t;          // tf32 bit patterns
};

// ----------------------------------------------------------------------------- scalar helpers

__device__ __forceinline__ float load_any(const void* p, int code, int64_t i) {
  switch (code) {
    case kF16: return __half2float(static_cast<const __half*>(p)[i]);
    case kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store_any(void* p, int code, int64_t i, float v) {
  switch (code) {
    case kF16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    case kBF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(p)[i] = v;
  }
}

__device__ __forceinline__ uint16_t bits_of(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ uint16_t bits_of(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
template <typename T>
__device__ __forceinline__ float f32_of_bits(uint16_t b);
template <>
__device__ __forceinline__ float f32_of_bits<__half>(uint16_t b) { return __half2float(__ushort_as_half(b)); }
template <>
__device__ __forceinline__ float f32_of_bits<__nv_bfloat16>(uint16_t b) {
  return __bfloat162float(__ushort_as_bfloat16(b));
}

// v = hi + lo (+ rounding of lo): hi = v rounded to the storage type, lo = the rest rounded.
// __fsub_rn keeps the compiler from contracting this differently at different call sites (the
// kernels rely on identical bits where the same value is split twice).
template <typename T>
__device__ __forceinline__ void split(float v, typename Traits<T>::Bits& hi, typename Traits<T>::Bits& lo) {
  if constexpr (Traits<T>::k16) {
    const T h = from_f32<T>(v);
    hi = bits_of(h);
    lo = bits_of(from_f32<T>(__fsub_rn(v, to_f32(h))));
  } else {
    hi = tf32_bits(v);
    lo = tf32_bits(__fsub_rn(v, __uint_as_float(hi)));
  }
}

// The value a split pair stands for (what the tensor cores multiply).
template <typename T>
__device__ __forceinline__ float joined(typename Traits<T>::Bits hi, typename Traits<T>::Bits lo) {
  if constexpr (Traits<T>::k16) {
    return __fadd_rn(f32_of_bits<T>(hi), f32_of_bits<T>(lo));
  } else {
    return __fadd_rn(__uint_as_float(hi), __uint_as_float(lo));
  }
}

__device__ __forceinline__ uint32_t pack16(uint16_t lo_elem, uint16_t hi_elem) {
  return uint32_t(lo_elem) | (uint32_t(hi_elem) << 16);  // lower k index in the low half
}

// ----------------------------------------------------------------------------- mma

// An A operand: hi (and lo for fp32 storage, where even x needs 3xTF32).
struct AFrag {
  uint32_t h[4];
  uint32_t l[4];
};
// A B operand split into hi + lo (lo unused when the operand is exact).
struct BFrag {
  uint32_t h[2];
  uint32_t l[2];
};

// An A fragment loaded from storage-type data (x): exact for 16-bit types, split for fp32.
template <typename T>
__device__ __forceinline__ AFrag a_from_storage(const uint32_t (&raw)[4]) {
  AFrag f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (Traits<T>::k16) {
      f.h[i] = raw[i];
      f.l[i] = 0u;
    } else {
      const float v = __uint_as_float(raw[i]);
      f.h[i] = tf32_bits(v);
      f.l[i] = tf32_bits(__fsub_rn(v, __uint_as_float(f.h[i])));
    }
  }
  return f;
}

// A B fragment from storage-type data: exact for 16-bit types (lo = 0), split for fp32.
template <typename T>
__device__ __forceinline__ BFrag b_from_storage(uint32_t r0, uint32_t r1) {
  BFrag f;
  if constexpr (Traits<T>::k16) {
    f.h[0] = r0; f.h[1] = r1; f.l[0] = 0u; f.l[1] = 0u;
  } else {
    f.h[0] = tf32_bits(__uint_as_float(r0));
    f.h[1] = tf32_bits(__uint_as_float(r1));
    f.l[0] = tf32_bits(__fsub_rn(__uint_as_float(r0), __uint_as_float(f.h[0])));
    f.l[1] = tf32_bits(__fsub_rn(__uint_as_float(r1), __uint_as_float(f.h[1])));
  }
  return f;
}

// c += a * b with a from storage (exact in 16-bit) and b split: small terms first.
template <typename T>
__device__ __forceinline__ void mma_xs(float (&c)[4], const AFrag& a, const BFrag& b, bool b_lo) {
  if constexpr (!Traits<T>::k16) mma_m16n8<T>(c, a.l, b.h[0], b.h[1]);
  if (b_lo) mma_m16n8<T>(c, a.h, b.l[0], b.l[1]);
  mma_m16n8<T>(c, a.h, b.h[0], b.h[1]);
}

// c += a * b with a split and b exact in the storage type (16-bit) or split (fp32 storage).
template <typename T>
__device__ __forceinline__ void mma_sx(float (&c)[4], const AFrag& a, const BFrag& b) {
  mma_m16n8<T>(c, a.l, b.h[0], b.h[1]);
  if constexpr (!Traits<T>::k16) mma_m16n8<T>(c, a.h, b.l[0], b.l[1]);
  mma_m16n8<T>(c, a.h, b.h[0], b.h[1]);
}

// c += a * b with both split (3 MMAs; b_lo = false when b is exact).
template <typename T>
__device__ __forceinline__ void mma_ss(float (&c)[4], const AFrag& a, const BFrag& b, bool b_lo) {
  mma_m16n8<T>(c, a.l, b.h[0], b.h[1]);
  if (b_lo) mma_m16n8<T>(c, a.h, b.l[0], b.l[1]);
  mma_m16n8<T>(c, a.h, b.h[0], b.h[1]);
}

// ----------------------------------------------------------------------------- fragment loads

// Raw A fragment of a 16 x kK tile whose element (m, k) is base[(m0 + m) * ld + k0 + k]
// (row-major; E = 2-byte or 4-byte elements). 16-bit: ldmatrix.x4, matrix q = lane / 8 holds
// rows m0 + 8 (q & 1), columns k0 + 8 (q >> 1). Needs 16-byte aligned rows (ld % 8 == 0).
template <bool k16>
__device__ __forceinline__ void load_a_row(uint32_t (&r)[4], const void* base, int ld, int m0, int k0, int lane) {
  if constexpr (k16) {
    const int q = lane >> 3, i = lane & 7;
    const uint16_t* p = static_cast<const uint16_t*>(base) + (m0 + i + 8 * (q & 1)) * ld + k0 + 8 * (q >> 1);
    ldmatrix_x4(r, p);
  } else {
    const uint32_t* p = static_cast<const uint32_t*>(base);
    const int g = lane >> 2, t = lane & 3;
    r[0] = p[(m0 + g) * ld + k0 + t];
    r[1] = p[(m0 + g + 8) * ld + k0 + t];
    r[2] = p[(m0 + g) * ld + k0 + t + 4];
    r[3] = p[(m0 + g + 8) * ld + k0 + t + 4];
  }
}

// Raw A fragment whose element (m, k) is base[(k0 + k) * ld + m0 + m] (the transpose of a
// row-major tile: x^T with features as rows). 16-bit: ldmatrix.x4.trans, matrix q holds stored
// rows k0 + 8 (q >> 1), stored columns m0 + 8 (q & 1).
template <bool k16>
__device__ __forceinline__ void load_a_trans(uint32_t (&r)[4], const void* base, int ld, int m0, int k0, int lane) {
  if constexpr (k16) {
    const int q = lane >> 3, i = lane & 7;
    const uint16_t* p = static_cast<const uint16_t*>(base) + (k0 + i + 8 * (q >> 1)) * ld + m0 + 8 * (q & 1);
    ldmatrix_x4_trans(r, p);
  } else {
    const uint32_t* p = static_cast<const uint32_t*>(base);
    const int g = lane >> 2, t = lane & 3;
    r[0] = p[(k0 + t) * ld + m0 + g];
    r[1] = p[(k0 + t) * ld + m0 + g + 8];
    r[2] = p[(k0 + t + 4) * ld + m0 + g];
    r[3] = p[(k0 + t + 4) * ld + m0 + g + 8];
  }
}

// Raw B fragment whose element (k, n) is base[(n0 + n) * ld + k0 + k] (each output column's
// k values contiguous). 16-bit: one 32-bit load per register (ld even).
template <bool k16>
__device__ __forceinline__ void load_b_nk(uint32_t& b0, uint32_t& b1, const void* base, int ld, int n0, int k0,
                                          int lane) {
  const int g = lane >> 2, t = lane & 3;
  if constexpr (k16) {
    const uint16_t* p = static_cast<const uint16_t*>(base) + (n0 + g) * ld + k0 + 2 * t;
    b0 = *reinterpret_cast<const uint32_t*>(p);
    b1 = *reinterpret_cast<const uint32_t*>(p + 8);
  } else {
    const uint32_t* p = static_cast<const uint32_t*>(base) + (n0 + g) * ld + k0 + t;
    b0 = p[0];
    b1 = p[4];
  }
}

// Raw B fragments of two adjacent n-tiles (n0, n0 + 8) whose element (k, n) is
// base[(k0 + k) * ld + n0 + n]. 16-bit: ldmatrix.x4.trans, matrix q holds stored rows
// k0 + 8 (q & 1), columns n0 + 8 (q >> 1): r = {b0, b1} of tile 0, then of tile 1.
template <bool k16>
__device__ __forceinline__ void load_b_kn_x2(uint32_t (&r)[4], const void* base, int ld, int n0, int k0, int lane) {
  if constexpr (k16) {
    const int q = lane >> 3, i = lane & 7;
    const uint16_t* p = static_cast<const uint16_t*>(base) + (k0 + i + 8 * (q & 1)) * ld + n0 + 8 * (q >> 1);
    ldmatrix_x4_trans(r, p);
  } else {
    const uint32_t* p = static_cast<const uint32_t*>(base);
    const int g = lane >> 2, t = lane & 3;
    r[0] = p[(k0 + t) * ld + n0 + g];
    r[1] = p[(k0 + t + 4) * ld + n0 + g];
    r[2] = p[(k0 + t) * ld + n0 + 8 + g];
    r[3] = p[(k0 + t + 4) * ld + n0 + 8 + g];
  }
}

// A split operand stored as hi / lo bit arrays with the same layout.
template <typename T>
__device__ __forceinline__ AFrag load_a_split(const typename Traits<T>::Bits* hi, const typename Traits<T>::Bits* lo,
                                              int ld, int m0, int k0, int lane) {
  AFrag f;
  load_a_row<Traits<T>::k16>(f.h, hi, ld, m0, k0, lane);
  load_a_row<Traits<T>::k16>(f.l, lo, ld, m0, k0, lane);
  return f;
}

template <typename T>
__device__ __forceinline__ BFrag load_b_split(const typename Traits<T>::Bits* hi, const typename Traits<T>::Bits* lo,
                                              int ld, int n0, int k0, int lane) {
  BFrag f;
  load_b_nk<Traits<T>::k16>(f.h[0], f.h[1], hi, ld, n0, k0, lane);
  load_b_nk<Traits<T>::k16>(f.l[0], f.l[1], lo, ld, n0, k0, lane);
  return f;
}

__device__ __forceinline__ BFrag bfrag_of(const uint4& v) {
  BFrag f;
  f.h[0] = v.x; f.h[1] = v.y; f.l[0] = v.z; f.l[1] = v.w;
  return f;
}

}  // namespace tokred
}  // namespace skillkern
