"""The work of each token-reduction Triton kernel (FLOPs, HBM and L2 bytes) for `skillkern
inspect`, derived from the launch's grid, tile sizes and what each program of kernels.py loads,
and the launcher calls of one op call (forward and backward) for a benchmark case.

Counting rules (as in skill_ffn/cost.py): flops are what the MMAs execute, so every dot counts
whole: BLOCK_N positions (the last tile padded), S_PAD output tokens, BLOCK_D features per step,
masked positions and the backward's out-of-range items included; the score GEMM counts once per
D-slice program (each recomputes it over the full D). Bytes count what the masked loads and
stores really touch: the x rows of masked positions are never read, but dx and d_scores are
written at every position < N. hbm_bytes counts each tensor once (reads and writes), as if L2
kept every re-read (an item's D-slice programs run side by side: the grid is slice-fastest);
l2_bytes counts every load and store of every program. The small vectors (LayerNorm weight and
bias, a row of w_score) count once per load, not per row they broadcast to. The real positions
come from the mask the kernel receives, so the launch's arguments are all the counting needs.
Not counted: the op's torch work around the kernels (the backward's delta = <d_out, out> and
the sum of the per-program partial parameter gradients).

Notation below: nD = D slices, nN = position tiles per item, L = real positions of all items,
X = L * D * the element size of x (one pass over the real rows).
"""
from __future__ import annotations

import torch
import triton

from skillkern.bench.roofline import Work
from skillkern.ops.token_reduce import triton_impl as TI


def _positions(a, B: int) -> int:
    """L: real positions of the B items (the mask's ones, else B * N)."""
    if a["HAS_MASK"]:
        return int((a["mask_ptr"][:B, :a["N"]] != 0).sum())
    return B * a["N"]


def _sizes(a):
    """N, D, S, nD, nN, the padded tile (BLOCK_N, S_PAD, BLOCK_D) and the flags as ints."""
    N, D, S = a["N"], a["D"], a["S"]
    bn, sp, bd = a["BLOCK_N"], a["S_PAD"], a["BLOCK_D"]
    flags = tuple(int(bool(a[k])) for k in ("HAS_LN", "HAS_LN_BIAS", "POOL_LN", "POOL_LN_BIAS", "SCORES_GIVEN"))
    return N, D, S, triton.cdiv(D, bd), triton.cdiv(N, bn), bn, sp, bd, flags


def _fwd(a, grid, ctx) -> Work:
    """Program (item, D slice), per position tile: LayerNorm statistics (two passes over the
    full D of the real rows), scores over the full D (one more pass, w_score and the LayerNorm
    vectors once per tile) or the given scores, then its slice of x for the pooling. So x goes
    nD * (2 + 1) + 1 times through L2 with LayerNorm and computed scores (19 at D = 768, BLOCK_D
    128), w_score B * nD * nN times. Dots: (BLOCK_N x BLOCK_D) @ (BLOCK_D x S_PAD) per D step
    for the scores, (S_PAD x BLOCK_N) @ (BLOCK_N x BLOCK_D) for the pooling. Writes out once,
    lse from the slice-0 programs."""
    N, D, S, nD, nN, bn, sp, bd, (ln, lnb, pln, plnb, given) = _sizes(a)
    B = grid[0] // nD
    L = _positions(a, B)
    ex, ew, esc = a["x_ptr"].element_size(), a["w_ptr"].element_size(), a["sc_ptr"].element_size()
    ev, evb = a["lnw_ptr"].element_size(), a["lnb_ptr"].element_size()
    X = L * D * ex
    flops = 2.0 * B * nD * nN * bn * sp * ((1 - given) * nD * bd + bd)
    out = B * S * D * a["out_ptr"].element_size() + B * S * 4
    score_vectors = (1 - given) * nD * D * (ln * ev + lnb * evb)  # per tile, summed over the slices
    pool_vectors = D * (pln * ev + plnb * evb)
    l2 = (X * (nD * (2 * ln + 1 - given) + 1)
          + B * nN * ((1 - given) * nD * D * S * ew + score_vectors + pool_vectors)
          + given * L * S * esc * nD + (B * nD * N if a["HAS_MASK"] else 0) + out)
    hbm = (X + (1 - given) * D * S * ew + D * (max(ln, pln) * ev + max(lnb, plnb) * evb)
           + given * L * S * esc + (B * N if a["HAS_MASK"] else 0) + out)
    return Work(flops, hbm, l2)


