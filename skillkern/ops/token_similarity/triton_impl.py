"""Launchers of the FILIP token-similarity Triton kernels (kernels.py)."""
from __future__ import annotations

import torch
import triton

from skillkern.ops.token_similarity import kernels as K

_MAX_PAIR_TILE = 32768  # NI_PAD * NT_PAD: one pair's similarity tile must fit a program (fp32 regs)


def _precision(dtype: torch.dtype) -> str:
    """fp32 follows torch's matmul precision setting; 16-bit inputs use tensor cores."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _tiles(Ni: int, Nt: int, D: int) -> dict:
    """Items per program and padded token counts. The tile S is (BLOCK_I*NI_PAD, BLOCK_T*NT_PAD):
    tl.dot needs both >= 16; ~64 x 128 keeps the fp32 tile and its 4-d reductions in registers
    (Ni=50, Nt=32: 1 image x 4 texts; Ni=12: 4 x 4)."""
    ni_pad, nt_pad = triton.next_power_of_2(Ni), triton.next_power_of_2(Nt)
    if ni_pad * nt_pad > _MAX_PAIR_TILE:
        raise ValueError(
            f"token_similarity (triton): Ni={Ni}, Nt={Nt} pad to a {ni_pad} x {nt_pad} tile per pair, "
            f"over the {_MAX_PAIR_TILE} a program holds; use backend='torch' for such long items")
    block_i = max(64 // ni_pad, 16 // ni_pad, 1)
    block_t = max(min(128 // nt_pad, 8192 // (block_i * ni_pad * nt_pad)), 16 // nt_pad, 1)
    block_d = max(16, min(64, triton.next_power_of_2(D)))
    m, n = block_i * ni_pad, block_t * nt_pad
    return dict(BLOCK_I=block_i, NI_PAD=ni_pad, BLOCK_T=block_t, NT_PAD=nt_pad, BLOCK_D=block_d,
                num_warps=8 if m * n > 8192 else 4)


def _mask_arg(mask, like):
    """(pointer tensor, row stride, present): bool masks are read as uint8."""
    if mask is None:
        return like, 0, False
    m = mask.contiguous().view(torch.uint8)
    return m, m.stride(0), True


def token_similarity_fwd(img, txt, img_mask, txt_mask):
    """Returns i2t, t2i (Bi, Bt) fp32 and row_idx (Bi, Bt, Ni), col_idx (Bi, Bt, Nt)."""
    from skillkern.ops.token_similarity.op import index_dtype

    img, txt = img.contiguous(), txt.contiguous()
    Bi, Ni, D = img.shape
    Bt, Nt, _ = txt.shape
    dev = img.device
    i2t = torch.empty(Bi, Bt, dtype=torch.float32, device=dev)
    t2i = torch.empty(Bi, Bt, dtype=torch.float32, device=dev)
    row_idx = torch.empty(Bi, Bt, Ni, dtype=index_dtype(Nt), device=dev)
    col_idx = torch.empty(Bi, Bt, Nt, dtype=index_dtype(Ni), device=dev)
    if i2t.numel() == 0:
        return i2t, t2i, row_idx, col_idx
    t = _tiles(Ni, Nt, D)
    im, s_im, has_im = _mask_arg(img_mask, img)
    tm, s_tm, has_tm = _mask_arg(txt_mask, txt)
    grid = (triton.cdiv(Bi, t["BLOCK_I"]), triton.cdiv(Bt, t["BLOCK_T"]))
    K._filip_fwd_kernel[grid](
        img, txt, im, tm, i2t, t2i, row_idx, col_idx, Bi, Bt, Ni, Nt, D,
        img.stride(0), img.stride(1), txt.stride(0), txt.stride(1), s_im, s_tm,
        HAS_IMASK=has_im, HAS_TMASK=has_tm, PRECISION=_precision(img.dtype), num_stages=2, **t)
    return i2t, t2i, row_idx, col_idx


def token_similarity_bwd(g_i2t, g_t2i, img, txt, img_mask, txt_mask, row_idx, col_idx):
    """Returns d_img (Bi, Ni, D), d_txt (Bt, Nt, D) in the input dtype."""
    img, txt = img.contiguous(), txt.contiguous()
    g_i2t, g_t2i = g_i2t.float().contiguous(), g_t2i.float().contiguous()
    Bi, Ni, D = img.shape
    Bt, Nt, _ = txt.shape
    d_img = torch.zeros_like(img)
    d_txt = torch.zeros_like(txt)
    if Bi * Bt == 0:
        return d_img, d_txt
    t = _tiles(Ni, Nt, D)
    im, s_im, has_im = _mask_arg(img_mask, img)
    tm, s_tm, has_tm = _mask_arg(txt_mask, txt)
    n_d = triton.cdiv(D, t["BLOCK_D"])
    for for_img, src, out, n_items, block in ((True, txt, d_img, Bi, t["BLOCK_I"]),
                                               (False, img, d_txt, Bt, t["BLOCK_T"])):
        K._filip_bwd_kernel[(triton.cdiv(n_items, block), n_d)](
            g_i2t, g_t2i, row_idx, col_idx, im, tm, src, out, Bi, Bt, Ni, Nt, D,
            src.stride(0), src.stride(1), out.stride(0), out.stride(1), s_im, s_tm,
            FOR_IMG=for_img, HAS_IMASK=has_im, HAS_TMASK=has_tm, PRECISION=_precision(img.dtype),
            num_stages=2, **t)
    return d_img, d_txt
