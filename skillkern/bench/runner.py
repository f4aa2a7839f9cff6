"""The one benchmark loop: every op benchmark declares itself as an OpSpec (its shapes,
providers, reference and work per call) and this module runs it:

  for each shape (the goal shapes first; none started past --time-budget):
      make the case (fresh random inputs) and the reference (outputs, gradients, tolerances)
      for each provider: build -> first call, checked against the reference -> time each mode
      -> rows (device, versions, commit, shape, errors, ms, TFLOP/s, GB/s, % of the ceiling,
         peak memory, speedups), appended to --out at once

A provider's status: ok, wrong (past the tolerance: not timed), unavailable (truly absent here:
skillkern's BackendUnavailable from the backend chooser, or the bench's Unavailable for a
missing peer package or torch feature), skipped (the spec's skip(), e.g. a naive path that would
not fit) or failed (anything else it raised, skillkern's own providers included). A failed or
wrong provider makes the run fail (exit status 1).

`python -m skillkern.bench.runner <op> [options]` runs one op (`--help` after the op name).
"""
from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from skillkern.bench import BUILTIN
from skillkern.bench._common import (CPU_NOTE, DTYPES, FAILED_NOTE, Unavailable, add_run_args, append_rows,
                                     default_out, env_info, first_line, fmt, free_memory, given_copy_gbps,
                                     given_matmul_tflops, importable, mode_fn, new_parser, now_iso, parse_modes,
                                     parse_providers, peak_mem_mb, pick_device, pick_shapes, print_header, sync,
                                     time_ms)
from skillkern.bench.history import CEILING_ROW, UNIT
from skillkern.ops._common import rel_err


@dataclass
class Provider:
    """What a provider's builder returns: one forward callable; the modes are built on it."""

    forward: Callable[[], Any]  # () -> an output or a tuple of outputs
    inputs: tuple  # the leaves the gradients are taken for
    grad_out: Any  # upstream gradient(s) of forward()'s output(s)
    names: tuple = ()  # one name per input (default x0, x1, ...), matching Reference.grads
    checked: bool = True  # False: a ceiling doing the same work, not the same function
    to_ref: Callable | None = None  # gradients -> the reference's layout, where they differ
    fwd_only: str | None = None  # why its backward cannot run here: bwd modes are unavailable
    impl: str | None = None  # which code runs, recorded on its rows
    version: str | None = None  # a peer package's version

    def timed(self, mode: str):
        return mode_fn(mode, self.forward, self.inputs, self.grad_out)


@dataclass
class Reference:
    outs: tuple  # the outputs, wide precision
    grads: dict  # name -> gradient, wide precision
    tol_fwd: float
    tol_grad: float
    fields: dict = field(default_factory=dict)  # recorded on the shape's rows (torch's own error, ...)
    note: str = ""  # printed under the shape's heading


@dataclass
class OpSpec:
    name: str
    doc: str  # the op module's docstring: --help
    header: str  # printed first
    metric: str  # "tflops" (vs the matmul ceiling) or "gbps" (vs the copy ceiling)
    presets: dict  # name -> () -> [Shape]; "cpu", "cpu-quick", "gpu", "gpu-quick", "goal"
    parse_shape: Callable[[str], Any]
    shape_help: str  # how a spec is written
    quick_help: str
    providers: dict  # name -> builder(case, args) -> Provider
    default_gpu: tuple  # skillkern's kernels last: a CUDA fault then finds the baselines on record
    default_cpu: tuple
    baselines: tuple  # "x best" is over these
    make_case: Callable  # (shape, dtype, device, args) -> case
    reference: Callable  # (case, args) -> Reference
    work: Callable  # (case, mode) -> {"flops": ..., "bytes": ... or None}
    out_spec: Callable  # case -> [(shape, dtype)] of forward's outputs: the contract
    versus: tuple = ()  # providers besides the baselines that speedups are recorded against
    peers: dict = field(default_factory=dict)  # provider -> module; in the defaults only when it imports
    add_args: Callable | None = None  # (parser) -> None: the op's own options
    finish_args: Callable | None = None  # (args, cpu) -> None: device-dependent defaults, checks
    case_fields: Callable | None = None  # (case, args, device, modes) -> fields for the shape's rows
    skip: Callable | None = None  # (case, provider, args, device) -> why not to run it, or None
    grad_scale: dict = field(default_factory=dict)  # name -> sibling whose norm also scales its error
    interpreted: tuple = ("skillkern-triton",)  # CPU defaults under TRITON_INTERPRET=1 (first: slowest)


