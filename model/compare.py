"""SkillNet's claim at mini scale: sparse skills vs a dense FFN vs task-specific models.

    python -m model.compare                               # tiny preset, CPU, 600 steps x 3 seeds (~25 min)
    python -m model.compare --smoke                       # CI: tiny data, 10 steps, 1 seed
    python -m model.compare --preset base --device cuda   # SkillNet-base on the GPU machine
    python -m model.compare --steps 40 --seeds 0 --variants skillnet,dense

Three variants, trained on the same benchmark draw (--data-seed), for the same total number of
optimiser steps, with the same seeds (initial weights, task schedule and batch order):

  skillnet  the preset as it is: each token runs its modality's skill and the general skill,
            averaged (k = 2 skill FFNs of width d_ff per token, in every skill layer).
  dense     one FFN for every token of every task, as wide as skillnet's activated skills
            together (2 x d_ff): task_skills sends every modality of every task to the "general"
            skill alone and d_ff is doubled, so every token runs the same single FFN (checked by
            check_dense). Same weight FLOPs and weight parameters per token as skillnet (skillnet
            has one more output bias, d_model per layer). Exact as a function; one cost is not:
            the skill bank still holds all 6 skills, 5 never run (left out of "total"), and
            AdamW still steps over them, which can lower dense's tokens/s a little (4.5 % below
            skillnet's in a 40-step CPU run, within the noise); the config has no all-dense
            encoder to build instead.
  separate  one skillnet model per task, trained on that task only. Each task model gets exactly
            the number of steps its task is drawn in the multi-task run of the same seed
            (separate_steps replays the trainer's TaskSampler), so the steps add up to --steps and
            every task sees as many training examples as in the multi-task runs.

Every run goes through model.train.run_main (no plots, no validation evaluations, one checkpoint at
the end, deleted afterwards unless --keep-ckpts) under <out>/runs/, and is scored on the test split
(run_main's return value). Scores per task: accuracy (text_cls); for retrieval the mean R@1 of both
directions and mean_R (mean of R@1/5/10 both ways). The verdict and the plot use one score per task:
accuracy for text_cls, mean_R for retrieval. Across seeds: mean, sample std, and min-max.

Parameters (counted on the model, built on the meta device):
  total      the parameters some token of the trained tasks reads: skill-bank rows of skills no
             token runs (dense: 5 of its 6 skills) and embedders of modalities no task encodes
             are left out; separate = the sum over its task models.
  activated  per token: the shared encoder (attention, LayerNorms) plus the skill FFNs it runs, in
             every layer (model.params.activated's "shared" + "skill_ffn"; embedders and heads
             differ by modality and are the same in every variant, so they are left out here).
Throughput: tokens/s = the positions encoded in training (padding included; the trainer's
per-step "tokens") over the summed step times, both from the run's metrics.jsonl; wall time =
each run_main call end to end (set-up, training, test evaluation, final checkpoint).

Default steps, measured on the 2 CPU cores (tiny preset, mini data, the cores free, torch's
default 2 threads): 600 steps x 3 seeds took 24.4 min in all (skillnet 154 s, dense 164 s,
separate 167 s per seed, set-up and test evaluation included; ~0.23 s/step). 600 steps is the
most that fits the 30 minutes with room for a slower machine; the main job's 1,800 steps would
take ~75 min. Another training process on the same cores slowed a 2-thread step 4-30x here
(thread over-subscription); --threads 1 kept it at ~0.35 s/step, ~35 min for the default. Use
--threads 1 whenever the cores are shared.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time

import torch

from model.config import TASK_MODALITIES, model_config, train_config
from model.params import activated
from model.train import DataError, TaskSampler, load_tasks, run_main
from model.wukong import SkillNetWukong, specs_from_tasks

VARIANTS = ("skillnet", "dense", "separate")
DEFAULT_STEPS = 600
DEFAULT_SEEDS = (0, 1, 2)
SMOKE_STEPS = 10
LABELS = {"skillnet": "SkillNet (sparse skills)", "dense": "dense FFN (2 x d_ff)", "separate": "task-specific models"}


# ----------------------------------------------------------------------------- variants


def dense_task_skills(tasks=TASK_MODALITIES) -> dict:
    """task_skills that send every modality of every task to the shared "general" skill alone."""
    return {task: {m: ["general"] for m in TASK_MODALITIES[task]} for task in tasks}


def skills_per_token(mcfg, tasks) -> int:
    """k, the skills each token runs in `mcfg` (the same for every side of `tasks`, else ValueError)."""
    ks = {len(mcfg.skills_for(t, m)) for t in tasks for m in TASK_MODALITIES[t]}
    if len(ks) != 1:
        raise ValueError(f"model.compare: the tokens of {sorted(tasks)} run different numbers of skills {sorted(ks)}; "
                         "the dense variant needs one k for every token")
    return ks.pop()


def variant_model_config(variant: str, preset: str, tasks, vocab_size: int | None = None):
    """The ModelConfig of a variant (the preset's, with the data's vocabulary when given)."""
    if variant not in VARIANTS:
        raise ValueError(f"model.compare: `variant` must be one of {VARIANTS}, got {variant!r}")
    over = {} if vocab_size is None else {"vocab_size": vocab_size}
    base = model_config(preset, **over)
    if variant != "dense":
        return base
    if base.skill_every != 1:
        raise ValueError(f"model.compare: preset {preset!r} has skill_every={base.skill_every}; the dense variant "
                         "doubles d_ff, which would also widen its dense layers (needs skill_every=1)")
    k = skills_per_token(base, tasks)
    return model_config(preset, **over, d_ff=k * base.d_ff, task_skills=dense_task_skills(tasks))


def check_dense(dense, base, tasks) -> None:
    """Raise AssertionError unless every token of every task runs the one "general" skill of width
    k x base.d_ff in every layer (k = the skills a token runs in `base`)."""
    k = skills_per_token(base, tasks)
    for t in tasks:
        for m in TASK_MODALITIES[t]:
            got = dense.skills_for(t, m)
            assert got == ("general",), f"dense: {t}/{m} runs {got}, not the shared ('general',)"
    assert dense.d_ff == k * base.d_ff, f"dense: d_ff={dense.d_ff}, expected {k} x {base.d_ff}"
    assert all(dense.skilled_layer(i) for i in range(dense.n_layers)), "dense: a layer has another FFN"


def separate_steps(tasks, steps: int, seed: int, weights: dict | None = None) -> dict[str, int]:
    """Steps per task in the multi-task run of `seed`: the trainer's task schedule replayed (a
    TaskSampler over the sorted task names, as model.train.Trainer builds it). Sums to `steps`."""
    if steps < 1:
        raise ValueError(f"model.compare: `steps` must be >= 1, got {steps}")
    sampler = TaskSampler(sorted(tasks), weights or {}, seed)
    counts = {t: 0 for t in sorted(tasks)}
    for _ in range(steps):
        counts[sampler.next()] += 1
    return counts


# ----------------------------------------------------------------------------- parameters


def _embedder_params(model: SkillNetWukong, modalities) -> dict[str, int]:
    """name -> size of the embedder parameters the given modalities read (text and code share the
    token table; each has its own type vector)."""
    out = {}
    for m in modalities:
        emb = model.encoder.embedder(m)
        prefix = "encoder." + ("text" if m in ("text", "code") else m) + "."
        for n, p in emb.named_parameters():
            if n.startswith("modality_vec.") and n != f"modality_vec.{m}":
                continue
            out[prefix + n] = p.numel()
    return out


def used_parameters(model: SkillNetWukong, tasks) -> int:
    """Parameters some token of `tasks` reads: everything but skill-bank rows no token runs and
    the embedders of modalities no task encodes (heads exist only for the model's tasks)."""
    cfg = model.cfg
    modalities = {m for t in tasks for m in TASK_MODALITIES[t]}
    skills = {s for t in tasks for m in TASK_MODALITIES[t] for s in cfg.skills_for(t, m)}
    all_embed = _embedder_params(model, ("text", "code", "image", "sound", "video"))
    used_embed = _embedder_params(model, modalities)
    skill_names = {f"encoder.blocks.{i}.ffn.{n}" for i, b in enumerate(model.encoder.blocks) if b.skilled
                   for n, _ in b.ffn.named_parameters()}
    total = 0
    for n, p in model.named_parameters():
        if n in skill_names:
            total += p[0].numel() * len(skills)
        elif n in all_embed:
            total += used_embed.get(n, 0)
        else:
            total += p.numel()
    return total


def meta_model(mcfg, tasks: dict) -> SkillNetWukong:
    """The model of `mcfg` for `tasks`, on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return SkillNetWukong(mcfg, specs_from_tasks(tasks))


def count_params(mcfg, tasks: dict) -> dict:
    """{"total", "activated", "activated_side": {task/modality: whole activated}} of one model."""
    model = meta_model(mcfg, tasks)
    sides = {f"{t}/{m}": activated(model, t, m) for t in tasks for m in TASK_MODALITIES[t]}
    core = {a["shared"] + a["skill_ffn"] for a in sides.values()}
    if len(core) != 1:
        raise ValueError(f"model.compare: tokens activate different encoder parameters {sorted(core)}")
    return {"total": used_parameters(model, tasks), "activated": core.pop(),
            "activated_side": {k: a["total"] for k, a in sides.items()}}


def variant_params(variant: str, mcfgs: dict, tasks: dict) -> dict:
    """count_params for a variant: separate sums the totals of its task models."""
    if variant != "separate":
        return count_params(mcfgs[variant], tasks)
    per_task = {t: count_params(mcfgs[variant], {t: tasks[t]}) for t in tasks}
    return {"total": sum(c["total"] for c in per_task.values()),
            "activated": max(c["activated"] for c in per_task.values()),
            "activated_side": {k: v for c in per_task.values() for k, v in c["activated_side"].items()},
            "total_per_task": {t: c["total"] for t, c in per_task.items()}}


# ----------------------------------------------------------------------------- runs


def run_config(preset: str, *, steps: int, seed: int, data_size: str, runs_dir: str, run_name: str, tasks=()):
    """The TrainConfig of one run: the preset's, `steps` long (warmup kept at the preset's share),
    no validation evaluations, one checkpoint at the end."""
    base = train_config(preset)
    warmup = min(steps - 1, round(base.warmup_steps * steps / base.steps))
    return train_config(preset, steps=steps, warmup_steps=warmup, seed=seed, data_size=data_size,
                        eval_every=0, ckpt_every=steps, keep_ckpts=1, runs_dir=runs_dir, run_name=run_name,
                        tasks=tuple(tasks))


def read_train_rows(run_dir: str) -> list[dict]:
    """The training rows of a run's metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r.get("type") == "train"]


