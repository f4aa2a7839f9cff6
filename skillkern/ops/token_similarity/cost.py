"""The work of each FILIP token-similarity Triton kernel (FLOPs, HBM and L2 bytes, MMA-loop
steps) for `skillkern inspect`, derived from the launch's grid, tile sizes and what each program
of kernels.py loads, and the launcher calls of one op call (forward and backward) for a case.

Counting rules (as in skill_ffn/cost.py): flops are what the MMAs execute, so every tile counts
whole (the tail items of a block, padding tokens within NT_PAD and masked tokens included).
Bytes count what the masked loads and stores touch: the feature rows of padding tokens are never
read. hbm_bytes counts each tensor once, as if L2 kept every re-read; l2_bytes counts every load
and store of every program. The launch's arguments (masks included) are all it needs.

Names below are for the orientation a launch runs in (the launchers may exchange the roles):
the looped side "img" (Bi items, Ni tokens, Li real tokens), the held side "txt" (Bt, Nt, Lt);
row = D x the feature element size; R, C the arg-max indices (kernels.py).
"""
from __future__ import annotations

import torch
import triton

from skillkern.bench.roofline import Work
from skillkern.ops.token_similarity import triton_impl as TI
from skillkern.ops.token_similarity.op import index_dtype


def _side(a, img: bool):
    """(items, tokens per item, real tokens in all, items with a real token, mask bytes)."""
    B, N = (a["Bi"], a["Ni"]) if img else (a["Bt"], a["Nt"])
    if a["HAS_IMASK" if img else "HAS_TMASK"]:
        lens = (a["imask_ptr" if img else "tmask_ptr"][:B, :N] != 0).sum(1)
        mask = B * N
    else:
        lens, mask = torch.full((B,), N, dtype=torch.long), 0
    return B, N, int(lens.sum()), int((lens > 0).sum()), mask


def _fwd(a, grid, ctx) -> Work:
    """Program (BLOCK_I images, BLOCK_T texts): Ni steps of one (BLOCK_I x D) @ (D x N) dot.
    It reads its texts' real rows once (RESIDENT; otherwise at every step) and its images' rows
    once (by TMA: whole tiles, padding tokens included); the image mask at every step, the text
    mask and counts once. Writes R at every step, i2t, t2i and C at the end."""
    Bi, Ni, Li, _, im = _side(a, True)
    Bt, Nt, Lt, _, tm = _side(a, False)
    n_a, n_b = grid[0], grid[1]
    N = a["BLOCK_T"] * a["NT_PAD"]
    d_mma = a["BLOCK_D"] if a["RESIDENT"] else triton.cdiv(a["D"], a["BLOCK_D"]) * a["BLOCK_D"]
    row = a["D"] * a["img_ptr"].element_size()
    out = Bi * Bt * (8 + Ni * a["r_ptr"].element_size() + Nt * a["c_ptr"].element_size())
    hbm = (Li + Lt) * row + im + tm + (Bi + Bt) * 4 + out
    txt_reads = n_a * Lt * row * (1 if a["RESIDENT"] else Ni)
    img_rows = n_a * a["BLOCK_I"] * Ni if a["USE_TMA"] else Li
    l2 = n_b * img_rows * row + txt_reads + n_b * im + n_a * tm + (n_b * Bi + n_a * Bt) * 4 + out
    return Work(2.0 * n_a * n_b * Ni * a["BLOCK_I"] * N * d_mma, hbm, l2,
                steps=n_a * n_b * Ni * (1 if a["RESIDENT"] else triton.cdiv(a["D"], a["BLOCK_D"])))


