"""Launchers of the FILIP token-similarity Triton kernels (kernels.py). Imports nothing of op.py:
the caller (op.py) passes the dtypes of the arg-max indices, which its fake kernel declares too.

Roles: the kernels loop over the tokens of one side (any number) and hold whole items of the
other, padded to a power of two of at most _MAX_HELD tokens. The side held is the text side
unless the image side pads better (e.g. Ni = 12, Nt = 77) or only the image side fits; then the
launchers run the same kernels with the roles exchanged. The arg-max state (kernels.py: R, C)
keeps the layout of the orientation it was made in: state_shapes gives its shapes, and
logical_indices (Bi, Bt, N) views of it.
"""
from __future__ import annotations

import torch
import triton

from skillkern.ops._common import dot_precision, expect, tma_ok
from skillkern.ops.token_similarity import kernels as K

_MAX_HELD = 256  # tokens per item of the side a program holds whole (the tile's columns)
_BLOCK_I = 64  # items of the looped side per program: the wgmma M
_RESIDENT_BYTES = 64 * 1024  # the held tile stays in shared memory over the loop up to this size
_K_STEP = 64  # the backward GEMMs' K per step: the one-hot tile built in registers is 128 x _K_STEP


def _pad(n: int) -> int:
    return triton.next_power_of_2(max(n, 1))


def swap_roles(Ni: int, Nt: int) -> bool:
    """Hold the image side instead of the text side (see the module docstring); raises when
    neither side has at most _MAX_HELD tokens per item. Without tokens on a side: no exchange."""
    if Ni == 0 or Nt == 0:
        return False
    fits_t, fits_i = _pad(Nt) <= _MAX_HELD, _pad(Ni) <= _MAX_HELD
    expect(fits_t or fits_i, "token_similarity", "txt",
           f"has Nt={Nt} and img has Ni={Ni} tokens per item; the Triton kernels need one side with at most "
           f"{_MAX_HELD} (the other may be any length). Use backend='torch' (or 'cuda')")
    if not fits_t:
        return True
    return fits_i and Ni / _pad(Ni) > Nt / _pad(Nt)


def state_shapes(Bi: int, Ni: int, Bt: int, Nt: int) -> tuple[tuple, tuple]:
    """Shapes of the forward's row_idx (which text token each image token matched) and col_idx
    (which image token each text token matched): R (Bi, Ni, Bt) and C (Bi, Bt, Nt), or, where
    the roles are exchanged, the C and R of the exchanged call: (Bt, Bi, Ni) and (Bt, Nt, Bi)."""
    if swap_roles(Ni, Nt):
        return (Bt, Bi, Ni), (Bt, Nt, Bi)
    return (Bi, Ni, Bt), (Bi, Bt, Nt)


def logical_indices(row_idx, col_idx, Ni: int, Nt: int):
    """The forward's state as (Bi, Bt, Ni) and (Bi, Bt, Nt) views (for tests and inspection)."""
    if swap_roles(Ni, Nt):
        return row_idx.permute(1, 0, 2), col_idx.permute(2, 0, 1)
    return row_idx.permute(0, 2, 1), col_idx


