"""model/baselines.py: the eval table's trivial baselines. Each is checked where its answer is
known: a separable corpus, identical pairs, items that repeat the train split, and pure noise."""
from __future__ import annotations

import torch

from model.baselines import baseline

VOCAB = 50


def _text(ids: torch.Tensor) -> dict:
    return {"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool)}


def test_naive_bayes_learns_a_separable_corpus():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 2, (60,), generator=g)
    ids = torch.randint(0, 10, (60, 8), generator=g) + 10 * label[:, None]  # class 1 uses other tokens
    split = {**_text(ids), "label": label}
    r = baseline("text_cls", {"train": split, "test": split}, "test", VOCAB)
    assert r["accuracy"] == 1.0 and r["name"] == "char bag-of-words NB"


def test_tfidf_overlap_finds_identical_pairs():
    ids = torch.arange(40).reshape(20, 2) + 5
    split = {**_text(ids), "x_ids": ids.clone(), "x_mask": torch.ones_like(ids, dtype=torch.bool)}
    r = baseline("code_text", {"train": split, "test": split}, "test", 100)
    assert r["i2t_R@1"] == r["t2i_R@1"] == r["mean_R@1"] == 1.0


def test_knn_transfer_through_the_train_split():
    """Test items and captions that repeat train pairs (distinct images, distinct captions): the
    nearest train item carries the right caption, both ways. With the captions shuffled against
    the items, the same baseline drops to chance-level (it cannot find what is not there)."""
    g = torch.Generator().manual_seed(1)
    n = 30
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    ids = torch.arange(2 * n).reshape(n, 2)
    train = {"x": x, **_text(ids)}
    r = baseline("image_text", {"train": train, "test": dict(train)}, "test", 100)
    assert r["i2t_R@1"] == r["t2i_R@1"] == 1.0
    shuffled = {"x": x, **_text(ids[torch.randperm(n, generator=g)])}
    r = baseline("image_text", {"train": train, "test": shuffled}, "test", 100)
    assert r["mean_R@1"] < 0.2


def test_sound_uses_spectra_and_is_deterministic():
    g = torch.Generator().manual_seed(2)
    t = torch.arange(1600) / 16000
    tones = torch.stack([torch.sin(2 * torch.pi * f * t + float(torch.rand(1, generator=g)) * 6)
                         for f in range(200, 200 + 20 * 150, 150)])    # 20 pitches, random phases
    train = {"x": tones, **_text(torch.arange(40).reshape(20, 2))}
    test = {"x": torch.roll(tones, 37, dims=1), **_text(torch.arange(40).reshape(20, 2))}  # shifted in time
    a = baseline("sound_text", {"train": train, "test": test}, "test", 100)
    assert a == baseline("sound_text", {"train": train, "test": test}, "test", 100)
    assert a["mean_R@1"] == 1.0  # a time shift changes every sample, not the spectrum
