"""skillkern.skill_ffn / skill_route: argument checks, backend choice, registered ops.

Ops in the skillkern:: namespace (torch.library.custom_op + register_fake + register_autograd,
so torch.compile(fullgraph=True) sees one opaque node per phase and opcheck passes):
  skillkern::skill_ffn_fwd(x, skill_ids, scale, w1, w2, b1?, b2?, activation) -> (y, order, offsets)
  skillkern::skill_ffn_bwd(dy, x, scale, w1, w2, b1?, b2?, order, offsets, activation, need_dscale,
      pre?) -> [dx, dw1, dw2, db1, db2, dscale]                            (the Triton backend)
  skillkern::skill_ffn_fwd_stored(...same...) -> (y, order, offsets, pre): recompute=False, the
      pre-activation kept for the backward (Triton)
  skillkern::skill_ffn_fwd_torch / skill_ffn_bwd_torch: the same contract, computed by the
      pure-PyTorch reference (the torch backend: its per-skill loop has data-dependent shapes,
      so torch.compile(fullgraph=True) and meta tensors need it behind an opaque op)
  skillkern::skill_route_triton(skill_ids, num_skills) -> (order, offsets)
  skillkern::skill_ids_checked(skill_ids, num_skills) -> copy of skill_ids (the id range check
      of every backend, as an opaque op so that compiled graphs keep it)
The compiled extension (csrc/skill_ffn/) registers skillkern::skill_route and the native
backend skillkern::skill_ffn_fwd_cuda / _bwd_cuda (same arguments and outputs; their Meta
kernels are C++). One autograd formula (_make_backward + _fwd_setup_context) serves all three
forward ops.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from skillkern import _backend, _config
from skillkern.ops._common import FLOAT_DTYPES, expect, register_autograd_pair
from skillkern.ops.skill_ffn.reference import (ACTIVATIONS, ID_DTYPES, route_ref, skill_ffn_bwd_ref,
                                               skill_ffn_ref, slot_scale, wide_ids)

# ----------------------------------------------------------------------------- checks


def _expect_like(t, name: str, x: Tensor, shape: tuple) -> None:
    expect(isinstance(t, Tensor), "skill_ffn", name, f"must be a Tensor, got {type(t).__name__}", TypeError)
    expect(t.device == x.device, "skill_ffn", name, f"is on {t.device} but x is on {x.device}")
    expect(t.dtype == x.dtype, "skill_ffn", name, f"has dtype {t.dtype} but x has {x.dtype} (cast the "
           "weights, e.g. under torch.autocast, before the call)")
    expect(tuple(t.shape) == shape, "skill_ffn", name, f"must have shape {shape}, got {tuple(t.shape)}")


def check_ids_in_range(skill_ids: Tensor, num_skills: int) -> None:
    """Raise if an id is outside [-1, num_skills). Reads one bool back (a host sync on a GPU);
    nothing to read on the meta device. Called inside skillkern::skill_ids_checked, which the
    public functions call only while skillkern.check_ids_enabled() (with the check off, such
    ids count as empty slots)."""
    if skill_ids.numel() == 0 or skill_ids.device.type == "meta":
        return
    ids = wide_ids(skill_ids)
    bad = (ids < -1) | (ids >= num_skills)
    if bool(bad.any()):
        vals = ids[bad]
        raise ValueError(
            f"skillkern: `skill_ids` must lie in [0, {num_skills}) or be -1 (empty slot); found "
            f"{int(bad.sum())} out of range (min {int(vals.min())}, max {int(vals.max())}). "
            "skillkern.set_check_ids(False) skips this check (and its host sync).")


def _validate(x, skill_ids, w1, w2, b1, b2, skill_weights, activation):
    """Check every argument; returns (T, k, E, d, h). Metadata only, no device reads."""
    expect(isinstance(x, Tensor), "skill_ffn", "x", f"must be a Tensor, got {type(x).__name__}", TypeError)
    expect(x.dtype in FLOAT_DTYPES, "skill_ffn", "x",
           f"must be float32, float16 or bfloat16, got {x.dtype}")
    expect(x.dim() >= 1, "skill_ffn", "x", "must have shape (..., d)")
    expect(activation in ACTIVATIONS, "skill_ffn", "activation",
           f"must be one of {ACTIVATIONS}, got {activation!r}")
    expect(isinstance(skill_ids, Tensor), "skill_ffn", "skill_ids",
           f"must be a Tensor, got {type(skill_ids).__name__}", TypeError)
    expect(skill_ids.dtype in ID_DTYPES, "skill_ffn", "skill_ids",
           f"must have an integer dtype of {ID_DTYPES}, got {skill_ids.dtype}")
    expect(skill_ids.device == x.device, "skill_ffn", "skill_ids",
           f"is on {skill_ids.device} but x is on {x.device}")
    lead = tuple(x.shape[:-1])
    if tuple(skill_ids.shape) == lead:
        k = 1
    else:
        expect(skill_ids.dim() == len(lead) + 1 and tuple(skill_ids.shape[:-1]) == lead
               and skill_ids.shape[-1] >= 1, "skill_ffn", "skill_ids",
               f"must have shape x.shape[:-1] = {lead} or {lead} + (k,), got {tuple(skill_ids.shape)}")
        k = skill_ids.shape[-1]
    d = x.shape[-1]
    expect(isinstance(w1, Tensor), "skill_ffn", "w1", f"must be a Tensor, got {type(w1).__name__}", TypeError)
    expect(w1.dim() == 3, "skill_ffn", "w1", "must be a 3-d Tensor (E, d, h) ((E, d, 2h) for swiglu)")
    E, _, h1 = w1.shape
    expect(E >= 1, "skill_ffn", "w1", "must hold at least one skill (E >= 1)")
    swiglu = activation == "swiglu"
    expect(not swiglu or h1 % 2 == 0, "skill_ffn", "w1", f"must have an even last dim for swiglu, got {h1}")
    h = h1 // 2 if swiglu else h1
    _expect_like(w1, "w1", x, (E, d, h1))
    _expect_like(w2, "w2", x, (E, h, d))
    if b1 is not None:
        _expect_like(b1, "b1", x, (E, h1))
    if b2 is not None:
        _expect_like(b2, "b2", x, (E, d))
    if skill_weights is not None:
        expect(isinstance(skill_weights, Tensor), "skill_ffn", "skill_weights",
               f"must be a Tensor or None, got {type(skill_weights).__name__}", TypeError)
        expect(skill_weights.dtype.is_floating_point, "skill_ffn", "skill_weights",
               f"must be a floating-point Tensor, got {skill_weights.dtype}")
        expect(skill_weights.device == x.device, "skill_ffn", "skill_weights",
               f"is on {skill_weights.device} but x is on {x.device}")
        expect(tuple(skill_weights.shape) == tuple(skill_ids.shape), "skill_ffn", "skill_weights",
               f"must have the shape of skill_ids {tuple(skill_ids.shape)}, "
               f"got {tuple(skill_weights.shape)}")
    T = math.prod(lead)
    expect(T * k < 2**31, "skill_ffn", "skill_ids", "has too many slots (T*k must be < 2^31)")
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


@torch.library.custom_op("skillkern::skill_ids_checked", mutates_args=())
def _skill_ids_checked_op(skill_ids: Tensor, num_skills: int) -> Tensor:
    """check_ids_in_range as an opaque op, so torch.compile(fullgraph=True) keeps the check in
    its graph (a host sync; dynamo cannot trace its data-dependent branch). Returns a copy of
    the ids (T*k integers) that the caller routes with: an op without outputs would be dropped."""
    check_ids_in_range(skill_ids, num_skills)
    return skill_ids.clone()


@_skill_ids_checked_op.register_fake
def _(skill_ids, num_skills):
    return torch.empty_like(skill_ids)


def _fwd_fake(x, skill_ids, scale, w1, w2, b1, b2, activation):
    T, k = skill_ids.shape
    return (x.new_empty(x.shape), x.new_empty(T * k, dtype=torch.int32),
            x.new_empty(w1.shape[0] + 1, dtype=torch.int32))


def _fwd_stored_fake(x, skill_ids, scale, w1, w2, b1, b2, activation):
    T, k = skill_ids.shape
    return (*_fwd_fake(x, skill_ids, scale, w1, w2, b1, b2, activation), x.new_empty(T * k, w1.shape[2]))


def _bwd_fake(dy, x, scale, w1, w2, b1, b2, order, offsets, activation, need_dscale, pre=None):
    return [x.new_empty(x.shape), w1.new_empty(w1.shape), w2.new_empty(w2.shape),
            b1.new_empty(b1.shape) if b1 is not None else x.new_empty(0),
            b2.new_empty(b2.shape) if b2 is not None else x.new_empty(0),
            scale.new_empty(scale.shape) if need_dscale else x.new_empty(0)]


def _present(grads, x: Tensor) -> list[Tensor]:
    """A custom op returns Tensors: absent gradients (no bias, dscale not needed) as 0-element ones."""
    return [g if g is not None else x.new_empty(0) for g in grads]


def _contiguous(*ts):
    return tuple(None if t is None else t.contiguous() for t in ts)


@torch.library.custom_op("skillkern::skill_ffn_fwd", mutates_args=())
def _skill_ffn_fwd_op(x: Tensor, skill_ids: Tensor, scale: Tensor, w1: Tensor, w2: Tensor,
                      b1: Optional[Tensor], b2: Optional[Tensor], activation: str
                      ) -> tuple[Tensor, Tensor, Tensor]:
    from skillkern.ops.skill_ffn import triton_impl
    x, skill_ids, scale, b1, b2 = _contiguous(x, skill_ids, scale, b1, b2)
    return triton_impl.skill_ffn_fwd(x, skill_ids, scale, w1, w2, b1, b2, activation)[:3]


@torch.library.custom_op("skillkern::skill_ffn_fwd_stored", mutates_args=())
def _skill_ffn_fwd_stored_op(x: Tensor, skill_ids: Tensor, scale: Tensor, w1: Tensor, w2: Tensor,
                             b1: Optional[Tensor], b2: Optional[Tensor], activation: str
                             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from skillkern.ops.skill_ffn import triton_impl
    x, skill_ids, scale, b1, b2 = _contiguous(x, skill_ids, scale, b1, b2)
    return triton_impl.skill_ffn_fwd(x, skill_ids, scale, w1, w2, b1, b2, activation, save_pre=True)


@torch.library.custom_op("skillkern::skill_ffn_bwd", mutates_args=())
def _skill_ffn_bwd_op(dy: Tensor, x: Tensor, scale: Tensor, w1: Tensor, w2: Tensor,
                      b1: Optional[Tensor], b2: Optional[Tensor], order: Tensor, offsets: Tensor,
                      activation: str, need_dscale: bool, pre: Optional[Tensor] = None) -> list[Tensor]:
    """Returns [dx, dw1, dw2, db1, db2, dscale]; absent ones are empty (0-element) tensors."""
    from skillkern.ops.skill_ffn import triton_impl
    dy, x, scale, b1, b2 = _contiguous(dy, x, scale, b1, b2)
    return _present(triton_impl.skill_ffn_bwd(dy, x, scale, w1, w2, b1, b2, order, offsets,
                                              activation, need_dscale, pre), x)


@torch.library.custom_op("skillkern::skill_ffn_fwd_torch", mutates_args=())
def _skill_ffn_fwd_torch_op(x: Tensor, skill_ids: Tensor, scale: Tensor, w1: Tensor, w2: Tensor,
                            b1: Optional[Tensor], b2: Optional[Tensor], activation: str
                            ) -> tuple[Tensor, Tensor, Tensor]:
    order, offsets = route_ref(skill_ids, w1.shape[0])
    return skill_ffn_ref(x, skill_ids, scale, w1, w2, b1, b2, activation), order, offsets


@torch.library.custom_op("skillkern::skill_ffn_bwd_torch", mutates_args=())
def _skill_ffn_bwd_torch_op(dy: Tensor, x: Tensor, scale: Tensor, w1: Tensor, w2: Tensor,
                            b1: Optional[Tensor], b2: Optional[Tensor], order: Tensor, offsets: Tensor,
                            activation: str, need_dscale: bool) -> list[Tensor]:
    return _present(skill_ffn_bwd_ref(dy, x, scale, w1, w2, b1, b2, order, offsets, activation,
                                      need_dscale), x)


for _op in (_skill_ffn_fwd_op, _skill_ffn_fwd_torch_op):
    _op.register_fake(_fwd_fake)
_skill_ffn_fwd_stored_op.register_fake(_fwd_stored_fake)
for _op in (_skill_ffn_bwd_op, _skill_ffn_bwd_torch_op):
    _op.register_fake(_bwd_fake)


def _fwd_setup_context(ctx, inputs, output):
    """Saves what the backward reads; the stored variant's fourth output (pre) is saved too."""
    x, _, scale, w1, w2, b1, b2, activation = inputs
    ctx.save_for_backward(x, scale, w1, w2, b1, b2, *output[1:])
    ctx.activation = activation


