"""Benchmark skillkern.skill_ffn (skill-routed FFN) against baselines and a dense ceiling.

    y[t] = sum_j c[t, j] * ( act(x[t] @ w1[s] + b1[s]) @ w2[s] + b2[s] ),   s = skill_ids[t, j]

Providers (each builds one forward callable; the modes are built on top of it):
  skillkern-triton   skillkern.skill_ffn(..., backend="triton")
  skillkern-cuda     skillkern.skill_ffn(..., backend="cuda"): the CUDA C++ extension
                     (unavailable, with the reason, where it is not built or lacks the op)
  skillkern-torch    skillkern.skill_ffn(..., backend="torch") (skillkern's reference loop)
  skill-loop         plain-torch per-skill loop written here; the routing (nonzero per skill,
                     one host sync each) is timed, as a user would pay it
  grouped-mm         stable argsort by skill + torch._grouped_mm (CUTLASS grouped GEMM on sm90)
  torch-compile-ref  torch.compile(skill-loop), compiled once before timing
  liger-moe          liger-kernel's fused MoE (LigerFusedMoEFunction: routing, gather + GEMM +
                     SwiGLU, GEMM, weighted combine) when liger_kernel imports; SwiGLU without
                     biases only (--activation swiglu --no-bias), weights transposed to its
                     (E, out, in) layout once before timing
  dense-cublas       one dense FFN (addmm, act, addmm) doing the same activated FLOPs: the
                     ceiling that "% of dense" refers to; not the same function, so it is not
                     checked against the reference

Modes: fwd (a training forward: inputs require grad), bwd (autograd.grad of a retained graph
built once before timing), fwd+bwd. Gradients are taken w.r.t. x, w1, w2, b1, b2.

Metrics per (shape, provider, mode): median / p20 / p80 ms (triton.testing.do_bench on a GPU,
a perf_counter loop on the CPU), TFLOP/s of activated FLOPs (fwd = 2*N_active*(d*h1 + h*d),
h1 = 2h for swiglu; bwd = 2x fwd; fwd+bwd = 3x fwd), % of dense-cublas TFLOP/s for the same
shape and mode, peak memory (max_memory_allocated above what was allocated before the call),
speedup vs the fastest baseline (skill-loop, skillkern-torch, grouped-mm, torch-compile-ref).

Every row is appended as one JSON line to --out with device, versions and git commit.
CPU runs use tiny shapes to show that the script works; their numbers are not performance data.

Examples:
  python benchmarks/bench_skill_ffn.py --quick                  # CPU demo, or the goal shape on a GPU
  python benchmarks/bench_skill_ffn.py --shapes gpu-quick --modes fwd+bwd
  python benchmarks/bench_skill_ffn.py --shapes T=32768:d=1024:h=4096:routing=skewed:k=1
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

import skillkern as sk
from skillkern.bench._common import (CPU_NOTE, DTYPES, FAILED_NOTE, MODE_FLOP_FACTOR, Unavailable,
                                    add_run_args, by_shape, backend_reason, check_errors, default_out, env_info,
                                    first_line, given_matmul_tflops, importable,
                                    fmt, free_memory, goal_line, interpreting, last_mode, met,
                                    mode_fn, new_parser, parse_modes, parse_providers, pick_device,
                                    pick_shapes, print_header, rel_err, run_shapes, setup_failed,
                                    speedup, stamp_rows, sync, table_head, table_line, time_modes)
from skillkern.ops.skill_ffn.reference import activation_ref, skill_ffn_ref, slot_scale

OP = "skill_ffn"
METRIC = "tflops"  # compute-bound: activated TFLOP/s, % of the dense matmul ceiling
PROVIDERS = (
    "skillkern-triton",
    "skillkern-cuda",
    "skillkern-torch",
    "skill-loop",
    "grouped-mm",
    "torch-compile-ref",
    "liger-moe",
    "dense-cublas",
)
BASELINES = ("skill-loop", "skillkern-torch", "grouped-mm", "torch-compile-ref", "liger-moe")
# skillkern's kernels last: should one fault (a CUDA error ends the process), the shape's
# baselines are already on record. liger-moe only when liger_kernel imports (an optional peer).
DEFAULT_GPU_PROVIDERS = ("skill-loop", "grouped-mm", "torch-compile-ref", "liger-moe", "dense-cublas",
                         "skillkern-cuda", "skillkern-triton")
PEERS = {"liger-moe": "liger_kernel"}  # provider -> module; left out of the defaults when absent
DEFAULT_CPU_PROVIDERS = ("skill-loop", "skillkern-torch", "grouped-mm", "dense-cublas")
# Modes and their FLOP factors are _common's: bwd runs two GEMMs per forward GEMM (dX and dW).
# Relative error allowed vs the fp32 reference: bf16 operands land near 1e-3..1e-2; fp32 may run
# as tf32 in Triton dots (~3e-4). Anything above is a wrong kernel, not rounding.
TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 5e-2, torch.float32: 1e-2}
SKEWED = (0.50, 0.20, 0.10, 0.10, 0.05, 0.05)  # share of tokens per skill, E = 6


@dataclass(frozen=True)
class Shape:
    T: int
    d: int
    h: int
    E: int = 6
    routing: str = "uniform"  # "uniform" or "skewed"
    k: int = 1  # slots per token; slot j>0 holds a random skill different from the others

    def label(self) -> str:
        return f"T{self.T}-d{self.d}-h{self.h}-E{self.E}-{self.routing}-k{self.k}"


GOAL = Shape(32768, 1024, 4096, 6, "skewed", 1)
GOAL_SPEEDUP, GOAL_PCT_DENSE = 1.25, 80.0


def _gpu_shapes() -> list[Shape]:
    # 2 (d, h) x 4 T x 2 routings x 2 k = 32 shapes; the goal shape first so that a run cut
    # short by --time-budget still answers the goal question.
    out = [GOAL]
    for d, h in ((768, 3072), (1024, 4096)):
        for T in (4096, 16384, 32768, 65536):
            for routing in ("uniform", "skewed"):
                for k in (1, 2):
                    s = Shape(T, d, h, 6, routing, k)
                    if s != GOAL:
                        out.append(s)
    return out


PRESETS = {
    "gpu": _gpu_shapes,
    # 5 shapes x 3 modes x 5 providers = 75 timings; about 2-3 minutes on an H100 with compiles.
    "gpu-quick": lambda: [
        GOAL,
        Shape(32768, 1024, 4096, 6, "uniform", 1),
        Shape(32768, 1024, 4096, 6, "skewed", 2),
        Shape(4096, 768, 3072, 6, "uniform", 1),
        Shape(65536, 768, 3072, 6, "skewed", 1),
    ],
    "goal": lambda: [GOAL],
    "cpu": lambda: [
        Shape(256, 64, 128, 6, "uniform", 1),
        Shape(256, 64, 128, 6, "skewed", 2),
        Shape(1024, 128, 256, 6, "skewed", 1),
    ],
    "cpu-quick": lambda: [Shape(256, 64, 128, 6, "uniform", 1)],
}


def parse_shape(item: str) -> Shape:
    """A spec like T=32768:d=1024:h=4096:E=6:routing=skewed:k=1 (missing keys default to d=1024,
    h=4096, E=6, routing=uniform, k=1, T=4096)."""
    fields = {"T": 4096, "d": 1024, "h": 4096, "E": 6, "routing": "uniform", "k": 1}
    for kv in item.split(":"):
        key, sep, val = kv.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"bad shape spec {item!r}: want e.g. T=4096:d=768:h=3072:routing=skewed:k=2 or a preset {sorted(PRESETS)}")
        fields[key] = val if key == "routing" else int(val)
    if fields["routing"] not in ("uniform", "skewed"):
        raise SystemExit(f"routing must be uniform or skewed, got {fields['routing']!r}")
    if not 1 <= fields["k"] <= fields["E"]:
        raise SystemExit(f"need 1 <= k <= E, got k={fields['k']} E={fields['E']}")
    return Shape(**fields)


# ----------------------------------------------------------------------------- the baselines


def skill_loop_ffn(x, skill_ids, w1, w2, b1=None, b2=None, activation="gelu"):
    """Per-skill loop in plain torch (skillkern's reference, without its argument checks):
    per skill, nonzero (one host sync) + gather + addmm + act + addmm + weighted index_add."""
    T, d = x.shape
    ids2 = skill_ids.reshape(T, -1)
    return skill_ffn_ref(x, ids2, slot_scale(ids2, w1.shape[0], None), w1, w2, b1, b2, activation)


def grouped_mm_ffn(x, skill_ids, w1, w2, b1=None, b2=None, activation="gelu"):
    """Sort slots by skill, two torch._grouped_mm calls, unpermute with index_add. No host sync.

    _grouped_mm(a (N, K), b (G, K, M), offs (G,) int32 cumulative row ends) -> (N, M); rows past
    offs[-1] are left unwritten, and it takes no bias (validate: "Bias not supported yet"). On
    sm90 with bf16 it runs CUTLASS; elsewhere a per-group mm loop that syncs to read offs.
    Strides must be multiples of 16 bytes (d, h multiples of 8 in bf16); either layout of b works.
    """
    T, d = x.shape
    ids2 = skill_ids.reshape(T, -1)
    k = ids2.shape[1]
    E = w1.shape[0]
    c = slot_scale(ids2, E, None).reshape(-1)
    flat = ids2.reshape(-1)
    N = flat.numel()
    valid = (flat >= 0) & (flat < E)
    bucket = torch.where(valid, flat, E)
    order = torch.argsort(bucket, stable=True)
    counts = torch.bincount(bucket, minlength=E + 1)
    offs = torch.cumsum(counts[:E], 0).to(torch.int32)
    # Empty slots sort last; letting them ride in the last group keeps every row written (no
    # garbage flowing into y or into any gradient), and their scale c = 0 removes them again.
    # The alternative, slicing to the active count, needs a host sync.
    offs[-1] = N
    tok = order // k if k > 1 else order
    sid = bucket.index_select(0, order).clamp_(max=E - 1)
    xp = x.index_select(0, tok)
    z = torch._grouped_mm(xp, w1, offs=offs)
    if b1 is not None:
        z = z + b1.index_select(0, sid)
    a = activation_ref(z, activation)
    o = torch._grouped_mm(a, w2, offs=offs)
    if b2 is not None:
        o = o + b2.index_select(0, sid)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    yp = o.to(acc) * c.index_select(0, order).unsqueeze(1).to(acc)
    y = torch.zeros(T, d, dtype=acc, device=x.device).index_add_(0, tok, yp)
    return y.to(x.dtype)


_compiled_loop = None


def compiled_loop():
    """One torch.compile wrapper for the whole run: its cache spans shapes (automatic dynamic
    shapes after the first recompile), so later shapes do not pay a full compile."""
    global _compiled_loop
    if _compiled_loop is None:
        # 32 shapes x (grad / no-grad) must not fall back to eager silently at the default
        # limit of 8 recompiles.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        _compiled_loop = torch.compile(skill_loop_ffn)
    return _compiled_loop


# ----------------------------------------------------------------------------- providers


@dataclass
class Case:
    """One shape's data; fresh random values per shape (never zeros)."""

    shape: Shape
    x: torch.Tensor
    ids: torch.Tensor  # (T,) for k = 1, else (T, k)
    w1: torch.Tensor
    w2: torch.Tensor
    b1: torch.Tensor | None
    b2: torch.Tensor | None
    dy: torch.Tensor
    n_active: int
    activation: str

    @property
    def h1(self) -> int:  # width of GEMM 1: swiglu computes gate and up together
        return self.w1.shape[-1]

    def fwd_flops(self) -> float:
        return 2.0 * self.n_active * (self.shape.d * self.h1 + self.shape.h * self.shape.d)

    def params(self):
        return tuple(t for t in (self.x, self.w1, self.w2, self.b1, self.b2) if t is not None)


@dataclass
class Runner:
    forward: object  # () -> y
    inputs: tuple  # tensors the gradients are taken for
    dy: torch.Tensor
    checked: bool = True  # False: a different function (dense ceiling), not compared
    to_ref: object = None  # grads -> the reference's layout (x, w1, w2[, b1, b2]), when they differ

    def timed(self, mode: str):  # the callable that mode times
        return mode_fn(mode, self.forward, self.inputs, self.dy)


def make_case(shape: Shape, dtype, device, activation: str, bias: bool, seed: int) -> Case:
    g = torch.Generator(device=device).manual_seed(seed)
    T, d, h, E, k = shape.T, shape.d, shape.h, shape.E, shape.k
    h1 = 2 * h if activation == "swiglu" else h

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=g, device=device) * scale).to(dtype)

    if shape.routing == "uniform":
        first = torch.randint(0, E, (T,), generator=g, device=device)
    else:
        p = torch.tensor(SKEWED if E == 6 else [2.0 ** -i for i in range(E)], device=device)
        first = torch.multinomial(p / p.sum(), T, replacement=True, generator=g)
    cols = [first]
    if k > 1:
        # Slots 1..k-1: distinct skills, all different from slot 0 (random offsets 1..E-1).
        shift = torch.rand(T, E - 1, generator=g, device=device).argsort(-1)[:, : k - 1] + 1
        cols += [(first + shift[:, j]) % E for j in range(k - 1)]
    ids = torch.stack(cols, 1).long() if k > 1 else first.long()
    ids2 = ids.reshape(T, -1)
    n_active = int(((ids2 >= 0) & (ids2 < E)).sum())
    # Unit-variance activations through both GEMMs, so bf16 errors are representative.
    x = randn(T, d).requires_grad_()
    w1 = randn(E, d, h1, scale=d ** -0.5).requires_grad_()
    w2 = randn(E, h, d, scale=h ** -0.5).requires_grad_()
    b1 = randn(E, h1, scale=0.1).requires_grad_() if bias else None
    b2 = randn(E, d, scale=0.1).requires_grad_() if bias else None
    dy = randn(T, d)
    return Case(shape, x, ids, w1, w2, b1, b2, dy, n_active, activation)


