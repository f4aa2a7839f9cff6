"""Benchmark skillkern's token reduction (Wukong's TokenReduction layer) against the eager module,
torch.compile of it and a device copy.

    u = LayerNorm(x)                                   x (B, N, D)
    z = conv2(conv1(u))                                conv1: grouped 1x1 D->D (G groups), conv2: 1x1 D->S
    A[b, s, :] = softmax over real positions n of z[b, s, :]
    out[b, s, :] = sum_n A[b, s, n] * value_conv(v)[b, n, :]      value_conv: grouped 1x1 D->D
    v = u (values=norm, the default: skillkern.token_reduce does LN, scores, softmax and pooling
    in one pass over x) or v = x (values=input, Wukong's released code: scores LN(x) @ W_eff in
    torch, then skillkern.token_pool pools x). No bias in any conv (as in Wukong).

Providers (each builds one forward callable returning out (B, S, D); the modes are built on top):
  skillkern-triton  skillkern.nn.TokenReduction(..., values=...) with backend "triton": the two
                    score convs folded into one (D, S) matrix, the fused op, then the grouped value
                    projection on the S pooled rows. Without that module (or with --impl bench):
                    the same computed here from skillkern.token_reduce / token_pool.
  skillkern-cuda    the same with backend "cuda": the CUDA C++ extension (unavailable, with the
                    reason, where it is not built or lacks the op)
  skillkern-torch   the same with backend "torch" (skillkern's fp32 reference of the op)
  eager-wukong      the literal conv-by-conv module: LayerNorm, grouped Conv1d, Conv1d to S, masked
                    softmax over positions, the grouped value Conv1d at all N positions, bmm.
                    skillkern's TokenReductionRef when it imports and loads the parameters, else
                    this file's WukongLiteral (each row's impl says which)
  compiled-wukong   torch.compile(eager module, dynamic=False), compiled by the correctness call,
                    before any timing (donated buffers off: the bwd mode re-walks a retained graph)
  copy              not a provider of the op: dst.copy_(src) of one --copy-gb buffer (1 GiB on a
                    GPU), timed once per run; its GB/s (bytes read + written) is the 100 % of
                    "% copy". Each shape also times a copy of its own size (copy_same_gbps).

Inputs: x (B, N, D) random normal (never zeros); LayerNorm weight 1 + 0.1 randn, bias 0.1 randn;
conv weights normal with std 1/sqrt(fan_in), score_conv2's times 2 so the scores have std ~2 (a
peaked softmax; nn.Conv1d's default init gives std ~0.3, nearly uniform weights that would hide
softmax errors). Every provider's module loads the same parameter values. Masks: none (all
positions real) unless lmin > 0: then lengths uniform in [lmin, N] (prefix masks). Upstream
gradient: random (B, S, D) in the input dtype; gradients w.r.t. x and every parameter.
Modules run in eval mode (dropout p = 0 off; nothing else differs).

Modes: fwd (a training forward: inputs require grad, so each provider keeps its backward state),
bwd (autograd.grad of a graph built once, retained), fwd+bwd.

Correctness first: every provider's output and gradients (x and each parameter, by name) are
compared with this file's literal module in fp32 (fp64 for fp32 inputs; TF32 off) on upcast
copies. Allowed error: max(floor, 2 x torch's own error), torch's own error being the literal
module run in the input dtype. A provider that fails the check is not timed. LayerNorm's bias
gradient is measured against max(its norm, the LayerNorm weight gradient's norm): with
values=input its true value is exactly 0 (a per-token constant that the softmax cancels).

Minimum bytes (e = bytes per element of the input dtype; W = the parameters, 2D + 2 D^2/G + S D
elements; mask B N bytes when given):
  fwd      read x (B N D e) + W, write out (B S D e)
  bwd      read x, d_out (B S D e), the saved pooled rows (B S D e) and lse (B S fp32) + W;
           write dx (B N D e) + the parameter gradients (W)
  fwd+bwd  the sum: x is read once per pass
The fused training forward also writes the pooled rows and lse for its backward (B S D e + B S 4
bytes); they are counted in bwd only, so "% copy" of fwd is the inference minimum.
Metrics per (shape, provider, mode): median / p20 / p80 ms (triton.testing.do_bench on a GPU,
which flushes L2 before each call; a perf_counter loop on the CPU), GB/s of the minimum bytes,
% of the measured copy bandwidth, TFLOP/s of the op's FLOPs (LN ~8 B N D, scores 2 B N D S,
pooling 2 B S N D, value projection 2 B S D D/G per forward; bwd = 2x, fwd+bwd = 3x), peak extra
memory (max_memory_allocated above what was allocated before the call), speedup vs eager-wukong
and vs compiled-wukong.

Every row is appended as one JSON line to --out with device, versions and git commit.
CPU runs use tiny shapes to show that the script works; their numbers are not performance data.
The goal lines come last: per goal shape, skillkern-triton fwd+bwd >= 80 % of the measured copy
bandwidth on the minimum bytes and >= 3x eager-wukong.

Examples:
  python benchmarks/bench_token_reduce.py --quick                    # CPU demo, or the 3 goal shapes on a GPU
  python benchmarks/bench_token_reduce.py --shapes gpu-quick --modes fwd+bwd
  python benchmarks/bench_token_reduce.py --shapes B=1024:N=256:D=768:S=24:lmin=64 --providers eager-wukong,skillkern-triton
  TRITON_INTERPRET=1 python benchmarks/bench_token_reduce.py --quick --dtype fp32
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

import skillkern as sk
from skillkern.bench._common import (CPU_NOTE, DTYPES, FAILED_NOTE, MODES, MODE_FLOP_FACTOR,
                                    Unavailable, add_run_args, add_speedups, append_rows, backend_reason, by_shape,
                                    check_errors, copy_bandwidth, default_out, env_info,
                                    first_line, fmt, free_memory, given_copy_gbps, goal_row, interpreting,
                                    last_mode, met, mode_fn, new_parser, now_iso, parse_modes,
                                    parse_providers, pick_device, pick_shapes, print_header,
                                    rel_err, run_shapes, setup_failed, speedup, stamp_rows, sync,
                                    table_head, table_line, time_modes)

OP = "token_reduce"
METRIC = "gbps"  # memory-bound: GB/s of the minimum bytes, % of the device copy ceiling
PROVIDERS = ("skillkern-triton", "skillkern-cuda", "skillkern-torch", "eager-wukong", "compiled-wukong")
BASELINES = ("eager-wukong", "compiled-wukong")
# skillkern's kernels last: should one fault (a CUDA error ends the process), the shape's
# baselines are already on record.
DEFAULT_GPU_PROVIDERS = ("eager-wukong", "compiled-wukong", "skillkern-torch", "skillkern-cuda", "skillkern-triton")
DEFAULT_CPU_PROVIDERS = ("eager-wukong", "skillkern-torch")
SKILLKERN = ("skillkern-triton", "skillkern-cuda", "skillkern-torch")
# Floor of the allowed relative error; the check allows max(floor, 2 x torch's own error).
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float32: 5e-3}
PARAMS = ("norm.weight", "norm.bias", "score_conv1.weight", "score_conv2.weight", "value_conv.weight")
GOAL_PCT_COPY, GOAL_X_EAGER = 80.0, 3.0


@dataclass(frozen=True)
class Shape:
    B: int
    N: int
    D: int
    S: int
    G: int = 8  # groups of the grouped 1x1 convs
    lmin: int = 0  # 0: all positions real (no mask); else lengths uniform in [lmin, N]
    values: str = "norm"  # "norm": pool LN(x) (token_reduce); "input": pool x (Wukong's code)

    def label(self) -> str:
        s = f"B{self.B}-N{self.N}-D{self.D}-S{self.S}-G{self.G}"
        if self.lmin:
            s += f"-len{self.lmin}..{self.N}"
        return s + ("-values=x" if self.values == "input" else "")

    def n_params(self) -> int:
        return 2 * self.D + 2 * self.D * (self.D // self.G) + self.S * self.D

    def min_bytes(self, mode: str, elt: int) -> float:
        """The fewest bytes a pass must move (see the module docstring)."""
        X = float(self.B) * self.N * self.D * elt
        Y = float(self.B) * self.S * self.D * elt
        W = float(self.n_params()) * elt
        M = float(self.B) * self.N if self.lmin else 0.0
        lse = float(self.B) * self.S * 4
        fwd = X + Y + W + M
        bwd = 2 * X + 2 * Y + lse + 2 * W + M
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]

    def fwd_flops(self) -> float:
        B, N, D, S = self.B, self.N, self.D, self.S
        return 8.0 * B * N * D + 2.0 * B * N * D * S + 2.0 * B * S * N * D + 2.0 * B * S * D * (D // self.G)


# The goal: at each of these shapes, fwd+bwd >= 80 % of copy bandwidth and >= 3x eager-wukong.
GOAL_SHAPES = (Shape(1024, 49, 256, 12), Shape(1024, 256, 256, 24), Shape(1024, 256, 768, 24))

PRESETS = {
    # the goal shapes first, so a run cut short still answers the goal; then random lengths and
    # Wukong's own value path (pools x: torch LN + score GEMM, then token_pool)
    "gpu": lambda: [*GOAL_SHAPES, Shape(1024, 256, 256, 24, lmin=128), Shape(1024, 256, 768, 24, values="input")],
    "gpu-quick": lambda: [GOAL_SHAPES[0], GOAL_SHAPES[2]],
    "goal": lambda: list(GOAL_SHAPES),
    # tiny: D = 16 with 8 groups = 2 channels per group
    "cpu": lambda: [Shape(4, 9, 16, 3), Shape(4, 9, 16, 3, lmin=4), Shape(4, 9, 16, 3, values="input"),
                    Shape(3, 12, 32, 4, G=4, lmin=5)],
    "cpu-quick": lambda: [Shape(4, 9, 16, 3), Shape(4, 9, 16, 3, lmin=4)],
}


def parse_shape(item: str) -> Shape:
    """A spec like B=1024:N=256:D=768:S=24 (also G=, lmin=, values=norm|input; missing keys
    default to B=1024, N=256, D=256, S=24, G=8, lmin=0, values=norm)."""
    f = {"B": 1024, "N": 256, "D": 256, "S": 24, "G": 8, "lmin": 0, "values": "norm"}
    for kv in item.split(":"):
        key, sep, val = kv.partition("=")
        ok = sep and key in f and (val in ("norm", "input") if key == "values" else val.isdigit())
        if not ok:
            raise SystemExit(f"bad shape spec {item!r}: want e.g. B=1024:N=256:D=768:S=24 "
                             f"(keys B, N, D, S, G, lmin, values=norm|input) or a preset {sorted(PRESETS)}")
        f[key] = val if key == "values" else int(val)
    if min(f["B"], f["N"], f["D"], f["S"], f["G"]) < 1 or f["D"] % f["G"] or f["lmin"] > f["N"]:
        raise SystemExit(f"bad shape spec {item!r}: sizes must be >= 1, D divisible by G, lmin <= N")
    return Shape(**f)


# ----------------------------------------------------------------------------- the eager module


class WukongLiteral(nn.Module):
    """Wukong's token reduction computed literally, conv by conv: the fp32 reference of the check
    (and eager-wukong when skillkern's TokenReductionRef is missing). Parameter names match
    skillkern.nn.TokenReduction, so one state_dict loads into both."""

    def __init__(self, dim: int, num_tokens: int, groups: int, eps: float, values: str):
        super().__init__()
        self.groups, self.values = groups, values
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.score_conv1 = nn.Conv1d(dim, dim, 1, groups=groups, bias=False)
        self.score_conv2 = nn.Conv1d(dim, num_tokens, 1, bias=False)
        self.value_conv = nn.Conv1d(dim, dim, 1, groups=groups, bias=False)

    def forward(self, x, mask=None):
        u = self.norm(x)                                                         # (B, N, D)
        h = self.score_conv1(u.transpose(1, 2))                                  # (B, D, N)
        scores = self.score_conv2(h)                                             # (B, S, N)
        if mask is not None:  # lengths >= 1 here: no all-masked item
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)                                  # over positions
        feat = self.value_conv((u if self.values == "norm" else x).transpose(1, 2))  # (B, D, N)
        return torch.bmm(weights, feat.transpose(1, 2))                          # (B, S, D)


def make_params(shape: Shape, device, seed: int) -> dict:
    """The parameter values every provider loads (fp32; see the module docstring)."""
    g = torch.Generator(device=device).manual_seed(seed + 1)
    D, S, Dg = shape.D, shape.S, shape.D // shape.G

    def rnd(*size, std=1.0, mean=0.0):
        return torch.randn(*size, generator=g, device=device) * std + mean

    return {
        "norm.weight": rnd(D, std=0.1, mean=1.0),
        "norm.bias": rnd(D, std=0.1),
        "score_conv1.weight": rnd(D, Dg, 1, std=Dg ** -0.5),
        "score_conv2.weight": rnd(S, D, 1, std=2.0 * D ** -0.5),
        "value_conv.weight": rnd(D, Dg, 1, std=Dg ** -0.5),
    }


# ----------------------------------------------------------------------------- providers


@dataclass
class Case:
    """One shape's data; fresh random values per shape (never zeros)."""

    shape: Shape
    x: torch.Tensor  # (B, N, D), leaf, requires grad
    mask: torch.Tensor | None  # (B, N) bool prefix mask, None = all real
    d_out: torch.Tensor  # (B, S, D) upstream gradient
    params: dict  # name -> fp32 tensor
    eps: float


@dataclass
class Runner:
    forward: object  # () -> out (B, S, D)
    inputs: tuple  # x and the parameters, the gradients are taken for
    names: tuple  # "x" and the parameter names, in the order of inputs
    grad: torch.Tensor  # upstream gradient
    impl: str | None = None  # which module / code runs

    def timed(self, mode: str):  # the callable that mode times
        return mode_fn(mode, self.forward, self.inputs, self.grad)


def make_case(shape: Shape, dtype, device, seed: int, eps: float) -> Case:
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape.B, shape.N, shape.D, generator=g, device=device).to(dtype).requires_grad_()
    mask = None
    if shape.lmin:
        lens = torch.randint(shape.lmin, shape.N + 1, (shape.B,), generator=g, device=device)
        mask = torch.arange(shape.N, device=device)[None, :] < lens[:, None]
    d_out = torch.randn(shape.B, shape.S, shape.D, generator=g, device=device).to(dtype)
    return Case(shape, x, mask, d_out, make_params(shape, device, seed), eps)