def _make_backward(bwd_op_name: str):
    """The autograd backward of a forward op, calling torch.ops.skillkern.<bwd_op_name> (the
    Triton skill_ffn_bwd, the reference skill_ffn_bwd_torch or the native skill_ffn_bwd_cuda:
    same arguments and outputs; the Triton one also takes the stored variant's pre)."""

    def backward(ctx, dy, *_d_indices_and_pre):
        x, scale, w1, w2, b1, b2, order, offsets, *pre = ctx.saved_tensors
        need_dscale = ctx.needs_input_grad[2]
        dx, dw1, dw2, db1, db2, dscale = getattr(torch.ops.skillkern, bwd_op_name)(
            dy, x, scale, w1, w2, b1, b2, order, offsets, ctx.activation, need_dscale, *pre)
        return (dx, None, dscale if need_dscale else None, dw1, dw2,
                db1 if b1 is not None else None, db2 if b2 is not None else None, None)

    return backward


register_autograd_pair("skill_ffn", _make_backward, _fwd_setup_context)
torch.library.register_autograd("skillkern::skill_ffn_fwd_stored", _make_backward("skill_ffn_bwd"),
                                setup_context=_fwd_setup_context)
torch.library.register_autograd("skillkern::skill_ffn_fwd_torch", _make_backward("skill_ffn_bwd_torch"),
                                setup_context=_fwd_setup_context)


