"""`skillkern inspect`: a static performance profile of every kernel an op call launches, for a
target GPU, without the GPU.

How: the op's launchers (skillkern/ops/<op>/cost.py: launches) run on CPU tensors with Triton's
launch replaced by a recorder, so every kernel, grid, argument and autotune config of one call
(forward and backward) is captured exactly as the launchers make it. Each (kernel, config) is
then compiled for the target with the JIT's own specialization of those argument values
(triton's binder and _pack_args, as JITFunction.run does), assembled with ptxas -v and
disassembled (machine_code.py), and priced by the roofline model (roofline.py) from the work
declared beside the launcher (cost.py: KERNELS). The compiled extension is read the same way
(extension_code.py).

Records (one per kernel x config x arch, and one per op call) are plain dicts; see RECORD_KEYS.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import time
from dataclasses import dataclass, field

import torch

from skillkern.bench import machine_code as mc
from skillkern.bench import roofline

OPS = ("skill_ffn", "token_similarity", "token_reduce")
KERNEL_KEYS = ("op", "phase", "kernel", "config", "arch", "chosen", "pruned", "regs", "spill_bytes",
               "stack_bytes", "smem_bytes", "smem_limit", "blocks_per_sm", "warps_per_sm", "occupancy_limiter",
               "mma", "mma_shape", "wgmma_pipelined", "loads", "tma", "programs", "flops", "hbm_bytes",
               "l2_bytes", "predicted_ms", "limiter")
CALL_KEYS = ("op", "shape", "dtype", "arch", "gpu", "predicted_ms", "predicted_pct_of_peak", "metric", "limiter")


def cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "skillkern", "inspect")


# ----------------------------------------------------------------------------- recording launches

@dataclass
class Launch:
    phase: str
    fn: object  # the JITFunction
    args: tuple
    kwargs: dict  # constexprs and options as launched (config included), no grid
    grid: object  # tuple or callable(meta)
    tuner: object = None  # the Autotuner, when autotuned
    config: object = None  # its triton.Config
    kept: bool = True  # survived the autotuner's prune_configs_by
    site: int = 0  # the launch site: the configs of one autotuned launch share it


@contextlib.contextmanager
def recording(out: list, phase_ref: list):
    """Replace Triton's launch (JITFunction.run, Autotuner.run) by recording: every config of an
    autotuner is recorded, each marked with whether its prune function kept it."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    saved = (JITFunction.run, Autotuner.run)
    ctx = {"tuner": None, "config": None, "kept": True, "site": 0}

    def jit_run(self, *args, grid, warmup, **kwargs):
        out.append(Launch(phase_ref[0], self, args, kwargs, grid, ctx["tuner"], ctx["config"], ctx["kept"],
                          ctx["site"]))
        if ctx["tuner"] is None:
            ctx["site"] += 1

    def tuner_run(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        kept = self.prune_configs(kwargs) if len(self.configs) > 1 else list(self.configs)
        for c in self.configs:
            ctx.update(tuner=self, config=c, kept=c in kept)
            self.fn.run(*args, **kwargs, **c.all_kwargs())
        ctx.update(tuner=None, config=None, kept=True, site=ctx["site"] + 1)
        self.nargs = None

    JITFunction.run, Autotuner.run = jit_run, tuner_run
    try:
        yield
    finally:
        JITFunction.run, Autotuner.run = saved


# ----------------------------------------------------------------------------- compiling

def _base_fn(fn):
    from triton.runtime.jit import JITFunction

    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def _backend(cc: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    return make_backend(GPUTarget("cuda", cc, 32))


def compile_launch(fn, args: tuple, kwargs: dict, cc: int):
    """triton.compile of `fn` for compute capability cc with exactly the JIT's specialization of
    these argument values (JITFunction.run's binder and _pack_args). Returns (kernel, bound args)."""
    import triton
    from triton import knobs
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    backend = _backend(cc)
    kwargs = dict(kwargs, debug=kwargs.get("debug", fn.debug) or knobs.runtime.debug,
                  instrumentation_mode=knobs.compilation.instrumentation_mode)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=backend.target, options=options.__dict__), dict(bound)


def _ptx_arch(cc: int) -> str:
    return f"sm_{cc}a" if cc >= 90 else f"sm_{cc}"


def kernel_facts(kernel, cc: int) -> dict:
    """The machine-code facts of a compiled Triton kernel (cached by its hash and arch)."""
    path = os.path.join(cache_dir(), f"{kernel.hash}-{cc}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    res = mc.ptxas_report(kernel.asm["ptx"], _ptx_arch(cc), ("--regAllocOptLevel=2",))
    mix = mc.mix(mc.opcodes(mc.sass_of(kernel.asm["cubin"])))
    facts = dict(regs=res.regs, spill_bytes=res.spill_bytes, stack_bytes=res.stack_bytes,
                 smem_bytes=kernel.metadata.shared + res.static_smem, warps=kernel.metadata.num_warps,
                 stages=kernel.metadata.num_stages, mma=mix.mma, mma_shape=mix.mma_shape, mma_input=mix.mma_input,
                 wgmma_serialized=res.wgmma_serialized, loads=mix.loads, sass_counts=mix.counts)
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(facts, f)
    os.replace(tmp, path)
    return facts


def static_fits(facts: dict, cc: int) -> bool:
    """The one rule the autotuners prune by: no spills, and the shared memory fits one block."""
    return facts["spill_bytes"] == 0 and facts["smem_bytes"] <= mc.LIMITS[cc]["smem_block"]


# ----------------------------------------------------------------------------- one op

def _config_label(launch: Launch, bound: dict) -> str:
    if launch.config is not None:
        c = launch.config
        tiles = "x".join(str(v) for v in c.kwargs.values())
        return f"{tiles} w{c.num_warps} s{c.num_stages}"
    blocks = {k: v for k, v in bound.items() if k.startswith(("BLOCK", "NI_", "NT_", "S_PAD"))}
    warps = launch.kwargs.get("num_warps", 4)
    stages = launch.kwargs.get("num_stages", 3)
    return " ".join(f"{k}={v}" for k, v in blocks.items()) + f" w{warps} s{stages}"


def _inflight(facts: dict) -> float:
    """Bytes one program keeps in flight (see roofline's docstring)."""
    if facts["loads"] in ("tma", "cp.async") and facts["stages"] > 1:
        return facts["smem_bytes"] * (facts["stages"] - 1) / facts["stages"]
    return facts["warps"] * 32 * 16 * 2


def _grid_of(launch: Launch, bound: dict) -> tuple:
    g = launch.grid(bound) if callable(launch.grid) else launch.grid
    return tuple(g) + (1,) * (3 - len(g))


def case_for(op: str, shape, dtype: str, extra: list | None = None):
    """The op benchmark's case (fresh CPU tensors) at `shape` (a preset name's first shape,
    or a spec such as T=4096:d=1024 or T=4096,d=1024)."""
    from skillkern.bench import runner
    from skillkern.bench._common import DTYPES

    spec = runner.spec_of(op)
    args = runner.build_parser(spec).parse_args(["--dtype", dtype, *(extra or [])])
    if spec.finish_args:
        spec.finish_args(args, False)
    if shape is None or shape == "goal":
        shape = spec.presets["goal"]()[0]
    elif isinstance(shape, str):
        shape = spec.presets[shape]()[0] if shape in spec.presets else spec.parse_shape(shape.replace(",", ":"))
    return spec, shape, spec.make_case(shape, DTYPES[dtype], torch.device("cpu"), args)


def inspect_op(op: str, shape=None, dtype: str = "bf16", arch: int = 90, gpu: str | None = None,
               extra: list | None = None, choices: dict | None = None, log=None) -> tuple[dict, list[dict]]:
    """(the op-call record, the kernel records) of one op call (forward + backward) at `shape`."""
    from skillkern._backend import interpreting

    if interpreting():
        raise RuntimeError("skillkern inspect compiles real kernels: run it in a process started without "
                           "TRITON_INTERPRET (the autotuners were built with the interpreter's one config)")
    target = roofline.target_for(arch, gpu)
    cc = target.cc
    spec, shape, case = case_for(op, shape, dtype, extra)
    cost = importlib.import_module(f"skillkern.ops.{op}.cost")
    ctx, calls = cost.launches(case)
    launches, phase = [], [None]
    with recording(launches, phase), pruning_by(cc):
        for phase[0], thunk in calls:
            thunk()
    records = []
    for L in launches:
        fn = _base_fn(L.fn)
        t0 = time.time()
        kernel, bound = compile_launch(fn, L.args, L.kwargs, cc)
        facts = kernel_facts(kernel, cc)
        grid = _grid_of(L, bound)
        programs = grid[0] * grid[1] * grid[2]
        occ = mc.occupancy(cc, facts["regs"], facts["smem_bytes"], facts["warps"])
        work = cost.KERNELS[fn.__name__](bound, grid, ctx)
        pred = roofline.predict(target, work, programs=programs, blocks_per_sm=occ["blocks_per_sm"],
                                mma=facts["mma"], mma_input=facts["mma_input"],
                                pipelined=facts["wgmma_serialized"] is None, inflight_bytes=_inflight(facts))
        rec = dict(op=op, phase=L.phase, kernel=fn.__name__, config=_config_label(L, bound), arch=cc,
                   gpu=target.name, tuned=L.tuner is not None, pruned=not L.kept, regs=facts["regs"],
                   spill_bytes=facts["spill_bytes"], stack_bytes=facts["stack_bytes"], smem_bytes=facts["smem_bytes"],
                   smem_limit=mc.LIMITS[cc]["smem_block"], **occ, mma=facts["mma"], mma_shape=facts["mma_shape"],
                   wgmma_pipelined=None if facts["mma"] != "wgmma" else facts["wgmma_serialized"] is None,
                   wgmma_serialized=facts["wgmma_serialized"], loads=facts["loads"], tma=facts["loads"] == "tma",
                   programs=programs, flops=work.flops, hbm_bytes=work.hbm_bytes, l2_bytes=work.l2_bytes,
                   predicted_ms=pred["predicted_ms"], limiter=pred["limiter"], terms=pred["terms"],
                   fits=static_fits(facts, cc), launch=L.site, compile_s=round(time.time() - t0, 2))
        records.append(rec)
        if log:
            log(rec)
    _mark_chosen(records, choices or {})
    chosen = [r for r in records if r["chosen"]]
    total = sum(r["predicted_ms"] for r in chosen if r["predicted_ms"] is not None)
    useful = spec.work(case, "fwd+bwd")
    metric = spec.metric
    if metric == "tflops":
        rate = useful["flops"] / (total * 1e-3) / 1e12 if total else None
        peak = target.mma_tflops * (0.5 if dtype == "fp32" else 1.0)
    else:
        rate = useful["bytes"] / (total * 1e-3) / 1e9 if total else None
        peak = target.hbm_tbps * 1e3
    slowest = max(chosen, key=lambda r: r["predicted_ms"] or 0.0) if chosen else None
    call = dict(op=op, shape=shape.label(), dtype=dtype, arch=cc, gpu=target.name, predicted_ms=total,
                predicted_rate=rate, predicted_pct_of_peak=100.0 * rate / peak if rate else None,
                metric="TFLOP/s" if metric == "tflops" else "GB/s",
                limiter=f"{slowest['kernel']}: {slowest['limiter']}" if slowest else None,
                kernels=len(chosen), target=roofline.target_dict(target))
    return call, records


def _mark_chosen(records: list, choices: dict) -> None:
    """Per launch site: the recorded autotune choice (choices[kernel] = config label) when there
    is one, else the config the model predicts fastest among those the prune function kept."""
    sites = {}
    for r in records:
        sites.setdefault(r["launch"], []).append(r)
    for group in sites.values():
        for r in group:
            r["chosen"] = False
        want = choices.get(group[0]["kernel"])
        pick = next((r for r in group if r["config"] == want), None)
        if pick is None:
            kept = [r for r in group if not r["pruned"] and r["predicted_ms"] is not None] or group
            pick = min(kept, key=lambda r: r["predicted_ms"] if r["predicted_ms"] is not None else float("inf"))
            pick["chosen_by"] = "model"
        else:
            pick["chosen_by"] = "recorded autotune"
        pick["chosen"] = True


@contextlib.contextmanager
def pruning_by(cc: int):
    """Make the autotuners' prune functions judge configs by their compiled code for cc."""
    from skillkern.ops import _common

    def fits(fn, args, kwargs):
        kernel, _ = compile_launch(_base_fn(fn), args, kwargs, cc)
        return static_fits(kernel_facts(kernel, cc), cc)

    with _common.fit_check(fits):
        yield
