"""Benchmark skillkern.token_similarity (FILIP late interaction) against baselines and a matmul peak.

    i2t[a, b] = mean over real k of  max over real l of <img[a, k], txt[b, l]>
    t2i[a, b] = mean over real l of  max over real k of <img[a, k], txt[b, l]>

Providers (each builds one forward callable returning (i2t, t2i); the modes are built on top):
  skillkern-triton  skillkern.token_similarity(..., backend="triton"): one fused pass, no
                    (Bi, Bt, Ni, Nt) tensor
  skillkern-cuda    skillkern.token_similarity(..., backend="cuda"): the CUDA C++ extension
                    (unavailable, with the reason, where it is not built or lacks the op)
  skillkern-torch   skillkern.token_similarity(..., backend="torch") (skillkern's reference)
  naive             einsum -> (Bi, Bt, Ni, Nt) in the input dtype -> masked amax both ways ->
                    masked mean; autograd
  chunked-naive     Wukong's eval code: naive over chunks of --chunk texts, concatenated. Under
                    autograd each chunk keeps its masked similarities for backward, so it saves
                    only the transient copies, not the (Bi, Bt, Ni, Nt) state
  lik               late-interaction-kernels' maxsim, called once per direction with the roles
                    swapped; it returns the sum over real query tokens, divided here by the real
                    token counts for FILIP's mean. It pads the query length to a power of two
                    (Ni = 50 -> 64, with a copy) and picks its own backward ("auto")
  flash-maxsim      flash_maxsim_batched_train, once per direction; takes lengths, so masks must
                    be prefixes (they are here); computes in fp16 (bf16 inputs cast on load)
  matmul-peak       not a provider of the op: one dense (n x n) @ (n x n) matmul in the run's
                    dtype (--peak-size, 8192 on a GPU), timed once per run; "% peak" refers to it

The peers (lik, flash-maxsim) are imported only when asked for and reported unavailable when
absent (on the GPU machine they travel as wheels: see benchmarks/gpu_check.sh).

Inputs: img (Bi, Ni, D), txt (Bt, Nt, D), L2-normalised, fresh random values per shape (padding
tokens hold random values too, never zeros). Text lengths are uniform in [tmin, Nt] (prefix
masks); images are all real (no mask) unless imin > 0.

Modes: fwd (a training forward: inputs require grad, so each provider keeps its backward state),
bwd (autograd.grad of a graph built once, retained), fwd+bwd. The upstream gradients of i2t and
t2i are random (Bi, Bt) fp32 tensors; gradients are taken w.r.t. img and txt.

Correctness first: every provider's outputs and gradients are compared with skillkern's
reference in fp32 (fp64 for fp32 inputs), computed over text chunks so that it fits at any
shape. Allowed error: max(floor, 2 x torch's own error in the input dtype), flash-attn's rule;
torch's own error is the larger of skillkern's reference and the naive path, both run in that
dtype. The factor matters in bf16: rounding the similarities to bf16 makes near-ties flip their
arg-max, which moves ~7% of the gradient norm (B=64, Ni=50, Nt=32, D=256) in the naive path; a
fused kernel keeping fp32 similarities lands near 1e-3.

Metrics per (shape, provider, mode): median / p20 / p80 ms (triton.testing.do_bench on a GPU, a
perf_counter loop on the CPU), TFLOP/s with FLOPs = 2*Bi*Bt*Ni*Nt*D per forward (both directions
counted once, nominal Ni and Nt: padding included), bwd = 2x, fwd+bwd = 3x; % of the measured
matmul peak; peak extra memory (max_memory_allocated above what was allocated before the call);
speedup vs naive and vs lik. A naive provider whose estimated memory exceeds 70% of the GPU's is
skipped, and the row says so.

Every row is appended as one JSON line to --out with device, versions and git commit.
CPU runs use tiny shapes to show that the script works; their numbers are not performance data.

Examples:
  python benchmarks/bench_token_similarity.py --quick                 # CPU demo, or the goal shape on a GPU
  python benchmarks/bench_token_similarity.py --shapes gpu-quick --modes fwd+bwd
  python benchmarks/bench_token_similarity.py --shapes B=1024:Ni=50:Nt=32:D=256 --providers lik,skillkern-triton
  TRITON_INTERPRET=1 python benchmarks/bench_token_similarity.py --quick --dtype fp32 --providers naive,skillkern-triton,lik
"""
from __future__ import annotations

