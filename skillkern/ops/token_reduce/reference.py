"""Reference (pure PyTorch) token reduction: the math every backend must match.

    u = layer_norm(x) over D (weight ln_weight, bias ln_bias) if ln_weight is given, else x
    A[b, :, s] = softmax over the real positions n of (u[b] @ w_score)[:, s]
    out[b, s, :] = sum_n A[b, n, s] * u[b, n, :]      (x[b, n, :] with pool_input=True)

A row (batch item) with no real position gives zeros. token_pool is the pooling alone, with
precomputed scores (B, N, S) in place of u @ w_score, pooling x itself.
Whatever masked positions hold (NaN and inf included: padding is often garbage) never reaches an
output or a gradient: they are replaced by selection (masked_fill), never multiplied by a 0 weight
(0 * NaN = NaN), and their gradients are exactly 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _real_rows(t, mask):
    """t (B, N, ...) with the rows of masked positions replaced by 0 (a select: NaN-safe, and
    their gradient is exactly 0)."""
    if mask is None:
        return t
    return t.masked_fill(~mask.view(*mask.shape, *([1] * (t.dim() - 2))), 0.0)


def _masked_softmax_pool(scores, values, mask):
    """scores: (B, N, S); values: (B, N, D), both already 0 at masked positions; mask: (B, N)
    bool or None -> (B, S, D) in the accumulation dtype."""
    acc = _acc_dtype(values)
    scores = scores.to(acc)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
        empty = ~mask.any(dim=1)  # (B,)
        # an all-masked row would be softmax(-inf, ...) = NaN: give it finite scores, zero it below
        scores = scores.masked_fill(empty[:, None, None], 0.0)
    weights = torch.softmax(scores, dim=1)  # over positions
    out = torch.einsum("bns,bnd->bsd", weights, values.to(acc))
    if mask is not None:
        out = out.masked_fill(empty[:, None, None], 0.0)
    return out


def token_reduce_ref(x, w_score, ln_weight=None, ln_bias=None, mask=None, eps=1e-5, pool_input=False):
    """x: (B, N, D); w_score: (D, S); ln_weight/ln_bias: (D,) or None; mask: (B, N) bool.
    pool_input: pool x itself instead of u (scores still from u). Returns (B, S, D) in x.dtype
    (computed in fp32, fp64 for fp64 inputs)."""
    acc = _acc_dtype(x)
    xs = _real_rows(x.to(acc), mask)
    u = xs
    if ln_weight is not None:
        u = F.layer_norm(xs, (x.shape[-1],), ln_weight.to(acc),
                         None if ln_bias is None else ln_bias.to(acc), eps)
    return _masked_softmax_pool(u @ w_score.to(acc), xs if pool_input else u, mask).to(x.dtype)


def token_pool_ref(x, scores, mask=None):
    """x: (B, N, D); scores: (B, N, S); mask: (B, N) bool -> (B, S, D) in x.dtype."""
    acc = _acc_dtype(x)
    return _masked_softmax_pool(scores, _real_rows(x.to(acc), mask), mask).to(x.dtype)
