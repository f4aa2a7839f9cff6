"""Pieces every skillkern benchmark shares: the command line they have in common, the
environment of a row (device, versions, git commit), timing, peak memory, relative error, the
run over shapes with its time budget, the per-provider check and timing steps, JSON-lines rows
and the summary table's parts.

Imported by the op benchmarks beside it (skill_ffn.py, token_similarity.py, token_reduce.py),
by `skillkern bench` (skillkern/bench/suite.py) and, through the shim benchmarks/_common.py, by
scripts in the repo's benchmarks/ folder. Each op benchmark keeps what is its op's own: shapes,
providers, FLOPs / bytes, the correctness reference, the goal. Nothing here imports skillkern or
touches CUDA at import time.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

import torch



def _find_repo() -> str | None:
    """The source checkout this package runs from (skillkern/ beside benchmarks/), else None
    (an installed wheel: there is no benchmarks/ folder and no git history)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return root if os.path.isdir(os.path.join(root, "benchmarks")) else None


REPO = _find_repo()
# Results go to the checkout's benchmarks/results/ (committed with the code they measure); an
# installed package writes under ./skillkern-results unless SKILLKERN_RESULTS_DIR says where.
RESULTS = os.environ.get("SKILLKERN_RESULTS_DIR") or (
    os.path.join(REPO, "benchmarks", "results") if REPO else os.path.abspath("skillkern-results"))

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODES = ("fwd", "bwd", "fwd+bwd")
# Every forward product has two backward ones (the gradient of each operand): bwd = 2x fwd.
MODE_FLOP_FACTOR = {"fwd": 1, "bwd": 2, "fwd+bwd": 3}

CPU_NOTE = ("NOTE: CPU run. Tiny shapes only show that the script works; these numbers are NOT "
            "performance data (bash benchmarks/gpu_check.sh measures on an H100/H200).")
FAILED_NOTE = "!!! some providers failed or were wrong: see the messages above !!!"


# `skillkern bench` measures the device's ceilings once per run and hands them to every op
# benchmark it starts through this variable (JSON: {"matmul_tflops": {dtype: TFLOP/s},
# "copy_gbps": GB/s}), so that each op reports % of the same numbers and none re-measures.
CEILINGS_ENV = "SKILLKERN_BENCH_CEILINGS"


def given_ceilings() -> dict:
    """The ceilings `skillkern bench` measured for this run ({} when run on its own)."""
    text = os.environ.get(CEILINGS_ENV)
    if not text:
        return {}
    try:
        d = json.loads(text)
    except ValueError:
        print(f"warning: {CEILINGS_ENV} is not JSON; measuring ceilings here", file=sys.stderr)
        return {}
    return d if isinstance(d, dict) else {}


def given_matmul_tflops(dtype_name: str) -> float | None:
    """The dense matmul TFLOP/s `skillkern bench` measured in dtype_name ("bf16", ...), if any."""
    v = given_ceilings().get("matmul_tflops", {}).get(dtype_name)
    return float(v) if v else None


def given_copy_gbps() -> float | None:
    """The device copy GB/s (read + write) `skillkern bench` measured, if any."""
    v = given_ceilings().get("copy_gbps")
    return float(v) if v else None


class Unavailable(Exception):
    """The provider cannot run here; the message says why."""


def backend_reason(op: str, backend: str, device) -> str | None:
    """None when skillkern's `backend` can run `op` on `device` here, else why not (the
    provider is then reported unavailable with that reason). Asks skillkern's one backend
    chooser, and for "cuda" also whether the loaded extension has the op (a library built from
    older sources loads but lacks newer ops)."""
    import skillkern
    from skillkern import _backend

    if backend == "triton" and torch.device(device).type == "cpu" and not interpreting():
        return ("skipped on CPU by default: Triton needs CUDA; set TRITON_INTERPRET=1 (tiny shapes, "
                "--dtype fp32: the interpreter's bf16 dot is wrong)")
    try:
        _backend.resolve(op, backend, torch.device(device))
    except skillkern.BackendUnavailable as e:
        return first_line(e, with_type=False)
    except Exception as e:  # e.g. a stale extension whose registration hooks fail: cannot run either
        return f"choosing the backend raised {first_line(e)}"
    if backend == "cuda":
        from skillkern.info import _has_native_op

        if not _has_native_op(op):
            return (f"the loaded extension has no torch.ops.skillkern.{_backend._CUDA_OPS[op]} "
                    "(built from older sources: rebuild it)")
    return None


