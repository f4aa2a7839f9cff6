"""skillkern.maxsim / skillkern.maxsim_topk: argument checks, the registered ops, the backend.

Registered (fake kernels, so torch.compile(fullgraph=True) traces them):
    skillkern::maxsim_fwd_torch(q, d, q_mask, d_mask, d_offsets, candidates, mean) -> scores
    skillkern::maxsim_bwd_torch(g, q, d, q_mask, d_mask, d_offsets, candidates, mean) -> (dq, dd)
    skillkern::maxsim_topk_torch(q, d, k, q_mask, d_mask, d_offsets, mean, chunk) -> (values, indices)
and the Triton backend's (triton_impl.py):
    skillkern::maxsim_scores_triton(q, d, q_mask, d_mask, d_offsets, candidates, mean) -> scores
        (no gradient wanted: no arg-max state)
    skillkern::maxsim_fwd_triton(...same...) -> (scores, arg)   arg (Bq * Nq, cols) int32
    skillkern::maxsim_bwd_triton(g, q, d, q_mask, d_mask, d_offsets, candidates, arg, mean) -> (dq, dd)
    skillkern::maxsim_topk_triton(q, d, k, q_mask, d_mask, d_offsets, mean, chunk) -> (values, indices)
The torch backend recomputes the arg-max in its backward; the Triton one keeps it from the
forward (4 bytes per query token and column: 8 MB at Bq = Bd = 256, Nq = 32).
The checks here are the ones a shape can answer; the values of d_offsets and candidates are
checked where they are read (torch_impl), still before any result is produced.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from skillkern import _backend
from skillkern.ops._common import FLOAT_DTYPES, expect
from skillkern.ops.maxsim import torch_impl

_DEFAULT_CHUNK = 8192  # docs scored per step of maxsim_topk


def _check(where, q, d, q_mask, d_mask, d_offsets, reduce):
    expect(isinstance(q, Tensor), where, "q", f"must be a tensor, got {type(q).__name__}", TypeError)
    expect(isinstance(d, Tensor), where, "d", f"must be a tensor, got {type(d).__name__}", TypeError)
    expect(q.dim() == 3, where, "q", f"must be 3-d (Bq, Nq, D), got shape {tuple(q.shape)}")
    expect(q.dtype in FLOAT_DTYPES, where, "q", f"must be float32, float16 or bfloat16, got {q.dtype}")
    expect(d.dtype == q.dtype, where, "d", f"has dtype {d.dtype} but q has {q.dtype}")
    expect(d.device == q.device, where, "d", f"is on {d.device} but q is on {q.device}")
    packed = d_offsets is not None
    if packed:
        expect(d.dim() == 2, where, "d", f"must be 2-d (total_tokens, D) with d_offsets, got shape {tuple(d.shape)}")
        expect(isinstance(d_offsets, Tensor) and d_offsets.dim() == 1 and d_offsets.numel() >= 1
               and d_offsets.dtype in (torch.int32, torch.int64), where, "d_offsets",
               "must be a 1-d int32/int64 tensor of Bd + 1 cumulative starts")
        expect(d_offsets.device == q.device, where, "d_offsets", f"is on {d_offsets.device} but q is on {q.device}")
        expect(d_mask is None, where, "d_mask", "must be None for packed docs (d_offsets given: no padding)")
    else:
        expect(d.dim() == 3, where, "d", f"must be 3-d (Bd, Nd, D), or 2-d with d_offsets; got shape {tuple(d.shape)}")
    expect(d.shape[-1] == q.shape[2], where, "d", f"has D = {d.shape[-1]} but q has D = {q.shape[2]}")
    for name, m, shape in (("q_mask", q_mask, q.shape[:2]), ("d_mask", d_mask, d.shape[:2])):
        if m is not None:
            expect(isinstance(m, Tensor) and m.dtype == torch.bool, where, name,
                   f"must be a bool tensor, got {getattr(m, 'dtype', type(m).__name__)}")
            expect(tuple(m.shape) == tuple(shape), where, name, f"must have shape {tuple(shape)}, got {tuple(m.shape)}")
            expect(m.device == q.device, where, name, f"is on {m.device} but q is on {q.device}")
    expect(reduce in ("sum", "mean"), where, "reduce", f"must be 'sum' or 'mean', got {reduce!r}")


def _num_docs(d, d_offsets) -> int:
    return d_offsets.shape[0] - 1 if d_offsets is not None else d.shape[0]


# ----------------------------------------------------------------------------- registered ops

@torch.library.custom_op("skillkern::maxsim_fwd_torch", mutates_args=())
def _fwd_op(q: Tensor, d: Tensor, q_mask: Optional[Tensor], d_mask: Optional[Tensor], d_offsets: Optional[Tensor],
            candidates: Optional[Tensor], mean: bool) -> Tensor:
    return torch_impl.maxsim_fwd(q, d, q_mask, d_mask, d_offsets, candidates, mean)


@_fwd_op.register_fake
def _(q, d, q_mask, d_mask, d_offsets, candidates, mean):
    cols = candidates.shape[1] if candidates is not None else _num_docs(d, d_offsets)
    return q.new_empty(q.shape[0], cols, dtype=torch.float32)


@torch.library.custom_op("skillkern::maxsim_bwd_torch", mutates_args=())
def _bwd_op(g: Tensor, q: Tensor, d: Tensor, q_mask: Optional[Tensor], d_mask: Optional[Tensor],
            d_offsets: Optional[Tensor], candidates: Optional[Tensor], mean: bool) -> tuple[Tensor, Tensor]:
    return torch_impl.maxsim_bwd(g, q, d, q_mask, d_mask, d_offsets, candidates, mean)


@_bwd_op.register_fake
def _(g, q, d, q_mask, d_mask, d_offsets, candidates, mean):
    return torch.empty_like(q), torch.empty_like(d)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6])
    ctx.mean = inputs[6]


def _backward(ctx, g):
    q, d, q_mask, d_mask, d_offsets, candidates = ctx.saved_tensors
    dq, dd = torch.ops.skillkern.maxsim_bwd_torch(g.contiguous(), q, d, q_mask, d_mask, d_offsets, candidates,
                                                  ctx.mean)
    return dq, dd, None, None, None, None, None


torch.library.register_autograd("skillkern::maxsim_fwd_torch", _backward, setup_context=_setup_context)


@torch.library.custom_op("skillkern::maxsim_scores_triton", mutates_args=())
def _scores_triton(q: Tensor, d: Tensor, q_mask: Optional[Tensor], d_mask: Optional[Tensor],
                   d_offsets: Optional[Tensor], candidates: Optional[Tensor], mean: bool) -> Tensor:
    from skillkern.ops.maxsim import triton_impl
    return triton_impl.maxsim_fwd(q, d, q_mask, d_mask, d_offsets, candidates, mean, False)[0]


@_scores_triton.register_fake
def _(q, d, q_mask, d_mask, d_offsets, candidates, mean):
    cols = candidates.shape[1] if candidates is not None else _num_docs(d, d_offsets)
    return q.new_empty(q.shape[0], cols, dtype=torch.float32)


@torch.library.custom_op("skillkern::maxsim_fwd_triton", mutates_args=())
def _fwd_triton(q: Tensor, d: Tensor, q_mask: Optional[Tensor], d_mask: Optional[Tensor],
                d_offsets: Optional[Tensor], candidates: Optional[Tensor], mean: bool) -> tuple[Tensor, Tensor]:
    from skillkern.ops.maxsim import triton_impl
    return triton_impl.maxsim_fwd(q, d, q_mask, d_mask, d_offsets, candidates, mean, True)


@_fwd_triton.register_fake
def _(q, d, q_mask, d_mask, d_offsets, candidates, mean):
    cols = candidates.shape[1] if candidates is not None else _num_docs(d, d_offsets)
    return (q.new_empty(q.shape[0], cols, dtype=torch.float32),
            q.new_empty(q.shape[0] * q.shape[1], cols, dtype=torch.int32))


@torch.library.custom_op("skillkern::maxsim_bwd_triton", mutates_args=())
def _bwd_triton(g: Tensor, q: Tensor, d: Tensor, q_mask: Optional[Tensor], d_mask: Optional[Tensor],
                d_offsets: Optional[Tensor], candidates: Optional[Tensor], arg: Tensor, mean: bool
                ) -> tuple[Tensor, Tensor]:
    from skillkern.ops.maxsim import triton_impl
    return triton_impl.maxsim_bwd(g, q, d, q_mask, d_mask, d_offsets, candidates, arg, mean)


@_bwd_triton.register_fake
def _(g, q, d, q_mask, d_mask, d_offsets, candidates, arg, mean):
    return torch.empty_like(q), torch.empty_like(d)


def _setup_triton(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6], output[1])
    ctx.mean = inputs[6]


def _backward_triton(ctx, g, _g_arg):
    q, d, q_mask, d_mask, d_offsets, candidates, arg = ctx.saved_tensors
    dq, dd = torch.ops.skillkern.maxsim_bwd_triton(g.contiguous(), q, d, q_mask, d_mask, d_offsets, candidates,
                                                   arg, ctx.mean)
    return dq, dd, None, None, None, None, None


torch.library.register_autograd("skillkern::maxsim_fwd_triton", _backward_triton, setup_context=_setup_triton)


@torch.library.custom_op("skillkern::maxsim_topk_torch", mutates_args=())
def _topk_op(q: Tensor, d: Tensor, k: int, q_mask: Optional[Tensor], d_mask: Optional[Tensor],
             d_offsets: Optional[Tensor], mean: bool, chunk: int) -> tuple[Tensor, Tensor]:
    return torch_impl.maxsim_topk(q, d, k, q_mask, d_mask, d_offsets, mean, chunk)


def _topk_fake(q, d, k, q_mask, d_mask, d_offsets, mean, chunk):
    """Both backends' top-k: values (Bq, k) float32, indices (Bq, k) int64."""
    return q.new_empty(q.shape[0], k, dtype=torch.float32), q.new_empty(q.shape[0], k, dtype=torch.int64)