import importlib
import itertools
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import skillkern as sk
from skillkern.bench._common import (CPU_NOTE, DTYPES, FAILED_NOTE, MODE_FLOP_FACTOR, Unavailable,
                                    add_run_args, add_speedups, append_rows, backend_reason, by_shape, importable,
                                    check_errors, default_out, env_info, first_line, fmt, given_matmul_tflops,
                                    free_memory, goal_line, interpreting, last_mode, met, mode_fn,
                                    new_parser, now_iso, parse_modes, parse_providers, pick_device,
                                    pick_shapes, print_header, rel_err, run_shapes, setup_failed,
                                    speedup, stamp_rows, sync, table_head, table_line, time_modes,
                                    time_ms)
from skillkern.ops.token_similarity.reference import token_similarity_ref

OP = "token_similarity"
METRIC = "tflops"  # nominal FLOPs 2*Bi*Bt*Ni*Nt*D per forward, % of the dense matmul ceiling
PROVIDERS = ("skillkern-triton", "skillkern-cuda", "skillkern-torch", "naive", "chunked-naive", "lik", "flash-maxsim")
BASELINES = ("naive", "chunked-naive", "lik", "flash-maxsim")
# Optional peers: provider -> module; in the default providers only when they import.
PEERS = {"lik": "late_interaction_kernels", "flash-maxsim": "flash_maxsim"}
NAIVE = ("naive", "chunked-naive")
# skillkern's kernels last: should one fault (a CUDA error ends the process), the shape's
# baselines are already on record.
DEFAULT_GPU_PROVIDERS = ("naive", "chunked-naive", "lik", "flash-maxsim", "skillkern-cuda", "skillkern-triton")
DEFAULT_CPU_PROVIDERS = ("naive", "chunked-naive", "skillkern-torch")
# Modes and their FLOP factors are _common's: bwd is two GEMM-shaped products per forward one
# (d_img from txt, d_txt from img).
# Floor of the allowed relative error; the check allows max(floor, 2 x torch's own error).
TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 5e-2, torch.float32: 1e-2}
# Skip a naive provider whose estimated peak exceeds this share of the GPU's memory: an OOM
# part-way through would leave the allocator fragmented for the providers after it.
NAIVE_MEM_FRACTION = 0.70
REF_CHUNK_BYTES = 256 * 2**20  # the reference's (Bi, chunk, Ni, Nt) block, per text chunk


@dataclass(frozen=True)
class Shape:
    Bi: int
    Bt: int
    Ni: int
    Nt: int
    D: int = 256
    tmin: int = 8  # text lengths uniform in [min(tmin, Nt), Nt]
    imin: int = 0  # 0: images all real (no mask); else lengths uniform in [imin, Ni]

    def label(self) -> str:
        s = f"Bi{self.Bi}-Bt{self.Bt}-Ni{self.Ni}-Nt{self.Nt}-D{self.D}-txt{min(self.tmin, self.Nt)}..{self.Nt}"
        return s + (f"-img{self.imin}..{self.Ni}" if self.imin else "")

    def fwd_flops(self) -> float:
        return 2.0 * self.Bi * self.Bt * self.Ni * self.Nt * self.D


GOAL = Shape(1024, 1024, 50, 32, 256)
GOAL_X_LIK, GOAL_X_NAIVE, GOAL_PCT_PEAK, GOAL_MEM_MB = 2.0, 10.0, 50.0, 200.0


def _gpu_shapes() -> list[Shape]:
    # 2 batch sizes x 4 image lengths (ViT-B/32 at 224: 50 tokens; token-reduced 12 / 24; 256 for
    # 16x16 patches) = 8 shapes, the goal shape first so a run cut short still answers the goal.
    out = [GOAL]
    for B in (256, 1024):
        for Ni in (50, 12, 256, 24):
            s = Shape(B, B, Ni, 32, 256)
            if s != GOAL:
                out.append(s)
    return out


PRESETS = {
    "gpu": _gpu_shapes,
    "gpu-quick": lambda: [GOAL, Shape(1024, 1024, 12, 32, 256), Shape(1024, 1024, 256, 32, 256),
                          Shape(256, 256, 50, 32, 256)],
    "goal": lambda: [GOAL],
    # Tiny: tmin=3 so that the text masks vary; the last one masks images too.
    "cpu": lambda: [Shape(8, 8, 12, 8, 32, tmin=3), Shape(16, 12, 50, 32, 64),
                    Shape(8, 10, 24, 8, 32, tmin=3, imin=5)],
    "cpu-quick": lambda: [Shape(8, 8, 12, 8, 32, tmin=3)],
}