def _load(module: nn.Module, case: Case, dtype) -> nn.Module:
    """module with the case's parameter values (strict: the names must match), in dtype, eval."""
    module.load_state_dict({k: v.to(dtype) for k, v in case.params.items()}, strict=True)
    module.to(device=case.x.device, dtype=dtype)
    for p in module.parameters():
        p.requires_grad_(True)
    return module.eval()


def _call(module, case: Case):
    return (lambda: module(case.x, case.mask)) if case.mask is not None else (lambda: module(case.x))


def _module_runner(case: Case, module: nn.Module, forward, impl: str) -> Runner:
    named = dict(module.named_parameters())
    missing = [n for n in PARAMS if n not in named]
    if missing:
        raise Unavailable(f"{impl} has no parameters {missing}")
    return Runner(forward, (case.x, *(named[n] for n in PARAMS)), ("x", *PARAMS), case.d_out, impl)


def skillkern_modules():
    """(TokenReduction, TokenReductionRef) from skillkern, each None when it does not import."""
    try:
        from skillkern.nn import TokenReduction
    except Exception:
        TokenReduction = None
    try:
        from skillkern.ops.token_reduce.module import TokenReductionRef
    except Exception:
        TokenReductionRef = None
    return TokenReduction, TokenReductionRef


def eager_module(case: Case, args) -> tuple[nn.Module, str]:
    """The literal module of eager-wukong / compiled-wukong: skillkern's TokenReductionRef when it
    imports and loads the parameters (and --impl is not bench), else WukongLiteral."""
    s, dtype = case.shape, case.x.dtype
    _, Ref = skillkern_modules()
    if Ref is not None and args.impl != "bench":
        try:
            mod = Ref(s.D, s.S, groups=s.G, eps=case.eps, values=s.values)
            return _load(mod, case, dtype), "skillkern.TokenReductionRef"
        except Exception as e:
            if args.impl == "skillkern":
                raise Unavailable(f"TokenReductionRef did not build or load: {first_line(e)}")
            print(f"  note: TokenReductionRef did not build or load ({first_line(e)[:200]}): using WukongLiteral")
    elif args.impl == "skillkern":
        raise Unavailable("skillkern's TokenReductionRef does not import")
    return _load(WukongLiteral(s.D, s.S, s.G, case.eps, s.values), case, dtype), "bench.WukongLiteral"


