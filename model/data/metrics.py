"""Benchmark metrics: classification accuracy and retrieval recall at K in both directions."""
from __future__ import annotations

import math

import torch

RECALL_KS = (1, 5, 10)


def _ranks(sim: torch.Tensor) -> torch.Tensor:
    """Rank (0 = first) of the matching column i in each row i of sim: the number of OTHER columns
    that score at least as high. Ties count against the match (pessimistic), so a model that scores
    everything alike gets no credit: a constant (N, N) matrix ranks every match last (N - 1)."""
    diag = sim.diagonal().unsqueeze(1)
    at_least = (sim >= diag).sum(dim=1) - 1          # minus the match itself
    return at_least


def retrieval_metrics(sim: torch.Tensor) -> dict[str, float]:
    """sim: (N, N), row i = query item i (image / sound / video / code), column j = text j, and
    the pair (i, i) is the match. Returns fractions in [0, 1]: "i2t_R@K" (rows rank the texts),
    "t2i_R@K" (columns rank the items) for K in 1, 5, 10, and "mean_R", the mean of the six.
    With N <= K, R@K is 1 by definition."""
    if not isinstance(sim, torch.Tensor):
        raise ValueError(f"sim: expected a torch.Tensor, got {type(sim).__name__}")
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] == 0:
        raise ValueError(f"sim: expected a non-empty square (N, N) matrix, got shape {tuple(sim.shape)}")
    if not sim.is_floating_point():
        raise ValueError(f"sim: expected a floating-point tensor, got {sim.dtype}")
    if torch.isnan(sim).any():
        raise ValueError("sim: contains NaN")
    sim = sim.detach().float()
    out: dict[str, float] = {}
    for prefix, ranks in (("i2t", _ranks(sim)), ("t2i", _ranks(sim.t()))):
        for k in RECALL_KS:
            out[f"{prefix}_R@{k}"] = (ranks < k).float().mean().item()
    out["mean_R"] = sum(out.values()) / len(out)
    return out


def topk_recall(values: torch.Tensor, indices: torch.Tensor, n: int, prefix: str) -> dict[str, float]:
    """"{prefix}_R@K" for K in RECALL_KS from each query's best scores over all n candidates
    (skillkern.maxsim_topk's output with k = min(n, max K + 1): values sorted descending, the
    candidates' indices), where query i's match is candidate i: the gallery need not fit as an
    (N, N) matrix. The same pessimistic ranks as retrieval_metrics: the match is at rank < K only
    if fewer than K OTHER candidates score at least as high, i.e. if it is among the listed ones
    and the (K+1)-th best score is below its own. Its score is read from the same list, so it is
    the very number its rivals were compared with."""
    if values.dim() != 2 or values.shape != indices.shape or values.shape[1] != min(n, max(RECALL_KS) + 1):
        raise ValueError(f"values / indices: expected two (Q, {min(n, max(RECALL_KS) + 1)}) tensors (top "
                         f"min(n, {max(RECALL_KS) + 1}) of n = {n}), got {tuple(values.shape)} / {tuple(indices.shape)}")
    if torch.isnan(values).any():
        raise ValueError("values: contains NaN")
    values, indices = values.detach().float().cpu(), indices.detach().cpu()
    match = indices == torch.arange(values.shape[0]).unsqueeze(1)
    own = torch.where(match, values, torch.full_like(values, -math.inf)).max(dim=1).values
    found = match.any(dim=1)
    out = {}
    for k in RECALL_KS:
        hit = torch.ones_like(found) if n <= k else found & (values[:, k] < own)
        out[f"{prefix}_R@{k}"] = hit.float().mean().item()
    return out


def mean_r1(m: dict) -> float:
    """The mean of i2t and t2i R@1 in a retrieval result: the one number the eval table, the
    baselines and model.compare report per retrieval task."""
    return (m["i2t_R@1"] + m["t2i_R@1"]) / 2


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """logits: (N, C) scores, labels: (N,) int in [0, C). Fraction whose arg-max is the label."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] == 0:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits: expected a non-empty (N, C) tensor, got {shape}")
    if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:1]:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels: expected shape ({logits.shape[0]},) to match logits, got {shape}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected an integer tensor, got {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels: values must lie in [0, {logits.shape[1]})")
    return (logits.detach().argmax(dim=1) == labels.to(logits.device)).float().mean().item()
