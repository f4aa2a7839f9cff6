"""What every task builder shares: split sizes, per-task seeded generators, the split draw, and the
error a builder raises when its source is absent."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

SPLITS = ("train", "val", "test")

# Examples per split. "mini" keeps a whole 5-task build near a minute on 2 CPU cores (the speech
# synthesis and the stdlib parse dominate); "tiny" is for unit tests. A task whose pool is smaller
# fills test and val first and gives train the rest (logged). Retrieval R@K depends on the gallery
# size, so compare R@K only between runs with the same size.
SPLIT_SIZES = {
    "mini": {"train": 2000, "val": 500, "test": 500},
    "tiny": {"train": 32, "val": 16, "test": 16},
}
# image_text has 1,913 usable emoji (OpenMoji 17 x emoji 2.16 zh names, no skin tones), so its
# held-out splits are smaller for "mini" to leave train > 1,000 items.
SPLIT_OVERRIDES = {("image_text", "mini"): {"train": 2000, "val": 300, "test": 300},
                   ("video_text", "mini"): {"train": 2000, "val": 300, "test": 300}}


def split_sizes(task: str, size: str) -> dict[str, int]:
    return dict(SPLIT_OVERRIDES.get((task, size), SPLIT_SIZES[size]))


class SourceMissing(Exception):
    """A task's offline source is not available here. reason: what is missing; install: the
    command that makes it available (shown to the user, never run)."""

    def __init__(self, reason: str, install: str):
        super().__init__(f"{reason} (install: {install})")
        self.reason = reason
        self.install = install


def task_rng(seed: int, task: str, stream: str = "") -> np.random.Generator:
    """A generator that depends only on (seed, task, stream): crc32 of the names, never Python's
    salted hash(), so builds agree across processes."""
    key = zlib.crc32(f"{task}/{stream}".encode())
    return np.random.Generator(np.random.PCG64([seed, key]))


def draw_splits(n_pool: int, sizes: dict[str, int], rng: np.random.Generator, log, task: str,
                unit: str = "examples") -> dict[str, np.ndarray]:
    """Disjoint index sets into a pool of n_pool items (already in a canonical, sorted order):
    a seeded permutation, test taken first, then val, then train from what remains."""
    need_heldout = sizes["test"] + sizes["val"]
    if n_pool < need_heldout + 1:
        raise RuntimeError(f"{task}: the source has only {n_pool} usable {unit}, fewer than "
                           f"val + test + 1 = {need_heldout + 1}")
    order = rng.permutation(n_pool)
    out = {"test": order[: sizes["test"]], "val": order[sizes["test"]: need_heldout]}
    train = order[need_heldout: need_heldout + sizes["train"]]
    if len(train) < sizes["train"]:
        log(f"{task}: {n_pool} usable {unit}, so train has {len(train)} (asked {sizes['train']})")
    out["train"] = train
    return {k: out[k] for k in SPLITS}      # rows in permuted order: no class or source-file runs


@dataclass
class Built:
    """What a task builder returns. splits: split -> name -> tensor; texts: split -> the caption /
    review / docstring behind each row (kept for inspection); info: extra manifest entries."""
    splits: dict[str, dict[str, torch.Tensor]]
    texts: dict[str, list[str]]
    info: dict = field(default_factory=dict)


PCM_SCALE = 32767.0    # waveforms live on the 16-bit PCM grid: x = k / 32767, k in [-32767, 32767]


def to_pcm_grid(x: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> the nearest k / 32767 (float32). The cache stores k as int16, so a
    waveform on this grid reloads bit-exactly at half the bytes (and compresses to ~56%)."""
    k = np.clip(np.rint(x * PCM_SCALE), -PCM_SCALE, PCM_SCALE).astype(np.int16)
    return pcm_to_float(k)


def pcm_to_float(k: np.ndarray) -> np.ndarray:
    return k.astype(np.float32) / np.float32(PCM_SCALE)
