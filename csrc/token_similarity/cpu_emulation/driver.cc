// Runs the token-similarity kernels (host-compilable copies of fwd.cu / bwd.cu that run.py
// generates) on the CPU emulation of emu.h, with the problems laid out as host.cpp lays them out,
// and checks every output against a float64 reference:
//   - scores i2t / t2i (absolute error < 2e-6: the inputs are the dtype-rounded values, the
//     similarities are fp32 sums of exact products);
//   - every index where the best candidate beats the second by > 1e-4, and exact ties (each item
//     has a duplicated token: the lower index must win); 0 where an item has no real token;
//   - the gradients, computed from the kernel's own indices (max error relative to the largest
//     reference value: 1e-5 fp32, 2e-3 fp16, 1.6e-2 bf16, whose P tile is rounded to the dtype);
//     padding tokens must get exact zeros; every output must be written (outputs start as NaN).
//   usage: driver <copy_at_wait 0|1> <big 0|1> [f32|f16|bf16|all]
#include "emu.h"

#include "fwd_k.inc"
#include "bwd_k.inc"

#include <random>
#include <string>

using namespace skillkern::toksim;

static int idx_bytes(int64_t n) { return n <= 256 ? 1 : n <= 32768 ? 2 : 4; }
static int64_t read_idx(const std::vector<uint8_t>& buf, int bytes, int64_t off) {
  if (bytes == 1) return buf[off];
  if (bytes == 2) { int16_t v; std::memcpy(&v, &buf[off * 2], 2); return v; }
  int32_t v; std::memcpy(&v, &buf[off * 4], 4); return v;
}

struct Case {
  int64_t Bi, Bt, Ni, Nt, D;
  bool masks, empty;
  int vec;  // 1: cp.async path where host.cpp would take it, 0: element-wise loads
};

static int failures = 0;
#define CHECK(cond, ...) do { if (!(cond)) { std::printf("FAIL: " __VA_ARGS__); std::printf("\n"); ++failures; return; } } while (0)

