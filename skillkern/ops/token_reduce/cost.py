"""The work of each token-reduction Triton kernel (FLOPs, HBM and L2 bytes) for `skillkern
inspect`, derived from the launch's grid, tile sizes and what each program of kernels.py loads,
and the launcher calls of one op call (forward and backward) for a benchmark case.

Counting rules (as in skill_ffn/cost.py): flops are what the MMAs execute, so every dot counts
whole: BLOCK_N positions (the last tile padded), S_PAD output tokens, the feature steps padded,
and each hi + lo split of an fp32 operand as one more MMA. Bytes count what the loads and stores
touch (by TMA, masked positions' rows arrive too, so they count). hbm_bytes counts each
tensor once (reads and writes), as if L2 kept every re-read (a program re-reads its own rows
right after the first pass); l2_bytes counts every load and store of every program. The real
positions come from the mask the kernel receives, so the launch's arguments are all the
counting needs. Not counted: the op's torch work around the kernels (the backward's
delta = <d_out, out>, the fold of the LayerNorm into the score matrix, and the sums of the
partial parameter gradients).

Notation below: nN = position tiles per item, L = real positions of all items,
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


def _fwd(a, grid, ctx) -> Work:
    """Program (item, feature part of ND * BLOCK_D), per position tile: pass 1 over the full D
    (LOAD_D at a time: the LayerNorm statistics and the raw scores x @ W', W' once per tile) or
    the given scores, then pass 2 over its part for the pooling. So x goes nP + 1 times through
    L2 (nP = parts per item: 1 when one program owns the item, then x leaves HBM once), W'
    B * nP * nN times. Dots per tile: (BLOCK_N x LOAD_D) @ (LOAD_D x S_PAD) per LOAD_D step,
    twice when W' is not held exactly by x's dtype (split hi + lo); (BLOCK_D x BLOCK_N) @
    (BLOCK_N x S_PAD) per pooled block (p rounded to x's type, one MMA). Writes out once, lse
    from the part-0 programs."""
    N, D, S = a["N"], a["D"], a["S"]
    bn, sp, bd, nd, ld = a["BLOCK_N"], a["S_PAD"], a["BLOCK_D"], a["ND"], a["LOAD_D"]
    given = int(bool(a["SCORES_GIVEN"]))
    n_parts = triton.cdiv(D, nd * bd)
    nN = triton.cdiv(N, bn)
    B = grid[0] // n_parts
    L = _positions(a, B)
    x, w = a["x_ptr"], a["w_ptr"]
    ex, ew, esc = x.element_size(), w.element_size(), a["sc_ptr"].element_size()
    sixteen = x.dtype != torch.float32
    X = (B * N if a["USE_TMA"] else L) * D * ex  # TMA fetches masked rows too
    w_split = 2 if sixteen and w.dtype != x.dtype else 1
    flops = 2.0 * B * n_parts * nN * bn * sp * ((1 - given) * triton.cdiv(D, ld) * ld * w_split
                                                 + nd * bd)
    out = B * S * D * a["out_ptr"].element_size() + B * S * 4
    gamma = D * (a["lnw_ptr"].element_size() + a["lnb_ptr"].element_size()) if a["POOL_LN"] else 0
    mask = B * N * n_parts if a["HAS_MASK"] else 0
    l2 = (X * ((1 - given) * n_parts + 1) + B * n_parts * nN * (1 - given) * D * S * ew
          + given * L * S * esc * n_parts + mask + B * n_parts * gamma + out)
    hbm = X + (1 - given) * D * S * ew + gamma + given * L * S * esc + (B * N if a["HAS_MASK"] else 0) + out
    return Work(flops, hbm, l2)


def _bwd(a, grid, ctx) -> Work:
    """Program = item, per position tile: pass 1 over the full D (LOAD_D at a time: statistics,
    x @ W' and x @ G^T; W' and d_out[b] once per tile) or, for given scores, x @ d_out^T; pass 2
    over D (BLOCK_D at a time): dv = A @ d_out, du = dz @ w_score^T, and with LayerNorm the x
    tile again (from L2) for xhat; writes dx, and dz' (B N S in dz_ptr's type) for the dw
    kernel, the item's LayerNorm sums (read back and rewritten per tile). So x goes 1 + HAS_LN
    times through L2 and once through HBM. Dots: per tile BLOCK_N x S_PAD over D twice in pass
    1 (16-bit x: W' and G split hi + lo where x's type does not hold them, 2 MMAs each),
    BLOCK_N x BLOCK_D over S_PAD twice in pass 2 (A, dz and w_score rounded: one MMA each, plus
    one for an fp32 w_score that the launcher did not round)."""
    N, D, S = a["N"], a["D"], a["S"]
    bn, sp, bd, ld = a["BLOCK_N"], a["S_PAD"], a["BLOCK_D"], a["LOAD_D"]
    given, ln, pln = (int(bool(a[k])) for k in ("SCORES_GIVEN", "HAS_LN", "POOL_LN"))
    B = grid[0]
    nN = triton.cdiv(N, bn)
    L = _positions(a, B)
    x = a["x_ptr"]
    ex, edo, esc = x.element_size(), a["dout_ptr"].element_size(), a["sc_ptr"].element_size()
    sixteen = x.dtype != torch.float32
    split = lambda exact: 1 if not sixteen or exact else 2  # noqa: E731
    w_exact = a["w_ptr"].dtype == x.dtype
    X = (B * N if a["USE_TMA"] else L) * D * ex  # TMA fetches masked rows too
    tiles = B * nN
    d1, d2 = triton.cdiv(D, ld) * ld, triton.cdiv(D, bd) * bd
    if given:
        pass1 = 2.0 * bn * sp * d2
    else:
        pass1 = 2.0 * bn * sp * d1 * (split(a["wf_ptr"].dtype == x.dtype) + split(not pln))
    pass2 = 2.0 * bn * sp * d2 * (1 + (0 if given else split(w_exact)))
    flops = tiles * (pass1 + pass2)
    ws = D * S * a["w_ptr"].element_size()
    per_tile = 2 * S * D * edo + (0 if given else 2 * ws)
    writes = (B * N * D * a["dx_ptr"].element_size() + (given * B * N * S * esc)
              + (1 - given) * B * N * S * a["dz_ptr"].element_size())
    ln_sums = ln * B * 2 * (D + sp) * 4
    l2 = X * (1 + ln) + tiles * per_tile + given * L * S * esc + writes + ln_sums * (2 * nN - 1) + B * S * 8
    hbm = X + B * S * D * edo + (1 - given) * 2 * ws + given * L * S * esc + writes + ln_sums + B * S * 8 + (
        B * N if a["HAS_MASK"] else 0)
    return Work(flops, hbm, l2)


def _dw(a, grid, ctx) -> Work:
    """dw_score's GEMM x^T dz' over all M = B N positions, split over K: each program a
    (BLOCK_D features x S_PAD) tile of one chunk of rows, BLOCK_K at a time (fp32 dz' split
    hi + lo for 16-bit x); x read a second time, dz' once, the fp32 partials written."""
    M, D, S = a["M"], a["D"], a["S"]
    bk, bd, sp = a["BLOCK_K"], a["BLOCK_D"], a["S_PAD"]
    x = a["x_ptr"]
    n_d, n_k = grid[0], grid[1]
    split = 2 if x.dtype != torch.float32 and a["dz_ptr"].dtype != x.dtype else 1
    flops = 2.0 * n_k * triton.cdiv(a["rows_per_prog"], bk) * bk * n_d * bd * sp * split
    X = M * D * x.element_size()
    ez = a["dz_ptr"].element_size()
    moved = X + M * S * ez * n_d + n_k * D * sp * 4 + (M * n_d if a["HAS_MASK"] else 0)
    return Work(flops, X + M * S * ez + n_k * D * sp * 4 + (M if a["HAS_MASK"] else 0), moved)


KERNELS = {
    "_token_reduce_fwd_kernel": _fwd,
    "_token_reduce_bwd_kernel": _bwd,
    "_token_reduce_dw_kernel": _dw,
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
        state["out"], state["lse"], _ = TI.token_reduce_fwd(x, w, None, lnw, lnb, case.mask, mod.norm.eps, pool_input)

    def bwd():
        TI.token_reduce_bwd(case.d_out, state["out"], x, w, None, lnw, lnb, case.mask, state["lse"],
                            mod.norm.eps, pool_input)

    return {}, [("fwd", fwd), ("bwd", bwd)]
