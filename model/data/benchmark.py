"""The offline 5-modality mini benchmark: build each task once from packages installed here, cache
it, load the cache afterwards.

Cache layout: ROOT/<task>/<size>_seed<seed>_<tokenizer>-<vocab sha[:8]>/ holding
manifest.json (task, sizes, counts, source versions, tokenizer, sha256 of the data file) and
data-<sha[:12]>.pt (torch.save of {"splits": split -> name -> tensor or packed tensor, "texts":
split -> [str]}). Packed: sound waveforms are stored as int16 PCM, and a tensor of >= 1 MiB is
byte-shuffled and zlib-compressed into a uint8 tensor (+ shape and dtype); all reload bit-exactly.
This takes the mini cache from 257 MB to ~55 MB (speech 192 -> ~45, videos 64 -> ~1.5: white
backgrounds), so it fits a 64 MiB copy to another machine, for ~+3 s of build and ~+1 s of load.
The data file is written under a temporary name and renamed; the manifest is written the same way
LAST, so it is the commit point: a reader sees either no manifest or a complete build (an
interrupted or concurrent build never leaves a manifest naming a partial file).
A cache whose manifest does not match the request (format, task, size, seed, tokenizer) or whose
data file is missing / of the wrong size is rebuilt, with a log line saying why.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import sources
from ._common import (
    PCM_SCALE,
    SPLIT_SIZES,
    SPLITS,
    SourceMissing,
    pcm_to_float,
    split_sizes,
)
from .code_text import build_code_text
from .emoji_media import build_image_text, build_video_text
from .speech import build_sound_text
from .text_cls import build_text_cls
from .tokenizer import WordPieceTokenizer

FORMAT_VERSION = 3          # bump when a builder's output or the file layout changes
PCM_FIELDS = {("sound_text", "x")}     # float32 waveforms on the k / 32767 grid: stored as int16
ZLIB_MIN_BYTES = 1 << 20    # smaller tensors stay plain
ZLIB_LEVEL = 1              # level 6 saves 1% on speech (35.9 vs 36.2 MB per 64 MB) for +40% time
ENV_ROOT = "SKILLKERN_DATA"
DEFAULT_ROOT = Path("~/.cache/skillkern/mini5")


@dataclass
class Task:
    """One benchmark task. splits: "train"/"val"/"test" -> name -> tensor (see TASKS for names);
    texts: the same splits -> the caption / review / docstring of each row; meta: its manifest."""
    name: str
    modality: str                  # "text" | "image" | "sound" | "video" | "code"
    kind: str                      # "classify" | "retrieve"
    num_classes: int | None
    splits: dict[str, dict[str, torch.Tensor]]
    texts: dict[str, list[str]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {len(next(iter(self.splits[s].values())))}" for s in SPLITS)
        return f"Task({self.name!r}, {self.modality}, {self.kind}, {counts})"


@dataclass(frozen=True)
class TaskSpec:
    modality: str
    kind: str
    num_classes: int | None
    finder: str                    # name of a sources.* function, looked up at call time
    build: Callable


TASKS: dict[str, TaskSpec] = {
    "text_cls": TaskSpec("text", "classify", 2, "find_sentiment_reviews", build_text_cls),
    "image_text": TaskSpec("image", "retrieve", None, "find_emoji_images", build_image_text),
    "sound_text": TaskSpec("sound", "retrieve", None, "find_mandarin_tts", build_sound_text),
    "video_text": TaskSpec("video", "retrieve", None, "find_emoji_images", build_video_text),
    "code_text": TaskSpec("code", "retrieve", None, "find_python_stdlib", build_code_text),
}


def default_root() -> Path:
    env = os.environ.get(ENV_ROOT)
    return Path(env).expanduser() if env else DEFAULT_ROOT.expanduser()


def _cache_dir(root: Path, task: str, size: str, seed: int, tok: WordPieceTokenizer) -> Path:
    return root / task / f"{size}_seed{seed}_{tok.name}-{tok.sha256[:8]}"


def _expected(task: str, size: str, seed: int, tok: WordPieceTokenizer) -> dict:
    return {"format": FORMAT_VERSION, "task": task, "size": size, "seed": seed,
            "tokenizer": {"name": tok.name, "vocab_size": tok.vocab_size, "sha256": tok.sha256}}


def _pack(task: str, field: str, t: torch.Tensor):
    """A tensor as stored: plain, or {"codec", "shape", "dtype", "data": uint8 tensor}."""
    a = np.ascontiguousarray(t.numpy())
    codec = []
    if (task, field) in PCM_FIELDS:
        k = np.rint(a * PCM_SCALE).astype(np.int16)
        if not np.array_equal(pcm_to_float(k), a):
            raise RuntimeError(f"{task}/{field}: waveform is not on the 16-bit grid (builder bug)")
        a, codec = k, ["pcm16"]
    if a.nbytes >= ZLIB_MIN_BYTES:
        # byte-shuffle first (all first bytes, then all second bytes, ...; HDF5's shuffle filter):
        # the high bytes of PCM and of int64 ids are near-constant. 50.7 MiB for the mini tensors
        # instead of 61 MiB with zlib alone
        planes = a.view(np.uint8).reshape(-1, a.itemsize).T
        data = np.frombuffer(zlib.compress(planes.tobytes(), ZLIB_LEVEL), np.uint8)
        codec += ["shuffle", "zlib"]
    elif codec:
        data = a
    else:
        return t
    return {"codec": "+".join(codec), "shape": list(a.shape), "dtype": str(a.dtype),
            "data": torch.from_numpy(data.copy())}


def _unpack(obj) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj
    codec = obj["codec"].split("+")
    if not set(codec) <= {"pcm16", "shuffle", "zlib"}:
        raise ValueError(f"unknown codec {obj['codec']!r}")
    a = obj["data"].numpy()
    if "zlib" in codec:
        dtype = np.dtype(obj["dtype"])
        planes = np.frombuffer(zlib.decompress(a.tobytes()), np.uint8).reshape(dtype.itemsize, -1)
        a = np.ascontiguousarray(planes.T).view(dtype).reshape(obj["shape"])
    if "pcm16" in codec:
        a = pcm_to_float(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _write_temp(directory: Path, write: Callable) -> Path:
    """write(f) into a new hidden temporary file in directory (flushed to disk); its path."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def _atomic_write(path: Path, write: Callable) -> None:
    os.replace(_write_temp(path.parent, write), path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_cached(cdir: Path, expected: dict, log) -> Task | None:
    manifest_path = cdir / "manifest.json"
    if not manifest_path.is_file():
        return None
    name = expected["task"]
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log(f"{name}: unreadable cache manifest {manifest_path} ({e}); rebuilding")
        return None
    stale = [k for k, v in expected.items() if manifest.get(k) != v]
    if stale:
        log(f"{name}: cache at {cdir} was built with other {', '.join(stale)}; rebuilding")
        return None
    data_path = cdir / manifest.get("data_file", "")
    if not data_path.is_file() or data_path.stat().st_size != manifest.get("data_bytes"):
        log(f"{name}: cache data {data_path} is missing or truncated; rebuilding")
        return None
    try:
        data = torch.load(data_path, map_location="cpu", weights_only=True)
        splits = {split: {k: _unpack(v) for k, v in fields.items()} for split, fields in data["splits"].items()}
    except Exception as e:  # noqa: BLE001 - any unpickling / unpacking failure means: rebuild
        log(f"{name}: cache data {data_path} does not load ({type(e).__name__}: {e}); rebuilding")
        return None
    spec = TASKS[name]
    return Task(name, spec.modality, spec.kind, spec.num_classes, splits, data["texts"], manifest)


def _build_one(name: str, source, cdir: Path, size: str, seed: int, tok, log) -> Task:
    spec = TASKS[name]
    t0 = time.perf_counter()
    built = spec.build(source, sizes=split_sizes(name, size), seed=seed, tokenizer=tok, log=log)
    seconds = time.perf_counter() - t0
    for split in SPLITS:                      # a builder bug must not be cached
        lengths = {k: len(v) for k, v in built.splits[split].items()}
        if len(set(lengths.values()) | {len(built.texts[split])}) != 1:
            raise RuntimeError(f"{name}: {split} tensors disagree on the row count: {lengths}")
    cdir.mkdir(parents=True, exist_ok=True)
    payload = {"splits": {split: {k: _pack(name, k, v) for k, v in fields.items()}
                          for split, fields in built.splits.items()},
               "texts": built.texts}
    # content-addressed data file: concurrent builds of one config write the same bytes and name
    tmp = _write_temp(cdir, lambda f: torch.save(payload, f))
    sha = _sha256(tmp)
    data_file = f"data-{sha[:12]}.pt"
    os.replace(tmp, cdir / data_file)
    manifest = {
        **_expected(name, size, seed, tok),
        "modality": spec.modality, "kind": spec.kind, "num_classes": spec.num_classes,
        "source": source.name, "source_versions": source.versions,
        "counts": {s: len(built.texts[s]) for s in SPLITS},
        "fields": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                   for k, v in built.splits["train"].items()},
        "data_file": data_file, "data_bytes": (cdir / data_file).stat().st_size, "data_sha256": sha,
        "storage": {k: v["codec"] if isinstance(v, dict) else "plain" for k, v in payload["splits"]["train"].items()},
        "build_seconds": round(seconds, 2), "info": built.info,
    }
    text = json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True)
    _atomic_write(cdir / "manifest.json", lambda f: f.write(text.encode("utf-8")))
    for old in cdir.glob("data-*.pt"):          # earlier builds' data, no longer referenced
        if old.name != data_file:
            old.unlink(missing_ok=True)
    counts = ", ".join(f"{s} {n}" for s, n in manifest["counts"].items())
    log(f"{name}: built in {seconds:.1f} s ({counts}) from {source.name} -> {cdir}")
    return Task(name, spec.modality, spec.kind, spec.num_classes, built.splits, built.texts, manifest)


