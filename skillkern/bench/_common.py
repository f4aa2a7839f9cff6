"""Pieces every skillkern benchmark shares: the command line they have in common, the
environment of a row (device, versions, git commit), timing, peak memory and JSON-lines rows.

The loop over shapes and providers is runner.py's; the op benchmarks (skill_ffn.py,
token_similarity.py, token_reduce.py) declare themselves to it. Scripts in the repo's
benchmarks/ folder (bench_train_step.py) reach both through the shim benchmarks/_common.py.
Nothing here imports skillkern or touches CUDA at import time.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
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
    """None when skillkern's `backend` can run `op` on `device` here, else why not: the one
    backend chooser's BackendUnavailable message (it also knows whether the loaded extension
    has the op). Any other exception is a bug and propagates."""
    import skillkern
    from skillkern import _backend

    try:
        _backend.resolve(op, backend, torch.device(device))
    except skillkern.BackendUnavailable as e:
        return first_line(e, with_type=False)
    return None


def importable(module: str) -> bool:
    """Whether a peer package could be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def first_line(e: BaseException, with_type: bool = True) -> str:
    """'Type: first line of the message' (the message alone with with_type=False)."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not with_type:
        return msg or type(e).__name__
    return f"{type(e).__name__}: {msg}"


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- measuring


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


def compile_baseline(fn, **kwargs):
    """torch.compile(fn, **kwargs) as a baseline: a dynamo cache big enough for every shape of a
    run, and no donated buffers (the bwd mode walks one retained graph many times, which a
    compiled backward with donated buffers refuses)."""
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    return torch.compile(fn, **kwargs)


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