def _sk_runner(case: Case, backend: str) -> Runner:
    why = backend_reason("skill_ffn", backend, case.x.device)
    if why:
        raise Unavailable(why)
    c = case

    def forward():
        return sk.skill_ffn(c.x, c.ids, c.w1, c.w2, c.b1, c.b2, activation=c.activation, backend=backend)

    return Runner(forward, c.params(), c.dy)


def _fn_runner(case: Case, fn) -> Runner:
    c = case

    def forward():
        return fn(c.x, c.ids, c.w1, c.w2, c.b1, c.b2, activation=c.activation)

    return Runner(forward, c.params(), c.dy)


_GROUPED_PROBE = """
import torch
x = torch.randn(37, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
w = torch.randn(4, 64, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
offs = torch.tensor([5, 5, 20, 37], device="cuda", dtype=torch.int32)  # an empty group, odd sizes
y = torch._grouped_mm(x, w, offs=offs)
gx, gw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
b = [0, 5, 5, 20, 37]
ref = torch.cat([x[b[i]:b[i + 1]].float() @ w[i].float() for i in range(4)])
torch.cuda.synchronize()
err = ((y.float() - ref).norm() / ref.norm()).item()
assert err < 1e-2, f"wrong result, rel err {err:.3e}"
print("ok", err)
"""


