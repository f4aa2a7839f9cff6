// Runs the token_reduce CUDA kernels on the CPU through emu.h, for one case described by the
// files in a directory (written by run_emu.py, which also builds this program and checks the
// results against reference.py with autograd):
//   meta.txt   "key value" lines: x_dtype B N D S eps has_w has_scores has_lnw has_lnb has_mask
//              pool_input w_dtype sc_dtype lnw_dtype lnb_dtype smem_limit n_sm seed
//   x.bin w.bin scores.bin lnw.bin lnb.bin mask.bin dout.bin   raw little-endian storage
// and writes out.bin lse.bin dx.bin dw.bin ds.bin dlnw.bin dlnb.bin. The sequence of launches,
// the geometry and the configuration choices are those of tokred_host.cpp (shared helpers in
// token_reduce.h); only the tensors are std::vectors instead of torch tensors.
// Not part of the extension build (setup.py compiles *.cpp / *.cu only).
#define SKILLKERN_TOKRED_EMU 1

#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "token_reduce/aux_kernels.cuh"
#include "token_reduce/bwd_kernel.cuh"

using namespace skillkern::tokred;

namespace {

std::map<std::string, double> read_meta(const std::string& dir) {
  std::ifstream f(dir + "/meta.txt");
  std::map<std::string, double> m;
  std::string k;
  double v;
  while (f >> k >> v) m[k] = v;
  return m;
}

std::vector<unsigned char> read_bin(const std::string& path, size_t bytes) {
  std::vector<unsigned char> b(bytes);
  if (bytes == 0) return b;
  std::ifstream f(path, std::ios::binary);
  f.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(bytes));
  if (!f) {
    std::fprintf(stderr, "tokred_emu: cannot read %zu bytes from %s\n", bytes, path.c_str());
    std::exit(2);
  }
  return b;
}

void write_bin(const std::string& path, const void* p, size_t bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(p), static_cast<std::streamsize>(bytes));
}

int esize(int code) { return code == kF32 ? 4 : 2; }

std::vector<std::vector<char>> g_stacks;

template <typename P>
void launch(void (*kernel)(const P), const P& p, int64_t grid, int threads, size_t smem, std::mt19937_64& rng) {
  const std::function<void()> body = [&] { kernel(p); };
  emu::g_gridDim.x = static_cast<unsigned>(grid);
  for (int64_t b = 0; b < grid; ++b) {
    emu::g_blockIdx.x = static_cast<unsigned>(b);
    emu::run_block(threads, smem, body, rng, g_stacks);
  }
}

template <typename T>
void fwd(const FwdParams& p, int mtn, size_t smem, std::mt19937_64& rng) {
  const int64_t grid = p.B * p.geo.n_chunks;
  switch (p.geo.nt * 10 + mtn) {
    case 11: return launch(&token_reduce_fwd_kernel<T, 1, 1>, p, grid, kThreads, smem, rng);
    case 12: return launch(&token_reduce_fwd_kernel<T, 1, 2>, p, grid, kThreads, smem, rng);
    case 21: return launch(&token_reduce_fwd_kernel<T, 2, 1>, p, grid, kThreads, smem, rng);
    case 22: return launch(&token_reduce_fwd_kernel<T, 2, 2>, p, grid, kThreads, smem, rng);
    case 31: return launch(&token_reduce_fwd_kernel<T, 3, 1>, p, grid, kThreads, smem, rng);
    case 32: return launch(&token_reduce_fwd_kernel<T, 3, 2>, p, grid, kThreads, smem, rng);
    case 41: return launch(&token_reduce_fwd_kernel<T, 4, 1>, p, grid, kThreads, smem, rng);
    case 42: return launch(&token_reduce_fwd_kernel<T, 4, 2>, p, grid, kThreads, smem, rng);
    default: std::fprintf(stderr, "tokred_emu: no forward kernel\n"); std::exit(2);
  }
}

template <typename T>
void bwd(const BwdParams& p, int64_t grid, size_t smem, std::mt19937_64& rng) {
  switch (p.geo.nt) {
    case 1: return launch(&token_reduce_bwd_kernel<T, 1>, p, grid, kThreads, smem, rng);
    case 2: return launch(&token_reduce_bwd_kernel<T, 2>, p, grid, kThreads, smem, rng);
    case 3: return launch(&token_reduce_bwd_kernel<T, 3>, p, grid, kThreads, smem, rng);
    case 4: return launch(&token_reduce_bwd_kernel<T, 4>, p, grid, kThreads, smem, rng);
    default: std::fprintf(stderr, "tokred_emu: no backward kernel\n"); std::exit(2);
  }
}

