"""code_text: CPython stdlib functions <-> the first line of their docstring.

Files: every .py under the stdlib directory in sorted path order, skipping test suites, demos,
site-packages and __pycache__. Candidates: each function / method (any depth) with a docstring
whose first line has at least 3 words and some statement besides the docstring. Code side:
ast.unparse of the function with its docstring statement removed (comments are gone with it, so
neither can leak the description). A caption shared by several functions ("Return self.",
"Initialize self.") keeps only its first function in file order: captions are unique as the
model sees them (their token ids at TEXT_LEN; two texts that differ only past the cut, or in
characters the tokenizer maps alike, count as one), so row i's only match is column i.
"tiny" stops parsing once it has TINY_POOL candidates (parsing the whole stdlib takes ~5 s).
"""
from __future__ import annotations

import ast
import copy
import inspect
import os
import warnings
from pathlib import Path

from ._common import SPLITS, Built, draw_splits, task_rng

CODE_LEN = 64
TEXT_LEN = 32
MIN_WORDS = 3
SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages",
             "turtledemo", "__phello__"}
TINY_POOL = 400


def _stdlib_files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)   # sorted walk: fs-order free
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath) / name


def _candidates(path: Path, root: Path):
    try:
        source = path.read_text(encoding="utf-8")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)     # invalid escapes in old modules
            tree = ast.parse(source, filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    rel = path.relative_to(root).as_posix()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node, clean=False)
        if not doc or len(node.body) < 2:
            continue
        lines = inspect.cleandoc(doc).strip().splitlines()
        first = " ".join(lines[0].split()) if lines else ""
        if len(first.split()) < MIN_WORDS:
            continue
        yield (rel, node.lineno, first, node)


def _code_without_docstring(node) -> str:
    stripped = copy.copy(node)                 # shallow: the file's tree stays as it was
    stripped.body = node.body[1:]
    return ast.unparse(stripped)


def build_code_text(source, *, sizes, seed, tokenizer, log) -> Built:
    root = Path(source.paths["stdlib"])
    limit = TINY_POOL if sum(sizes.values()) <= TINY_POOL // 2 else None
    pool, seen, n_files = [], set(), 0
    for path in _stdlib_files(root):
        n_files += 1
        for rel, lineno, first, node in _candidates(path, root):
            key = tuple(tokenizer.encode(first, TEXT_LEN))
            if key in seen:
                continue
            seen.add(key)
            pool.append((rel, lineno, first, node))
        if limit is not None and len(pool) >= limit:
            break
    idx = draw_splits(len(pool), sizes, task_rng(seed, "code_text"), log, "code_text", "functions")
    splits, texts, where = {}, {}, {}
    for split in SPLITS:
        items = [pool[i] for i in idx[split]]
        code = [_code_without_docstring(node) for _, _, _, node in items]
        x_ids, x_mask = tokenizer.encode_batch(code, CODE_LEN)
        ids, mask = tokenizer.encode_batch([first for _, _, first, _ in items], TEXT_LEN)
        splits[split] = {"x_ids": x_ids, "x_mask": x_mask, "ids": ids, "mask": mask}
        texts[split] = [first for _, _, first, _ in items]
        where[split] = [f"{rel}:{lineno}" for rel, lineno, _, _ in items]
    return Built(splits, texts, {"pool": len(pool), "files_parsed": n_files, "functions": where})
