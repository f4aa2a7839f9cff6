"""Reference (pure PyTorch) skill-routed FFN and routing; the math every backend must match.

    y[t] = sum_j c[t, j] * ( act(x[t] @ w1[s] + b1[s]) @ w2[s] + b2[s] ),   s = skill_ids[t, j]

over the active slots j (ids in [0, E)); c = skill_weights, or 1 / (number of active slots).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "swiglu")


def activation_ref(z: torch.Tensor, activation: str) -> torch.Tensor:
    """act(z); for "swiglu" z is (..., 2h) = [gate | up] and the result is (..., h)."""
    if activation == "gelu":
        return F.gelu(z)
    if activation == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if activation == "relu":
        return F.relu(z)
    if activation == "silu":
        return F.silu(z)
    if activation == "swiglu":
        gate, up = z.chunk(2, dim=-1)
        return F.silu(gate) * up
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def route_ref(skill_ids: torch.Tensor, num_skills: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable counting sort of token slots by skill.

    skill_ids: (N,) integer, flattened (T, k) slots. Ids outside [0, num_skills) (-1 = empty)
    form a last bucket. Returns
      order:   (N,) int32, order[p] = slot index at sorted position p (stable within a skill);
      offsets: (num_skills + 1,) int32, skill e owns positions [offsets[e], offsets[e+1]);
               offsets[E] = number of active slots, inactive slots fill [offsets[E], N).
    """
    ids = skill_ids.reshape(-1).long()
    bucket = torch.where((ids >= 0) & (ids < num_skills), ids, num_skills)
    order = torch.sort(bucket, stable=True).indices.to(torch.int32)
    counts = torch.bincount(bucket, minlength=num_skills + 1)[:num_skills]
    offsets = torch.zeros(num_skills + 1, dtype=torch.int32, device=ids.device)
    offsets[1:] = torch.cumsum(counts, 0).to(torch.int32)
    return order, offsets


def slot_scale(skill_ids: torch.Tensor, num_skills: int, skill_weights: torch.Tensor | None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """c[t, j]: skill_weights on active slots (0 elsewhere), or 1 / (active slots of t).

    skill_ids: (T, k). Returns (T, k) in `dtype` (float32 for the kernels); differentiable
    w.r.t. skill_weights.
    """
    active = (skill_ids >= 0) & (skill_ids < num_skills)
    if skill_weights is None:
        n = active.sum(-1, keepdim=True).clamp(min=1)
        return active.to(dtype) / n
    return torch.where(active, skill_weights.to(dtype), 0.0)


def skill_ffn_ref(x, skill_ids, scale, w1, w2, b1=None, b2=None, activation="gelu"):
    """Per-skill loop: gather the slots of each skill, run its FFN, weighted index_add.

    x: (T, d); skill_ids: (T, k) with -1 holes; scale: (T, k) float32 = slot_scale(...);
    w1: (E, d, h) or (E, d, 2h) for swiglu; w2: (E, h, d); b1: (E, h|2h); b2: (E, d).
    Computes in x.dtype (matmuls accumulate in fp32 as torch does), combines in fp32,
    returns x.dtype. Differentiable by torch autograd; an unused skill gets zero grads.
    """
    T, d = x.shape
    k = skill_ids.shape[1]
    E = w1.shape[0]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = x.new_zeros((T, d), dtype=acc)
    ids = skill_ids.reshape(-1)
    for e in range(E):
        slots = torch.nonzero(ids == e).squeeze(1)
        tok = torch.div(slots, k, rounding_mode="floor")
        xe = x.index_select(0, tok)
        # addmm folds the bias into the GEMM epilogue (this loop doubles as the benchmark baseline)
        z = torch.addmm(b1[e], xe, w1[e]) if b1 is not None else xe @ w1[e]
        a = activation_ref(z, activation)
        o = torch.addmm(b2[e], a, w2[e]) if b2 is not None else a @ w2[e]
        c = scale.reshape(-1).index_select(0, slots).unsqueeze(1)
        y = y.index_add(0, tok, o.to(acc) * c.to(acc))
    return y.to(x.dtype)