def importable(module: str) -> bool:
    """Whether a peer package could be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def no_skillkern(script: str, e: BaseException):
    """A broken install: say why instead of a traceback, and exit 2."""
    print(f"{script}: import skillkern failed ({type(e).__name__}: {e}); run `make demo` "
          "(it installs the package first).", file=sys.stderr)
    raise SystemExit(2)


def interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def first_line(e: BaseException, with_type: bool = True) -> str:
    """'Type: first line of the message' (the message alone with with_type=False)."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not with_type:
        return msg or type(e).__name__
    return f"{type(e).__name__}: {msg}"


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- measuring


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf for NaN or inf (NaN never passes a check)."""
    out, ref = out.detach().double(), ref.detach().double()
    e = ((out - ref).norm() / ref.norm().clamp(min=1e-30)).item()
    return e if math.isfinite(e) else float("inf")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, args) -> tuple[float, float, float]:
    """(median, p20, p80) in ms. args gives warmup and rep (do_bench milliseconds) and
    cpu_reps (timed calls on the CPU, or on CUDA when triton is missing)."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except Exception:
            do_bench = None
        if do_bench is not None:
            # do_bench warms up, flushes L2 before every call (so inputs that fit in the 50 MB L2
            # are read from HBM each time) and times with CUDA events; warmup and rep are ms.
            q = do_bench(fn, warmup=args.warmup, rep=args.rep, quantiles=[0.5, 0.2, 0.8])
            return float(q[0]), float(q[1]), float(q[2])
        times = []
        fn()
        for _ in range(max(5, args.cpu_reps)):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
    else:
        fn()  # warm-up
        times = []
        for _ in range(args.cpu_reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()

    def q(p):
        return times[min(len(times) - 1, int(round(p * (len(times) - 1))))]

    return statistics.median(times), q(0.2), q(0.8)


def copy_bandwidth(nbytes: int, device, args, seed: int = 0) -> tuple[float, float, float, float]:
    """Device copy of one nbytes buffer of random bf16 values into another (dst.copy_(src)), timed
    like everything else (time_ms). Returns (median, p20, p80 ms, GB/s) with GB/s counting the
    bytes read plus the bytes written, 2 * nbytes: the ceiling a memory-bound kernel is held to."""
    n = max(1, int(nbytes) // 2)
    g = torch.Generator(device=device).manual_seed(seed)
    src = torch.randn(n, generator=g, device=device, dtype=torch.float32).to(torch.bfloat16)  # not zeros
    dst = torch.empty_like(src)
    med, p20, p80 = time_ms(lambda: dst.copy_(src), device, args)
    gbps = 2.0 * src.numel() * src.element_size() / (med * 1e-3) / 1e9
    return med, p20, p80, gbps  # the buffers go with this frame


def peak_mem_mb(fn, device) -> float | None:
    """Peak memory one call of fn allocates above what was allocated before it, MB (None on CPU)."""
    if device.type != "cuda":
        return None
    sync(device)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def mode_fn(mode: str, forward, inputs, grad_out):
    """The callable that a mode times: fwd calls forward(); bwd takes autograd.grad of one graph
    built here and retained, so each call walks it again; fwd+bwd does both. Gradients w.r.t.
    inputs, for grad_out, the upstream gradient(s) of forward()'s output(s)."""
    if mode == "fwd":
        return forward
    if mode == "bwd":
        out = forward()  # built once; each timed call walks the retained graph

        def bwd():
            return torch.autograd.grad(out, inputs, grad_out, retain_graph=True, allow_unused=True)

        return bwd

    def fwd_bwd():
        return torch.autograd.grad(forward(), inputs, grad_out, allow_unused=True)

    return fwd_bwd


def free_memory(device) -> None:
    """Collect garbage and hand cached CUDA blocks back, so the next peak starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- environment


def git_commit() -> str:
    env = os.environ.get("BENCH_GIT_COMMIT")  # the device machine gets the tree without .git
    if env:
        return env

    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=20)

    if REPO is None:
        return "unknown (installed package; set BENCH_GIT_COMMIT)"

    try:
        r = git("rev-parse", "--short", "HEAD")
        if r.returncode != 0:
            return "nocommit" if "HEAD" in r.stderr else "unknown (no .git; set BENCH_GIT_COMMIT)"
        sha = r.stdout.strip()
        # Results appended under benchmarks/results/ must not mark the tree dirty.
        d = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
        return sha + ("-dirty" if d.returncode == 0 and d.stdout.strip() else "")
    except Exception:
        return "unknown"


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu ({name})" if name else "cpu"


def env_info(device) -> dict:
    try:
        import triton

        triton_v = triton.__version__
    except Exception:
        triton_v = None
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_v,
        "python": platform.python_version(),
        "commit": git_commit(),
    }


# ----------------------------------------------------------------------------- command line


def new_parser(doc: str, quick: str, shapes: str, presets, providers) -> argparse.ArgumentParser:
    """The options every script starts with: --quick (help `quick`), --shapes (preset names or
    specs written like `shapes`), --providers, --modes, --dtype. The script adds its own next,
    then add_run_args."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=doc.split("Examples:")[1] if "Examples:" in doc else None)
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--shapes", nargs="+", default=None,
                    help=f"presets {sorted(presets)} or specs {shapes} (default: gpu on CUDA, cpu on CPU)")
    ap.add_argument("--providers", default=None, help=f"comma list of {','.join(providers)}")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list of fwd,bwd,fwd+bwd")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    return ap


def add_run_args(ap: argparse.ArgumentParser, op: str, goal_first: str) -> None:
    """The options every script ends with: device, output file, timing, time budget, seed."""
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--out", default=None,
                    help=f"JSON-lines file to append to (default benchmarks/results/{op}.jsonl; "
                         f"CPU runs: {op}.cpu.jsonl, git-ignored: not performance data)")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench measuring time, ms")
    ap.add_argument("--cpu-reps", type=int, default=10, help="timed calls per measurement on CPU")
    ap.add_argument("--time-budget", type=float, default=0.0,
                    help=f"seconds; start no new shape after this (0 = no limit). {goal_first}")
    ap.add_argument("--seed", type=int, default=0)


