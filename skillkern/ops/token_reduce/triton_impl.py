"""Launchers of the token-reduction Triton kernels (kernels.py)."""
from __future__ import annotations

import torch
import triton

from skillkern._backend import interpreting
from skillkern.ops._common import dot_precision, sm_count, tma_ok
from skillkern.ops.token_reduce import kernels as K


# the forward's register budget for its pooled accumulators: ND x BLOCK_D x S_PAD fp32 values
# spread over 8 warps, 96 per thread at most (sm_90: 254 registers and no spill at D = 768,
# S = 24; 128 spills)
_FWD_ACC = 96 * 256
_FWD_ACC_FP32 = 16 * 256  # fp32 x: ieee dots on CUDA cores hold more per tile


def _fwd_blocks(N: int, D: int, S: int, fp32: bool) -> dict:
    """The forward's tiles (fp32 x: a smaller accumulator budget, one accumulator and 2 stages,
    its ieee dots on CUDA cores hold more per tile; two accumulators at S_PAD = 16 spilled 1.6 KB
    under triton 3.6): BLOCK_D = 128 features per accumulator, ND <= 8 accumulators per
    program, as many as the whole of D needs while they fit the register budget (then one
    program per item reads its x once; else cdiv(D, ND * BLOCK_D) programs share the item's
    rows through L2); LOAD_D = 32 features per step of the statistics and score pass (64 costs
    more registers than its bigger tile saves), 6 stages deep where the accumulators leave
    room for the pipeline's registers, else 4 (at 1 block per SM the TMA tiles in flight are
    what keeps HBM busy); BLOCK_N = 64 positions per step, the M side of the score MMA (wgmma's
    smallest).
    Measured statically on sm_90 (benchmarks/NOTES.md, token_reduce "Hopper redesign")."""
    s_pad = max(16, triton.next_power_of_2(S))
    budget = _FWD_ACC_FP32 if fp32 else _FWD_ACC
    block_d = max(16, min(128, triton.next_power_of_2(D), budget // s_pad))
    nd = 1 if fp32 else max(1, min(8, triton.cdiv(D, block_d), budget // (s_pad * block_d)))
    block_n = 16 if interpreting() else max(16, min(64, triton.next_power_of_2(N)))
    stages = 2 if fp32 else 6 if nd * block_d * s_pad <= budget * 2 // 3 else 4
    return dict(BLOCK_N=block_n, S_PAD=s_pad, BLOCK_D=block_d, ND=nd, LOAD_D=min(32, block_d), num_warps=8,
                num_stages=stages)


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


def _score_matrix(x, w, w_score, ln_weight, ln_bias, has_ln: bool):
    """(the matrix the kernels' score pass multiplies x by, the fold vector): with a LayerNorm
    it is folded into the scores (kernels.py): W' = diag(gamma) w_score (fp32), and
    [c, e] = [colsum W', beta @ w_score] (fp32, 2 S); without one, w itself and x as an unread
    placeholder."""
    if not has_ln:
        return w, x
    w = (ln_weight.float()[:, None] * w_score.float()).contiguous()
    shift = ln_bias.float() @ w_score.float() if ln_bias is not None else w.new_zeros(w.shape[1])
    return w, torch.cat([w.sum(0), shift])


def needs_lo(x: torch.Tensor, scores, ln_weight, pool_input: bool) -> bool:
    """Whether the forward also returns out's rounding residual: 16-bit x pooled raw (given
    scores, pool_input, or no LayerNorm at all; see kernels._store_block)."""
    return x.dtype in (torch.float16, torch.bfloat16) and (pool_input or scores is not None or ln_weight is None)


def token_reduce_fwd(x, w_score, scores, ln_weight, ln_bias, mask, eps, pool_input):
    """Returns out (B, S, D) in x.dtype, lse (B, S) fp32 (+inf for items with no real position)
    and out_lo: what rounding out to x.dtype dropped (needs_lo), else an empty tensor."""
    x = x.contiguous()
    B, N, D = x.shape
    S = w_score.shape[1] if w_score is not None else scores.shape[2]
    out = torch.empty(B, S, D, dtype=x.dtype, device=x.device)
    lse = torch.empty(B, S, dtype=torch.float32, device=x.device)
    lo = torch.empty_like(out) if needs_lo(x, scores, ln_weight, pool_input) else x.new_empty(0)
    if B == 0 or N == 0:  # no position at all: what the kernel gives an all-masked item
        return out.zero_(), lse.fill_(float("inf")), lo.zero_()
    ops, strides, flags = _operands(x, w_score, scores, ln_weight, ln_bias, mask, pool_input)
    w, fold = _score_matrix(x, ops[0], w_score, ln_weight, ln_bias, flags["HAS_LN"])
    blk = _fwd_blocks(N, D, S, x.dtype == torch.float32)
    K._token_reduce_fwd_kernel[(triton.cdiv(D, blk["ND"] * blk["BLOCK_D"]) * B,)](
        x, w, *ops[1:], out, lse, fold, lo if lo.numel() else out, B, N, D, S, float(eps), *strides[:2],
        w.stride(0), *strides[3:], out.stride(0), out.stride(1), lse.stride(0), USE_TMA=tma_ok(x),
        STORE_LO=lo.numel() > 0, **flags, **blk)
    return out, lse, lo


def _bwd_blocks(N: int, D: int, S: int, fp32: bool) -> dict:
    """The backward's tiles: BLOCK_N = 64 positions (the M side of every MMA of the item
    kernel), LOAD_D = 32 features per step of pass 1, BLOCK_D = 32 per step of pass 2 (dx),
    8 warps, 6 stages (sm_90, triton 3.6: 239-248 registers, no spill at the goal shapes, and
    enough TMA bytes in flight at one program per SM to cover HBM's latency; 64-feature steps
    at 4 stages were latency-bound, and spill at 5). fp32 x (ieee dots on CUDA cores): 32
    positions and 16 features per step, 3 stages (no spill; 32 features spilled 16 B at
    S_PAD = 32)."""
    s_pad = max(16, triton.next_power_of_2(S))
    rows, feats, stages = (32, 16, 3) if fp32 else (64, 32, 6)
    block_n = 16 if interpreting() else max(16, min(rows, triton.next_power_of_2(N)))
    block_d = max(16, min(feats, triton.next_power_of_2(D)))
    load_d = max(16, min(32, triton.next_power_of_2(D)))
    return dict(BLOCK_N=block_n, S_PAD=s_pad, BLOCK_D=block_d, LOAD_D=load_d, num_warps=8, num_stages=stages)


# the dw_score GEMM: (128 features x S_PAD) per program, 64 positions per step
_DW_D, _DW_K = (16, 16) if interpreting() else (128, 64)


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
    wf, fold = _score_matrix(x, ops[0], w_score, ln_weight, ln_bias, has_ln)
    # du = dz @ w_score^T takes w_score rounded to x's type, as it takes dz (kernels.py); the
    # score pass keeps its exact matrix wf
    w = ops[0].to(x.dtype) if not given else ops[0]
    blk = _bwd_blocks(N, D, S, x.dtype == torch.float32)
    s_pad = blk["S_PAD"]
    dx = torch.empty_like(x)
    d_scores = torch.empty_like(ops[1]) if given else None
    # delta[b, s] = <d_out[b, s], out[b, s]>: the softmax-backward term sum_n A dA, from the
    # saved output instead of another pass over the positions (as flash attention does); out
    # comes with its rounding residual added where the forward kept one (fp32 here), so
    # pooled raw x of large mean does not turn out's rounding into gradient error. Otherwise
    # it carries out's rounding (~2^-9 relative), so gradients that are exactly 0 in exact
    # arithmetic (ln_bias with pool_input) come out as noise of that size.
    delta = (d_out.float() * out.float()).sum(-1).contiguous()
    dz = torch.empty((B * N, S) if not given else (1,), dtype=torch.float32, device=x.device)
    vec_part = torch.empty((B, 2, s_pad) if has_ln else (1,), dtype=torch.float32, device=x.device)
    ln_part = torch.empty((B, 2, D) if has_ln else (1,), dtype=torch.float32, device=x.device)
    use_tma = tma_ok(x)
    K._token_reduce_bwd_kernel[(B,)](
        x, w, wf, *ops[1:], d_out, delta, lse, fold, dx, d_scores if given else x, dz, vec_part, ln_part,
        B, N, D, S, float(eps), *strides[:2], w.stride(0) if not given else 0, wf.stride(0) if not given else 0,
        *strides[3:], d_out.stride(0), d_out.stride(1), lse.stride(0), USE_TMA=use_tma, **flags, **blk)
    d_w = None
    if not given:  # dw_score = x^T dz' over every position, then the LayerNorm's terms
        M = B * N
        n_d = triton.cdiv(D, _DW_D)
        n_k = max(1, min(triton.cdiv(M, 16 * _DW_K), triton.cdiv(4 * sm_count(x.device), n_d)))  # ~4 per SM
        rows = triton.cdiv(triton.cdiv(M, n_k), _DW_K) * _DW_K
        n_k = triton.cdiv(M, rows)
        part = torch.empty((n_k, D, s_pad), dtype=torch.float32, device=x.device)
        m = ops[4].view(-1) if flags["HAS_MASK"] else x
        K._token_reduce_dw_kernel[(n_d, n_k)](
            x.view(M, D), dz, m, part, M, D, S, rows, D, HAS_MASK=flags["HAS_MASK"], PRECISION=flags["PRECISION"],
            USE_TMA=use_tma, BLOCK_K=_DW_K, BLOCK_D=_DW_D, S_PAD=s_pad, num_warps=4, num_stages=3)
        d_w = part.sum(0)[:, :S]
        if has_ln:
            sums = vec_part.sum(0)[:, :S]  # (sum_n dz' mean, sum_n dz)
            d_w = ln_weight.float()[:, None] * (d_w - sums[0][None, :])
            if ln_bias is not None:
                d_w = d_w + ln_bias.float()[:, None] * sums[1][None, :]
        d_w = d_w.to(w_score.dtype, copy=True)  # (a fresh tensor: op outputs may not alias)
    d_lnw = d_lnb = None
    if has_ln:
        ln_sums = ln_part.sum(0)
        d_lnw = ln_sums[0].to(ln_weight.dtype, copy=True)
        d_lnb = ln_sums[1].to(ln_bias.dtype, copy=True) if ln_bias is not None else None
    return dx, d_w, d_scores.to(scores.dtype) if given else None, d_lnw, d_lnb
