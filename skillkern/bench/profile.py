"""`skillkern profile`: one op, one shape, one provider and phase under torch.profiler.

Prints the kernel table (per kernel: time per iteration, launches per iteration, share of the
device time), the achieved TFLOP/s of the operators whose FLOPs torch.profiler counts (aten
matmuls and convs: the torch baselines), the whole call's device time with its achieved TFLOP/s
and GB/s (the op's FLOPs and minimum bytes over that time: the profiler cannot split a custom
op's work among its kernels),
writes a Chrome trace (chrome://tracing, ui.perfetto.dev) and prints the Nsight Compute command
that profiles the busiest kernel in depth. On a CPU the table lists aten operators instead of
kernels (self CPU time) and the numbers only show that the path runs.

The case (inputs, provider, phase) is built by the runner from the op's OpSpec, so what is
profiled is exactly what `skillkern bench` times.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
import time

import torch

from skillkern.bench import BUILTIN, runner
from skillkern.bench._common import DTYPES, MODES, RESULTS, pick_device, sync


def add_args(ap) -> None:
    ap.add_argument("--op", required=True, help="skill_ffn, token_similarity or token_reduce")
    ap.add_argument("--shape", default=None,
                    help="the op's shape spec (e.g. T=32768:d=1024:h=4096:routing=skewed) or preset name, first "
                         "shape used (default: the goal shape on a GPU, the cpu-quick shape on CPU)")
    ap.add_argument("--provider", default=None, help="default skillkern-triton on a GPU, skillkern-torch on CPU")
    ap.add_argument("--mode", default="fwd+bwd", choices=MODES)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--device", default=None)
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls first (compile, autotune)")
    ap.add_argument("--iters", type=int, default=10, help="profiled calls")
    ap.add_argument("--top", type=int, default=15, help="rows of the kernel table")
    ap.add_argument("--trace", default=None,
                    help="Chrome trace file (default benchmarks/results/profiles/<op>-<provider>-<mode>.json)")
    ap.add_argument("--no-trace", action="store_true", help="write no trace (e.g. under ncu)")


def _pick_shape(spec: runner.OpSpec, text: str | None, cpu: bool):
    if text is None:
        return spec.presets["cpu-quick" if cpu else "goal"]()[0]
    if text in spec.presets:
        return spec.presets[text]()[0]
    return spec.parse_shape(text)


def _device_us(evt) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(evt, attr, None)
        if v:
            return float(v)
    return 0.0


def kernel_table(prof, cuda: bool, iters: int, skip: str) -> list[dict]:
    """[{name, ms (per iteration), launches (per iteration), share}] sorted by time. CUDA:
    device kernels (and memcpy / memset); CPU: aten operators by self CPU time."""
    rows = []
    for evt in prof.key_averages():
        if evt.key == skip:
            continue
        if cuda:
            dev_type = getattr(evt, "device_type", None)
            us = _device_us(evt)
            is_kernel = dev_type is not None and str(dev_type).endswith("CUDA")
            if not is_kernel or us <= 0:
                continue
        else:
            us = float(evt.self_cpu_time_total)
            if us <= 0 or not evt.key.startswith("aten::"):
                continue
        rows.append({"name": evt.key, "us_total": us, "count": evt.count})
    total = sum(r["us_total"] for r in rows) or 1.0
    for r in rows:
        r["ms"] = r["us_total"] / iters / 1e3
        r["launches"] = r["count"] / iters
        r["share"] = 100.0 * r["us_total"] / total
    return sorted(rows, key=lambda r: -r["us_total"])


def flop_ops(prof, cuda: bool, iters: int) -> list[dict]:
    """Operators torch.profiler counts FLOPs for (with_flops: aten::mm, addmm, bmm, conv, ...):
    [{name, calls, ms, tflops}] per iteration, time being the device time of the kernels they
    launched on CUDA, their CPU time on a CPU. Custom ops (skillkern's, the peers') have no
    count: the whole call's rate covers them."""
    rows = []
    for evt in prof.key_averages():
        flops = getattr(evt, "flops", 0) or 0
        if flops <= 0:
            continue
        us = float(getattr(evt, "device_time_total", 0) or getattr(evt, "cuda_time_total", 0) or 0) if cuda \
            else float(evt.cpu_time_total)
        if us <= 0:
            continue
        rows.append({"name": evt.key, "calls": evt.count / iters, "ms": us / iters / 1e3,
                     "tflops": flops / (us * 1e-6) / 1e12})
    return sorted(rows, key=lambda r: -r["ms"])


def ncu_command(args, top_kernel: str | None, shape_spec: str) -> str:
    """The Nsight Compute line that profiles one launch of the busiest kernel after the warm-up."""
    cmd = [sys.executable, "-m", "skillkern.cli", "profile", "--op", args.op, "--shape", shape_spec,
           "--provider", args.provider, "--mode", args.mode, "--dtype", args.dtype, "--iters", "1",
           "--warmup", str(args.warmup), "--no-trace"]
    kernel = ""
    if top_kernel:
        # ncu matches the mangled or demangled base name; the first identifier is enough
        base = re.split(r"[<(\s]", top_kernel, maxsplit=1)[0][:60]
        kernel = f"-k regex:{shlex.quote(re.escape(base))} --launch-skip {args.warmup} --launch-count 1 "
    name = f"skillkern-{args.op}-{args.provider}"
    return f"ncu --set full --target-processes all {kernel}-o {name} " + " ".join(shlex.quote(c) for c in cmd)


