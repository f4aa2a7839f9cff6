"""The project's performance goals (benchmarks/NOTES.md) as verdicts on a run's rows, judged on
skillkern-triton's fwd+bwd row at each goal shape (the op's "goal" preset):

  skill_ffn         >= 1.25x the fastest baseline and >= 80 % of dense cuBLAS (the same FLOPs)
  token_similarity  >= 2x LIK's two calls, >= 10x naive, >= 50 % of the matmul ceiling and
                    <= 200 MB of peak extra memory
  token_reduce      >= 80 % of the copy ceiling on the minimum bytes and >= 3x eager-wukong
  maxsim            >= flash-maxsim (1x) and >= 2x late-interaction-kernels; the scoring shapes
                    are judged forward only (no gradient there), the training batch fwd+bwd

benchmarks/bench.py prints them after its table; for rows recorded by `skillkern bench` (each
op's <op>.jsonl under SKILLKERN_RESULTS_DIR):  python benchmarks/goals.py ROWS.jsonl...
Every line starts with "GPU goal" (gpu_check.sh greps for it).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from skillkern.bench import runner  # noqa: E402


def met(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def _part(v, goal, what: str, unit: str = "x", at_most: bool = False) -> tuple[str, bool]:
    """'<v><unit> <what> (goal >= <goal><unit>: MET)', and whether it is met (never when v is None)."""
    if v is None:
        return f"{what}: not measured", False
    ok = v <= goal if at_most else v >= goal
    return f"{v:.2f}{unit} {what} (goal {'<=' if at_most else '>='} {goal:g}{unit}: {met(ok)})", ok


def _skill_ffn(r: dict):
    dense = r["speedup"].get("dense-cublas")
    return [_part(r.get("speedup_vs_best_baseline"), 1.25, f"vs best baseline {r.get('best_baseline')}"),
            _part(100.0 * dense if dense else None, 80.0, "of dense cuBLAS", " %")]


def _token_similarity(r: dict):
    return [_part(r["speedup"].get("lik"), 2.0, "LIK's two calls"), _part(r["speedup"].get("naive"), 10.0, "naive"),
            _part(r.get("pct_ceiling"), 50.0, "of the matmul ceiling", " %"),
            _part(r.get("peak_mem_mb"), 200.0, "peak extra memory", " MB", at_most=True)]


def _token_reduce(r: dict):
    return [_part(r.get("pct_ceiling"), 80.0, "of the copy ceiling", " %"),
            _part(r["speedup"].get("eager-wukong"), 3.0, "eager-wukong")]


def _maxsim(r: dict):
    return [_part(r["speedup"].get("flash-maxsim"), 1.0, "flash-maxsim"), _part(r["speedup"].get("lik"), 2.0, "LIK")]


VERDICTS = {"skill_ffn": _skill_ffn, "token_similarity": _token_similarity, "token_reduce": _token_reduce,
            "maxsim": _maxsim}


def goal_lines(op: str, rows: list[dict], cpu: bool) -> list[str]:
    """One line per goal shape, then (several goal shapes) the op's verdict."""
    head = f"GPU goal ({op}, skillkern-triton"
    if cpu:
        return [f"{head}): n/a on CPU (the goal shapes are measured on an H100/H200: bash benchmarks/gpu_check.sh)"]
    shapes = runner.spec_of(op).presets["goal"]()
    lines, n_met, measured = [], 0, 0
    for shape in shapes:
        mode = runner.goal_mode(op, shape)
        r = next((r for r in rows if r.get("label") == shape.label() and r.get("provider") == "skillkern-triton"
                  and r.get("mode") == mode and r.get("status") == "ok"), None)
        if r is None:
            lines.append(f"{head}, {shape.label()}, {mode}): not measured in this run (needs that shape, provider "
                         "and mode)")
            continue
        parts = VERDICTS[op](r)
        measured += 1
        n_met += all(ok for _, ok in parts)
        lines.append(f"{head}, {shape.label()}, {mode}): {r['ms']:.3f} ms = " + "; ".join(text for text, _ in parts))
    if len(shapes) > 1:
        verdict = met(n_met == measured == len(shapes)) if measured else "not measured"
        lines.append(f"{head}): {verdict} - every part met at {n_met} of {len(shapes)} goal shapes ({measured} measured)")
    return lines


def main(paths: list[str]) -> int:
    """The goal lines of every op whose rows are in these JSON-lines files."""
    rows = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    for op in dict.fromkeys(r["op"] for r in rows if r.get("op") in VERDICTS):
        op_rows = [r for r in rows if r.get("op") == op]
        for line in goal_lines(op, op_rows, str(op_rows[0].get("device", "")).startswith("cpu")):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