def train_and_test(mcfg, tcfg, tasks: dict, *, device, log_dir: str, keep_ckpts: bool) -> dict:
    """One run_main call (its output goes to <log_dir>/<run_name>.log). Returns the test results
    and the run's numbers: steps, tokens, train_s (summed step times), wall_s, task_steps."""
    run_dir = os.path.join(tcfg.runs_dir, tcfg.run_name)
    os.makedirs(log_dir, exist_ok=True)
    t0 = time.perf_counter()
    with open(os.path.join(log_dir, tcfg.run_name + ".log"), "w") as log, contextlib.redirect_stdout(log):
        results = run_main(mcfg, tcfg, device=device, plot=False, tasks=tasks)
    wall = time.perf_counter() - t0
    if results is None:
        raise RuntimeError(f"model.compare: run {tcfg.run_name} was stopped by a signal before its end")
    rows = read_train_rows(run_dir)
    if not keep_ckpts:
        shutil.rmtree(os.path.join(run_dir, "ckpt"), ignore_errors=True)
    task_steps = {}
    for r in rows:
        task_steps[r["task"]] = task_steps.get(r["task"], 0) + 1
    return {"results": results, "steps": len(rows), "tokens": sum(r["tokens"] for r in rows),
            "train_s": sum(r["step_s"] for r in rows), "wall_s": wall, "task_steps": task_steps}


