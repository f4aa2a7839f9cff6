"""skillkern.token_reduce / token_pool: argument checks, backend choice, registered ops.

Ops in the skillkern:: namespace (custom_op + register_fake + register_autograd):
  skillkern::token_reduce_fwd(x, w_score?, scores?, ln_weight?, ln_bias?, mask?, eps, pool_input)
      -> (out, lse)
  skillkern::token_reduce_bwd(d_out, out, x, w_score?, scores?, ln_weight?, ln_bias?, mask?, lse, eps,
                              pool_input) -> (dx, d_w_score, d_scores, d_ln_weight, d_ln_bias)
backend="cuda" runs skillkern::token_reduce_fwd_cuda / _bwd_cuda (csrc/token_reduce/, same
arguments and outputs, Meta kernels in C++, the same autograd formula registered here once the
extension loads).
One op pair serves both public functions: token_reduce passes w_score (scores = LN(x) @ w_score,
computed in-kernel), token_pool passes precomputed scores. State kept for backward besides the
inputs: lse (B, S) fp32, the log-sum-exp of each softmax column (the kernels recompute LN
statistics and scores from x, which the backward reads anyway).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from skillkern import _backend
from skillkern.ops._common import FLOAT_DTYPES, expect
from skillkern.ops.token_reduce.reference import token_pool_ref, token_reduce_ref




def _check_x_mask(op, x, mask):
    expect(isinstance(x, Tensor), op, "x", f"must be a Tensor, got {type(x).__name__}")
    expect(x.dim() == 3, op, "x", f"must have shape (B, N, D), got {tuple(x.shape)}")
    expect(x.dtype in FLOAT_DTYPES, op, "x", f"must be float32, float16 or bfloat16, got {x.dtype}")
    if mask is not None:
        expect(isinstance(mask, Tensor) and mask.dtype == torch.bool, op, "mask",
                "must be a bool Tensor (True = real position)")
        expect(tuple(mask.shape) == tuple(x.shape[:2]), op, "mask",
                f"must have shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        expect(mask.device == x.device, op, "mask", f"is on {mask.device} but x is on {x.device}")


def _check_param(op, t, name, x, shape):
    expect(isinstance(t, Tensor), op, name, f"must be a Tensor, got {type(t).__name__}")
    expect(t.device == x.device, op, name, f"is on {t.device} but x is on {x.device}")
    expect(t.dtype in FLOAT_DTYPES, op, name, f"must be a float tensor, got {t.dtype}")
    expect(tuple(t.shape) == shape, op, name, f"must have shape {shape}, got {tuple(t.shape)}")


# ----------------------------------------------------------------------------- registered ops


@torch.library.custom_op("skillkern::token_reduce_fwd", mutates_args=())
def _fwd_op(x: Tensor, w_score: Optional[Tensor], scores: Optional[Tensor], ln_weight: Optional[Tensor],
            ln_bias: Optional[Tensor], mask: Optional[Tensor], eps: float, pool_input: bool
            ) -> tuple[Tensor, Tensor]:
    from skillkern.ops.token_reduce import triton_impl
    return triton_impl.token_reduce_fwd(x, w_score, scores, ln_weight, ln_bias, mask, eps, pool_input)


@_fwd_op.register_fake
def _(x, w_score, scores, ln_weight, ln_bias, mask, eps, pool_input):
    S = w_score.shape[1] if w_score is not None else scores.shape[2]
    B, _, D = x.shape
    return x.new_empty(B, S, D), x.new_empty(B, S, dtype=torch.float32)


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
    out, lse = output
    ctx.save_for_backward(out, x, w_score, scores, ln_weight, ln_bias, mask, lse)
    ctx.eps, ctx.pool_input = eps, pool_input


def _make_backward(bwd_op):
    """The autograd formula of a forward op (Triton or CUDA), given its backward op: a callable
    taking the token_reduce_bwd arguments and returning [dx, d_w_score, d_scores, d_ln_weight,
    d_ln_bias]. Both backends share setup_context and this formula."""
    def backward(ctx, d_out, _d_lse):
        out, x, w_score, scores, ln_weight, ln_bias, mask, lse = ctx.saved_tensors
        dx, dw, ds, dlw, dlb = bwd_op(d_out, out, x, w_score, scores, ln_weight, ln_bias, mask, lse, ctx.eps,
                                      ctx.pool_input)
        some = lambda g, t: g if t is not None else None  # noqa: E731
        return (dx, some(dw, w_score), some(ds, scores), some(dlw, ln_weight),
                some(dlb, ln_bias) if ln_weight is not None else None, None, None, None)
    return backward


_fwd_op.register_autograd(_make_backward(lambda *a: torch.ops.skillkern.token_reduce_bwd(*a)),
                          setup_context=_setup_context)


@_backend.on_extension_load
def _register_cuda_autograd():
    """skillkern::token_reduce_fwd_cuda / _bwd_cuda (csrc/token_reduce/) exist once the
    extension is loaded; their Meta kernels are C++, their autograd formula is the one above."""
    torch.library.register_autograd(
        "skillkern::token_reduce_fwd_cuda",
        _make_backward(lambda *a: torch.ops.skillkern.token_reduce_bwd_cuda(*a)),
        setup_context=_setup_context)


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
    a row with no real position gives zeros. Differentiable w.r.t. x, w_score, ln_weight, ln_bias.
    The Triton path reads x once in the forward (LN statistics, scores, online softmax over
    position tiles and pooling fused) and once in the backward. backend="cuda" (csrc/token_reduce/)
    does the same in one block per item, with S <= 32 and D up to ~1900 (bf16 training on an
    H100; csrc/token_reduce/tokred_host.cpp lists the limits); beyond, it raises naming the
    argument.
    """
    op = "token_reduce"
    _check_x_mask(op, x, mask)
    B, N, D = x.shape
    expect(isinstance(w_score, Tensor) and w_score.dim() == 2 and w_score.shape[0] == D, op, "w_score",
            f"must have shape (D={D}, S), got {tuple(w_score.shape) if isinstance(w_score, Tensor) else w_score}")
    _check_param(op, w_score, "w_score", x, (D, w_score.shape[1]))
    expect(w_score.shape[1] >= 1, op, "w_score", "must produce at least one token (S >= 1)")
    if ln_weight is not None:
        _check_param(op, ln_weight, "ln_weight", x, (D,))
    if ln_bias is not None:
        expect(ln_weight is not None, op, "ln_bias", "needs ln_weight (LayerNorm without a weight is "
                "not supported; pass ones)")
        _check_param(op, ln_bias, "ln_bias", x, (D,))
    expect(float(eps) > 0, op, "eps", f"must be > 0, got {eps!r}")
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

    x: (B, N, D); scores: (B, N, S) float; mask: bool (B, N). Returns (B, S, D) in x.dtype; a
    row with no real position gives zeros. Differentiable w.r.t. x and scores. backend="cuda"
    takes S <= 32 (see token_reduce).
    """
    op = "token_pool"
    _check_x_mask(op, x, mask)
    B, N, _ = x.shape
    expect(isinstance(scores, Tensor) and scores.dim() == 3 and tuple(scores.shape[:2]) == (B, N), op,
            "scores", f"must have shape (B={B}, N={N}, S), got "
            f"{tuple(scores.shape) if isinstance(scores, Tensor) else scores}")
    _check_param(op, scores, "scores", x, tuple(scores.shape))
    expect(scores.shape[2] >= 1, op, "scores", "must have S >= 1")
    which = _backend.resolve("token_pool", backend, x.device)
    if which == "torch":
        return token_pool_ref(x, scores, mask)
    if which == "cuda":
        return _fwd_cuda(x, None, scores, None, None, mask, 1e-5, True)[0]
    return torch.ops.skillkern.token_reduce_fwd(x, None, scores, None, None, mask, 1e-5, True)[0]
