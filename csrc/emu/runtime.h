// The CPU emulation of the CUDA execution model that runs skillkern's kernels as host code
// (csrc/emu/README in csrc/README.md). Every CUDA thread of a block is a fiber (ucontext) on one
// OS thread; a fiber runs until it reaches a barrier (__syncthreads, __syncwarp or a warp
// collective: shuffle, ldmatrix, mma), then the scheduler resumes the next one, in an order
// drawn from a seeded generator each round. A read of shared memory that no barrier orders after
// its write therefore gives seed-dependent results, and the tests run every case under two seeds
// and compare the bits. A round in which no fiber reaches a barrier or finishes is a deadlock (a
// __syncthreads in divergent code, a collective with missing lanes): reported as an error.
// Threads that return leave the barriers, as on the GPU.
//
// Blocks run one after the other. Dynamic shared memory is an exactly sized heap buffer filled
// with 0xff bytes (NaN in fp32 / fp16 / bf16, -1 in integers), so reading what no thread wrote
// shows up in the results, and AddressSanitizer sees overflows. cp.async copies land either when
// issued or only at the wait that retires their group (Config::copies_at_issue): the two extremes
// of the hardware's timing. Misuse the hardware punishes (a misaligned cp.async / ldmatrix /
// wmma address, an access outside the dynamic shared memory, a partial warp mask, copies never
// waited for) is recorded, and launch() throws it with the block and thread.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <ucontext.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <new>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SKILLKERN_EMU_ASAN 1
#endif