def _eager_runner(case: Case, args) -> Runner:
    mod, impl = eager_module(case, args)
    return _module_runner(case, mod, _call(mod, case), impl)


def _compiled_runner(case: Case, args) -> Runner:
    mod, impl = eager_module(case, args)
    try:
        # one shape per module; static shapes: the compiled baseline at its best
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        # The bwd mode walks one retained graph many times, which a compiled backward with
        # donated buffers refuses; donation only lets the backward reuse saved tensors' memory.
        import torch._functorch.config as functorch_config
        if hasattr(functorch_config, "donated_buffer"):
            functorch_config.donated_buffer = False
        compiled = torch.compile(mod, dynamic=False)
    except Exception as e:
        raise Unavailable(f"torch.compile failed: {first_line(e)}")
    return _module_runner(case, mod, _call(compiled, case), f"torch.compile({impl})")


class _Functional(nn.Module):
    """token_reduce / token_pool + the grouped value projection, written here: skillkern-* when
    skillkern.nn.TokenReduction is missing (or --impl bench). Same math as that module."""

    def __init__(self, lit: WukongLiteral, backend: str):
        super().__init__()
        self.lit, self.backend = lit, backend

    def forward(self, x, mask=None):
        m, G = self.lit, self.lit.groups
        D = x.shape[2]
        Dg = D // G
        w1 = m.score_conv1.weight.reshape(G, Dg, Dg)                  # [g, out, in]
        w2 = m.score_conv2.weight[:, :, 0].reshape(-1, G, Dg)          # [s, g, out]
        w_eff = torch.einsum("goi,sgo->gis", w1, w2).reshape(D, -1)    # (D, S): z = u @ w_eff
        if m.values == "norm":
            pooled = sk.token_reduce(x, w_eff, m.norm.weight, m.norm.bias, mask, eps=m.norm.eps,
                                     backend=self.backend)
        else:
            u = F.layer_norm(x.float(), (D,), m.norm.weight.float(), m.norm.bias.float(), m.norm.eps)
            pooled = sk.token_pool(x, u @ w_eff.float(), mask, backend=self.backend)
        B, S, _ = pooled.shape
        wv = m.value_conv.weight.reshape(G, Dg, Dg)                    # [g, out, in]
        out = torch.einsum("bsgi,goi->bsgo", pooled.reshape(B, S, G, Dg), wv)
        return out.reshape(B, S, D)


