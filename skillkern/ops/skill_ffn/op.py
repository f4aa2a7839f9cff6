"""skillkern.skill_ffn / skill_route: argument checks, backend choice, registered ops.

Ops in the skillkern:: namespace (torch.library.custom_op + register_fake + register_autograd,
so torch.compile(fullgraph=True) sees one opaque node per phase and opcheck passes):
  skillkern::skill_ffn_fwd(x, skill_ids, scale, w1, w2, b1?, b2?, activation) -> (y, order, offsets)
  skillkern::skill_ffn_bwd(dy, x, scale, w1, w2, b1?, b2?, order, offsets, activation, need_dscale)
  skillkern::skill_route_triton(skill_ids, num_skills) -> (order, offsets)
  skillkern::skill_ids_checked(skill_ids, num_skills) -> copy of skill_ids (the id range check
      of the cuda backend, as an opaque op)
The compiled extension (csrc/skill_ffn/) registers skillkern::skill_route and the native
backend skillkern::skill_ffn_fwd_cuda / _bwd_cuda (same arguments and outputs as the Triton
ops; their Meta kernels are C++). Their autograd is registered here once the library loads and
shares setup_context and the backward formula with the Triton op.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from skillkern import _backend, _config
from skillkern.ops._common import FLOAT_DTYPES, expect
from skillkern.ops.skill_ffn.reference import ACTIVATIONS, route_ref, skill_ffn_ref, slot_scale



# ----------------------------------------------------------------------------- checks


def _expect(cond: bool, name: str, msg: str) -> None:
    expect(cond, "skill_ffn", name, msg)


def _expect_like(t, name: str, x: Tensor, shape: tuple) -> None:
    _expect(isinstance(t, Tensor), name, f"must be a Tensor, got {type(t).__name__}")
    _expect(t.device == x.device, name, f"is on {t.device} but x is on {x.device}")
    _expect(t.dtype == x.dtype, name, f"has dtype {t.dtype} but x has {x.dtype} (cast the "
                                       "weights, e.g. under torch.autocast, before the call)")
    _expect(tuple(t.shape) == shape, name, f"must have shape {shape}, got {tuple(t.shape)}")


def check_ids_in_range(skill_ids: Tensor, num_skills: int) -> None:
    """Raise if an id is outside [-1, num_skills). Reads one bool back (a host sync on a GPU);
    skipped when skillkern.set_check_ids(False) (then such ids count as empty slots)."""
    if not _config.check_ids_enabled() or skill_ids.numel() == 0:
        return
    bad = (skill_ids < -1) | (skill_ids >= num_skills)
    if bool(bad.any()):
        vals = skill_ids[bad]
        raise ValueError(
            f"skillkern: `skill_ids` must lie in [0, {num_skills}) or be -1 (empty slot); found "
            f"{int(bad.sum())} out of range (min {int(vals.min())}, max {int(vals.max())}). "
            "skillkern.set_check_ids(False) skips this check (and its host sync).")


def _validate(x, skill_ids, w1, w2, b1, b2, skill_weights, activation):
    """Check every argument; returns (T, k, E, d, h). Metadata only, no device reads."""
    _expect(isinstance(x, Tensor), "x", f"must be a Tensor, got {type(x).__name__}")
    _expect(x.dtype in FLOAT_DTYPES, "x", f"must be float32, float16 or bfloat16, got {x.dtype}")
    _expect(x.dim() >= 1, "x", "must have shape (..., d)")
    _expect(activation in ACTIVATIONS, "activation", f"must be one of {ACTIVATIONS}, got {activation!r}")
    _expect(isinstance(skill_ids, Tensor), "skill_ids", "must be a Tensor")
    _expect(not skill_ids.dtype.is_floating_point and not skill_ids.dtype.is_complex
            and skill_ids.dtype != torch.bool, "skill_ids",
            f"must be an integer tensor, got {skill_ids.dtype}")
    _expect(skill_ids.device == x.device, "skill_ids", f"is on {skill_ids.device} but x is on {x.device}")
    lead = tuple(x.shape[:-1])
    if tuple(skill_ids.shape) == lead:
        k = 1
    else:
        _expect(skill_ids.dim() == len(lead) + 1 and tuple(skill_ids.shape[:-1]) == lead
                and skill_ids.shape[-1] >= 1, "skill_ids",
                f"must have shape x.shape[:-1] = {lead} or {lead} + (k,), got {tuple(skill_ids.shape)}")
        k = skill_ids.shape[-1]
    d = x.shape[-1]
    _expect(isinstance(w1, Tensor) and w1.dim() == 3, "w1", "must be a 3-d Tensor (E, d, h) "
            "((E, d, 2h) for swiglu)")
    E, _, h1 = w1.shape
    _expect(E >= 1, "w1", "must hold at least one skill (E >= 1)")
    swiglu = activation == "swiglu"
    _expect(not swiglu or h1 % 2 == 0, "w1", f"must have an even last dim for swiglu, got {h1}")
    h = h1 // 2 if swiglu else h1
    _expect_like(w1, "w1", x, (E, d, h1))
    _expect_like(w2, "w2", x, (E, h, d))
    if b1 is not None:
        _expect_like(b1, "b1", x, (E, h1))
    if b2 is not None:
        _expect_like(b2, "b2", x, (E, d))
    if skill_weights is not None:
        _expect(isinstance(skill_weights, Tensor) and skill_weights.dtype.is_floating_point,
                "skill_weights", "must be a floating-point Tensor")
        _expect(skill_weights.device == x.device, "skill_weights",
                f"is on {skill_weights.device} but x is on {x.device}")
        _expect(tuple(skill_weights.shape) == tuple(skill_ids.shape), "skill_weights",
                f"must have the shape of skill_ids {tuple(skill_ids.shape)}, got {tuple(skill_weights.shape)}")
    T = x.numel() // d if d else 0
    _expect(T * k < 2**31, "skill_ids", "has too many slots (T*k must be < 2^31)")
    return T, k, E, d, h


# ----------------------------------------------------------------------------- registered ops


@torch.library.custom_op("skillkern::skill_route_triton", mutates_args=())
def _route_triton_op(skill_ids: Tensor, num_skills: int) -> tuple[Tensor, Tensor]:
    from skillkern.ops.skill_ffn import triton_impl
    return triton_impl.route(skill_ids.reshape(-1).contiguous(), num_skills)


@_route_triton_op.register_fake
def _(skill_ids, num_skills):
    return (skill_ids.new_empty(skill_ids.numel(), dtype=torch.int32),
            skill_ids.new_empty(num_skills + 1, dtype=torch.int32))


@torch.library.custom_op("skillkern::skill_ffn_fwd", mutates_args=())
def _skill_ffn_fwd_op(x: Tensor, skill_ids: Tensor, scale: Tensor, w1: Tensor, w2: Tensor,
                      b1: Optional[Tensor], b2: Optional[Tensor], activation: str
                      ) -> tuple[Tensor, Tensor, Tensor]:
    from skillkern.ops.skill_ffn import triton_impl
    check_ids_in_range(skill_ids, w1.shape[0])  # inside the opaque op: no graph break
    return triton_impl.skill_ffn_fwd(
        x.contiguous(), skill_ids.contiguous(), scale.contiguous(), w1, w2,
        None if b1 is None else b1.contiguous(), None if b2 is None else b2.contiguous(), activation)


@_skill_ffn_fwd_op.register_fake
def _(x, skill_ids, scale, w1, w2, b1, b2, activation):
    T, k = skill_ids.shape
    return (x.new_empty(x.shape), x.new_empty(T * k, dtype=torch.int32),
            x.new_empty(w1.shape[0] + 1, dtype=torch.int32))


@torch.library.custom_op("skillkern::skill_ffn_bwd", mutates_args=())
def _skill_ffn_bwd_op(dy: Tensor, x: Tensor, scale: Tensor, w1: Tensor, w2: Tensor,
                      b1: Optional[Tensor], b2: Optional[Tensor], order: Tensor, offsets: Tensor,
                      activation: str, need_dscale: bool) -> list[Tensor]:
    """Returns [dx, dw1, dw2, db1, db2, dscale]; absent ones are empty (0-element) tensors."""
    from skillkern.ops.skill_ffn import triton_impl
    grads = triton_impl.skill_ffn_bwd(
        dy.contiguous(), x.contiguous(), scale.contiguous(), w1, w2,
        None if b1 is None else b1.contiguous(), None if b2 is None else b2.contiguous(),
        order, offsets, activation, need_dscale)
    return [g if g is not None else x.new_empty(0) for g in grads]


@_skill_ffn_bwd_op.register_fake
def _(dy, x, scale, w1, w2, b1, b2, order, offsets, activation, need_dscale):
    return [x.new_empty(x.shape), w1.new_empty(w1.shape), w2.new_empty(w2.shape),
            b1.new_empty(b1.shape) if b1 is not None else x.new_empty(0),
            b2.new_empty(b2.shape) if b2 is not None else x.new_empty(0),
            scale.new_empty(scale.shape) if need_dscale else x.new_empty(0)]


def _fwd_setup_context(ctx, inputs, output):
    x, _, scale, w1, w2, b1, b2, activation = inputs
    _, order, offsets = output
    ctx.save_for_backward(x, scale, w1, w2, b1, b2, order, offsets)
    ctx.activation = activation


def _make_backward(bwd_op_name: str):
    """The autograd backward of a forward op, calling torch.ops.skillkern.<bwd_op_name> (the
    Triton skill_ffn_bwd or the native skill_ffn_bwd_cuda: same arguments and outputs)."""

    def backward(ctx, dy, _d_order, _d_offsets):
        x, scale, w1, w2, b1, b2, order, offsets = ctx.saved_tensors
        need_dscale = ctx.needs_input_grad[2]
        dx, dw1, dw2, db1, db2, dscale = getattr(torch.ops.skillkern, bwd_op_name)(
            dy, x, scale, w1, w2, b1, b2, order, offsets, ctx.activation, need_dscale)
        return (dx, None, dscale if need_dscale else None, dw1, dw2,
                db1 if b1 is not None else None, db2 if b2 is not None else None, None)

    return backward


_skill_ffn_fwd_op.register_autograd(_make_backward("skill_ffn_bwd"), setup_context=_fwd_setup_context)


@_backend.on_extension_load
def _register_cuda_autograd():
    # the C++ ops exist only once the extension is loaded (their Meta kernels are C++); a
    # library built before they existed lacks them, and then the cuda backend's call fails
    if hasattr(torch.ops.skillkern, "skill_ffn_fwd_cuda"):
        torch.library.register_autograd("skillkern::skill_ffn_fwd_cuda", _make_backward("skill_ffn_bwd_cuda"),
                                        setup_context=_fwd_setup_context)


@torch.library.custom_op("skillkern::skill_ids_checked", mutates_args=())
def _skill_ids_checked_op(skill_ids: Tensor, num_skills: int) -> Tensor:
    """check_ids_in_range as an opaque op, so torch.compile(fullgraph=True) keeps the check
    of the cuda backend in its graph (a host sync, like the Triton op's check inside its op).
    Returns a copy of the ids (T*k integers): an op without outputs would be dropped."""
    check_ids_in_range(skill_ids, num_skills)
    return skill_ids.clone()


@_skill_ids_checked_op.register_fake
def _(skill_ids, num_skills):
    return torch.empty_like(skill_ids)


# ----------------------------------------------------------------------------- public API


def skill_route(skill_ids: Tensor, num_skills: int, *, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Stable counting sort of token slots by skill (the routing step of skill_ffn).

    skill_ids: integer tensor of any shape (flattened to N slots); -1 = empty slot.
    Returns order (N,) int32 (slot index at each sorted position, skills in order, empty
    slots last) and offsets (num_skills + 1,) int32 (skill e owns [offsets[e], offsets[e+1])).
    """
    if not isinstance(skill_ids, Tensor) or skill_ids.dtype.is_floating_point or skill_ids.dtype == torch.bool:
        raise ValueError("skill_route: `skill_ids` must be an integer Tensor")
    if not isinstance(num_skills, int) or num_skills < 1:
        raise ValueError(f"skill_route: `num_skills` must be a positive int, got {num_skills!r}")
    check_ids_in_range(skill_ids, num_skills)
    which = _backend.resolve("skill_route", backend, skill_ids.device)
    if which == "torch":
        return route_ref(skill_ids, num_skills)
    if which == "cuda":
        _backend.load_cuda_extension()
        return torch.ops.skillkern.skill_route(skill_ids.reshape(-1).contiguous(), num_skills)
    return torch.ops.skillkern.skill_route_triton(skill_ids, num_skills)


def skill_ffn(x: Tensor, skill_ids: Tensor, w1: Tensor, w2: Tensor, b1: Optional[Tensor] = None,
              b2: Optional[Tensor] = None, *, skill_weights: Optional[Tensor] = None,
              activation: str = "gelu", backend: str = "auto") -> Tensor:
    """Skill-routed FFN (SkillNet): each token runs only its skills' FFNs; outputs are combined.

        y[t] = sum_j c[t,j] * ( act(x[t] @ w1[s] + b1[s]) @ w2[s] + b2[s] ),  s = skill_ids[t,j]

    over active slots; c = skill_weights, else 1 / (number of active slots) (SkillNet's
    average). A token with no active slot gets zeros.

    x: (..., d) float32/float16/bfloat16.  skill_ids: integer, x.shape[:-1] (one skill per
    token) or x.shape[:-1] + (k,); -1 = empty slot.  skill_weights: None or float, shaped
    like skill_ids.  w1: (E, d, h) ((E, d, 2h) for "swiglu", gate half first); b1: (E, h|2h);
    w2: (E, h, d); b2: (E, d); all of x's dtype and device.
    activation: "gelu" (erf), "gelu_tanh", "relu", "silu", "swiglu" (silu(gate) * up).
    backend: "auto" | "torch" | "triton" | "cuda" (see skillkern._backend).
    Returns (..., d) in x.dtype (fp32 accumulation); differentiable w.r.t. x, w1, w2, b1, b2
    and skill_weights. Under torch.autocast, x and the weights are cast to the autocast dtype. Ids are range-checked (a host sync) unless skillkern.set_check_ids(False).
    """
    if isinstance(x, Tensor) and torch.is_autocast_enabled(x.device.type):
        # custom ops are invisible to autocast: cast like an autocast matmul would, so
        # SkillFFN's fp32 parameters work under torch.autocast (grads flow back in fp32)
        dt = torch.get_autocast_dtype(x.device.type)
        x, w1, w2, b1, b2 = (t.to(dt) if isinstance(t, Tensor) and t.is_floating_point() else t
                             for t in (x, w1, w2, b1, b2))
    T, k, E, d, h = _validate(x, skill_ids, w1, w2, b1, b2, skill_weights, activation)
    ids = skill_ids.reshape(T, k)
    scale = slot_scale(ids, E, None if skill_weights is None else skill_weights.reshape(T, k))
    x2 = x.reshape(T, d)
    which = _backend.resolve("skill_ffn", backend, x.device)
    if which == "torch" or T == 0:
        check_ids_in_range(ids, E)
        y = skill_ffn_ref(x2, ids, scale, w1, w2, b1, b2, activation)
    elif which == "cuda":
        if not torch.compiler.is_compiling():  # resolve() loaded it; dynamo cannot trace a load
            _backend.load_cuda_extension()
        if _config.check_ids_enabled():
            ids = torch.ops.skillkern.skill_ids_checked(ids, E)
        y = torch.ops.skillkern.skill_ffn_fwd_cuda(x2, ids, scale, w1, w2, b1, b2, activation)[0]
    else:
        y = torch.ops.skillkern.skill_ffn_fwd(x2, ids, scale, w1, w2, b1, b2, activation)[0]
    return y.reshape(x.shape)