def untrained_test(mcfg, tcfg, tasks: dict, *, device) -> dict:
    """Test results of a freshly initialised model (a task drawn 0 times in a short run)."""
    from model.train import Trainer
    t0 = time.perf_counter()
    trainer = Trainer(mcfg, tcfg, tasks, device=device, log=lambda *a, **k: None, progress=False)
    results = trainer.evaluate("test")
    return {"results": results, "steps": 0, "tokens": 0, "train_s": 0.0, "wall_s": time.perf_counter() - t0,
            "task_steps": {}}


def task_scores(results: dict) -> dict:
    """Per task: {"accuracy"} (classification) or {"R@1", "mean_R"} (retrieval), plus "score" (the
    number the verdict uses: accuracy or mean_R)."""
    from model.data import mean_r1

    out = {}
    for task, r in results.items():
        if "accuracy" in r:
            out[task] = {"accuracy": r["accuracy"], "score": r["accuracy"]}
        else:
            out[task] = {"R@1": mean_r1(r), "mean_R": r["mean_R"], "score": r["mean_R"]}
    return out


def run_variant_seed(variant: str, mcfg, tasks: dict, *, args, seed: int, out: str) -> dict:
    """Train and test one variant for one seed; separate trains one model per task."""
    runs_dir, logs = os.path.join(out, "runs"), os.path.join(out, "logs")
    common = dict(device=args.device, log_dir=logs, keep_ckpts=args.keep_ckpts)
    if variant != "separate":
        tcfg = run_config(args.preset, steps=args.steps, seed=seed, data_size=args.data_size, runs_dir=runs_dir,
                          run_name=f"{variant}_s{seed}")
        run = train_and_test(mcfg, tcfg, tasks, **common)
        return {**{k: v for k, v in run.items() if k != "results"}, "tasks": task_scores(run["results"])}
    split = separate_steps(tasks, args.steps, seed)
    runs, scores = [], {}
    for task, n in split.items():
        tcfg = run_config(args.preset, steps=max(1, n), seed=seed, data_size=args.data_size, runs_dir=runs_dir,
                          run_name=f"separate_{task}_s{seed}", tasks=(task,))
        one = {task: tasks[task]}
        run = train_and_test(mcfg, tcfg, one, **common) if n else untrained_test(mcfg, tcfg, one, device=args.device)
        runs.append(run)
        scores.update(task_scores(run["results"]))
    return {"steps": sum(r["steps"] for r in runs), "tokens": sum(r["tokens"] for r in runs),
            "train_s": sum(r["train_s"] for r in runs), "wall_s": sum(r["wall_s"] for r in runs),
            "task_steps": split, "untrained": [t for t, n in split.items() if n == 0], "tasks": scores}


