// Host version of <mma.h> (nvcuda::wmma, 16x16x16 fragments) for the CPU emulation. Every lane
// of a warp holds the WHOLE fragment: the API leaves the per-lane element order unspecified, so
// code that only loads, fills, multiplies and stores fragments (as the kernels do) behaves the
// same; one lane stores, so a read of the stored tile that no __syncwarp orders after the store
// shows up under another thread schedule. The hardware's requirements are checked: 256-bit
// aligned pointers, ldm a multiple of 16 bytes, and the fragment inside the dynamic shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "emu/runtime.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation models the 16x16x16 shape only");
  float x[16][16];  // (row, col) of the A (M x K), B (K x N) or accumulator (M x N) tile
};

inline float emu_to_float(float v) { return v; }
inline float emu_to_float(__half v) { return __half2float(v); }
inline float emu_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
inline void emu_check_fragment(const T* p, unsigned ldm, bool col, const char* what) {
  namespace emu = ::skillkern::emu;
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) emu::fail(std::string(what) + ": pointer not 256-bit aligned");
  if ((ldm * sizeof(T)) % 16 != 0) emu::fail(std::string(what) + ": ldm not a multiple of 16 bytes");
  const size_t last = col ? 15 + 15 * size_t(ldm) : 15 * size_t(ldm) + 15;  // the furthest element
  emu::check_smem(p, (last + 1) * sizeof(T), what);
}

template <class Use, class T, class Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  constexpr bool col = std::is_same<Layout, col_major>::value;
  emu_check_fragment(p, ldm, col, "wmma::load_matrix_sync");
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r][c] = emu_to_float(p[col ? r + c * size_t(ldm) : r * size_t(ldm) + c]);
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  const bool col = layout == mem_col_major;
  emu_check_fragment(p, ldm, col, "wmma::store_matrix_sync");
  if (::skillkern::emu::lane_id() != 0) return;  // every lane holds the same tile: one writes it
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) p[col ? r + c * size_t(ldm) : r * size_t(ldm) + c] = f.x[r][c];
}

inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float v) {
  for (auto& row : f.x)
    for (float& e : row) e = v;
}

// d = a b + c in fp32, one fused multiply-add per product in k order.
template <class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16][16];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i][j];
      for (int k = 0; k < 16; ++k) s = std::fma(a.x[i][k], b.x[k][j], s);
      out[i][j] = s;
    }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) d.x[i][j] = out[i][j];
}

}  // namespace wmma
}  // namespace nvcuda
