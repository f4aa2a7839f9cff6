"""Reference (pure PyTorch) FILIP token-wise similarity: the math every backend must match.

    S[a, b, k, l] = <img[a, k], txt[b, l]>
    i2t[a, b] = mean over real k of img a of  max over real l of txt b of S[a, b, k, l]
    t2i[a, b] = mean over real l of txt b of  max over real k of img a of S[a, b, k, l]

A pair where either item has no real token scores 0 in both directions (and gets no gradient),
also when Ni = 0 or Nt = 0; an empty batch (Bi = 0 or Bt = 0) gives empty outputs. Padding
tokens are replaced by 0 before any product: NaN or inf there reaches no output or gradient.
The gradient of a max goes to its arg-max token (torch.max(dim).values routes it to the index).
Materialises Bi*Bt*Ni*Nt similarities: for tests and small batches only.
"""
from __future__ import annotations

import torch


def token_similarity_ref(img, txt, img_mask=None, txt_mask=None):
    """img: (Bi, Ni, D); txt: (Bt, Nt, D); masks bool (Bi, Ni) / (Bt, Nt), True = real.
    Returns (i2t, t2i), float32 (float64 for float64 inputs), each (Bi, Bt)."""
    acc = torch.float64 if img.dtype == torch.float64 else torch.float32
    Bi, Ni, _ = img.shape
    Bt, Nt, _ = txt.shape
    # selected, not multiplied: 0 * NaN would be NaN (and its gradient too)
    if img_mask is None:
        img_mask = torch.ones(Bi, Ni, dtype=torch.bool, device=img.device)
    else:
        img = img.masked_fill(~img_mask[:, :, None], 0)
    if txt_mask is None:
        txt_mask = torch.ones(Bt, Nt, dtype=torch.bool, device=txt.device)
    else:
        txt = txt.masked_fill(~txt_mask[:, :, None], 0)
    sim = torch.einsum("akd,bld->abkl", img, txt).to(acc)
    if Ni == 0 or Nt == 0:
        # no item has a real token: every pair scores 0 (a max over no token is undefined);
        # sums over the empty similarity give those zeros with zero gradients of the inputs' shape
        return sim.sum((2, 3)), sim.sum((2, 3))
    neg = torch.finfo(acc).min
    # max over text tokens for each image token, and over image tokens for each text token
    row = sim.masked_fill(~txt_mask[None, :, None, :], neg).max(dim=3).values  # (Bi, Bt, Ni)
    col = sim.masked_fill(~img_mask[:, None, :, None], neg).max(dim=2).values  # (Bi, Bt, Nt)
    n_img = img_mask.sum(1).to(acc)  # (Bi,)
    n_txt = txt_mask.sum(1).to(acc)  # (Bt,)
    valid = (n_img[:, None] > 0) & (n_txt[None, :] > 0)  # (Bi, Bt)
    row = torch.where(img_mask[:, None, :] & valid[:, :, None], row, 0.0)
    col = torch.where(txt_mask[None, :, :] & valid[:, :, None], col, 0.0)
    i2t = row.sum(2) / n_img.clamp(min=1)[:, None]
    t2i = col.sum(2) / n_txt.clamp(min=1)[None, :]
    return i2t, t2i


def filip_loss_ref(img, txt, img_mask=None, txt_mask=None, logit_scale=1.0, label_smoothing=0.0):
    """0.5 * (CE(s * i2t, arange) + CE(s * t2i^T, arange)) for paired batches (Bi == Bt)."""
    i2t, t2i = token_similarity_ref(img, txt, img_mask, txt_mask)
    labels = torch.arange(i2t.shape[0], device=i2t.device)
    ce = torch.nn.functional.cross_entropy
    return 0.5 * (ce(logit_scale * i2t, labels, label_smoothing=label_smoothing)
                  + ce(logit_scale * t2i.t(), labels, label_smoothing=label_smoothing))
