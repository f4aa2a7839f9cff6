"""MaxSim in PyTorch, streamed over the docs so that memory stays bounded (the torch backend).

The docs become one token table, tok (T, D), with each doc's first row and length (padded docs:
rows j * Nd .. with d_mask; packed docs: d_offsets). A chunk of c docs is read as c x Lmax
columns (Lmax: its longest doc), multiplied by all query tokens at once in fp32, and reduced:
max over a doc's real tokens, then the query's real tokens. At most _BUDGET similarities exist
at a time (256 MB).

The backward recomputes each chunk's arg-max tokens (nothing but the inputs is saved) and turns
them into a one-hot coefficient matrix P (query tokens x the chunk's token columns, the
gradient of each pair's score at its arg-max): dq += P @ tokens, d tokens = P^T @ q. Each query
token has one arg-max per doc, and docs own disjoint columns, so P is written without
collisions and every gradient is a product of matrices: deterministic, no atomics.

Host syncs: one to read d_offsets (packed docs) and one for the candidates' distinct docs; none
per chunk (maxsim_topk merges each chunk into its running top-k on the device).
"""
from __future__ import annotations

import torch

from skillkern.ops._common import expect

_BUDGET = 1 << 26  # similarities per chunk (fp32: 256 MB)
_WHERE = "maxsim"


class Table:
    """The docs as token rows: tok (T, D), start / length (Bd,) int64 on the CPU (for the chunk
    plan), valid (T,) bool on the device or None (every row real)."""

    def __init__(self, d, d_mask, d_offsets):
        if d_offsets is None:
            Bd, Nd, D = d.shape
            self.tok = d.reshape(Bd * Nd, D)
            self.start = torch.arange(Bd, dtype=torch.int64) * Nd
            self.length = torch.full((Bd,), Nd, dtype=torch.int64)
            self.valid = d_mask.reshape(-1) if d_mask is not None else None
        else:
            off = d_offsets.detach().to("cpu", torch.int64)  # the one host read of the offsets
            total = d.shape[0]
            expect(len(off) >= 1 and int(off[0]) == 0, _WHERE, "d_offsets", f"must start at 0, got {off[:1].tolist()}")
            expect(bool((off[1:] >= off[:-1]).all()), _WHERE, "d_offsets", "must be non-decreasing (cumulative starts)")
            expect(int(off[-1]) == total, _WHERE, "d_offsets",
                   f"must end at total_tokens = d.shape[0] = {total}, got {int(off[-1])}")
            self.tok = d
            self.start, self.length = off[:-1], off[1:] - off[:-1]
            self.valid = None

    @property
    def docs(self) -> int:
        return len(self.length)


