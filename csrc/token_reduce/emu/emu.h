// CPU emulation of the CUDA execution model, just enough to run the token_reduce kernels as
// host code (SKILLKERN_TOKRED_EMU, see mma.cuh) on a machine without a GPU.
//
// Every CUDA thread of a block is a fiber (ucontext) on one OS thread; fibers run until they
// reach a barrier (__syncthreads, __syncwarp, or a warp collective: shuffle, ldmatrix, mma),
// then the scheduler resumes the next one, in a seeded random order, so that a read of shared
// memory that is not ordered by a barrier after the write gives seed-dependent results. A round
// in which no fiber reaches a barrier or finishes is a deadlock (a __syncthreads in divergent
// code, a warp collective with missing lanes): reported and aborted.
//
// The PTX operations are emulated from the PTX ISA's fragment layouts (the same ones mma.cuh
// documents), with checks: ldmatrix rows and cp.async addresses must be 16-byte aligned.
// Build with -ffp-contract=off so that fp32 arithmetic rounds like the GPU's non-fused ops,
// and with -fsanitize=address to catch out-of-bounds accesses (buffers are exact-size heap
// allocations, shared memory included).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <ucontext.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#endif

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

using std::max;  // device code's integer min / max
using std::min;

namespace emu {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline Dim3 g_threadIdx, g_blockIdx, g_blockDim, g_gridDim;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "emu: %s (block %u, thread %u)\n", what, g_blockIdx.x, g_threadIdx.x);
  std::abort();
}

struct Fiber {
  ucontext_t ctx;
  bool done = false;
};

struct Block {
  int nthreads = 0;
  std::vector<Fiber> fibers;
  std::vector<std::vector<char>>* stacks = nullptr;
  ucontext_t sched;
  int cur = -1;
  int block_arrived = 0;
  uint64_t block_gen = 0;
  std::vector<int> warp_arrived;
  std::vector<uint64_t> warp_gen;
  uint64_t progress = 0;
  std::vector<unsigned char> smem;
  std::vector<std::array<uint64_t, 8>> xchg;  // per thread: values published to its warp
  const std::function<void()>* body = nullptr;
#ifdef EMU_ASAN
  void* fake_stack = nullptr;
#endif
};
inline Block* g_block = nullptr;

inline size_t kStackBytes = 512 * 1024;

inline void switch_to(ucontext_t* from, ucontext_t* to, const void* to_stack, size_t to_size) {
#ifdef EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, to_stack, to_size);
  swapcontext(from, to);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)to_stack;
  (void)to_size;
  swapcontext(from, to);
#endif
}

inline void yield() {
  Block& B = *g_block;
  // back to the scheduler's (main) stack: size unknown to us, ASan accepts null there
  switch_to(&B.fibers[B.cur].ctx, &B.sched, nullptr, 0);
  g_threadIdx.x = static_cast<unsigned>(B.cur);
}

inline void trampoline() {
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  Block& B = *g_block;
  (*B.body)();
  B.fibers[B.cur].done = true;
  ++B.progress;
  yield();
  fail("finished fiber resumed");
}

inline void syncthreads() {
  Block& B = *g_block;
  const uint64_t gen = B.block_gen;
  ++B.progress;
  if (++B.block_arrived == B.nthreads) {
    B.block_arrived = 0;
    ++B.block_gen;
    return;
  }
  while (B.block_gen == gen) yield();
}

inline void syncwarp() {
  Block& B = *g_block;
  const int w = static_cast<int>(g_threadIdx.x) / 32;
  const int size = std::min(32, B.nthreads - 32 * w);
  const uint64_t gen = B.warp_gen[w];
  ++B.progress;
  if (++B.warp_arrived[w] == size) {
    B.warp_arrived[w] = 0;
    ++B.warp_gen[w];
    return;
  }
  while (B.warp_gen[w] == gen) yield();
}