_grouped_probe_result: str | None = None


def grouped_mm_probe() -> str:
    """'' if torch._grouped_mm (bf16, CUDA) runs forward and backward on ragged groups (sizes not
    multiples of 8, one empty), else why not. Run in a child process: some torch versions
    assert on the device for such groups, and a device assert would end this whole run."""
    global _grouped_probe_result
    if _grouped_probe_result is None:
        try:
            r = subprocess.run([sys.executable, "-c", _GROUPED_PROBE], capture_output=True, text=True, timeout=180)
            tail = (r.stderr.strip().splitlines() or [""])[-1]
            _grouped_probe_result = "" if r.returncode == 0 else f"probe on ragged groups failed (rc {r.returncode}): {tail}"
        except Exception as e:
            _grouped_probe_result = f"probe could not run: {type(e).__name__}: {e}"
    return _grouped_probe_result


def _grouped_runner(case: Case) -> Runner:
    if not hasattr(torch, "_grouped_mm"):
        raise Unavailable(f"torch {torch.__version__} has no torch._grouped_mm")
    dev = case.x.device
    if dev.type == "cuda":
        if case.x.dtype != torch.bfloat16:
            raise Unavailable("the fast _grouped_mm path is bf16-only on CUDA")
        # 16-byte aligned strides: the row lengths d and h1 must be multiples of 8 bf16 elements.
        if case.shape.d % 8 or case.h1 % 8 or case.shape.h % 8:
            raise Unavailable("_grouped_mm needs d and h multiples of 8 (16-byte strides)")
        why = grouped_mm_probe()
        if why:
            raise Unavailable(f"torch._grouped_mm: {why}")
    return _fn_runner(case, grouped_mm_ffn)


