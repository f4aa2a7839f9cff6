#!/usr/bin/env python3
"""Benchmark one training step of SkillNet-base (+ Wukong's head): tokens/s and MFU with
skillkern's fused kernels against the same model on PyTorch eager and under torch.compile.

The step is the trainer's (model/train.py): zero_grad, forward (bf16 autocast for --dtype bf16),
loss, backward, AdamW (fused on CUDA). The model: SkillNet-base (d=768, 12 layers, 12 heads,
d_ff=3072, a SkillFFN of 6 skills in every layer, each token averaging its modality's skill with
the general one) with Wukong's geometry on the retrieval tasks (224x224 images in 32x32 patches:
49 + [CLS] tokens, TokenReduction to 12, 256-d FILIP loss over 32-token Chinese captions).

Providers (each builds its own copy of the model from the same initial weights):
  skillkern-fused    backend "auto": on a GPU every SkillFFN, TokenReduction and the FILIP
                     similarity run skillkern's fused Triton kernels; attention is torch SDPA
  eager-torch        backend "torch": the same model on skillkern's PyTorch references (per-skill
                     gather / GEMM / scatter loop, token_similarity materialising B^2 n L D/D
                     similarities, the literal token reduction), eager
  compiled-torch     torch.compile(eager-torch's model) (default mode, dynamic=False); compiled by
                     the correctness call, before any timing
  compiled-fused     torch.compile(skillkern-fused's model): the fused ops are registered custom ops,
                     so the compiler fuses around them
CPU runs default to eager-torch and skillkern-fused (which needs a GPU, or TRITON_INTERPRET=1,
tiny shapes and --dtype fp32; compiled-torch runs on a CPU too when asked for).
skillkern's id range check (a host sync per SkillFFN call) is off for every provider, as in the
trainer on a GPU: the routing ids are built by the model.

Modes: step (the whole training step, default), fwd+bwd (no optimiser), fwd (training forward).

Correctness first: one forward/backward of each provider on the shape's batch is compared with
eager-torch in fp32 (TF32 off): the loss and the gradients (relative error of the concatenated
gradient vector) within max(floor, 2 x eager-torch's own error at the run's precision), floors
2e-2 for bf16 autocast and 2e-3 for fp32. A provider that fails is not timed.

Metrics per (shape, provider, mode): median / p20 / p80 ms (triton.testing.do_bench on a GPU, a
perf_counter loop on the CPU), tokens/s (positions encoded per step: both sides of a retrieval
batch, padding included), model TFLOP/s and MFU = model FLOPs / time / the GPU's dense bf16 peak
(datasheet: 989 TFLOP/s on H100/H200 SXM). Model FLOPs are counted analytically
(model/params.py: 6 x activated matrix parameters per token + attention + the FILIP similarity);
the step's optimiser and elementwise work count zero, as MFU conventionally does.
Rows are appended as JSON lines to --out (benchmarks/results/train_step.jsonl; CPU runs to
train_step.cpu.jsonl, git-ignored: not performance data).

Goal (issue 6, GPU): skillkern-fused step >= 1.5x eager-torch and >= 1.2x compiled-torch tokens/s
on the goal shape (image_text, B=256), and MFU >= 45 %.

Examples:
  python benchmarks/bench_train_step.py --quick                 # CPU: a tiny model; GPU: the goal shape
  python benchmarks/bench_train_step.py --shapes gpu --modes step,fwd+bwd
  python benchmarks/bench_train_step.py --shapes task=text_cls:B=128:L=64 --providers eager-torch,skillkern-fused
"""
from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch

# _common.py beside this file; importing it puts the repo root (skillkern, model/) on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (CPU_NOTE, DTYPES, FAILED_NOTE, Unavailable, add_run_args, backend_reason,  # noqa: E402
                     default_out, env_info, first_line, free_memory, new_parser, parse_providers, peak_mem_mb,
                     pick_device, pick_shapes, print_header, run_shapes, setup_failed, stamp_rows, sync,
                     time_ms)
