"""skillkern.token_reduce / token_pool: argument checks, backend choice, registered ops.

Ops in the skillkern:: namespace (custom_op + register_fake + register_autograd):
  skillkern::token_reduce_fwd(x, w_score?, scores?, ln_weight?, ln_bias?, mask?, eps, pool_input)
      -> (out, lse, out_lo)   (token_reduce_fwd_cuda too)
  skillkern::token_reduce_bwd(d_out, out, x, w_score?, scores?, ln_weight?, ln_bias?, mask?, lse, eps,
                              pool_input) -> (dx, d_w_score, d_scores, d_ln_weight, d_ln_bias)
backend="cuda" runs skillkern::token_reduce_fwd_cuda / _bwd_cuda (csrc/token_reduce/, same
arguments and outputs, Meta kernels in C++, the same autograd formula registered here once the
extension loads).
One op pair serves both public functions: token_reduce passes w_score (scores = LN(x) @ w_score,
computed in-kernel), token_pool passes precomputed scores. State kept for backward besides the
inputs: lse (B, S) fp32, the log-sum-exp of each softmax column (the kernels recompute LN
statistics and scores from x, which the backward reads anyway), and where 16-bit x is pooled
raw, out_lo: out's rounding residual, so that delta = <d_out, out> is taken on out as computed.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from skillkern import _backend
from skillkern.ops._common import FLOAT_DTYPES, expect, register_autograd_pair
from skillkern.ops.token_reduce.reference import token_pool_ref, token_reduce_ref


def _check_tensor(op, t, name, x, layout):
    """t is a float tensor with the dimensions of `layout` ("(D, S)") on x's device (TypeError
    if not a Tensor)."""
    expect(isinstance(t, Tensor), op, name, f"must be a Tensor, got {type(t).__name__}", TypeError)
    expect(t.dim() == len(layout.strip("(,)").split(",")), op, name, f"must have shape {layout}, got {tuple(t.shape)}")
    expect(t.dtype in FLOAT_DTYPES, op, name, f"must be float32, float16 or bfloat16, got {t.dtype}")
    if t is not x:
        expect(t.device == x.device, op, name, f"is on {t.device} but x is on {x.device}")


def _check_mask(op, x, mask):
    """mask is None or a bool (B, N) tensor on x's device (x: a Tensor of at least 2 dims)."""
    if mask is None:
        return
    expect(isinstance(mask, Tensor), op, "mask", f"must be a Tensor, got {type(mask).__name__}", TypeError)
    expect(mask.dtype == torch.bool, op, "mask", f"must be a bool Tensor (True = real position), got {mask.dtype}")
    expect(tuple(mask.shape) == tuple(x.shape[:2]), op, "mask",
           f"must have shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
    expect(mask.device == x.device, op, "mask", f"is on {mask.device} but x is on {x.device}")


def _check_x_mask(op, x, mask):
    _check_tensor(op, x, "x", x, "(B, N, D)")
    expect(x.shape[2] >= 1, op, "x", f"must have D >= 1 features, got shape {tuple(x.shape)}")
    _check_mask(op, x, mask)


# ----------------------------------------------------------------------------- registered ops


@torch.library.custom_op("skillkern::token_reduce_fwd", mutates_args=())
def _fwd_op(x: Tensor, w_score: Optional[Tensor], scores: Optional[Tensor], ln_weight: Optional[Tensor],
            ln_bias: Optional[Tensor], mask: Optional[Tensor], eps: float, pool_input: bool
            ) -> tuple[Tensor, Tensor, Tensor]:
    """(out, lse, out_lo): out_lo is out's 16-bit rounding residual where the pooled values are
    raw x (triton_impl.needs_lo), else empty; the backward adds it back for delta."""
    from skillkern.ops.token_reduce import triton_impl
    return triton_impl.token_reduce_fwd(x, w_score, scores, ln_weight, ln_bias, mask, eps, pool_input)


@_fwd_op.register_fake
def _(x, w_score, scores, ln_weight, ln_bias, mask, eps, pool_input):
    from skillkern.ops.token_reduce import triton_impl
    S = w_score.shape[1] if w_score is not None else scores.shape[2]
    B, _, D = x.shape
    lo = x.new_empty(B, S, D) if triton_impl.needs_lo(x, scores, ln_weight, pool_input) else x.new_empty(0)
    return x.new_empty(B, S, D), x.new_empty(B, S, dtype=torch.float32), lo


@torch.library.custom_op("skillkern::token_reduce_bwd", mutates_args=())
def _bwd_op(d_out: Tensor, out: Tensor, x: Tensor, w_score: Optional[Tensor], scores: Optional[Tensor],
            ln_weight: Optional[Tensor], ln_bias: Optional[Tensor], mask: Optional[Tensor], lse: Tensor,
            eps: float, pool_input: bool) -> list[Tensor]:
    """[dx, d_w_score, d_scores, d_ln_weight, d_ln_bias]; absent ones are 0-element tensors."""
    from skillkern.ops.token_reduce import triton_impl
    grads = triton_impl.token_reduce_bwd(d_out, out, x, w_score, scores, ln_weight, ln_bias, mask, lse, eps,
                                         pool_input)
    return [g if g is not None else x.new_empty(0) for g in grads]


@_bwd_op.register_fake
def _(d_out, out, x, w_score, scores, ln_weight, ln_bias, mask, lse, eps, pool_input):
    like = lambda t: t.new_empty(t.shape) if t is not None else x.new_empty(0)  # noqa: E731
    return [x.new_empty(x.shape), like(w_score), like(scores), like(ln_weight),
            like(ln_bias) if ln_weight is not None else x.new_empty(0)]


def _setup_context(ctx, inputs, output):
    x, w_score, scores, ln_weight, ln_bias, mask, eps, pool_input = inputs
    out, lse, lo = output  # lo: out's rounding residual, empty where out is exact enough
    lo = lo if lo.numel() else None
    ctx.save_for_backward(out, x, w_score, scores, ln_weight, ln_bias, mask, lse, lo)
    ctx.eps, ctx.pool_input = eps, pool_input


def _make_backward(bwd_name):
    """The autograd formula of token_reduce_fwd (Triton) and token_reduce_fwd_cuda: both call
    their backward op torch.ops.skillkern.<bwd_name> (same arguments, returning [dx, d_w_score,
    d_scores, d_ln_weight, d_ln_bias])."""
    def backward(ctx, d_out, _d_lse, *_d_lo):
        out, x, w_score, scores, ln_weight, ln_bias, mask, lse, lo = ctx.saved_tensors
        if lo is not None:  # out as the forward computed it, for delta = <d_out, out>
            out = out.float() + lo.float()
        bwd_op = getattr(torch.ops.skillkern, bwd_name)
        dx, dw, ds, dlw, dlb = bwd_op(d_out, out, x, w_score, scores, ln_weight, ln_bias, mask, lse, ctx.eps,
                                      ctx.pool_input)
        some = lambda g, t: g if t is not None else None  # noqa: E731
        return (dx, some(dw, w_score), some(ds, scores), some(dlw, ln_weight),
                some(dlb, ln_bias) if ln_weight is not None else None, None, None, None)
    return backward


register_autograd_pair("token_reduce", _make_backward, _setup_context)


def _fwd_cuda(x, w_score, scores, ln_weight, ln_bias, mask, eps, pool_input):
    """The native CUDA op (backend="cuda"); resolve() has loaded the extension, the check
    here only matters outside torch.compile (a traced call cannot import)."""
    if not torch.compiler.is_compiling():
        _backend.load_cuda_extension()
    return torch.ops.skillkern.token_reduce_fwd_cuda(x, w_score, scores, ln_weight, ln_bias, mask, eps, pool_input)


# ----------------------------------------------------------------------------- public API


def token_reduce(x: Tensor, w_score: Tensor, ln_weight: Optional[Tensor] = None,
                 ln_bias: Optional[Tensor] = None, mask: Optional[Tensor] = None, *,
                 eps: float = 1e-5, pool_input: bool = False, backend: str = "auto") -> Tensor:
    """Wukong-style token reduction: LayerNorm, linear scores, softmax over positions, pooling.

        u = layer_norm(x) over D (ln_weight, ln_bias) if ln_weight is given, else x
        A[b, :, s] = softmax over real positions n of (u[b] @ w_score)[:, s]
        out[b, s, :] = sum_n A[b, n, s] * u[b, n, :]

    x: (B, N, D) float32/float16/bfloat16; w_score: (D, S); ln_weight, ln_bias: (D,) (ln_bias
    may be None when ln_weight is given; both None = no LayerNorm); mask: bool (B, N), True =
    real position. pool_input=True pools x itself instead of u (scores still from u): Wukong's
    released layer does that. Returns (B, S, D) in x.dtype (fp32 statistics and accumulation);
    an item with no real position (all masked, or N = 0) gives zeros, B = 0 an empty output;
    D >= 1, S >= 1. Masked positions may hold anything, NaN and inf included: it reaches no
    output and no gradient (dx there is exactly 0). Differentiable w.r.t. x, w_score,
    ln_weight, ln_bias.
    The Triton path reads x from HBM once in the forward (LN statistics, scores, online softmax
    over position tiles and pooling fused, one program per item where the pooled accumulators
    fit its registers: D * S up to ~24k, e.g. D = 768 with S = 24) and twice in the backward
    (the per-item gradients, then dw_score as one GEMM). backend="cuda" (csrc/token_reduce/)
    does the same in one block per item, with S <= 32 and D up to ~1900 (bf16 training on an
    H100; csrc/token_reduce/tokred_host.cpp lists the limits); beyond, it raises naming the
    argument.
    """
    op = "token_reduce"
    _check_x_mask(op, x, mask)
    D = x.shape[2]
    _check_tensor(op, w_score, "w_score", x, "(D, S)")
    expect(w_score.shape[0] == D, op, "w_score", f"must have shape (D={D}, S), got {tuple(w_score.shape)}")
    expect(w_score.shape[1] >= 1, op, "w_score", "must produce at least one token (S >= 1), "
           f"got shape {tuple(w_score.shape)}")
    if ln_weight is not None:
        _check_tensor(op, ln_weight, "ln_weight", x, "(D,)")
        expect(ln_weight.shape[0] == D, op, "ln_weight", f"must have shape ({D},), got {tuple(ln_weight.shape)}")
    if ln_bias is not None:
        expect(ln_weight is not None, op, "ln_bias", "needs ln_weight (LayerNorm without a weight is "
               "not supported; pass ones)")
        _check_tensor(op, ln_bias, "ln_bias", x, "(D,)")
        expect(ln_bias.shape[0] == D, op, "ln_bias", f"must have shape ({D},), got {tuple(ln_bias.shape)}")
    expect(isinstance(eps, numbers.Real) and not isinstance(eps, bool), op, "eps",
           f"must be a number, got {type(eps).__name__}", TypeError)
    expect(0 < eps < math.inf, op, "eps", f"must be > 0 and finite, got {eps!r}")
    which = _backend.resolve("token_reduce", backend, x.device)
    if which == "torch":
        return token_reduce_ref(x, w_score, ln_weight, ln_bias, mask, eps, bool(pool_input))
    if which == "cuda":
        return _fwd_cuda(x, w_score, None, ln_weight, ln_bias, mask, float(eps), bool(pool_input))[0]
    return torch.ops.skillkern.token_reduce_fwd(x, w_score, None, ln_weight, ln_bias, mask, float(eps),
                                                bool(pool_input))[0]


def token_pool(x: Tensor, scores: Tensor, mask: Optional[Tensor] = None, *, backend: str = "auto") -> Tensor:
    """Softmax-over-positions pooling with precomputed scores (TokenLearner-style score paths).

        out[b, s, :] = sum_n softmax over real n of scores[b, :, s] [n] * x[b, n, :]

    x: (B, N, D); scores: (B, N, S) float; mask: bool (B, N). Returns (B, S, D) in x.dtype; an
    item with no real position (all masked, or N = 0) gives zeros. x and scores at masked
    positions may hold anything (NaN, inf): it reaches no output or gradient (both gradients
    are exactly 0 there). Differentiable w.r.t. x and scores. backend="cuda" takes S <= 32
    (see token_reduce).
    """
    op = "token_pool"
    _check_x_mask(op, x, mask)
    B, N, _ = x.shape
    _check_tensor(op, scores, "scores", x, "(B, N, S)")
    expect(tuple(scores.shape[:2]) == (B, N), op, "scores",
           f"must have shape (B={B}, N={N}, S), got {tuple(scores.shape)}")
    expect(scores.shape[2] >= 1, op, "scores", f"must have S >= 1, got shape {tuple(scores.shape)}")
    which = _backend.resolve("token_pool", backend, x.device)
    if which == "torch":
        return token_pool_ref(x, scores, mask)
    if which == "cuda":
        return _fwd_cuda(x, None, scores, None, None, mask, 1e-5, True)[0]
    return torch.ops.skillkern.token_reduce_fwd(x, None, scores, None, None, mask, 1e-5, True)[0]
