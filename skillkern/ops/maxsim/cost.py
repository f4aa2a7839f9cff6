"""The work of each MaxSim Triton kernel (FLOPs, HBM and L2 bytes, MMA-loop steps) for
`skillkern inspect`, from the launch's grid, tile sizes and block tables (triton_impl.py), and
the launcher calls of one op call for a bench case (skillkern/bench/maxsim.py).

Counting rules (as in token_similarity/cost.py): flops are what the MMAs execute, whole tiles
(padding rows of a query block and the masked tail columns of a doc's last block included).
Bytes count what the masked loads and stores touch; hbm_bytes counts each tensor once, l2_bytes
every load and store of every program. Names: row = D x the element size.
"""
from __future__ import annotations

import torch

from skillkern.bench.roofline import Work
from skillkern.ops.maxsim import triton_impl as TI


def _fwd(a, grid, ctx) -> Work:
    """Program (query block, DOCS columns): its query rows once; per block of its columns, the
    block's table entries and real token rows (by TMA: the whole BLOCK_N-row tile) and valid
    flags, one (BLOCK_M x D) @ (D x BLOCK_N) dot; per column, QB scores (and the arg-max of every
    row with STORE_ARG)."""
    row_blocks, col_progs = grid[0], grid[1]
    col0, n_cols = a["col0"], a["n_cols"]
    cb = a["col_blk_ptr"].long()
    per_query = a["PER_QUERY"]
    lo, hi = cb[:, col0], cb[:, col0 + n_cols]
    steps = int((hi - lo).sum()) * (1 if per_query else row_blocks)
    blk_len = a["blk_len_ptr"].long()
    # real doc rows read: each group's blocks once per program row that reads them
    rows_per_group = torch.stack([blk_len[int(x):int(y)].sum() for x, y in zip(lo, hi)])
    doc_rows = int(rows_per_group.sum())
    elt = a["q_ptr"].element_size()
    row = a["D"] * elt
    Bq, Nq = a["Bq"], a["Nq"]
    real_q = int((a["w_ptr"] != 0).sum())
    flags = doc_rows if a["HAS_VALID"] else 0
    out = Bq * n_cols * 4 + (Bq * Nq * n_cols * 4 if a["STORE_ARG"] else 0)
    tables = 16  # blk_start, blk_len, blk_col per block: 8 + 4 + 4 bytes
    blocks = int((hi - lo).sum())
    hbm = real_q * row + Bq * Nq * 4 + doc_rows * (row + (1 if flags else 0)) + blocks * tables + out
    programs = row_blocks * col_progs
    q_reads = (real_q * row + Bq * Nq * 4) * col_progs  # every program reads its query rows
    reads_per_doc = 1 if per_query else row_blocks
    tile_rows = blocks * a["BLOCK_N"] if a["USE_TMA"] else doc_rows  # TMA fetches whole tiles
    l2 = q_reads + reads_per_doc * (tile_rows * row + flags + blocks * tables) + out + programs * 8
    flops = 2.0 * steps * a["BLOCK_M"] * a["BLOCK_N"] * a["BLOCK_D"]
    return Work(flops, hbm, l2, steps=steps)


def _dq(a, grid, ctx) -> Work:
    """Program (BLOCK_R query rows, D block): per column, the rows' arg-max, their gradient and
    the gathered arg-max token rows of the D block; CUDA-core FMAs, no MMA."""
    R, n_cols, D = a["R"], a["n_cols"], a["D"]
    real = int((a["w_ptr"] != 0).sum())
    elt = a["tok_ptr"].element_size()
    hits = real * n_cols  # gathered rows (a row per real query token and column at most)
    hbm = R * n_cols * 4 + a["g_ptr"].numel() * 4 + R * 4 + hits * D * elt + R * D * a["dq_ptr"].element_size()
    l2 = grid[1] * (R * n_cols * 4 + real * n_cols * 4 + R * 4) + hits * D * elt + R * D * a["dq_ptr"].element_size()
    return Work(0.0, min(hbm, l2), l2, steps=grid[0] * grid[1] * n_cols)


def _dd(a, grid, ctx) -> Work:
    """Program (doc block, D block): per group of QB pairs (query, column) reading the doc,
    their rows' arg-max, gradient and query features, one (BLOCK_N x BLOCK_R) @ (BLOCK_R x
    BLOCK_D) dot with the one-hot tile; writes the block's real rows."""
    plo, phi = a["blk_plo_ptr"].long(), a["blk_phi_ptr"].long()
    qb = a["QB"]
    groups = int(((phi - plo + qb - 1) // qb).sum())
    n_d = grid[1]
    Nq, D = a["Nq"], a["D"]
    elt = a["q_ptr"].element_size()
    rows = int(a["blk_len_ptr"].long().sum())
    pairs = int((phi - plo).sum())
    per_pair = Nq * (4 + 4 + D * elt) + 4 + (8 if a["PAIRS"] else 0)  # w, arg, q rows; g; (query, column)
    l2 = n_d * pairs * per_pair + rows * D * a["dd_ptr"].element_size() + grid[0] * n_d * 20
    hbm = (a["arg_ptr"].numel() * 4 + a["g_ptr"].numel() * 4 + a["q_ptr"].numel() * elt
           + rows * D * a["dd_ptr"].element_size() + grid[0] * 20)
    flops = 2.0 * groups * n_d * a["BLOCK_N"] * a["BLOCK_R"] * a["BLOCK_D"]
    return Work(flops, min(hbm, l2), l2, steps=groups * n_d)


KERNELS = {
    "_maxsim_fwd_kernel": _fwd,
    "_maxsim_dq_kernel": _dq,
    "_maxsim_dd_kernel": _dd,
}


def launches(case) -> tuple[dict, list]:
    """(context, [(phase, thunk)]): the launcher calls of one op call on the case's packed docs:
    a training shape (grad) runs the forward with arg-max state and the backward; a retrieval
    shape the scores (no state), or maxsim_topk's chunks when k > 0."""
    s = case.shape
    q, tok = case.q.detach(), case.tok.detach()
    state = {}

    def fwd():
        if s.k:
            TI.maxsim_topk(q, tok, s.k, case.q_mask, None, case.off, False, 8192)
        else:
            state["out"] = TI.maxsim_fwd(q, tok, case.q_mask, None, case.off, None, False, bool(s.grad))

    def bwd():
        _, arg = state["out"]
        TI.maxsim_bwd(case.grad, q, tok, case.q_mask, None, case.off, None, arg, False)

    return {}, [("fwd", fwd)] + ([("bwd", bwd)] if s.grad else [])
