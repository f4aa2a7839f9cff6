"""The benchmark history: one JSON line per (run, op, shape, phase, provider), comparable
across commits and machines.

File: benchmarks/results/history.jsonl (GPU runs, committed with the code they measure);
CPU runs go to history.cpu.jsonl beside it (git-ignored: not performance data). A row:

  time, run_id, device, versions {skillkern, torch, triton, cuda, driver, python}, commit,
  op, phase (fwd | bwd | fwdbwd), dtype, label, shape {the op's shape fields}, provider,
  status (ok | unavailable | wrong | failed | skipped), reason,
  median_ms, p20_ms, p80_ms, metric ("tflops" | "gbps" | None), value,
  ceiling {kind: "matmul" | "copy", dtype, value} and pct_ceiling (value / ceiling, %),
  speedup {baseline: its median / this median} for every baseline of the op that ran,
  peak_mem_mb, quick (the run used --quick)

The op benchmarks write richer rows of their own (benchmarks/results/<op>.jsonl); these are
the same measurements in one schema for every op.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
from dataclasses import fields

from skillkern.bench._common import REPO, RESULTS

PHASES = {"fwd": "fwd", "bwd": "bwd", "fwd+bwd": "fwdbwd"}  # the op benchmarks' modes -> phases
CEILING_OF = {"tflops": "matmul", "gbps": "copy"}
UNIT = {"tflops": "TFLOP/s", "gbps": "GB/s"}
# Rows an op benchmark writes for its own ceiling (when run alone, by metric): not kernels.
CEILING_ROW = {"tflops": "matmul-peak", "gbps": "copy"}
CEILING_PROVIDERS = tuple(CEILING_ROW.values())


def default_path(cpu: bool) -> str:
    return os.path.join(RESULTS, "history.cpu.jsonl" if cpu else "history.jsonl")


def read(path: str) -> list[dict]:
    """The rows of a JSON-lines file ([] when it does not exist); a malformed line raises
    ValueError naming the file and line."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path}:{i}: not a JSON line ({e})") from e
    return rows


def append(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


# ----------------------------------------------------------------------------- op metadata


def _literal_assignments(path: str) -> dict:
    """Top-level NAME = <literal> of a script and the field names of its `class Shape`, read
    without running it (a checkout's benchmarks/bench_*.py)."""
    out = {}
    try:
        tree = ast.parse(open(path).read(), path)
    except (OSError, SyntaxError):
        return out
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
        elif isinstance(node, ast.ClassDef) and node.name == "Shape":
            out["_shape_fields"] = tuple(n.target.id for n in node.body
                                         if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name))
    return out


def op_meta(bench) -> dict:
    """{"metric", "baselines", "shape_fields"} of an OpBench: a built-in's OpSpec (the fields of
    its Shape dataclass), or a script's constants METRIC and BASELINES and its `class Shape`."""
    if bench.module:
        spec = bench.load().SPEC
        shape = spec.presets["cpu-quick"]()[0]
        return {"metric": spec.metric, "baselines": tuple(spec.baselines),
                "shape_fields": tuple(f.name for f in fields(shape))}
    lit = _literal_assignments(bench.path)
    return {"metric": lit.get("METRIC"), "baselines": tuple(lit.get("BASELINES", ())),
            "shape_fields": lit.get("_shape_fields", ())}


# ----------------------------------------------------------------------------- rows


def to_history(op: str, raw: list[dict], meta: dict, ceilings: dict | None, run: dict) -> list[dict]:
    """History rows of one op benchmark's raw rows. run: run_id, versions, quick, and the
    commit (used when a raw row has none). ceilings: ceilings.measure()'s dict or None."""
    metric_default = meta.get("metric")
    out = []
    for r in raw:
        if r.get("provider") in CEILING_PROVIDERS:
            continue
        metric = metric_default or ("gbps" if "gbps" in r else "tflops" if "tflops" in r else None)
        value = r.get(metric) if metric else None
        dtype = r.get("dtype")
        ceil = None
        if ceilings and metric == "tflops":
            m = ceilings.get("matmul", {}).get(dtype) or ceilings.get("matmul", {}).get("bf16")
            if m:
                ceil = {"kind": "matmul", "dtype": m["dtype"], "value": m["tflops"]}
        elif ceilings and metric == "gbps" and ceilings.get("copy"):
            ceil = {"kind": "copy", "dtype": None, "value": ceilings["copy"]["gbps"]}
        row = {
            "time": r.get("time"), "run_id": run["run_id"], "device": r.get("device"),
            "versions": {**run["versions"], **{k: r[k] for k in ("torch", "triton", "cuda", "python") if r.get(k)}},
            "commit": r.get("commit") or run.get("commit"), "op": op,
            "phase": PHASES.get(r.get("mode"), r.get("mode")), "dtype": dtype, "label": r.get("label"),
            "shape": {k: r[k] for k in meta.get("shape_fields", ()) if k in r},
            "provider": r.get("provider"), "status": r.get("status"), "reason": r.get("reason"),
            "median_ms": r.get("ms"), "p20_ms": r.get("ms_p20"), "p80_ms": r.get("ms_p80"),
            "metric": metric, "value": value, "ceiling": ceil,
            "pct_ceiling": 100.0 * value / ceil["value"] if value is not None and ceil else None,
            "speedup": {}, "peak_mem_mb": r.get("peak_mem_mb"), "quick": run.get("quick", False),
        }
        out.append(row)
    add_speedups(out, meta.get("baselines", ()))
    return out