// Runs body() as every thread of one block. order: fibers are resumed in a random order drawn
// from rng each round.
inline void run_block(int nthreads, size_t smem_bytes, const std::function<void()>& body, std::mt19937_64& rng,
                      std::vector<std::vector<char>>& stacks) {
  Block B;
  B.nthreads = nthreads;
  B.fibers.resize(nthreads);
  B.stacks = &stacks;
  B.warp_arrived.assign((nthreads + 31) / 32, 0);
  B.warp_gen.assign((nthreads + 31) / 32, 0);
  B.smem.assign(smem_bytes, 0xA5);  // poison: uninitialised shared memory reads give garbage
  for (size_t i = 0; i < smem_bytes; i += 4) {
    const uint32_t nan_bits = 0x7fc0dead;  // ... NaNs when read as fp32
    std::memcpy(B.smem.data() + i, &nan_bits, std::min<size_t>(4, smem_bytes - i));
  }
  B.xchg.resize(nthreads);
  B.body = &body;
  if (stacks.size() < static_cast<size_t>(nthreads)) stacks.resize(nthreads);
  for (int i = 0; i < nthreads; ++i) {
    if (stacks[i].size() != kStackBytes) stacks[i].assign(kStackBytes, 0);
    getcontext(&B.fibers[i].ctx);
    B.fibers[i].ctx.uc_stack.ss_sp = stacks[i].data();
    B.fibers[i].ctx.uc_stack.ss_size = kStackBytes;
    B.fibers[i].ctx.uc_link = nullptr;
    makecontext(&B.fibers[i].ctx, trampoline, 0);
  }
  Block* saved = g_block;
  g_block = &B;
  g_blockDim.x = static_cast<unsigned>(nthreads);
  std::vector<int> order(nthreads);
  std::iota(order.begin(), order.end(), 0);
  for (;;) {
    std::shuffle(order.begin(), order.end(), rng);
    const uint64_t before = B.progress;
    bool all_done = true;
    for (int i : order) {
      if (B.fibers[i].done) continue;
      all_done = false;
      B.cur = i;
      g_threadIdx.x = static_cast<unsigned>(i);
      switch_to(&B.sched, &B.fibers[i].ctx, stacks[i].data(), kStackBytes);
    }
    if (all_done) break;
    if (B.progress == before) {
      g_threadIdx.x = 0;
      fail("deadlock: a barrier or warp collective that not every thread reaches");
    }
  }
  g_block = saved;
}

inline unsigned char* dynamic_smem() { return g_block->smem.data(); }

// ----------------------------------------------------------------------------- warp exchange

inline int lane_id() { return static_cast<int>(g_threadIdx.x) & 31; }
inline int warp_base() { return static_cast<int>(g_threadIdx.x) & ~31; }
inline std::array<uint64_t, 8>& slots(int tid) { return g_block->xchg[tid]; }

template <typename V>
uint64_t to_u64(V v) {
  static_assert(sizeof(V) <= 8, "");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(V));
  return u;
}
template <typename V>
V from_u64(uint64_t u) {
  V v;
  std::memcpy(&v, &u, sizeof(V));
  return v;
}

template <typename V>
V shfl_xor(V v, int offset) {
  const int tid = static_cast<int>(g_threadIdx.x);
  slots(tid)[0] = to_u64(v);
  syncwarp();
  const V r = from_u64<V>(slots(warp_base() + (lane_id() ^ offset))[0]);
  syncwarp();
  return r;
}

inline void copy16(void* dst, const void* src) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    fail("cp.async 16 with an address that is not 16-byte aligned");
  }
  std::memcpy(dst, src, 16);
}

