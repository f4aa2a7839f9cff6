// The skill FFN's forward GEMMs on Hopper: CUTLASS 3.x ptr-array grouped GEMMs (contract in
// sm90_grouped.h; the orchestration around them in fwd_sm90.cuh).
//
// Kernel: KernelPtrArrayTmaWarpSpecializedCooperative, 128 x 128 x 64 tiles, cluster 1 x 1 x 1,
// stages as many as shared memory allows after the epilogue (6: 215 KB), one persistent block
// per SM walking the skills' tiles on the device (the group tile scheduler). A producer warp
// loads A and B by TMA; two consumer warpgroups run wgmma 64 x 128 x 16 and the epilogue,
// which stores D by TMA.
// - Cooperative (both warpgroups on one 128-row tile) suits the thousands of rows per skill of
//   training. Pingpong (64-row tiles per warpgroup, one's epilogue under the other's MMAs)
//   compiles as well and may suit small batches: for a GPU run to decide.
// - Cluster 1: skills have ragged row counts, and clusters round each skill's tile count up.
// - Epilogues are visitor trees: GEMM1 act(acc + b1) with the activation a runtime code (one
//   instantiation for the four one-input activations, the same fp32 formulas as the mma.sync
//   path: act.cuh); GEMM2 scale * (acc + b2), the bias and the per-row scale one pointer per
//   skill.
// - The problem shapes live on the device only (GroupProblemShape with a null host pointer):
//   a one-thread-per-skill kernel turns `offsets` into shapes, pointers and strides.
//   A skill with no rows gets shape (0, N, K): zero tiles, its pointers never read.
//
// Build: only with SKILLKERN_SM90_GROUPED (setup.py: the nvidia-cutlass wheel's headers and
// sm_90a in the arch list); otherwise this file compiles to the stubs at its end. NDEBUG is
// required: CuTe's pointer-alignment assert otherwise leaves a call in the consumer path, and
// ptxas then serializes every wgmma (warning C7510).
#ifndef NDEBUG
#define NDEBUG
#endif

#include "skill_ffn/sm90_grouped.h"

#if defined(SKILLKERN_SM90_GROUPED)

#include "cutlass/cutlass.h"
#include "cutlass/numeric_types.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_compute_tma_warpspecialized.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_load_tma_warpspecialized.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

#include "skill_ffn/act.cuh"

#if !defined(CUTLASS_ARCH_MMA_MODIFIABLE_TMA_SM90_SUPPORTED)
#error "the sm90 grouped GEMMs need CUDA >= 12.3 (TMA descriptors modified on the device)"
#endif

namespace skillkern {
namespace ffn {
namespace sm90 {
namespace {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;  // per skill (M, N, K)
using Shape3 = ProblemShape::UnderlyingProblemShape;
using TileShape = Shape<_128, _128, _64>;
using ClusterShape = Shape<_1, _1, _1>;
using KernelSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative;
using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;
constexpr int kAlign = 8;  // 16 bytes of a 16-bit type: TMA's alignment of rows and bases

// act(x) with the activation a kernel parameter (warp-uniform switch). Sm90Compute finds
// `Arguments` on the scalar functor and passes them to the fragment one.
struct ActArguments {
  int act = kGelu;
};

template <class T>
struct SkillAct {
  using Arguments = ActArguments;
  CUTLASS_DEVICE T operator()(T const& x, Arguments const& a) const { return act_fwd(x, a.act); }
};

template <int N>
struct SkillAct<cutlass::Array<float, N>> {
  using Arguments = ActArguments;
  CUTLASS_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& x, Arguments const& a) const {
    cutlass::Array<float, N> y;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) y[i] = act_fwd(x[i], a.act);
    return y;
  }
};

template <class T>
struct Trees {
  // `T*` (a pointer element) selects the per-group form: the argument is an array of E pointers.
  using BiasRow = fusion::Sm90RowBroadcast<0, TileShape, T*, float, Stride<_0, _1, _0>>;
  // s + offsets[e] is only 4-byte aligned: alignment 1
  using ScaleCol = fusion::Sm90ColBroadcast<0, TileShape, float*, float, Stride<_1, _0, _0>, 1>;
  using AccBias = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::plus, float, float, kRound>, fusion::Sm90AccFetch,
                                  BiasRow>;
  using Up = fusion::Sm90EVT<fusion::Sm90Compute<SkillAct, T, float, kRound>, AccBias>;              // act(acc + b1)
  using Down = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiplies, T, float, kRound>, ScaleCol,  // s * (acc + b2)
                               AccBias>;
};

template <class T, class Fusion>
struct Grouped {
  using L = cutlass::layout::RowMajor;  // A (M, K), B (K, N: N-major, wgmma's transposed B), D (M, N)
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, L*, kAlign, T, L*, kAlign,
      EpilogueSchedule, Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, T, L*, kAlign, T, L*, kAlign, float, TileShape,
      ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;
  static_assert(is_same_v<StrideA, Stride<int64_t, _1, _0>> && is_same_v<StrideB, Stride<_1, int64_t, _0>> &&
                    is_same_v<StrideD, Stride<int64_t, _1, _0>>,
                "unexpected strides");
};

// The per-skill argument arrays, carved from the front of the workspace (128-byte aligned
// each: CUTLASS derives a placeholder TMA address from them).
template <class T>
struct Arrays {
  using StrideA = Stride<int64_t, _1, _0>;
  using StrideB = Stride<_1, int64_t, _0>;
  Shape3* shape;
  const T** a;
  const T** b;
  T** d;
  const T** bias;
  const float** scale;
  StrideA* sa;
  StrideB* sb;
  StrideA* sd;