namespace skillkern {
namespace emu {

// sharedMemPerBlockOptin of an H100 (an A100 has 163 KB): the most a launch may ask for.
constexpr size_t kMaxDynamicSmem = 227 * 1024;
constexpr size_t kStackBytes = 512 * 1024;  // per fiber; ASan's redzones need the room

struct Config {
  uint64_t seed = 1;             // the thread schedule
  bool copies_at_issue = false;  // cp.async lands when issued (else at the wait that retires it)
  // Bugs the tests inject to show that the checks catch them (0 / -1 / false: none):
  int wait_short = 0;         // every cp.async wait leaves this many more groups in flight
  bool no_zero_fill = false;  // a predicated-off cp.async leaves the destination as it was
  int64_t drop_barrier = -1;  // the n-th __syncthreads of every thread of a block is left out
};
inline Config& config() {
  static Config c;
  return c;
}

inline dim3 g_thread, g_block_idx, g_block_dim, g_grid_dim;

inline std::string& first_error() {
  static std::string e;
  return e;
}
inline void fail(const std::string& what) {
  if (first_error().empty()) {
    first_error() = what + " (block " + std::to_string(g_block_idx.x) + "," + std::to_string(g_block_idx.y) +
                    ", thread " + std::to_string(g_thread.x) + ")";
  }
}

struct PendingCopy {
  void* dst;
  const void* src;  // null: zero-fill
};
inline void land(const PendingCopy& c) {
  if (c.src != nullptr) {
    std::memcpy(c.dst, c.src, 16);
  } else {
    std::memset(c.dst, 0, 16);
  }
}

struct Fiber {
  ucontext_t ctx;
  bool done = false;
  int64_t barriers = 0;  // __syncthreads calls so far (Config::drop_barrier)
  std::vector<std::vector<PendingCopy>> committed;  // cp.async groups, oldest first
  std::vector<PendingCopy> open;                    // issued since the last commit
};

struct Block {
  int nthreads = 0;
  int alive = 0;
  std::vector<Fiber> fibers;
  ucontext_t sched;
  int cur = -1;
  int block_arrived = 0;
  uint64_t block_gen = 0;
  std::vector<int> warp_arrived, warp_alive;
  std::vector<uint64_t> warp_gen;
  uint64_t progress = 0;
  unsigned char* smem = nullptr;
  size_t smem_bytes = 0;
  std::vector<std::array<uint64_t, 8>> xchg;  // per thread: values published to its warp
  const std::function<void()>* body = nullptr;
};
inline Block* g_block = nullptr;

inline std::vector<std::vector<char>>& stacks() {
  static std::vector<std::vector<char>> s;
  return s;
}

inline void switch_to(ucontext_t* from, ucontext_t* to, const void* to_stack, size_t to_size) {
#ifdef SKILLKERN_EMU_ASAN
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
  switch_to(&B.fibers[B.cur].ctx, &B.sched, nullptr, 0);  // the scheduler runs on the caller's stack
  g_thread.x = static_cast<unsigned>(B.cur);
}

// Completes a barrier generation whose remaining members have all arrived.
inline void release_if_complete(int& arrived, int members, uint64_t& gen) {
  if (arrived > 0 && arrived >= members) {
    arrived = 0;
    ++gen;
  }
}

inline void trampoline() {
#ifdef SKILLKERN_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  Block& B = *g_block;
  (*B.body)();
  Fiber& f = B.fibers[B.cur];
  for (const auto& group : f.committed)
    if (!group.empty()) fail("cp.async copies never waited for");
  if (!f.open.empty()) fail("cp.async copies never committed");
  f.done = true;
  ++B.progress;
  const int w = B.cur / 32;
  --B.alive;
  --B.warp_alive[w];
  release_if_complete(B.block_arrived, B.alive, B.block_gen);
  release_if_complete(B.warp_arrived[w], B.warp_alive[w], B.warp_gen[w]);
  yield();
}

inline void syncthreads() {
  Block& B = *g_block;
  if (B.fibers[B.cur].barriers++ == config().drop_barrier) return;
  const uint64_t gen = B.block_gen;
  ++B.progress;
  ++B.block_arrived;
  release_if_complete(B.block_arrived, B.alive, B.block_gen);
  while (B.block_gen == gen) yield();
}

inline void syncwarp(unsigned mask) {
  if (mask != 0xffffffffu) fail("__syncwarp / warp collective with a partial mask");
  Block& B = *g_block;
  const int w = static_cast<int>(g_thread.x) / 32;
  const uint64_t gen = B.warp_gen[w];
  ++B.progress;
  ++B.warp_arrived[w];
  release_if_complete(B.warp_arrived[w], B.warp_alive[w], B.warp_gen[w]);
  while (B.warp_gen[w] == gen) yield();
}

// Runs body() as every thread of the current block (g_block_idx set by launch()).
inline void run_block(int nthreads, size_t smem_bytes, const std::function<void()>& body, std::mt19937_64& rng) {
  Block B;
  B.nthreads = B.alive = nthreads;
  B.fibers.resize(nthreads);
  const int warps = (nthreads + 31) / 32;
  B.warp_arrived.assign(warps, 0);
  B.warp_gen.assign(warps, 0);
  B.warp_alive.assign(warps, 32);
  B.warp_alive.back() = nthreads - 32 * (warps - 1);
  // exactly sized (AddressSanitizer sees the first byte past it), 128-byte aligned
  B.smem_bytes = smem_bytes;
  B.smem = static_cast<unsigned char*>(::operator new(std::max<size_t>(smem_bytes, 1), std::align_val_t(128)));
  std::memset(B.smem, 0xff, smem_bytes);
  B.xchg.resize(nthreads);
  B.body = &body;
  auto& st = stacks();
  if (st.size() < static_cast<size_t>(nthreads)) st.resize(nthreads);
  for (int i = 0; i < nthreads; ++i) {
    if (st[i].size() != kStackBytes) st[i].assign(kStackBytes, 0);
    getcontext(&B.fibers[i].ctx);
    B.fibers[i].ctx.uc_stack.ss_sp = st[i].data();
    B.fibers[i].ctx.uc_stack.ss_size = kStackBytes;
    B.fibers[i].ctx.uc_link = nullptr;
    makecontext(&B.fibers[i].ctx, trampoline, 0);
  }
  g_block = &B;
  std::vector<int> order(nthreads);
  std::iota(order.begin(), order.end(), 0);
  bool deadlock = false;
  for (;;) {
    std::shuffle(order.begin(), order.end(), rng);
    const uint64_t before = B.progress;
    bool all_done = true;
    for (int i : order) {
      if (B.fibers[i].done) continue;
      all_done = false;
      B.cur = i;
      g_thread.x = static_cast<unsigned>(i);
      switch_to(&B.sched, &B.fibers[i].ctx, st[i].data(), kStackBytes);
    }
    if (all_done) break;
    if (B.progress == before) {
      deadlock = true;  // the suspended fibers are abandoned (their stacks are reused)
      break;
    }
  }
  g_block = nullptr;
  ::operator delete(B.smem, std::align_val_t(128));
  if (deadlock) {
    g_thread.x = 0;
    fail("deadlock: a barrier or warp collective that not every thread reaches");
  }
}

// Runs body() as every thread of every block of the grid; throws the first recorded error.
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body) {
  if (block.y != 1 || block.z != 1) throw std::runtime_error("emulation: 1-d blocks only");
  if (smem_bytes > kMaxDynamicSmem) {
    throw std::runtime_error("emulation: " + std::to_string(smem_bytes) + " bytes of dynamic shared memory "
                             "is over the per-block limit");
  }
  std::mt19937_64 rng(config().seed);
  g_grid_dim = grid;
  g_block_dim = block;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        g_block_idx = dim3(x, y, z);
        run_block(static_cast<int>(block.x), smem_bytes, body, rng);
        if (!first_error().empty()) {
          const std::string e = first_error();
          first_error().clear();
          throw std::runtime_error("emulated kernel: " + e);
        }
      }
}