def plan(length: torch.Tensor, rows: int, budget: int | None = None) -> list[tuple[int, int, int]]:
    """Consecutive doc ranges (a, b, Lmax) of `length` (CPU int64) with rows x (b - a) x Lmax <=
    budget (default _BUDGET; at least one doc per range; Lmax >= 1)."""
    out, n, a = [], len(length), 0
    lens = length.tolist()
    per_doc = max(1, (_BUDGET if budget is None else budget) // max(1, rows))
    while a < n:
        L, b = max(1, lens[a]), a + 1
        while b < n and (b + 1 - a) * max(L, lens[b]) <= per_doc:
            L, b = max(L, lens[b]), b + 1
        out.append((a, b, L))
        a = b
    return out


def _chunk(qf, table: Table, docs: torch.Tensor, L: int):
    """Similarities of every query token with the c docs `docs` (CPU int64), reduced over each
    doc's tokens: (best (R, c), arg (R, c) column within the doc, idx (c, L) token rows,
    col_ok (c, L), nonempty (c,))."""
    dev = qf.device
    st, ln = table.start[docs].to(dev), table.length[docs].to(dev)
    cols = torch.arange(L, device=dev)
    col_ok = cols[None, :] < ln[:, None]
    idx = (st[:, None] + cols[None, :]).clamp(max=max(0, table.tok.shape[0] - 1))
    if table.valid is not None:
        col_ok &= table.valid[idx]
    tc = table.tok[idx.reshape(-1)].float().masked_fill(~col_ok.reshape(-1, 1), 0.0)  # padding never multiplies
    sim = (qf @ tc.t()).view(qf.shape[0], len(docs), L).masked_fill(~col_ok[None], float("-inf"))
    best, arg = sim.max(dim=2)
    return best, arg, idx, col_ok, col_ok.any(1), tc


def _query(q, q_mask, mean: bool):
    """(qf (Bq * Nq, D) fp32 with padding zeroed, row weight (Bq * Nq,): 1 / 1/n_real (mean) for a
    real token, 0 for padding)."""
    Bq, Nq, D = q.shape
    qm = q_mask if q_mask is not None else torch.ones(Bq, Nq, dtype=torch.bool, device=q.device)
    qf = q.masked_fill(~qm[:, :, None], 0).float().reshape(Bq * Nq, D)
    w = qm.float()
    if mean:
        w = w / qm.sum(1, keepdim=True).clamp(min=1).float()
    return qf, w.reshape(-1)


def doc_scores(qf, w, Bq: int, table: Table, docs: torch.Tensor) -> torch.Tensor:
    """(Bq, len(docs)) float32 scores of the queries _query prepared (qf, w) against the docs
    `docs` (CPU int64 doc indices)."""
    Nq = qf.shape[0] // max(1, Bq)
    out = torch.zeros(Bq, len(docs), dtype=torch.float32, device=qf.device)
    if Bq == 0 or Nq == 0 or len(docs) == 0 or table.tok.shape[0] == 0:
        return out
    for a, b, L in plan(table.length[docs], Bq * Nq):
        best, _, _, _, nonempty, _ = _chunk(qf, table, docs[a:b], L)
        best = torch.where(nonempty[None, :], best, 0.0) * w[:, None]  # -inf of an empty doc never multiplies
        out[:, a:b] = best.view(Bq, Nq, b - a).sum(1)
    return out


def doc_grads(g, q, d, table: Table, docs: torch.Tensor, q_mask, mean: bool):
    """(dq, dd) for the gradient g (Bq, len(docs)) of the scores against `docs` (doc_scores),
    where `docs` holds distinct docs (so every token row belongs to one column)."""
    Bq, Nq, D = q.shape
    dq = torch.zeros(Bq * Nq, D, dtype=torch.float32, device=q.device)
    dtok = torch.zeros(table.tok.shape, dtype=torch.float32, device=q.device)
    if Bq and Nq and len(docs) and table.tok.shape[0]:
        qf, w = _query(q, q_mask, mean)
        g = g.float()
        for a, b, L in plan(table.length[docs], Bq * Nq):
            c = b - a
            _, arg, idx, col_ok, nonempty, tc = _chunk(qf, table, docs[a:b], L)
            coef = (g[:, a:b] * nonempty[None, :]).repeat_interleave(Nq, dim=0) * w[:, None]  # (R, c)
            P = torch.zeros(Bq * Nq, c * L, dtype=torch.float32, device=q.device)
            P.scatter_(1, arg + torch.arange(c, device=q.device)[None, :] * L, coef)
            dq += P @ tc
            keep = col_ok.reshape(-1)
            dtok.index_copy_(0, idx.reshape(-1)[keep], (P.t() @ qf)[keep])
    return dq.view(Bq, Nq, D).to(q.dtype), dtok.view(d.shape).to(d.dtype)


def candidate_docs(candidates: torch.Tensor, Bd: int):
    """(the distinct docs named (CPU int64, ascending), each slot's position among them (Bq, C),
    the slots that name a doc (Bq, C) bool); candidates outside [-1, Bd) are a ValueError."""
    lo, hi = (int(candidates.min()), int(candidates.max())) if candidates.numel() else (-1, -1)
    expect(lo >= -1 and hi < Bd, _WHERE, "candidates", f"must hold doc indices in [0, {Bd}) or -1 (an empty slot), "
           f"got values in [{lo}, {hi}]")
    used = candidates >= 0
    docs = torch.unique(candidates[used]).cpu()  # sorted
    pos = torch.searchsorted(docs.to(candidates.device), candidates.clamp(min=0)).clamp(max=max(0, len(docs) - 1))
    return docs, pos, used


def maxsim_fwd(q, d, q_mask, d_mask, d_offsets, candidates, mean: bool) -> torch.Tensor:
    table = Table(d, d_mask, d_offsets)
    qf, w = _query(q, q_mask, mean)
    if candidates is None:
        return doc_scores(qf, w, q.shape[0], table, torch.arange(table.docs))
    docs, pos, used = candidate_docs(candidates, table.docs)
    scores = doc_scores(qf, w, q.shape[0], table, docs)
    if scores.shape[1] == 0:
        return torch.zeros(candidates.shape, dtype=torch.float32, device=q.device)
    return torch.where(used, scores.gather(1, pos), 0.0)


def maxsim_bwd(g, q, d, q_mask, d_mask, d_offsets, candidates, mean: bool):
    table = Table(d, d_mask, d_offsets)
    if candidates is None:
        return doc_grads(g, q, d, table, torch.arange(table.docs), q_mask, mean)
    docs, pos, used = candidate_docs(candidates, table.docs)
    # slots naming the same doc add up; one column at a time, so no two adds meet (deterministic)
    G = torch.zeros(q.shape[0], len(docs), dtype=torch.float32, device=q.device)
    gu = torch.where(used, g.float(), 0.0)
    if len(docs):
        for c in range(candidates.shape[1]):
            G.scatter_add_(1, pos[:, c:c + 1], gu[:, c:c + 1])
    return doc_grads(G, q, d, table, docs, q_mask, mean)


def maxsim_topk(q, d, k: int, q_mask, d_mask, d_offsets, mean: bool, chunk: int):
    """The k best docs per query, `chunk` docs scored at a time and merged into the running
    top-k on the device: values (Bq, k) float32 descending, indices (Bq, k) int64, ties to the
    lower doc index (a stable sort over [running best, the chunk's docs in index order])."""
    table = Table(d, d_mask, d_offsets)
    Bq = q.shape[0]
    qf, w = _query(q, q_mask, mean)  # once for every chunk
    vals = torch.empty(Bq, 0, dtype=torch.float32, device=q.device)
    idx = torch.empty(Bq, 0, dtype=torch.int64, device=q.device)
    for a in range(0, table.docs, chunk):
        docs = torch.arange(a, min(a + chunk, table.docs))
        s = doc_scores(qf, w, Bq, table, docs)
        vals = torch.cat([vals, s], 1)
        idx = torch.cat([idx, docs.to(q.device)[None, :].expand(Bq, -1)], 1)
        order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
        vals, idx = vals.gather(1, order), idx.gather(1, order)
    return vals, idx