def spec_of(op: str) -> OpSpec:
    """The OpSpec of a built-in op benchmark (skillkern/bench/<op>.py's SPEC)."""
    import importlib

    if op not in BUILTIN:
        raise SystemExit(f"unknown op benchmark {op!r}; choose from {sorted(BUILTIN)}")
    return importlib.import_module(BUILTIN[op]).SPEC


def goal_mode(op: str, shape) -> str:
    """The mode a goal shape is judged in: fwd+bwd, except maxsim's retrieval shapes (no gradient)."""
    return "fwd" if op == "maxsim" and not shape.grad else "fwd+bwd"


@contextlib.contextmanager
def id_checks(enabled: bool):
    """skillkern's id range check syncs with the host every call: on for the correctness
    check, off while timing (as production runs would)."""
    import skillkern as sk

    prev = sk.check_ids_enabled()
    sk.set_check_ids(enabled)
    try:
        yield
    finally:
        sk.set_check_ids(prev)


def parse_spec(cls, item: str, example: str, presets, aliases: dict | None = None):
    """A Shape dataclass from key=value pairs joined by ':' (missing keys take the field
    defaults; an alias sets several fields: B -> Bi and Bt); integers unless the field's
    default is a string. SystemExit naming the keys, an example and the presets otherwise."""
    fields, aliases = cls.__dataclass_fields__, aliases or {}
    f = {}
    for kv in item.split(":"):
        key, sep, val = kv.partition("=")
        default = {k: fields[k].default for k in aliases.get(key, (key,)) if k in fields}
        if not sep or not default or not all(isinstance(d, str) or val.isdigit() for d in default.values()):
            raise SystemExit(f"bad shape spec {item!r}: want e.g. {example} (keys {', '.join([*fields, *aliases])}) "
                             f"or a preset {sorted(presets)}")
        f.update({k: val if isinstance(d, str) else int(val) for k, d in default.items()})
    return cls(**f)


_SHIMMED: list = []


def interpreter_autotune_shim():
    """Under TRITON_INTERPRET=1 there is no device benchmarker, so a peer's @triton.autotune
    fails ('0 active drivers'): every autotuner without a do_bench of its own takes its first
    config untimed (CPU runs of the peers only; skillkern's kernels carry one config there).
    Process-wide once installed."""
    if _SHIMMED:
        return
    from triton.runtime import autotuner

    order = itertools.count()

    def first_config_wins(kernel_call, quantiles=None, **_):
        t = float(next(order))  # increasing "times": the first config benched wins
        return [t] * len(quantiles) if quantiles else t

    # only where the driver's benchmarker would be used: an autotuner given its own do_bench
    # (a test's fake timings) keeps it, in this process and after
    autotuner.Autotuner.do_bench = property(lambda self: getattr(self, "_do_bench", None) or first_config_wins)
    _SHIMMED.append(True)


def peer_module(name: str, module: str, cuda: bool):
    """The module of peer provider `name`, or Unavailable saying why: the peers run Triton
    kernels, so on CPU only under TRITON_INTERPRET=1 (forward only), with the autotune shim."""
    import importlib

    from skillkern._backend import interpreting

    if not cuda and not interpreting():
        raise Unavailable(f"{name} runs Triton kernels: CUDA, or TRITON_INTERPRET=1 (forward only) on CPU")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise Unavailable(f"{module} not importable ({first_line(e)}): pip install {module.replace('_', '-')}")
    if not cuda:
        interpreter_autotune_shim()
    return mod


# ----------------------------------------------------------------------------- command line