def pick_device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def pick_shapes(args, cpu: bool, presets: dict, parse_one) -> list:
    """--quick: the preset cpu-quick on a CPU, goal on a GPU. Else --shapes (default: the preset
    cpu or gpu), comma or space separated: preset names, and specs that parse_one(spec) reads."""
    if args.quick:
        return presets["cpu-quick" if cpu else "goal"]()
    out = []
    for spec in args.shapes or ["cpu" if cpu else "gpu"]:
        for item in spec.split(","):
            item = item.strip()
            if item in presets:
                out.extend(presets[item]())
            elif item:
                out.append(parse_one(item))
    return out


def parse_providers(text: str | None, known: tuple, default, hint: str = "") -> list[str]:
    """--providers as a list, each one of `known`; `default` when not given."""
    if not text:
        return list(default)
    providers = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in providers if p not in known]
    if bad:
        raise SystemExit(f"unknown providers {bad}; choose from {known}{hint}")
    return providers


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"modes must be among {MODES}, got {modes}")
    return modes


def print_header(header: str, env: dict, shapes, modes, providers) -> None:
    print(header)
    print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']}")
    print(f"shapes: {len(shapes)} x modes: {len(modes)} x providers: {len(providers)} ({', '.join(providers)})")


# ----------------------------------------------------------------------------- the run


def run_shapes(shapes, run_one, args, device, env: dict, rows: list[dict], t0: float) -> bool:
    """run_one(shape) -> (its rows, all right?) for each shape in order, starting none once
    args.time_budget seconds (0 = no limit) have passed since t0. A shape that raises (e.g. out of
    memory in the reference) gets one failed row and the run goes on. Every shape's rows get its
    label, are appended to args.out at once (a run cut short keeps them) and added to rows, whose
    count is printed at the end. Returns whether every shape was right."""
    all_ok = True
    for i, shape in enumerate(shapes):
        print(f"\n[shape {i + 1}/{len(shapes)}, {time.time() - t0:.0f} s elapsed]", flush=True)
        if args.time_budget and time.time() - t0 > args.time_budget:
            print(f"\n!!! time budget of {args.time_budget:g} s spent: skipping {len(shapes) - i} "
                  f"shape(s): {', '.join(s.label() for s in shapes[i:])} !!!")
            break
        try:
            srows, ok = run_one(shape)
        except Exception as e:
            msg = first_line(e)
            print(f"\n!!! {shape.label()}: FAILED before timing: {msg[:300]} !!!")
            srows, ok = [dict(time=now_iso(), **env, dtype=args.dtype, **asdict(shape), provider="(all)",
                              mode=None, status="failed", reason=msg[:500])], False
            free_memory(device)
        all_ok &= ok
        for r in srows:
            r["label"] = shape.label()
        append_rows(args.out, srows)
        rows += srows
    print(f"\n{len(rows)} rows appended to {args.out} ({time.time() - t0:.1f} s)")
    return all_ok