// [p, p + bytes) must lie inside this block's dynamic shared memory.
inline bool check_smem(const void* p, size_t bytes, const char* what) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < g_block->smem || c + bytes > g_block->smem + g_block->smem_bytes) {
    fail(std::string(what) + ": outside the dynamic shared memory");
    return false;
  }
  return true;
}

// ----------------------------------------------------------------------------- cp.async

inline void cp_async16(void* smem, const void* gmem, bool pred) {
  if (reinterpret_cast<uintptr_t>(smem) % 16 != 0) fail("cp.async: shared address not 16-byte aligned");
  if (pred && reinterpret_cast<uintptr_t>(gmem) % 16 != 0) fail("cp.async: global address not 16-byte aligned");
  if (!check_smem(smem, 16, "cp.async")) return;
  const PendingCopy c{smem, pred ? gmem : nullptr};
  if (!pred && config().no_zero_fill) return;
  if (config().copies_at_issue) {
    land(c);
  } else {
    g_block->fibers[g_block->cur].open.push_back(c);
  }
}
inline void cp_async_commit() {
  Fiber& f = g_block->fibers[g_block->cur];
  f.committed.push_back(std::move(f.open));
  f.open.clear();
}
inline void cp_async_wait(size_t pending) {
  auto& q = g_block->fibers[g_block->cur].committed;
  pending += static_cast<size_t>(config().wait_short);
  while (q.size() > pending) {
    for (const PendingCopy& c : q.front()) land(c);
    q.erase(q.begin());
  }
}

// ----------------------------------------------------------------------------- warp exchange

inline int lane_id() { return static_cast<int>(g_thread.x) & 31; }
inline int warp_base() { return static_cast<int>(g_thread.x) & ~31; }
inline std::array<uint64_t, 8>& slots(int tid) { return g_block->xchg[tid]; }

template <typename V>
uint64_t to_u64(V v) {
  static_assert(sizeof(V) <= 8, "at most 8-byte shuffles");
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
V shfl_xor(unsigned mask, V v, int lane_mask) {
  slots(static_cast<int>(g_thread.x))[0] = to_u64(v);
  syncwarp(mask);
  const V r = from_u64<V>(slots(warp_base() + (lane_id() ^ lane_mask))[0]);
  syncwarp(mask);
  return r;
}

// ----------------------------------------------------------------------------- tensor cores
// From the PTX ISA's fragment layouts (lane = 4 g + t), as token_reduce/mma.cuh documents them.

inline uint32_t tf32_rna(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  if ((b & 0x7f800000u) == 0x7f800000u) return b;  // inf / nan as they are
  return (b + 0x1000u) & 0xffffe000u;              // round to nearest, ties away, 10-bit mantissa
}

// ldmatrix.m8n8.x4: lanes 8q..8q+7 give the row addresses of matrix q (8 b16 each).
// Non-trans: lane l gets row l/4, elements 2(l%4), 2(l%4)+1; trans: the elements (2(l%4), l/4)
// and (2(l%4)+1, l/4). Lower index in the low half.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("ldmatrix: row address not 16-byte aligned");
  check_smem(p, 16, "ldmatrix");
  slots(static_cast<int>(g_thread.x))[0] = reinterpret_cast<uint64_t>(p);
  syncwarp(0xffffffffu);
  const int lane = lane_id(), base = warp_base();
  const int g = lane >> 2, t = lane & 3;
  for (int q = 0; q < 4; ++q) {
    auto row = [&](int i) { return reinterpret_cast<const uint16_t*>(slots(base + 8 * q + i)[0]); };
    const uint16_t lo = trans ? row(2 * t)[g] : row(g)[2 * t];
    const uint16_t hi = trans ? row(2 * t + 1)[g] : row(g)[2 * t + 1];
    r[q] = uint32_t(lo) | (uint32_t(hi) << 16);
  }
  syncwarp(0xffffffffu);
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

// mma.sync.aligned.m16n8k16 (f16 / bf16) or m16n8k8 (tf32), row.col, f32 accumulate; the
// products are summed exactly (double) and rounded once.
template <typename T>
void mma_m16n8(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  auto& mine = slots(static_cast<int>(g_thread.x));
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b0;
  mine[5] = b1;
  syncwarp(0xffffffffu);
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
  syncwarp(0xffffffffu);
  for (int j = 0; j < 4; ++j) c[j] = d[j];
}

}  // namespace emu
}  // namespace skillkern