def build_parser(spec: OpSpec):
    """The op's command line (also parsed by `skillkern profile`)."""
    ap = new_parser(spec.doc, spec.quick_help, spec.shape_help, spec.presets, tuple(spec.providers))
    ap.prog = f"{ap.prog} {spec.name}"  # bench.py skill_ffn, runner.py token_reduce, ...
    if spec.add_args:
        spec.add_args(ap)
    if spec.metric == "tflops":
        ap.add_argument("--peak-size", type=int, default=None,
                        help="n of the n^3 matmul ceiling (default 8192 on a GPU, 256 on CPU; 0 = skip)")
    else:
        ap.add_argument("--copy-gb", type=float, default=None,
                        help="GiB of the copy ceiling's buffer (default 1 on a GPU, 0.0625 on CPU; 0 = skip)")
    add_run_args(ap, spec.name, "The goal shapes run first.")
    return ap


def default_providers(spec: OpSpec, cpu: bool) -> tuple:
    from skillkern._backend import interpreting

    if cpu:
        return (spec.interpreted if interpreting() else ()) + spec.default_cpu
    return tuple(p for p in spec.default_gpu if p not in spec.peers or importable(spec.peers[p]))


# ----------------------------------------------------------------------------- the ceiling


def ceiling(spec: OpSpec, args, device, env: dict) -> tuple[float | None, dict | None]:
    """The run's ceiling (matmul TFLOP/s in the run's dtype, or copy GB/s): the one `skillkern
    bench` measured, else measured here (its row returned), else None (size 0)."""
    from skillkern.bench import ceilings

    given = given_matmul_tflops(args.dtype) if spec.metric == "tflops" else given_copy_gbps()
    if given:
        print(f"  ceiling: {given:.4g} {UNIT[spec.metric]}, measured by `skillkern bench` for this run")
        return given, None
    cpu = device.type != "cuda"
    row = dict(time=now_iso(), op=spec.name, **env, dtype=args.dtype, provider=CEILING_ROW[spec.metric], mode="fwd")
    try:
        if spec.metric == "tflops":
            n = args.peak_size if args.peak_size is not None else (256 if cpu else 8192)
            if n <= 0:
                return None, None
            c = ceilings.measure_matmul(n, args.dtype, device, args, args.seed + 1)
            row.update(label=f"matmul-{n}x{n}x{n}", M=n, N=n, K=n)
        else:
            gb = args.copy_gb if args.copy_gb is not None else (0.0625 if cpu else 1.0)
            if gb <= 0:
                return None, None
            c = ceilings.measure_copy(int(gb * 2**30), device, args, args.seed + 7)
            row.update(label=f"copy-{gb * 2**30 / 1e9:.3g}GB", mode="copy", bytes=2.0 * c["bytes"])
    except Exception as e:  # the benchmarks go on without a % of ceiling; the row says why
        print(f"  {row['provider']:18s} !!! FAILED: {first_line(e)[:300]} !!!")
        return None, dict(row, label=row["provider"], status="failed", reason=first_line(e)[:500])
    value = c[spec.metric]
    print(f"  {row['provider']:18s} {row['label']}: {c['ms']:9.3f} ms  [{c['ms_p20']:.3f}, {c['ms_p80']:.3f}]  "
          f"{value:8.4g} {UNIT[spec.metric]}")
    return value, dict(row, status="ok", ms=c["ms"], ms_p20=c["ms_p20"], ms_p80=c["ms_p80"], **{spec.metric: value})


# ----------------------------------------------------------------------------- one provider


def setup_failed(prov: str, row0: dict, e: BaseException, expected: bool) -> dict:
    """The row of a provider whose set-up or first call raised e, its line printed. expected: e
    says why the provider cannot run here (status unavailable, shown without its type); else
    status failed."""
    msg = first_line(e, with_type=not expected)
    print(f"  {prov:18s} {'UNAVAILABLE' if expected else '!!! FAILED !!!'}: {msg[:300]}")
    return dict(row0, status="unavailable" if expected else "failed", reason=msg[:500])


