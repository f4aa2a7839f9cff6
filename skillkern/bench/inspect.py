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

Records (one per kernel x config x arch, and one per op call) are plain dicts with at least the keys KERNEL_KEYS / CALL_KEYS.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import time
import warnings
from dataclasses import dataclass

import torch

from skillkern.bench import machine_code as mc
from skillkern.bench import roofline

OPS = ("skill_ffn", "token_similarity", "token_reduce", "maxsim")
KERNEL_KEYS = ("op", "phase", "kernel", "config", "arch", "chosen", "pruned", "regs", "spill_bytes",
               "stack_bytes", "smem_bytes", "smem_limit", "blocks_per_sm", "warps_per_sm", "occupancy_limiter",
               "mma", "mma_shape", "wgmma_pipelined", "loads", "tma", "programs", "flops", "hbm_bytes",
               "l2_bytes", "predicted_ms", "limiter")
CALL_KEYS = ("op", "shape", "dtype", "arch", "gpu", "predicted_ms", "predicted_pct_of_peak", "metric", "limiter")


cache_dir = mc.cache_dir


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
    tune_key: str | None = None  # the autotuner's cache key for this launch (as Autotuner.run forms it)


@contextlib.contextmanager
def recording(out: list, phase_ref: list):
    """Replace Triton's launch (JITFunction.run, Autotuner.run) by recording: every config of an
    autotuner is recorded, each marked with whether its prune function kept it."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    saved = (JITFunction.run, Autotuner.run)
    ctx = {"tuner": None, "config": None, "kept": True, "site": 0, "key": None}

    def jit_run(self, *args, grid, warmup, **kwargs):
        out.append(Launch(phase_ref[0], self, args, kwargs, grid, ctx["tuner"], ctx["config"], ctx["kept"],
                          ctx["site"], ctx["key"]))
        if ctx["tuner"] is None:
            ctx["site"] += 1

    def tuner_run(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        kept = self.prune_configs(kwargs) if len(self.configs) > 1 else list(self.configs)
        named = {**self.nargs, **kwargs}
        key = [named[k] for k in self.keys if k in named]
        key += [str(v.dtype) for k, v in named.items() if k in self.arg_names and hasattr(v, "dtype")]
        for c in self.configs:
            ctx.update(tuner=self, config=c, kept=c in kept, key=str(tuple(key)))
            self.fn.run(*args, **kwargs, **c.all_kwargs())
        ctx.update(tuner=None, config=None, kept=True, site=ctx["site"] + 1, key=None)
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
    def compute():
        res = mc.ptxas_report(kernel.asm["ptx"], _ptx_arch(cc), ("--regAllocOptLevel=2",), mc.ptxas_for(cc))
        facts = dict(regs=res.regs, spill_bytes=res.spill_bytes, stack_bytes=res.stack_bytes,
                     smem_bytes=kernel.metadata.shared + res.static_smem, warps=kernel.metadata.num_warps,
                     stages=kernel.metadata.num_stages, wgmma_serialized=res.wgmma_serialized,
                     **mc.ptx_pipelining(kernel.asm["ptx"]))
        try:
            sass = mc.sass_of(kernel.asm["cubin"])
        except FileNotFoundError as e:  # no disassembler: the rest of the report still stands
            return dict(facts, mma="unknown", mma_shape=None, mma_input=None, loads="unknown", sass_counts={},
                        hot_loop=None, note=f"{e}: MMA kind and loads unknown (priced as the arch's best MMA)")
        mix = mc.mix(mc.opcodes(sass))
        return dict(facts, mma=mix.mma, mma_shape=mix.mma_shape, mma_input=mix.mma_input, loads=mix.loads,
                    sass_counts=mix.counts, hot_loop=mc.hot_loop(sass))

    if mc.tool("cuobjdump") is None:  # not cached: the facts are incomplete
        return compute()
    return mc.cached(f"{kernel.hash}-{cc}-v{mc.FACTS_VERSION}", compute)


def static_fits(facts: dict, cc: int) -> bool:
    """What the autotuners' prune rule (ops._common.keep_fitting) asks first: no spills, and the
    shared memory fits one block."""
    return facts["spill_bytes"] == 0 and facts["smem_bytes"] <= mc.LIMITS[cc]["smem_block"]


# ----------------------------------------------------------------------------- one op

def _config_label(launch: Launch, bound: dict) -> str:
    if launch.config is not None:
        return config_label(launch.config)
    blocks = {k: v for k, v in bound.items() if k.startswith(("BLOCK", "NI_", "NT_", "S_PAD"))}
    warps = launch.kwargs.get("num_warps", 4)
    stages = launch.kwargs.get("num_stages", 3)
    return " ".join(f"{k}={v}" for k, v in blocks.items()) + f" w{warps} s{stages}"


def _inflight(facts: dict) -> float:
    """Bytes one program keeps in flight (see roofline's docstring): stages - 1 shared-memory
    stages when its copies run ahead (cp.async waited with N >= 1 pending groups, or TMA), one
    stage when each is waited for at once, ~2 16-byte loads per thread for plain loads."""
    stages = facts["stages"]
    if facts["loads"] not in ("tma", "cp.async"):
        return facts["warps"] * 32 * 16 * 2
    if _loads_pipelined(facts):
        return facts["smem_bytes"] * (stages - 1) / stages
    return facts["smem_bytes"] / max(stages, 1)


def _loads_pipelined(facts: dict) -> bool:
    """Copies of later stages run while the current one is used (or the loads are plain loads)."""
    if facts["loads"] == "tma":
        return facts["stages"] > 1
    if facts["loads"] == "cp.async":
        return bool(facts.get("cp_async_pending"))
    return True


def _wgmma_pipelined(facts: dict) -> bool | None:
    """None without wgmma; else False when ptxas serialized it or the PTX waits for every wgmma
    (fewer than 4 issued per wait: a dot over a deep K issues its whole K before its one wait,
    and the pause between steps is priced by the issue term)."""
    if "wgmma" not in facts["mma"]:
        return None
    return facts["wgmma_serialized"] is None and ((facts.get("wgmma_pending") or 0) >= 1
                                                  or (facts.get("wgmma_per_wait") or 0) >= 4)


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
    target = roofline.target_for(arch, gpu)
    spec, shape, case = case_for(op, shape, dtype, extra)
    cost = importlib.import_module(f"skillkern.ops.{op}.cost")
    ctx, calls = cost.launches(case)
    records = profile_calls(calls, cost.KERNELS, ctx, target, choices, log)
    for r in records:
        r["op"] = op
    chosen = [r for r in records if r["chosen"]]
    total = sum(r["predicted_ms"] for r in chosen if r["predicted_ms"] is not None)
    useful = spec.work(case, "fwd+bwd")
    if spec.metric == "tflops":
        rate = useful["flops"] / (total * 1e-3) / 1e12 if total else None
        peak = target.mma_tflops * (0.5 if dtype == "fp32" else 1.0)  # fp32: TF32 at best
    else:
        rate = useful["bytes"] / (total * 1e-3) / 1e9 if total else None
        peak = target.hbm_tbps * 1e3
    slowest = max(chosen, key=lambda r: r["predicted_ms"] or 0.0) if chosen else None
    call = dict(op=op, shape=shape.label(), dtype=dtype, options=" ".join(extra or []), arch=target.cc,
                gpu=target.name, predicted_ms=total,
                predicted_rate=rate, predicted_pct_of_peak=100.0 * rate / peak if rate else None,
                metric="TFLOP/s" if spec.metric == "tflops" else "GB/s",
                limiter=f"{slowest['kernel']}: {slowest['limiter']}" if slowest else None,
                kernels=len(chosen), target=roofline.target_dict(target))
    return call, records


def profile_calls(calls: list, kernels: dict, ctx: dict, target: roofline.Target, choices: dict | None = None,
                  log=None) -> list[dict]:
    """Kernel records of the Triton launches that `calls` ([(phase, thunk)]) make: each kernel x
    config compiled for the target, its machine-code facts, work (kernels[name](args, grid, ctx))
    and prediction; the priced config of each launch marked `chosen`."""
    from skillkern._backend import interpreting

    if interpreting():
        raise RuntimeError("skillkern inspect compiles real kernels: run it in a process started without "
                           "TRITON_INTERPRET (the autotuners were built with the interpreter's one config)")
    cc = target.cc
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
        work = kernels[fn.__name__](bound, grid, ctx)
        mma = facts["mma"] if facts["mma"] != "unknown" else ("wgmma" if cc == 90 else "mma.sync")
        pred = roofline.predict(target, work, programs=programs, blocks_per_sm=occ["blocks_per_sm"],
                                mma=mma, mma_input=facts["mma_input"],
                                pipelined=_wgmma_pipelined(facts) is not False, inflight_bytes=_inflight(facts),
                                overlap=_loads_pipelined(facts) or occ["blocks_per_sm"] > 1,
                                step_instrs=(facts.get("hot_loop") or {}).get("instrs", 0), warps=facts["warps"])
        rec = dict(op=None, phase=L.phase, kernel=fn.__name__, config=_config_label(L, bound), arch=cc,
                   gpu=target.name, tuned=L.tuner is not None, tune_key=L.tune_key, pruned=not L.kept,
                   regs=facts["regs"], spill_bytes=facts["spill_bytes"], stack_bytes=facts["stack_bytes"],
                   smem_bytes=facts["smem_bytes"], smem_limit=mc.LIMITS[cc]["smem_block"], **occ, mma=facts["mma"],
                   mma_shape=facts["mma_shape"],
                   wgmma_pipelined=_wgmma_pipelined(facts), wgmma_serialized=facts["wgmma_serialized"],
                   loads=facts["loads"], tma=facts["loads"] == "tma", loads_pipelined=_loads_pipelined(facts),
                   sass_counts=facts["sass_counts"], hot_loop=facts.get("hot_loop"), programs=programs,
                   flops=work.flops, hbm_bytes=work.hbm_bytes,
                   l2_bytes=work.l2_bytes, predicted_ms=pred["predicted_ms"], limiter=pred["limiter"],
                   terms=pred["terms"], fits=static_fits(facts, cc), launch=L.site, note=facts.get("note"),
                   compile_s=round(time.time() - t0, 2))
        records.append(rec)
        if log:
            log(rec)
    _mark_chosen(records, choices or {})
    return records


def _mark_chosen(records: list, choices: dict) -> None:
    """Per launch site: the recorded autotune choice (choices[kernel] = config label) when there
    is one, else the config the model predicts fastest among those the prune function kept."""
    sites = {}
    for r in records:
        sites.setdefault(r["launch"], []).append(r)
    for group in sites.values():
        for r in group:
            r["chosen"] = False
        want = choices.get((group[0]["kernel"], group[0]["tune_key"]))
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
    """Make the autotuners' prune functions judge configs by their compiled code for cc, and the
    launchers choose their paths (TMA) for cc."""
    from skillkern.ops import _common

    def facts(fn, args, kwargs):
        kernel, _ = compile_launch(_base_fn(fn), args, kwargs, cc)
        f = kernel_facts(kernel, cc)
        return f["spill_bytes"], f["smem_bytes"] <= mc.LIMITS[cc]["smem_block"]

    with warnings.catch_warnings(), _common.fit_check(facts), _common.target_arch(cc):
        warnings.simplefilter("ignore", RuntimeWarning)  # the report shows every config's spills
        yield


# ----------------------------------------------------------------------------- autotune choices

def config_label(cfg) -> str:
    """A triton.Config as inspect labels it: its tile values joined by x, warps, stages, and
    "tma" where it fetches operands by TMA (USE_TMA)."""
    tiles = "x".join(str(v) for v in cfg.kwargs.values() if not isinstance(v, bool))
    return f"{tiles} w{cfg.num_warps} s{cfg.num_stages}" + (" tma" if cfg.kwargs.get("USE_TMA") else "")


def record_autotune(device: str, commit: str | None, path: str | None = None) -> list[dict]:
    """After a GPU run: the config each skillkern autotuner picked, per key, appended to
    benchmarks/results/autotune.jsonl, for `skillkern inspect` to price instead of its own pick."""
    from triton.runtime.autotuner import Autotuner

    from skillkern.bench._common import RESULTS, now_iso

    rows = []
    for op in OPS:
        mod = importlib.import_module(f"skillkern.ops.{op}.triton_impl")
        for tuner in (v for v in vars(mod).values() if isinstance(v, Autotuner)):
            for key, cfg in tuner.cache.items():
                rows.append(dict(time=now_iso(), device=device, commit=commit, op=op,
                                 kernel=tuner.base_fn.__name__, key=str(key), config=config_label(cfg)))
    if rows:
        from skillkern.bench.history import append

        append(path or os.path.join(RESULTS, "autotune.jsonl"), rows)
    return rows


def recorded_choices(gpu: str, path: str | None = None) -> dict:
    """kernel -> the newest recorded autotune choice on a device of this target ({} if none)."""
    from skillkern.bench._common import RESULTS
    from skillkern.bench.history import read

    out = {}
    for r in read(path or os.path.join(RESULTS, "autotune.jsonl")):
        t = roofline.target_of_device(r.get("device") or "")
        if t is not None and t.name == gpu:
            out[(r["kernel"], r["key"])] = r["config"]
    return out


# ----------------------------------------------------------------------------- report

def _kb(b) -> str:
    return f"{b / 1024:.0f}K" if b is not None else "-"


def format_report(call: dict, records: list[dict], all_configs: bool) -> str:
    pct = call["predicted_pct_of_peak"]
    t = call["target"]
    what = f"{call['op']} {call['shape']} {call['dtype']}" + (f" {call['options']}" if call["options"] else "")
    head = (f"== {what} on {call['gpu']} (sm_{call['arch']}): predicted {call['predicted_ms']:.3f} ms fwd+bwd = "
            f"{call['predicted_rate']:.4g} {call['metric']} = {pct:.1f} % of peak; slowest: {call['limiter']}"
            if pct is not None else f"== {what}: no prediction")
    lines = [head,
             f"   ceilings: mma {t['mma_tflops']:g} TFLOP/s ({t['mma_src']}), HBM {t['hbm_tbps']:g} TB/s "
             f"({t['hbm_src']}), L2 {t['l2_tbps']:g} TB/s ({t['l2_src']}), "
             f"mma.sync x{t['mma_sync_factor']:g} (assumed)",
             f"{'':2s}{'phase':5s} {'kernel':24s} {'config':22s} {'regs':>4s} {'spill':>5s} {'stack':>5s} "
             f"{'smem':>5s} {'blk/SM':>9s} {'mma':21s} {'loads':12s} {'progs':>6s} {'ms':>7s}  limiter"]
    shown = [r for r in records if all_configs or r["chosen"]]
    for r in shown:
        mark = "*" if r["chosen"] else ("x" if r["pruned"] else " ")
        mma = r["mma"] if r["mma"] == "none" else f"{r['mma']} {(r['mma_shape'] or '').split('.')[0]}"
        if r["wgmma_pipelined"] is False:
            mma += " SER"  # serialized by ptxas, or every wgmma waited for
        loads = r["loads"] + ("" if r["loads_pipelined"] or r["loads"] in ("ldg", "none") else " 1st")
        ms = f"{r['predicted_ms']:7.3f}" if r["predicted_ms"] is not None else "      -"
        lines.append(f"{mark:2s}{r['phase']:5s} {r['kernel'][:24]:24s} {r['config'][:22]:22s} {r['regs']:4d} "
                     f"{r['spill_bytes']:5d} {r['stack_bytes']:5d} {_kb(r['smem_bytes']):>5s} "
                     f"{r['blocks_per_sm']:2d}x{r['warps_per_sm']:2d}w {r['occupancy_limiter'][:3]:3s} {mma[:21]:21s} "
                     f"{loads[:12]:12s} {r['programs']:6d} {ms}  {r['limiter']}")
    notes = {r["note"] for r in records if r.get("note")}
    lines += [f"   note: {n}" for n in sorted(notes)]
    hidden = len(records) - len(shown)
    pruned = sum(r["pruned"] for r in records)
    lines.append("   (SER: wgmma serialized or waited for one by one; 1st: loads prefetched one stage ahead only)")
    recorded = any(r.get("chosen_by") == "recorded autotune" for r in records)
    pick = "recorded autotune choice" if recorded else "the fastest predicted among those kept"
    lines.append(f"   (* = the config priced: {pick}; "
                 f"x = pruned: spills or overflows shared memory ({pruned}); "
                 + (f"{hidden} other configs: --all-configs)" if hidden else "all configs shown)"))
    return "\n".join(lines)


def add_args(ap) -> None:
    ap.add_argument("--op", default=None, help=f"one of {', '.join(OPS)} (default: all)")
    ap.add_argument("--shape", default=None,
                    help="a preset name (its shapes) or a spec such as T=4096,d=1024 (default: the goal shapes)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--arch", type=int, default=90, choices=sorted(roofline.ARCH_DEFAULT),
                    help="compute capability to compile for (90: H100/H200, 80: A100, 100: B200)")
    ap.add_argument("--gpu", default=None, choices=sorted(roofline.TARGETS),
                    help="the target's ceilings (default: the arch's first GPU: 90 -> h100)")
    ap.add_argument("--all-configs", action="store_true", help="list every autotune config, not only the priced one")
    ap.add_argument("--no-extension", action="store_true", help="skip the compiled extension's kernels")
    ap.add_argument("--json", default=None, metavar="FILE", help="write every record as JSON lines ('-': stdout)")
    ap.add_argument("--record", action="store_true", help="append the records to benchmarks/results/static.jsonl")
    ap.add_argument("--compare", default=None, metavar="REV",
                    help="print what changed against the records of git revision REV in static.jsonl")


def _shapes(op: str, shape: str | None) -> list:
    from skillkern.bench import runner

    spec = runner.spec_of(op)
    if shape is None or shape in spec.presets:
        return spec.presets[shape or "goal"]()
    return [spec.parse_shape(shape.replace(",", ":"))]


def collect(ops, shape, dtype, arch, gpu, extra, extension: bool, all_configs: bool = False,
            log=None) -> tuple[list[dict], list[str]]:
    """Every record (op calls, their kernels, and the extension's kernels) and the report lines."""
    target = roofline.target_for(arch, gpu)
    choices = recorded_choices(target.name)
    rows, text = [], []
    for op in ops:
        for s in _shapes(op, shape):
            call, records = inspect_op(op, s, dtype, arch, gpu, extra, choices, log)
            rows.append(dict(kind="call", **call))
            rows += [dict(kind="kernel", shape=call["shape"], dtype=dtype, options=call["options"], **r)
                     for r in records]
            text.append(format_report(call, records, all_configs))
    if extension:
        from skillkern.bench import extension_code

        ext, reason = extension_code.extension_records(arch, target.name)
        ext = [r for r in ext if r.get("op") in ops or (r.get("op") == "skill_route" and "skill_ffn" in ops)]
        rows += [dict(kind="extension", **r) for r in ext]
        text.append(extension_code.format_records(ext) if ext else
                    f"== compiled extension: {reason or 'no kernels of these ops in it'}")
    return rows, text


def run(args, argv: list[str] | None = None, extra: list | None = None) -> int:
    """`skillkern inspect`."""
    import subprocess
    import sys

    from skillkern._backend import interpreting
    from skillkern.bench._common import RESULTS, env_info
    from skillkern.bench.history import append, read, resolve_rev

    if interpreting():  # the autotuners of this process hold the interpreter's config: start clean
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "skillkern.cli", "inspect", *(argv or [])], env=env)
    ops = [args.op] if args.op else list(OPS)
    t0 = time.time()
    rows, text = collect(ops, args.shape, args.dtype, args.arch, args.gpu, extra, not args.no_extension,
                         args.all_configs)
    print("\n\n".join(text))
    print(f"\n({len(rows)} records, {time.time() - t0:.0f} s; compiled kernels cached in ~/.triton and {cache_dir()})")
    env = env_info(torch.device("cpu"))
    stamp = dict(time=time.strftime("%Y-%m-%dT%H:%M:%S"), commit=env["commit"],
                 versions={k: env[k] for k in ("torch", "triton", "python")})
    if args.json:
        out = "\n".join(json.dumps(dict(stamp, **r)) for r in rows)
        if args.json == "-":
            print(out)
        else:
            with open(args.json, "w") as f:
                f.write(out + "\n")
    path = os.path.join(RESULTS, "static.jsonl")
    if args.compare:
        sha = resolve_rev(args.compare) or args.compare
        old = [r for r in read(path) if (r.get("commit") or "").removesuffix("-dirty")[:7] == sha[:7]]
        print(format_compare(rows, old, sha[:12]))
    if args.record:  # the history keeps what --compare reads and the model's inputs, not the texts
        drop = ("sass_counts", "smem_note", "spill_source", "mangled", "note", "tune_key")
        append(path, [dict(stamp, **{k: v for k, v in r.items() if k not in drop}) for r in rows])
        print(f"{len(rows)} records appended to {path}")
    return 0