def _sk_runner(case: Case, args, backend: str) -> Runner:
    dev, s = case.x.device, case.shape
    if backend != "torch":
        why = backend_reason("token_reduce" if s.values == "norm" else "token_pool", backend, dev)
        if why:
            raise Unavailable(why)
    TokenReduction, _ = skillkern_modules()
    if TokenReduction is not None and args.impl != "bench":
        try:
            mod = TokenReduction(s.D, s.S, groups=s.G, eps=case.eps, values=s.values)
            mod = _load(mod, case, case.x.dtype)
            mod.backend = backend
            return _module_runner(case, mod, _call(mod, case), f"skillkern.nn.TokenReduction[{backend}]")
        except Exception as e:
            if args.impl == "skillkern":
                raise Unavailable(f"skillkern.nn.TokenReduction did not build or load: {first_line(e)}")
            print(f"  note: skillkern.nn.TokenReduction did not build or load ({first_line(e)[:200]}): "
                  "using token_reduce + value projection written here")
    elif args.impl == "skillkern":
        raise Unavailable("skillkern.nn.TokenReduction does not import")
    lit = _load(WukongLiteral(s.D, s.S, s.G, case.eps, s.values), case, case.x.dtype)
    mod = _Functional(lit, backend)
    op = "token_reduce" if s.values == "norm" else "token_pool"
    return _module_runner(case, lit, _call(mod, case), f"bench.{op}[{backend}]")