def _fwd_tiles(Nt: int, D: int, elt: int) -> dict:
    """128 columns (whole texts, or one text of 256 tokens) per program over 8 warps, whether
    the text tile stays resident over all of D, and the D block."""
    nt_pad = _pad(Nt)
    block_t = max(128 // nt_pad, 1)
    d_pad = max(16, _pad(D))
    resident = block_t * nt_pad * d_pad * elt <= _RESIDENT_BYTES
    return dict(BLOCK_I=_BLOCK_I, BLOCK_T=block_t, NT_PAD=nt_pad, RESIDENT=resident,
                BLOCK_D=d_pad if resident else 64, num_warps=8, num_stages=2)


def _bwd_tiles(Nt: int, D: int) -> tuple[dict, dict]:
    """d_img: 128 images at one token per program, text tokens K_STEP at a time; d_txt: 128
    rows of whole texts (or 128-token chunks of one), images K_STEP at a time. Both cover D in
    blocks of up to 256: one 128 x 256 fp32 accumulator over 8 warps."""
    nt_pad = _pad(Nt)
    l_chunk = min(nt_pad, _K_STEP)
    block_d = max(16, min(256, _pad(D)))
    img = dict(BLOCK_I=128, BLOCK_T=max(_K_STEP // nt_pad, 1), L_CHUNK=l_chunk, NT_PAD=nt_pad, BLOCK_D=block_d,
               num_warps=8, num_stages=2)
    lt = min(nt_pad, 128)
    txt = dict(BLOCK_I=_K_STEP, BLOCK_T=128 // lt, L_CHUNK=lt, BLOCK_D=block_d, num_warps=8, num_stages=2)
    return img, txt


def _rows_by_tma(img, block_d: int) -> bool:
    """The kernels may fetch img's token rows by TMA (kernels._token_rows_desc): one block covers
    D, tokens are D apart, and the descriptor's alignment rules hold."""
    return block_d == img.shape[2] == img.stride(1) and tma_ok(img)


def _counts(mask, B: int, N: int, device) -> torch.Tensor:
    """Real tokens per item, fp32 (B,)."""
    if mask is None:
        return torch.full((B,), float(N), dtype=torch.float32, device=device)
    return mask.sum(1, dtype=torch.float32)


def _mask_arg(mask, like):
    """(pointer tensor, row stride, present): bool masks are read as uint8."""
    if mask is None:
        return like, 0, False
    m = mask.contiguous().view(torch.uint8)
    return m, m.stride(0), True


def _launch_fwd(img, txt, img_mask, txt_mask, i2t, t2i, R, C):
    """Kernel launch in one orientation (img looped, txt held)."""
    Bi, Ni, D = img.shape
    Bt, Nt, _ = txt.shape
    t = _fwd_tiles(Nt, D, img.element_size())
    im, s_im, has_im = _mask_arg(img_mask, img)
    tm, s_tm, has_tm = _mask_arg(txt_mask, txt)
    n_img, n_txt = _counts(img_mask, Bi, Ni, img.device), _counts(txt_mask, Bt, Nt, img.device)
    text_pad = has_tm or Nt < t["NT_PAD"] or Bt % t["BLOCK_T"] != 0
    use_tma = t["RESIDENT"] and _rows_by_tma(img, t["BLOCK_D"])
    grid = (triton.cdiv(Bi, t["BLOCK_I"]), triton.cdiv(Bt, t["BLOCK_T"]))
    K._filip_fwd_kernel[grid](
        img, txt, im, tm, n_img, n_txt, i2t, t2i, R, C, Bi, Bt, Ni, Nt, D,
        img.stride(0), img.stride(1), txt.stride(0), txt.stride(1), s_im, s_tm,
        HAS_IMASK=has_im, HAS_TMASK=has_tm, TEXT_PAD=text_pad, USE_TMA=use_tma, PRECISION=dot_precision(img.dtype),
        **t)


def token_similarity_fwd(img, txt, img_mask, txt_mask, row_dtype: torch.dtype, col_dtype: torch.dtype):
    """Returns i2t, t2i (Bi, Bt) fp32 and the arg-max state row_idx of row_dtype and col_idx of
    col_dtype, shaped as state_shapes says."""
    img, txt = img.contiguous(), txt.contiguous()
    Bi, Ni, D = img.shape
    Bt, Nt, _ = txt.shape
    dev = img.device
    # Ni = 0 or Nt = 0: no item has a real token, so every pair scores 0 (and the indices,
    # never read, are zeros rather than garbage)
    alloc = torch.zeros if Ni == 0 or Nt == 0 else torch.empty
    i2t = alloc(Bi, Bt, dtype=torch.float32, device=dev)
    t2i = alloc(Bi, Bt, dtype=torch.float32, device=dev)
    r_shape, c_shape = state_shapes(Bi, Ni, Bt, Nt)
    R = alloc(r_shape, dtype=row_dtype, device=dev)
    C = alloc(c_shape, dtype=col_dtype, device=dev)
    if Bi * Bt * Ni * Nt:
        if swap_roles(Ni, Nt):
            t2i_s = torch.empty(Bt, Bi, dtype=torch.float32, device=dev)
            i2t_s = torch.empty(Bt, Bi, dtype=torch.float32, device=dev)
            _launch_fwd(txt, img, txt_mask, img_mask, t2i_s, i2t_s, C, R)
            i2t.copy_(i2t_s.t())
            t2i.copy_(t2i_s.t())
        else:
            _launch_fwd(img, txt, img_mask, txt_mask, i2t, t2i, R, C)
    return i2t, t2i, R, C


def _launch_bwd(g_i2t, g_t2i, img, txt, img_mask, txt_mask, R, C, d_img, d_txt):
    """Both backward launches in one orientation (img looped, txt held)."""
    Bi, Ni, D = img.shape
    Bt, Nt, _ = txt.shape
    ti, tt = _bwd_tiles(Nt, D)
    im, s_im, has_im = _mask_arg(img_mask, img)
    tm, s_tm, has_tm = _mask_arg(txt_mask, txt)
    # per pair: the upstream gradients over the token counts, 0 where an item has no real token
    n_img, n_txt = _counts(img_mask, Bi, Ni, img.device), _counts(txt_mask, Bt, Nt, img.device)
    valid = (n_img[:, None] > 0) & (n_txt[None, :] > 0)
    ci = torch.where(valid, g_i2t / n_img.clamp(min=1)[:, None], 0.0).contiguous()
    ct = torch.where(valid, g_t2i / n_txt.clamp(min=1)[None, :], 0.0).contiguous()
    prec = dot_precision(img.dtype)
    n_d = triton.cdiv(D, ti["BLOCK_D"])
    K._filip_bwd_img_kernel[(triton.cdiv(Bi, ti["BLOCK_I"]), Ni, n_d)](
        ci, ct, R, C, im, tm, txt, d_img, Bi, Bt, Ni, Nt, D,
        txt.stride(0), txt.stride(1), d_img.stride(0), d_img.stride(1), s_im, s_tm,
        HAS_IMASK=has_im, HAS_TMASK=has_tm, PRECISION=prec, **ti)
    # image rows by TMA only without an image mask (padding rows, which may hold NaN, would meet
    # P's zeros in the MMA); else by masked loads, unpipelined (pipelining them spills)
    tma = not has_im and _rows_by_tma(img, tt["BLOCK_D"])
    K._filip_bwd_txt_kernel[(triton.cdiv(Bt, tt["BLOCK_T"]), triton.cdiv(Nt, tt["L_CHUNK"]), n_d)](
        ci, ct, R, C, im, tm, img, d_txt, Bi, Bt, Ni, Nt, D,
        img.stride(0), img.stride(1), d_txt.stride(0), d_txt.stride(1), s_im, s_tm,
        HAS_IMASK=has_im, HAS_TMASK=has_tm, USE_TMA=tma, PRECISION=prec, **dict(tt, num_stages=2 if tma else 1))


def token_similarity_bwd(g_i2t, g_t2i, img, txt, img_mask, txt_mask, R, C):
    """Returns d_img (Bi, Ni, D), d_txt (Bt, Nt, D) in the input dtype, from the forward's state."""
    img, txt = img.contiguous(), txt.contiguous()
    g_i2t, g_t2i = g_i2t.float().contiguous(), g_t2i.float().contiguous()
    Bi, Ni, D = img.shape
    Bt, Nt, _ = txt.shape
    d_img = torch.zeros_like(img)
    d_txt = torch.zeros_like(txt)
    if Bi * Bt * Ni * Nt * D == 0:  # no pair with a real token on both sides, or nothing to write
        return d_img, d_txt
    R, C = R.contiguous(), C.contiguous()
    if swap_roles(Ni, Nt):
        _launch_bwd(g_t2i.t().contiguous(), g_i2t.t().contiguous(), txt, img, txt_mask, img_mask, C, R,
                    d_txt, d_img)
    else:
        _launch_bwd(g_i2t, g_t2i, img, txt, img_mask, txt_mask, R, C, d_img, d_txt)
    return d_img, d_txt