def check_errors(prov: str, row0: dict, modes, e_fwd: float, tol_fwd: float, e_grad: float | None,
                 tol_grad: float, worst: str | None = None) -> tuple[list[dict], list[str]]:
    """The "wrong" rows of a provider past its limits (their lines printed) and the modes left
    to time: none after a wrong forward; fwd alone after wrong gradients. e_grad None: the
    gradients were not checked."""
    if not e_fwd <= tol_fwd:
        print(f"  !!! {prov}: FORWARD WRONG (rel err {e_fwd:.3e} > {tol_fwd:.3g}); provider skipped !!!")
        return [dict(row0, status="wrong", reason=f"forward rel err {e_fwd:.3e} > {tol_fwd:.3g}")], []
    if e_grad is not None and not e_grad <= tol_grad:
        why = f"grad rel err {e_grad:.3e} > {tol_grad:.3g}" + (f" ({worst})" if worst else "")
        print(f"  !!! {prov}: GRADIENTS WRONG ({why}); bwd modes skipped !!!")
        return ([dict(row0, mode=m, status="wrong", reason=why) for m in modes if m != "fwd"],
                [m for m in modes if m == "fwd"])
    return [], list(modes)


def time_modes(prov: str, row0: dict, modes, make_fn, device, args, rates) -> tuple[list[dict], bool]:
    """Times make_fn(mode) of each mode (time_ms, then peak_mem_mb): an "ok" row with ms,
    ms_p20, ms_p80, rates(mode, ms)'s fields and peak_mem_mb, or a "failed" row when it raises.
    Returns the rows and whether every mode ran."""
    rows, all_ok = [], True
    for mode in modes:
        fn = None
        try:
            fn = make_fn(mode)
            med, p20, p80 = time_ms(fn, device, args)
            mem = peak_mem_mb(fn, device)
        except Exception as e:
            print(f"  !!! {prov} {mode}: FAILED while timing: {first_line(e)[:300]} !!!")
            rows.append(dict(row0, mode=mode, status="failed", reason=first_line(e)[:500]))
            all_ok = False
            continue
        finally:
            fn = None  # drops the retained graph of the bwd mode
        fields, text = rates(mode, med)
        rows.append(dict(row0, mode=mode, status="ok", ms=med, ms_p20=p20, ms_p80=p80, **fields, peak_mem_mb=mem))
        print(f"  {prov:18s} {mode:8s} {med:9.3f} ms  [{p20:.3f}, {p80:.3f}]  {text}"
              + (f"  peak {mem:8.1f} MB" if mem is not None else ""))
    return rows, all_ok


def contract(outs: tuple, expected) -> str | None:
    """Why forward's outputs break the op's contract ([(shape, dtype)] per output), or None."""
    if len(outs) != len(expected):
        return f"returned {len(outs)} outputs, want {len(expected)}"
    for i, (o, (shape, dtype)) in enumerate(zip(outs, expected)):
        if not isinstance(o, torch.Tensor):
            return f"output {i} is a {type(o).__name__}, not a tensor"
        if tuple(o.shape) != tuple(shape) or o.dtype != dtype:
            return f"output {i} is {tuple(o.shape)} {o.dtype}, want {tuple(shape)} {dtype}"
    return None


def errors(spec: OpSpec, outs, grads: dict | None, ref: Reference) -> tuple[float, float | None, str | None]:
    """(forward rel err: the worst output, gradient rel err: the worst input, its name). A
    gradient named in spec.grad_scale is measured against max(its norm, its sibling's)."""
    e_fwd = max(rel_err(o, r) for o, r in zip(outs, ref.outs))
    if grads is None:
        return e_fwd, None, None
    errs = {}
    for n, r in ref.grads.items():
        g = grads.get(n)
        if g is None:
            errs[n] = float("inf")
        elif n in spec.grad_scale:  # ||g - r|| / max(||r||, ||sibling||)
            scale = max(r.double().norm().item(), ref.grads[spec.grad_scale[n]].double().norm().item())
            e = (g.detach().double() - r.double()).norm().item() / max(scale, 1e-300)
            errs[n] = e if math.isfinite(e) else float("inf")
        else:
            errs[n] = rel_err(g, r)
    worst = max(errs, key=errs.get)
    return e_fwd, errs[worst], worst