struct Prep {
  std::vector<uint4> wsf, wbf;
  std::vector<float> c1, c2;
  PrepParams p{};
};

// tokred_host.cpp: run_prep
void run_prep(Prep& r, const void* w, int w_dtype, const void* lnw, int lnw_dtype, const void* lnb, int lnb_dtype,
              int x_dtype, int D, int S, const Geometry& geo, bool with_wbf, std::mt19937_64& rng) {
  const int elem = esize(x_dtype);
  const int k_step = elem == 2 ? 16 : 8;
  PrepParams& p = r.p;
  p.D = D;
  p.S = S;
  p.nt = geo.nt;
  p.nks = geo.nks;
  p.nks5 = bwd_token_rows(elem, geo.nt) / k_step;
  p.ntd = geo.dp / 8;
  r.wsf.assign(size_t(p.nks) * p.nt * 32, make_uint4(0, 0, 0, 0));
  if (with_wbf) r.wbf.assign(size_t(p.nks5) * p.ntd * 32, make_uint4(0, 0, 0, 0));
  r.c1.assign(8 * geo.nt, NAN);
  r.c2.assign(8 * geo.nt, NAN);
  p.w = w;
  p.w_dtype = w_dtype;
  p.ln_w = lnw;
  p.ln_b = lnb;
  p.ln_w_dtype = lnw_dtype;
  p.ln_b_dtype = lnb_dtype;
  p.wsf = r.wsf.data();
  p.wbf = with_wbf ? r.wbf.data() : nullptr;
  p.c1 = r.c1.data();
  p.c2 = r.c2.data();
  p.has_ln = lnw != nullptr;
  p.has_ln_bias = lnb != nullptr;
  const int blocks = p.nks * p.nt + (with_wbf ? p.nks5 * p.ntd : 0) + 8 * p.nt;
  switch (x_dtype) {
    case kF16: return launch(&token_reduce_prep_kernel<__half>, p, blocks, 32, 0, rng);
    case kBF16: return launch(&token_reduce_prep_kernel<__nv_bfloat16>, p, blocks, 32, 0, rng);
    default: return launch(&token_reduce_prep_kernel<float>, p, blocks, 32, 0, rng);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: tokred_emu <case dir>\n");
    return 2;
  }
  const std::string dir = argv[1];
  auto m = read_meta(dir);
  const int xd = int(m["x_dtype"]), B = int(m["B"]), N = int(m["N"]), D = int(m["D"]), S = int(m["S"]);
  const bool has_w = m["has_w"] != 0, has_sc = m["has_scores"] != 0, has_lnw = m["has_lnw"] != 0;
  const bool has_lnb = m["has_lnb"] != 0, has_mask = m["has_mask"] != 0, pool_input = m["pool_input"] != 0;
  const int wd = int(m["w_dtype"]), scd = int(m["sc_dtype"]), lnwd = int(m["lnw_dtype"]), lnbd = int(m["lnb_dtype"]);
  const size_t smem_limit = size_t(m["smem_limit"]);  // backward; the forward's may be smaller
  const size_t fwd_smem_limit = m.count("fwd_smem_limit") ? size_t(m["fwd_smem_limit"]) : smem_limit;
  const int n_sm = int(m["n_sm"]);
  const float eps = float(m["eps"]);
  std::mt19937_64 rng{static_cast<uint64_t>(m["seed"])};
  const int es = esize(xd);

  auto x = read_bin(dir + "/x.bin", size_t(B) * N * D * es);
  auto w = read_bin(dir + "/w.bin", has_w ? size_t(D) * S * esize(wd) : 0);
  auto sc = read_bin(dir + "/scores.bin", has_sc ? size_t(B) * N * S * esize(scd) : 0);
  auto lnw = read_bin(dir + "/lnw.bin", has_lnw ? size_t(D) * esize(lnwd) : 0);
  auto lnb = read_bin(dir + "/lnb.bin", has_lnb ? size_t(D) * esize(lnbd) : 0);
  auto mask = read_bin(dir + "/mask.bin", has_mask ? size_t(B) * N : 0);
  auto dout = read_bin(dir + "/dout.bin", size_t(B) * S * D * es);
  const void* w_p = has_w ? w.data() : nullptr;
  const void* lnw_p = has_lnw ? lnw.data() : nullptr;
  const void* lnb_p = has_lnb ? lnb.data() : nullptr;

  // ---------------------------------------------------------------- forward (tokred_host.cpp: fwd_cuda)
  const Geometry geo = make_geometry(es, D, S);
  const FwdConfig fcfg = pick_fwd_config(es, N, geo, fwd_smem_limit);
  if (fcfg.smem == 0) {
    std::fprintf(stderr, "tokred_emu: forward does not fit %zu bytes of shared memory\n", fwd_smem_limit);
    return 3;
  }
  std::vector<unsigned char> out(size_t(B) * S * D * es, 0xCD);  // poisoned: every element must be written
  std::vector<float> lse(size_t(B) * S, NAN);
  Prep fprep;
  if (has_w) run_prep(fprep, w_p, wd, lnw_p, lnwd, lnb_p, lnbd, xd, D, S, geo, false, rng);
  FwdParams p{};
  p.x = x.data();
  p.mask = has_mask ? mask.data() : nullptr;
  p.scores = has_sc ? sc.data() : nullptr;
  p.scores_dtype = scd;
  p.ln_w = lnw_p;
  p.ln_b = lnb_p;
  p.ln_w_dtype = lnwd;
  p.ln_b_dtype = lnbd;
  p.wsf = has_w ? fprep.wsf.data() : nullptr;
  p.c1 = has_w ? fprep.c1.data() : nullptr;
  p.c2 = has_w ? fprep.c2.data() : nullptr;
  p.out = out.data();
  p.lse = lse.data();
  p.B = B;
  p.N = N;
  p.D = D;
  p.S = S;
  p.eps = eps;
  p.geo = geo;
  p.stages = fcfg.stages;
  p.has_ln = has_lnw;
  p.has_ln_bias = has_lnb;
  p.pool_ln = has_lnw && !pool_input;
  p.scores_given = has_sc;
  p.w_exact = has_w && !has_lnw && wd == xd && es == 2;
  p.x_vec = (D * es) % 16 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0;
  p.out_vec = (D * es) % 16 == 0 && reinterpret_cast<uintptr_t>(p.out) % 16 == 0;
  if (B > 0) {
    switch (xd) {
      case kF16: fwd<__half>(p, fcfg.mtn, fcfg.smem, rng); break;
      case kBF16: fwd<__nv_bfloat16>(p, fcfg.mtn, fcfg.smem, rng); break;
      default: fwd<float>(p, fcfg.mtn, fcfg.smem, rng);
    }
  }
  write_bin(dir + "/out.bin", out.data(), out.size());
  write_bin(dir + "/lse.bin", lse.data(), lse.size() * 4);
  std::printf("fwd: nt=%d dp=%d mtw=%d n_chunks=%d tile=%d stages=%d smem=%zu\n", geo.nt, geo.dp, geo.mtw,
              geo.n_chunks, 16 * fcfg.mtn, fcfg.stages, fcfg.smem);

  // ---------------------------------------------------------------- backward (tokred_host.cpp: bwd_cuda)
  const BwdConfig bcfg = pick_bwd_config(es, geo, smem_limit);
  if (bcfg.smem == 0) {
    std::fprintf(stderr, "tokred_emu: backward does not fit %zu bytes of shared memory\n", smem_limit);
    return 3;
  }
  const int64_t want = std::max<int64_t>(1, n_sm / geo.n_chunks);
  const int64_t ipg = (B + std::min<int64_t>(B, want) - 1) / std::min<int64_t>(B, want);
  const int64_t groups = (B + ipg - 1) / ipg;
  std::vector<unsigned char> dx(size_t(B) * N * D * es, 0xCD);
  std::vector<unsigned char> dw(has_w ? size_t(D) * S * esize(wd) : 0, 0xCD);
  std::vector<unsigned char> ds(has_sc ? size_t(B) * N * S * esize(scd) : 0, 0xCD);
  std::vector<unsigned char> dlnw(has_lnw ? size_t(D) * esize(lnwd) : 0, 0xCD);
  std::vector<unsigned char> dlnb(has_lnb ? size_t(D) * esize(lnbd) : 0, 0xCD);
  Prep bprep;
  if (has_w) run_prep(bprep, w_p, wd, lnw_p, lnwd, lnb_p, lnbd, xd, D, S, geo, true, rng);
  std::vector<float> dw_part(has_w ? size_t(groups) * D * S : 0, NAN);
  std::vector<float> dg_part(has_lnw ? size_t(groups) * D : 0, NAN), db_part(has_lnw ? size_t(groups) * D : 0, NAN);
  BwdParams q{};
  q.x = x.data();
  q.dout = dout.data();
  q.out = out.data();
  q.lse = lse.data();
  q.mask = p.mask;
  q.scores = p.scores;
  q.scores_dtype = scd;
  q.dscores = has_sc ? ds.data() : nullptr;
  q.w = w_p;
  q.w_dtype = wd;
  q.ln_w = lnw_p;
  q.ln_b = lnb_p;
  q.ln_w_dtype = lnwd;
  q.ln_b_dtype = lnbd;
  q.wsf = has_w ? bprep.wsf.data() : nullptr;
  q.wbf = has_w ? bprep.wbf.data() : nullptr;
  q.c1 = has_w ? bprep.c1.data() : nullptr;
  q.c2 = has_w ? bprep.c2.data() : nullptr;
  q.dx = dx.data();
  q.dw_part = has_w ? dw_part.data() : nullptr;
  q.dg_part = has_lnw ? dg_part.data() : nullptr;
  q.db_part = has_lnw ? db_part.data() : nullptr;
  q.B = B;
  q.N = N;
  q.D = D;
  q.S = S;
  q.eps = eps;
  q.geo = geo;
  q.stages = bcfg.stages;
  q.items_per_group = int(ipg);
  q.ntd = geo.dp / 8;
  q.has_ln = has_lnw;
  q.has_ln_bias = has_lnb;
  q.pool_ln = p.pool_ln;
  q.scores_given = has_sc;
  q.w_exact = p.w_exact;
  q.x_vec = (D * es) % 16 == 0 && reinterpret_cast<uintptr_t>(q.x) % 16 == 0 &&
            reinterpret_cast<uintptr_t>(q.dx) % 16 == 0;
  q.y_vec = (D * es) % 16 == 0 && reinterpret_cast<uintptr_t>(q.dout) % 16 == 0;
  if (B > 0 && N > 0) {
    const int64_t grid = groups * geo.n_chunks;
    switch (xd) {
      case kF16: bwd<__half>(q, grid, bcfg.smem, rng); break;
      case kBF16: bwd<__nv_bfloat16>(q, grid, bcfg.smem, rng); break;
      default: bwd<float>(q, grid, bcfg.smem, rng);
    }
    ReduceParams r{};
    r.dw_part = q.dw_part;
    r.dg_part = q.dg_part;
    r.db_part = q.db_part;
    r.dw = has_w ? dw.data() : nullptr;
    r.dg = has_lnw ? dlnw.data() : nullptr;
    r.db = has_lnb ? dlnb.data() : nullptr;
    r.dw_dtype = wd;
    r.dg_dtype = lnwd;
    r.db_dtype = lnbd;
    r.groups = int(groups);
    r.DS = int64_t(D) * S;
    r.D = D;
    const int64_t total = (r.dw ? r.DS : 0) + (r.dg ? D : 0) + (r.db ? D : 0);
    if (total > 0) {
      launch(&token_reduce_sum_partials_kernel, r, std::min<int64_t>((total + 255) / 256, 4096), 256, 0, rng);
    }
  }
  write_bin(dir + "/dx.bin", dx.data(), dx.size());
  write_bin(dir + "/dw.bin", dw.data(), dw.size());
  write_bin(dir + "/ds.bin", ds.data(), ds.size());
  write_bin(dir + "/dlnw.bin", dlnw.data(), dlnw.size());
  write_bin(dir + "/dlnb.bin", dlnb.data(), dlnb.size());
  std::printf("bwd: groups=%ld items_per_group=%ld stages=%d smem=%zu\n", long(groups), long(ipg), bcfg.stages,
              bcfg.smem);
  return 0;
}