def builders(args):
    return {
        "skillkern-triton": lambda c: _sk_runner(c, args, "triton"),
        "skillkern-cuda": lambda c: _sk_runner(c, args, "cuda"),
        "skillkern-torch": lambda c: _sk_runner(c, args, "torch"),
        "eager-wukong": lambda c: _eager_runner(c, args),
        "compiled-wukong": lambda c: _compiled_runner(c, args),
    }


# ----------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def no_tf32():
    """fp32 really fp32 on a GPU while the reference runs (cuDNN convs default to TF32)."""
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


def reference(case: Case, dtype) -> tuple[torch.Tensor, dict]:
    """Output and gradients (by name) of WukongLiteral computed in dtype on copies of the inputs."""
    s = case.shape
    mod = _load(WukongLiteral(s.D, s.S, s.G, case.eps, s.values), case, dtype)
    x = case.x.detach().to(dtype).requires_grad_()
    with no_tf32():
        out = mod(x, case.mask)
        named = dict(mod.named_parameters())
        leaves = (x, *(named[n] for n in PARAMS))
        grads = torch.autograd.grad(out, leaves, case.d_out.to(dtype))
    return out.detach(), dict(zip(("x", *PARAMS), grads))


# A gradient measured against its sibling's size as well: with values=input, LayerNorm's bias
# only shifts every position's scores by the same amount, which the softmax over positions
# cancels, so its true gradient is exactly 0 and ||ref|| is rounding noise.
GRAD_SCALE = {"norm.bias": "norm.weight"}


def errors(out, grads: dict | None, ref) -> tuple[float, float | None, str | None]:
    """(forward rel err, max gradient rel err, the name with the largest one). Gradient errors
    are ||g - ref|| / max(||ref||, ||ref of its GRAD_SCALE sibling||)."""
    r_out, r_grads = ref
    e_fwd = rel_err(out, r_out)
    if grads is None:
        return e_fwd, None, None

    def err(n, g):
        if g is None:
            return float("inf")
        r = r_grads[n].detach().double()
        scale = r.norm()
        if n in GRAD_SCALE:
            scale = torch.maximum(scale, r_grads[GRAD_SCALE[n]].detach().double().norm())
        e = ((g.detach().double() - r).norm() / scale.clamp(min=1e-30)).item()
        return e if math.isfinite(e) else float("inf")

    errs = {n: err(n, g) for n, g in grads.items()}
    worst = max(errs, key=errs.get)
    return e_fwd, errs[worst], worst


def check_output(out, shape: Shape, dtype) -> str | None:
    """Why the output breaks the contract ((B, S, D) in the input dtype), or None."""
    if not isinstance(out, torch.Tensor):
        return f"returned {type(out).__name__}, not a tensor"
    if tuple(out.shape) != (shape.B, shape.S, shape.D):
        return f"output has shape {tuple(out.shape)}, want {(shape.B, shape.S, shape.D)}"
    if out.dtype != dtype:
        return f"output is {out.dtype}, want {dtype}"
    return None