def _compile_runner(case: Case) -> Runner:
    try:
        fn = compiled_loop()
    except Exception as e:
        raise Unavailable(f"torch.compile failed: {type(e).__name__}: {e}")
    return _fn_runner(case, fn)


def _dense_runner(case: Case) -> Runner:
    """One FFN over N_active rows with skill 0's weights: the same activated FLOPs as a cuBLAS
    chain with no routing, gather or combine. Fresh leaves so its grads do not touch the case's."""
    n, d = case.n_active, case.shape.d
    g = torch.Generator(device=case.x.device).manual_seed(1234)
    xd = (torch.randn(n, d, generator=g, device=case.x.device)).to(case.x.dtype).requires_grad_()
    w1d = case.w1[0].detach().clone().requires_grad_()
    w2d = case.w2[0].detach().clone().requires_grad_()
    b1d = case.b1[0].detach().clone().requires_grad_() if case.b1 is not None else None
    b2d = case.b2[0].detach().clone().requires_grad_() if case.b2 is not None else None
    dyd = torch.randn(n, d, generator=g, device=case.x.device).to(case.x.dtype)
    act = case.activation

    def forward():
        z = torch.addmm(b1d, xd, w1d) if b1d is not None else xd @ w1d
        a = activation_ref(z, act)
        return torch.addmm(b2d, a, w2d) if b2d is not None else a @ w2d

    inputs = tuple(t for t in (xd, w1d, w2d, b1d, b2d) if t is not None)
    return Runner(forward, inputs, dyd, checked=False)


