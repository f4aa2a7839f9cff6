"""Benchmark skillkern's token reduction (Wukong's TokenReduction layer) against the literal
module, torch.compile of it and the device's copy bandwidth.

    u = LayerNorm(x)                 x (B, N, D); conv1: grouped 1x1 D->D (G groups); conv2: 1x1 D->S
    A[b, s, :] = softmax over real positions n of conv2(conv1(u))[b, s, :]
    out[b, s, :] = sum_n A[b, s, n] * value_conv(v)[b, n, :],   v = u (values=norm) or x (input)

Providers (forward returns out (B, S, D)):
  skillkern-triton / -cuda / -torch  skillkern.nn.TokenReduction with that backend: the score
                     convs folded into one (D, S) matrix, the fused op, then the grouped value
                     projection on the S pooled rows
  eager-wukong       skillkern's TokenReductionRef: the literal conv-by-conv module (grouped value
                     conv at all N positions, bmm)
  compiled-wukong    torch.compile(TokenReductionRef, dynamic=False), compiled by the check
Every module loads the same parameters: LayerNorm weight 1 + 0.1 randn, bias 0.1 randn; convs
std 1/sqrt(fan_in), score_conv2 x2 (scores std ~2: a peaked softmax that shows its errors).
Masks: none unless lmin > 0 (lengths uniform in [lmin, N]). Check: output and every gradient
(x and each parameter) against TokenReductionRef in fp32 (fp64 for fp32 inputs, TF32 off);
allowed max(floor, 2 x the module's own error in the input dtype); LayerNorm's bias gradient
is measured against max(its norm, the weight gradient's) (with values=input it is exactly 0).

Minimum bytes (e = bytes per element; W = 2D + 2 D^2/G + S D parameters; mask B N bytes):
  fwd      read x (B N D e) + W, write out (B S D e)
  bwd      read x, d_out and the saved pooled rows (B S D e each), lse (B S fp32) + W;
           write dx (B N D e) + the parameter gradients (W)
  fwd+bwd  the sum. % of ceiling: GB/s of these bytes over the run's copy GB/s (read + write);
each shape also records the copy bandwidth at its own size (copy_same_gbps).
FLOPs: LN ~8 BND, scores 2 BNDS, pooling 2 BSND, value projection 2 BSD D/G per forward.

Examples:
  python benchmarks/bench.py token_reduce --quick         # CPU demo, or the 3 goal shapes on a GPU
  python benchmarks/bench.py token_reduce --shapes B=1024:N=256:D=768:S=24:lmin=64 --providers eager-wukong,skillkern-triton
  TRITON_INTERPRET=1 python benchmarks/bench.py token_reduce --quick --dtype fp32
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from skillkern.bench._common import (MODE_FLOP_FACTOR, Unavailable, backend_reason, compile_baseline, copy_bandwidth,
                                      first_line)
from skillkern.bench.runner import OpSpec, Provider, Reference, errors, parse_spec
from skillkern.ops.token_reduce import TokenReduction, TokenReductionRef

TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float32: 5e-3}  # floors
PARAMS = ("norm.weight", "norm.bias", "score_conv1.weight", "score_conv2.weight", "value_conv.weight")


@dataclass(frozen=True)
class Shape:
    B: int = 1024
    N: int = 256
    D: int = 256
    S: int = 24
    G: int = 8  # groups of the grouped 1x1 convs
    lmin: int = 0  # 0: all positions real (no mask); else lengths uniform in [lmin, N]
    values: str = "norm"  # "norm": pool LN(x); "input": pool x (Wukong's code)

    def label(self) -> str:
        return (f"B{self.B}-N{self.N}-D{self.D}-S{self.S}-G{self.G}" + (f"-len{self.lmin}..{self.N}" if self.lmin else "")
                + ("-values=x" if self.values == "input" else ""))

    def min_bytes(self, mode: str, elt: int) -> float:
        X, Y = float(self.B) * self.N * self.D * elt, float(self.B) * self.S * self.D * elt
        W = float(2 * self.D + 2 * self.D * (self.D // self.G) + self.S * self.D) * elt
        M = float(self.B) * self.N if self.lmin else 0.0
        fwd, bwd = X + Y + W + M, 2 * X + 2 * Y + float(self.B) * self.S * 4 + 2 * W + M
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]

    def fwd_flops(self) -> float:
        B, N, D, S = self.B, self.N, self.D, self.S
        return 8.0 * B * N * D + 4.0 * B * N * D * S + 2.0 * B * S * D * (D // self.G)


# the goal shapes: ViT-L/14 (Wukong's 256 -> 24), ViT-B/32 (49 -> 12), TokenLearner (196 -> 8)
GOAL_SHAPES = (Shape(1024, 256, 768, 24), Shape(1024, 49, 768, 12), Shape(1024, 196, 384, 8))
PRESETS = {
    # the goal shapes first; then random lengths and Wukong's own value path (pools x)
    "gpu": lambda: [*GOAL_SHAPES, Shape(lmin=128), Shape(D=768, values="input")],
    "gpu-quick": lambda: [GOAL_SHAPES[0], GOAL_SHAPES[2]],
    "goal": lambda: list(GOAL_SHAPES),
    # tiny: D = 16 with 8 groups = 2 channels per group
    "cpu": lambda: [Shape(4, 9, 16, 3), Shape(4, 9, 16, 3, lmin=4), Shape(4, 9, 16, 3, values="input"),
                    Shape(3, 12, 32, 4, G=4, lmin=5)],
    "cpu-quick": lambda: [Shape(4, 9, 16, 3), Shape(4, 9, 16, 3, lmin=4)],
}


def parse_shape(item: str) -> Shape:
    s = parse_spec(Shape, item, "B=1024:N=256:D=768:S=24:lmin=64:values=input", PRESETS)
    if min(s.B, s.N, s.D, s.S, s.G) < 1 or s.D % s.G or s.lmin > s.N or s.values not in ("norm", "input"):
        raise SystemExit(f"bad shape spec {item!r}: sizes >= 1, D divisible by G, lmin <= N, values norm|input")
    return s


@dataclass
class Case:
    shape: Shape
    x: torch.Tensor  # (B, N, D), leaf
    mask: torch.Tensor | None  # (B, N) bool prefix mask, None = all real
    d_out: torch.Tensor  # (B, S, D) upstream gradient
    params: dict  # name -> fp32 tensor, loaded by every module
    eps: float


def make_case(s: Shape, dtype, device, args) -> Case:
    g = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randn(s.B, s.N, s.D, generator=g, device=device).to(dtype).requires_grad_()
    mask = None
    if s.lmin:
        lens = torch.randint(s.lmin, s.N + 1, (s.B,), generator=g, device=device)
        mask = torch.arange(s.N, device=device)[None, :] < lens[:, None]
    d_out = torch.randn(s.B, s.S, s.D, generator=g, device=device).to(dtype)
    Dg = s.D // s.G

    def rnd(*size, std=1.0, mean=0.0):
        return torch.randn(*size, generator=g, device=device) * std + mean

    params = {"norm.weight": rnd(s.D, std=0.1, mean=1.0), "norm.bias": rnd(s.D, std=0.1),
              "score_conv1.weight": rnd(s.D, Dg, 1, std=Dg ** -0.5),
              "score_conv2.weight": rnd(s.S, s.D, 1, std=2.0 * s.D ** -0.5),
              "value_conv.weight": rnd(s.D, Dg, 1, std=Dg ** -0.5)}
    return Case(s, x, mask, d_out, params, args.eps)


def load(cls, c: Case, dtype) -> nn.Module:
    """A cls module with the case's parameter values (strict names), in dtype, eval mode."""
    s = c.shape
    mod = cls(s.D, s.S, groups=s.G, eps=c.eps, values=s.values)
    mod.load_state_dict({k: v.to(dtype) for k, v in c.params.items()}, strict=True)
    return mod.to(device=c.x.device, dtype=dtype).requires_grad_(True).eval()