def measure_copy(gb: float, device, args, env) -> dict:
    """One large device copy: the bandwidth ceiling that % copy refers to."""
    nbytes = int(gb * 2**30)
    row = dict(time=now_iso(), **env, dtype="bf16", provider="copy", mode="copy",
               label=f"copy-{nbytes / 1e9:.3g}GB", bytes=2.0 * nbytes)
    try:
        med, p20, p80, gbps = copy_bandwidth(nbytes, device, args, args.seed + 7)
    except Exception as e:
        msg = first_line(e)
        print(f"  copy               !!! FAILED: {msg[:300]} !!!")
        return dict(row, status="failed", reason=msg[:500])
    print(f"  copy               {nbytes / 1e9:.3g} GB buffer: {med:9.3f} ms  [{p20:.3f}, {p80:.3f}]  "
          f"{gbps:8.1f} GB/s (read + write)")
    return dict(row, status="ok", ms=med, ms_p20=p20, ms_p80=p80, gbps=gbps)


# ----------------------------------------------------------------------------- the run


def run_shape(shape: Shape, providers, modes, args, device, dtype, env, copy_gbps) -> tuple[list[dict], bool]:
    """Check, then time every provider on one shape; returns the rows and whether all were right."""
    case = make_case(shape, dtype, device, args.seed, args.eps)
    elt = torch.finfo(dtype).bits // 8
    mb = {m: shape.min_bytes(m, elt) for m in MODES}
    print(f"\n== {shape.label()}  {args.dtype}  x {shape.B * shape.N * shape.D * elt / 1e6:.4g} MB  "
          f"min bytes fwd {mb['fwd'] / 1e6:.4g} / bwd {mb['bwd'] / 1e6:.4g} / fwd+bwd {mb['fwd+bwd'] / 1e6:.4g} MB"
          f"  fwd {shape.fwd_flops() / 1e9:.3g} GFLOP")
    # the copy bandwidth at this shape's size (small shapes cannot reach the large copy's)
    same = {}
    for m in modes:
        try:
            same[m] = copy_bandwidth(int(mb[m] / 2), device, args, args.seed + 11)[3]
        except Exception as e:
            print(f"  copy of {mb[m] / 1e6:.1f} MB failed: {first_line(e)[:200]}")
            same[m] = None
    print("  copy at this size: " + "  ".join(f"{m} {fmt(same[m], '.1f')} GB/s" for m in modes))
    wide = torch.float64 if dtype == torch.float32 else torch.float32
    ref = reference(case, wide)
    own = errors(*reference(case, dtype), ref)  # torch's own error at the input precision
    t_fwd, t_grad = own[0], own[1]
    floor = TOLERANCE.get(dtype, 2e-2)
    tol_fwd, tol_grad = max(floor, 2 * t_fwd), max(floor, 2 * t_grad)
    print(f"  reference: literal module in {wide}; in {args.dtype}: fwd {t_fwd:.2e}  grads {t_grad:.2e} ({own[2]})"
          f"  -> limits fwd {tol_fwd:.3g}, grads {tol_grad:.3g}")
    base = {
        "time": None, **env, "dtype": args.dtype, **asdict(shape), "eps": args.eps,
        "fwd_flops": shape.fwd_flops(), "copy_gbps": copy_gbps, "torch_err_fwd": t_fwd,
        "torch_err_grad": t_grad, "tol_fwd": tol_fwd, "tol_grad": tol_grad,
    }
    build = builders(args)

    def rates(mode, ms):
        gbps = mb[mode] / (ms * 1e-3) / 1e9
        pct = 100.0 * gbps / copy_gbps if copy_gbps else None
        tflops = shape.fwd_flops() * MODE_FLOP_FACTOR[mode] / (ms * 1e-3) / 1e12
        return ({"min_bytes": mb[mode], "gbps": gbps, "pct_copy": pct, "copy_same_gbps": same.get(mode),
                 "tflops": tflops}, f"{gbps:8.1f} GB/s" + (f"  {pct:5.1f}% copy" if pct is not None else ""))

    rows, all_ok = [], True
    for prov in providers:
        row0 = dict(base, provider=prov)
        ok_modes = list(modes)
        try:
            runner = build[prov](case)
            row0["impl"] = runner.impl
            out = runner.forward()  # the first call compiles / autotunes; it is also the check
            sync(device)
        except Exception as e:
            # skillkern's kernels are work in progress: a raising first call is reported, not fatal
            expected = isinstance(e, (Unavailable, sk.BackendUnavailable))
            rows.append(setup_failed(prov, row0, e, expected, soft=prov in SKILLKERN))
            all_ok &= rows[-1]["status"] != "failed"
            continue
        if isinstance(out, (tuple, list)) and out:
            out = out[0]  # a module that also returns its weights
        bad = check_output(out, shape, dtype)
        if bad:
            print(f"  !!! {prov}: {bad}; provider skipped !!!")
            rows.append(dict(row0, status="wrong", reason=bad))
            all_ok = False
            continue
        try:
            grads = dict(zip(runner.names, torch.autograd.grad(out, runner.inputs, runner.grad)))
            sync(device)
        except Exception as e:
            msg = first_line(e)
            print(f"  !!! {prov}: backward FAILED: {msg[:300]} !!!")
            rows += [dict(row0, mode=m, status="failed", reason=f"backward: {msg[:400]}") for m in modes if m != "fwd"]
            all_ok = False
            grads = None
            ok_modes = [m for m in modes if m == "fwd"]
        e_fwd, e_grad, worst = errors(out, grads, ref)
        pad = None
        if grads is not None and case.mask is not None and (~case.mask).any():
            pad = grads["x"].detach()[~case.mask].abs().max().item()
        row0.update(rel_err_fwd=e_fwd, rel_err_grad=e_grad, worst_grad=worst, pad_grad_max=pad)
        print(f"  {prov:18s} rel err vs {wide}: fwd {e_fwd:.2e}  grads(max) {fmt(e_grad, '.2e')} ({worst})"
              f"  (limits {tol_fwd:.3g}, {tol_grad:.3g})" + (f"  |dx| on padding {pad:.1e}" if pad else "")
              + f"  [{runner.impl}]")
        wrong, ok_modes = check_errors(prov, row0, ok_modes, e_fwd, tol_fwd, e_grad, tol_grad, worst)
        rows += wrong
        all_ok &= not wrong
        del out, grads
        timed, ok = time_modes(prov, row0, ok_modes, runner.timed, device, args, rates)
        rows += timed
        all_ok &= ok
        del runner
        free_memory(device)  # free this provider's memory before the next one's peak is measured
    # Ratios need every provider of the shape.
    add_speedups(rows, modes, (("eager-wukong", "speedup_vs_eager"), ("compiled-wukong", "speedup_vs_compiled")))
    stamp_rows(rows)
    del case, ref
    free_memory(device)
    return rows, all_ok


