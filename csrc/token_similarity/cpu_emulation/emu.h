// CPU emulation of the CUDA features the token-similarity kernels use, so that their actual
// source (host-compilable copies made by run.py) runs under ASan/UBSan/TSan on a GPU-less
// machine:
//   - a block = 256 real threads; __syncthreads / __syncwarp = std::barrier (threads that
//     return drop out, as on the GPU); a __syncthreads in divergent code deadlocks here;
//   - __shfl_xor_sync through a per-warp exchange between two warp barriers;
//   - cp.async: each copy is done either when issued or only at the cp.async.wait_group that
//     retires its group (the two extremes of the hardware's timing; run.py runs both);
//   - dynamic shared memory = an exactly sized heap buffer filled with 0xff (ASan sees
//     overflows; an uninitialised float reads as NaN);
//   - wmma 16x16x16 fragments with the documented semantics (load/store with ldm and
//     row/col-major layouts, fp32 accumulation in k order); the hardware's fragment layout is
//     opaque and not modelled, so this checks how the kernels address tiles, not the MMA unit.
// Not modelled: timing, bank conflicts, the memory model beyond barrier ordering.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>
#include <algorithm>
#include "common.h"  // the stub run.py writes next to the generated sources

// The CUDA headers (for __half / __nv_bfloat16) define these for nvcc; plain C++ here.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __restrict__
#undef __shared__
#undef __align__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__
#define __align__(n) alignas(n)

struct EmuDim { unsigned x = 0, y = 0, z = 0; };
inline thread_local EmuDim threadIdx;
inline EmuDim blockIdx;
// uint4, make_uint4, cudaStream_t: from the CUDA headers (host-usable)

struct EmuBlock {
  std::barrier<> block_bar{256};
  std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
  alignas(16) unsigned char slots[8][32][8];
  EmuBlock() { for (int w = 0; w < 8; ++w) warp_bar.emplace_back(new std::barrier<>(32)); }
};
inline EmuBlock* g_block = nullptr;
inline unsigned char* emu_smem = nullptr;
inline void __syncthreads() { g_block->block_bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { g_block->warp_bar[threadIdx.x / 32]->arrive_and_wait(); }
template <class V>
V __shfl_xor_sync(unsigned, V v, int o) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  std::memcpy(g_block->slots[w][l], &v, sizeof(V));
  __syncwarp();
  V r;
  std::memcpy(&r, g_block->slots[w][l ^ o], sizeof(V));
  __syncwarp();
  return r;
}

struct EmuCopy { void* dst; const void* src; };
inline thread_local std::vector<std::vector<EmuCopy>> t_groups;
inline thread_local std::vector<EmuCopy> t_current;
inline int g_copy_at_wait = 1;
inline void emu_cp_async16(void* d, const void* s) {
  if (!g_copy_at_wait) std::memcpy(d, s, 16);
  else t_current.push_back({d, s});
}
inline void emu_cp_async_commit() { t_groups.push_back(std::move(t_current)); t_current.clear(); }
inline void emu_cp_async_wait(int n) {
  while (static_cast<int>(t_groups.size()) > n) {
    for (auto& c : t_groups.front()) std::memcpy(c.dst, c.src, 16);
    t_groups.erase(t_groups.begin());
  }
}

struct EmuWarpScratch { float A[8][256]; float B[8][256]; };
inline EmuWarpScratch* g_wmma = nullptr;
namespace nvcuda { namespace wmma {
struct accumulator {}; struct matrix_a {}; struct matrix_b {}; struct row_major {}; struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
// A lane holds elements e = lane * 8 + i (i < 8) of the logical 16 x 16 tile, (e / 16, e % 16).
template <class Use, int M, int N, int K, class T, class L = void>
struct fragment { T x[8]; };
template <class F, class V> void fill_fragment(F& f, V v) { for (auto& e : f.x) e = v; }
template <class Use, class T, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
  const int lane = threadIdx.x % 32;
  for (int i = 0; i < 8; ++i) {
    const int e = lane * 8 + i, r = e / 16, c = e % 16;
    f.x[i] = std::is_same<L, row_major>::value ? p[r * ldm + c] : p[c * ldm + r];
  }
}
template <class T, class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = 0; i < 8; ++i) {
    g_wmma->A[w][lane * 8 + i] = skillkern::to_f32(a.x[i]);
    g_wmma->B[w][lane * 8 + i] = skillkern::to_f32(b.x[i]);
  }
  __syncwarp();
  float out[8];
  for (int i = 0; i < 8; ++i) {
    const int e = lane * 8 + i, r = e / 16, col = e % 16;
    float acc = c.x[i];
    for (int k = 0; k < 16; ++k) acc = std::fma(g_wmma->A[w][r * 16 + k], g_wmma->B[w][k * 16 + col], acc);
    out[i] = acc;
  }
  __syncwarp();
  for (int i = 0; i < 8; ++i) d.x[i] = out[i];
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  const int lane = threadIdx.x % 32;
  for (int i = 0; i < 8; ++i) {
    const int e = lane * 8 + i, r = e / 16, c = e % 16;
    if (l == mem_row_major) p[r * ldm + c] = f.x[i]; else p[c * ldm + r] = f.x[i];
  }
}
}}

// Runs body() on 256 threads per block for blocks 0..grid-1, one block at a time. The 256
// threads are created once per launch and meet the launching thread at a pool barrier before
// and after every block (which also orders the block's setup and teardown for TSan).
template <class F>
void emu_launch(unsigned grid, size_t smem_bytes, F body) {
  if (grid == 0) return;
  std::barrier<> pool(257);
  std::unique_ptr<EmuBlock> blk;
  std::unique_ptr<EmuWarpScratch> wscr;
  std::vector<std::thread> th;
  th.reserve(256);
  for (unsigned t = 0; t < 256; ++t) {
    th.emplace_back([&, t] {
      threadIdx.x = t;
      for (unsigned b = 0; b < grid; ++b) {
        pool.arrive_and_wait();  // the block is set up
        t_groups.clear();
        t_current.clear();
        body();
        // whatever is still pending must be empty groups
        for (auto& g : t_groups)
          if (!g.empty()) { std::fprintf(stderr, "EMU: cp.async copies never waited for\n"); std::abort(); }
        if (!t_current.empty()) { std::fprintf(stderr, "EMU: cp.async copies never committed\n"); std::abort(); }
        blk->warp_bar[t / 32]->arrive_and_drop();  // a returned thread leaves the barriers
        blk->block_bar.arrive_and_drop();
        pool.arrive_and_wait();  // the block is done
      }
    });
  }
  for (unsigned b = 0; b < grid; ++b) {
    blockIdx.x = b;
    blk.reset(new EmuBlock());
    wscr.reset(new EmuWarpScratch());
    g_block = blk.get();
    g_wmma = wscr.get();
    void* sm = nullptr;
    if (smem_bytes) {
      sm = std::malloc(smem_bytes);
      std::memset(sm, 0xff, smem_bytes);  // NaN floats, -1 ints: uninitialised reads show up
    }
    emu_smem = static_cast<unsigned char*>(sm);
    pool.arrive_and_wait();
    pool.arrive_and_wait();
    std::free(sm);
  }
  for (auto& x : th) x.join();
}