from goals import met  # noqa: E402

try:
    import skillkern
    from model.config import TASK_MODALITIES, model_config
    from model.params import peak_flops, step_flops
    from model.wukong import SkillNetWukong, default_specs
except Exception as e:  # a broken install: say why instead of a traceback
    print(f"bench_train_step: import failed ({type(e).__name__}: {e}); run from the repo root after "
          "`make demo` (it installs the package first).", file=sys.stderr)
    raise SystemExit(2)

OP = "train_step"
METRIC = "tflops"                 # for `skillkern bench`'s history: model TFLOP/s vs the matmul ceiling
BASELINES = ("eager-torch", "compiled-torch")
PROVIDERS = ("skillkern-fused", "eager-torch", "compiled-torch", "compiled-fused")
# skillkern-fused last: should a kernel fault (a CUDA error ends the process), the baselines are on record.
DEFAULT_GPU_PROVIDERS = ("eager-torch", "compiled-torch", "compiled-fused", "skillkern-fused")
# CPU: compiling costs minutes and says nothing about GPU speed; skillkern-fused reports why it
# cannot run (or runs under TRITON_INTERPRET=1).
DEFAULT_CPU_PROVIDERS = ("eager-torch", "skillkern-fused")
STEP_MODES = ("fwd", "fwd+bwd", "step")
# Floor of the allowed relative error (loss, and the whole gradient vector) against eager-torch
# in fp32; the check allows max(floor, 2 x eager-torch's own error in the run's precision).
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float32: 2e-3}
GOAL_X_EAGER, GOAL_X_COMPILED, GOAL_MFU = 1.5, 1.2, 45.0
GOAL_LABEL = "image_text-B256-base-img224p32-txt32"


@dataclass(frozen=True)
class Shape:
    task: str = "image_text"
    B: int = 256
    preset: str = "base"
    d: int = 768
    layers: int = 12
    heads: int = 12
    d_ff: int = 3072
    L: int = 32                  # text tokens per item (captions; text_cls: the review)
    img: int = 224               # image / video frame size
    patch: int = 32
    x_len: int = 64              # code tokens (code_text)
    general: bool = True         # each token averages its modality skill with the general skill
    skill_every: int = 1

    def label(self) -> str:
        s = f"{self.task}-B{self.B}-{self.preset}"
        if self.preset != "base" or (self.d, self.layers) != (768, 12):
            s += f"-d{self.d}x{self.layers}"
        if self.task in ("image_text", "video_text"):
            s += f"-img{self.img}p{self.patch}"
        if self.task == "code_text":
            s += f"-code{self.x_len}"
        s += f"-txt{self.L}"
        if not self.general:
            s += "-nogeneral"
        if self.skill_every != 1:
            s += f"-skillevery{self.skill_every}"
        return s

    def model_cfg(self):
        over = dict(d_model=self.d, n_layers=self.layers, n_heads=self.heads, d_ff=self.d_ff,
                    general_skill=self.general, skill_every=self.skill_every, dropout=0.0,
                    max_text_len=max(self.L, self.x_len), image_size=self.img, image_patch=self.patch,
                    video_size=self.img, video_patch=self.patch)
        return model_config("base" if self.preset == "base" else "tiny", **over)


def _goal():
    return [Shape()]


def _gpu_quick():
    return [Shape(), Shape(task="text_cls", B=256, L=64)]


def _gpu():
    return [Shape(), Shape(task="text_cls", B=256, L=64), Shape(task="code_text", B=128),
            Shape(task="video_text", B=64, img=32, patch=8), Shape(task="sound_text", B=128),
            Shape(general=False), Shape(skill_every=2)]


