"""python -m model.data [--root DIR] [--tasks NAME ...] [--rebuild] [--size mini|tiny] [--seed N]

Builds (or loads) the benchmark and prints one row per task, then the skipped tasks with reasons.
Exit status 0 even when tasks are skipped (that is a property of the machine, reported); 2 on bad
arguments."""
from __future__ import annotations

import argparse
import sys
import time

from ._common import SPLIT_SIZES, SPLITS
from .benchmark import TASKS, build_benchmark, default_root
from .tokenizer import WordPieceTokenizer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.data", description=__doc__.split("\n\n")[1])
    p.add_argument("--root", default=None, help=f"cache directory (default {default_root()})")
    p.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS), metavar="TASK",
                   help=f"tasks to build (default all: {' '.join(TASKS)})")
    p.add_argument("--rebuild", action="store_true", help="ignore the cache and build again")
    p.add_argument("--size", default="mini", choices=sorted(SPLIT_SIZES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.seed < 0:
        p.error("--seed: must be >= 0")

    tok = WordPieceTokenizer.default()
    skipped: dict = {}
    t0 = time.perf_counter()
    tasks = build_benchmark(args.root, tasks=args.tasks, rebuild=args.rebuild, size=args.size,
                            seed=args.seed, tokenizer=tok, skipped=skipped,
                            log=lambda msg: print(f"  {msg}", file=sys.stderr))
    elapsed = time.perf_counter() - t0
    print(f"tokenizer: {tok.name} ({tok.vocab_size} entries); size {args.size}, seed {args.seed}; "
          f"{elapsed:.1f} s")
    header = ("task", "modality", "kind", *SPLITS, "x", "source")
    rows = []
    for name, task in tasks.items():
        counts = [str(task.meta["counts"][s]) for s in SPLITS]
        fields = task.meta["fields"]
        x = next((f for f in ("x", "x_ids", "ids") if f in fields), None)
        x_desc = f"{tuple(fields[x]['shape'][1:])} {fields[x]['dtype']}"
        rows.append((name, task.modality, task.kind, *counts, x_desc, task.meta["source"]))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    for name, err in skipped.items():
        print(f"SKIPPED {name}: {err.reason}\n        install: {err.install}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