def _liger_runner(case: Case) -> Runner:
    """liger-kernel's LigerFusedMoEFunction.apply(x, gate_up (E, 2h, d), down (E, d, h),
    top_k_index (T, k) int32, top_k_weights (T, k)): gate half first, like skillkern's swiglu."""
    if case.activation != "swiglu" or case.b1 is not None:
        raise Unavailable("liger's fused MoE computes SwiGLU experts without biases: run with "
                          "--activation swiglu --no-bias")
    if case.x.device.type == "cpu" and not interpreting():
        raise Unavailable("liger's fused MoE runs Triton kernels: CUDA, or TRITON_INTERPRET=1 on CPU")
    try:
        from liger_kernel.ops.fused_moe import LigerFusedMoEFunction
    except Exception as e:
        raise Unavailable(f"liger_kernel.ops.fused_moe not importable ({first_line(e)}); "
                          "pip install liger-kernel (GPU machine: a wheel in .whl, see gpu_check.sh)")
    c = case
    T, E = c.shape.T, c.shape.E
    ids = c.ids.reshape(T, -1)
    top_w = slot_scale(ids, E, None).to(c.x.dtype)  # the average over a token's skills
    top_i = ids.to(torch.int32).contiguous()
    gate_up = c.w1.detach().transpose(1, 2).contiguous().requires_grad_()  # (E, 2h, d)
    down = c.w2.detach().transpose(1, 2).contiguous().requires_grad_()     # (E, d, h)

    def forward():
        return LigerFusedMoEFunction.apply(c.x, gate_up, down, top_i, top_w)

    def to_ref(grads):
        gx, g_gu, g_down = grads
        return gx, g_gu.transpose(1, 2), g_down.transpose(1, 2)

    return Runner(forward, (c.x, gate_up, down), c.dy, to_ref=to_ref)


BUILDERS = {
    "skillkern-triton": lambda c: _sk_runner(c, "triton"),
    "skillkern-cuda": lambda c: _sk_runner(c, "cuda"),
    "skillkern-torch": lambda c: _sk_runner(c, "torch"),
    "skill-loop": lambda c: _fn_runner(c, skill_loop_ffn),
    "grouped-mm": _grouped_runner,
    "torch-compile-ref": _compile_runner,
    "liger-moe": _liger_runner,
    "dense-cublas": _dense_runner,
}


# ----------------------------------------------------------------------------- measuring


def reference(case: Case):
    """fp32 forward and gradients of the plain loop on upcast copies of the inputs."""
    wide = torch.float64 if case.x.dtype == torch.float64 else torch.float32
    leaves = [t.detach().to(wide).requires_grad_() if t is not None else None
              for t in (case.x, case.w1, case.w2, case.b1, case.b2)]
    x, w1, w2, b1, b2 = leaves
    y = skill_loop_ffn(x, case.ids, w1, w2, b1, b2, activation=case.activation)
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], case.dy.to(wide), allow_unused=True)
    return y.detach(), grads