def parse_shape(item: str) -> Shape:
    """A spec like B=1024:Ni=50:Nt=32:D=256 (B sets Bi and Bt; Bi=, Bt=, tmin=, imin= also work;
    missing keys default to B=1024, Ni=50, Nt=32, D=256, tmin=8, imin=0)."""
    f = {"Bi": 1024, "Bt": 1024, "Ni": 50, "Nt": 32, "D": 256, "tmin": 8, "imin": 0}
    for kv in item.split(":"):
        key, sep, val = kv.partition("=")
        if not sep or key not in (*f, "B") or not val.isdigit():
            raise SystemExit(f"bad shape spec {item!r}: want e.g. B=1024:Ni=50:Nt=32:D=256 "
                             f"(keys B, Bi, Bt, Ni, Nt, D, tmin, imin) or a preset {sorted(PRESETS)}")
        if key == "B":
            f["Bi"] = f["Bt"] = int(val)
        else:
            f[key] = int(val)
    if min(f["Bi"], f["Bt"], f["Ni"], f["Nt"], f["D"], f["tmin"]) < 1 or f["imin"] > f["Ni"]:
        raise SystemExit(f"bad shape spec {item!r}: sizes and tmin must be >= 1, imin <= Ni")
    return Shape(**f)


# ----------------------------------------------------------------------------- the baselines


def naive_similarity(img, txt, img_mask, txt_mask, inv_ni, inv_nt):
    """What one writes in plain torch: all Bi*Bt*Ni*Nt similarities in the input dtype, masked
    (-inf) max both ways, masked mean (inv_ni: (Bi,), inv_nt: (Bt,) = 1 / real-token counts)."""
    sim = torch.einsum("akd,bld->abkl", img, txt)  # (Bi, Bt, Ni, Nt)
    neg = float("-inf")
    s_row = sim if txt_mask is None else sim.masked_fill(~txt_mask[None, :, None, :], neg)
    s_col = sim if img_mask is None else sim.masked_fill(~img_mask[:, None, :, None], neg)
    row = s_row.amax(3).float()  # (Bi, Bt, Ni): best text token per image token
    col = s_col.amax(2).float()  # (Bi, Bt, Nt): best image token per text token
    if img_mask is not None:
        row = row.masked_fill(~img_mask[:, None, :], 0.0)
    if txt_mask is not None:
        col = col.masked_fill(~txt_mask[None, :, :], 0.0)
    return row.sum(2) * inv_ni[:, None], col.sum(2) * inv_nt[None, :]


def chunked_naive_similarity(img, txt, img_mask, txt_mask, inv_ni, inv_nt, chunk: int):
    """Wukong's evaluation loop: naive_similarity over chunks of `chunk` texts, concatenated."""
    i2t, t2i = [], []
    for s in range(0, txt.shape[0], chunk):
        e = s + chunk
        a, b = naive_similarity(img, txt[s:e], img_mask, None if txt_mask is None else txt_mask[s:e],
                                inv_ni, inv_nt[s:e])
        i2t.append(a)
        t2i.append(b)
    return torch.cat(i2t, 1), torch.cat(t2i, 1)


def naive_bytes(shape: Shape, provider: str, elt: int, chunk: int) -> float:
    """Estimated peak bytes of a naive provider's fwd+bwd. S = one (Bi, Bt, Ni, Nt) tensor.
    naive: forward holds sim + two masked copies (3 S); backward adds amax's tie masks and
    sim-sized gradients: ~5 S. chunked-naive: the two masked copies of every chunk stay saved
    for backward (2 S) plus one chunk's transients (~4 S_chunk)."""
    S = float(shape.Bi) * shape.Bt * shape.Ni * shape.Nt * elt
    if provider == "naive":
        return 5 * S
    return 2 * S + 4 * S * min(1.0, chunk / shape.Bt)


# ----------------------------------------------------------------------------- providers


@dataclass
class Case:
    """One shape's data; fresh random values per shape (never zeros)."""

    shape: Shape
    img: torch.Tensor  # (Bi, Ni, D), leaf, requires grad
    txt: torch.Tensor  # (Bt, Nt, D), leaf, requires grad
    img_mask: torch.Tensor | None  # (Bi, Ni) bool prefix mask, None = all real
    txt_mask: torch.Tensor | None  # (Bt, Nt)
    img_len: torch.Tensor | None  # (Bi,) int32, None = all real
    txt_len: torch.Tensor | None  # (Bt,) int32
    inv_ni: torch.Tensor  # (Bi,) fp32, 1 / real image tokens
    inv_nt: torch.Tensor  # (Bt,) fp32
    g_i2t: torch.Tensor  # (Bi, Bt) fp32 upstream gradient
    g_t2i: torch.Tensor