def add_speedups(rows: list[dict], baselines) -> None:
    """row["speedup"][b] = b's median / row's median, for every baseline b that has an ok row
    of the same (label, phase, dtype)."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["status"] == "ok" and r["median_ms"]:
            groups.setdefault((r["label"], r["phase"], r["dtype"]), {})[r["provider"]] = r
    for provs in groups.values():
        for r in provs.values():
            r["speedup"] = {b: provs[b]["median_ms"] / r["median_ms"] for b in baselines if b in provs}


# ----------------------------------------------------------------------------- comparing


def resolve_rev(rev: str) -> str | None:
    """A git revision (branch, tag, HEAD~2, sha) -> its full sha, or None (no git / unknown)."""
    if not REPO:
        return None
    try:
        r = subprocess.run(["git", "rev-parse", "--verify", "--quiet", rev + "^{commit}"], cwd=REPO,
                           capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def _commit_matches(row_commit: str | None, sha: str) -> bool:
    c = (row_commit or "").removesuffix("-dirty")
    return len(c) >= 7 and (sha.startswith(c) or c.startswith(sha))


def reference_rows(ref: str, history: list[dict]) -> tuple[list[dict], str]:
    """The rows --compare REF refers to and a description: REF is a history file (its rows), or
    a git revision / commit prefix (the history rows of that commit, newest run per key)."""
    if os.path.isfile(ref):
        return read(ref), f"file {ref}"
    sha = resolve_rev(ref) or ref
    rows = [r for r in history if _commit_matches(r.get("commit"), sha)]
    return rows, f"commit {sha[:12]}" + ("" if sha != ref else " (as written: not a revision git knows here)")


def key(r: dict) -> tuple:
    return (r.get("op"), r.get("label"), r.get("phase"), r.get("dtype"), r.get("provider"))


def compare(current: list[dict], reference: list[dict]) -> list[dict]:
    """Per ok row of `current`: the newest ok reference row of the same op, shape, phase,
    dtype and provider, preferring the same device. speedup = reference median / current
    median (> 1: faster now); `noise` when the [p20, p80] ranges overlap."""
    def newer(a, b):
        return (a.get("time") or "") >= (b.get("time") or "")

    by_device: dict[tuple, dict] = {}
    by_key: dict[tuple, dict] = {}
    for r in reference:
        if r.get("status") != "ok" or not r.get("median_ms"):
            continue
        k, kd = key(r), (r.get("device"), *key(r))
        if kd not in by_device or newer(r, by_device[kd]):
            by_device[kd] = r
        if k not in by_key or newer(r, by_key[k]):
            by_key[k] = r
    out = []
    for r in current:
        if r.get("status") != "ok" or not r.get("median_ms"):
            continue
        old = by_device.get((r.get("device"), *key(r))) or by_key.get(key(r))
        if old is None:
            continue
        lo_old, hi_old = old.get("p20_ms") or old["median_ms"], old.get("p80_ms") or old["median_ms"]
        lo, hi = r.get("p20_ms") or r["median_ms"], r.get("p80_ms") or r["median_ms"]
        out.append({"op": r["op"], "label": r["label"], "phase": r["phase"], "provider": r["provider"],
                    "old_ms": old["median_ms"], "new_ms": r["median_ms"], "speedup": old["median_ms"] / r["median_ms"],
                    "noise": not (hi < lo_old or lo > hi_old), "same_device": old.get("device") == r.get("device"),
                    "old_commit": old.get("commit"), "old_device": old.get("device")})
    return out


def format_compare(cmp: list[dict], what: str) -> str:
    if not cmp:
        return f"--compare {what}: no row of this run has a counterpart there (same op, shape, phase, dtype, provider)"
    lines = [f"== compared with {what} (x = old median / new median; > 1 is faster now; ~ = [p20, p80] ranges overlap)"]
    lines.append(f"{'op':17s} {'shape':34s} {'phase':6s} {'provider':18s} {'old ms':>10s} {'new ms':>10s} {'x':>8s}")
    for c in cmp:
        mark = "~" if c["noise"] else " "
        dev = "" if c["same_device"] else f"  (old on {c['old_device']})"
        lines.append(f"{c['op']:17s} {c['label'][:34]:34s} {c['phase']:6s} {c['provider']:18s} {c['old_ms']:10.4g} "
                     f"{c['new_ms']:10.4g} {c['speedup']:7.2f}{mark}{dev}")
    return "\n".join(lines)


def latest_run(history: list[dict]) -> list[dict]:
    """The rows of the newest run in a history (by time, then run_id)."""
    if not history:
        return []
    newest = max(history, key=lambda r: (r.get("time") or "", r.get("run_id") or ""))["run_id"]
    return [r for r in history if r.get("run_id") == newest]