class check_ids:
    """skillkern's id range check syncs with the host every call: on for the correctness
    check, off while timing (set_check_ids(False), as production runs would)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.prev = sk.check_ids_enabled()
        sk.set_check_ids(self.enabled)

    def __exit__(self, *exc):
        sk.set_check_ids(self.prev)


# ----------------------------------------------------------------------------- the run


def run_shape(shape: Shape, providers, modes, args, device, dtype, env) -> tuple[list[dict], bool]:
    """Check, then time every provider on one shape; returns the rows and whether all were right."""
    case = make_case(shape, dtype, device, args.activation, not args.no_bias, args.seed)
    peak = given_matmul_tflops(args.dtype)  # the dense matmul ceiling `skillkern bench` measured
    fwd_tflop = case.fwd_flops() / 1e12
    print(f"\n== {shape.label()}  N_active={case.n_active}  fwd {fwd_tflop:.4g} TFLOP  {args.dtype} {args.activation}")
    with check_ids(True):
        ref_y, ref_grads = reference(case)
    tol = TOLERANCE.get(dtype, 5e-2)
    fwd_flops = case.fwd_flops()
    base = {
        "time": None, **env, "dtype": args.dtype, "activation": args.activation, "bias": not args.no_bias,
        **asdict(shape), "n_active": case.n_active, "fwd_flops": fwd_flops,
    }

    def rates(mode, ms):
        tflops = fwd_flops * MODE_FLOP_FACTOR[mode] / (ms * 1e-3) / 1e12
        return {"tflops": tflops}, f"{tflops:8.4g} TFLOP/s"

    rows, all_ok = [], True
    for prov in providers:
        row0 = dict(base, provider=prov)
        try:
            runner = BUILDERS[prov](case)
            with check_ids(True):
                # The first call compiles / autotunes; it is also the correctness check.
                y = runner.forward()
                grads = torch.autograd.grad(y, runner.inputs, runner.dy, allow_unused=True)
                if runner.to_ref is not None:
                    grads = runner.to_ref(grads)
                sync(device)
        except Exception as e:
            rows.append(setup_failed(prov, row0, e, isinstance(e, (Unavailable, sk.BackendUnavailable))))
            all_ok &= rows[-1]["status"] != "failed"
            continue
        ok_modes = list(modes)
        if runner.checked:
            e_fwd = rel_err(y, ref_y)
            e_grad = max((rel_err(g, r) if g is not None else (0.0 if r is None else float("inf"))
                          for g, r in zip(grads, ref_grads)), default=0.0)
            row0.update(rel_err_fwd=e_fwd, rel_err_grad=e_grad)
            print(f"  {prov:18s} rel err vs fp32 loop: fwd {e_fwd:.2e}  grads(max) {e_grad:.2e}  (limit {tol:g})")
            wrong, ok_modes = check_errors(prov, row0, modes, e_fwd, tol, e_grad, tol)
            rows += wrong
            all_ok &= not wrong
        else:
            print(f"  {prov:18s} (ceiling: same FLOPs, a different function; not compared)")
        del y, grads
        with check_ids(False):
            timed, ok = time_modes(prov, row0, ok_modes, runner.timed, device, args, rates)
        rows += timed
        all_ok &= ok
        del runner
    # Ratios need every provider of the shape: % of dense and speedup vs the fastest baseline.
    for mode in modes:
        ok = [r for r in rows if r.get("mode") == mode and r.get("status") == "ok"]
        dense = next((r for r in ok if r["provider"] == "dense-cublas"), None)
        bases = [r for r in ok if r["provider"] in BASELINES]
        best = min(bases, key=lambda r: r["ms"]) if bases else None
        for r in ok:
            r["pct_dense"] = 100.0 * r["tflops"] / dense["tflops"] if dense else None
            r["pct_peak"] = 100.0 * r["tflops"] / peak if peak else None
            r["best_baseline"] = best["provider"] if best else None
            r["speedup_vs_best_baseline"] = best["ms"] / r["ms"] if best else None
    stamp_rows(rows)
    del case, ref_y, ref_grads
    free_memory(device)
    return rows, all_ok


def print_table(rows: list[dict], modes, cpu: bool):
    last = last_mode(modes)
    table_head(100, cpu, modes, "%dn", f"{last + ' TF/s':>13s}  {'x best':>6s}  {'peak MB':>8s}")

    def tail(r):  # the last mode's row
        return (f"{fmt(r.get('tflops'), '13.4g'):>13s}  {speedup(r.get('speedup_vs_best_baseline')):>6s}  "
                f"{fmt(r.get('peak_mem_mb'), '8.0f'):>8s}")

    for label, provs in by_shape(rows).items():
        print(f"-- {label}")
        for p, prow in provs.items():
            print(table_line(p, prow, modes, ("pct_dense", "5.0f"), tail, reason=70))
    print("(%dn = % of dense-cublas TFLOP/s for the same shape and mode; x best = speedup of the "
          f"{last} time vs the fastest baseline)")


def goal_verdicts(r: dict) -> str:
    """The goal line's verdicts on the goal shape's skillkern-triton fwd+bwd row."""
    sp, pct = r.get("speedup_vs_best_baseline"), r.get("pct_dense")
    sp_s = (f"{sp:.2f}x vs best baseline {r['best_baseline']} (goal >= {GOAL_SPEEDUP}x: "
            f"{met(sp >= GOAL_SPEEDUP)})") if sp is not None else "no baseline measured"
    pct_s = (f"{pct:.1f}% of dense cuBLAS (goal >= {GOAL_PCT_DENSE:.0f}%: "
             f"{met(pct >= GOAL_PCT_DENSE)})") if pct is not None else "dense not measured"
    return f"{sp_s}; {pct_s}"


HEADER = """\
skillkern benchmark: skill_ffn, the skill-routed FFN (each token runs the FFN of its skill(s)).
For every shape it first checks each provider's output and gradients against an fp32 loop,
then times forward, backward and forward+backward, and reports activated TFLOP/s, the % of a
dense cuBLAS FFN doing the same FLOPs (the ceiling), and the speedup over the fastest baseline."""


def build_parser():
    """This benchmark's command line (also parsed by `skillkern profile`)."""
    ap = new_parser(__doc__, "one shape: T=256,d=64,h=128 on CPU; the goal shape on a GPU",
                    "T=..:d=..:h=..:E=..:routing=uniform|skewed:k=..", PRESETS, PROVIDERS)
    ap.add_argument("--activation", default="gelu", choices=["gelu", "gelu_tanh", "relu", "silu", "swiglu"])
    ap.add_argument("--no-bias", action="store_true", help="b1 = b2 = None (default: bias on)")
    add_run_args(ap, "skill_ffn", "The goal shape runs first.")
    return ap