@dataclass
class Runner:
    forward: object  # () -> (i2t, t2i)
    inputs: tuple  # tensors the gradients are taken for
    grads: tuple  # upstream gradients of (i2t, t2i)
    version: str | None = None  # a peer's package version

    def timed(self, mode: str):  # the callable that mode times
        return mode_fn(mode, self.forward, self.inputs, self.grads)


def make_case(shape: Shape, dtype, device, seed: int) -> Case:
    g = torch.Generator(device=device).manual_seed(seed)

    def lengths(B, N, lo):
        lo = min(lo, N)
        return torch.randint(lo, N + 1, (B,), generator=g, device=device, dtype=torch.int32)

    def tokens(B, N):
        x = torch.randn(B, N, shape.D, generator=g, device=device)
        return F.normalize(x, dim=-1).to(dtype).requires_grad_()

    img, txt = tokens(shape.Bi, shape.Ni), tokens(shape.Bt, shape.Nt)
    txt_len = lengths(shape.Bt, shape.Nt, shape.tmin) if shape.tmin < shape.Nt else None
    img_len = lengths(shape.Bi, shape.Ni, shape.imin) if shape.imin else None

    def mask(lens, N):
        return None if lens is None else torch.arange(N, device=device)[None, :] < lens[:, None]

    img_mask, txt_mask = mask(img_len, shape.Ni), mask(txt_len, shape.Nt)

    def inv_count(lens, B, N):
        n = torch.full((B,), float(N), device=device) if lens is None else lens.float()
        return 1.0 / n

    g_i2t = torch.randn(shape.Bi, shape.Bt, generator=g, device=device)
    g_t2i = torch.randn(shape.Bi, shape.Bt, generator=g, device=device)
    return Case(shape, img, txt, img_mask, txt_mask, img_len, txt_len,
                inv_count(img_len, shape.Bi, shape.Ni), inv_count(txt_len, shape.Bt, shape.Nt), g_i2t, g_t2i)


def _runner(case: Case, forward, version=None) -> Runner:
    return Runner(forward, (case.img, case.txt), (case.g_i2t, case.g_t2i), version)


def _sk_runner(case: Case, backend: str) -> Runner:
    why = backend_reason("token_similarity", backend, case.img.device)
    if why:
        raise Unavailable(why)
    c = case

    def forward():
        return sk.token_similarity(c.img, c.txt, c.img_mask, c.txt_mask, backend=backend)

    return _runner(case, forward)


def _naive_runner(case: Case, chunk: int | None) -> Runner:
    c = case
    if chunk is None:
        def forward():
            return naive_similarity(c.img, c.txt, c.img_mask, c.txt_mask, c.inv_ni, c.inv_nt)
    else:
        def forward():
            return chunked_naive_similarity(c.img, c.txt, c.img_mask, c.txt_mask, c.inv_ni, c.inv_nt, chunk)
    return _runner(case, forward)


def _import_peer(provider: str, device):
    name = PEERS[provider]
    if device.type == "cpu" and not interpreting():
        raise Unavailable(f"{provider} runs Triton kernels: CUDA, or TRITON_INTERPRET=1 (forward only) on CPU")
    try:
        mod = importlib.import_module(name)
    except Exception as e:
        raise Unavailable(f"{name} not importable ({first_line(e)}); pip install "
                          f"{name.replace('_', '-')} (GPU machine: a wheel in .whl, see gpu_check.sh)")
    return mod, getattr(mod, "__version__", None)


def _lik_runner(case: Case) -> Runner:
    """late-interaction-kernels 0.4.x: maxsim(Q (Nq, Lq, d), D (Nd, Ld, d), q_mask, d_mask) ->
    (Nq, Nd) fp32 = sum over real query tokens of the max over real doc tokens."""
    lik, version = _import_peer("lik", case.img.device)
    maxsim = getattr(lik, "maxsim", None)
    if maxsim is None:
        raise Unavailable(f"late_interaction_kernels {version} has no maxsim")
    c = case

    def forward():
        s_it = maxsim(c.img, c.txt, c.img_mask, c.txt_mask)  # (Bi, Bt), image tokens are queries
        s_ti = maxsim(c.txt, c.img, c.txt_mask, c.img_mask)  # (Bt, Bi), text tokens are queries
        return s_it * c.inv_ni[:, None], s_ti.t() * c.inv_nt[None, :]

    return _runner(case, forward, version)


