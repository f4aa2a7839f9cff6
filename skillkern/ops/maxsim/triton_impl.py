"""Launchers of the MaxSim Triton kernels (kernels.py) and the block tables they read.

The tables are built on the host from the docs' starts and lengths, which torch_impl.Table
already holds there (the one host read of d_offsets), and the candidates (one host read, as
the torch backend makes too); then copied to the device once per call. maxsim_topk builds the
table of every doc once and scores chunk after chunk from it: no host sync per chunk.

The Triton path takes queries of at most _MAX_NQ tokens and D <= _MAX_D (a program holds whole
queries and the whole feature dimension); `fits` says so, and op.py sends the rest to the torch
backend under backend='auto' and raises a ValueError under backend='triton'.
"""
from __future__ import annotations

import torch
import triton

from skillkern.ops._common import dot_precision, expect, sm_count, tma_ok
from skillkern.ops.maxsim import kernels as K
from skillkern.ops.maxsim.torch_impl import Table, candidate_docs

_MAX_NQ = 256  # query tokens a program holds (rows of the GEMM)
_MAX_D = 256  # the feature dimension, held whole (K of the GEMM in one dot)
BLOCK_N = 64  # doc tokens per step (the GEMM's N)
_ROWS = 128  # rows (QB whole queries) per forward program, or one query padded to a power of 2
_ROWS_PER_QUERY = 64  # rows of a program that holds one query (candidates): the smallest wgmma M
_FWD_WARPS, _FWD_STAGES = 8, 3  # the forward's warps (at 128 rows) and pipeline stages
_USE_TMA = True  # doc tiles by TMA where the arch and the token table's alignment allow it
# the doc-gradient kernel (16-bit types): query rows per step (its one-hot tile's K), warps,
# D block, stages; 128 rows spill, 8 warps halve the blocks per SM (benchmarks/NOTES.md)
_DD_ROWS, _DD_WARPS, _DD_D, _DD_STAGES = 64, 4, 128, 2


def fits(Nq: int, D: int) -> str | None:
    """None if the Triton kernels take queries of Nq tokens with D features, else why not."""
    if Nq > _MAX_NQ:
        return f"has Nq={Nq} tokens per query; the Triton kernels hold whole queries of at most {_MAX_NQ}"
    if D > _MAX_D:
        return f"has D={D}; the Triton kernels hold the whole feature dimension, at most {_MAX_D}"
    return None


def _pad(n: int) -> int:
    return triton.next_power_of_2(max(n, 1))


def row_tiles(Nq: int, per_query: bool) -> tuple[int, int]:
    """(BLOCK_M, QB): QB whole queries in BLOCK_M rows (one query per program with candidates)."""
    if per_query:
        return max(_ROWS_PER_QUERY, _pad(Nq)), 1
    block_m = max(_ROWS, _pad(Nq))
    return block_m, max(1, block_m // max(Nq, 1))


def weights(q, q_mask, mean: bool) -> torch.Tensor:
    """(Bq * Nq,) fp32: 1 (sum) or 1 / real tokens (mean) for a real query token, 0 for padding."""
    Bq, Nq, _ = q.shape
    if q_mask is None:
        w = torch.full((Bq, Nq), 1.0 / Nq if mean else 1.0, dtype=torch.float32, device=q.device)
    else:
        w = q_mask.float()
        if mean:
            w = w / q_mask.sum(1, keepdim=True).clamp(min=1).float()
    return w.reshape(-1).contiguous()


def _blocks(start: torch.Tensor, length: torch.Tensor):
    """Blocks of BLOCK_N rows of the docs (start, length: CPU int64), doc after doc: (first row,
    rows, which doc (position in `start`), last block of its doc) and the blocks per doc."""
    nblk = (length + BLOCK_N - 1) // BLOCK_N
    owner = torch.repeat_interleave(torch.arange(len(length)), nblk)
    first = torch.cumsum(nblk, 0) - nblk
    within = torch.arange(len(owner)) - first[owner]
    b_start = start[owner] + within * BLOCK_N
    b_len = torch.minimum(length[owner] - within * BLOCK_N, torch.tensor(BLOCK_N))
    last = within == nblk[owner] - 1
    return b_start, b_len, owner, last, nblk


def _cumulative(counts: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])


class FwdPlan:
    """The forward's tables on the device: every doc as its own column (candidates None), or
    each query's slots (per_query)."""

    def __init__(self, table: Table, candidates, device):
        if candidates is None:
            b_start, b_len, owner, last, nblk = _blocks(table.start, table.length)
            col = torch.where(last, owner, -1)
            col_blk = _cumulative(nblk)[None, :]
            self.per_query, self.n_cols = False, table.docs
        else:
            cand = candidates.cpu()
            Bq, C = cand.shape
            slots = cand.reshape(-1)
            used = slots >= 0
            doc = slots.clamp(min=0)
            length = torch.where(used, table.length[doc] if table.docs else torch.zeros_like(doc), 0)
            start = table.start[doc] if table.docs else torch.zeros_like(doc)
            b_start, b_len, owner, last, nblk = _blocks(start, length)
            col = torch.where(last, owner % max(C, 1), -1)
            cum = _cumulative(nblk)
            col_blk = cum[torch.arange(Bq)[:, None] * C + torch.arange(C + 1)[None, :]]
            self.per_query, self.n_cols = True, C
        to = dict(device=device)
        self.blk_start = b_start.to(**to, dtype=torch.int64)
        self.blk_len = b_len.to(**to, dtype=torch.int32)
        self.blk_col = col.to(**to, dtype=torch.int32)
        self.col_blk = col_blk.to(**to, dtype=torch.int32).contiguous()
        self.blocks = len(b_start)