_topk_op.register_fake(_topk_fake)


@torch.library.custom_op("skillkern::maxsim_topk_triton", mutates_args=())
def _topk_triton(q: Tensor, d: Tensor, k: int, q_mask: Optional[Tensor], d_mask: Optional[Tensor],
                 d_offsets: Optional[Tensor], mean: bool, chunk: int) -> tuple[Tensor, Tensor]:
    from skillkern.ops.maxsim import triton_impl
    return triton_impl.maxsim_topk(q, d, k, q_mask, d_mask, d_offsets, mean, chunk)


_topk_triton.register_fake(_topk_fake)


def _which(where: str, backend: str, q: Tensor) -> str:
    """The backend that runs: _backend's choice, except that 'auto' sends queries the Triton
    kernels do not hold (triton_impl.fits) to torch, and 'triton' refuses them by name."""
    which = _backend.resolve("maxsim", backend, q.device)
    if which == "triton":
        from skillkern.ops.maxsim.triton_impl import fits
        why = fits(q.shape[1], q.shape[2])
        if why is not None:
            expect(backend != "triton", where, "q", f"{why}; use backend='torch' (or 'auto')")
            return "torch"
    return which


# ----------------------------------------------------------------------------- public API

def maxsim(q: Tensor, d: Tensor, q_mask: Optional[Tensor] = None, d_mask: Optional[Tensor] = None, *,
           d_offsets: Optional[Tensor] = None, candidates: Optional[Tensor] = None, reduce: str = "sum",
           backend: str = "auto") -> Tensor:
    """Late-interaction (MaxSim) scores of every query against every doc, or against each
    query's candidates:

        scores[i, j] = reduce over the real tokens k of query i of
                       max over the real tokens l of doc j of <q[i, k], d[j, l]>

    q: (Bq, Nq, D) with q_mask (Bq, Nq) bool (True = real token; None = all real).
    d: padded (Bd, Nd, D) with d_mask (Bd, Nd), or packed (total_tokens, D) with d_offsets
    (Bd + 1,) int32/int64 cumulative starts (0 first, total_tokens last; no padding at all).
    candidates: (Bq, C) int64 doc indices to rerank (-1 = an empty slot, which scores 0); the
    result is then (Bq, C), else (Bq, Bd).
    reduce: "sum" (ColBERT) or "mean" (FILIP's image-to-text direction).
    Returns float32 scores; a pair where either side has no real token scores 0. Padding
    (masked tokens) never reaches a score or a gradient, even holding NaN or inf.
    Differentiable w.r.t. q and d: each max's gradient goes to its arg-max token,
    deterministically. Memory: no similarity matrix is held (torch: chunks of at most 2^26
    similarities; triton: tiles, plus the arg-max state, 4 bytes per query token and column,
    when a gradient is wanted). backend: "auto" (triton on CUDA tensors, torch elsewhere or for
    queries the Triton kernels do not hold: more than 256 tokens or D > 256), "triton", "torch";
    "cuda" raises BackendUnavailable (no CUDA C++ kernel).
    """
    _check("maxsim", q, d, q_mask, d_mask, d_offsets, reduce)
    if candidates is not None:
        expect(isinstance(candidates, Tensor) and candidates.dtype == torch.int64 and candidates.dim() == 2
               and candidates.shape[0] == q.shape[0], "maxsim", "candidates",
               f"must be an int64 tensor of shape (Bq, C) with Bq = {q.shape[0]}, got "
               f"{getattr(candidates, 'dtype', type(candidates).__name__)} {tuple(getattr(candidates, 'shape', ()))}")
        expect(candidates.device == q.device, "maxsim", "candidates", f"is on {candidates.device} but q is on {q.device}")
    if _which("maxsim", backend, q) == "torch":
        return torch.ops.skillkern.maxsim_fwd_torch(q, d, q_mask, d_mask, d_offsets, candidates, reduce == "mean")
    if torch.is_grad_enabled() and (q.requires_grad or d.requires_grad):
        return torch.ops.skillkern.maxsim_fwd_triton(q, d, q_mask, d_mask, d_offsets, candidates, reduce == "mean")[0]
    return torch.ops.skillkern.maxsim_scores_triton(q, d, q_mask, d_mask, d_offsets, candidates, reduce == "mean")