def profile_target(shape: Shape, provider: str, mode: str, args, device):
    """For `skillkern profile`: the callable that `mode` times for `provider` at `shape`, and
    the work of one call ({"flops": activated FLOPs}). args: this module's parsed options."""
    case = make_case(shape, DTYPES[args.dtype], device, args.activation, not args.no_bias, args.seed)
    sk.set_check_ids(False)  # the id range check syncs with the host every call: off, as when timing
    runner = BUILDERS[provider](case)
    return runner.timed(mode), {"flops": case.fwd_flops() * MODE_FLOP_FACTOR[mode]}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    device = pick_device(args.device)
    cpu = device.type != "cuda"
    dtype = DTYPES[args.dtype]
    shapes = pick_shapes(args, cpu, PRESETS, parse_shape)
    default = tuple(p for p in DEFAULT_GPU_PROVIDERS if p not in PEERS or importable(PEERS[p]))
    if cpu:  # the interpreted Triton kernel runs first: it takes longest
        default = (("skillkern-triton",) if interpreting() else ()) + DEFAULT_CPU_PROVIDERS
    providers = parse_providers(args.providers, PROVIDERS, default)
    modes = parse_modes(args.modes)

    env = env_info(device)
    print_header(HEADER, env, shapes, modes, providers)
    if cpu:
        print(CPU_NOTE)
        if "skillkern-triton" not in providers:
            print("      skillkern-triton is skipped on CPU (set TRITON_INTERPRET=1 to run it interpreted);"
                  " torch-compile-ref only with --providers.")
    if args.out is None:
        args.out = default_out("skill_ffn", cpu)

    all_rows = []
    all_ok = run_shapes(shapes, lambda s: run_shape(s, providers, modes, args, device, dtype, env),
                        args, device, env, all_rows, time.time())
    print_table(all_rows, modes, cpu)
    print(goal_line(all_rows, GOAL.label(), cpu, goal_verdicts))
    if not all_ok:
        print(FAILED_NOTE)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
