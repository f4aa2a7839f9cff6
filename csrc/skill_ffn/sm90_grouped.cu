// The skill FFN's GEMMs on Hopper: CUTLASS 3.x ptr-array grouped GEMMs (contract in
// sm90_grouped.h; the orchestration around them in fwd_sm90.cuh and bwd_sm90.cuh).
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
// - Four GEMMs per dtype, one instantiation each:
//   up     act(a @ w1[e] + b1[e])        A K-major, B N-major; also the backward's recompute of
//                                        Z (the identity code)
//   down   scale * (a @ w2[e] + b2[e])   A K-major, B N-major
//   dgrad  a @ w[e]^T                    A K-major, B K-major (w stored (E, N, K)): G = dY w2^T
//                                        and dX = dZ w1^T
//   wgrad  a[rows of e]^T @ b[rows of e] A M-major, B N-major, K = the skill's rows: dW1, dW2
//   Epilogues are visitor trees: up's activation is a runtime code calling act.cuh's own fp32
//   formulas (the mma.sync path's numerics); down's bias and per-row scale are one pointer per
//   skill; dgrad and wgrad only round.
// - The problem shapes live on the device only (GroupProblemShape with a null host pointer):
//   a one-thread-per-skill kernel turns `offsets` into shapes, pointers and strides. A skill
//   with no rows gets M = 0: zero tiles, its pointers never read (wgrad then zeros its dW).
//
// Build: only with SKILLKERN_SM90_GROUPED (setup.py: the nvidia-cutlass wheel's headers and
// sm_90a in the arch list); otherwise this file compiles to the stubs at its end. NDEBUG is
// required: CuTe's pointer-alignment assert otherwise leaves a call in the consumer path, and
// ptxas then serializes every wgmma (warning C7510).
#ifndef NDEBUG
#define NDEBUG
#endif

#include "skill_ffn/sm90_grouped.h"

#include <algorithm>
#include <initializer_list>

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
struct DgradStore {
  CUTLASS_DEVICE T operator()(T const& x) const { return x; }
};

template <class T>
struct WgradStore {
  CUTLASS_DEVICE T operator()(T const& x) const { return x; }
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
  // the backward's plain GEMMs: the accumulator rounded to T (two names, so that the two
  // kernels read apart in the machine code: extension_code.cutlass_name)
  using Dgrad = fusion::Sm90EVT<fusion::Sm90Compute<DgradStore, T, float, kRound>, fusion::Sm90AccFetch>;
  using Wgrad = fusion::Sm90EVT<fusion::Sm90Compute<WgradStore, T, float, kRound>, fusion::Sm90AccFetch>;
};

// The operand layouts (CUTLASS's names): A (M, K) row-major = K-major, column-major = M-major;
// B (K, N) row-major = N-major (wgmma's transposed B), column-major = K-major. D is row-major.
using RowA = cutlass::layout::RowMajor;
using ColA = cutlass::layout::ColumnMajor;
using RowB = cutlass::layout::RowMajor;
using ColB = cutlass::layout::ColumnMajor;

template <class T, class Fusion, class LA, class LB>
struct Grouped {
  using LD = cutlass::layout::RowMajor;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LD*, kAlign, T, LD*, kAlign,
      EpilogueSchedule, Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, T, LA*, kAlign, T, LB*, kAlign, float, TileShape,
      ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;
  using KMajor = Stride<int64_t, _1, _0>;  // (rows or cols, K): the leading dimension first
  using MNMajor = Stride<_1, int64_t, _0>;
  static_assert(is_same_v<StrideA, conditional_t<is_same_v<LA, RowA>, KMajor, MNMajor>> &&
                    is_same_v<StrideB, conditional_t<is_same_v<LB, RowB>, MNMajor, KMajor>> &&
                    is_same_v<StrideD, KMajor>,
                "unexpected strides");
};

// The per-skill argument arrays of one GEMM G, carved from the front of the workspace (128-byte
// aligned each: CUTLASS derives a placeholder TMA address from them).
template <class G, class T>
struct Arrays {
  using StrideA = typename G::StrideA;
  using StrideB = typename G::StrideB;
  using StrideD = typename G::StrideD;
  Shape3* shape;
  const T** a;
  const T** b;
  T** d;
  const T** bias;
  const float** scale;
  StrideA* sa;
  StrideB* sb;
  StrideD* sd;

