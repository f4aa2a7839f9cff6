"""The device's own ceilings, measured in the same run as the kernels they judge.

  matmul  one dense (n x n) @ (n x n) torch.mm per dtype (bf16 always, plus the run's dtype):
          the TFLOP/s that compute-bound kernels are held to (skill_ffn, token_similarity).
          Random operands: an all-zero matmul runs faster than a real one on some GPUs.
  copy    dst.copy_(src) of one large buffer: GB/s counting bytes read + written, the ceiling
          of memory-bound kernels (token_reduce).

On an H100 these land near 790 TFLOP/s (bf16) and 3.0 TB/s (see /work/shared/GPU.md); a run
that measures far less says the GPU is shared, throttled or in a lower clock state, and every
"% of ceiling" of that run is relative to what the device could do at that moment.

`python -m skillkern.bench.ceilings --out c.json` measures and writes them; `skillkern bench`
runs it as its first step (a child process, so the parent never holds a CUDA context) and
hands the numbers to every op benchmark.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from skillkern.bench._common import (DTYPES, copy_bandwidth, device_name, first_line, now_iso, pick_device,
                                     time_ms)

# Sizes: big enough to fill the device (8192^3 bf16 is ~1.1 TFLOP, ~1.4 ms on an H100; 1 GiB
# copies are far past the 50 MB L2), small enough on a CPU to take well under a second.
GPU_MATMUL_N, CPU_MATMUL_N = 8192, 512
GPU_COPY_BYTES, CPU_COPY_BYTES = 2**30, 2**26


def measure_matmul(n: int, dtype_name: str, device, timing, seed: int = 0) -> dict:
    """TFLOP/s of torch.mm on random (n, n) operands in dtype_name."""
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[dtype_name]
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    med, p20, p80 = time_ms(lambda: torch.mm(a, b), device, timing)
    return {"dtype": dtype_name, "n": n, "ms": med, "ms_p20": p20, "ms_p80": p80,
            "tflops": 2.0 * n ** 3 / (med * 1e-3) / 1e12}


def measure_copy(nbytes: int, device, timing, seed: int = 0) -> dict:
    med, p20, p80, gbps = copy_bandwidth(nbytes, device, timing, seed)
    return {"bytes": int(nbytes), "ms": med, "ms_p20": p20, "ms_p80": p80, "gbps": gbps}


def measure(device, dtypes, timing, matmul_n: int | None = None, copy_bytes: int | None = None) -> dict:
    """{"device", "time", "matmul": {dtype: row}, "copy": row, "errors": {...}}; a ceiling that
    fails is left out and its error kept (the op benchmarks then measure their own)."""
    device = torch.device(device)
    cpu = device.type != "cuda"
    n = matmul_n or (CPU_MATMUL_N if cpu else GPU_MATMUL_N)
    nbytes = copy_bytes or (CPU_COPY_BYTES if cpu else GPU_COPY_BYTES)
    out = {"device": device_name(device), "time": now_iso(), "matmul": {}, "copy": None, "errors": {}}
    for dt in dict.fromkeys(["bf16", *dtypes]):  # bf16 first, no repeats
        try:
            out["matmul"][dt] = measure_matmul(n, dt, device, timing)
        except Exception as e:  # noqa: BLE001 - reported in the run, the benchmarks go on
            out["errors"][f"matmul_{dt}"] = first_line(e)
    try:
        out["copy"] = measure_copy(nbytes, device, timing)
    except Exception as e:  # noqa: BLE001
        out["errors"]["copy"] = first_line(e)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def to_env(c: dict) -> dict:
    """The JSON the op benchmarks read from SKILLKERN_BENCH_CEILINGS (_common.given_ceilings)."""
    return {"matmul_tflops": {dt: r["tflops"] for dt, r in c["matmul"].items()},
            "copy_gbps": c["copy"]["gbps"] if c.get("copy") else None}


def describe(c: dict) -> str:
    parts = [f"matmul {dt} {r['n']}^3: {r['tflops']:.4g} TFLOP/s" for dt, r in c["matmul"].items()]
    if c.get("copy"):
        parts.append(f"copy {c['copy']['bytes'] / 2**20:.0f} MiB: {c['copy']['gbps']:.1f} GB/s (read + write)")
    parts += [f"{k} FAILED: {v}" for k, v in c.get("errors", {}).items()]
    return "; ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Measure the device's matmul and copy ceilings (JSON out).")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="measured besides bf16")
    ap.add_argument("--matmul-n", type=int, default=None, help=f"default {GPU_MATMUL_N} on a GPU, {CPU_MATMUL_N} on CPU")
    ap.add_argument("--copy-mib", type=float, default=None, help="default 1024 on a GPU, 64 on CPU")
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--rep", type=int, default=100)
    ap.add_argument("--cpu-reps", type=int, default=10)
    ap.add_argument("--out", default=None, help="JSON file to write (default: stdout only)")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    copy_bytes = int(args.copy_mib * 2**20) if args.copy_mib else None
    c = measure(device, [args.dtype], args, args.matmul_n, copy_bytes)
    print(f"ceilings on {c['device']}: {describe(c)}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(c, f)
    return 0 if c["matmul"] and c["copy"] else 1


if __name__ == "__main__":
    sys.exit(main())
