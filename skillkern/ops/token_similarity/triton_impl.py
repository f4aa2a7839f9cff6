"""Launchers of the FILIP token-similarity Triton kernels (kernels.py). Imports nothing of op.py:
the caller (op.py) passes the dtypes of the arg-max indices, which its fake kernel declares too."""
from __future__ import annotations

import torch
import triton

from skillkern.ops._common import dot_precision, expect
from skillkern.ops.token_similarity import kernels as K

_MAX_NT_PAD = 512  # a program holds all (padded) tokens of its texts; image tokens are chunked
_TILE = 8192  # fp32 elements of the similarity tile (BLOCK_I*NI_CHUNK x BLOCK_T*NT_PAD) per program


def _tiles(Ni: int, Nt: int, D: int) -> dict:
    """Items per program, image-token chunk and padded text length. The tile S is
    (BLOCK_I*NI_CHUNK, BLOCK_T*NT_PAD): tl.dot needs both >= 16; ~64 x 128 keeps the fp32 tile
    and its 4-d reductions in registers (Ni=50, Nt=32: 1 image x 4 texts, one chunk of 64;
    Ni=12: 4 x 4; Ni=257: 1 x 4 in 5 chunks of 64)."""
    nt_pad = triton.next_power_of_2(Nt)
    expect(nt_pad <= _MAX_NT_PAD, "token_similarity", "txt",
           f"has Nt={Nt} tokens per item; the Triton kernels take up to {_MAX_NT_PAD} text tokens "
           "(image tokens: any number). Swap the roles - token_similarity(txt, img, txt_mask, img_mask) "
           "returns (t2i.T, i2t.T) - or use backend='torch'")
    block_t = max(128 // nt_pad, 16 // nt_pad, 1)
    n = block_t * nt_pad
    m_budget = max(16, min(64, _TILE // n))
    ni_chunk = min(triton.next_power_of_2(Ni), m_budget)
    block_i = max(m_budget // ni_chunk, 1)
    block_d = max(16, min(64, triton.next_power_of_2(D)))
    return dict(BLOCK_I=block_i, NI_CHUNK=ni_chunk, BLOCK_T=block_t, NT_PAD=nt_pad, BLOCK_D=block_d,
                num_warps=8 if block_i * ni_chunk * n > 8192 else 4)


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


def token_similarity_fwd(img, txt, img_mask, txt_mask, row_dtype: torch.dtype, col_dtype: torch.dtype):
    """Returns i2t, t2i (Bi, Bt) fp32 and row_idx (Bi, Bt, Ni) of row_dtype, col_idx (Bi, Bt, Nt)
    of col_dtype."""
    img, txt = img.contiguous(), txt.contiguous()
    Bi, Ni, D = img.shape
    Bt, Nt, _ = txt.shape
    dev = img.device
    # Ni = 0 or Nt = 0: no item has a real token, so every pair scores 0 (and the indices,
    # never read, are zeros rather than garbage)
    alloc = torch.zeros if Ni == 0 or Nt == 0 else torch.empty
    i2t = alloc(Bi, Bt, dtype=torch.float32, device=dev)
    t2i = alloc(Bi, Bt, dtype=torch.float32, device=dev)
    row_idx = alloc(Bi, Bt, Ni, dtype=row_dtype, device=dev)
    col_idx = alloc(Bi, Bt, Nt, dtype=col_dtype, device=dev)
    if Bi * Bt * Ni * Nt == 0:
        return i2t, t2i, row_idx, col_idx
    t = _tiles(Ni, Nt, D)
    im, s_im, has_im = _mask_arg(img_mask, img)
    tm, s_tm, has_tm = _mask_arg(txt_mask, txt)
    n_img, n_txt = _counts(img_mask, Bi, Ni, dev), _counts(txt_mask, Bt, Nt, dev)
    grid = (triton.cdiv(Bi, t["BLOCK_I"]), triton.cdiv(Bt, t["BLOCK_T"]))
    K._filip_fwd_kernel[grid](
        img, txt, im, tm, n_img, n_txt, i2t, t2i, row_idx, col_idx, Bi, Bt, Ni, Nt, D,
        img.stride(0), img.stride(1), txt.stride(0), txt.stride(1), s_im, s_tm,
        HAS_IMASK=has_im, HAS_TMASK=has_tm, PRECISION=dot_precision(img.dtype), num_stages=2, **t)
    return i2t, t2i, row_idx, col_idx


def token_similarity_bwd(g_i2t, g_t2i, img, txt, img_mask, txt_mask, row_idx, col_idx):
    """Returns d_img (Bi, Ni, D), d_txt (Bt, Nt, D) in the input dtype."""
    img, txt = img.contiguous(), txt.contiguous()
    g_i2t, g_t2i = g_i2t.float().contiguous(), g_t2i.float().contiguous()
    Bi, Ni, D = img.shape
    Bt, Nt, _ = txt.shape
    d_img = torch.zeros_like(img)
    d_txt = torch.zeros_like(txt)
    if Bi * Bt * Ni * Nt * D == 0:  # no pair with a real token on both sides, or nothing to write
        return d_img, d_txt
    t = _tiles(Ni, Nt, D)
    im, s_im, has_im = _mask_arg(img_mask, img)
    tm, s_tm, has_tm = _mask_arg(txt_mask, txt)
    n_img, n_txt = _counts(img_mask, Bi, Ni, img.device), _counts(txt_mask, Bt, Nt, img.device)
    n_d = triton.cdiv(D, t["BLOCK_D"])
    img_programs = triton.cdiv(Bi, t["BLOCK_I"]) * triton.cdiv(Ni, t["NI_CHUNK"])
    for for_img, src, out, n_programs in ((True, txt, d_img, img_programs),
                                          (False, img, d_txt, triton.cdiv(Bt, t["BLOCK_T"]))):
        K._filip_bwd_kernel[(n_programs, n_d)](
            g_i2t, g_t2i, row_idx, col_idx, im, tm, n_img, n_txt, src, out, Bi, Bt, Ni, Nt, D,
            src.stride(0), src.stride(1), out.stride(0), out.stride(1), s_im, s_tm,
            FOR_IMG=for_img, HAS_IMASK=has_im, HAS_TMASK=has_tm, PRECISION=dot_precision(img.dtype),
            num_stages=2, **t)
    return d_img, d_txt
