"""The work of each FILIP token-similarity Triton kernel (FLOPs, HBM and L2 bytes) for
`skillkern inspect`, derived from the launch's grid, tile sizes and what each program of
kernels.py loads, and the launcher calls of one op call (forward and backward) for a benchmark case.

Counting rules (as in skill_ffn/cost.py): flops are what the MMAs execute, so every tile counts
whole: (BLOCK_I*NI_CHUNK) x (BLOCK_T*NT_PAD) x BLOCK_D per step, padding tokens, masked tokens and
the grid's tail items included. Bytes count what the masked loads and stores really touch: a
masked-off element is never fetched, so the feature rows of padding tokens (the case's masks, the
NI_CHUNK / NT_PAD padding) are not read. hbm_bytes counts each tensor once (reads and writes), as
if L2 kept every re-read; l2_bytes counts every load and store of every program. The real-token
counts come from the masks the kernel receives, so the launch's arguments are all it needs.

Notation below: nA, nB, nC, nD = image blocks, text blocks, image-token chunks, D slices;
Li, Lt = real image / text tokens; row = D x the feature element size.
"""
from __future__ import annotations

import torch
import triton

from skillkern.bench.roofline import Work
from skillkern.ops.token_similarity import triton_impl as TI
from skillkern.ops.token_similarity.op import index_dtype


def _tokens(a, img: bool):
    """(items, tokens per item, real tokens per item (items,) long, mask present) of one side."""
    B, N = (a["Bi"], a["Ni"]) if img else (a["Bt"], a["Nt"])
    has = a["HAS_IMASK"] if img else a["HAS_TMASK"]
    if has:
        lens = (a["imask_ptr" if img else "tmask_ptr"][:B, :N] != 0).sum(1)
    else:
        lens = torch.full((B,), N, dtype=torch.long)
    return B, N, lens, has


def _blocks(a):
    """Image blocks, text blocks, image-token chunks, D slices, and the tile's M and N."""
    bi, nc, bt, ntp = a["BLOCK_I"], a["NI_CHUNK"], a["BLOCK_T"], a["NT_PAD"]
    return (triton.cdiv(a["Bi"], bi), triton.cdiv(a["Bt"], bt), triton.cdiv(a["Ni"], nc),
            triton.cdiv(a["D"], a["BLOCK_D"]), bi * nc, bt * ntp)


def _fwd(a, grid, ctx) -> Work:
    """Program (image block, text block): per image-token chunk, D/BLOCK_D steps of one
    (M x BLOCK_D) @ (BLOCK_D x N) dot. It reads its image chunk's real rows and its text block's
    real rows over the full D, so each image row is read nB times and each text row nA * nC
    times; the masks once per program and once per chunk (the image mask twice per chunk); the
    per-item counts once per program. Writes i2t, t2i and both arg-max index tensors once."""
    Bi, Ni, li, has_im = _tokens(a, True)
    Bt, Nt, lt, has_tm = _tokens(a, False)
    nA, nB, nC, nD, M, N = _blocks(a)
    row = a["D"] * a["img_ptr"].element_size()
    Li, Lt = int(li.sum()), int(lt.sum())
    flops = 2.0 * grid[0] * grid[1] * nC * M * N * nD * a["BLOCK_D"]
    out = Bi * Bt * (2 * 4 + Ni * a["ridx_ptr"].element_size() + Nt * a["cidx_ptr"].element_size())
    masks_once = (Bi * Ni if has_im else 0) + (Bt * Nt if has_tm else 0)
    hbm = (Li + Lt) * row + masks_once + (Bi + Bt) * 4 + out
    l2 = (nB * Li * row + nA * nC * Lt * row
          + (nB * 2 * Bi * Ni if has_im else 0) + (nA * (1 + nC) * Bt * Nt if has_tm else 0)
          + (nB * Bi + nA * Bt) * 4 + out)
    return Work(flops, hbm, l2)


def _bwd(a, grid, ctx) -> Work:
    """FOR_IMG: program (image block x chunk, D slice) loops over the nB text blocks, one
    (M x N) @ (N x BLOCK_D) dot each; otherwise program (text block, D slice) loops over the
    nA * nC image blocks and chunks, one (N x M) @ (M x BLOCK_D) dot each. Either way every
    (image block, chunk, text block, D slice) meets once, rebuilding the one-hot tile from the
    upstream gradients of its valid pairs, row_idx of the real image tokens and col_idx of the
    real text tokens (row_idx is read nD times, col_idx and the gradients nC * nD times), and
    reads the partner's real rows over its D slice: the text rows nA * nC times (FOR_IMG), the
    image rows nB times (d_txt). Masks: the partner side's twice per step, the own side's once
    per program. Writes d_img / d_txt once, padding tokens included (as zeros)."""
    Bi, Ni, li, has_im = _tokens(a, True)
    Bt, Nt, lt, has_tm = _tokens(a, False)
    nA, nB, nC, nD, M, N = _blocks(a)
    elt = a["src_ptr"].element_size()
    row = a["D"] * elt
    ri, ci = a["ridx_ptr"].element_size(), a["cidx_ptr"].element_size()
    Li, Lt = int(li.sum()), int(lt.sum())
    vi, vt = int((li > 0).sum()), int((lt > 0).sum())  # items with a real token: their pairs count
    flops = 2.0 * nA * nC * nB * nD * M * N * a["BLOCK_D"]
    # per meeting: g_i2t and g_t2i of the valid pairs, both count vectors, the two index tiles
    grads_once = vi * vt * 8 + Li * vt * ri + Lt * vi * ci
    grads_l2 = nD * (nC * vi * vt * 8 + Li * vt * ri + nC * Lt * vi * ci + nC * (nB * Bi + nA * Bt) * 4)
    if a["FOR_IMG"]:
        src_once, src_l2, out = Lt * row, nA * nC * Lt * row, Bi * Ni * row
        masks_l2 = nD * ((Bi * Ni if has_im else 0) + (nA * nC * 2 * Bt * Nt if has_tm else 0))
    else:
        src_once, src_l2, out = Li * row, nB * Li * row, Bt * Nt * row
        masks_l2 = nD * ((Bt * Nt if has_tm else 0) + (nB * 2 * Bi * Ni if has_im else 0))
    masks_once = (Bi * Ni if has_im else 0) + (Bt * Nt if has_tm else 0)
    hbm = src_once + grads_once + (Bi + Bt) * 4 + masks_once + out
    l2 = src_l2 + grads_l2 + masks_l2 + out
    return Work(flops, hbm, l2)


KERNELS = {
    "_filip_fwd_kernel": _fwd,
    "_filip_bwd_kernel": _bwd,
}


def launches(case) -> tuple[dict, list]:
    """(context, [(phase, thunk)]): the launcher calls of one token_similarity call (forward,
    then the backward's two launches) on the case's tensors and masks, as op.py makes them
    (arg-max indices in op.index_dtype). The context is empty: the kernels receive the masks,
    so their work follows from the launch's own arguments."""
    img, txt = case.img.detach(), case.txt.detach()
    state = {}

    def fwd():
        state["out"] = TI.token_similarity_fwd(img, txt, case.img_mask, case.txt_mask,
                                               index_dtype(txt.shape[1]), index_dtype(img.shape[1]))

    def bwd():
        _, _, row_idx, col_idx = state["out"]
        TI.token_similarity_bwd(case.grads[0], case.grads[1], img, txt, case.img_mask, case.txt_mask,
                                row_idx, col_idx)

    return {}, [("fwd", fwd), ("bwd", bwd)]