def _cpu():
    tiny = dict(preset="tiny", d=64, layers=2, heads=2, d_ff=256, img=32, patch=8, L=16, x_len=32)
    return [Shape(task="image_text", B=8, **tiny), Shape(task="text_cls", B=8, **{**tiny, "L": 32})]


PRESETS = {"goal": _goal, "gpu-quick": _gpu_quick, "gpu": _gpu, "cpu": _cpu, "cpu-quick": lambda: _cpu()[:1]}


def parse_shape(spec: str) -> Shape:
    """task=image_text:B=256:d=768:layers=12:... (fields of Shape; unnamed ones keep their default)."""
    kw = {}
    names = {f: type(getattr(Shape(), f)) for f in Shape.__dataclass_fields__}
    for part in spec.split(":"):
        if "=" not in part:
            raise SystemExit(f"--shapes: {spec!r}: each part must be field=value (fields: {sorted(names)})")
        k, v = part.split("=", 1)
        if k not in names:
            raise SystemExit(f"--shapes: unknown field {k!r} in {spec!r} (fields: {sorted(names)})")
        kw[k] = v.lower() in ("1", "true", "yes") if names[k] is bool else names[k](v)
    s = Shape(**kw)
    if s.task not in TASK_MODALITIES:
        raise SystemExit(f"--shapes: task must be one of {sorted(TASK_MODALITIES)}, got {s.task!r}")
    return s


# ----------------------------------------------------------------------------- inputs and models


def make_batch(shape: Shape, cfg, device, seed: int) -> dict:
    """Random inputs of the benchmark's kinds (never zeros): ragged text masks, uint8 pixels,
    a waveform of varied loudness, ragged code."""
    g = torch.Generator().manual_seed(seed)
    B = shape.B

    def text(L):
        ids = torch.randint(5, cfg.vocab_size, (B, L), generator=g)
        ids[:, 0] = 2
        lens = torch.randint(max(2, L // 2), L + 1, (B,), generator=g)
        mask = torch.arange(L)[None] < lens[:, None]
        return ids.masked_fill(~mask, 0), mask

    ids, mask = text(shape.L)
    b = {"ids": ids, "mask": mask}
    if shape.task == "text_cls":
        b["label"] = torch.randint(0, 2, (B,), generator=g)
    elif shape.task == "image_text":
        b["x"] = torch.randint(0, 256, (B, 3, cfg.image_size, cfg.image_size), generator=g, dtype=torch.uint8)
    elif shape.task == "video_text":
        b["x"] = torch.randint(0, 256, (B, cfg.video_frames, 3, cfg.video_size, cfg.video_size), generator=g,
                               dtype=torch.uint8)
    elif shape.task == "sound_text":
        b["x"] = torch.randn(B, cfg.sound_samples, generator=g) * torch.rand(B, 1, generator=g)
    else:
        b["x_ids"], b["x_mask"] = text(shape.x_len)
    return {k: v.to(device) for k, v in b.items()}


def build(prov: str, base: SkillNetWukong, device):
    """(model, optimizer, callable model) of a provider, from a copy of the same weights."""
    model = copy.deepcopy(base).to(device)
    fused = prov in ("skillkern-fused", "compiled-fused")
    model.set_backend("auto" if fused else "torch")
    if fused and device.type == "cpu":
        model.set_backend("triton")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05,
                            **({"fused": True} if device.type == "cuda" else {}))
    fn = model
    if prov.startswith("compiled"):
        # donated buffers off: the correctness call and the timed calls reuse one compiled graph
        torch._functorch.config.donated_buffer = False
        fn = torch.compile(model, dynamic=False)
    return model, opt, fn


FUSED_OPS = ("skill_ffn", "token_reduce", "token_similarity")


def unavailable_reason(prov: str, device) -> str | None:
    """Why a provider cannot run here, or None."""
    if prov not in ("skillkern-fused", "compiled-fused"):
        return None
    if device.type == "cpu":
        if prov == "compiled-fused":
            return "torch.compile of Triton kernels needs a GPU (the interpreter runs eagerly only)"
        return next((why for op in FUSED_OPS if (why := backend_reason(op, "triton", device))), None)
    from skillkern import _backend
    torch_ops = [op for op in FUSED_OPS if _backend.resolve(op, "auto", device) == "torch"]
    return f"skillkern's auto backend picks torch for {torch_ops} here (triton missing?)" if torch_ops else None


def grads_of(model) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().reshape(-1)
                      for p in model.parameters() if p.requires_grad])