def print_table(rows: list[dict], modes, cpu: bool):
    last = last_mode(modes)
    table_head(110, cpu, modes, "%cp", f"{last + ' GB/s':>13s}  {'x eager':>7s}  {'x compiled':>10s}  {'peak MB':>8s}")
    for r in rows:
        if r["provider"] == "copy":
            print(f"-- {r['label']}: " + (f"{r['ms']:.3f} ms = {r['gbps']:.1f} GB/s read + write (the 100% of %cp)"
                                           if r.get("status") == "ok" else f"{r['status']}: {r.get('reason', '')}"))

    def tail(r):  # the last mode's row
        return (f"{fmt(r.get('gbps'), '13.1f'):>13s}  {speedup(r.get('speedup_vs_eager')):>7s}  "
                f"{speedup(r.get('speedup_vs_compiled')):>10s}  {fmt(r.get('peak_mem_mb'), '8.0f'):>8s}")

    for label, provs in by_shape(rows, skip="copy").items():
        srows = [r for r in rows if r["label"] == label]
        same = next((r.get("copy_same_gbps") for r in srows if r.get("mode") == last and r.get("copy_same_gbps")), None)
        print(f"-- {label}" + (f"  (a copy of the {last} minimum bytes runs at {same:.0f} GB/s)" if same else ""))
        for p, prow in provs.items():
            print(table_line(p, prow, modes, ("pct_copy", "5.1f"), tail))
    print(f"(%cp = % of the copy row's GB/s, on the minimum bytes of each mode; x eager / x compiled = "
          f"speedup of the {last} time)")


def goal_lines(rows: list[dict], cpu: bool) -> list[str]:
    """One line per goal shape, then the verdict: the last line of the run."""
    head = "GPU goal (token_reduce, fwd+bwd, skillkern-triton"
    if cpu:
        return [f"{head}): n/a on CPU (the goal shapes are measured on an H100/H200: "
                "bash benchmarks/gpu_check.sh --bench tokred)"]
    lines, n_met, measured = [], 0, 0
    for shape in GOAL_SHAPES:
        label = shape.label()
        r = goal_row(rows, label)
        if r is None:
            lines.append(f"{head}, {label}): not measured in this run")
            continue
        measured += 1
        pct, xe, xc = r.get("pct_copy"), r.get("speedup_vs_eager"), r.get("speedup_vs_compiled")
        ok_pct = pct is not None and pct >= GOAL_PCT_COPY
        ok_x = xe is not None and xe >= GOAL_X_EAGER
        n_met += ok_pct and ok_x
        parts = [f"{pct:.1f}% of copy (goal >= {GOAL_PCT_COPY:g}%: {met(ok_pct)})"
                 if pct is not None else "copy not measured",
                 f"{xe:.2f}x eager-wukong (goal >= {GOAL_X_EAGER:g}x: {met(ok_x)})"
                 if xe is not None else "eager-wukong not measured",
                 f"{xc:.2f}x compiled-wukong" if xc is not None else "compiled-wukong not measured"]
        lines.append(f"{head}, {label}): {r['ms']:.3f} ms = {r['gbps']:.0f} GB/s = " + "; ".join(parts))
    verdict = met(n_met == measured == len(GOAL_SHAPES)) if measured else "not measured"
    lines.append(f"{head}): {verdict} - both parts met at {n_met} of {len(GOAL_SHAPES)} goal shapes "
                 f"({measured} measured)")
    return lines


