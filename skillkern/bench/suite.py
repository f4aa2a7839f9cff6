"""`skillkern bench`: every op benchmark in one run, against the device's measured ceilings,
with a history that compares across commits and machines.

One run:
  1. measures the ceilings here (ceilings.py: dense matmul TFLOP/s in bf16 and the run's dtype,
     device copy GB/s);
  2. runs each op benchmark (skillkern/bench/<op>.py through runner.py, and a checkout's benchmarks/bench_*.py
     such as bench_train_step.py) in a child process: a CUDA fault in one op ends only that
     op, and each child's output (its checks, timings and shape progress) streams through.
     The children get the ceilings (SKILLKERN_BENCH_CEILINGS), --quick / --dtype / --shapes /
     --device / the time left, a temporary --out, and whatever follows `--`;
  3. appends their rows to benchmarks/results/<op>.jsonl (as the scripts do) and, in one schema
     for every op, to the history file (history.py);
  4. prints one summary: each kernel's median ms, TFLOP/s or GB/s, % of the measured ceiling
     and speedup over each baseline of its op; then --compare, --plot and --markdown.

Without a GPU it runs the CPU providers on small shapes and says that those numbers are not
performance data (history.cpu.jsonl, git-ignored).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import traceback
import uuid

from skillkern.bench import OpBench, ops
from skillkern.bench import ceilings as ceil_mod
from skillkern.bench import history as hist
from skillkern.bench._common import (CEILINGS_ENV, DTYPES, append_rows, default_out, env_info, now_iso,
                                     pick_device)

CPU_NOTE = ("CPU run: the CPU providers on small shapes, to show that everything runs. These numbers are "
            "NOT performance data (they go to history.cpu.jsonl, git-ignored).")
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_args(ap) -> None:
    names = ", ".join(ops())
    ap.add_argument("--op", action="append", default=None,
                    help=f"op benchmark to run; repeat or comma-separate (default: all: {names})")
    ap.add_argument("--quick", action="store_true", help="each op's quick preset (CPU: one tiny shape; GPU: the goal shapes)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--shapes", nargs="+", default=None,
                    help="passed to every op: preset names (cpu, gpu, gpu-quick, goal) or that op's specs")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--time-budget", type=float, default=0.0,
                    help="seconds for the whole run (0 = no limit): each op gets an equal share of what is "
                         "left when it starts (time an op leaves unused goes to the ones after it), starts no "
                         "new shape past its share (goal shapes run first) and is stopped 60 s past it")
    ap.add_argument("--history", default=None,
                    help="history file (default benchmarks/results/history.jsonl; CPU runs: history.cpu.jsonl)")
    ap.add_argument("--compare", default=None, metavar="REV|FILE",
                    help="print speedups against the history rows of git revision REV (or a commit prefix) or of FILE")
    ap.add_argument("--plot", nargs="?", const="", default=None, metavar="DIR",
                    help="write PNG charts (speedup per shape, history per kernel) to DIR (default: plots/ beside "
                         "the history file; plots.cpu/ for a CPU run)")
    ap.add_argument("--markdown", default=None, metavar="FILE", help="write the summary as Markdown tables to FILE")
    ap.add_argument("--no-run", action="store_true",
                    help="measure nothing: use the newest run in the history file (with --compare / --plot / --markdown)")
    ap.add_argument("--list", action="store_true", help="list the op benchmarks and exit")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up of the ceilings, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench measuring time of the ceilings, ms")
    ap.add_argument("--cpu-reps", type=int, default=10, help="timed calls per ceiling on CPU")


def _pick_ops(requested, available: dict[str, OpBench]) -> list[str]:
    if not requested:
        return list(available)
    names = [n.strip() for item in requested for n in item.split(",") if n.strip()]
    bad = [n for n in names if n not in available]
    if bad:
        raise SystemExit(f"skillkern bench: `--op` {bad} unknown; choose from {list(available)}")
    return list(dict.fromkeys(names))


def run_op(bench: OpBench, argv: list[str], ceilings: dict | None, timeout: float | None,
           in_process: bool = False) -> tuple[list[dict], int]:
    """Runs one op benchmark; returns its rows and exit status (124 when stopped at `timeout`;
    the rows it wrote before that are kept). A child process by default; in_process (a
    package benchmark on the CPU, where no device fault can end the run) saves the child's
    start-up (~3 s of imports each on a small machine)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if ceilings:
        env[CEILINGS_ENV] = json.dumps(ceil_mod.to_env(ceilings))
    with tempfile.TemporaryDirectory(prefix="skillkern-bench-") as tmp:
        out = os.path.join(tmp, "rows.jsonl")
        if in_process and bench.module:
            saved = os.environ.get(CEILINGS_ENV)
            os.environ[CEILINGS_ENV] = env.get(CEILINGS_ENV, "")
            try:
                rc = bench.main([*argv, "--out", out])
            except SystemExit as e:  # argparse: a bad option for this op
                rc = e.code if isinstance(e.code, int) else 2
            except Exception:  # one op's crash must not end the run: report it, keep its rows
                traceback.print_exc()
                print(f"!!! {bench.name}: raised (traceback above); rows written before that are kept !!!")
                rc = 1
            finally:
                if saved is None:
                    os.environ.pop(CEILINGS_ENV, None)
                else:
                    os.environ[CEILINGS_ENV] = saved
            return hist.read(out), rc
        try:
            rc = subprocess.run([*bench.child_cmd(), *argv, "--out", out], env=env, timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            print(f"!!! {bench.name}: stopped after {timeout:.0f} s; rows of finished shapes are kept !!!")
            rc = 124
        return hist.read(out), rc


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def summary_lines(rows: list[dict], ceilings: dict | None, baselines: dict) -> list[str]:
    """The summary table: per op and shape, each provider and phase."""
    lines = []
    for op in dict.fromkeys(r["op"] for r in rows):
        op_rows = [r for r in rows if r["op"] == op]
        metric = next((r["metric"] for r in op_rows if r.get("metric")), None)
        ceil = next((r["ceiling"] for r in op_rows if r.get("ceiling")), None)
        unit = hist.UNIT.get(metric, "")
        cdesc = (f"% of {ceil['kind']}{' ' + ceil['dtype'] if ceil.get('dtype') else ''} {ceil['value']:.4g} {unit}"
                 if ceil else "no ceiling")
        lines.append(f"\n-- {op}: {unit or 'ms only'}, {cdesc}; x = speedup over each baseline "
                     f"({', '.join(baselines.get(op, ())) or 'none declared'})")
        lines.append(f"   {'phase':6s} {'provider':18s} {'median ms':>10s} {'[p20, p80]':>20s} {unit:>9s} {'%ceil':>6s}  speedups")
        for label in dict.fromkeys(r["label"] for r in op_rows):
            lines.append(f"   {label}")
            seen_reason = set()
            for r in (r for r in op_rows if r["label"] == label):
                if r["status"] != "ok":
                    if (r["provider"], r["status"]) in seen_reason:
                        continue  # one line per provider for a reason shared by its phases
                    seen_reason.add((r["provider"], r["status"]))
                    lines.append(f"   {r['phase'] or '-':6s} {r['provider']:18s} {r['status']}: {(r.get('reason') or '')[:90]}")
                    continue
                rng = f"[{_fmt(r['p20_ms'], '.4g')}, {_fmt(r['p80_ms'], '.4g')}]"
                sp = ", ".join(f"{b} {x:.2f}x" for b, x in r["speedup"].items() if b != r["provider"])
                lines.append(f"   {r['phase']:6s} {r['provider']:18s} {_fmt(r['median_ms'], '10.4g')} {rng:>20s} "
                             f"{_fmt(r['value'], '9.4g')} {_fmt(r['pct_ceiling'], '6.1f')}  {sp}")
    return lines


def markdown(rows: list[dict], ceilings: dict | None) -> str:
    """Markdown tables of a run (the fwd+bwd phase when measured), for README's Benchmarks."""
    r0 = rows[0]
    v = {k: r0["versions"].get(k) or "-" for k in ("torch", "triton", "cuda", "driver")}
    out = [f"Device: {r0.get('device')}; torch {v['torch']}, triton {v['triton']}, CUDA {v['cuda']}, "
           f"driver {v['driver']}; commit {r0.get('commit')}; dtype {r0.get('dtype')}."]
    if str(r0.get("device", "")).startswith("cpu"):
        out.append("**CPU run: these numbers show that everything runs; they are NOT performance data.**")
    if ceilings:
        out.append(f"Ceilings measured in the same run: {ceil_mod.describe(ceilings)}.")
    for op in dict.fromkeys(r["op"] for r in rows):
        op_rows = [r for r in rows if r["op"] == op and r["status"] == "ok"]
        phases = {r["phase"] for r in op_rows}
        phase = "fwdbwd" if "fwdbwd" in phases else (sorted(phases)[-1] if phases else None)
        op_rows = [r for r in op_rows if r["phase"] == phase]
        if not op_rows:
            continue
        unit = hist.UNIT.get(op_rows[0].get("metric"), "")
        out += ["", f"**{op}** ({phase}; median time, x = speedup over the baseline named)", "",
                f"| shape | provider | ms | {unit} | % ceiling | speedups |", "| --- | --- | --- | --- | --- | --- |"]
        for r in op_rows:
            sp = ", ".join(f"{b} {x:.2f}x" for b, x in r["speedup"].items() if b != r["provider"])
            out.append(f"| {r['label']} | {r['provider']} | {r['median_ms']:.4g} | {_fmt(r['value'], '.4g')} | "
                       f"{_fmt(r['pct_ceiling'], '.1f')} | {sp or '-'} |")
    return "\n".join(out) + "\n"


def run(args, op_args: list[str]) -> int:
    available = ops()
    if args.list:
        for name, b in available.items():
            print(f"{name:18s} {b.module or os.path.relpath(b.path)}")
        return 0
    names = _pick_ops(args.op, available)
    device = pick_device(args.device)
    cpu = device.type != "cuda"
    history_path = args.history or hist.default_path(cpu)
    history = hist.read(history_path)
    baselines = {n: hist.op_meta(available[n])["baselines"] for n in names}
    ceilings, all_ok = None, True

    if args.no_run:
        rows = [r for r in hist.latest_run(history) if not args.op or r["op"] in names]
        if not rows:
            raise SystemExit(f"skillkern bench --no-run: no run{' of ' + str(names) if args.op else ''} in {history_path}")
        print(f"newest run in {history_path}: {rows[0]['run_id']} ({rows[0].get('device')}, commit {rows[0].get('commit')})")
        for line in summary_lines(rows, None, baselines):
            print(line)
    else:
        from skillkern._info import versions

        t0 = time.time()
        env = env_info(device)
        run_meta = {"run_id": f"{now_iso()}-{uuid.uuid4().hex[:6]}", "versions": versions(), "commit": env["commit"],
                    "quick": args.quick}
        print(f"skillkern bench: {', '.join(names)} on {env['device']} | torch {env['torch']} | triton {env['triton']} "
              f"| commit {env['commit']}")
        if cpu:
            print(CPU_NOTE)
        ceilings = ceil_mod.measure(device, [args.dtype], args)
        print(f"ceilings: {ceil_mod.describe(ceilings)}", flush=True)
        rows = []
        for i, name in enumerate(names):
            left = None
            if args.time_budget:
                left = (args.time_budget - (time.time() - t0)) / (len(names) - i)  # this op's share
            if left is not None and left <= 0:
                print(f"\n!!! time budget of {args.time_budget:g} s spent: {name} not run !!!")
                all_ok = False
                continue
            print(f"\n==== [{i + 1}/{len(names)}] {name} ({time.time() - t0:.0f} s elapsed) ====", flush=True)
            argv = (["--quick"] if args.quick else []) + ["--dtype", args.dtype]
            if args.quick and cpu:
                argv += ["--cpu-reps", "5"]  # a CPU --quick run shows that things run; 5 timed calls do
            argv += (["--shapes", *args.shapes] if args.shapes else []) + ["--device", device.type]
            argv += ["--time-budget", f"{max(1.0, left):.0f}"] if left is not None else []  # 0 = no limit
            raw, rc = run_op(available[name], argv + op_args, ceilings, left + 60 if left is not None else None,
                             in_process=cpu)
            if rc not in (0, 1):
                print(f"!!! {name}: exit status {rc} ({len(raw)} rows) !!!")
            all_ok &= rc == 0
            if raw:
                append_rows(default_out(name, cpu), raw)
            op_rows = hist.to_history(name, raw, hist.op_meta(available[name]), ceilings, run_meta)
            hist.append(history_path, op_rows)
            rows += op_rows
        print(f"\n==== summary ({time.time() - t0:.0f} s; {len(rows)} rows appended to {history_path}) ====")
        if cpu:
            print(CPU_NOTE)
        print(f"ceilings: {ceil_mod.describe(ceilings)}")
        for line in summary_lines(rows, ceilings, baselines):
            print(line)
        if not rows:
            print("no rows: every op failed before measuring anything")
            return 1

    if args.compare:
        ref, what = hist.reference_rows(args.compare, history)
        ref = [r for r in ref if r.get("run_id") != rows[0].get("run_id")]  # never against itself
        print("\n" + hist.format_compare(hist.compare(rows, ref), what))
    if args.plot is not None:
        from skillkern.bench.plot import plot_run

        # CPU charts beside the git-ignored CPU history, apart from the GPU ones that are committed
        out_dir = args.plot or os.path.join(os.path.dirname(os.path.abspath(history_path)),
                                            "plots.cpu" if str(rows[0].get("device", "")).startswith("cpu") else "plots")
        try:
            files = plot_run(rows, hist.read(history_path), out_dir, baselines)
            print(f"\nplots: {', '.join(files) if files else 'none (no speedups or history to draw)'}")
        except RuntimeError as e:
            print(f"\n--plot: {e}")
            all_ok = False
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows, ceilings))
        print(f"markdown summary: {args.markdown}")
    if not all_ok:
        print("!!! some op benchmarks failed or reported failures: see above !!!")
    return 0 if all_ok else 1
