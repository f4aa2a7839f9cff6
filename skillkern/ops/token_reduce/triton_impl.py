"""Launchers of the token-reduction Triton kernels (kernels.py)."""
from __future__ import annotations

import torch
import triton

from skillkern._backend import interpreting
from skillkern.ops._common import dot_precision
from skillkern.ops.token_reduce import kernels as K


def _blocks(N: int, D: int, S: int) -> dict:
    """BLOCK_D: the feature slice a program pools (the accumulator is S_PAD x BLOCK_D fp32);
    BLOCK_N: positions per step. tl.dot needs every dimension >= 16."""
    s_pad = max(16, triton.next_power_of_2(S))
    block_d = max(16, min(128 if s_pad <= 32 else 64, triton.next_power_of_2(D)))
    block_n = 16 if interpreting() else max(16, min(64, triton.next_power_of_2(N)))
    return dict(BLOCK_N=block_n, S_PAD=s_pad, BLOCK_D=block_d, num_warps=4)


def _operands(x, w_score, scores, ln_weight, ln_bias, mask, pool_input):
    """What both kernels take beside their outputs: the optional inputs (x stands in for an
    absent one), their strides and the constexpr flags."""
    def opt(t):
        return (t.contiguous(), True) if t is not None else (x, False)

    w, has_w = opt(w_score)
    sc, given = opt(scores)
    lnw, has_ln = opt(ln_weight)
    lnb, has_lnb = opt(ln_bias)
    m, has_mask = opt(None if mask is None else mask.view(torch.uint8))
    strides = (x.stride(0), x.stride(1), w.stride(0) if has_w else 0, sc.stride(0) if given else 0,
               sc.stride(1) if given else 0, m.stride(0) if has_mask else 0)
    flags = dict(HAS_LN=has_ln, HAS_LN_BIAS=has_lnb, POOL_LN=has_ln and not pool_input,
                 POOL_LN_BIAS=has_lnb and not pool_input, SCORES_GIVEN=given, HAS_MASK=has_mask,
                 PRECISION=dot_precision(x.dtype))
    return (w, sc, lnw, lnb, m), strides, flags


def token_reduce_fwd(x, w_score, scores, ln_weight, ln_bias, mask, eps, pool_input):
    """Returns out (B, S, D) in x.dtype and lse (B, S) fp32 (+inf for items with no real position)."""
    x = x.contiguous()
    B, N, D = x.shape
    S = w_score.shape[1] if w_score is not None else scores.shape[2]
    out = torch.empty(B, S, D, dtype=x.dtype, device=x.device)
    lse = torch.empty(B, S, dtype=torch.float32, device=x.device)
    if B == 0 or N == 0:  # no position at all: what the kernel gives an all-masked item
        return out.zero_(), lse.fill_(float("inf"))
    ops, strides, flags = _operands(x, w_score, scores, ln_weight, ln_bias, mask, pool_input)
    blk = _blocks(N, D, S)
    # slice-fastest 1-d grid: the programs of one item run side by side and share x through L2
    K._token_reduce_fwd_kernel[(triton.cdiv(D, blk["BLOCK_D"]) * B,)](
        x, *ops, out, lse, N, D, S, float(eps), *strides, out.stride(0), out.stride(1), lse.stride(0),
        num_stages=2, **flags, **blk)
    return out, lse


def token_reduce_bwd(d_out, out, x, w_score, scores, ln_weight, ln_bias, mask, lse, eps, pool_input):
    """Returns dx, d_w_score, d_scores, d_ln_weight, d_ln_bias (None for absent inputs)."""
    x = x.contiguous()
    d_out = d_out.contiguous()
    B, N, D = x.shape
    S = lse.shape[1]
    if B == 0 or N == 0:  # nothing reaches the output: every gradient is 0
        zeros = lambda t: torch.zeros_like(t) if t is not None else None  # noqa: E731
        return torch.zeros_like(x), zeros(w_score), zeros(scores), zeros(ln_weight), zeros(ln_bias)
    ops, strides, flags = _operands(x, w_score, scores, ln_weight, ln_bias, mask, pool_input)
    given, has_ln = flags["SCORES_GIVEN"], flags["HAS_LN"]
    dx = torch.empty_like(x)
    d_scores = torch.zeros_like(ops[1]) if given else None
    # delta[b, s] = <d_out[b, s], out[b, s]>: the softmax-backward term sum_n A dA, from the
    # saved output instead of another pass over the positions (as flash attention does). With
    # 16-bit outputs it carries their rounding (~2^-9 relative), so gradients that are exactly 0
    # in exact arithmetic (ln_bias with pool_input) come out as noise of that size.
    delta = (d_out.float() * out.float()).sum(-1).contiguous()
    # ~4 programs per SM on an H100 from the item groups alone; more items per program = fewer
    # partial sums of dw_score / d_ln_* to add up afterwards
    items = max(1, triton.cdiv(B, 512))
    groups = triton.cdiv(B, items)
    dw_part = torch.zeros(groups if w_score is not None else 1, D, S, dtype=torch.float32, device=x.device)
    dlnw_part = torch.zeros(groups if has_ln else 1, D, dtype=torch.float32, device=x.device)
    dlnb_part = torch.zeros_like(dlnw_part)
    blk = _blocks(N, D, S)
    K._token_reduce_bwd_kernel[(triton.cdiv(D, blk["BLOCK_D"]) * groups,)](
        x, *ops, d_out, delta, lse, dx, d_scores if given else x, dw_part, dlnw_part, dlnb_part,
        B, N, D, S, float(eps), items, *strides, d_out.stride(0), d_out.stride(1), lse.stride(0),
        num_stages=2, **flags, **blk)
    cast = lambda part, like: part.sum(0).to(like.dtype) if like is not None else None  # noqa: E731
    return (dx, cast(dw_part, w_score), d_scores.to(scores.dtype) if given else None,
            cast(dlnw_part, ln_weight), cast(dlnb_part, ln_bias))