def run(args) -> int:
    if args.op not in BUILTIN:
        raise SystemExit(f"skillkern profile: `--op` must be one of the package's op benchmarks "
                         f"{list(BUILTIN)}, got {args.op!r}")
    if args.iters < 1 or args.warmup < 0:
        raise SystemExit("skillkern profile: `--iters` must be >= 1 and `--warmup` >= 0")
    spec = runner.spec_of(args.op)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    shape = _pick_shape(spec, args.shape, not cuda)
    args.provider = args.provider or ("skillkern-triton" if cuda else "skillkern-torch")
    if args.provider not in spec.providers:
        raise SystemExit(f"skillkern profile: `--provider` must be one of {tuple(spec.providers)}, got {args.provider!r}")
    op_args = runner.build_parser(spec).parse_args(["--dtype", args.dtype, "--device", device.type])
    if spec.finish_args:
        spec.finish_args(op_args, not cuda)
    try:
        fn, work = runner.profile_target(spec, shape, args.provider, args.mode, op_args, device)
    except Exception as e:  # noqa: BLE001 - Unavailable / BackendUnavailable / a bad shape: say why
        print(f"skillkern profile: {args.provider} cannot run {args.op} at {shape.label()}: {type(e).__name__}: {e}")
        return 1
    label = f"{args.op}:{args.provider}:{args.mode}"
    print(f"profiling {label} at {shape.label()} ({args.dtype}) on {device}: {args.warmup} warm-up + {args.iters} calls")
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with runner.id_checks(False):  # as when timing: the id range check syncs with the host
        for _ in range(args.warmup):
            fn()
        sync(device)
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=activities, with_flops=True) as prof:
            for _ in range(args.iters):
                with torch.profiler.record_function(label):
                    fn()
            sync(device)
    wall_ms = (time.perf_counter() - t0) * 1e3 / args.iters
    table = kernel_table(prof, cuda, args.iters, label)
    what = "kernel" if cuda else "aten operator (self CPU time)"
    print(f"\n{what:60s} {'ms/iter':>9s} {'launches' if cuda else 'calls':>8s} {'share':>6s}")
    for r in table[: args.top]:
        print(f"{r['name'][:60]:60s} {r['ms']:9.4f} {r['launches']:8.1f} {r['share']:5.1f}%")
    if len(table) > args.top:
        print(f"... {len(table) - args.top} more")
    counted = flop_ops(prof, cuda, args.iters)
    if counted:
        print(f"\n{'operators with FLOP counts (torch.profiler)':60s} {'ms/iter':>9s} {'calls':>8s} {'TFLOP/s':>9s}")
        for r in counted[: args.top]:
            print(f"{r['name'][:60]:60s} {r['ms']:9.4f} {r['calls']:8.1f} {r['tflops']:9.4g}")
    dev_ms = sum(r["ms"] for r in table)
    launches = sum(r["launches"] for r in table)
    parts = [f"{'device' if cuda else 'operator'} time {dev_ms:.4f} ms/iter in {launches:.0f} "
             f"{'launches' if cuda else 'calls'}, wall {wall_ms:.4f} ms/iter (profiler on)"]
    if dev_ms > 0 and work.get("flops"):
        parts.append(f"{work['flops'] / (dev_ms * 1e-3) / 1e12:.4g} TFLOP/s")
    if dev_ms > 0 and work.get("bytes"):
        parts.append(f"{work['bytes'] / (dev_ms * 1e-3) / 1e9:.4g} GB/s of the minimum bytes")
    print("whole call: " + "; ".join(parts))
    if not cuda:
        print("CPU run: shows that the path runs; these numbers are NOT performance data.")
    if not args.no_trace:
        trace = args.trace or os.path.join(RESULTS, "profiles", f"{args.op}-{args.provider}-{args.mode.replace('+', '')}.json")
        os.makedirs(os.path.dirname(os.path.abspath(trace)), exist_ok=True)
        prof.export_chrome_trace(trace)
        print(f"Chrome trace: {trace} (open in chrome://tracing or ui.perfetto.dev)")
    top = table[0]["name"] if (cuda and table) else None
    spec_text = args.shape if args.shape and args.shape not in spec.presets else _spec_of(shape)
    print("deeper look at the busiest kernel (Nsight Compute" + ("" if cuda else "; needs a GPU") + "):")
    print("  " + ncu_command(args, top, spec_text))
    return 0


def _spec_of(shape) -> str:
    """A shape dataclass back to the key=value spec the op's parse_shape reads."""
    from dataclasses import asdict

    return ":".join(f"{k}={v}" for k, v in asdict(shape).items())
