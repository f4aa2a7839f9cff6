"""Benchmark skillkern.skill_ffn (skill-routed FFN) against baselines and a dense ceiling.

    y[t] = sum_j c[t, j] * ( act(x[t] @ w1[s] + b1[s]) @ w2[s] + b2[s] ),   s = skill_ids[t, j]

Providers:
  skillkern-triton / -cuda / -torch  skillkern.skill_ffn(..., backend=...)
  skill-loop         a per-skill cuBLAS loop written here: argsort of the slots by skill, one
                     host sync for the counts, then per skill one contiguous slice: gather,
                     addmm, act, addmm, weighted index_add
  grouped-mm         the same sort + two torch._grouped_mm (CUTLASS grouped GEMM on sm90)
  torch-compile-ref  torch.compile(skill-loop), compiled once before timing
  liger-moe          liger-kernel's fused MoE (SwiGLU without biases: --activation swiglu --no-bias)
  dense-cublas       one dense FFN (addmm, act, addmm) doing the same activated FLOPs: a ceiling,
                     not the same function, so not checked; goals use the speedup against it

Every provider's output and gradients (x, w1, w2, b1, b2) are checked against skillkern's fp32
reference before timing. FLOPs: fwd = 2 * N_active * (d * h1 + h * d), h1 = 2h for swiglu;
bwd = 2x fwd; fwd+bwd = 3x. % of ceiling: of the run's dense matmul TFLOP/s.

Examples:
  python benchmarks/bench.py skill_ffn --quick         # CPU demo, or the goal shape on a GPU
  python benchmarks/bench.py skill_ffn --shapes gpu-quick --modes fwd+bwd
  python benchmarks/bench.py skill_ffn --shapes T=32768:d=1024:h=4096:routing=skewed:k=1
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import torch

import skillkern as sk
from skillkern._backend import interpreting
from skillkern.bench._common import MODE_FLOP_FACTOR, Unavailable, backend_reason, compile_baseline, first_line
from skillkern.bench.runner import OpSpec, Provider, Reference, interpreter_autotune_shim, parse_spec
from skillkern.ops.skill_ffn.reference import activation_ref, skill_ffn_ref, slot_scale

# Relative error allowed vs the fp32 reference: bf16 operands land near 1e-3..1e-2; fp32 may run
# as tf32 in Triton dots (~3e-4). Anything above is a wrong kernel, not rounding.
TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 5e-2, torch.float32: 1e-2}
SKEWED = (0.50, 0.20, 0.10, 0.10, 0.05, 0.05)  # share of tokens per skill, E = 6
NAMES = ("x", "w1", "w2", "b1", "b2")


@dataclass(frozen=True)
class Shape:
    T: int = 4096
    d: int = 1024
    h: int = 4096
    E: int = 6
    routing: str = "uniform"  # "uniform" or "skewed"
    k: int = 1  # slots per token; slot j>0 holds a random skill different from the others

    def label(self) -> str:
        return f"T{self.T}-d{self.d}-h{self.h}-E{self.E}-{self.routing}-k{self.k}"


GOAL = Shape(32768, 1024, 4096, 6, "skewed", 1)
# 2 (d, h) x 4 T x 2 routings x 2 k = 32 shapes, the goal shape first
GPU = [GOAL] + [s for d, h in ((768, 3072), (1024, 4096)) for T in (4096, 16384, 32768, 65536)
                for r in ("uniform", "skewed") for k in (1, 2) if (s := Shape(T, d, h, 6, r, k)) != GOAL]
PRESETS = {
    "gpu": lambda: list(GPU),
    "gpu-quick": lambda: [GOAL, Shape(32768, 1024, 4096, 6, "uniform", 1), Shape(32768, 1024, 4096, 6, "skewed", 2),
                          Shape(4096, 768, 3072, 6, "uniform", 1), Shape(65536, 768, 3072, 6, "skewed", 1)],
    "goal": lambda: [GOAL],
    "cpu": lambda: [Shape(256, 64, 128, 6, "uniform", 1), Shape(256, 64, 128, 6, "skewed", 2),
                    Shape(1024, 128, 256, 6, "skewed", 1)],
    "cpu-quick": lambda: [Shape(256, 64, 128, 6, "uniform", 1)],
}


def parse_shape(item: str) -> Shape:
    s = parse_spec(Shape, item, "T=4096:d=768:h=3072:routing=skewed:k=2", PRESETS)
    if s.routing not in ("uniform", "skewed") or not 1 <= s.k <= s.E:
        raise SystemExit(f"bad shape spec {item!r}: routing uniform|skewed, 1 <= k <= E")
    return s


@dataclass
class Case:
    shape: Shape
    x: torch.Tensor  # (T, d), leaf
    ids: torch.Tensor  # (T,) for k = 1, else (T, k)
    w1: torch.Tensor  # (E, d, h1)
    w2: torch.Tensor  # (E, h, d)
    b1: torch.Tensor | None
    b2: torch.Tensor | None
    dy: torch.Tensor
    n_active: int
    activation: str
    recompute: bool = False  # skillkern's providers: skill_ffn(recompute=...)

    def leaves(self) -> tuple:
        return tuple(t for t in (self.x, self.w1, self.w2, self.b1, self.b2) if t is not None)

    def names(self) -> tuple:
        return NAMES[:3] + (NAMES[3:] if self.b1 is not None else ())


def make_case(shape: Shape, dtype, device, args) -> Case:
    g = torch.Generator(device=device).manual_seed(args.seed)
    T, d, h, E, k = shape.T, shape.d, shape.h, shape.E, shape.k
    h1 = 2 * h if args.activation == "swiglu" else h

    def randn(*size, scale=1.0):  # unit-variance activations through both GEMMs
        return (torch.randn(*size, generator=g, device=device) * scale).to(dtype)

    if shape.routing == "uniform":
        first = torch.randint(0, E, (T,), generator=g, device=device)
    else:
        p = torch.tensor(SKEWED if E == 6 else [2.0 ** -i for i in range(E)], device=device)
        first = torch.multinomial(p / p.sum(), T, replacement=True, generator=g)
    # slots 1..k-1: distinct skills, all different from slot 0 (random offsets 1..E-1)
    shift = torch.rand(T, E - 1, generator=g, device=device).argsort(-1)[:, : k - 1] + 1
    ids = torch.stack([first] + [(first + shift[:, j]) % E for j in range(k - 1)], 1) if k > 1 else first
    bias = not args.no_bias
    return Case(shape, randn(T, d).requires_grad_(), ids.long(), randn(E, d, h1, scale=d ** -0.5).requires_grad_(),
                randn(E, h, d, scale=h ** -0.5).requires_grad_(), randn(E, h1, scale=0.1).requires_grad_() if bias else None,
                randn(E, d, scale=0.1).requires_grad_() if bias else None, randn(T, d), int((ids >= 0).sum()),
                args.activation, args.recompute)


def ffn_rows(x, w1, w2, b1, b2, activation):
    """act(x @ w1 + b1) @ w2 + b2 with cuBLAS (addmm folds each bias into its GEMM)."""
    z = torch.addmm(b1, x, w1) if b1 is not None else x @ w1
    a = activation_ref(z, activation)
    return torch.addmm(b2, a, w2) if b2 is not None else a @ w2


def skill_loop_ffn(x, skill_ids, w1, w2, b1=None, b2=None, activation="gelu"):
    """What one writes with cuBLAS: sort the slots by skill, then one GEMM chain per skill on its
    contiguous slice of the sorted slots, weighted and index_add-ed into y (fp32)."""
    T, E = x.shape[0], w1.shape[0]
    ids = skill_ids.reshape(T, -1)
    k = ids.shape[1]
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)  # empty (-1) slots first
    counts = torch.bincount(flat + 1, minlength=E + 1).tolist()  # the one host sync
    c = slot_scale(ids, E, None).reshape(-1)
    y = torch.zeros(x.shape, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype, device=x.device)
    start = counts[0]
    for e in range(E):
        slots = order[start:start + counts[e + 1]]
        start += counts[e + 1]
        if slots.numel():
            tok = slots // k
            o = ffn_rows(x[tok], w1[e], w2[e], b1[e] if b1 is not None else None,
                         b2[e] if b2 is not None else None, activation)
            y.index_add_(0, tok, o.to(y.dtype) * c[slots, None])
    return y.to(x.dtype)


def grouped_mm_ffn(x, skill_ids, w1, w2, b1=None, b2=None, activation="gelu"):
    """Sort slots by skill, two torch._grouped_mm (no bias: added per row), unpermute with
    index_add. No host sync: empty slots ride in the last group with scale 0."""
    T, E = x.shape[0], w1.shape[0]
    ids = skill_ids.reshape(T, -1)
    k, flat = ids.shape[1], ids.reshape(-1)
    c = slot_scale(ids, E, None).reshape(-1)
    bucket = torch.where(flat >= 0, flat, E)
    order = torch.argsort(bucket, stable=True)
    offs = torch.cumsum(torch.bincount(bucket, minlength=E + 1)[:E], 0).to(torch.int32)
    offs[-1] = flat.numel()  # every row written: no garbage into y or a gradient
    tok, sid = order // k, bucket[order].clamp(max=E - 1)
    # biases as one-hot products (N, E) @ (E, h): their gradients are then matmuls that sum the
    # T*k rows with fp32 accumulation (a gathered b[sid] sums them in bf16: ~10 % off at T = 32768)
    onehot = (sid[:, None] == torch.arange(E, device=x.device)[None, :]).to(x.dtype)  # no host sync
    z = torch._grouped_mm(x[tok], w1, offs=offs)
    a = activation_ref(z + onehot @ b1 if b1 is not None else z, activation)
    o = torch._grouped_mm(a, w2, offs=offs)
    o = o + onehot @ b2 if b2 is not None else o
    y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    return y.index_add_(0, tok, o.float() * c[order, None]).to(x.dtype)


def _fn(fn):
    def build(c: Case, args) -> Provider:
        return Provider(lambda: fn(c.x, c.ids, c.w1, c.w2, c.b1, c.b2, activation=c.activation), c.leaves(),
                        c.dy, c.names())
    return build


def _skillkern(backend: str):
    def build(c: Case, args) -> Provider:
        why = backend_reason("skill_ffn", backend, c.x.device)
        if why:
            raise Unavailable(why)
        return _fn(lambda *a, **kw: sk.skill_ffn(*a, **kw, recompute=c.recompute, backend=backend))(c, args)
    return build


# torch._grouped_mm on ragged groups (sizes not multiples of 8, one empty) in a child process:
# some torch versions assert on the device there, which would end the whole run.
_PROBE = """import torch
x = torch.randn(37, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
w = torch.randn(4, 64, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
y = torch._grouped_mm(x, w, offs=torch.tensor([5, 5, 20, 37], device="cuda", dtype=torch.int32))
torch.autograd.grad(y, (x, w), torch.ones_like(y))
b = [0, 5, 5, 20, 37]
ref = torch.cat([x[b[i]:b[i + 1]].float() @ w[i].float() for i in range(4)])
assert ((y.float() - ref).norm() / ref.norm()).item() < 1e-2"""
_probe: list[str] = []


def _grouped(c: Case, args) -> Provider:
    if not hasattr(torch, "_grouped_mm"):
        raise Unavailable(f"torch {torch.__version__} has no torch._grouped_mm")
    if c.x.is_cuda:
        if c.x.dtype != torch.bfloat16 or c.shape.d % 8 or c.shape.h % 8:
            raise Unavailable("torch._grouped_mm on CUDA: bf16 with d, h multiples of 8 (16-byte strides)")
        if not _probe:
            r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=180)
            _probe.append("" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1])
        if _probe[0]:
            raise Unavailable(f"torch._grouped_mm fails on ragged groups: {_probe[0]}")
    return _fn(grouped_mm_ffn)(c, args)


_compiled: list = []


def _compile(c: Case, args) -> Provider:
    if not _compiled:  # one wrapper for the run: its cache spans shapes (dynamic after a recompile)
        _compiled.append(compile_baseline(skill_loop_ffn))
    return _fn(_compiled[0])(c, args)


def _dense(c: Case, args) -> Provider:
    """One FFN over N_active rows with skill 0's weights: the same activated FLOPs with no
    routing, gather or combine. Fresh leaves, so its gradients do not touch the case's."""
    g = torch.Generator(device=c.x.device).manual_seed(1234)
    xd = torch.randn(c.n_active, c.shape.d, generator=g, device=c.x.device).to(c.x.dtype).requires_grad_()
    w1, w2, b1, b2 = (t[0].detach().clone().requires_grad_() if t is not None else None
                      for t in (c.w1, c.w2, c.b1, c.b2))
    dy = torch.randn(c.n_active, c.shape.d, generator=g, device=c.x.device).to(c.x.dtype)
    leaves = tuple(t for t in (xd, w1, w2, b1, b2) if t is not None)
    return Provider(lambda: ffn_rows(xd, w1, w2, b1, b2, c.activation), leaves, dy, checked=False)


def _liger(c: Case, args) -> Provider:
    """liger-kernel's LigerFusedMoEFunction.apply(x, gate_up (E, 2h, d), down (E, d, h),
    top_k_index (T, k) int32, top_k_weights (T, k))."""
    if c.activation != "swiglu" or c.b1 is not None:
        raise Unavailable("liger's fused MoE computes SwiGLU experts without biases: --activation swiglu --no-bias")
    if not c.x.is_cuda and not interpreting():
        raise Unavailable("liger's fused MoE runs Triton kernels: CUDA, or TRITON_INTERPRET=1 on CPU")
    try:
        from liger_kernel.ops.fused_moe import LigerFusedMoEFunction
    except ImportError as e:
        raise Unavailable(f"liger_kernel.ops.fused_moe not importable ({first_line(e)}): pip install liger-kernel")
    if not c.x.is_cuda:
        interpreter_autotune_shim()
    ids = c.ids.reshape(c.shape.T, -1)
    top_w, top_i = slot_scale(ids, c.shape.E, None).to(c.x.dtype), ids.to(torch.int32).contiguous()
    gate_up = c.w1.detach().transpose(1, 2).contiguous().requires_grad_()
    down = c.w2.detach().transpose(1, 2).contiguous().requires_grad_()
    return Provider(lambda: LigerFusedMoEFunction.apply(c.x, gate_up, down, top_i, top_w), (c.x, gate_up, down),
                    c.dy, NAMES[:3], to_ref=lambda g: (g[0], g[1].transpose(1, 2), g[2].transpose(1, 2)))


def reference(c: Case, args) -> Reference:
    """skillkern's reference in fp32 (fp64 for fp64 inputs) on upcast copies."""
    wide = torch.float64 if c.x.dtype == torch.float64 else torch.float32
    leaves = [t.detach().to(wide).requires_grad_() for t in c.leaves()]
    by = dict(zip(c.names(), leaves))
    ids = c.ids.reshape(c.shape.T, -1)
    y = skill_ffn_ref(by["x"], ids, slot_scale(ids, c.shape.E, None, wide), by["w1"], by["w2"], by.get("b1"),
                      by.get("b2"), c.activation)
    grads = torch.autograd.grad(y, leaves, c.dy.to(wide))
    tol = TOLERANCE.get(c.x.dtype, 5e-2)
    return Reference((y.detach(),), dict(zip(c.names(), grads)), tol, tol, note=f"reference: skill_ffn_ref in {wide}")


def work(c: Case, mode: str) -> dict:
    h1 = c.w1.shape[-1]  # swiglu computes gate and up together
    return {"flops": 2.0 * c.n_active * (c.shape.d * h1 + c.shape.h * c.shape.d) * MODE_FLOP_FACTOR[mode]}


def _add_args(ap) -> None:
    ap.add_argument("--activation", default="gelu", choices=["gelu", "gelu_tanh", "relu", "silu", "swiglu"])
    ap.add_argument("--no-bias", action="store_true", help="b1 = b2 = None (default: bias on)")
    ap.add_argument("--recompute", action="store_true",
                    help="skillkern providers recompute GEMM1 in the backward instead of keeping the "
                         "pre-activation (recompute=True)")


SPEC = OpSpec(
    name="skill_ffn", doc=__doc__, metric="tflops", presets=PRESETS, parse_shape=parse_shape,
    header="skillkern benchmark: skill_ffn, the skill-routed FFN (each token runs the FFN of its skill(s)).",
    shape_help="T=..:d=..:h=..:E=..:routing=uniform|skewed:k=..",
    quick_help="one shape: T=256,d=64,h=128 on CPU; the goal shape on a GPU",
    providers={"skillkern-triton": _skillkern("triton"), "skillkern-cuda": _skillkern("cuda"),
               "skillkern-torch": _skillkern("torch"), "skill-loop": _fn(skill_loop_ffn), "grouped-mm": _grouped,
               "torch-compile-ref": _compile, "liger-moe": _liger, "dense-cublas": _dense},
    default_gpu=("skill-loop", "grouped-mm", "torch-compile-ref", "liger-moe", "dense-cublas", "skillkern-cuda",
                 "skillkern-triton"),
    default_cpu=("skill-loop", "skillkern-torch", "grouped-mm", "dense-cublas"),
    baselines=("skill-loop", "skillkern-torch", "grouped-mm", "torch-compile-ref", "liger-moe"), versus=("dense-cublas",),
    peers={"liger-moe": "liger_kernel"}, make_case=make_case, reference=reference, work=work,
    out_spec=lambda c: [(tuple(c.x.shape), c.x.dtype)], add_args=_add_args,
    case_fields=lambda c, args, device, modes: {"activation": c.activation, "bias": c.b1 is not None,
                                                "recompute": c.recompute,
                                                "n_active": c.n_active},
)