HEADER = """\
skillkern benchmark: token reduction, Wukong's TokenReduction layer (LayerNorm, grouped score
convs, softmax over positions, pooled grouped values). For every shape it first checks each
provider's output and gradients against the literal module in fp32, then times forward, backward
and forward+backward, and reports GB/s of the minimum bytes, the % of a device copy measured in the
same run, peak extra memory, and the speedup over the eager and the compiled module."""


def build_parser():
    """This benchmark's command line (also parsed by `skillkern profile`)."""
    ap = new_parser(__doc__, "two tiny shapes (B=4, N=9, D=16, S=3; one masked) on CPU; the 3 goal shapes on a GPU",
                    "B=..:N=..:D=..:S=..[:G=..:lmin=..:values=norm|input]", PRESETS, PROVIDERS)
    ap.add_argument("--eps", type=float, default=1e-5, help="LayerNorm epsilon")
    ap.add_argument("--impl", default="auto", choices=("auto", "skillkern", "bench"),
                    help="modules: skillkern's TokenReduction / TokenReductionRef (auto: when they import "
                         "and load), or this file's WukongLiteral and token_reduce + value projection (bench)")
    ap.add_argument("--copy-gb", type=float, default=None,
                    help="GiB of the copy row's buffer (default 1 on a GPU, 0.0625 on CPU; 0 = skip)")
    add_run_args(ap, "token_reduce", "The goal shapes run first.")
    return ap


def profile_target(shape: Shape, provider: str, mode: str, args, device):
    """For `skillkern profile`: the callable that `mode` times for `provider` at `shape`, and
    the work of one call ({"flops", "bytes": the minimum bytes}). args: this module's options."""
    dtype = DTYPES[args.dtype]
    case = make_case(shape, dtype, device, args.seed, args.eps)
    runner = builders(args)[provider](case)
    return runner.timed(mode), {"flops": shape.fwd_flops() * MODE_FLOP_FACTOR[mode],
                                "bytes": shape.min_bytes(mode, torch.finfo(dtype).bits // 8)}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    device = pick_device(args.device)
    cpu = device.type != "cuda"
    dtype = DTYPES[args.dtype]
    if args.copy_gb is None:
        args.copy_gb = 0.0625 if cpu else 1.0
    if not args.eps > 0:
        raise SystemExit("--eps must be > 0")
    shapes = pick_shapes(args, cpu, PRESETS, parse_shape)
    default = DEFAULT_GPU_PROVIDERS
    if cpu:
        default = DEFAULT_CPU_PROVIDERS + (("skillkern-triton",) if interpreting() else ())
    providers = parse_providers(args.providers, PROVIDERS, default, " (copy: --copy-gb)")
    modes = parse_modes(args.modes)

    env = env_info(device)
    print_header(HEADER, env, shapes, modes, providers)
    TokenReduction, Ref = skillkern_modules()
    print(f"modules (--impl {args.impl}): skillkern.nn.TokenReduction {'imports' if TokenReduction else 'MISSING'}, "
          f"TokenReductionRef {'imports' if Ref else 'MISSING'} (each row's impl says what ran)")
    if cpu:
        print(CPU_NOTE)
        if not interpreting():
            print("      skillkern-triton is skipped on CPU (TRITON_INTERPRET=1 runs it interpreted, --dtype fp32);"
                  " compiled-wukong only with --providers.")
    if args.out is None:
        args.out = default_out("token_reduce", cpu)

    t0 = time.time()
    all_rows, copy_gbps = [], given_copy_gbps()
    if copy_gbps:
        print(f"  copy               {copy_gbps:.1f} GB/s (read + write), measured by `skillkern bench` for this run")
    elif args.copy_gb > 0:
        row = measure_copy(args.copy_gb, device, args, env)
        if row["status"] == "ok":
            copy_gbps = row["gbps"]
        append_rows(args.out, [row])
        all_rows.append(row)
    all_ok = run_shapes(shapes, lambda s: run_shape(s, providers, modes, args, device, dtype, env, copy_gbps),
                        args, device, env, all_rows, t0)
    print_table(all_rows, modes, cpu)
    if not all_ok:
        print(FAILED_NOTE)
    for line in goal_lines(all_rows, cpu):
        print(line)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