  static size_t up(size_t x) { return (x + 127) / 128 * 128; }
  static size_t bytes(int E) {
    const size_t e = static_cast<size_t>(E);
    return up(e * sizeof(Shape3)) + 5 * up(e * sizeof(void*)) + 2 * up(e * sizeof(StrideA)) + up(e * sizeof(StrideB));
  }
  static Arrays carve(void* base, int E) {
    const size_t e = static_cast<size_t>(E);
    char* p = static_cast<char*>(base);
    auto take = [&](size_t n) { char* r = p; p += up(n); return r; };
    Arrays r;
    r.shape = reinterpret_cast<Shape3*>(take(e * sizeof(Shape3)));
    r.a = reinterpret_cast<const T**>(take(e * sizeof(void*)));
    r.b = reinterpret_cast<const T**>(take(e * sizeof(void*)));
    r.d = reinterpret_cast<T**>(take(e * sizeof(void*)));
    r.bias = reinterpret_cast<const T**>(take(e * sizeof(void*)));
    r.scale = reinterpret_cast<const float**>(take(e * sizeof(void*)));
    r.sa = reinterpret_cast<StrideA*>(take(e * sizeof(StrideA)));
    r.sb = reinterpret_cast<StrideB*>(take(e * sizeof(StrideB)));
    r.sd = reinterpret_cast<StrideA*>(take(e * sizeof(StrideA)));
    return r;
  }
};

// One thread per skill: its shape (rows, N, K), pointers and strides. The bias / scale arrays
// are only read when the caller passes them (a null array means none; a null entry would be
// dereferenced).
template <class T>
__global__ void __launch_bounds__(128) _grouped_args_kernel(Arrays<T> out, const int32_t* __restrict__ offsets, int E, int K, int N,
                                     const T* a, const T* w, const T* bias, const float* scale, T* d) {
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < E; e += gridDim.x * blockDim.x) {
    const int64_t row0 = offsets[e];
    out.shape[e] = Shape3{offsets[e + 1] - offsets[e], N, K};
    out.a[e] = a + row0 * K;
    out.b[e] = w + int64_t(e) * K * N;
    out.d[e] = d + row0 * N;
    out.bias[e] = bias != nullptr ? bias + int64_t(e) * N : nullptr;
    out.scale[e] = scale != nullptr ? scale + row0 : nullptr;
    typename Arrays<T>::StrideA sa{};
    typename Arrays<T>::StrideB sb{};
    get<0>(sa) = K;
    get<1>(sb) = N;
    out.sa[e] = sa;
    out.sb[e] = sb;
    get<0>(sa) = N;
    out.sd[e] = sa;
  }
}

template <class G, class T>
typename G::Gemm::Arguments arguments(const Arrays<T>& r, int E, int sm_count,
                                      const typename G::Epilogue::FusionCallbacks::Arguments& fusion_args) {
  cutlass::KernelHardwareInfo hw;
  hw.sm_count = sm_count;
  return typename G::Gemm::Arguments{cutlass::gemm::GemmUniversalMode::kGrouped,
                                     {E, r.shape, nullptr},
                                     {r.a, r.sa, r.b, r.sb},
                                     {fusion_args, nullptr, nullptr, r.d, r.sd},
                                     hw};
}

template <class G, class T>
size_t cutlass_workspace(int E, int sm_count) {
  const Arrays<T> none = Arrays<T>::carve(nullptr, E);
  return G::Gemm::get_workspace_size(arguments<G, T>(none, E, sm_count, {}));
}

// The argument kernel, then CUTLASS's initialize (host: the TMA descriptors; device: its
// workspace) and run, all on `stream`.
template <class G, class T>
cudaError_t launch(const typename G::Epilogue::FusionCallbacks::Arguments& fusion_args, const Arrays<T>& r,
                   const int32_t* offsets, int E, int K, int N, const T* a, const T* w, const T* bias,
                   const float* scale, T* d, int sm_count, void* workspace, cudaStream_t stream) {
  if (E <= 0 || K <= 0 || N <= 0 || K % kAlign != 0 || N % kAlign != 0) return cudaErrorInvalidValue;
  _grouped_args_kernel<T><<<(E + 127) / 128, 128, 0, stream>>>(r, offsets, E, K, N, a, w, bias, scale, d);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  auto args = arguments<G, T>(r, E, sm_count, fusion_args);
  typename G::Gemm gemm;
  void* cutlass_ws = static_cast<char*>(workspace) + Arrays<T>::bytes(E);
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (gemm.initialize(args, cutlass_ws, stream) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return cudaErrorLaunchFailure;
  return cudaGetLastError();
}

template <class T>
cudaError_t up_t(const void* a, const void* w1, const void* b1, void* hid, const int32_t* offsets, int E, int K,
                 int N, int act, int sm_count, void* workspace, cudaStream_t stream) {
  using G = Grouped<T, typename Trees<T>::Up>;
  const Arrays<T> r = Arrays<T>::carve(workspace, E);
  // { { acc, bias row (a null array: 0), plus }, act }
  typename G::Epilogue::FusionCallbacks::Arguments fa{{{}, {b1 != nullptr ? r.bias : nullptr, T(0), {}}, {}},
                                                      {act}};
  return launch<G, T>(fa, r, offsets, E, K, N, static_cast<const T*>(a), static_cast<const T*>(w1),
                      static_cast<const T*>(b1), nullptr, static_cast<T*>(hid), sm_count, workspace, stream);
}

template <class T>
cudaError_t down_t(const void* a, const void* w2, const void* b2, const float* scale, void* out,
                   const int32_t* offsets, int E, int K, int N, int sm_count, void* workspace, cudaStream_t stream) {
  using G = Grouped<T, typename Trees<T>::Down>;
  const Arrays<T> r = Arrays<T>::carve(workspace, E);
  // { scale column (a null array: 1), { acc, bias row, plus }, multiplies }
  typename G::Epilogue::FusionCallbacks::Arguments fa{
      {scale != nullptr ? r.scale : nullptr, 1.f, {}}, {{}, {b2 != nullptr ? r.bias : nullptr, T(0), {}}, {}}, {}};
  return launch<G, T>(fa, r, offsets, E, K, N, static_cast<const T*>(a), static_cast<const T*>(w2),
                      static_cast<const T*>(b2), scale, static_cast<T*>(out), sm_count, workspace, stream);
}

}  // namespace

bool built() { return true; }

size_t workspace_bytes(int E, int sm_count) {
  using B = cutlass::bfloat16_t;
  using H = cutlass::half_t;
  size_t ws = 0;
  for (size_t w : {cutlass_workspace<Grouped<B, Trees<B>::Up>, B>(E, sm_count),
                   cutlass_workspace<Grouped<B, Trees<B>::Down>, B>(E, sm_count),
                   cutlass_workspace<Grouped<H, Trees<H>::Up>, H>(E, sm_count),
                   cutlass_workspace<Grouped<H, Trees<H>::Down>, H>(E, sm_count)})
    ws = w > ws ? w : ws;
  return Arrays<B>::bytes(E) + ws;
}

cudaError_t up(Dtype dt, const void* a, const void* w1, const void* b1, void* hid, const int32_t* offsets, int E,
               int K, int N, int act, int sm_count, void* workspace, cudaStream_t stream) {
  if (act == kSwiglu) return cudaErrorInvalidValue;
  return dt == Dtype::kBf16
             ? up_t<cutlass::bfloat16_t>(a, w1, b1, hid, offsets, E, K, N, act, sm_count, workspace, stream)
             : up_t<cutlass::half_t>(a, w1, b1, hid, offsets, E, K, N, act, sm_count, workspace, stream);
}

cudaError_t down(Dtype dt, const void* a, const void* w2, const void* b2, const float* scale, void* out,
                 const int32_t* offsets, int E, int K, int N, int sm_count, void* workspace, cudaStream_t stream) {
  return dt == Dtype::kBf16
             ? down_t<cutlass::bfloat16_t>(a, w2, b2, scale, out, offsets, E, K, N, sm_count, workspace, stream)
             : down_t<cutlass::half_t>(a, w2, b2, scale, out, offsets, E, K, N, sm_count, workspace, stream);
}

}  // namespace sm90
}  // namespace ffn
}  // namespace skillkern

#else  // no CUTLASS headers or no sm_90a in this build

namespace skillkern {
namespace ffn {
namespace sm90 {

bool built() { return false; }
size_t workspace_bytes(int, int) { return 0; }
cudaError_t up(Dtype, const void*, const void*, const void*, void*, const int32_t*, int, int, int, int, int, void*,
               cudaStream_t) {
  return cudaErrorNotSupported;
}
cudaError_t down(Dtype, const void*, const void*, const void*, const float*, void*, const int32_t*, int, int, int,
                 int, void*, cudaStream_t) {
  return cudaErrorNotSupported;
}

}  // namespace sm90
}  // namespace ffn
}  // namespace skillkern

#endif