# ----------------------------------------------------------------------------- statistics


def spread(values: list[float]) -> dict:
    """mean, sample std (0 for one value), min, max and n of a list of numbers."""
    if not values:
        raise ValueError("model.compare: spread of no values")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values), "n": len(values)}


def summarize(per_seed: dict, task_names: list[str]) -> dict:
    """Across seeds: per task and metric, and "mean" (the per-seed mean of the task scores), as spread()."""
    seeds = list(per_seed.values())
    out = {"tasks": {}, "mean": spread([statistics.fmean(s["tasks"][t]["score"] for t in task_names) for s in seeds])}
    for t in task_names:
        metrics = seeds[0]["tasks"][t].keys()
        out["tasks"][t] = {m: spread([s["tasks"][t][m] for s in seeds]) for m in metrics}
    tok_s = [s["tokens"] / s["train_s"] for s in seeds if s["train_s"] > 0]
    out["tok_s"] = spread(tok_s) if tok_s else None
    out["train_s"] = spread([s["train_s"] for s in seeds])
    out["wall_s"] = spread([s["wall_s"] for s in seeds])
    return out


def compare_pair(a: dict, b: dict) -> str:
    """How spread a relates to spread b: "higher", "lower" (min-max ranges apart), "within the seed
    spread" (they overlap) or "single seed" (no spread to judge by)."""
    if a["n"] < 2 or b["n"] < 2:
        return "single seed"
    if a["min"] > b["max"]:
        return "higher"
    if a["max"] < b["min"]:
        return "lower"
    return "within the seed spread"