# ----------------------------------------------------------------------------- one shape


def run_shape(shape: Shape, providers, modes, device, args, env) -> tuple[list[dict], bool]:
    dtype = DTYPES[args.dtype]
    autocast = dtype != torch.float32 and device.type == "cuda"
    cfg = shape.model_cfg()
    torch.manual_seed(args.seed)
    base = SkillNetWukong(cfg, default_specs())
    batch = make_batch(shape, cfg, device, args.seed)
    flops = step_flops(base, shape.task, batch)           # forward + backward
    with torch.no_grad():
        tokens = sum(h for h in _positions(base, shape.task, batch))
    peak = peak_flops(device)
    n_params = sum(p.numel() for p in base.parameters())
    print(f"\n{shape.label()}: {n_params / 1e6:.1f} M parameters, {tokens} positions per step, "
          f"{flops / 1e9:,.2f} model GFLOP per step (fwd+bwd)")
    row0 = dict(env, op=OP, dtype=args.dtype, **asdict(shape), tokens=tokens, step_tflop=flops / 1e12,
                params_m=n_params / 1e6)

    # reference: eager-torch in fp32, TF32 off; torch's own error: eager-torch in the run's precision
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    ref_loss, ref_grad = _loss_and_grads("eager-torch", base, shape, batch, device, autocast=False)
    torch.backends.cuda.matmul.allow_tf32 = prev_tf32 if dtype == torch.float32 else True
    own = (0.0, 0.0)
    if autocast:
        own = _errors(*_loss_and_grads("eager-torch", base, shape, batch, device, autocast=True), ref_loss, ref_grad)
    floor = TOLERANCE[dtype]
    tol = (max(floor, 2 * own[0]), max(floor, 2 * own[1]))
    print(f"  allowed error vs eager-torch fp32: loss {tol[0]:.2e}, gradients {tol[1]:.2e} "
          f"(max({floor:g}, 2 x torch's own {args.dtype} error {own[0]:.2e} / {own[1]:.2e}))")

    rows, all_ok = [], True
    for prov in providers:
        pr0 = dict(row0, provider=prov)
        why = unavailable_reason(prov, device)
        if why:
            rows.append(setup_failed(prov, pr0, Unavailable(why), expected=True))
            continue
        try:
            model, opt, fn = build(prov, base, device)
            loss, g = _run_once(model, fn, shape, batch, device, autocast)
        except Exception as e:
            rows.append(setup_failed(prov, pr0, e, isinstance(e, skillkern.BackendUnavailable)))
            all_ok &= isinstance(e, skillkern.BackendUnavailable)
            free_memory(device)
            continue
        e_loss, e_grad = _errors(loss, g, ref_loss, ref_grad)
        print(f"  {prov:18s} check: loss rel err {e_loss:.2e}, gradient rel err {e_grad:.2e}")
        if not (e_loss <= tol[0] and e_grad <= tol[1]):
            print(f"  !!! {prov}: WRONG (limits {tol[0]:.2e} / {tol[1]:.2e}); not timed !!!")
            rows.append(dict(pr0, status="wrong", reason=f"loss rel err {e_loss:.2e}, gradient rel err {e_grad:.2e} "
                                                        f"> {tol[0]:.2e} / {tol[1]:.2e}"))
            all_ok = False
            del model, opt, fn
            free_memory(device)
            continue
        for mode in modes:
            make = _mode_fn(mode, model, opt, fn, shape.task, batch, autocast)
            try:
                med, p20, p80 = time_ms(make, device, args)
                mem = peak_mem_mb(make, device)
            except Exception as e:
                msg = first_line(e)
                print(f"  !!! {prov} {mode}: FAILED while timing: {msg[:300]} !!!")
                rows.append(dict(pr0, mode=mode, status="failed", reason=msg[:500]))
                all_ok = False
                continue
            f = flops / 3 if mode == "fwd" else flops
            tflops = f / (med * 1e-3) / 1e12
            mfu = 100.0 * f / (med * 1e-3) / peak if peak else None
            tok_s = tokens / (med * 1e-3)
            rows.append(dict(pr0, mode=mode, status="ok", ms=med, ms_p20=p20, ms_p80=p80, tokens_per_s=tok_s,
                             tflops=tflops, mfu_pct=mfu, peak_mem_mb=mem, loss_rel_err=e_loss, grad_rel_err=e_grad))
            print(f"  {prov:18s} {mode:8s} {med:10.3f} ms [{p20:.3f}, {p80:.3f}]  {tok_s:12,.0f} tok/s  "
                  f"{tflops:8.3g} TFLOP/s  MFU {f'{mfu:.1f} %' if mfu is not None else 'n/a'}"
                  + (f"  peak {mem:8.1f} MB" if mem is not None else ""))
        del model, opt, fn
        free_memory(device)
    for mode in modes:
        ok = {r["provider"]: r for r in rows if r.get("mode") == mode and r.get("status") == "ok"}
        for r in ok.values():
            for other, key in (("eager-torch", "x_eager"), ("compiled-torch", "x_compiled")):
                r[key] = ok[other]["ms"] / r["ms"] if other in ok else None
    stamp_rows(rows)
    return rows, all_ok