def _provider(c: Case, mod: nn.Module, call=None, impl=None) -> Provider:
    named = dict(mod.named_parameters())
    call = mod if call is None else call  # not `or`: a compiled module's truth value calls len()
    return Provider(lambda: call(c.x, c.mask), (c.x, *(named[n] for n in PARAMS)), c.d_out, ("x", *PARAMS),
                    impl=impl or type(mod).__name__)


def _skillkern(backend: str):
    def build(c: Case, args) -> Provider:
        why = backend_reason("token_reduce", backend, c.x.device)
        if why:
            raise Unavailable(why)
        mod = load(TokenReduction, c, c.x.dtype)
        mod.backend = backend
        return _provider(c, mod, impl=f"TokenReduction[{backend}]")
    return build


def _compiled(c: Case, args) -> Provider:
    mod = load(TokenReductionRef, c, c.x.dtype)  # one shape per module: static shapes, the baseline at its best
    return _provider(c, mod, compile_baseline(mod, dynamic=False), "torch.compile(TokenReductionRef)")


@contextlib.contextmanager
def no_tf32():
    """fp32 really fp32 on a GPU while the reference runs (cuDNN convs default to TF32)."""
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


def _reference_in(c: Case, dtype):
    mod = load(TokenReductionRef, c, dtype)
    x = c.x.detach().to(dtype).requires_grad_()
    named = dict(mod.named_parameters())
    with no_tf32():
        out = mod(x, c.mask)
        grads = torch.autograd.grad(out, (x, *(named[n] for n in PARAMS)), c.d_out.to(dtype))
    return (out.detach(),), dict(zip(("x", *PARAMS), grads))