# ----------------------------------------------------------------------------- report


def _cell(s: dict) -> str:
    """A table cell: mean ± std [min, max], or the value alone for one seed."""
    return f"{s['mean']:.3f} ± {s['std']:.3f} [{s['min']:.3f}, {s['max']:.3f}]" if s["n"] > 1 else f"{s['mean']:.3f}"


def markdown(report: dict) -> str:
    """The score table, the parameter / throughput table and the verdict, as markdown."""
    variants, tasks = list(report["variants"]), report["tasks"]
    cfg = report["config"]
    lines = [f"# SkillNet's claim at mini scale ({cfg['preset']} preset, {cfg['data_size']} data, "
             f"{cfg['steps']} steps, seeds {cfg['seeds']})", "",
             "Test scores: mean ± sample std [min, max] over seeds. text_cls: accuracy; retrieval: "
             "mean R@1 of both directions (R@1) and mean_R (R@1/5/10 both ways, the score used below).", "",
             "| task | metric | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for t in tasks:
        for m in report["variants"][variants[0]]["summary"]["tasks"][t]:
            if m == "score":
                continue
            cells = [_cell(report["variants"][v]["summary"]["tasks"][t][m]) for v in variants]
            lines.append(f"| {t} | {m} | " + " | ".join(cells) + " |")
    cells = [_cell(report["variants"][v]["summary"]["mean"]) for v in variants]
    lines.append("| **mean over tasks** | score | " + " | ".join(cells) + " |")
    lines += ["", "| variant | total params | activated / token | tokens/s (train) | train s | wall s |",
              "|---|---|---|---|---|---|"]
    for v in variants:
        r = report["variants"][v]
        s, p = r["summary"], r["params"]
        tok = f"{s['tok_s']['mean']:,.0f}" if s["tok_s"] else "n/a"
        lines.append(f"| {v} | {p['total'] / 1e6:.3f} M | {p['activated'] / 1e6:.3f} M | {tok} | "
                     f"{s['train_s']['mean']:.0f} | {s['wall_s']['mean']:.0f} |")
    for v in variants:
        for seed, r in report["variants"][v]["seeds"].items():
            if r.get("untrained"):
                lines.append(f"\n{v}, seed {seed}: {', '.join(r['untrained'])} drawn 0 times in the multi-task "
                             "schedule, so scored untrained (raise --steps).")
    lines += ["", "total = parameters read by some token (separate: summed over its task models); activated = "
              "shared encoder + the skill FFNs one token runs, all layers; tokens/s = positions encoded in "
              "training / summed step time (means over seeds).", "", "## Verdict", "", report["verdict"], ""]
    return "\n".join(lines)


def verdict(report: dict) -> str:
    """One paragraph computed from the numbers: is "sparse skills beat dense at equal activated
    parameters" reproduced, on the mean over tasks and per task (and how separate compares)."""
    v = report["variants"]
    if "skillnet" not in v or "dense" not in v:
        return "The claim needs both the skillnet and the dense variant; this run had " + ", ".join(v) + "."
    sk, de = v["skillnet"]["summary"], v["dense"]["summary"]
    how = compare_pair(sk["mean"], de["mean"])
    diff = sk["mean"]["mean"] - de["mean"]["mean"]
    n = sk["mean"]["n"]
    if how == "higher":
        head = (f"Reproduced at this scale: SkillNet's mean test score over tasks is {diff:+.3f} above the dense "
                f"model's at equal activated parameters, and every one of the {n} seeds' ranges lies above.")
    elif how == "single seed":
        head = (f"Not shown: with one seed there is no spread to judge by; SkillNet's mean test score over "
                f"tasks differs from the dense model's by {diff:+.3f}.")
    elif how == "lower":
        head = (f"Not reproduced: SkillNet's mean test score over tasks is {diff:+.3f} below the dense model's "
                f"at equal activated parameters, outside the seed spread (min-max over {n} seeds).")
    else:
        head = (f"Not shown at this scale: SkillNet's mean test score over tasks differs from the dense model's "
                f"by {diff:+.3f}, within the seed spread (the min-max ranges over {n} seeds overlap).")
    per = []
    for t in report["tasks"]:
        a, b = sk["tasks"][t]["score"], de["tasks"][t]["score"]
        per.append(f"{t} {a['mean'] - b['mean']:+.3f} ({compare_pair(a, b)})")
    text = head + " Per task, SkillNet minus dense: " + "; ".join(per) + "."
    if "separate" in v:
        se = v["separate"]["summary"]["mean"]
        text += (f" Against task-specific models trained on the same examples per task, SkillNet's mean "
                 f"differs by {sk['mean']['mean'] - se['mean']:+.3f} ({compare_pair(sk['mean'], se)}).")
    return text


def plot(report: dict, png: str) -> str:
    """Per-task score bars (mean over seeds, min-max whiskers) for each variant, and the mean."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants, groups = list(report["variants"]), list(report["tasks"]) + ["mean"]
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(groups), 4.5))
    for i, v in enumerate(variants):
        s = report["variants"][v]["summary"]
        stats = [s["tasks"][g]["score"] if g != "mean" else s["mean"] for g in groups]
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(groups))]
        means = [st["mean"] for st in stats]
        err = [[m - st["min"] for m, st in zip(means, stats)], [st["max"] - m for m, st in zip(means, stats)]]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=LABELS.get(v, v))
    ax.set_xticks(range(len(groups)), groups)
    cfg = report["config"]
    ax.set(ylabel="test score (accuracy / mean_R)", ylim=(0, 1),
           title=f"{cfg['preset']} preset, {cfg['steps']} steps, seeds {cfg['seeds']} (bars: mean, whiskers: min-max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring); --smoke sets tiny data, 10 steps and seed 0."""
    ap = argparse.ArgumentParser(prog="python -m model.compare", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="model preset: tiny (CPU) or base (SkillNet-base, GPU)")
    ap.add_argument("--steps", type=int, default=None, help=f"optimiser steps per variant (default {DEFAULT_STEPS})")
    ap.add_argument("--seeds", default=None, help="comma list of seeds (default 0,1,2)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list from " + ",".join(VARIANTS))
    ap.add_argument("--out", default=os.path.join("runs", "compare"), help="output folder")
    ap.add_argument("--data-size", default=None, choices=("mini", "tiny"))
    ap.add_argument("--data-seed", type=int, default=0, help="the benchmark draw every run trains on")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (default 0: torch's own); 1 when another process shares the cores")
    ap.add_argument("--keep-ckpts", action="store_true", help="keep each run's final checkpoint")
    ap.add_argument("--smoke", action="store_true", help=f"CI: tiny data, {SMOKE_STEPS} steps, seed 0")
    args = ap.parse_args(argv)
    return _resolve(args)


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults (--smoke's or the full run's) and check every argument."""
    if args.smoke:
        args.steps = args.steps or SMOKE_STEPS
        args.seeds = args.seeds or "0"
        args.data_size = args.data_size or "tiny"
    args.steps = DEFAULT_STEPS if args.steps is None else args.steps
    args.data_size = args.data_size or "mini"
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    try:
        seeds = [int(s) for s in (args.seeds or ",".join(map(str, DEFAULT_SEEDS))).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be a comma list of ints, got {args.seeds!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct ints >= 0, got {args.seeds!r}")
    args.seeds = seeds
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if not variants or bad or len(set(variants)) != len(variants):
        raise ValueError(f"--variants must be distinct names from {VARIANTS}, got {args.variants!r}")
    args.variants = [v for v in VARIANTS if v in variants]
    if args.device is not None and args.device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device is not None and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA GPU is visible here")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0 = torch's default), got {args.threads}")
    if args.data_seed < 0:
        raise ValueError(f"--data-seed must be >= 0, got {args.data_seed}")
    return args


def data_vocab(tasks: dict) -> int | None:
    """The vocabulary size of the tokenizer that built the data (None when the data does not say),
    as model.train.Trainer fits the model's token table to it."""
    sizes = {t.meta.get("tokenizer", {}).get("vocab_size") for t in tasks.values() if getattr(t, "meta", None)}
    sizes.discard(None)
    if len(sizes) > 1:
        raise DataError(f"the tasks were tokenized with different vocabularies {sorted(sizes)}")
    return sizes.pop() if sizes else None


def run_compare(args: argparse.Namespace, log=print) -> dict:
    """Every variant and seed (on args.threads CPU threads when > 0, restored afterwards); writes
    compare.json, compare.md and compare.png under args.out."""
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run_all(args, log)
    finally:
        torch.set_num_threads(threads)


def _run_all(args: argparse.Namespace, log) -> dict:
    """run_compare's body: load the data once, then every variant and seed."""
    t0 = time.perf_counter()
    tcfg = train_config(args.preset, data_size=args.data_size, seed=args.data_seed)
    tasks = load_tasks(tcfg, log=lambda *a, **k: None)
    names = sorted(tasks)
    vocab = data_vocab(tasks)
    mcfgs = {v: variant_model_config(v, args.preset, names, vocab) for v in args.variants}
    if "dense" in mcfgs:
        check_dense(mcfgs["dense"], variant_model_config("skillnet", args.preset, names, vocab), names)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = {"preset": args.preset, "steps": args.steps, "seeds": args.seeds, "data_size": args.data_size,
              "data_seed": args.data_seed, "threads": torch.get_num_threads(), "device": device,
              "score": "accuracy (text_cls) / mean_R (retrieval)", "spread": "sample std and min-max over seeds"}
    report = {"config": config, "tasks": names, "variants": {}}
    for v in args.variants:
        per_seed = {}
        for seed in args.seeds:
            log(f"model.compare: {v}, seed {seed} ({time.perf_counter() - t0:.0f} s so far)")
            per_seed[str(seed)] = run_variant_seed(v, mcfgs[v], tasks, args=args, seed=seed, out=args.out)
        report["variants"][v] = {"model": dataclasses.asdict(mcfgs[v]), "params": variant_params(v, mcfgs, tasks),
                                 "seeds": per_seed, "summary": summarize(per_seed, names)}
    report["verdict"] = verdict(report)
    report["total_wall_s"] = time.perf_counter() - t0
    write_outputs(report, args.out)
    return report


def write_outputs(report: dict, out: str) -> None:
    """compare.json (every number), compare.md (the tables and verdict) and compare.png."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(markdown(report))
    plot(report, os.path.join(out, "compare.png"))


def main(argv=None) -> int:
    """The command line: 0 when done, 2 on a bad argument or missing data (the message names it)."""
    try:
        args = parse_args(argv)
        report = run_compare(args)
    except (ValueError, DataError) as e:
        print(f"model.compare: {e}", file=sys.stderr)
        return 2
    print(markdown(report))
    print(f"written: {os.path.join(args.out, 'compare.md')}, compare.json, compare.png "
          f"({report['total_wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