def _run_once(model, fn, shape: Shape, batch, device, autocast: bool) -> tuple[float, torch.Tensor]:
    """One forward/backward: (loss, the gradient of every trainable parameter, concatenated)."""
    with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
        loss = fn(shape.task, batch)["loss"]
    loss.backward()
    sync(device)
    return float(loss.detach()), grads_of(model)


def _loss_and_grads(prov, base, shape, batch, device, autocast):
    model, _, fn = build(prov, base, device)
    out = _run_once(model, fn, shape, batch, device, autocast)
    del model, fn
    free_memory(device)
    return out


def _errors(loss, g, ref_loss, ref_grad) -> tuple[float, float]:
    """Relative errors of a loss and of a concatenated gradient against the reference's."""
    e_loss = abs(loss - ref_loss) / max(abs(ref_loss), 1e-12)
    return e_loss, float((g - ref_grad).norm() / ref_grad.norm().clamp_min(1e-30))


def _positions(model, task, batch):
    for m, inp in model.side_inputs(task, batch):
        B = inp["ids"].shape[0] if "ids" in inp else inp["x"].shape[0]
        N = inp["ids"].shape[1] if "ids" in inp else model.cfg.tokens(m)
        yield int(B * N)


def _mode_fn(mode, model, opt, fn, task, batch, autocast):
    def forward():
        with torch.autocast(batch["ids"].device.type, torch.bfloat16, enabled=autocast):
            return fn(task, batch)["loss"]

    if mode == "fwd":
        return forward

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        forward().backward()

    if mode == "fwd+bwd":
        return fwd_bwd

    def step():
        fwd_bwd()
        opt.step()

    return step


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = new_parser(__doc__, "CPU: one tiny shape; GPU: the goal shape", "task=image_text:B=256:...",
                    PRESETS, PROVIDERS)
    add_run_args(ap, OP, "The goal shape runs first.")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    skillkern.set_check_ids(False)
    cpu = device.type != "cuda"
    if args.out is None:
        args.out = default_out(OP, cpu)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.modes == "fwd,bwd,fwd+bwd":  # the shared parser's default: this script's is the step
        modes = ["step"]
    bad = [m for m in modes if m not in STEP_MODES]
    if bad or not modes:
        raise SystemExit(f"--modes must be among {STEP_MODES}, got {modes}")
    providers = parse_providers(args.providers, PROVIDERS, DEFAULT_CPU_PROVIDERS if cpu else DEFAULT_GPU_PROVIDERS)
    shapes = pick_shapes(args, cpu, PRESETS, parse_shape)
    if not cpu:  # the goal shape first, so a time budget never skips it
        shapes.sort(key=lambda s: s.label() != GOAL_LABEL)
    env = env_info(device)
    print_header(f"bench_train_step: SkillNet train step ({args.dtype}{' autocast' if not cpu and args.dtype != 'fp32' else ''})",
                 env, shapes, modes, providers)
    if cpu:
        print(CPU_NOTE)
        if args.dtype != "fp32":
            print("(CPU: no autocast; the model runs in fp32)")
    rows: list[dict] = []
    t0 = time.time()
    ok = run_shapes(shapes, lambda s: run_shape(s, providers, modes, device, args, env), args, device, env, rows, t0)
    _table(rows, modes, cpu)
    print(goal_text(rows, cpu))
    if not ok:
        print(FAILED_NOTE)
    return 0 if ok else 1