def _flash_maxsim_runner(case: Case) -> Runner:
    """flash-maxsim 0.3.x: flash_maxsim_batched_train(Q (Nq, Lq, d), D (B, Ld, d), shared_docs,
    doc_lengths (B,), query_lengths (Nq,)) -> (Nq, B) fp32 sums over real query tokens."""
    fm, version = _import_peer("flash-maxsim", case.img.device)
    fn = getattr(fm, "flash_maxsim_batched_train", None)
    if fn is None:
        raise Unavailable(f"flash_maxsim {version} has no flash_maxsim_batched_train")
    c = case

    def forward():
        s_it = fn(c.img, c.txt, shared_docs=True, doc_lengths=c.txt_len, query_lengths=c.img_len)
        s_ti = fn(c.txt, c.img, shared_docs=True, doc_lengths=c.img_len, query_lengths=c.txt_len)
        return s_it * c.inv_ni[:, None], s_ti.t() * c.inv_nt[None, :]

    return _runner(case, forward, version)


def builders(args):
    return {
        "skillkern-triton": lambda c: _sk_runner(c, "triton"),
        "skillkern-cuda": lambda c: _sk_runner(c, "cuda"),
        "skillkern-torch": lambda c: _sk_runner(c, "torch"),
        "naive": lambda c: _naive_runner(c, None),
        "chunked-naive": lambda c: _naive_runner(c, args.chunk),
        "lik": _lik_runner,
        "flash-maxsim": _flash_maxsim_runner,
    }


_SHIMMED = False


def interpreter_autotune_shim():
    """Under TRITON_INTERPRET=1 on CPU there is no device benchmarker, so a peer's
    @triton.autotune fails ('0 active drivers'). Make every autotuner take its first config
    without timing (the configs are not run). skillkern's kernels carry one config there."""
    global _SHIMMED
    if _SHIMMED:
        return
    from triton.runtime import autotuner

    order = itertools.count()

    def first_config_wins(kernel_call, quantiles=None, **_):
        t = float(next(order))  # increasing "times": the first config benched is the fastest
        return [t] * len(quantiles) if quantiles else t

    autotuner.Autotuner.do_bench = property(lambda self: first_config_wins)
    _SHIMMED = True


# ----------------------------------------------------------------------------- measuring


