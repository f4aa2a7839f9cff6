"""The work of each skill-FFN Triton kernel (FLOPs, HBM and L2 bytes) for `skillkern inspect`,
derived from the launch's grid, tile sizes and what each program loads (kernels.py), and the
launcher calls of one op call (forward and backward) for a benchmark case.

Counting rules: flops are what the MMAs execute (row tiles padded to BLOCK_M within a skill);
hbm_bytes counts each tensor once (reads and writes), as if L2 kept every re-read; l2_bytes
counts every load and store of every program. Per-skill row counts come from the case's ids.
"""
from __future__ import annotations

import math

import torch

from skillkern.bench.roofline import Work
from skillkern.ops.skill_ffn import reference, triton_impl as TI


def _row_tiles(counts, block_m: int) -> int:
    return sum(math.ceil(n / block_m) for n in counts)


def _route_hist(a, grid, ctx) -> Work:
    N, ids = a["N"], a["ids_ptr"]
    counts_bytes = grid[0] * a["E_PAD"] * 4
    return Work(0.0, N * ids.element_size() + counts_bytes, N * ids.element_size() + counts_bytes)


def _route_scatter(a, grid, ctx) -> Work:
    N, ids, nb = a["N"], a["ids_ptr"], grid[0]
    counts = nb * a["E_PAD"] * 4
    # each program sums the counts of the blocks before it (in chunks of NB_CHUNK rows)
    l2 = N * ids.element_size() + nb * math.ceil(nb / a["NB_CHUNK"]) * a["NB_CHUNK"] * a["E_PAD"] * 4 / 2 + N * 4
    return Work(0.0, N * ids.element_size() + counts + N * 4 + (a["E"] + 1) * 4, l2)


def _gemm_rows(a, ctx, *, K: int, n_cols: int, widths: int, a_elt: int, w_elt: int, out_cols: int,
               out_elt: int, a_rows_unique: int, extra_hbm: float = 0.0, extra_l2_per_row: float = 0.0) -> Work:
    """A row-tiled grouped GEMM: each row tile of a skill times `widths` weight column tiles
    of that skill, K deep; writes `out_cols` columns per row."""
    bm, bn = a["BLOCK_M"], a["BLOCK_N"]
    counts = ctx["counts"]
    tiles_m = _row_tiles(counts, bm)
    tiles_n = math.ceil(n_cols / bn)
    flops = 2.0 * tiles_m * bm * tiles_n * bn * K * widths
    E = len(counts)
    used = sum(1 for n in counts if n)
    N = sum(counts)
    w_bytes = used * K * n_cols * widths * w_elt
    hbm = a_rows_unique * K * a_elt + w_bytes + N * out_cols * out_elt + N * 4 + extra_hbm
    l2 = (tiles_m * tiles_n * (bm * K * a_elt + K * bn * widths * w_elt)
          + N * out_cols * out_elt + N * (4 + extra_l2_per_row) * tiles_n + (E + 1) * 4 * tiles_m * tiles_n)
    return Work(flops, hbm, l2)


def _up_fwd(a, grid, ctx) -> Work:
    """Writes the activation (STORE_ACT: h columns) and/or the pre-activation (STORE_PRE: h1)."""
    x, w1 = a["x_ptr"], a["w1_ptr"]
    swiglu = a["ACT"] == TI.ACT_CODE["swiglu"]
    h1 = a["h"] * (2 if swiglu else 1)
    out_cols = (a["h"] if a["STORE_ACT"] else 0) + (h1 if a["STORE_PRE"] else 0)
    return _gemm_rows(a, ctx, K=a["d"], n_cols=a["h"], widths=2 if swiglu else 1, a_elt=x.element_size(),
                      w_elt=w1.element_size(), out_cols=out_cols, out_elt=a["hid_ptr"].element_size(),
                      a_rows_unique=ctx["tokens"])


def _down(a, grid, ctx) -> Work:
    src, w = a["a_ptr"], a["w_ptr"]
    N = sum(ctx["counts"])
    return _gemm_rows(a, ctx, K=a["K"], n_cols=a["n_out"], widths=1, a_elt=src.element_size(),
                      w_elt=w.element_size(), out_cols=a["n_out"], out_elt=a["out_ptr"].element_size(),
                      a_rows_unique=N, extra_hbm=N * 4 if a["HAS_SCALE"] else 0.0,
                      extra_l2_per_row=4 if a["HAS_SCALE"] else 0)


def _up_bwd(a, grid, ctx) -> Work:
    """G = dy @ w2^T over contiguous sorted dy rows; the epilogue reads the pre-activation
    (h1 columns) and writes c*H (h) and dZ (h1)."""
    dy, w2 = a["dy_ptr"], a["w2_ptr"]
    swiglu = a["ACT"] == TI.ACT_CODE["swiglu"]
    h = a["h"]
    h1 = h * (2 if swiglu else 1)
    N = sum(ctx["counts"])
    elt = dy.element_size()
    return _gemm_rows(a, ctx, K=a["d"], n_cols=h, widths=1, a_elt=elt, w_elt=w2.element_size(),
                      out_cols=h + h1, out_elt=elt, a_rows_unique=N,
                      extra_hbm=N * 4 + N * h1 * elt + (N * math.ceil(h / 64) * 4 if a["NEED_DC"] else 0),
                      extra_l2_per_row=h1 * elt / math.ceil(h / a["BLOCK_N"]))