def reference(c: Case, args) -> Reference:
    dtype = c.x.dtype
    wide = torch.float64 if dtype == torch.float32 else torch.float32
    ref = Reference(*_reference_in(c, wide), 0.0, 0.0)
    t_fwd, t_grad, worst = errors(SPEC, *_reference_in(c, dtype), ref)  # the module's own error in dtype
    floor = TOLERANCE.get(dtype, 2e-2)
    ref.tol_fwd, ref.tol_grad = max(floor, 2 * t_fwd), max(floor, 2 * t_grad)
    ref.fields = {"eps": c.eps, "torch_err_fwd": t_fwd, "torch_err_grad": t_grad}
    ref.note = f"reference: TokenReductionRef in {wide}; in {args.dtype}: fwd {t_fwd:.2e}, grads {t_grad:.2e} ({worst})"
    return ref


def copy_same(c: Case, args, device, modes) -> dict:
    """The copy bandwidth at this shape's minimum bytes per mode (small shapes cannot reach the
    large copy's), GB/s read + write."""
    elt = c.x.element_size()
    out = {}
    for m in modes:
        try:
            out[m] = copy_bandwidth(int(c.shape.min_bytes(m, elt) / 2), device, args, args.seed + 11)[3]
        except RuntimeError as e:  # out of memory at a huge shape: the rows go on without it
            print(f"  copy at this size ({m}) failed: {first_line(e)[:200]}")
            out[m] = None
    return {"copy_same_gbps": out}


def _add_args(ap) -> None:
    ap.add_argument("--eps", type=float, default=1e-5, help="LayerNorm epsilon")


def _finish_args(args, cpu: bool) -> None:
    if not args.eps > 0:
        raise SystemExit("--eps must be > 0")


SPEC = OpSpec(
    name="token_reduce", doc=__doc__, metric="gbps", presets=PRESETS, parse_shape=parse_shape,
    header="skillkern benchmark: token reduction, Wukong's TokenReduction layer (LayerNorm, grouped score convs, "
           "softmax over positions, pooled grouped values).",
    shape_help="B=..:N=..:D=..:S=..[:G=..:lmin=..:values=norm|input]",
    quick_help="two tiny shapes (B=4, N=9, D=16, S=3; one masked) on CPU; the 3 goal shapes on a GPU",
    providers={"skillkern-triton": _skillkern("triton"), "skillkern-cuda": _skillkern("cuda"),
               "skillkern-torch": _skillkern("torch"),
               "eager-wukong": lambda c, args: _provider(c, load(TokenReductionRef, c, c.x.dtype)),
               "compiled-wukong": _compiled},
    default_gpu=("eager-wukong", "compiled-wukong", "skillkern-torch", "skillkern-cuda", "skillkern-triton"),
    default_cpu=("eager-wukong", "skillkern-torch"),
    baselines=("eager-wukong", "compiled-wukong"), make_case=make_case, reference=reference,
    work=lambda c, mode: {"flops": c.shape.fwd_flops() * MODE_FLOP_FACTOR[mode],
                          "bytes": c.shape.min_bytes(mode, c.x.element_size())},
    out_spec=lambda c: [((c.shape.B, c.shape.S, c.shape.D), c.x.dtype)],
    add_args=_add_args, finish_args=_finish_args, case_fields=copy_same, grad_scale={"norm.bias": "norm.weight"},
)
