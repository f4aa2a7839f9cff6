"""Reference (pure PyTorch) skill-routed FFN and routing; the math every backend must match.

    y[t] = sum_j c[t, j] * ( act(x[t] @ w1[s] + b1[s]) @ w2[s] + b2[s] ),   s = skill_ids[t, j]

over the active slots j (ids in [0, E)); c = skill_weights, or 1 / (number of active slots).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "swiglu")
# the integer dtypes skill_ids may have (torch's uint16/32/64 lack comparison kernels on CPU)
ID_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def wide_ids(skill_ids: torch.Tensor) -> torch.Tensor:
    """skill_ids as int32 or int64, so that comparisons with -1 and E mean what they say: torch
    casts a Python int to the tensor's dtype (in uint8, `ids < -1` is `ids < 255`, and in int8
    `ids >= 200` is `ids >= -56`). int32 and int64 ids are returned as they are (no copy)."""
    return skill_ids if skill_ids.dtype in (torch.int32, torch.int64) else skill_ids.to(torch.int32)


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
    sorted_bucket, order = torch.sort(bucket, stable=True)
    # offsets[e] = slots in buckets < e: static shapes (unlike bincount), so this also runs on
    # meta tensors and under torch.compile(fullgraph=True)
    offsets = torch.searchsorted(sorted_bucket, torch.arange(num_skills + 1, device=ids.device))
    return order.to(torch.int32), offsets.to(torch.int32)


def slot_scale(skill_ids: torch.Tensor, num_skills: int, skill_weights: torch.Tensor | None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """c[t, j]: skill_weights on active slots (0 elsewhere), or 1 / (active slots of t).

    skill_ids: (T, k). Returns (T, k) in `dtype` (float32 for the kernels); differentiable
    w.r.t. skill_weights; an inactive slot gets exactly 0 (and a zero gradient) whatever its
    weight, NaN and inf included (torch.where selects, it does not multiply).
    """
    ids = wide_ids(skill_ids)
    active = (ids >= 0) & (ids < num_skills)
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
    Only the rows of active slots are read: x rows of tokens without one never reach y.
    """
    T, d = x.shape
    k = skill_ids.shape[1]
    E = w1.shape[0]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = x.new_zeros((T, d), dtype=acc)
    ids = wide_ids(skill_ids).reshape(-1)
    for e in range(E):
        slots = torch.nonzero(ids == e).squeeze(1)
        tok = torch.div(slots, k, rounding_mode="floor")
        xe = x.index_select(0, tok)
        # addmm folds the bias into the GEMM epilogue
        z = torch.addmm(b1[e], xe, w1[e]) if b1 is not None else xe @ w1[e]
        a = activation_ref(z, activation)
        o = torch.addmm(b2[e], a, w2[e]) if b2 is not None else a @ w2[e]
        c = scale.reshape(-1).index_select(0, slots).unsqueeze(1)
        y = y.index_add(0, tok, o.to(acc) * c.to(acc))
    return y.to(x.dtype)


def activation_grad_ref(da: torch.Tensor, z: torch.Tensor, activation: str) -> torch.Tensor:
    """d act(z) / dz applied to the upstream gradient da (torch's own backward kernels, the
    ones autograd would call); for "swiglu" da is (..., h) and the result (..., 2h)."""
    aten = torch.ops.aten
    if activation == "gelu":
        return aten.gelu_backward(da, z)
    if activation == "gelu_tanh":
        return aten.gelu_backward(da, z, approximate="tanh")
    if activation == "relu":
        return aten.threshold_backward(da, z, 0)
    if activation == "silu":
        return aten.silu_backward(da, z)
    if activation == "swiglu":
        gate, up = z.chunk(2, dim=-1)
        return torch.cat([aten.silu_backward(da * up, gate), da * F.silu(gate)], dim=-1)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def skill_ffn_bwd_ref(dy, x, scale, w1, w2, b1, b2, order, offsets, activation, need_dscale):
    """The backward of skill_ffn_ref from the routing its forward kept (order, offsets of
    route_ref), as torch autograd would form it: per skill, GEMM1 and the activation are
    recomputed (like the Triton backward, the forward keeps no hidden state), then the chain
    rule runs backwards through GEMM2, the activation and GEMM1.

    dy: (T, d) in x.dtype. Returns dx (T, d), dw1, dw2, db1, db2 (None without that bias) and
    dscale (T, k) in scale's dtype (None unless need_dscale). An inactive slot gets dscale 0,
    an unused skill exactly-zero weight grads, a token without active slot dx 0; rows of x and
    dy that no active slot reads (NaN padding included) never enter a gradient.
    """
    T, d = x.shape
    k = scale.shape[1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    dx = x.new_zeros((T, d), dtype=acc)
    dw1, dw2 = torch.zeros_like(w1), torch.zeros_like(w2)
    db1 = torch.zeros_like(b1) if b1 is not None else None
    db2 = torch.zeros_like(b2) if b2 is not None else None
    dscale = scale.new_zeros(T * k)
    order = order.long()
    bounds = offsets.tolist()  # one host read for all skills (E + 1 ints)
    for e in range(w1.shape[0]):
        slots = order[bounds[e]:bounds[e + 1]]
        if slots.numel() == 0:
            continue
        tok = torch.div(slots, k, rounding_mode="floor")
        xe = x.index_select(0, tok)
        z = torch.addmm(b1[e], xe, w1[e]) if b1 is not None else xe @ w1[e]
        a = activation_ref(z, activation)
        g = dy.index_select(0, tok).to(acc)
        c = scale.reshape(-1).index_select(0, slots).unsqueeze(1).to(acc)
        # y = sum c * o.to(acc), cast to x.dtype: the gradient reaching o is (c * dy) in o's dtype
        do = (g * c).to(x.dtype)
        dw2[e] = a.t() @ do
        dz = activation_grad_ref(do @ w2[e].t(), z, activation)
        dw1[e] = xe.t() @ dz
        if b1 is not None:
            db1[e] = dz.sum(0)
        if b2 is not None:
            db2[e] = do.sum(0)
        dx.index_add_(0, tok, (dz @ w1[e].t()).to(acc))
        if need_dscale:
            o = torch.addmm(b2[e], a, w2[e]) if b2 is not None else a @ w2[e]
            dscale[slots] = (o.to(acc) * g).sum(1).to(dscale.dtype)
    return dx.to(x.dtype), dw1, dw2, db1, db2, dscale.view(T, k) if need_dscale else None