def maxsim_topk(q: Tensor, d: Tensor, k: int, q_mask: Optional[Tensor] = None, d_mask: Optional[Tensor] = None, *,
                d_offsets: Optional[Tensor] = None, reduce: str = "sum", chunk: Optional[int] = None,
                backend: str = "auto") -> tuple[Tensor, Tensor]:
    """The k best docs of every query under maxsim's scores, without holding the score matrix:
    docs are scored `chunk` at a time (default 8192) and merged into a running top-k on the
    device (no host sync per chunk), so at most Bq * (chunk + k) scores exist beyond the inputs.
    Returns values (Bq, k) float32, sorted descending, and indices (Bq, k) int64; ties go to the
    lower doc index. k > the number of docs is a ValueError. Arguments as in maxsim."""
    _check("maxsim_topk", q, d, q_mask, d_mask, d_offsets, reduce)
    n_docs = _num_docs(d, d_offsets)
    expect(isinstance(k, int) and not isinstance(k, bool), "maxsim_topk", "k", f"must be an int, got {type(k).__name__}",
           TypeError)
    expect(0 <= k <= n_docs, "maxsim_topk", "k", f"must be in [0, {n_docs}] (the number of docs), got {k}")
    chunk = _DEFAULT_CHUNK if chunk is None else chunk
    expect(isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1, "maxsim_topk", "chunk",
           f"must be a positive int (docs per step) or None, got {chunk!r}")
    if _which("maxsim_topk", backend, q) == "torch":
        return torch.ops.skillkern.maxsim_topk_torch(q, d, k, q_mask, d_mask, d_offsets, reduce == "mean", chunk)
    return torch.ops.skillkern.maxsim_topk_triton(q, d, k, q_mask, d_mask, d_offsets, reduce == "mean", chunk)