def _bwd_img(a, grid, ctx) -> Work:
    """Program (BLOCK_I images at token k, D block): per text block and token chunk, the real
    text rows of the D block and the one-hot tile's inputs for its real image tokens (R, the
    pair scales ci / ct, C over the texts' tokens), one (BLOCK_D x chunk) @ (chunk x BLOCK_I)
    dot. Writes d_img once."""
    Bi, Ni, Li, _, im = _side(a, True)
    Bt, Nt, Lt, _, tm = _side(a, False)
    n_a, n_k, n_d = grid
    n_b = triton.cdiv(Bt, a["BLOCK_T"])
    n_l = a["NT_PAD"] // a["L_CHUNK"]
    elt, ri, ci = a["txt_ptr"].element_size(), a["r_ptr"].element_size(), a["c_ptr"].element_size()
    d_row = a["D"] * elt
    flops = 2.0 * n_a * n_k * n_d * n_b * n_l * a["BLOCK_I"] * a["BLOCK_T"] * a["L_CHUNK"] * a["BLOCK_D"]
    one_hot = Li * Bt * (Nt * ci + n_l * (ri + 8))  # C, and R, ci, ct per token chunk
    hbm = Lt * d_row + Li * Bt * ri + Li * Bt * Nt * ci + Bi * Bt * 8 + im + tm + Bi * Ni * d_row
    l2 = n_a * n_k * (Lt * d_row + n_d * tm) + n_d * (one_hot + im) + Bi * Ni * d_row
    return Work(flops, hbm, l2, steps=n_a * n_k * n_d * n_b * n_l)


def _bwd_txt(a, grid, ctx) -> Work:
    """Program (BLOCK_T texts x L_CHUNK tokens, D block): per image token and image block, the
    real image rows of the D block (by TMA without an image mask) and the one-hot tile's inputs
    for the real image tokens, one (BLOCK_D x BLOCK_I) @ (BLOCK_I x rows) dot. Writes the real
    rows of d_txt once."""
    Bi, Ni, Li, _, im = _side(a, True)
    Bt, Nt, Lt, _, tm = _side(a, False)
    n_b, n_l, n_d = grid
    n_a = triton.cdiv(Bi, a["BLOCK_I"])
    elt, ri, ci = a["img_ptr"].element_size(), a["r_ptr"].element_size(), a["c_ptr"].element_size()
    rows = a["BLOCK_T"] * a["L_CHUNK"]
    flops = 2.0 * n_b * n_l * n_d * n_a * Ni * rows * a["BLOCK_I"] * a["BLOCK_D"]
    # TMA fetches whole tiles (padding tokens and the last block's tail included, zero-filled)
    x_rows = n_a * a["BLOCK_I"] * Ni if a["USE_TMA"] else Li
    one_hot = Li * Bt * (Nt * ci + n_l * (ri + 8))
    hbm = Li * a["D"] * elt + Li * Bt * ri + Li * Bt * Nt * ci + Bi * Bt * 8 + im + tm + Lt * a["D"] * elt
    l2 = n_b * n_l * (x_rows * a["D"] * elt + n_d * im) + n_d * (one_hot + tm) + Lt * a["D"] * elt
    return Work(flops, hbm, l2, steps=n_b * n_l * n_d * n_a * Ni)


KERNELS = {
    "_filip_fwd_kernel": _fwd,
    "_filip_bwd_img_kernel": _bwd_img,
    "_filip_bwd_txt_kernel": _bwd_txt,
}


def launches(case) -> tuple[dict, list]:
    """(context, [(phase, thunk)]): the launcher calls of one token_similarity call (forward,
    then the backward's two launches) on the case's tensors and masks, as op.py makes them. The
    context is empty: the kernels receive the masks, so their work follows from the launch."""
    img, txt = case.img.detach(), case.txt.detach()
    state = {}

    def fwd():
        state["out"] = TI.token_similarity_fwd(img, txt, case.img_mask, case.txt_mask,
                                               index_dtype(txt.shape[1]), index_dtype(img.shape[1]))

    def bwd():
        _, _, R, C = state["out"]
        TI.token_similarity_bwd(case.grads[0], case.grads[1], img, txt, case.img_mask, case.txt_mask, R, C)

    return {}, [("fwd", fwd), ("bwd", bwd)]