def _bwd(a, grid, ctx) -> Work:
    """Program (item group, D slice), per item of its group and position tile: LayerNorm
    statistics (two passes over the full D), the scores (one pass, w_score), dA = v @ d_out^T
    (one pass over x and over d_out[b]), the LayerNorm row sums (one pass over x, w_score, and
    d_out again when the pooled values are LayerNorm-ed), then its slice: dv, du, dw_score.
    So x goes nD * (2 + 1 + 1 + 1) + 1 times through L2 (31 at D = 768), w_score and d_out
    about 2 nD times per tile. Dots per tile, each BLOCK_N x S_PAD by the K named: scores,
    dA and du (twice with POOL_LN) over nD * BLOCK_D; dv, du and dw over BLOCK_D. The last
    group's out-of-range items run every dot and load d_out, w_score and the vectors (of item
    0); their x, lse and delta loads are masked off. Writes dx at every position < N,
    d_scores (slice-0 programs) and the per-program partial parameter gradients."""
    N, D, S, nD, nN, bn, sp, bd, (ln, lnb, pln, plnb, given) = _sizes(a)
    B, items = a["B"], a["items_per_prog"]
    groups = grid[0] // nD
    iters = groups * items  # item iterations per D slice, out-of-range ones included
    L = _positions(a, B)
    ex, ew, esc = a["x_ptr"].element_size(), a["w_ptr"].element_size(), a["sc_ptr"].element_size()
    ev, evb, edo = a["lnw_ptr"].element_size(), a["lnb_ptr"].element_size(), a["dout_ptr"].element_size()
    X = L * D * ex
    dp = nD * bd
    flops = 2.0 * iters * nN * nD * bn * sp * ((1 - given) * dp + dp + ln * (1 + pln) * dp + bd * (1 + 2 * (1 - given)))
    # per (iteration, tile), summed over the nD slices: full-D passes are counted nD times,
    # the slice's own loads once (the slices add up to D)
    w_rows = (nD * ((1 - given) + ln) + (1 - given)) * D * S * ew
    d_out = (nD * (1 + ln * pln) + 1) * S * D * edo
    vectors = (nD * ((1 - given) * (ln * ev + lnb * evb) + pln * ev + plnb * evb + ln * (2 * ev + lnb * evb))
               + ln * ev + lnb * evb) * D
    writes = (B * N * D * a["dx_ptr"].element_size() + given * B * N * S * a["dsc_ptr"].element_size()
              + groups * D * ((1 - given) * S * 4 + ln * 2 * 4))
    mask = a["HAS_MASK"]
    l2 = (X * (nD * (2 * ln + (1 - given) + 1 + ln) + 1) + iters * nN * (w_rows + d_out + vectors)
          + groups * ln * D * ev + B * S * 8 * nD + given * L * S * esc * nD
          + (iters * N * nD if mask else 0) + writes)
    hbm = (X + (1 - given) * D * S * ew + D * (max(ln, pln) * ev + max(lnb, plnb) * evb) + B * S * D * edo
           + B * S * 8 + given * L * S * esc + (B * N if mask else 0) + writes)
    return Work(flops, hbm, l2)


KERNELS = {
    "_token_reduce_fwd_kernel": _fwd,
    "_token_reduce_bwd_kernel": _bwd,
}


def launches(case) -> tuple[dict, list]:
    """(context, [(phase, thunk)]): the launcher calls of one skillkern.nn.TokenReduction
    forward and backward (the benchmark's skillkern providers) on the case's tensors:
    token_reduce with the folded score matrix, the LayerNorm weight and bias, the case's mask,
    eps and pool_input (values="input"), as the module passes them. The context is empty: the
    kernels receive the mask, so their work follows from the launch's own arguments."""
    from skillkern.bench.token_reduce import load
    from skillkern.ops.token_reduce.module import TokenReduction

    mod = load(TokenReduction, case, case.x.dtype)
    x = case.x.detach()
    with torch.no_grad():
        w = mod._score_matrix()
    lnw, lnb = mod.norm.weight.detach(), mod.norm.bias.detach()
    pool_input = mod.values == "input"
    state = {}

    def fwd():
        state["out"], state["lse"] = TI.token_reduce_fwd(x, w, None, lnw, lnb, case.mask, mod.norm.eps, pool_input)

    def bwd():
        TI.token_reduce_bwd(case.d_out, state["out"], x, w, None, lnw, lnb, case.mask, state["lse"],
                            mod.norm.eps, pool_input)

    return {}, [("fwd", fwd), ("bwd", bwd)]
