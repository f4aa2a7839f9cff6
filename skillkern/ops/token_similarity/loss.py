"""FILIP contrastive loss on token-wise similarities: filip_loss, the functional layer over
token_similarity (FILIPLoss, its nn.Module, is in module.py).

    loss = 1/2 * ( CE(s * i2t, arange(B)) + CE(s * t2i^T, arange(B)) )

with (i2t, t2i) = token_similarity(img, txt, ...) over a paired batch (image a goes with text a)
and s = logit_scale. With a process group the batch is split over ranks: each rank scores its
B_l local rows against all B_g = W * B_l columns in both directions, 2 * B_l * B_g pairs per
rank (never the B_g x B_g matrix), and the collectives make the value and the gradients those
of the loss on the whole batch (see filip_loss for the exact semantics).
"""
from __future__ import annotations

import functools
import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from skillkern.ops._common import expect
from skillkern.ops.token_similarity.op import token_similarity

_expect = functools.partial(expect, where="filip_loss")


def _is_real(x) -> bool:
    """A Python real number (bool excluded: True is no temperature)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_scalars(logit_scale, label_smoothing) -> None:
    if isinstance(logit_scale, Tensor):
        _expect(logit_scale.dim() == 0, name="logit_scale",
                msg=f"must be a float or a 0-dim Tensor, got shape {tuple(logit_scale.shape)}")
        _expect(logit_scale.is_floating_point(), name="logit_scale",
                msg=f"must be a floating-point Tensor, got {logit_scale.dtype}")
    else:
        _expect(_is_real(logit_scale), name="logit_scale", kind=TypeError,
                msg=f"must be a float or a 0-dim Tensor, got {type(logit_scale).__name__}")
    _expect(_is_real(label_smoothing), name="label_smoothing", kind=TypeError,
            msg=f"must be a float in [0, 1), got {type(label_smoothing).__name__}")
    _expect(0.0 <= label_smoothing < 1.0, name="label_smoothing",
            msg=f"must be in [0, 1), got {label_smoothing!r}")


def _check_features(img, txt) -> None:
    # only what the metadata exchange needs; token_similarity checks the rest
    for name, t in (("img", img), ("txt", txt)):
        _expect(isinstance(t, Tensor), name=name, kind=TypeError,
                msg=f"must be a (B, N, D) Tensor, got {type(t).__name__}")
        _expect(t.dim() == 3, name=name, msg=f"must be a (B, N, D) Tensor, got shape {tuple(t.shape)}")


def _check_batch(b_img: int, b_txt: int, rank: Optional[int] = None) -> None:
    on = "" if rank is None else f" on rank {rank}"
    _expect(b_img == b_txt, name="txt", msg=f"has batch {b_txt}{on} but img has {b_img}: filip_loss needs "
            "paired batches (text a goes with image a)")
    # CE's mean over no row is 0/0 (PyTorch returns NaN): no loss value or gradient is right
    _expect(b_img > 0, name="img", msg=f"holds no item{on} (batch size 0): a contrastive loss over an "
            "empty batch is undefined; skip the step")


def _ce_sum(logits: Tensor, labels: Tensor, label_smoothing: float) -> Tensor:
    """Sum over rows of the (smoothed) cross entropy; callers divide by the global batch."""
    return F.cross_entropy(logits, labels, reduction="sum", label_smoothing=label_smoothing)


# ----------------------------------------------------------------------------- collectives


class _AllGatherWithGrad(torch.autograd.Function):
    """x: (B_l, ...) on each rank -> (W * B_l, ...), rank-ordered. Backward: every rank's loss
    term may use every rank's rows, so the gradient of this rank's rows is the sum over ranks
    of their gradients w.r.t. the gathered tensor (all_reduce SUM, then this rank's slice;
    all_reduce rather than reduce_scatter because gloo has no reduce_scatter)."""

    @staticmethod
    def forward(ctx, x: Tensor, group, world: int, rank: int) -> Tensor:
        ctx.group, ctx.rank, ctx.rows = group, rank, x.shape[0]
        parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(world)]
        torch.distributed.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, g: Tensor):
        g = g.contiguous().clone()  # all_reduce writes in place; autograd may share g
        torch.distributed.all_reduce(g, op=torch.distributed.ReduceOp.SUM, group=ctx.group)
        return g[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None, None


class _ShareGrad(torch.autograd.Function):
    """Identity on a replicated scalar (logit_scale). Backward: the average over ranks of its
    partial gradients, so every rank holds the same value, and the values still sum over ranks
    to the whole-batch gradient (see filip_loss)."""

    @staticmethod
    def forward(ctx, s: Tensor, group, world: int) -> Tensor:
        ctx.group, ctx.world = group, world
        return s.clone()

    @staticmethod
    def backward(ctx, g: Tensor):
        g = g.contiguous().clone()
        torch.distributed.all_reduce(g, op=torch.distributed.ReduceOp.SUM, group=ctx.group)
        return g / ctx.world, None, None


def _gather_masks(mask: Optional[Tensor], like: Tensor, any_mask: bool, group, world: int):
    """All-gather a bool mask (no gradient); a rank without one sends all-True. uint8 on the
    wire: not every backend reduces or gathers bool."""
    if not any_mask:
        return None
    if mask is None:
        mask = torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    m = mask.to(torch.uint8).contiguous()
    parts = [torch.empty_like(m) for _ in range(world)]
    torch.distributed.all_gather(parts, m, group=group)
    return torch.cat(parts).bool()


def _exchange_shapes(img, txt, img_mask, txt_mask, group, world: int) -> list[list[int]]:
    """Every rank's (Bi, Ni, Bt, Nt, D, has img_mask, has txt_mask), so that all ranks see the
    same shape errors and raise together instead of hanging in a later collective."""
    meta = torch.tensor([img.shape[0], img.shape[1], txt.shape[0], txt.shape[1], img.shape[2],
                         img_mask is not None, txt_mask is not None], dtype=torch.int64, device=img.device)
    parts = [torch.empty_like(meta) for _ in range(world)]
    torch.distributed.all_gather(parts, meta, group=group)
    return torch.stack(parts).tolist()  # the one host sync of the distributed path


def _check_ranks(meta: list[list[int]]) -> None:
    for r, (bi, _, bt, _, _, _, _) in enumerate(meta):  # every rank sees every rank's error
        _check_batch(bi, bt, r)
    for col, name, what in ((0, "img", "batch size"), (1, "img", "tokens per item (Ni)"),
                            (3, "txt", "tokens per item (Nt)"), (4, "img", "feature size (D)")):
        vals = [m[col] for m in meta]
        _expect(len(set(vals)) == 1, name=name, msg=f"must have the same {what} on every rank of the process "
                f"group (all_gather needs equal shapes; pad or drop the last batch), got {vals} by rank")


# ----------------------------------------------------------------------------- functional


def filip_loss(img: Tensor, txt: Tensor, img_mask: Optional[Tensor] = None, txt_mask: Optional[Tensor] = None,
               logit_scale=1.0, *, label_smoothing: float = 0.0, process_group=None,
               backend: str = "auto") -> Tensor:
    """FILIP's symmetric contrastive loss on token-wise late-interaction similarities.

        loss = 1/2 * ( CE(s * i2t, arange(B)) + CE(s * t2i^T, arange(B)) ),  s = logit_scale

    (i2t, t2i) = skillkern.token_similarity(img, txt, img_mask, txt_mask, backend=backend);
    CE is F.cross_entropy (mean over rows) with `label_smoothing`.

    img: (B, Ni, D), txt: (B, Nt, D): a paired batch (image a goes with text a), L2-normalised
    as FILIP does. img_mask / txt_mask: bool (B, Ni) / (B, Nt), True = real token, or None.
    logit_scale: a float, or a 0-dim floating-point Tensor (it gets a gradient if it requires
    one). label_smoothing: in [0, 1). Returns a float32 scalar, differentiable w.r.t. img, txt
    and logit_scale. B = 0 raises a ValueError naming `img` (the mean over no row is undefined);
    padding tokens (even NaN or inf) reach neither the value nor a gradient.

    process_group: None (the default) = no distribution, even when torch.distributed is
    initialised. Given a group of W ranks (any torch.distributed backend), each rank passes its
    local slice of the batch (the same B_l, Ni, Nt, D on every rank; masks may be None on some
    ranks). The global batch is the rank-ordered concatenation (rank r holds items
    r*B_l .. (r+1)*B_l - 1). img, txt and masks are all-gathered (features with gradient);
    each rank scores its own images against all texts and all images against its own texts:
    2 * B_l * B_g pairs, never B_g x B_g. Semantics:

    * value: on every rank, the single-process loss of the whole batch (up to float rounding).
    * gradient w.r.t. this rank's img and txt: exactly its slice of the single-process
      gradient. What is backpropagated locally is this rank's share of the loss (its rows'
      CE sums / B_g); the gathers' backward sums the ranks' contributions.
    * gradient w.r.t. a tensor logit_scale: the single-process gradient divided by W, the same
      on every rank. logit_scale is replicated, like the weights of the model that made img
      and txt; for all replicated tensors the per-rank gradients sum over ranks to the
      single-process gradient (the weights' shares differ by rank, logit_scale's are equal so
      its replicas stay identical even outside DDP).
    * backward is collective: every rank must call it, and img, txt and logit_scale must
      require grad alike on every rank. A tensor logit_scale that requires grad must be on
      img's device (its gradient is all-reduced with the features').

    DDP / FSDP: they average gradients over ranks, i.e. divide the sum by W, so the model
    weights (and logit_scale, if inside the wrapped module) would get 1/W of the gradient of
    the whole-batch loss. Backpropagate `loss * W` (W = the group's world size) to get exactly
    the single-process gradient for every parameter, logit_scale included; backpropagating
    `loss` gives all of them 1/W of it (a uniform factor an optimiser like Adam nearly ignores,
    but SGD sees as a learning rate / W). A logit_scale kept outside the wrapper is not
    averaged: it gets the single-process gradient / W from `loss`, the gradient from `loss * W`.
    """
    _check_features(img, txt)
    _check_scalars(logit_scale, label_smoothing)
    label_smoothing = float(label_smoothing)
    if process_group is None:
        _check_batch(img.shape[0], txt.shape[0])
        i2t, t2i = token_similarity(img, txt, img_mask, txt_mask, backend=backend)
        B = i2t.shape[0]
        labels = torch.arange(B, device=i2t.device)
        return 0.5 * (_ce_sum(logit_scale * i2t, labels, label_smoothing)
                      + _ce_sum(logit_scale * t2i.t(), labels, label_smoothing)) / B
    return _filip_loss_distributed(img, txt, img_mask, txt_mask, logit_scale, label_smoothing,
                                   process_group, backend)


def _filip_loss_distributed(img, txt, img_mask, txt_mask, logit_scale, label_smoothing, group, backend):
    dist = torch.distributed
    _expect(dist.is_available() and isinstance(group, dist.ProcessGroup), name="process_group", kind=TypeError,
            msg=f"must be None or a torch.distributed ProcessGroup, got {type(group).__name__}")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    meta = _exchange_shapes(img, txt, img_mask, txt_mask, group, world)
    _check_ranks(meta)
    B_l = img.shape[0]
    B_g = world * B_l

    img_all = _AllGatherWithGrad.apply(img, group, world, rank)
    txt_all = _AllGatherWithGrad.apply(txt, group, world, rank)
    img_mask_all = _gather_masks(img_mask, img, any(m[5] for m in meta), group, world)
    txt_mask_all = _gather_masks(txt_mask, txt, any(m[6] for m in meta), group, world)
    if img_mask_all is not None and img_mask is None:
        img_mask = img_mask_all[rank * B_l:(rank + 1) * B_l]
    if txt_mask_all is not None and txt_mask is None:
        txt_mask = txt_mask_all[rank * B_l:(rank + 1) * B_l]

    s = logit_scale
    if isinstance(s, Tensor) and s.requires_grad and torch.is_grad_enabled():
        _expect(s.device == img.device, name="logit_scale", msg=f"is on {s.device} but img is on {img.device}: "
                "with a process group its gradient is all-reduced alongside the features'")
        s = _ShareGrad.apply(s, group, world)

    # local images x all texts: rows rank*B_l.. of the global i2t; all images x local texts:
    # columns of the global t2i, i.e. rows of t2i^T. The unused half of each output is free
    # (the op computes both directions in one pass) and gets no gradient.
    i2t_rows = token_similarity(img, txt_all, img_mask, txt_mask_all, backend=backend)[0]   # (B_l, B_g)
    t2i_rows = token_similarity(img_all, txt, img_mask_all, txt_mask, backend=backend)[1].t()  # (B_l, B_g)
    labels = rank * B_l + torch.arange(B_l, device=i2t_rows.device)
    share = 0.5 * (_ce_sum(s * i2t_rows, labels, label_smoothing)
                   + _ce_sum(s * t2i_rows, labels, label_smoothing)) / B_g

    total = share.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    # value: the whole-batch loss on every rank; gradient: that of this rank's share
    return total + (share - share.detach())
