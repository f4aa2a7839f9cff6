// CUDA kernels of skill_route (see route.h for the contract): a deterministic,
// stable counting sort in three phases, all on the current stream with no host sync.
//
//   1. _route_hist_kernel: block t counts the buckets of its tile of kTile slots
//      -> tile_counts[b * num_tiles + t] (bucket-major).
//   2. exclusive scan of tile_counts in that bucket-major order (3 small kernels). The result
//      at (b, t) is the first sorted position of bucket b's slots from tile t, and at (b, 0)
//      it is offsets[b], which the scan writes out on the way.
//   3. _route_scatter_kernel: block t ranks each slot within its bucket in slot order and
//      writes order[position] = slot.
//
// Within a tile, warp w owns the contiguous slots [w * kWarpSlots, (w + 1) * kWarpSlots) and
// walks them 32 at a time; __match_any_sync groups the lanes that share a bucket, so the
// rank of a lane is popc(peers & lanes_below) and the group's count is popc(peers). Each
// warp keeps its own histogram row in shared memory, so no atomics are needed anywhere and
// every run produces the same bits.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ptx.cuh"
#include "skill_ffn/route.h"

namespace skillkern {
namespace {

constexpr int kThreads = 256;                   // 8 warps: 8 histogram rows fit 48 KB for E <= 1024
constexpr int kWarps = kThreads / 32;
constexpr int kWarpSteps = 8;                   // 32-slot steps per warp; keeps buckets in registers
constexpr int kWarpSlots = 32 * kWarpSteps;     // 256 contiguous slots per warp
constexpr int64_t kTile = kWarps * kWarpSlots;  // 2048 slots per block: tile_counts is ~N*(E+1)/2048
constexpr int kScanItems = 8;                   // scan elements per thread per block
constexpr int64_t kScanChunk = int64_t(kThreads) * kScanItems;

template <typename id_t>
__device__ __forceinline__ int bucket_of(id_t id, int num_skills) {
  return (id >= 0 && id < static_cast<id_t>(num_skills)) ? static_cast<int>(id) : num_skills;
}

// Fills this warp's row of s_hist (num_buckets ints, zeroed by the caller) with the bucket
// counts of its kWarpSlots slots, and leaves each lane's bucket / peer mask per step in
// `bucket` / `peers`. Slots past n get bucket == num_buckets (no bucket) and are not counted.
template <typename id_t>
__device__ __forceinline__ void warp_histogram(const id_t* __restrict__ ids, int64_t n, int num_skills,
                                               int num_buckets, int64_t warp_start, int lane,
                                               int32_t* __restrict__ row, int (&bucket)[kWarpSteps],
                                               unsigned (&peers)[kWarpSteps]) {
#pragma unroll
  for (int s = 0; s < kWarpSteps; ++s) {
    const int64_t i = warp_start + s * 32 + lane;
    bucket[s] = i < n ? bucket_of(ids[i], num_skills) : num_buckets;
    peers[s] = __match_any_sync(kFullMask, bucket[s]);
    // The lowest lane of each group adds the group; groups have distinct buckets, so the
    // writes of one step never collide. __syncwarp orders them before the next step reads.
    if (bucket[s] < num_buckets && lane == __ffs(peers[s]) - 1) {
      row[bucket[s]] += __popc(peers[s]);
    }
    __syncwarp();
  }
}

template <typename id_t>
__global__ void __launch_bounds__(kThreads)
    _route_hist_kernel(const id_t* __restrict__ ids, int64_t n, int num_skills, int64_t num_tiles,
                       int32_t* __restrict__ tile_counts) {
  extern __shared__ int32_t s_hist[];  // [kWarps][num_buckets]
  const int num_buckets = num_skills + 1;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t tile = blockIdx.x;

  for (int k = threadIdx.x; k < kWarps * num_buckets; k += kThreads) s_hist[k] = 0;
  __syncthreads();

  int bucket[kWarpSteps];
  unsigned peers[kWarpSteps];
  warp_histogram(ids, n, num_skills, num_buckets, tile * kTile + int64_t(warp) * kWarpSlots, lane,
                 s_hist + warp * num_buckets, bucket, peers);
  __syncthreads();

  for (int b = threadIdx.x; b < num_buckets; b += kThreads) {
    int32_t count = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) count += s_hist[w * num_buckets + b];
    tile_counts[int64_t(b) * num_tiles + tile] = count;
  }
}

// Exclusive scan over the block of one value per thread; *total gets the block's sum.
// Values are slot counts summing to at most N < 2^31, so int32 cannot overflow.
__device__ __forceinline__ int32_t block_exclusive_scan(int32_t v, int32_t* s_warp, int32_t* total) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  int32_t x = v;
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const int32_t y = __shfl_up_sync(kFullMask, x, d);
    if (lane >= d) x += y;
  }
  if (lane == 31) s_warp[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int32_t w = lane < kWarps ? s_warp[lane] : 0;
#pragma unroll
    for (int d = 1; d < kWarps; d *= 2) {
      const int32_t y = __shfl_up_sync(kFullMask, w, d);
      if (lane >= d) w += y;
    }
    if (lane < kWarps) s_warp[lane] = w;
  }
  __syncthreads();
  const int32_t warp_prefix = warp > 0 ? s_warp[warp - 1] : 0;
  *total = s_warp[kWarps - 1];
  __syncthreads();  // s_warp is reused by the caller's next scan
  return warp_prefix + x - v;
}

