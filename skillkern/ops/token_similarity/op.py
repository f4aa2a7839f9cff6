"""skillkern.token_similarity: argument checks, backend choice, registered ops.

Ops in the skillkern:: namespace (custom_op + register_fake + register_autograd):
  skillkern::token_similarity_fwd(img, txt, img_mask?, txt_mask?) -> (i2t, t2i, row_idx, col_idx)
  skillkern::token_similarity_bwd(g_i2t, g_t2i, img, txt, img_mask?, txt_mask?, row_idx, col_idx)
      -> (d_img, d_txt)
and their native twins token_similarity_fwd_cuda / _bwd_cuda (csrc/token_similarity/: schemas in
csrc/ops.cpp, CUDA and Meta kernels in C++; autograd registered here once the library loads).

State kept for backward: the arg-max indices, row_idx = which text token each image token
matched and col_idx = which image token each text token matched, laid out for each backend's
kernels: for Triton as triton_impl.state_shapes says (kernels.py: R, C; logical_indices gives
(Bi, Bt, Ni) / (Bi, Bt, Nt) views), (Bi, Bt, Ni) and (Bi, Bt, Nt) for CUDA. As uint8
when Ni, Nt <= 256 (int16 up to 32768, else int32): 82 bytes per pair at Ni=50, Nt=32 (86 MB at
Bi = Bt = 1024). They turn the backward into two GEMMs with one-hot coefficient tiles, instead of
a third GEMM that recomputes the similarities or Bi*Bt*Ni*Nt stored values (3.4 GB there).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from skillkern import _backend
from skillkern.ops._common import FLOAT_DTYPES, expect, register_autograd_pair
from skillkern.ops.token_similarity.reference import token_similarity_ref


def _check(img, txt, img_mask, txt_mask):
    op = "token_similarity"
    for name, t in (("img", img), ("txt", txt)):
        expect(isinstance(t, Tensor), op, name, f"must be a Tensor, got {type(t).__name__}", TypeError)
        expect(t.dim() == 3, op, name, f"must have shape (B, N, D), got {tuple(t.shape)}")
        expect(t.dtype in FLOAT_DTYPES, op, name, f"must be float32, float16 or bfloat16, got {t.dtype}")
    expect(txt.dtype == img.dtype, op, "txt", f"has dtype {txt.dtype} but img has {img.dtype}")
    expect(txt.device == img.device, op, "txt", f"is on {txt.device} but img is on {img.device}")
    expect(txt.shape[2] == img.shape[2], op, "txt",
           f"has feature size D={txt.shape[2]} but img has D={img.shape[2]}")
    for name, m, x in (("img_mask", img_mask, img), ("txt_mask", txt_mask, txt)):
        if m is None:
            continue
        expect(isinstance(m, Tensor), op, name, f"must be a bool Tensor or None, got {type(m).__name__}",
               TypeError)
        expect(m.dtype == torch.bool, op, name, f"must be a bool Tensor (True = real token), got {m.dtype}")
        expect(tuple(m.shape) == tuple(x.shape[:2]), op, name,
               f"must have shape {tuple(x.shape[:2])}, got {tuple(m.shape)}")
        expect(m.device == x.device, op, name, f"is on {m.device} but its features are on {x.device}")


# The CUDA kernels hold all tokens of one side's items in a tile of at most this many rows
# (kMaxRowTokens, csrc/token_similarity/token_similarity.h); the other side may be any length.
_CUDA_MAX_ROW_TOKENS = 512


def index_dtype(n: int) -> torch.dtype:
    """Smallest integer dtype that holds token indices 0..n-1."""
    return torch.uint8 if n <= 256 else torch.int16 if n <= 32768 else torch.int32


# ----------------------------------------------------------------------------- registered ops


@torch.library.custom_op("skillkern::token_similarity_fwd", mutates_args=())
def _fwd_op(img: Tensor, txt: Tensor, img_mask: Optional[Tensor], txt_mask: Optional[Tensor]
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from skillkern.ops.token_similarity import triton_impl
    return triton_impl.token_similarity_fwd(img, txt, img_mask, txt_mask,
                                            index_dtype(txt.shape[1]), index_dtype(img.shape[1]))


@_fwd_op.register_fake
def _(img, txt, img_mask, txt_mask):
    Bi, Ni, _ = img.shape
    Bt, Nt, _ = txt.shape
    from skillkern.ops.token_similarity.triton_impl import state_shapes
    r_shape, c_shape = state_shapes(Bi, Ni, Bt, Nt)
    return (img.new_empty(Bi, Bt, dtype=torch.float32), img.new_empty(Bi, Bt, dtype=torch.float32),
            img.new_empty(r_shape, dtype=index_dtype(Nt)), img.new_empty(c_shape, dtype=index_dtype(Ni)))


@torch.library.custom_op("skillkern::token_similarity_bwd", mutates_args=())
def _bwd_op(g_i2t: Tensor, g_t2i: Tensor, img: Tensor, txt: Tensor, img_mask: Optional[Tensor],
            txt_mask: Optional[Tensor], row_idx: Tensor, col_idx: Tensor) -> tuple[Tensor, Tensor]:
    from skillkern.ops.token_similarity import triton_impl
    return triton_impl.token_similarity_bwd(g_i2t, g_t2i, img, txt, img_mask, txt_mask, row_idx, col_idx)


@_bwd_op.register_fake
def _(g_i2t, g_t2i, img, txt, img_mask, txt_mask, row_idx, col_idx):
    return img.new_empty(img.shape), txt.new_empty(txt.shape)


def _setup_context(ctx, inputs, output):
    img, txt, img_mask, txt_mask = inputs
    _, _, row_idx, col_idx = output
    ctx.save_for_backward(img, txt, img_mask, txt_mask, row_idx, col_idx)


def _make_backward(bwd_name: str):
    """The backward of a forward op (Triton or CUDA): torch.ops.skillkern.<bwd_name>."""

    def backward(ctx, g_i2t, g_t2i, _g_row, _g_col):
        img, txt, img_mask, txt_mask, row_idx, col_idx = ctx.saved_tensors
        if g_i2t is None:
            g_i2t = torch.zeros(row_idx.shape[:2], dtype=torch.float32, device=img.device)
        if g_t2i is None:
            g_t2i = torch.zeros(row_idx.shape[:2], dtype=torch.float32, device=img.device)
        d_img, d_txt = getattr(torch.ops.skillkern, bwd_name)(
            g_i2t, g_t2i, img, txt, img_mask, txt_mask, row_idx, col_idx)
        return d_img, d_txt, None, None

    return backward


# The C++ ops' fake kernels are their Meta kernels (csrc/token_similarity/host.cpp).
register_autograd_pair("token_similarity", _make_backward, _setup_context)


# ----------------------------------------------------------------------------- public API


def token_similarity(img: Tensor, txt: Tensor, img_mask: Optional[Tensor] = None,
                     txt_mask: Optional[Tensor] = None, *, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """FILIP late interaction of every image with every text, both directions in one pass.

        i2t[a, b] = mean over real k of img a of  max over real l of txt b of <img[a,k], txt[b,l]>
        t2i[a, b] = mean over real l of txt b of  max over real k of img a of <img[a,k], txt[b,l]>

    img: (Bi, Ni, D), txt: (Bt, Nt, D), same float dtype and device (L2-normalise them first
    for FILIP). img_mask / txt_mask: bool (Bi, Ni) / (Bt, Nt), True = real token; None = all real.
    Returns (i2t, t2i), float32 (Bi, Bt); a pair where an item has no real token scores 0 (so
    does every pair when Ni = 0 or Nt = 0), and Bi = 0 or Bt = 0 gives empty outputs. Padding
    tokens never reach an output or a gradient, even when they hold NaN or inf.
    Differentiable w.r.t. img and txt: a max's gradient goes to its arg-max token, padding tokens
    get zero gradient. The fused backends never allocate Bi*Bt*Ni*Nt values. The Triton kernels
    take any counts as long as one side has at most 256 tokens per item (they hold that side
    whole); the CUDA kernels, as long as one side has at most 512.
    """
    _check(img, txt, img_mask, txt_mask)
    which = _backend.resolve("token_similarity", backend, img.device)
    if which == "torch":
        i2t, t2i = token_similarity_ref(img, txt, img_mask, txt_mask)
        return i2t.float(), t2i.float()
    if which == "cuda":  # resolve() loaded the extension and found the op in it
        Ni, Nt = img.shape[1], txt.shape[1]
        expect(min(Ni, Nt) <= _CUDA_MAX_ROW_TOKENS, "token_similarity", "txt",
               f"has Nt={Nt} and img has Ni={Ni} tokens per item; the CUDA kernels need one side with at "
               f"most {_CUDA_MAX_ROW_TOKENS} (the other may be any length). Use backend='torch'")
        i2t, t2i, _, _ = torch.ops.skillkern.token_similarity_fwd_cuda(img, txt, img_mask, txt_mask)
        return i2t, t2i
    i2t, t2i, _, _ = torch.ops.skillkern.token_similarity_fwd(img, txt, img_mask, txt_mask)
    return i2t, t2i
