"""The measured order behind backend="auto": from goal-shape bench rows to skillkern/_measured.py.

For each GPU model and op, every native backend (skillkern-triton, skillkern-cuda) is judged by
its newest rows at the op's goal shapes, in the mode the goals judge (fwd+bwd; the forward for
maxsim's scoring shapes). A backend is ranked only when it ran ok at every goal shape; the
ranked ones go first, fastest total time first, then the rest in _backend's default order,
torch last. Ops whose CUDA path takes only part of the inputs (_backend._CUDA_PARTIAL) never
put cuda ahead of triton: auto is chosen per op, not per call.

    python -m skillkern.bench.auto_order benchmarks/results/*.jsonl           # print the orders
    python -m skillkern.bench.auto_order benchmarks/results/*.jsonl --write   # and write them

Run it after a GPU run's rows are committed (benchmarks/gpu_check.sh), then commit
skillkern/_measured.py: _backend.resolve() reads it for a device of that name.
"""
from __future__ import annotations

import argparse
import json
import os
import pprint
import sys

from skillkern import _backend
from skillkern.bench import runner

PROVIDER = {"skillkern-triton": "triton", "skillkern-cuda": "cuda"}
TARGET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_measured.py")


def _goal_keys(op: str) -> list[tuple[str, str]]:
    """(shape label, mode) of each goal shape of op's benchmark."""
    return [(s.label(), runner.goal_mode(op, s)) for s in runner.spec_of(op).presets["goal"]()]


def newest(rows: list[dict]) -> dict:
    """{(device, op, backend, label, mode): the newest row} over the skillkern providers' rows
    (any status: a newer failure replaces an older success)."""
    out = {}
    for r in sorted(rows, key=lambda r: r.get("time", "")):
        backend = PROVIDER.get(r.get("provider"))
        if backend is None or not r.get("device") or str(r["device"]).startswith("cpu"):
            continue
        out[(r["device"], r["op"], backend, r.get("label"), r.get("mode"))] = r
    return out


def orders(rows: list[dict]) -> dict:
    """{device: {op: {"order": [...], "ms": {backend: total ms}, "rows": {backend: "commit date"}}}}
    for every device and op with at least one ranked backend."""
    latest = newest(rows)
    table: dict = {}
    for device, op in sorted({(k[0], k[1]) for k in latest}):
        if op not in _backend._AUTO_ORDER:
            continue
        keys = _goal_keys(op)
        totals, sources = {}, {}
        for backend in PROVIDER.values():
            got = [latest.get((device, op, backend, label, mode)) for label, mode in keys]
            if all(r is not None and r.get("status") == "ok" for r in got):
                totals[backend] = round(sum(r["ms"] for r in got), 4)
                sources[backend] = " ".join(sorted({f"{r.get('commit')} {r.get('time', '')[:10]}" for r in got}))
        if not totals:
            continue
        ranked = sorted(totals, key=totals.get)
        if op in _backend._CUDA_PARTIAL and "cuda" in ranked and "triton" in ranked:
            ranked.remove("cuda")
            ranked.insert(ranked.index("triton") + 1, "cuda")
        rest = [b for b in _backend._AUTO_ORDER[op] if b not in ranked and b != "torch"]
        table.setdefault(device, {})[op] = {"order": ranked + rest + ["torch"], "ms": totals, "rows": sources}
    return table


def render(table: dict) -> str:
    """skillkern/_measured.py's text."""
    return ('"""backend="auto"\'s measured order per GPU model (device name) and op: written by\n'
            "`python -m skillkern.bench.auto_order ROWS.jsonl... --write` from goal-shape bench rows\n"
            "(ms: each backend's total over the op's goal shapes; rows: the commit and date they were\n"
            'measured at). Do not edit by hand; _backend.resolve() reads MEASURED."""\n\n'
            f"MEASURED = {pprint.pformat(table, width=100, sort_dicts=True)}\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", nargs="+", help="JSON-lines files of `skillkern bench` rows")
    ap.add_argument("--write", action="store_true", help=f"write {os.path.relpath(TARGET)}")
    args = ap.parse_args(argv)
    rows = [json.loads(line) for p in args.rows for line in open(p) if line.strip()]
    table = orders(rows)
    for device, ops in table.items():
        for op, e in ops.items():
            ms = ", ".join(f"{b} {v:.3f} ms" for b, v in e["ms"].items())
            print(f"{device:24s} {op:18s} auto: {' > '.join(e['order'])}   ({ms})")
    if not table:
        print("no goal-shape rows of skillkern-triton / skillkern-cuda on a GPU in these files")
    if args.write:
        with open(TARGET, "w") as f:
            f.write(render(table))
        print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