// Scan, step 1: chunk_sums[c] = sum of data[c * kScanChunk, (c + 1) * kScanChunk).
__global__ void __launch_bounds__(kThreads)
    _scan_reduce_kernel(const int32_t* __restrict__ data, int64_t len, int32_t* __restrict__ chunk_sums) {
  __shared__ int32_t s_warp[kWarps];
  const int64_t start = int64_t(blockIdx.x) * kScanChunk;
  int32_t sum = 0;
#pragma unroll
  for (int k = 0; k < kScanItems; ++k) {
    const int64_t i = start + int64_t(k) * kThreads + threadIdx.x;  // striped: coalesced
    if (i < len) sum += data[i];
  }
  int32_t total;
  block_exclusive_scan(sum, s_warp, &total);
  if (threadIdx.x == 0) chunk_sums[blockIdx.x] = total;
}

// Scan, step 2 (one block): chunk_sums becomes its exclusive scan, in place.
__global__ void __launch_bounds__(kThreads)
    _scan_chunks_kernel(int32_t* __restrict__ chunk_sums, int64_t num_chunks) {
  __shared__ int32_t s_warp[kWarps];
  int32_t carry = 0;
  for (int64_t start = 0; start < num_chunks; start += kThreads) {
    const int64_t i = start + threadIdx.x;
    const int32_t v = i < num_chunks ? chunk_sums[i] : 0;
    int32_t total;
    const int32_t prefix = block_exclusive_scan(v, s_warp, &total);
    if (i < num_chunks) chunk_sums[i] = carry + prefix;
    carry += total;
  }
}

// Scan, step 3: data becomes its exclusive scan, in place (each block reads its chunk before
// writing it). data is tile_counts laid out [num_buckets][num_tiles], so element b * num_tiles
// is the first position of bucket b: offsets[b].
__global__ void __launch_bounds__(kThreads)
    _scan_downsweep_kernel(int32_t* __restrict__ data, int64_t len, const int32_t* __restrict__ chunk_base,
                           int64_t num_tiles, int32_t* __restrict__ offsets) {
  __shared__ int32_t s_warp[kWarps];
  const int64_t start = int64_t(blockIdx.x) * kScanChunk;
  int32_t carry = chunk_base[blockIdx.x];
  for (int k = 0; k < kScanItems; ++k) {
    const int64_t i = start + int64_t(k) * kThreads + threadIdx.x;
    const int32_t v = i < len ? data[i] : 0;
    int32_t total;
    const int32_t prefix = block_exclusive_scan(v, s_warp, &total);
    if (i < len) {
      const int32_t pos = carry + prefix;
      data[i] = pos;
      if (i % num_tiles == 0) offsets[i / num_tiles] = pos;
    }
    carry += total;
  }
}

