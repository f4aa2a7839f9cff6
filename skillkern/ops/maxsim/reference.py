"""Reference (pure PyTorch) MaxSim: the math every backend must match.

    scores[i, j] = reduce over the real tokens k of query i of
                   max over the real tokens l of doc j of <q[i, k], d[j, l]>

reduce = "sum" (ColBERT) or "mean" (FILIP's i2t). A pair where either side has no real token
scores 0 (and gets no gradient). Docs come padded, (Bd, Nd, D) with a bool d_mask, or packed,
(total_tokens, D) with d_offsets (Bd + 1,) cumulative starts. candidates (Bq, C) int64 doc
indices (-1 = empty slot, score 0) restrict the result to (Bq, C). Padding tokens are replaced
by 0 before any product, so NaN or inf there reaches no output. Materialises every similarity:
for tests only (float64 in, float64 out).
"""
from __future__ import annotations

import torch


def padded_docs(d, d_mask=None, d_offsets=None):
    """(docs (Bd, Nd, D), mask (Bd, Nd)) from either form: packed rows are copied into a padded
    tensor (Nd = the longest doc)."""
    if d_offsets is None:
        mask = d_mask if d_mask is not None else torch.ones(d.shape[:2], dtype=torch.bool, device=d.device)
        return d, mask
    off = d_offsets.long().cpu()
    lengths = off[1:] - off[:-1]
    Bd, Nd = len(lengths), int(lengths.max()) if len(lengths) else 0
    docs = d.new_zeros(Bd, Nd, d.shape[1])
    mask = torch.zeros(Bd, Nd, dtype=torch.bool, device=d.device)
    for j in range(Bd):
        n = int(lengths[j])
        docs[j, :n] = d[int(off[j]):int(off[j]) + n]
        mask[j, :n] = True
    return docs, mask


def maxsim_ref(q, d, q_mask=None, d_mask=None, d_offsets=None, candidates=None, reduce="sum"):
    """Scores (Bq, Bd), or (Bq, C) with candidates, in float64 for float64 inputs (float32
    otherwise)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    docs, dm = padded_docs(d, d_mask, d_offsets)
    qm = q_mask if q_mask is not None else torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)
    q = q.masked_fill(~qm[:, :, None], 0)
    docs = docs.masked_fill(~dm[:, :, None], 0)
    sim = torch.einsum("ikc,jlc->ijkl", q, docs).to(acc)  # (Bq, Bd, Nq, Nd)
    Bq, Bd = q.shape[0], docs.shape[0]
    if sim.shape[2] == 0 or sim.shape[3] == 0:
        scores = sim.sum((2, 3))
    else:
        best = sim.masked_fill(~dm[None, :, None, :], torch.finfo(acc).min).max(dim=3).values  # (Bq, Bd, Nq)
        valid = qm[:, None, :] & dm.any(1)[None, :, None]
        best = torch.where(valid, best, 0.0)
        scores = best.sum(2)
        if reduce == "mean":
            scores = scores / qm.sum(1).clamp(min=1).to(acc)[:, None]
    if candidates is None:
        return scores
    cand = candidates.long()
    picked = scores.gather(1, cand.clamp(min=0)) if Bd else scores.new_zeros(cand.shape)
    return torch.where(cand >= 0, picked, 0.0)


def maxsim_topk_ref(q, d, k, q_mask=None, d_mask=None, d_offsets=None, reduce="sum"):
    """(values, indices) of the k best docs per query: descending score, ties to the lower doc
    index (a stable sort of the negated scores)."""
    scores = maxsim_ref(q, d, q_mask, d_mask, d_offsets, reduce=reduce)
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
    return scores.gather(1, order), order
