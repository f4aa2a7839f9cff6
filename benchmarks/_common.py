"""Pieces every skillkern benchmark script shares: the environment of a row (device, versions,
git commit), timing, peak memory, relative error and writing JSON-lines rows.

Imported by the scripts beside it (bench_skill_ffn.py, bench_token_similarity.py,
bench_token_reduce.py), which put this folder on sys.path; nothing here imports skillkern or
touches CUDA at import time.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

CPU_NOTE = ("NOTE: CPU run. Tiny shapes only show that the script works; these numbers are NOT "
            "performance data (bash benchmarks/gpu_check.sh measures on an H100/H200).")


class Unavailable(Exception):
    """The provider cannot run here; the message says why."""


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


# ----------------------------------------------------------------------------- environment


def git_commit() -> str:
    env = os.environ.get("BENCH_GIT_COMMIT")  # the device machine gets the tree without .git
    if env:
        return env

    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=20)

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