  static size_t up(size_t x) { return (x + 127) / 128 * 128; }
  static size_t bytes(int E) {
    const size_t e = static_cast<size_t>(E);
    return up(e * sizeof(Shape3)) + 5 * up(e * sizeof(void*)) + up(e * sizeof(StrideA)) + up(e * sizeof(StrideB)) +
           up(e * sizeof(StrideD));
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
    r.sd = reinterpret_cast<StrideD*>(take(e * sizeof(StrideD)));
    return r;
  }
};

// A 2-d stride with one dynamic component (the leading dimension), wherever the layout puts it.
template <class S>
__device__ S lead_stride(int64_t ld) {
  S s{};
  if constexpr (is_same_v<S, Stride<int64_t, _1, _0>>) get<0>(s) = ld;
  else get<1>(s) = ld;
  return s;
}

// What one grouped GEMM computes per skill e, whose sorted rows are offsets[e] .. offsets[e+1]:
//   kRows:  d[rows] (rows x N) = a[rows] (rows x K) @ B_e, with B_e = w[e] read (K, N) (w stored
//           (E, K, N), N-major) or (E, N, K) (K-major, w[e]^T) as the layout of G says;
//   kWgrad: d[e] (M x N) = a[rows]^T @ b[rows], a (rows, M) and b (rows, N) sorted row-major:
//           K = the skill's rows. A skill with no rows gets shape (0, N, 0): zero tiles.
enum class Form { kRows, kWgrad };

// One thread per skill: its shape, pointers and strides. The bias / scale arrays are only read
// when the caller passes them (a null array means none; a null entry would be dereferenced).
template <class G, class T, Form F>
__global__ void __launch_bounds__(128)
    _grouped_args_kernel(Arrays<G, T> out, const int32_t* __restrict__ offsets, int E, int M, int K, int N, const T* a,
                         const T* b, const T* bias, const float* scale, T* d) {
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < E; e += gridDim.x * blockDim.x) {
    const int64_t row0 = offsets[e];
    const int rows = offsets[e + 1] - offsets[e];
    if constexpr (F == Form::kRows) {
      out.shape[e] = Shape3{rows, N, K};
      out.a[e] = a + row0 * K;
      out.b[e] = b + int64_t(e) * K * N;
      out.d[e] = d + row0 * N;
      out.sa[e] = lead_stride<typename G::StrideA>(K);
      out.sb[e] = lead_stride<typename G::StrideB>(is_same_v<typename G::StrideB, Stride<_1, int64_t, _0>> ? N : K);
    } else {
      out.shape[e] = Shape3{rows > 0 ? M : 0, N, rows};
      out.a[e] = a + row0 * M;
      out.b[e] = b + row0 * N;
      out.d[e] = d + int64_t(e) * M * N;
      out.sa[e] = lead_stride<typename G::StrideA>(M);
      out.sb[e] = lead_stride<typename G::StrideB>(N);
    }
    out.sd[e] = lead_stride<typename G::StrideD>(N);
    out.bias[e] = bias != nullptr ? bias + int64_t(e) * N : nullptr;
    out.scale[e] = scale != nullptr ? scale + row0 : nullptr;
  }
}

// kWgrad's other half of "unused skills get exact zeros": d[e] = 0 for every skill with no rows
// (the GEMM ran no tile there). Blocks (e, j) stride over skill e's M x N outputs.
template <class T>
__global__ void __launch_bounds__(256)
    _zero_empty_skills_kernel(const int32_t* __restrict__ offsets, int64_t MN, T* __restrict__ d) {
  const int e = blockIdx.y;
  if (offsets[e + 1] != offsets[e]) return;
  T* out = d + int64_t(e) * MN;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < MN; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = T(0.f);
}

template <class G, class T>
typename G::Gemm::Arguments arguments(const Arrays<G, T>& r, int E, int sm_count,
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
  const Arrays<G, T> none = Arrays<G, T>::carve(nullptr, E);
  return Arrays<G, T>::bytes(E) + G::Gemm::get_workspace_size(arguments<G, T>(none, E, sm_count, {}));
}