inline uint32_t tf32_rna(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  if ((b & 0x7f800000u) == 0x7f800000u) return b;  // inf / nan as they are
  return (b + 0x1000u) & 0xffffe000u;              // round to nearest, ties away, 10-bit mantissa
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lanes 8q..8q+7 give the row addresses of
// matrix q (8 b16 each). Non-trans: lane l gets row l/4, elements 2(l%4), 2(l%4)+1; trans: the
// elements (2(l%4), l/4) and (2(l%4)+1, l/4). Lower index in the low half.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("ldmatrix row address not 16-byte aligned");
  const int tid = static_cast<int>(g_threadIdx.x);
  slots(tid)[0] = reinterpret_cast<uint64_t>(p);
  syncwarp();
  const int lane = lane_id(), base = warp_base();
  const int g = lane >> 2, t = lane & 3;
  for (int q = 0; q < 4; ++q) {
    auto row = [&](int i) { return reinterpret_cast<const uint16_t*>(slots(base + 8 * q + i)[0]); };
    uint16_t lo, hi;
    if (!trans) {
      lo = row(g)[2 * t];
      hi = row(g)[2 * t + 1];
    } else {
      lo = row(2 * t)[g];
      hi = row(2 * t + 1)[g];
    }
    r[q] = uint32_t(lo) | (uint32_t(hi) << 16);
  }
  syncwarp();
}

template <typename T>
float elem16(uint32_t reg, int half) {
  const uint16_t b = static_cast<uint16_t>(half ? reg >> 16 : reg & 0xffffu);
  if constexpr (std::is_same<T, __half>::value) {
    return __half2float(__ushort_as_half(b));
  } else {
    return __bfloat162float(__ushort_as_bfloat16(b));
  }
}

inline float tf32_val(uint32_t reg) {
  const uint32_t b = reg & 0xffffe000u;  // the tensor cores read 19 bits
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// mma.sync.aligned.m16n8k16 (f16 / bf16) or m16n8k8 (tf32), row.col, f32 accumulate.
template <typename T>
void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const int tid = static_cast<int>(g_threadIdx.x);
  auto& mine = slots(tid);
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b0;
  mine[5] = b1;
  syncwarp();
  const int lane = lane_id(), base = warp_base();
  const int g = lane >> 2, t = lane & 3;
  constexpr bool k16 = !std::is_same<T, float>::value;
  constexpr int K = k16 ? 16 : 8;
  auto A = [&](int row, int k) -> float {
    if constexpr (k16) {
      const int reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
      const int kk = k & 7;
      return elem16<T>(static_cast<uint32_t>(slots(base + (row & 7) * 4 + (kk >> 1))[reg]), kk & 1);
    } else {
      const int reg = (row >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0);
      return tf32_val(static_cast<uint32_t>(slots(base + (row & 7) * 4 + (k & 3))[reg]));
    }
  };
  auto Bm = [&](int k, int n) -> float {
    if constexpr (k16) {
      const int reg = 4 + (k >= 8 ? 1 : 0);
      const int kk = k & 7;
      return elem16<T>(static_cast<uint32_t>(slots(base + n * 4 + (kk >> 1))[reg]), kk & 1);
    } else {
      const int reg = 4 + (k >= 4 ? 1 : 0);
      return tf32_val(static_cast<uint32_t>(slots(base + n * 4 + (k & 3))[reg]));
    }
  };
  float d[4];
  for (int j = 0; j < 4; ++j) {
    const int row = g + 8 * (j >> 1), col = 2 * t + (j & 1);
    double s = c[j];
    for (int k = 0; k < K; ++k) s += double(A(row, k)) * double(Bm(k, col));
    d[j] = static_cast<float>(s);
  }
  syncwarp();
  for (int j = 0; j < 4; ++j) c[j] = d[j];
}

}  // namespace emu

// ----------------------------------------------------------------------------- CUDA builtins

#define threadIdx (::emu::g_threadIdx)
#define blockIdx (::emu::g_blockIdx)
#define blockDim (::emu::g_blockDim)
#define gridDim (::emu::g_gridDim)

inline void __syncthreads() { ::emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::emu::syncwarp(); }
inline float __shfl_xor_sync(unsigned, float v, int offset) { return ::emu::shfl_xor(v, offset); }
template <typename V>
inline V __ldg(const V* p) { return *p; }
inline float __int_as_float(int v) { return ::emu::from_u64<float>(static_cast<uint32_t>(v)); }
inline float __uint_as_float(unsigned v) { return ::emu::from_u64<float>(v); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
