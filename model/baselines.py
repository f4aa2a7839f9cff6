"""Trivial baselines of the mini benchmark: what the simplest honest method scores on the same
split, printed beside the model in the eval table (a model that does not beat them has not
learned the task, whatever its distance from chance).

    text_cls                 character bag-of-words: multinomial naive Bayes on the train split
                             (token ids, Laplace smoothing), accuracy on the split
    code_text                TF-IDF overlap: cosine of the code's and the docstring's TF-IDF
                             vectors over the shared WordPiece vocabulary (IDF from train)
    image / video / sound    nearest neighbours on raw features, through the train split: an item
                             is scored against a text by the TF-IDF similarity of that text to the
                             captions of its 5 nearest train items (raw-feature cosine, weighted by
                             it), and a text against an item by the raw-feature similarity of that
                             item to the items of its 5 nearest train captions. Raw features:
                             pixels (images, video frames), for sound a bag of frames (the mean and
                             spread over time of its log spectrum): raw waveforms would compare
                             phases, not sounds.

Every baseline is deterministic (no sampling, no training beyond counting) and uses only the
train split and the evaluated split. Retrieval baselines report R@K both ways with the model's
pessimistic ranks (model.data.retrieval_metrics).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model.config import TASK_KINDS

NEIGHBOURS = 5
NAMES = {"text_cls": "char bag-of-words NB", "code_text": "TF-IDF overlap",
         "image_text": "raw-pixel kNN", "video_text": "raw-pixel kNN", "sound_text": "log-spectrum kNN"}


def _counts(ids: torch.Tensor, mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """(N, vocab) float token counts of each row's real tokens."""
    out = torch.zeros(ids.shape[0], vocab)
    out.scatter_add_(1, ids.clamp(0, vocab - 1), mask.float())
    return out


def _tfidf(counts: torch.Tensor, idf: torch.Tensor) -> torch.Tensor:
    return F.normalize(counts * idf, dim=1)


def _idf(counts: torch.Tensor) -> torch.Tensor:
    df = (counts > 0).float().sum(0)
    return torch.log((1 + counts.shape[0]) / (1 + df)) + 1.0


def _raw(task: str, split: dict) -> torch.Tensor:
    """(N, F) raw features of the non-text side, centred and L2-normalised per item."""
    x = split["x"]
    if task == "sound_text":
        spec = torch.stft(x.float(), n_fft=400, hop_length=160, window=torch.hann_window(400), return_complex=True)
        logs = torch.log1p(spec.abs())  # (N, freq, frames)
        feats = torch.cat([logs.mean(2), logs.std(2)], 1)
    else:
        feats = x.float().reshape(x.shape[0], -1)
    feats = feats - feats.mean(1, keepdim=True)
    return F.normalize(feats, dim=1)


def _knn_transfer(sim_items: torch.Tensor, sim_texts: torch.Tensor) -> torch.Tensor:
    """(Q, N): query q's score of candidate j = sum over q's NEIGHBOURS nearest train items n
    (similarity s_qn in sim_items (Q, T)) of s_qn * sim_texts[n, j] (T, N)."""
    k = min(NEIGHBOURS, sim_items.shape[1])
    s, idx = sim_items.topk(k, dim=1)
    return torch.einsum("qk,qkn->qn", s.clamp_min(0), sim_texts[idx])


def retrieval_scores(task: str, train: dict, split: dict, vocab: int) -> torch.Tensor:
    """(N, N) baseline scores of the split's items (rows) against its texts (columns)."""
    tr_c, ev_c = _counts(train["ids"], train["mask"], vocab), _counts(split["ids"], split["mask"], vocab)
    if task == "code_text":
        code_tr = _counts(train["x_ids"], train["x_mask"], vocab)
        idf = _idf(torch.cat([tr_c, code_tr]))
        code = _tfidf(_counts(split["x_ids"], split["x_mask"], vocab), idf)
        return code @ _tfidf(ev_c, idf).t()
    idf = _idf(tr_c)
    txt_tr, txt_ev = _tfidf(tr_c, idf), _tfidf(ev_c, idf)
    raw_tr, raw_ev = _raw(task, train), _raw(task, split)
    i2t = _knn_transfer(raw_ev @ raw_tr.t(), txt_tr @ txt_ev.t())   # items -> their neighbours' captions
    t2i = _knn_transfer(txt_ev @ txt_tr.t(), raw_tr @ raw_ev.t())   # texts -> their neighbours' items
    # retrieval_metrics reads i2t from the rows and t2i from the columns of one matrix: each
    # direction is ranked by its own scores, so the two are returned stacked
    return torch.stack([i2t, t2i.t()])


def naive_bayes_accuracy(train: dict, split: dict, vocab: int) -> float:
    """Multinomial naive Bayes on token counts (Laplace smoothing): accuracy on the split."""
    c_tr = _counts(train["ids"], train["mask"], vocab)
    labels = train["label"]
    n_cls = int(labels.max()) + 1
    per_cls = torch.zeros(n_cls, vocab).index_add_(0, labels, c_tr)
    log_p = torch.log((per_cls + 1) / (per_cls.sum(1, keepdim=True) + vocab))
    prior = torch.log(torch.bincount(labels, minlength=n_cls).float() / len(labels))
    scores = _counts(split["ids"], split["mask"], vocab) @ log_p.t() + prior
    return (scores.argmax(1) == split["label"]).float().mean().item()


def baseline(task: str, splits: dict, split: str, vocab: int) -> dict:
    """{"name", "accuracy"} or {"name", "i2t_R@1", ..., "mean_R@1"} of task's trivial baseline on
    `split` (the train split is what it counts from)."""
    from model.data import mean_r1, retrieval_metrics

    train, ev = splits["train"], splits[split]
    if TASK_KINDS[task] == "classify":
        return {"name": NAMES[task], "accuracy": naive_bayes_accuracy(train, ev, vocab)}
    scores = retrieval_scores(task, train, ev, vocab)
    if scores.dim() == 2:
        m = retrieval_metrics(scores)
    else:
        m = {k: v for k, v in retrieval_metrics(scores[0]).items() if k.startswith("i2t")}
        m.update({k: v for k, v in retrieval_metrics(scores[1]).items() if k.startswith("t2i")})
    m.pop("mean_R", None)
    return {"name": NAMES[task], **m, "mean_R@1": mean_r1(m)}