# ----------------------------------------------------------------------------- public API


def _checked(skill_ids: Tensor, num_skills: int) -> Tensor:
    """skill_ids through the range check while it is on (see skillkern.set_check_ids)."""
    if _config.check_ids_enabled():
        return torch.ops.skillkern.skill_ids_checked(skill_ids, num_skills)
    return skill_ids


def skill_route(skill_ids: Tensor, num_skills: int, *, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Stable counting sort of token slots by skill (the routing step of skill_ffn).

    skill_ids: tensor of any shape (flattened to N slots) of an integer dtype (uint8, int8,
    int16, int32, int64); -1 = empty slot.
    Returns order (N,) int32 (slot index at each sorted position, skills in order, empty
    slots last) and offsets (num_skills + 1,) int32 (skill e owns [offsets[e], offsets[e+1])).
    """
    expect(isinstance(skill_ids, Tensor), "skill_route", "skill_ids",
           f"must be a Tensor, got {type(skill_ids).__name__}", TypeError)
    expect(skill_ids.dtype in ID_DTYPES, "skill_route", "skill_ids",
           f"must have an integer dtype of {ID_DTYPES}, got {skill_ids.dtype}")
    expect(isinstance(num_skills, int) and not isinstance(num_skills, bool), "skill_route", "num_skills",
           f"must be an int, got {type(num_skills).__name__}", TypeError)
    expect(num_skills >= 1, "skill_route", "num_skills", f"must be positive, got {num_skills}")
    which = _backend.resolve("skill_route", backend, skill_ids.device)
    ids = _checked(skill_ids, num_skills)
    if which == "torch":
        return route_ref(ids, num_skills)
    if which == "cuda":
        if not torch.compiler.is_compiling():  # resolve() loaded it; dynamo cannot trace a load
            _backend.load_cuda_extension()
        return torch.ops.skillkern.skill_route(ids.reshape(-1).contiguous(), num_skills)
    return torch.ops.skillkern.skill_route_triton(ids, num_skills)


def skill_ffn(x: Tensor, skill_ids: Tensor, w1: Tensor, w2: Tensor, b1: Optional[Tensor] = None,
              b2: Optional[Tensor] = None, *, skill_weights: Optional[Tensor] = None,
              activation: str = "gelu", recompute: bool = False, backend: str = "auto") -> Tensor:
    """Skill-routed FFN (SkillNet): each token runs only its skills' FFNs; outputs are combined.

        y[t] = sum_j c[t,j] * ( act(x[t] @ w1[s] + b1[s]) @ w2[s] + b2[s] ),  s = skill_ids[t,j]

    over active slots; c = skill_weights, else 1 / (number of active slots) (SkillNet's
    average). A token with no active slot gets zeros. The weight of an empty slot is never
    read (NaN or inf there is harmless and gets a zero gradient), nor is x of a token
    without an active slot.

    x: (..., d) float32/float16/bfloat16 (any number of tokens, 0 included).  skill_ids:
    uint8/int8/int16/int32/int64, x.shape[:-1] (one skill per token) or x.shape[:-1] + (k,);
    -1 = empty slot.  skill_weights: None or float, shaped like skill_ids.  w1: (E, d, h)
    ((E, d, 2h) for "swiglu", gate half first); b1: (E, h|2h); w2: (E, h, d); b2: (E, d); all
    of x's dtype and device.
    activation: "gelu" (erf), "gelu_tanh", "relu", "silu", "swiglu" (silu(gate) * up).
    recompute: False (default) keeps the pre-activation for the backward, T*k*h elements (268
    MB per layer at T=32768, h=4096 in bf16; twice that for swiglu), and runs 6
    GEMM-equivalents per step. True keeps 4 bytes per token slot and recomputes GEMM1 in the
    backward (7). Measured on an H200 at that shape: 4.60 ms fwd+bwd kept, 5.12 recomputed
    (+353 MB peak for keeping); choose True where activation memory is what limits the batch.
    Honoured by the triton backend; torch and cuda always recompute (the results agree up to
    the rounding of the kept pre-activation).
    backend: "auto" | "torch" | "triton" | "cuda" (see skillkern._backend); every backend is
    one registered op pair, so torch.compile(fullgraph=True) and meta tensors work on each.
    Returns (..., d) in x.dtype (fp32 accumulation); differentiable w.r.t. x, w1, w2, b1, b2
    and skill_weights. Under torch.autocast, x and the weights are cast to the autocast dtype.
    Ids are range-checked (a host sync) unless skillkern.set_check_ids(False).
    """
    # a fixed device list, not torch.amp.is_autocast_available: dynamo (torch 2.11) cannot trace
    # that call, and compile(fullgraph=True) must work on the public op
    if (isinstance(x, Tensor) and x.device.type in ("cpu", "cuda")
            and torch.is_autocast_enabled(x.device.type)):
        # custom ops are invisible to autocast: cast like an autocast matmul would, so
        # SkillFFN's fp32 parameters work under torch.autocast (grads flow back in fp32)
        dt = torch.get_autocast_dtype(x.device.type)
        x, w1, w2, b1, b2 = (t.to(dt) if isinstance(t, Tensor) and t.is_floating_point() else t
                             for t in (x, w1, w2, b1, b2))
    expect(isinstance(recompute, bool), "skill_ffn", "recompute", f"must be a bool, got {type(recompute).__name__}",
           TypeError)
    T, k, E, d, h = _validate(x, skill_ids, w1, w2, b1, b2, skill_weights, activation)
    which = _backend.resolve("skill_ffn", backend, x.device)
    ids = skill_ids.reshape(T, k)
    scale = slot_scale(ids, E, None if skill_weights is None else skill_weights.reshape(T, k))
    ids = _checked(ids, E)
    if which == "cuda":
        if not torch.compiler.is_compiling():  # resolve() loaded it; dynamo cannot trace a load
            _backend.load_cuda_extension()
        fwd = torch.ops.skillkern.skill_ffn_fwd_cuda
    elif which == "torch":
        fwd = torch.ops.skillkern.skill_ffn_fwd_torch
    else:
        fwd = torch.ops.skillkern.skill_ffn_fwd if recompute else torch.ops.skillkern.skill_ffn_fwd_stored
    y = fwd(x.reshape(T, d), ids, scale, w1, w2, b1, b2, activation)[0]
    return y.reshape(x.shape)