def setup_failed(prov: str, row0: dict, e: BaseException, expected: bool, soft: bool = False) -> dict:
    """The row of a provider whose set-up or first call raised e, its line printed. expected: e
    says why the provider cannot run here (Unavailable, skillkern's BackendUnavailable) and is
    shown without its type. Status "unavailable" when expected or soft, else "failed"."""
    unavailable = expected or soft
    msg = first_line(e, with_type=not expected)
    print(f"  {prov:18s} {'UNAVAILABLE' if unavailable else '!!! FAILED !!!'}: {msg[:300]}")
    return dict(row0, status="unavailable" if unavailable else "failed", reason=msg[:500])


def check_errors(prov: str, row0: dict, modes, e_fwd: float, tol_fwd: float, e_grad: float | None,
                 tol_grad: float, worst: str | None = None) -> tuple[list[dict], list[str]]:
    """The "wrong" rows of a provider past its limits (their lines printed) and the modes left
    to time: none after a wrong forward; fwd alone after wrong gradients (a row per backward
    mode; worst names the worst gradient). e_grad None: the gradients were not checked."""
    if not e_fwd <= tol_fwd:
        print(f"  !!! {prov}: FORWARD WRONG (rel err {e_fwd:.3e} > {tol_fwd:.3g}); provider skipped !!!")
        return [dict(row0, status="wrong", reason=f"forward rel err {e_fwd:.3e} > {tol_fwd:.3g}")], []
    if e_grad is not None and not e_grad <= tol_grad:
        print(f"  !!! {prov}: GRADIENTS WRONG (rel err {e_grad:.3e} > {tol_grad:.3g}"
              + (f", {worst}" if worst else "") + "); bwd modes skipped !!!")
        why = f"grad rel err {e_grad:.3e} > {tol_grad:.3g}" + (f" ({worst})" if worst else "")
        return ([dict(row0, mode=m, status="wrong", reason=why) for m in modes if m != "fwd"],
                [m for m in modes if m == "fwd"])
    return [], list(modes)


def time_modes(prov: str, row0: dict, modes, make_fn, device, args, rates) -> tuple[list[dict], bool]:
    """Times the callable make_fn(mode) of each mode (time_ms, then peak_mem_mb). A mode that
    raises gets a "failed" row; one that runs, an "ok" row with ms, ms_p20, ms_p80, the fields
    of rates(mode, ms) and peak_mem_mb. rates returns (fields, text): the text follows the times
    in the printed line. Returns the rows and whether every mode ran."""
    rows, all_ok = [], True
    for mode in modes:
        try:
            fn = make_fn(mode)
            med, p20, p80 = time_ms(fn, device, args)
            mem = peak_mem_mb(fn, device)
        except Exception as e:
            msg = first_line(e)
            print(f"  !!! {prov} {mode}: FAILED while timing: {msg[:300]} !!!")
            rows.append(dict(row0, mode=mode, status="failed", reason=msg[:500]))
            all_ok = False
            continue
        finally:
            fn = None  # drops the retained graph of the bwd mode
        fields, text = rates(mode, med)
        rows.append(dict(row0, mode=mode, status="ok", ms=med, ms_p20=p20, ms_p80=p80, **fields, peak_mem_mb=mem))
        print(f"  {prov:18s} {mode:8s} {med:9.3f} ms  [{p20:.3f}, {p80:.3f}]  {text}"
              + (f"  peak {mem:8.1f} MB" if mem is not None else ""))
    return rows, all_ok


def add_speedups(rows: list[dict], modes, versus) -> None:
    """Per mode, on every ok row: r[key] = the ms of provider `other` / r's ms, for each (other,
    key) in versus; None when other has no ok row in that mode. Needs all of a shape's rows."""
    for mode in modes:
        ok = {r["provider"]: r for r in rows if r.get("mode") == mode and r.get("status") == "ok"}
        for r in ok.values():
            for other, key in versus:
                r[key] = ok[other]["ms"] / r["ms"] if other in ok else None