template <typename id_t>
__global__ void __launch_bounds__(kThreads)
    _route_scatter_kernel(const id_t* __restrict__ ids, int64_t n, int num_skills, int64_t num_tiles,
                          const int32_t* __restrict__ tile_base, int32_t* __restrict__ order) {
  extern __shared__ int32_t s_hist[];  // [kWarps][num_buckets]: counts, then next positions
  const int num_buckets = num_skills + 1;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t tile = blockIdx.x;
  const int64_t warp_start = tile * kTile + int64_t(warp) * kWarpSlots;
  int32_t* row = s_hist + warp * num_buckets;

  for (int k = threadIdx.x; k < kWarps * num_buckets; k += kThreads) s_hist[k] = 0;
  __syncthreads();
  int bucket[kWarpSteps];
  unsigned peers[kWarpSteps];
  warp_histogram(ids, n, num_skills, num_buckets, warp_start, lane, row, bucket, peers);
  __syncthreads();

  // Per bucket, turn the warp counts into each warp's first position: the tile's base plus
  // the slots of the same bucket in lower warps (= earlier slots of the tile).
  for (int b = threadIdx.x; b < num_buckets; b += kThreads) {
    int32_t next = tile_base[int64_t(b) * num_tiles + tile];
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const int32_t count = s_hist[w * num_buckets + b];
      s_hist[w * num_buckets + b] = next;
      next += count;
    }
  }
  __syncthreads();

  const unsigned lanes_below = (1u << lane) - 1u;
#pragma unroll
  for (int s = 0; s < kWarpSteps; ++s) {
    const bool valid = bucket[s] < num_buckets;
    if (valid) {
      const int64_t i = warp_start + s * 32 + lane;
      order[row[bucket[s]] + __popc(peers[s] & lanes_below)] = static_cast<int32_t>(i);
    }
    __syncwarp();  // every lane has read row[b] before the group's leader advances it
    if (valid && lane == __ffs(peers[s]) - 1) row[bucket[s]] += __popc(peers[s]);
    __syncwarp();
  }
}

template <typename id_t>
void launch_skill_route(const at::Tensor& ids, int64_t num_skills, at::Tensor& order, at::Tensor& offsets) {
  const int64_t n = ids.numel();
  const int64_t num_buckets = num_skills + 1;
  const int64_t num_tiles = (n + kTile - 1) / kTile;  // <= 2^20 since n < 2^31
  const int64_t len = num_buckets * num_tiles;
  const int64_t num_chunks = (len + kScanChunk - 1) / kScanChunk;
  const auto opts = ids.options().dtype(at::kInt);
  at::Tensor tile_counts = at::empty({len}, opts);
  at::Tensor chunk_sums = at::empty({num_chunks}, opts);
  const size_t hist_smem = size_t(kWarps) * num_buckets * sizeof(int32_t);  // <= 32.8 KB
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const id_t* ids_ptr = ids.const_data_ptr<id_t>();
  int32_t* counts_ptr = tile_counts.mutable_data_ptr<int32_t>();
  int32_t* chunks_ptr = chunk_sums.mutable_data_ptr<int32_t>();
  const dim3 tile_grid(static_cast<unsigned>(num_tiles));
  const dim3 chunk_grid(static_cast<unsigned>(num_chunks));

  auto* hist = &_route_hist_kernel<id_t>;
  auto* scatter = &_route_scatter_kernel<id_t>;
  SK_LAUNCH(hist, tile_grid, kThreads, hist_smem, stream, ids_ptr, n, int(num_skills), num_tiles, counts_ptr);
  SK_LAUNCH(_scan_reduce_kernel, chunk_grid, kThreads, 0, stream, counts_ptr, len, chunks_ptr);
  SK_LAUNCH(_scan_chunks_kernel, 1, kThreads, 0, stream, chunks_ptr, num_chunks);
  SK_LAUNCH(_scan_downsweep_kernel, chunk_grid, kThreads, 0, stream, counts_ptr, len, chunks_ptr, num_tiles,
            offsets.mutable_data_ptr<int32_t>());
  SK_LAUNCH(scatter, tile_grid, kThreads, hist_smem, stream, ids_ptr, n, int(num_skills), num_tiles, counts_ptr,
            order.mutable_data_ptr<int32_t>());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> skill_route_cuda(const at::Tensor& skill_ids, int64_t num_skills) {
  TORCH_CHECK(skill_ids.is_cuda(), "skill_route (CUDA): skill_ids must be a CUDA tensor, got ",
              skill_ids.device());
  const c10::cuda::CUDAGuard device_guard(skill_ids.device());
  RouteBuffers b = prepare_skill_route(skill_ids, num_skills);
  if (b.ids.numel() == 0) {
    b.offsets.zero_();
  } else if (b.ids.scalar_type() == at::kInt) {
    launch_skill_route<int32_t>(b.ids, num_skills, b.order, b.offsets);
  } else {
    launch_skill_route<int64_t>(b.ids, num_skills, b.order, b.offsets);
  }
  return {b.order, b.offsets};
}

TORCH_LIBRARY_IMPL(skillkern, CUDA, m) {
  m.impl("skill_route", &skill_route_cuda);
}

}  // namespace skillkern