// The argument kernel, then CUTLASS's initialize (host: the TMA descriptors; device: its
// workspace) and run, all on `stream`. The caller has checked the sizes (K, N, M > 0, % 8).
template <class G, class T, Form F>
cudaError_t launch(const typename G::Epilogue::FusionCallbacks::Arguments& fusion_args, const Arrays<G, T>& r,
                   const int32_t* offsets, int E, int M, int K, int N, const T* a, const T* b, const T* bias,
                   const float* scale, T* d, int sm_count, void* workspace, cudaStream_t stream) {
  _grouped_args_kernel<G, T, F><<<(E + 127) / 128, 128, 0, stream>>>(r, offsets, E, M, K, N, a, b, bias, scale, d);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  auto args = arguments<G, T>(r, E, sm_count, fusion_args);
  typename G::Gemm gemm;
  void* cutlass_ws = static_cast<char*>(workspace) + Arrays<G, T>::bytes(E);
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (gemm.initialize(args, cutlass_ws, stream) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return cudaErrorLaunchFailure;
  return cudaGetLastError();
}

bool sizes_ok(int E, std::initializer_list<int> dims) {
  if (E <= 0) return false;
  for (int n : dims)
    if (n <= 0 || n % kAlign != 0) return false;
  return true;
}

template <class T>
cudaError_t up_t(const void* a, const void* w1, const void* b1, void* hid, const int32_t* offsets, int E, int K,
                 int N, int act, int sm_count, void* workspace, cudaStream_t stream) {
  using G = Grouped<T, typename Trees<T>::Up, RowA, RowB>;
  const Arrays<G, T> r = Arrays<G, T>::carve(workspace, E);
  // { { acc, bias row (a null array: 0), plus }, act }
  typename G::Epilogue::FusionCallbacks::Arguments fa{{{}, {b1 != nullptr ? r.bias : nullptr, T(0), {}}, {}},
                                                      {act}};
  return launch<G, T, Form::kRows>(fa, r, offsets, E, 0, K, N, static_cast<const T*>(a), static_cast<const T*>(w1),
                                   static_cast<const T*>(b1), nullptr, static_cast<T*>(hid), sm_count, workspace,
                                   stream);
}

template <class T>
cudaError_t down_t(const void* a, const void* w2, const void* b2, const float* scale, void* out,
                   const int32_t* offsets, int E, int K, int N, int sm_count, void* workspace, cudaStream_t stream) {
  using G = Grouped<T, typename Trees<T>::Down, RowA, RowB>;
  const Arrays<G, T> r = Arrays<G, T>::carve(workspace, E);
  // { scale column (a null array: 1), { acc, bias row, plus }, multiplies }
  typename G::Epilogue::FusionCallbacks::Arguments fa{
      {scale != nullptr ? r.scale : nullptr, 1.f, {}}, {{}, {b2 != nullptr ? r.bias : nullptr, T(0), {}}, {}}, {}};
  return launch<G, T, Form::kRows>(fa, r, offsets, E, 0, K, N, static_cast<const T*>(a), static_cast<const T*>(w2),
                                   static_cast<const T*>(b2), scale, static_cast<T*>(out), sm_count, workspace,
                                   stream);
}

template <class T>
cudaError_t dgrad_t(const void* a, const void* w, void* out, const int32_t* offsets, int E, int K, int N,
                    int sm_count, void* workspace, cudaStream_t stream) {
  using G = Grouped<T, typename Trees<T>::Dgrad, RowA, ColB>;
  const Arrays<G, T> r = Arrays<G, T>::carve(workspace, E);
  return launch<G, T, Form::kRows>({}, r, offsets, E, 0, K, N, static_cast<const T*>(a), static_cast<const T*>(w),
                                   nullptr, nullptr, static_cast<T*>(out), sm_count, workspace, stream);
}

template <class T>
cudaError_t wgrad_t(const void* a, const void* b, void* dw, const int32_t* offsets, int E, int M, int N,
                    int sm_count, void* workspace, cudaStream_t stream) {
  using G = Grouped<T, typename Trees<T>::Wgrad, ColA, RowB>;
  const Arrays<G, T> r = Arrays<G, T>::carve(workspace, E);
  cudaError_t err = launch<G, T, Form::kWgrad>({}, r, offsets, E, M, 0, N, static_cast<const T*>(a),
                                               static_cast<const T*>(b), nullptr, nullptr, static_cast<T*>(dw),
                                               sm_count, workspace, stream);
  if (err != cudaSuccess) return err;
  const int64_t MN = int64_t(M) * N;
  const dim3 grid(unsigned(std::min<int64_t>((MN + 255) / 256, 1024)), unsigned(E));
  _zero_empty_skills_kernel<T><<<grid, 256, 0, stream>>>(offsets, MN, static_cast<T*>(dw));
  return cudaGetLastError();
}

template <class T>
size_t workspace_t(int E, int sm_count) {
  size_t ws = 0;
  for (size_t w : {cutlass_workspace<Grouped<T, typename Trees<T>::Up, RowA, RowB>, T>(E, sm_count),
                   cutlass_workspace<Grouped<T, typename Trees<T>::Down, RowA, RowB>, T>(E, sm_count),
                   cutlass_workspace<Grouped<T, typename Trees<T>::Dgrad, RowA, ColB>, T>(E, sm_count),
                   cutlass_workspace<Grouped<T, typename Trees<T>::Wgrad, ColA, RowB>, T>(E, sm_count)})
    ws = w > ws ? w : ws;
  return ws;
}

}  // namespace