template <typename T>
void run_case(const Case& c, unsigned seed) {
  const int64_t Bi = c.Bi, Bt = c.Bt, Ni = c.Ni, Nt = c.Nt, D = c.D;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> img(Bi * Ni * D), txt(Bt * Nt * D);
  for (auto& v : img) v = nd(rng);
  for (auto& v : txt) v = nd(rng);
  auto normalize = [&](std::vector<float>& x, int64_t rows) {
    for (int64_t r = 0; r < rows; ++r) {
      double n = 0; for (int64_t d = 0; d < D; ++d) n += double(x[r * D + d]) * x[r * D + d];
      n = std::sqrt(n) + 1e-12; for (int64_t d = 0; d < D; ++d) x[r * D + d] = float(x[r * D + d] / n);
    }
  };
  normalize(img, Bi * Ni); normalize(txt, Bt * Nt);

  // ties: duplicate a token in each item
  if (Ni > 2) for (int64_t a = 0; a < Bi; ++a) std::memcpy(&img[(a * Ni + 2) * D], &img[(a * Ni + 0) * D], D * 4);
  if (Nt > 3) for (int64_t b = 0; b < Bt; ++b) std::memcpy(&txt[(b * Nt + 3) * D], &txt[(b * Nt + 1) * D], D * 4);
  // the kernels' inputs in T; the reference sees the same rounded values
  std::vector<T> img_t(img.size()), txt_t(txt.size());
  for (size_t e = 0; e < img.size(); ++e) { img_t[e] = skillkern::from_f32<T>(img[e]); img[e] = skillkern::to_f32(img_t[e]); }
  for (size_t e = 0; e < txt.size(); ++e) { txt_t[e] = skillkern::from_f32<T>(txt[e]); txt[e] = skillkern::to_f32(txt_t[e]); }
  std::vector<uint8_t> im(Bi * Ni, 1), tm(Bt * Nt, 1);
  if (c.masks) {
    for (int64_t a = 0; a < Bi; ++a) { int64_t len = 1 + rng() % Ni; for (int64_t k = 0; k < Ni; ++k) im[a * Ni + k] = k < len; }
    for (int64_t b = 0; b < Bt; ++b) { int64_t len = 1 + rng() % Nt; for (int64_t l = 0; l < Nt; ++l) tm[b * Nt + l] = l < len; }
  }
  if (c.empty) { for (int64_t k = 0; k < Ni; ++k) im[(Bi / 2) * Ni + k] = 0; for (int64_t l = 0; l < Nt; ++l) tm[(Bt - 1) * Nt + l] = 0; }
  const bool use_masks = c.masks || c.empty;

  // ---- forward, as host.cpp lays it out
  const int rb = idx_bytes(Nt), cb = idx_bytes(Ni);
  std::vector<float> i2t(Bi * Bt, NAN), t2i(Bi * Bt, NAN);
  std::vector<uint8_t> row_idx(Bi * Bt * Ni * rb, 0xAB), col_idx(Bi * Bt * Nt * cb, 0xAB);
  const bool swap = Nt > kMaxRowTokens;
  FwdProblem p{};
  p.D = D;
  const bool vec = c.vec && (D * int64_t(sizeof(T))) % 16 == 0;  // host.cpp vec_ok
  p.vec = vec;
  if (!swap) {
    p.r_feat = txt_t.data(); p.c_feat = img_t.data();
    p.r_mask = use_masks ? tm.data() : nullptr; p.c_mask = use_masks ? im.data() : nullptr;
    p.Br = Bt, p.Nr = Nt, p.Bc = Bi, p.Nc = Ni;
    p.c_idx = row_idx.data(), p.c_idx_sc = Bt * Ni, p.c_idx_sr = Ni, p.c_idx_bytes = rb;
    p.c_score = i2t.data(), p.c_score_sc = Bt, p.c_score_sr = 1;
    p.r_idx = col_idx.data(), p.r_idx_sc = Bt * Nt, p.r_idx_sr = Nt, p.r_idx_bytes = cb;
    p.r_score = t2i.data(), p.r_score_sc = Bt, p.r_score_sr = 1;
  } else {
    p.r_feat = img_t.data(); p.c_feat = txt_t.data();
    p.r_mask = use_masks ? im.data() : nullptr; p.c_mask = use_masks ? tm.data() : nullptr;
    p.Br = Bi, p.Nr = Ni, p.Bc = Bt, p.Nc = Nt;
    p.c_idx = col_idx.data(), p.c_idx_sc = Nt, p.c_idx_sr = Bt * Nt, p.c_idx_bytes = cb;
    p.c_score = t2i.data(), p.c_score_sc = 1, p.c_score_sr = Bt;
    p.r_idx = row_idx.data(), p.r_idx_sc = Ni, p.r_idx_sr = Bt * Ni, p.r_idx_bytes = rb;
    p.r_score = i2t.data(), p.r_score_sc = 1, p.r_score_sr = Bt;
  }
  const RowChoice rc = pick_rows(p.Nr, p.Br);
  auto launch = [&](auto cfg_tag) {
    using Cfg = decltype(cfg_tag);
    const int64_t n_tiles = ceil_div(p.Br, rc.tile_items);
    const int64_t group_items = pick_group_items(p.Nc, Cfg::CT, p.Bc);
    const int64_t n_groups = ceil_div(p.Bc, group_items);
    emu_launch(unsigned(n_tiles * n_groups), Cfg::kSmemBytes, [&] {
      _token_similarity_fwd_kernel<T, Cfg>(p, rc.tile_items, group_items, n_groups);
    });
    return std::string("rows ") + std::to_string(Cfg::RT) + " items " + std::to_string(rc.tile_items) + " group " +
           std::to_string(group_items);
  };
  std::string cfg;
  constexpr bool f32 = std::is_same<T, float>::value;
  constexpr int kc_large = f32 ? 16 : 32, kc_small = f32 ? 8 : 16;  // launch_forward's choices
  if (rc.rows == 128) cfg = launch(FwdCfg<T, 128, 128, 4, kc_large>{});
  else if (rc.rows == 256) cfg = launch(FwdCfg<T, 256, 64, 8, kc_large>{});
  else cfg = launch(FwdCfg<T, 512, 32, 8, kc_small>{});

  // ---- reference (float64)
  auto sim = [&](int64_t a, int64_t k, int64_t b, int64_t l) {
    double s = 0; for (int64_t d = 0; d < D; ++d) s += double(img[(a * Ni + k) * D + d]) * txt[(b * Nt + l) * D + d];
    return s;
  };
  std::vector<double> n_img(Bi, 0), n_txt(Bt, 0);
  for (int64_t a = 0; a < Bi; ++a) for (int64_t k = 0; k < Ni; ++k) n_img[a] += im[a * Ni + k];
  for (int64_t b = 0; b < Bt; ++b) for (int64_t l = 0; l < Nt; ++l) n_txt[b] += tm[b * Nt + l];
  double max_err = 0;
  int64_t clear = 0;
  for (int64_t a = 0; a < Bi; ++a) for (int64_t b = 0; b < Bt; ++b) {
    double si = 0, st = 0;
    for (int64_t k = 0; k < Ni; ++k) {  // row: best text token
      double best = -INFINITY, second = -INFINITY; int64_t arg = 0; bool found = false;
      for (int64_t l = 0; l < Nt; ++l) {
        if (!tm[b * Nt + l]) continue;
        const double v = sim(a, k, b, l);
        if (!found || v > best) { second = found ? best : second; best = v; arg = l; found = true; }
        else second = std::max(second, v);
      }
      const int64_t got = read_idx(row_idx, rb, (a * Bt + b) * Ni + k);
      if (!found) CHECK(got == 0, "row_idx[%ld,%ld,%ld] = %ld, want 0 (no real text token)", a, b, k, got);
      else if (best - second > 1e-4) { ++clear; CHECK(got == arg, "row_idx[%ld,%ld,%ld] = %ld, want %ld", a, b, k, got, arg); }
      else if (best == second) CHECK(got == arg, "tie: row_idx[%ld,%ld,%ld] = %ld, want %ld", a, b, k, got, arg);
      if (found && im[a * Ni + k] && n_img[a] > 0) si += best;
    }
    for (int64_t l = 0; l < Nt; ++l) {  // column: best image token
      double best = -INFINITY, second = -INFINITY; int64_t arg = 0; bool found = false;
      for (int64_t k = 0; k < Ni; ++k) {
        if (!im[a * Ni + k]) continue;
        const double v = sim(a, k, b, l);
        if (!found || v > best) { second = found ? best : second; best = v; arg = k; found = true; }
        else second = std::max(second, v);
      }
      const int64_t got = read_idx(col_idx, cb, (a * Bt + b) * Nt + l);
      if (!found) CHECK(got == 0, "col_idx[%ld,%ld,%ld] = %ld, want 0", a, b, l, got);
      else if (best - second > 1e-4) { ++clear; CHECK(got == arg, "col_idx[%ld,%ld,%ld] = %ld, want %ld", a, b, l, got, arg); }
      else if (best == second) CHECK(got == arg, "tie: col_idx[%ld,%ld,%ld] = %ld, want %ld", a, b, l, got, arg);
      if (found && tm[b * Nt + l] && n_txt[b] > 0) st += best;
    }
    const double want_i = si / std::max(n_img[a], 1.0), want_t = st / std::max(n_txt[b], 1.0);
    CHECK(std::isfinite(i2t[a * Bt + b]) && std::isfinite(t2i[a * Bt + b]), "unwritten score (%ld, %ld)", a, b);
    max_err = std::max({max_err, std::fabs(i2t[a * Bt + b] - want_i), std::fabs(t2i[a * Bt + b] - want_t)});
  }
  CHECK(max_err < 2e-6, "scores max abs err %.3g", max_err);

  // ---- backward with the kernel's own indices
  std::vector<float> gi(Bi * Bt), gt(Bi * Bt);
  for (auto& v : gi) v = nd(rng);
  for (auto& v : gt) v = nd(rng);
  std::vector<float> nimg_f(Bi), ntxt_f(Bt);
  emu_launch(unsigned(ceil_div(Bi, kWarps)), 0, [&] { _count_real_kernel(im.data(), Bi, Ni, nimg_f.data()); });
  emu_launch(unsigned(ceil_div(Bt, kWarps)), 0, [&] { _count_real_kernel(tm.data(), Bt, Nt, ntxt_f.data()); });
  for (int64_t a = 0; a < Bi; ++a) CHECK(nimg_f[a] == float(n_img[a]), "count img %ld", a);
  for (int64_t b = 0; b < Bt; ++b) CHECK(ntxt_f[b] == float(n_txt[b]), "count txt %ld", b);
  std::vector<T> d_img(Bi * Ni * D, skillkern::from_f32<T>(NAN)), d_txt(Bt * Nt * D, skillkern::from_f32<T>(NAN));
  using BCfg = BwdCfg<T, (std::is_same<T, float>::value ? 16 : 32)>;
  auto run_bwd = [&](BwdProblem q) {
    using Cfg = BCfg;
    const int64_t n_col_tiles = ceil_div(q.D, Cfg::NT);
    const int64_t grid = ceil_div(q.Bx * q.Nx, Cfg::MT) * n_col_tiles;
    emu_launch(unsigned(grid), Cfg::kSmemBytes, [&] { _token_similarity_bwd_kernel<T, Cfg>(q, n_col_tiles); });
  };
  std::vector<float> c_i2t(Bi * Bt, NAN), c_t2i(Bi * Bt, NAN);
  emu_launch(unsigned(ceil_div(Bi * Bt, kThreads)), 0, [&] {
    _coefficients_kernel(gi.data(), gt.data(), nimg_f.data(), ntxt_f.data(), Bi, Bt, c_i2t.data(), c_t2i.data());
  });
  BwdProblem q{};
  q.D = D; q.vec = vec;
  q.src = txt_t.data(); q.out = d_img.data();
  q.x_mask = use_masks ? im.data() : nullptr; q.y_mask = use_masks ? tm.data() : nullptr;
  q.cA = c_i2t.data(), q.cA_sx = Bt, q.cA_sy = 1; q.cB = c_t2i.data(), q.cB_sx = Bt, q.cB_sy = 1;
  q.idxA = row_idx.data(), q.idxA_bytes = rb, q.idxA_sx = Bt * Ni, q.idxA_sy = Ni;
  q.idxB = col_idx.data(), q.idxB_bytes = cb, q.idxB_sx = Bt * Nt, q.idxB_sy = Nt;
  q.Bx = Bi, q.Nx = Ni, q.By = Bt, q.Ny = Nt;
  run_bwd(q);
  q.src = img_t.data(); q.out = d_txt.data();
  q.x_mask = use_masks ? tm.data() : nullptr; q.y_mask = use_masks ? im.data() : nullptr;
  q.cA = c_t2i.data(), q.cA_sx = 1, q.cA_sy = Bt; q.cB = c_i2t.data(), q.cB_sx = 1, q.cB_sy = Bt;
  q.idxA = col_idx.data(), q.idxA_bytes = cb, q.idxA_sx = Nt, q.idxA_sy = Bt * Nt;
  q.idxB = row_idx.data(), q.idxB_bytes = rb, q.idxB_sx = Ni, q.idxB_sy = Bt * Ni;
  q.Bx = Bt, q.Nx = Nt, q.By = Bi, q.Ny = Ni;
  run_bwd(q);
  // reference gradients from the same indices
  std::vector<double> r_img(Bi * Ni * D, 0), r_txt(Bt * Nt * D, 0);
  for (int64_t a = 0; a < Bi; ++a) for (int64_t b = 0; b < Bt; ++b) {
    if (!(n_img[a] > 0 && n_txt[b] > 0)) continue;
    const double ci = gi[a * Bt + b] / n_img[a], ct = gt[a * Bt + b] / n_txt[b];
    for (int64_t k = 0; k < Ni; ++k) {
      if (!im[a * Ni + k]) continue;
      const int64_t l = read_idx(row_idx, rb, (a * Bt + b) * Ni + k);
      for (int64_t d = 0; d < D; ++d) { r_img[(a * Ni + k) * D + d] += ci * txt[(b * Nt + l) * D + d]; r_txt[(b * Nt + l) * D + d] += ci * img[(a * Ni + k) * D + d]; }
    }
    for (int64_t l = 0; l < Nt; ++l) {
      if (!tm[b * Nt + l]) continue;
      const int64_t k = read_idx(col_idx, cb, (a * Bt + b) * Nt + l);
      for (int64_t d = 0; d < D; ++d) { r_img[(a * Ni + k) * D + d] += ct * txt[(b * Nt + l) * D + d]; r_txt[(b * Nt + l) * D + d] += ct * img[(a * Ni + k) * D + d]; }
    }
  }
  double ge = 0, gn = 0;
  for (size_t e = 0; e < d_img.size(); ++e) { const double v = skillkern::to_f32(d_img[e]); CHECK(std::isfinite(v), "d_img[%zu] unwritten", e); ge = std::max(ge, std::fabs(v - r_img[e])); gn = std::max(gn, std::fabs(r_img[e])); }
  for (size_t e = 0; e < d_txt.size(); ++e) { const double v = skillkern::to_f32(d_txt[e]); CHECK(std::isfinite(v), "d_txt[%zu] unwritten", e); ge = std::max(ge, std::fabs(v - r_txt[e])); gn = std::max(gn, std::fabs(r_txt[e])); }
  for (int64_t a = 0; a < Bi; ++a) for (int64_t k = 0; k < Ni; ++k) if (!im[a * Ni + k]) for (int64_t d = 0; d < D; ++d) CHECK(skillkern::to_f32(d_img[(a * Ni + k) * D + d]) == 0.f, "padding image token got gradient");
  for (int64_t b = 0; b < Bt; ++b) for (int64_t l = 0; l < Nt; ++l) if (!tm[b * Nt + l]) for (int64_t d = 0; d < D; ++d) CHECK(skillkern::to_f32(d_txt[(b * Nt + l) * D + d]) == 0.f, "padding text token got gradient");
  const double gtol = f32 ? 1e-5 : std::is_same<T, __half>::value ? 2e-3 : 1.6e-2;
  CHECK(ge <= gtol * std::max(gn, 1.0), "grad max abs err %.3g (max %.3g)", ge, gn);
  std::printf("ok  %s Bi=%ld Bt=%ld Ni=%ld Nt=%ld D=%ld masks=%d empty=%d vec=%d swap=%d | %s | clear %ld, score err %.2g, grad err %.2g\n",
              f32 ? "f32 " : std::is_same<T, __half>::value ? "f16 " : "bf16", Bi, Bt, Ni, Nt, D, c.masks, c.empty, int(vec), swap, cfg.c_str(), clear, max_err, ge);
}