def run_provider(spec: OpSpec, prov: str, case, ref: Reference, row0: dict, modes, args, device,
                 rates) -> tuple[list[dict], bool]:
    """Build -> first call, checked -> time: one provider's rows and whether all went right."""
    try:
        p = spec.providers[prov](case, args)
        row0.update(impl=p.impl, peer_version=p.version)
        with id_checks(True):
            outs = p.forward()  # the first call compiles / autotunes; it is also the check
            sync(device)
    except Exception as e:
        import skillkern as sk

        expected = isinstance(e, (Unavailable, sk.BackendUnavailable))
        return [setup_failed(prov, row0, e, expected)], expected
    outs = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
    bad = contract(outs, spec.out_spec(case)) if p.checked else None
    if bad:
        print(f"  !!! {prov}: {bad}; provider skipped !!!")
        return [dict(row0, status="wrong", reason=bad)], False
    rows, ok_modes, all_ok, grads = [], list(modes), True, None
    if p.fwd_only:
        print(f"  {prov:18s} backward UNAVAILABLE ({p.fwd_only[:200]}): fwd only")
        rows += [dict(row0, mode=m, status="unavailable", reason=p.fwd_only) for m in modes if m != "fwd"]
        ok_modes = [m for m in modes if m == "fwd"]
    else:
        try:
            with id_checks(True):
                g = torch.autograd.grad(outs, p.inputs, p.grad_out, allow_unused=True)
                sync(device)
            g = p.to_ref(g) if p.to_ref else g
            grads = dict(zip(p.names or [f"x{i}" for i in range(len(g))], g))
        except Exception as e:
            print(f"  !!! {prov}: backward FAILED: {first_line(e)[:300]} !!!")
            rows += [dict(row0, mode=m, status="failed", reason=f"backward: {first_line(e)[:400]}")
                     for m in modes if m != "fwd"]
            ok_modes, all_ok = [m for m in modes if m == "fwd"], False
    if p.checked:
        e_fwd, e_grad, worst = errors(spec, outs, grads, ref)
        row0.update(rel_err_fwd=e_fwd, rel_err_grad=e_grad, worst_grad=worst)
        print(f"  {prov:18s} rel err: fwd {e_fwd:.2e}  grads(max) {fmt(e_grad, '.2e')}"
              + (f" ({worst})" if worst else "") + f"  (limits {ref.tol_fwd:.3g}, {ref.tol_grad:.3g})"
              + (f"  [{p.impl}]" if p.impl else ""))
        wrong, ok_modes = check_errors(prov, row0, ok_modes, e_fwd, ref.tol_fwd, e_grad, ref.tol_grad, worst)
        rows += wrong
        all_ok &= not wrong
    else:
        print(f"  {prov:18s} (a ceiling: the same work, a different function; not compared)")
    del outs, grads
    with id_checks(False):
        timed, ok = time_modes(prov, row0, ok_modes, p.timed, device, args, rates)
    return rows + timed, all_ok and ok


# ----------------------------------------------------------------------------- one shape, the run


def add_speedups(rows: list[dict], modes, versus) -> None:
    """Per mode, on every ok row: speedup {other: other's ms / this ms} for each provider of
    `versus` that has an ok row; best_baseline / speedup_vs_best_baseline from the baselines."""
    for mode in modes:
        ok = {r["provider"]: r for r in rows if r.get("mode") == mode and r.get("status") == "ok"}
        for r in ok.values():
            r["speedup"] = {o: ok[o]["ms"] / r["ms"] for o in versus if o in ok}


def stamp_rows(rows: list[dict]) -> None:
    """One time for all of a shape's rows, and mode None on those that never got to a mode."""
    now = now_iso()
    for r in rows:
        r["time"] = now
        r.setdefault("mode", None)