_COMPARED = ("regs", "spill_bytes", "smem_bytes", "mma", "loads", "predicted_ms")


def _static_key(r: dict) -> tuple:
    return (r.get("kind"), r.get("op"), r.get("shape"), r.get("dtype"), r.get("options"), r.get("arch"),
            r.get("phase"), r.get("kernel"), r.get("config") if r.get("kind") != "call" else None)


def format_compare(rows: list[dict], old: list[dict], what: str) -> str:
    """What changed since the records of another commit: registers, spills, shared memory, MMA
    kind, loads and the predictions, for every chosen kernel and op call present in both."""
    if not old:
        return f"--compare {what}: no records of that commit in static.jsonl (record them there with --record)"
    before = {_static_key(r): r for r in old}
    lines = [f"== compared with {what}"]
    for r in rows:
        if r["kind"] == "kernel" and not r["chosen"]:
            continue
        o = before.get(_static_key(r))
        if o is None:
            lines.append(f"new   {r['op']} {r.get('kernel', 'call')} {r.get('config') or r.get('shape')}")
            continue
        diffs = [f"{k} {o.get(k)} -> {r.get(k)}" for k in _COMPARED if k in r and o.get(k) != r.get(k)
                 and not (k == "predicted_ms" and o.get(k) and r.get(k) and abs(o[k] / r[k] - 1) < 0.005)]
        if diffs:
            where = f"{r['op']} {r.get('phase') or ''} {r.get('kernel', 'call')} {r.get('config') or r['shape']}"
            lines.append(f"diff  {where}: " + "; ".join(diffs))
    if len(lines) == 1:
        lines.append("no change in the compared fields")
    return "\n".join(lines)


def predictions(op: str, dtype: str, device: str, path: str | None = None) -> dict:
    """shape label -> (predicted_ms, gpu, commit) from the newest static.jsonl op-call record of
    this op and dtype for the device's target (else another GPU of its arch): what `skillkern
    bench` prints beside its measurement."""
    from skillkern.bench._common import RESULTS
    from skillkern.bench.history import read

    t = roofline.target_of_device(device)
    if t is None:
        return {}
    same, arch = {}, {}
    for r in read(path or os.path.join(RESULTS, "static.jsonl")):
        if (r.get("kind") == "call" and r.get("op") == op and r.get("dtype") == dtype and r.get("arch") == t.cc
                and not r.get("options")):  # the op's default options, as `skillkern bench` runs it
            (same if r.get("gpu") == t.name else arch)[r["shape"]] = (r["predicted_ms"], r["gpu"], r.get("commit"))
    return {**arch, **same}