int main(int argc, char** argv) {
  g_copy_at_wait = argc > 1 ? std::atoi(argv[1]) : 1;
  const bool big = argc > 2 && std::atoi(argv[2]);
  // {Bi, Bt, Ni, Nt, D, masks, an empty image and text, vec}
  std::vector<Case> cases = {
      {3, 5, 50, 32, 24, true, false, 1},    // goal-like tokens, images straddle chunks
      {6, 4, 1, 7, 16, true, false, 1},      // Ni = 1: an image per column
      {2, 3, 73, 9, 19, true, false, 0},     // odd D: element-wise loads
      {4, 3, 12, 13, 32, false, false, 1},   // no masks
      {4, 5, 6, 7, 16, true, true, 1},       // items without real tokens
      {2, 3, 150, 20, 16, true, false, 1},   // an image longer than a chunk
      {21, 3, 50, 32, 8, true, false, 1},    // a group of 20 images over 8 chunks, then a second group
      {3, 2, 7, 200, 8, true, false, 1},     // 256-row tile
      {2, 2, 300, 3, 4, true, false, 1},     // an image over 3 chunks, int16 col_idx
      {2, 2, 12, 520, 4, true, false, 1},    // texts longer than a tile: roles swapped, int16 row_idx
      {20, 40, 3, 2, 4, true, false, 1},     // 16 texts per tile
      {3, 2, 1, 1, 0, false, false, 1},      // D = 0
      {4, 6, 37, 5, 16, true, false, 1},     // Nt = 5: 7 texts per backward slice (picks past kPickRows)
      {300, 3, 2, 9, 8, true, false, 1},     // 64 images per backward block: terms past the prefetch
  };
  if (big) {
    cases.push_back({2, 3, 40, 300, 8, true, false, 1});  // 512-row tile
    cases.push_back({130, 18, 1, 3, 16, true, false, 1});  // 130 images of one token
    cases.push_back({3, 4, 130, 9, 20, true, false, 0});   // element-wise loads over chunk boundaries
  }
  unsigned seed = 1;
  const std::string which = argc > 3 ? argv[3] : "all";
  for (const Case& c : cases) {
    if (which == "all" || which == "f32") run_case<float>(c, seed);
    if (which == "all" || which == "f16") run_case<__half>(c, seed);
    if (which == "all" || which == "bf16") run_case<__nv_bfloat16>(c, seed);
    ++seed;
  }
  std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