def run_shape(spec: OpSpec, shape, providers, modes, args, device, env, ceil) -> tuple[list[dict], bool]:
    dtype = DTYPES[args.dtype]
    case = spec.make_case(shape, dtype, device, args)
    fwd = spec.work(case, "fwd")
    print(f"\n== {shape.label()}  {args.dtype}  fwd {fwd['flops'] / 1e9:.4g} GFLOP"
          + (f", {fwd['bytes'] / 1e6:.4g} MB minimum" if fwd.get("bytes") else ""))
    extra = spec.case_fields(case, args, device, modes) if spec.case_fields else {}
    ref = spec.reference(case, args)
    if ref.note:
        print(f"  {ref.note}")
    base = {"time": None, "op": spec.name, **env, "dtype": args.dtype, **asdict(shape), **extra, **ref.fields,
            "tol_fwd": ref.tol_fwd, "tol_grad": ref.tol_grad, "ceiling_value": ceil}

    def rates(mode, ms):
        w = spec.work(case, mode)
        tflops = w["flops"] / (ms * 1e-3) / 1e12
        gbps = w["bytes"] / (ms * 1e-3) / 1e9 if w.get("bytes") else None
        value = tflops if spec.metric == "tflops" else gbps
        pct = 100.0 * value / ceil if ceil and value is not None else None
        return ({"flops": w["flops"], "min_bytes": w.get("bytes"), "tflops": tflops, "gbps": gbps, "pct_ceiling": pct},
                f"{fmt(value, '8.4g')} {UNIT[spec.metric]}" + (f"  {pct:5.1f}% ceiling" if pct is not None else ""))

    rows, all_ok = [], True
    for prov in providers:
        row0 = dict(base, provider=prov)
        why = spec.skip(case, prov, args, device) if spec.skip else None
        if why:
            print(f"  {prov:18s} SKIPPED: {why}")
            rows.append(dict(row0, status="skipped", reason=why))
            continue
        prows, ok = run_provider(spec, prov, case, ref, row0, modes, args, device, rates)
        rows += prows
        all_ok &= ok
        free_memory(device)  # this provider's memory goes before the next one's peak is measured
    add_speedups(rows, modes, (*spec.baselines, *spec.versus))
    for r in rows:
        sp = r.get("speedup") or {}
        best = min((b for b in spec.baselines if b in sp), key=lambda b: sp[b], default=None)
        r["best_baseline"], r["speedup_vs_best_baseline"] = best, sp.get(best)
    stamp_rows(rows)
    del case, ref
    free_memory(device)
    return rows, all_ok


def run_shapes(shapes, run_one, args, device, env: dict, rows: list[dict], t0: float) -> bool:
    """run_one(shape) -> (its rows, all right?) for each shape in order, starting none once
    args.time_budget seconds (0 = no limit) have passed since t0. A shape that raises (e.g. out of
    memory in the reference) gets one failed row and the run goes on. Every shape's rows get its
    label, are appended to args.out at once (a run cut short keeps them) and added to rows.
    Returns whether every shape was right."""
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
            print(f"\n!!! {shape.label()}: FAILED before timing: {first_line(e)[:300]} !!!")
            srows, ok = [dict(time=now_iso(), **env, dtype=args.dtype, **asdict(shape), provider="(all)",
                              mode=None, status="failed", reason=first_line(e)[:500])], False
            free_memory(device)
        all_ok &= ok
        for r in srows:
            r["label"] = shape.label()
        append_rows(args.out, srows)
        rows += srows
    print(f"\n{len(rows)} rows appended to {args.out} ({time.time() - t0:.1f} s)")
    return all_ok


def print_table(spec: OpSpec, rows: list[dict], modes, cpu: bool) -> None:
    """Per shape and provider: each mode's ms and % of the ceiling, then the last mode's rate,
    speedup over the fastest baseline and peak memory; or the status and reason."""
    last = "fwd+bwd" if "fwd+bwd" in modes else modes[-1]
    unit = UNIT[spec.metric]
    print("\n" + "=" * 110)
    if cpu:
        print("CPU run: tiny shapes to show the script works. These numbers are NOT performance data.")
    head = "  ".join(f"{m + ' ms':>10s} {'%ceil':>5s}" for m in modes)
    print(f"{'provider':18s}  {head}  {last + ' ' + unit:>14s}  {'x best':>6s}  {'peak MB':>8s}")
    shapes: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["provider"] == CEILING_ROW[spec.metric]:
            print(f"-- ceiling {r['label']}: " + (f"{r['ms']:.3f} ms = {r[spec.metric]:.4g} {unit} (the 100% of %ceil)"
                                                  if r["status"] == "ok" else f"{r['status']}: {r.get('reason')}"))
        else:
            shapes.setdefault(r["label"], {}).setdefault(r["provider"], {})[r.get("mode")] = r
    for label, provs in shapes.items():
        print(f"-- {label}")
        for p, by_mode in provs.items():
            if None in by_mode:  # never timed: unavailable, skipped, failed or wrong before timing
                print(f"{p:18s}  {by_mode[None]['status']}: {(by_mode[None].get('reason') or '')[:80]}")
                continue
            cells = [f"{r['ms']:10.3f} {fmt(r['pct_ceiling'], '5.1f')}" if r.get("status") == "ok"
                     else f"{r.get('status', '-'):>16s}" for r in (by_mode.get(m, {}) for m in modes)]
            r = by_mode.get(last, {}) if by_mode.get(last, {}).get("status") == "ok" else {}
            x = r.get("speedup_vs_best_baseline")
            print(f"{p:18s}  {'  '.join(cells)}  {fmt(r.get(spec.metric), '14.4g')}  "
                  f"{f'{x:.2f}x' if x else '-':>6s}  {fmt(r.get('peak_mem_mb'), '8.0f')}")
    print(f"(%ceil = % of the run's {'matmul' if spec.metric == 'tflops' else 'copy'} ceiling; x best = speedup "
          f"of the {last} time over the fastest baseline: {', '.join(spec.baselines)})")