def _docs_per_program(n_cols: int, row_blocks: int, device) -> int:
    """Columns per forward program: at least ~16 programs per SM (8 waves at 2 resident; the
    docs' lengths differ, so many short programs even out), at most 64 columns each."""
    waves = 16 * sm_count(device)
    return int(max(1, min(64, (n_cols * row_blocks) // waves)))


def launch_fwd(q, w, table: Table, plan: FwdPlan, out, arg, col0: int = 0, n_cols: int | None = None):
    """out[:, c - col0] (and arg[:, c - col0] unless arg is None) for columns c in [col0,
    col0 + n_cols) of the plan."""
    Bq, Nq, D = q.shape
    n_cols = plan.n_cols if n_cols is None else n_cols
    if Bq == 0 or Nq == 0 or n_cols == 0 or plan.blocks == 0:
        return
    block_m, qb = row_tiles(Nq, plan.per_query)
    row_blocks = Bq if plan.per_query else triton.cdiv(Bq, qb)
    docs = _docs_per_program(n_cols, row_blocks, q.device)
    valid = table.valid
    has_valid = valid is not None
    valid = valid.contiguous().view(torch.uint8) if has_valid else plan.blk_len
    tok = table.tok
    prec = dot_precision(q.dtype)
    # TMA for the tensor-core dots; exact fp32 ("ieee": FMA dots) spills with TMA's tile layout
    use_tma = _USE_TMA and prec != "ieee" and tma_ok(tok)
    K._maxsim_fwd_kernel[(row_blocks, triton.cdiv(n_cols, docs))](
        q, w, tok, valid, plan.blk_start, plan.blk_len, plan.blk_col, plan.col_blk, out,
        arg if arg is not None else out,
        Bq, Nq, D, col0, n_cols, qb, tok.shape[0],
        q.stride(0), q.stride(1), tok.stride(0), plan.col_blk.stride(0), out.stride(0),
        PER_QUERY=plan.per_query, HAS_VALID=has_valid, STORE_ARG=arg is not None, USE_TMA=use_tma,
        PRECISION=prec, BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_D=max(16, _pad(D)),
        QB_PAD=_pad(qb), DOCS=docs, num_warps=_FWD_WARPS if block_m >= 128 else 4, num_stages=_FWD_STAGES)


def _inputs(q, d, d_mask, d_offsets):
    q = q.contiguous()
    d = d.contiguous()
    table = Table(d, d_mask, d_offsets)
    if table.tok.shape[0] and table.tok.stride(-1) != 1:
        table.tok = table.tok.contiguous()
    return q, d, table


def maxsim_fwd(q, d, q_mask, d_mask, d_offsets, candidates, mean: bool, with_arg: bool):
    """(scores (Bq, cols) fp32, arg (Bq * Nq, cols) int32 or None)."""
    expect(fits(q.shape[1], q.shape[2]) is None, "maxsim", "q", f"{fits(q.shape[1], q.shape[2])}; use backend='torch'")
    q, d, table = _inputs(q, d, d_mask, d_offsets)
    if candidates is not None:
        candidate_docs(candidates, table.docs)  # the value check
    expect(not with_arg or table.tok.shape[0] < 2**31, "maxsim", "d",
           f"has {table.tok.shape[0]} token rows; the Triton backward keeps int32 token indices (< 2^31)")
    Bq, Nq, _ = q.shape
    plan = FwdPlan(table, candidates, q.device)
    out = torch.zeros(Bq, plan.n_cols, dtype=torch.float32, device=q.device)
    arg = torch.full((Bq * Nq, plan.n_cols), -1, dtype=torch.int32, device=q.device) if with_arg else None
    launch_fwd(q, weights(q, q_mask, mean), table, plan, out, arg)
    return out, arg


def maxsim_topk(q, d, k: int, q_mask, d_mask, d_offsets, mean: bool, chunk: int):
    """The running top-k of maxsim_fwd's scores over chunks of `chunk` docs, merged on the device
    as torch_impl.maxsim_topk does (ties to the lower doc index)."""
    expect(fits(q.shape[1], q.shape[2]) is None, "maxsim_topk", "q",
           f"{fits(q.shape[1], q.shape[2])}; use backend='torch'")
    q, d, table = _inputs(q, d, d_mask, d_offsets)
    Bq = q.shape[0]
    plan = FwdPlan(table, None, q.device)
    w = weights(q, q_mask, mean)
    vals = torch.empty(Bq, 0, dtype=torch.float32, device=q.device)
    idx = torch.empty(Bq, 0, dtype=torch.int64, device=q.device)
    for a in range(0, table.docs, chunk):
        b = min(a + chunk, table.docs)
        s = torch.zeros(Bq, b - a, dtype=torch.float32, device=q.device)
        launch_fwd(q, w, table, plan, s, None, col0=a, n_cols=b - a)
        vals = torch.cat([vals, s], 1)
        idx = torch.cat([idx, torch.arange(a, b, device=q.device)[None, :].expand(Bq, -1)], 1)
        order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
        vals, idx = vals.gather(1, order), idx.gather(1, order)
    return vals, idx


class BwdPlan:
    """The doc-gradient tables: the blocks of every doc named (all docs, or the candidates'
    distinct docs), each with its range of (query, column) pairs."""

    def __init__(self, table: Table, candidates, Bq: int, device):
        if candidates is None:
            docs = torch.arange(table.docs)
            plo = torch.zeros(table.docs, dtype=torch.int64)
            phi = torch.full((table.docs,), Bq, dtype=torch.int64)
            pair_q = pair_c = None
        else:
            cand = candidates.cpu()
            C = cand.shape[1]
            slots = cand.reshape(-1)
            named = torch.nonzero(slots >= 0).reshape(-1)
            order = torch.sort(slots[named], stable=True).indices  # by doc, then query, then slot
            pairs = named[order]
            pair_q, pair_c = pairs // C, pairs % C
            docs, counts = torch.unique_consecutive(slots[pairs], return_counts=True)
            cum = _cumulative(counts)
            plo, phi = cum[:-1], cum[1:]
        b_start, b_len, owner, _, _ = _blocks(table.start[docs], table.length[docs])
        to = dict(device=device)
        self.blk_start = b_start.to(**to, dtype=torch.int64)
        self.blk_len = b_len.to(**to, dtype=torch.int32)
        self.blk_col = docs[owner].to(**to, dtype=torch.int32)
        self.blk_plo = plo[owner].to(**to, dtype=torch.int32)
        self.blk_phi = phi[owner].to(**to, dtype=torch.int32)
        self.pairs = pair_q is not None
        self.pair_q = pair_q.to(**to, dtype=torch.int32) if self.pairs else self.blk_len
        self.pair_c = pair_c.to(**to, dtype=torch.int32) if self.pairs else self.blk_len
        self.blocks = len(b_start)


def bwd_tiles(Nq: int) -> dict:
    """dd: a doc block x QB whole queries at a time (the one-hot tile's K: 64 rows or one query
    padded to a power of two). dq runs 32 query rows x a 64-wide D block per program: its loads
    are gathers, so many small programs keep more of them in flight."""
    block_r = max(_DD_ROWS, _pad(Nq))
    return dict(BLOCK_R=block_r, QB=max(1, block_r // max(Nq, 1)))


def maxsim_bwd(g, q, d, q_mask, d_mask, d_offsets, candidates, arg, mean: bool):
    """(dq, dd) in the input dtype from the forward's arg-max state; dd has d's shape."""
    q, d, table = _inputs(q, d, d_mask, d_offsets)
    Bq, Nq, D = q.shape
    g = g.float().contiguous()
    dq = torch.zeros_like(q)
    dd = torch.zeros_like(d)
    n_cols = arg.shape[1]
    if Bq * Nq * D == 0 or n_cols == 0 or table.tok.shape[0] == 0:
        return dq, dd
    arg = arg.contiguous()
    w = weights(q, q_mask, mean)
    dq2 = dq.view(Bq * Nq, D)
    dq_d = min(64, max(16, _pad(D)))
    K._maxsim_dq_kernel[(triton.cdiv(Bq * Nq, 32), triton.cdiv(D, dq_d))](
        g, w, arg, table.tok, dq2, Bq * Nq, Nq, D, n_cols, g.stride(0), table.tok.stride(0), dq2.stride(0),
        BLOCK_R=32, BLOCK_D=dq_d, num_warps=4, num_stages=2)
    plan = BwdPlan(table, candidates, Bq, q.device)
    if plan.blocks:
        t = bwd_tiles(Nq)
        # fp32 operands (FMA dots): a 64-wide D block over 8 warps, no spills
        block_d = min(64 if q.element_size() == 4 else _DD_D, max(16, _pad(D)))
        dd2 = dd.view(-1, D)
        K._maxsim_dd_kernel[(plan.blocks, triton.cdiv(D, block_d))](
            g, w, arg, q, dd2, plan.blk_start, plan.blk_len, plan.blk_col, plan.blk_plo, plan.blk_phi,
            plan.pair_q, plan.pair_c, Bq, Nq, D, n_cols, t["QB"],
            q.stride(0), q.stride(1), g.stride(0), dd2.stride(0),
            PAIRS=plan.pairs, PRECISION=dot_precision(q.dtype), BLOCK_N=BLOCK_N, BLOCK_R=t["BLOCK_R"],
            BLOCK_D=block_d, num_warps=8 if q.element_size() == 4 else _DD_WARPS, num_stages=_DD_STAGES)
    return dq, dd