def stamp_rows(rows: list[dict]) -> None:
    """One time for all of a shape's rows, and mode None on those that never got to a mode."""
    now = now_iso()
    for r in rows:
        r["time"] = now
        r.setdefault("mode", None)


# ----------------------------------------------------------------------------- rows and tables


def default_out(op: str, cpu: bool) -> str:
    """benchmarks/results/<op>.jsonl; CPU rows go to <op>.cpu.jsonl (git-ignored: not
    performance data)."""
    return os.path.join(RESULTS, f"{op}.cpu.jsonl" if cpu else f"{op}.jsonl")


def append_rows(path: str, rows: list[dict]) -> None:
    """One JSON object per line, appended (a run cut short keeps the rows it wrote)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def fmt(v, spec, empty="-"):
    """format(v, spec), or `empty` right-aligned to the width that spec would give."""
    if v is not None:
        return format(v, spec)
    width = spec.split(".")[0].rstrip("<>^")
    return format(empty, ">" + width) if width.isdigit() else empty


def last_mode(modes) -> str:
    """The mode of the table's last columns and of the speedups shown: fwd+bwd when run."""
    return "fwd+bwd" if "fwd+bwd" in modes else modes[-1]


def table_head(rule: int, cpu: bool, modes, pct: str, tail: str) -> None:
    """Prints a rule of `rule` '='s, the CPU warning, and the column heads: provider, ms and the
    % column `pct` per mode, then `tail`."""
    print("\n" + "=" * rule)
    if cpu:
        print("CPU run: tiny shapes to show the script works. These numbers are NOT performance data.")
    head = "  ".join(f"{m + ' ms':>10s} {pct:>5s}" for m in modes)
    print(f"{'provider':18s}  {head}  {tail}")


def by_shape(rows: list[dict], skip: str | None = None) -> dict[str, dict[str, dict]]:
    """{label: {provider: {mode: row}}} in the order the rows came, leaving out the rows of
    provider `skip` (a ceiling the table prints on its own). Mode None: never timed."""
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["provider"] != skip:
            out.setdefault(r["label"], {}).setdefault(r["provider"], {})[r.get("mode")] = r
    return out


def table_line(p: str, prow: dict, modes, pct: tuple[str, str], tail, reason: int = 80) -> str:
    """Provider p's line: its status and reason when it never timed (unavailable, skipped,
    failed before timing); else per mode the ms and the row's pct = (key, format spec), then
    tail(the row of the last mode, {} unless it is ok)."""
    if None in prow:
        return f"{p:18s}  {prow[None]['status']}: {prow[None].get('reason', '')[:reason]}"
    key, spec = pct
    cells = []
    for m in modes:
        r = prow.get(m, {})
        if r.get("status") == "ok":
            cells.append(f"{r['ms']:10.3f} {fmt(r[key], spec)}")
        else:
            cells.append(f"{r.get('status', '-'):>16s}")
    r = prow.get(last_mode(modes), {})
    return f"{p:18s}  {'  '.join(cells)}  {tail(r if r.get('status') == 'ok' else {})}"


def speedup(v) -> str:
    return f"{v:.2f}x" if v is not None else "-"


# ----------------------------------------------------------------------------- goals


def goal_row(rows: list[dict], label: str) -> dict | None:
    """The skillkern-triton fwd+bwd row of shape `label` that timed, if the run has one."""
    return next((r for r in rows if r.get("label") == label and r["provider"] == "skillkern-triton"
                 and r.get("mode") == "fwd+bwd" and r.get("status") == "ok"), None)


def met(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def goal_line(rows: list[dict], label: str, cpu: bool, verdicts) -> str:
    """The last line of a script with one goal shape: its skillkern-triton fwd+bwd time and
    verdicts(that row), or why there is none."""
    prefix = f"GPU goal ({label}, fwd+bwd, skillkern-triton):"
    if cpu:
        return f"{prefix} n/a on CPU (the goal shape is measured on an H100/H200: bash benchmarks/gpu_check.sh)"
    r = goal_row(rows, label)
    if r is None:
        return f"{prefix} not measured in this run (needs that shape, provider and mode)"
    return f"{prefix} {r['ms']:.3f} ms = {verdicts(r)}"