def print_predictions(spec: OpSpec, rows: list[dict], env: dict, args) -> None:
    """After a GPU run: the static model's prediction (benchmarks/results/static.jsonl, written by
    `skillkern inspect --record`) beside skillkern-triton's fwd+bwd measurement, and the configs
    the autotuners picked (results/autotune.jsonl), so every GPU run checks and corrects the model."""
    from skillkern.bench import inspect

    inspect.record_autotune(env["device"], env["commit"])
    pred = inspect.predictions(spec.name, args.dtype, env["device"])
    for r in rows:
        if r.get("provider") == "skillkern-triton" and r.get("mode") == "fwd+bwd" and r.get("status") == "ok":
            p = pred.get(r["label"])
            note = (f"model {p[0]:.3f} ms on {p[1]} (static.jsonl @ {(p[2] or '?')[:10]}): measured/model = "
                    f"{r['ms'] / p[0]:.2f}" if p else "no static prediction recorded (skillkern inspect --record)")
            print(f"-- {r['label']}: skillkern-triton fwd+bwd measured {r['ms']:.3f} ms; {note}")


@dataclass
class Result:
    rows: list
    ok: bool
    cpu: bool


def run(op: str | OpSpec, argv=None) -> Result:
    """Parse the op's options, check and time every shape and provider, print the table."""
    spec = op if isinstance(op, OpSpec) else spec_of(op)
    args = build_parser(spec).parse_args(argv)
    device = pick_device(args.device)
    cpu = device.type != "cuda"
    if spec.finish_args:
        spec.finish_args(args, cpu)
    shapes = pick_shapes(args, cpu, spec.presets, spec.parse_shape)
    providers = parse_providers(args.providers, tuple(spec.providers), default_providers(spec, cpu))
    modes = parse_modes(args.modes)
    env = env_info(device)
    print_header(spec.header, env, shapes, modes, providers)
    if cpu:
        print(CPU_NOTE)
    if args.out is None:
        args.out = default_out(spec.name, cpu)
    t0 = time.time()
    rows: list[dict] = []
    ceil, ceil_row = ceiling(spec, args, device, env)
    if ceil_row:
        append_rows(args.out, [ceil_row])
        rows.append(ceil_row)
    ok = run_shapes(shapes, lambda s: run_shape(spec, s, providers, modes, args, device, env, ceil),
                    args, device, env, rows, t0)
    ok &= not (ceil_row and ceil_row["status"] != "ok")
    print_table(spec, rows, modes, cpu)
    if not cpu:
        print_predictions(spec, rows, env, args)
    if not ok:
        print(FAILED_NOTE)
    return Result(rows, ok, cpu)


def main(op: str | OpSpec, argv=None) -> int:
    return 0 if run(op, argv).ok else 1


def profile_target(spec: OpSpec, shape, provider: str, mode: str, args, device):
    """For `skillkern profile`: the callable that `mode` times for `provider` at `shape`, and
    the work of one call ({"flops", "bytes"}). Run it inside id_checks(False), as when timing."""
    case = spec.make_case(shape, DTYPES[args.dtype], device, args)
    return spec.providers[provider](case, args).timed(mode), spec.work(case, mode)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit(f"usage: python -m skillkern.bench.runner <op> [options]; op one of {sorted(BUILTIN)}")
    sys.exit(main(sys.argv[1], sys.argv[2:]))