def wgrad_units(counts, R: int) -> list[tuple[int, int]]:
    """(skill, rows) of the weight-gradient work units in launch order, as kernels._wgrad_unit
    maps them: every skill's full R-row chunks in skill order, then the shorter last chunks by
    decreasing length (ties: lower skill first)."""
    full = [(e, R) for e, n in enumerate(counts) for _ in range(n // R)]
    rest = sorted(((e, n % R) for e, n in enumerate(counts) if n % R), key=lambda u: (-u[1], u[0]))
    return full + rest


def _wgrad(a, grid, ctx) -> Work:
    """Program (unit, tile): dw[e] tile = a_rows^T b_rows over one chunk of at most R rows of
    skill e (units longest first); chunks of a split skill store fp32 partials."""
    bp, bq, br, R = a["BLOCK_P"], a["BLOCK_Q"], a["BLOCK_R"], a["R"]
    P, Q = a["P"], a["Q"]
    counts = ctx["counts"]
    elt = a["a_ptr"].element_size()
    tiles = math.ceil(P / bp) * math.ceil(Q / bq)
    units = wgrad_units(counts, R)
    rows_padded = [math.ceil(n / br) * br for _, n in units]
    flops = 2.0 * sum(rows_padded) * tiles * bp * bq
    N = sum(counts)
    split = sum(1 for e, _ in units if counts[e] > R)
    out = sum(1 for n in counts if 0 < n <= R) * P * Q * a["dw_ptr"].element_size() + split * P * Q * 4
    hbm = N * (P + Q) * elt + out
    l2 = sum(rows_padded) * tiles * (bp + bq) * elt + out
    per_program = [2.0 * r * bp * bq for r in rows_padded for _ in range(tiles)]
    per_program += [0.0] * (grid[0] - len(per_program))  # surplus units: exit at once
    return Work(flops, hbm, l2, program_flops=tuple(per_program))


def _wgrad_reduce(a, grid, ctx) -> Work:
    """Sums the partials of each split skill in chunk order; zeros the skills without rows."""
    P, Q, R = a["P"], a["Q"], a["R"]
    counts = ctx["counts"]
    partials = sum(math.ceil(n / R) for n in counts if n > R)
    written = sum(1 for n in counts if n == 0 or n > R) * P * Q * a["dw_ptr"].element_size()
    moved = partials * P * Q * 4 + written + grid[0] * grid[1] * (a["E"] + 1) * 4
    return Work(0.0, moved, moved)


def _gather(a, grid, ctx) -> Work:
    """Each active slot's row read by token and written in sorted order (+ c and the sums)."""
    N, C = sum(ctx["counts"]), a["C"]
    elt = a["src_ptr"].element_size()
    sums = grid[0] * C * 4 + N * 4 if a["SUMS"] else 0
    moved = 2.0 * N * C * elt + N * 4 + sums
    return Work(0.0, moved, moved)


def _zero_tail(a, grid, ctx) -> Work:
    """Zeros the rows of inactive slots (the rest of the programs exit after one load)."""
    inactive = ctx["tokens"] * ctx["k"] - sum(ctx["counts"])
    moved = inactive * a["C"] * a["ptr"].element_size() + grid[0] * 4
    return Work(0.0, moved, moved)


KERNELS = {
    "_route_hist_kernel": _route_hist,
    "_route_scatter_kernel": _route_scatter,
    "_skill_up_fwd_kernel": _up_fwd,
    "_skill_down_kernel": _down,
    "_skill_up_bwd_kernel": _up_bwd,
    "_skill_wgrad_kernel": _wgrad,
    "_wgrad_reduce_kernel": _wgrad_reduce,
    "_gather_rows_kernel": _gather,
    "_zero_inactive_rows_kernel": _zero_tail,
}


def launches(case) -> tuple[dict, list]:
    """(context, [(phase, thunk)]): the launcher calls of one skill_ffn call (fwd, then bwd) on
    the case's tensors, as op.py makes them (ids as (T, k), fp32 slot weights)."""
    x = case.x.detach().reshape(-1, case.x.shape[-1])
    ids = case.ids.reshape(x.shape[0], -1)
    ids32 = ids.to(torch.int32)
    E = case.w1.shape[0]
    scale = reference.slot_scale(ids, E, None)
    valid = ids[ids >= 0]
    counts = torch.bincount(valid.reshape(-1).long(), minlength=E).tolist()
    ctx = {"counts": counts, "tokens": x.shape[0], "k": ids.shape[1]}
    w1, w2 = case.w1.detach(), case.w2.detach()
    b1 = case.b1.detach() if case.b1 is not None else None
    b2 = case.b2.detach() if case.b2 is not None else None
    state = {}

    recompute = getattr(case, "recompute", False)

    def fwd():
        state["pre"] = TI.skill_ffn_fwd(x, ids32, scale, w1, w2, b1, b2, case.activation, save_pre=not recompute)[3]
        # the routing kernels are recorded, not run: the backward's host code indexes with the
        # real order, so it gets the reference's
        state["order"], state["offsets"] = (t.to(torch.int32) for t in reference.route_ref(ids32.reshape(-1), E))

    def bwd():
        TI.skill_ffn_bwd(torch.empty_like(x), x, scale, w1, w2, b1, b2, state["order"], state["offsets"],
                         case.activation, True, state["pre"])

    return ctx, [("fwd", fwd), ("bwd", bwd)]
