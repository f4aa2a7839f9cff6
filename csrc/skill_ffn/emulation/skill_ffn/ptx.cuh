// Host stand-in for csrc/skill_ffn/ptx.cuh (the CUDA-only primitives of the skill-FFN code),
// used by emulate.cc: each CUDA thread of a block runs as a std::thread, blocks one after the
// other. __syncthreads / __syncwarp are barriers, __shfl_xor_sync goes through a per-warp
// slot array, a cp.async copy lands only when a wait_group retires its group, __shared__
// arrays are function statics (blocks never run concurrently) and the dynamic shared memory is
// a fresh buffer per block filled with 0xff bytes (NaN in fp32/fp16/bf16), so reading shared
// memory that no thread wrote shows up as NaN in the results. Misuse the hardware would
// punish - a misaligned or out-of-range cp.async / wmma access, a partial warp mask - is
// recorded and raised after the launch.
#pragma once

#include <cuda_runtime_api.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace skillkern {
namespace ffn {
namespace emu {

constexpr size_t kMaxDynamicSmem = 227 * 1024;  // H100 opt-in limit per block (A100: 163 KB)

struct Block {
  explicit Block(int threads, size_t smem_bytes)
      : smem(smem_bytes + 128, 0xff), bytes(smem_bytes), bar(threads), slots(threads) {
    for (int w = 0; w < threads / 32; ++w) warp_bar.emplace_back(std::make_unique<std::barrier<>>(32));
  }
  std::vector<unsigned char> smem;  // dynamic shared memory (+ room to align it to 128 bytes)
  size_t bytes;
  std::barrier<> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
  std::vector<double> slots;  // __shfl_xor_sync exchange, one per thread
  unsigned char* base() {
    const uintptr_t p = reinterpret_cast<uintptr_t>(smem.data());
    return reinterpret_cast<unsigned char*>((p + 127) / 128 * 128);
  }
};

struct Thread {
  dim3 tid, bid, bdim, gdim;
  Block* block = nullptr;
};
inline thread_local Thread cur;

inline std::mutex& error_mutex() {
  static std::mutex m;
  return m;
}
inline std::string& first_error() {
  static std::string e;
  return e;
}
inline void fail(const std::string& msg) {
  std::lock_guard<std::mutex> lock(error_mutex());
  if (first_error().empty()) {
    first_error() = msg + " (block " + std::to_string(cur.bid.x) + "," + std::to_string(cur.bid.y) + ", thread " +
                    std::to_string(cur.tid.x) + ")";
  }
}

// [p, p + bytes) must lie inside this block's dynamic shared memory.
inline bool check_smem(const void* p, size_t bytes, const char* what) {
  const auto* c = static_cast<const unsigned char*>(p);
  unsigned char* b = cur.block->base();
  if (c < b || c + bytes > b + cur.block->bytes) {
    fail(std::string(what) + ": outside the dynamic shared memory");
    return false;
  }
  return true;
}

// cp.async is modelled as asynchronous: a copy lands only when a wait_group retires its
// group, so using a tile before waiting for it reads stale (or NaN-poisoned) shared memory.
struct PendingCopy {
  void* dst;
  const void* src;  // null: zero-fill
};
struct CopyQueue {
  std::vector<std::vector<PendingCopy>> committed;  // oldest first
  std::vector<PendingCopy> open;                    // issued since the last commit
};
inline thread_local CopyQueue copies;
inline void land(const std::vector<PendingCopy>& group) {
  for (const PendingCopy& c : group) {
    if (c.src != nullptr) {
      std::memcpy(c.dst, c.src, 16);
    } else {
      std::memset(c.dst, 0, 16);
    }
  }
}

// Runs body() as every thread of every block of the grid (1-d blocks).
template <class F>
void launch(dim3 grid, dim3 block, size_t smem_bytes, F&& body) {
  const int threads = int(block.x * block.y * block.z);
  if (threads % 32 != 0 || block.y != 1 || block.z != 1) {
    throw std::runtime_error("emulation: 1-d blocks of whole warps");
  }
  if (smem_bytes > kMaxDynamicSmem) throw std::runtime_error("emulation: dynamic shared memory over the limit");
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        Block blk(threads, smem_bytes);
        std::vector<std::thread> ts;
        ts.reserve(threads);
        for (int t = 0; t < threads; ++t) {
          ts.emplace_back([&, t] {
            cur.tid = dim3(t, 0, 0);
            cur.bid = dim3(x, y, z);
            cur.bdim = block;
            cur.gdim = grid;
            cur.block = &blk;
            copies = CopyQueue();
            body();
            if (!copies.open.empty() || !copies.committed.empty()) fail("cp.async copies never waited for");
          });
        }
        for (auto& th : ts) th.join();
        std::lock_guard<std::mutex> lock(error_mutex());
        if (!first_error().empty()) {
          const std::string e = first_error();
          first_error().clear();
          throw std::runtime_error("emulated kernel: " + e);
        }
      }
}

}  // namespace emu

inline void cp_async16(void* smem, const void* gmem, bool pred) {
  if (reinterpret_cast<uintptr_t>(smem) % 16 != 0) emu::fail("cp.async: shared address not 16-byte aligned");
  if (!emu::check_smem(smem, 16, "cp.async")) return;
  if (pred && reinterpret_cast<uintptr_t>(gmem) % 16 != 0) emu::fail("cp.async: global address not 16-byte aligned");
  emu::copies.open.push_back({smem, pred ? gmem : nullptr});
}
inline void cp_async_commit() {
  emu::copies.committed.push_back(std::move(emu::copies.open));
  emu::copies.open.clear();
}
template <int N>
inline void cp_async_wait() {  // all but the N most recent committed groups have landed
  auto& q = emu::copies.committed;
  while (q.size() > size_t(N)) {
    emu::land(q.front());
    q.erase(q.begin());
  }
}
inline void cp_async_wait_all() {  // commits the open copies too
  cp_async_commit();
  cp_async_wait<0>();
}
inline unsigned char* dynamic_smem() { return emu::cur.block->base(); }

template <typename Kernel>
inline void set_max_dynamic_smem(Kernel, int bytes) {
  if (size_t(bytes) > emu::kMaxDynamicSmem) throw std::runtime_error("emulation: shared memory request over the limit");
}

}  // namespace ffn
}  // namespace skillkern

#define threadIdx (::skillkern::ffn::emu::cur.tid)
#define blockIdx (::skillkern::ffn::emu::cur.bid)
#define blockDim (::skillkern::ffn::emu::cur.bdim)
#define gridDim (::skillkern::ffn::emu::cur.gdim)
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)

inline void __syncthreads() { ::skillkern::ffn::emu::cur.block->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) ::skillkern::ffn::emu::fail("__syncwarp: partial mask");
  ::skillkern::ffn::emu::cur.block->warp_bar[threadIdx.x / 32]->arrive_and_wait();
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  namespace emu = ::skillkern::ffn::emu;
  if (mask != 0xffffffffu) emu::fail("__shfl_xor_sync: partial mask");
  emu::Block* b = emu::cur.block;
  const unsigned t = threadIdx.x;
  b->slots[t] = double(v);
  __syncwarp();
  const T r = T(b->slots[(t & ~31u) | ((t & 31u) ^ unsigned(lane_mask))]);
  __syncwarp();
  return r;
}

#define SKILLKERN_FFN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::skillkern::ffn::emu::launch(dim3(grid), dim3(block), (smem), [&] { kernel(__VA_ARGS__); })