bool built() { return true; }

size_t workspace_bytes(int E, int sm_count) {
  const size_t b = workspace_t<cutlass::bfloat16_t>(E, sm_count), h = workspace_t<cutlass::half_t>(E, sm_count);
  return b > h ? b : h;
}

#define SK_SM90_DTYPE(dt, call) \
  ((dt) == Dtype::kBf16 ? call<cutlass::bfloat16_t> : call<cutlass::half_t>)

cudaError_t up(Dtype dt, const void* a, const void* w1, const void* b1, void* hid, const int32_t* offsets, int E,
               int K, int N, int act, int sm_count, void* workspace, cudaStream_t stream) {
  if (act == kSwiglu || !sizes_ok(E, {K, N})) return cudaErrorInvalidValue;
  return SK_SM90_DTYPE(dt, up_t)(a, w1, b1, hid, offsets, E, K, N, act, sm_count, workspace, stream);
}

cudaError_t down(Dtype dt, const void* a, const void* w2, const void* b2, const float* scale, void* out,
                 const int32_t* offsets, int E, int K, int N, int sm_count, void* workspace, cudaStream_t stream) {
  if (!sizes_ok(E, {K, N})) return cudaErrorInvalidValue;
  return SK_SM90_DTYPE(dt, down_t)(a, w2, b2, scale, out, offsets, E, K, N, sm_count, workspace, stream);
}

cudaError_t dgrad(Dtype dt, const void* a, const void* w, void* out, const int32_t* offsets, int E, int K, int N,
                  int sm_count, void* workspace, cudaStream_t stream) {
  if (!sizes_ok(E, {K, N})) return cudaErrorInvalidValue;
  return SK_SM90_DTYPE(dt, dgrad_t)(a, w, out, offsets, E, K, N, sm_count, workspace, stream);
}

cudaError_t wgrad(Dtype dt, const void* a, const void* b, void* dw, const int32_t* offsets, int E, int M, int N,
                  int sm_count, void* workspace, cudaStream_t stream) {
  if (!sizes_ok(E, {M, N})) return cudaErrorInvalidValue;
  return SK_SM90_DTYPE(dt, wgrad_t)(a, b, dw, offsets, E, M, N, sm_count, workspace, stream);
}

#undef SK_SM90_DTYPE

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
cudaError_t dgrad(Dtype, const void*, const void*, void*, const int32_t*, int, int, int, int, void*, cudaStream_t) {
  return cudaErrorNotSupported;
}
cudaError_t wgrad(Dtype, const void*, const void*, void*, const int32_t*, int, int, int, int, void*, cudaStream_t) {
  return cudaErrorNotSupported;
}

}  // namespace sm90
}  // namespace ffn
}  // namespace skillkern

#endif