def reference(case: Case, wide: torch.dtype | None, naive: bool = False):
    """Outputs (i2t, t2i) and gradients (d_img, d_txt) of skillkern's reference (naive=True:
    of naive_similarity) for the random upstream gradients, over chunks of texts (no
    (Bi, Bt, Ni, Nt) tensor at once: the fp32 reference at Bi=Bt=1024, Ni=256 would be 34 GB).
    wide=None runs it in the input dtype (torch's own error at this precision); gradients are
    summed over chunks in fp32."""
    c, s = case, case.shape
    dt = wide or c.img.dtype
    acc = torch.float64 if dt == torch.float64 else torch.float32
    per_text = s.Bi * s.Ni * s.Nt * max(torch.finfo(dt).bits // 8, 4)
    chunk = max(1, min(s.Bt, REF_CHUNK_BYTES // per_text))
    img = c.img.detach().to(dt).requires_grad_()
    i2t = torch.empty(s.Bi, s.Bt, dtype=acc, device=img.device)
    t2i = torch.empty_like(i2t)
    d_img = torch.zeros(c.img.shape, dtype=acc, device=img.device)
    d_txt = torch.zeros(c.txt.shape, dtype=acc, device=img.device)
    for a in range(0, s.Bt, chunk):
        b = a + chunk
        txt = c.txt[a:b].detach().to(dt).requires_grad_()
        tm = None if c.txt_mask is None else c.txt_mask[a:b]
        if naive:
            o_it, o_ti = naive_similarity(img, txt, c.img_mask, tm, c.inv_ni, c.inv_nt[a:b])
        else:
            o_it, o_ti = token_similarity_ref(img, txt, c.img_mask, tm)
        gi, gt = torch.autograd.grad((o_it, o_ti), (img, txt), (c.g_i2t[:, a:b].to(o_it.dtype),
                                                                 c.g_t2i[:, a:b].to(o_ti.dtype)))
        i2t[:, a:b], t2i[:, a:b] = o_it.detach(), o_ti.detach()
        d_img += gi
        d_txt[a:b] = gt
    return (i2t, t2i), (d_img, d_txt)


def errors(outs, grads, ref) -> tuple[float, float]:
    (r_out, r_grads) = ref
    e_fwd = max(rel_err(o, r) for o, r in zip(outs, r_out))
    e_grad = max((rel_err(g, r) if g is not None else float("inf")) for g, r in zip(grads, r_grads))
    return e_fwd, e_grad


def check_outputs(outs, shape: Shape) -> str | None:
    """Why the outputs break the contract ((i2t, t2i), float32 (Bi, Bt) each), or None."""
    if not isinstance(outs, (tuple, list)) or len(outs) != 2:
        return f"returned {type(outs).__name__}, not (i2t, t2i)"
    for name, o in zip(("i2t", "t2i"), outs):
        if tuple(o.shape) != (shape.Bi, shape.Bt):
            return f"{name} has shape {tuple(o.shape)}, want {(shape.Bi, shape.Bt)}"
        if o.dtype != torch.float32:
            return f"{name} is {o.dtype}, want torch.float32"
    return None


def measure_peak(n: int, dtype, device, args, env) -> dict:
    """Dense (n x n) @ (n x n) in the run's dtype: the ceiling that % peak refers to."""
    g = torch.Generator(device=device).manual_seed(args.seed + 1)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)  # random: zeros run faster
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    row = dict(time=now_iso(), **env, dtype=args.dtype, provider="matmul-peak", mode="fwd",
               label=f"matmul-{n}x{n}x{n}", M=n, N=n, K=n)
    try:
        med, p20, p80 = time_ms(lambda: torch.mm(a, b), device, args)
    except Exception as e:
        msg = first_line(e)
        print(f"  matmul-peak        !!! FAILED: {msg[:300]} !!!")
        return dict(row, status="failed", reason=msg[:500])
    tflops = 2.0 * n ** 3 / (med * 1e-3) / 1e12
    print(f"  matmul-peak        {n}^3 {args.dtype}: {med:9.3f} ms  [{p20:.3f}, {p80:.3f}]  {tflops:8.4g} TFLOP/s")
    return dict(row, status="ok", ms=med, ms_p20=p20, ms_p80=p80, tflops=tflops)


# ----------------------------------------------------------------------------- the run


def run_shape(shape: Shape, providers, modes, args, device, dtype, env, peak_tflops) -> tuple[list[dict], bool]:
    """Check, then time every provider on one shape; returns the rows and whether all were right."""
    case = make_case(shape, dtype, device, args.seed)
    print(f"\n== {shape.label()}  fwd {shape.fwd_flops() / 1e12:.4g} TFLOP  {args.dtype}"
          f"  (S = Bi*Bt*Ni*Nt = {shape.Bi * shape.Bt * shape.Ni * shape.Nt / 1e9:.3g} G values)")
    wide = torch.float64 if dtype == torch.float32 else torch.float32
    ref = reference(case, wide)
    # torch's own error at the input precision (bf16 similarities): the yardstick of the check.
    # Both ways torch computes it: max() sends a tie's gradient to one token, amax() splits it.
    t_fwd, t_grad = 0.0, 0.0
    if dtype != torch.float32:
        for use_naive in (False, True):
            e = errors(*reference(case, None, use_naive), ref)
            t_fwd, t_grad = max(t_fwd, e[0]), max(t_grad, e[1])
    floor = TOLERANCE.get(dtype, 5e-2)
    tol_fwd, tol_grad = max(floor, 2 * t_fwd), max(floor, 2 * t_grad)
    print(f"  reference: {wide} over text chunks; torch in {args.dtype}: fwd {t_fwd:.2e}  grads {t_grad:.2e}"
          f"  -> limits fwd {tol_fwd:.3g}, grads {tol_grad:.3g}")
    base = {
        "time": None, **env, "dtype": args.dtype, **asdict(shape), "fwd_flops": shape.fwd_flops(),
        "peak_tflops": peak_tflops, "torch_err_fwd": t_fwd, "torch_err_grad": t_grad,
        "tol_fwd": tol_fwd, "tol_grad": tol_grad,
    }
    total_mem = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None

    def rates(mode, ms):
        tflops = shape.fwd_flops() * MODE_FLOP_FACTOR[mode] / (ms * 1e-3) / 1e12
        pct = 100.0 * tflops / peak_tflops if peak_tflops else None
        return ({"tflops": tflops, "pct_peak": pct},
                f"{tflops:8.4g} TFLOP/s" + (f"  {pct:5.1f}% peak" if pct is not None else ""))

    build = builders(args)
    rows, all_ok = [], True
    for prov in providers:
        row0 = dict(base, provider=prov)
        ok_modes = list(modes)
        if prov in NAIVE and total_mem is not None:
            est = naive_bytes(shape, prov, torch.finfo(dtype).bits // 8, args.chunk)
            row0["est_mem_gb"] = est / 1e9
            if est > NAIVE_MEM_FRACTION * total_mem:
                why = (f"estimated {est / 1e9:.1f} GB > {NAIVE_MEM_FRACTION:.0%} of the GPU's "
                       f"{total_mem / 1e9:.1f} GB")
                print(f"  {prov:18s} SKIPPED: {why}")
                rows.append(dict(row0, status="skipped", reason=why))
                continue
        try:
            runner = build[prov](case)
            row0["peer_version"] = runner.version
            outs = runner.forward()  # the first call compiles / autotunes; it is also the check
            sync(device)
        except Exception as e:
            rows.append(setup_failed(prov, row0, e, isinstance(e, (Unavailable, sk.BackendUnavailable))))
            all_ok &= rows[-1]["status"] != "failed"
            continue
        bad = check_outputs(outs, shape)
        if bad:
            print(f"  !!! {prov}: {bad}; provider skipped !!!")
            rows.append(dict(row0, status="wrong", reason=bad))
            all_ok = False
            continue
        try:
            grads = torch.autograd.grad(outs, runner.inputs, runner.grads)
            sync(device)
        except Exception as e:
            msg = first_line(e)
            if device.type == "cpu" and prov in PEERS:  # their backward kernels insist on CUDA
                print(f"  {prov:18s} backward UNAVAILABLE on CPU ({msg[:200]}): fwd only")
                rows += [dict(row0, mode=m, status="unavailable", reason=f"backward on CPU: {msg[:400]}")
                         for m in modes if m != "fwd"]
            else:
                print(f"  !!! {prov}: backward FAILED: {msg[:300]} !!!")
                rows += [dict(row0, mode=m, status="failed", reason=f"backward: {msg[:400]}")
                         for m in modes if m != "fwd"]
                all_ok = False
            grads = None
            ok_modes = [m for m in modes if m == "fwd"]
        e_fwd, e_grad = errors(outs, grads if grads is not None else (None, None), ref)
        if grads is None:
            e_grad = None
        pad = None
        if grads is not None and case.txt_mask is not None:
            pad = grads[1].detach()[~case.txt_mask].abs().max().item() if (~case.txt_mask).any() else 0.0
        row0.update(rel_err_fwd=e_fwd, rel_err_grad=e_grad, pad_grad_max=pad)
        print(f"  {prov:18s} rel err vs {wide}: fwd {e_fwd:.2e}  grads(max) {fmt(e_grad, '.2e')}"
              f"  (limits {tol_fwd:.3g}, {tol_grad:.3g})" + (f"  |grad| on text padding {pad:.1e}" if pad else ""))
        wrong, ok_modes = check_errors(prov, row0, ok_modes, e_fwd, tol_fwd, e_grad, tol_grad)
        rows += wrong
        all_ok &= not wrong
        del outs, grads
        timed, ok = time_modes(prov, row0, ok_modes, runner.timed, device, args, rates)
        rows += timed
        all_ok &= ok
        del runner
        free_memory(device)  # free this provider's memory before the next one's peak is measured
    # Ratios need every provider of the shape: speedup vs naive and vs lik.
    add_speedups(rows, modes, (("naive", "speedup_vs_naive"), ("lik", "speedup_vs_lik")))
    stamp_rows(rows)
    del case, ref
    free_memory(device)
    return rows, all_ok


def print_table(rows: list[dict], modes, cpu: bool):
    last = last_mode(modes)
    table_head(110, cpu, modes, "%pk", f"{last + ' TF/s':>13s}  {'x naive':>7s}  {'x lik':>6s}  {'peak MB':>8s}")
    for r in rows:
        if r["provider"] == "matmul-peak":
            print(f"-- {r['label']}: " + (f"{r['ms']:.3f} ms = {r['tflops']:.4g} TFLOP/s (the 100% of %pk)"
                                           if r.get("status") == "ok" else f"{r['status']}: {r.get('reason', '')}"))

    def tail(r):  # the last mode's row
        return (f"{fmt(r.get('tflops'), '13.4g'):>13s}  {speedup(r.get('speedup_vs_naive')):>7s}  "
                f"{speedup(r.get('speedup_vs_lik')):>6s}  {fmt(r.get('peak_mem_mb'), '8.0f'):>8s}")

    for label, provs in by_shape(rows, skip="matmul-peak").items():
        print(f"-- {label}")
        for p, prow in provs.items():
            print(table_line(p, prow, modes, ("pct_peak", "5.1f"), tail))
    print(f"(%pk = % of the matmul-peak TFLOP/s of this run, nominal FLOPs 2*Bi*Bt*Ni*Nt*D per forward; "
          f"x naive / x lik = speedup of the {last} time)")


def goal_verdicts(r: dict) -> str:
    """The goal line's verdicts on the goal shape's skillkern-triton fwd+bwd row."""
    parts = []
    for key, who, goal in (("speedup_vs_lik", "LIK's two calls", GOAL_X_LIK), ("speedup_vs_naive", "naive", GOAL_X_NAIVE)):
        v = r.get(key)
        parts.append(f"{v:.2f}x {who} (goal >= {goal:g}x: {met(v >= goal)})" if v is not None
                     else f"{who} not measured")
    pct, mem = r.get("pct_peak"), r.get("peak_mem_mb")
    parts.append(f"{pct:.1f}% of matmul peak (goal >= {GOAL_PCT_PEAK:g}%: {met(pct >= GOAL_PCT_PEAK)})"
                 if pct is not None else "matmul peak not measured")
    parts.append(f"peak extra memory {mem:.0f} MB (goal <= {GOAL_MEM_MB:g} MB: {met(mem <= GOAL_MEM_MB)})"
                 if mem is not None else "memory not measured")
    return "; ".join(parts)


HEADER = """\
skillkern benchmark: token_similarity, FILIP's token-wise late interaction (i2t and t2i).
For every shape it first checks each provider's outputs and gradients against an fp32 reference,
then times forward, backward and forward+backward, and reports TFLOP/s, the % of a dense matmul
measured in the same run, peak extra memory, and the speedup over naive torch and over LIK."""


def build_parser():
    """This benchmark's command line (also parsed by `skillkern profile`)."""
    ap = new_parser(__doc__, "one shape: B=8,Ni=12,Nt=8,D=32 on CPU; the goal shape on a GPU",
                    "B=..:Ni=..:Nt=..:D=..[:Bi=..:Bt=..:tmin=..:imin=..]", PRESETS, PROVIDERS)
    ap.add_argument("--chunk", type=int, default=None,
                    help="texts per chunk of chunked-naive (default 64 on a GPU, 3 on CPU so tiny shapes loop)")
    ap.add_argument("--peak-size", type=int, default=None,
                    help="n of the n^3 matmul-peak (default 8192 on a GPU, 256 on CPU; 0 = skip)")
    add_run_args(ap, "token_similarity", "The goal shape runs first.")
    return ap


def profile_target(shape: Shape, provider: str, mode: str, args, device):
    """For `skillkern profile`: the callable that `mode` times for `provider` at `shape`, and
    the work of one call ({"flops": nominal FLOPs}). args: this module's parsed options."""
    if args.chunk is None:
        args.chunk = 3 if device.type != "cuda" else 64
    case = make_case(shape, DTYPES[args.dtype], device, args.seed)
    runner = builders(args)[provider](case)
    return runner.timed(mode), {"flops": shape.fwd_flops() * MODE_FLOP_FACTOR[mode]}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    device = pick_device(args.device)
    cpu = device.type != "cuda"
    dtype = DTYPES[args.dtype]
    if args.chunk is None:
        args.chunk = 3 if cpu else 64
    if args.chunk < 1:
        raise SystemExit("--chunk must be >= 1")
    if args.peak_size is None:
        args.peak_size = 256 if cpu else 8192
    shapes = pick_shapes(args, cpu, PRESETS, parse_shape)
    default = tuple(p for p in DEFAULT_GPU_PROVIDERS if p not in PEERS or importable(PEERS[p]))
    if cpu:  # the interpreted Triton kernel runs first: it takes longest
        default = (("skillkern-triton",) if interpreting() else ()) + DEFAULT_CPU_PROVIDERS
    providers = parse_providers(args.providers, PROVIDERS, default, " (matmul-peak: --peak-size)")
    modes = parse_modes(args.modes)
    if cpu and interpreting() and any(p in PEERS for p in providers):
        interpreter_autotune_shim()

    env = env_info(device)
    print_header(HEADER, env, shapes, modes, providers)
    if cpu:
        print(CPU_NOTE)
        if not interpreting():
            print("      skillkern-triton, lik and flash-maxsim are skipped on CPU: they run under TRITON_INTERPRET=1 "
                  "(--dtype fp32; the peers forward only, with --providers).")
    if args.out is None:
        args.out = default_out("token_similarity", cpu)

    t0 = time.time()
    all_rows, peak_tflops = [], given_matmul_tflops(args.dtype)
    if peak_tflops:
        print(f"  matmul-peak        {peak_tflops:.4g} TFLOP/s {args.dtype}, measured by `skillkern bench` for this run")
    elif args.peak_size > 0:
        peak = measure_peak(args.peak_size, dtype, device, args, env)
        if peak["status"] == "ok":
            peak_tflops = peak["tflops"]
        append_rows(args.out, [peak])
        all_rows.append(peak)
    all_ok = run_shapes(shapes, lambda s: run_shape(s, providers, modes, args, device, dtype, env, peak_tflops),
                        args, device, env, all_rows, t0)
    print_table(all_rows, modes, cpu)
    print(goal_line(all_rows, GOAL.label(), cpu, goal_verdicts))
    if not all_ok:
        print(FAILED_NOTE)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