def _check_args(root, tasks, size, seed, log, tokenizer):
    if not callable(log):
        raise ValueError(f"log: expected a callable such as print, got {type(log).__name__}")
    if size not in SPLIT_SIZES:
        raise ValueError(f"size: expected one of {sorted(SPLIT_SIZES)}, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    if tasks is None:
        names = list(TASKS)
    else:
        if isinstance(tasks, str):
            tasks = [tasks]
        try:
            names = list(tasks)
        except TypeError:
            raise ValueError(f"tasks: expected None or a list of task names, got {type(tasks).__name__}") from None
        unknown = [t for t in names if t not in TASKS]
        if unknown:
            raise ValueError(f"tasks: unknown task(s) {unknown}; known: {list(TASKS)}")
        names = list(dict.fromkeys(names))          # drop repeats, keep the given order
    root = default_root() if root is None else Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"root: {root} exists and is not a directory")
    if tokenizer is not None and not isinstance(tokenizer, WordPieceTokenizer):
        raise ValueError(f"tokenizer: expected a WordPieceTokenizer, got {type(tokenizer).__name__}")
    return root, names


def build_benchmark(root=None, *, tasks=None, rebuild: bool = False, size: str = "mini", seed: int = 0,
                    log=print, tokenizer: WordPieceTokenizer | None = None,
                    skipped: dict | None = None) -> dict[str, Task]:
    """Build (or load from the cache) the benchmark tasks; returns name -> Task for every task
    whose source is available. A task whose source is missing is logged with the reason and the
    install command and left out (also recorded in `skipped`, name -> SourceMissing, if given).

    root: cache directory (default $SKILLKERN_DATA, else ~/.cache/skillkern/mini5). tasks: names
    from TASKS (default all). rebuild: ignore the cache. size: "mini" (<= 2,000 train examples per
    task) or "tiny" (32 / 16 / 16, for tests). seed: the same seed gives identical tensors.
    tokenizer: default WordPieceTokenizer.default(); the cache is per tokenizer vocab."""
    root, names = _check_args(root, tasks, size, seed, log, tokenizer)
    if skipped is not None and not isinstance(skipped, dict):
        raise ValueError(f"skipped: expected a dict to fill or None, got {type(skipped).__name__}")
    tok = tokenizer or WordPieceTokenizer.default()
    out: dict[str, Task] = {}
    found: dict[str, object] = {}
    for name in names:
        spec = TASKS[name]
        cdir = _cache_dir(root, name, size, seed, tok)
        if not rebuild:
            task = _load_cached(cdir, _expected(name, size, seed, tok), log)
            if task is not None:
                log(f"{name}: loaded from cache {cdir}")
                out[name] = task
                continue
        try:
            if spec.finder not in found:
                found[spec.finder] = getattr(sources, spec.finder)()
            source = found[spec.finder]
        except SourceMissing as e:
            log(f"{name}: SKIPPED, source missing: {e.reason}; to enable it: {e.install}")
            if skipped is not None:
                skipped[name] = e
            continue
        out[name] = _build_one(name, source, cdir, size, seed, tok, log)
    return out