def _table(rows, modes, cpu) -> None:
    print("\n" + "=" * 100)
    if cpu:
        print("CPU run: tiny shapes to show the script works. These numbers are NOT performance data.")
    print(f"{'shape':44s} {'provider':16s} {'mode':8s} {'ms':>9s} {'tok/s':>12s} {'TFLOP/s':>8s} {'MFU':>6s} "
          f"{'x eager':>8s} {'x compiled':>10s}")
    for r in rows:
        if r.get("status") != "ok":
            print(f"{r['label']:44s} {r['provider']:16s} {r.get('status')}: {(r.get('reason') or '')[:60]}")
            continue
        mfu = f"{r['mfu_pct']:5.1f}%" if r["mfu_pct"] is not None else "   n/a"
        xe = f"{r['x_eager']:.2f}x" if r.get("x_eager") else "-"
        xc = f"{r['x_compiled']:.2f}x" if r.get("x_compiled") else "-"
        print(f"{r['label']:44s} {r['provider']:16s} {r['mode']:8s} {r['ms']:9.2f} {r['tokens_per_s']:12,.0f} "
              f"{r['tflops']:8.3g} {mfu} {xe:>8s} {xc:>10s}")


def goal_text(rows, cpu: bool) -> str:
    prefix = f"GPU goal ({GOAL_LABEL}, step, skillkern-fused):"
    if cpu:
        return f"{prefix} n/a on CPU (GPU numbers need a GPU: python benchmarks/bench_train_step.py --quick on an H100/H200)"
    r = next((r for r in rows if r.get("label") == GOAL_LABEL and r["provider"] == "skillkern-fused"
              and r.get("mode") == "step" and r.get("status") == "ok"), None)
    if r is None:
        return f"{prefix} not measured in this run (needs that shape, provider and the step mode)"
    parts = [f"{r['tokens_per_s']:,.0f} tok/s"]
    for key, goal, name in (("x_eager", GOAL_X_EAGER, "eager-torch"), ("x_compiled", GOAL_X_COMPILED, "compiled-torch")):
        v = r.get(key)
        parts.append(f"{v:.2f}x {name} (goal {goal}x: {met(v >= goal)})" if v else f"vs {name}: not measured")
    mfu = r.get("mfu_pct")
    parts.append(f"MFU {mfu:.1f} % (goal {GOAL_MFU:g} %: {met(mfu >= GOAL_MFU)})" if mfu is not None
                 else "MFU n/a (GPU peak unknown)")
    return f"{prefix} " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
