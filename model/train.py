"""Train SkillNet (+ Wukong's dual-encoder head) on the mini 5-modality benchmark.

    python -m model.train                         # tiny model, mini benchmark, eval table at the end
    python -m model.train --model base --backend triton --steps 2000
    python -m model.train --resume                # continue runs/<name> from its last checkpoint
    torchrun --nproc_per_node 2 -m model.train    # DDP (nccl on GPUs, gloo on CPUs)
    torchrun --nproc_per_node 8 -m model.train --fsdp --resume   # FSDP2, resumed from any world size
    python -m model.train --set lr=5e-4 skill_every=2 task_weights='{"image_text": 2}'

Each optimiser step trains one task, drawn by a fixed weighted schedule (TrainConfig.task_weights)
from a seeded generator; a task's global batch is drawn from its own seeded epoch permutation,
cut into grad_accum micro-batches, and each rank takes its slice of every micro-batch (so DDP
sees exactly the single-process batch, micro-batch by micro-batch).
AdamW (no decay on biases, norms, embeddings, the temperature) with linear warmup and cosine
decay; bf16 autocast on a GPU; gradient accumulation and clipping; `--backend` routes every fused
layer (SkillFFN, TokenReduction, FILIP loss, evaluation's token similarity).

Outputs in runs/<name>/: metrics.jsonl (one JSON object per step and per evaluation),
curves.png, ckpt/step_NNNNNN/ (model.checkpoint describes the files: DCP shards of the model and
optimiser, JSON, weights-only RNG files, model.safetensors, and manifest.json with checksums,
written last) with ckpt/latest naming the newest. A checkpoint is written to a temporary folder
and renamed (the rename is atomic), so a run killed at any moment leaves the previous checkpoint
intact. Nothing in a checkpoint is loaded by a free unpickler: a checkpoint cannot run code.

Resuming (--resume) takes the newest checkpoint that matches its manifest (saying which newer ones
it skipped and why) and restores the weights, the optimiser and scheduler, the step, every RNG
(python, numpy, torch, CUDA, the task sampler) and each task's data position (a global sample
count) and the metrics so far. With the same world size a killed and resumed run gives the same
loss curve as one that was not (bitwise on CPU); on a different world size the model and
optimiser are resharded by torch.distributed.checkpoint and the data continues the same global
stream, equal up to floating-point summation order.

SIGTERM or SIGUSR1 (Slurm, Kubernetes) make every rank finish its step, write one checkpoint
together and exit with status 75 (model.dist.EXIT_PREEMPTED); rerun with --resume.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import skillkern
from model.config import (
    TASK_KINDS,
    TASK_MODALITIES,
    ModelConfig,
    TrainConfig,
    model_config,
    parse_overrides,
    to_dict,
    train_config,
)
from model import checkpoint as ckpt_io
from model.checkpoint import CheckpointError
from model.dist import EXIT_PREEMPTED, Preemption, canonical_name, full_tensor, shard_model
from model.params import peak_flops, step_flops
from model.wukong import SkillNetWukong, specs_from_tasks

# Ops that run on a skillkern backend; --backend is checked against each before training.
FUSED_OPS = ("skill_ffn", "token_reduce", "token_similarity")
# Names of parameters AdamW does not decay: biases and norms (1-d), embeddings, positions,
# [CLS] / type vectors and FILIP's temperature.
NO_DECAY = ("tok.weight", ".pos", ".cls", ".time", "modality_vec", "log_scale")


class DataError(RuntimeError):
    """The benchmark data is missing or does not fit the model; the message says what to do."""


# ----------------------------------------------------------------------------- sampling


class TaskSampler:
    """One task per step, drawn with probability proportional to its weight from a seeded
    numpy generator (its state goes into the checkpoint)."""

    def __init__(self, names: list[str], weights: dict, seed: int):
        self.names = list(names)
        w = np.array([float(weights.get(n, 1.0)) for n in self.names])
        if not w.sum() > 0:
            raise ValueError(f"TrainConfig: `task_weights` give every task ({self.names}) weight 0")
        self.p = w / w.sum()
        self.rng = np.random.Generator(np.random.PCG64([seed, 7001]))

    def next(self) -> str:
        return self.names[int(self.rng.choice(len(self.names), p=self.p))]

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, s: dict) -> None:
        self.rng.bit_generator.state = s["rng"]


class BatchOrder:
    """A task's training order, a function of (seed, task, global sample count) alone: epoch e is
    the e-th permutation drawn from PCG64([seed, 9001, task_index]), cut into global batches (the
    tail that does not fill a batch is dropped, so every batch has the same shape). Its state is
    the number of samples consumed, so a run resumed on any number of ranks continues the same
    global stream (each rank then takes its slice of every global batch)."""

    def __init__(self, n: int, batch: int, seed: int, task_index: int, task: str):
        if n < batch:
            raise DataError(f"{task}: the train split has {n} examples, fewer than one global batch of "
                            f"{batch}; lower --batch-size or build a larger benchmark (--data-size mini)")
        self.n, self.batch, self.task = n, batch, task
        self.seed_key = [seed, 9001, task_index]
        self.per_epoch = (n // batch) * batch  # samples used per epoch
        self.samples = 0
        self._rng, self._perm, self._perm_epoch = None, None, -1

    @property
    def epoch(self) -> int:
        """The epoch of the batch drawn last (0 before the first)."""
        return max(0, self.samples - 1) // self.per_epoch

    def _permutation(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s permutation; the generator is replayed from the seed when it is not
        the next one (after a resume), so the order never depends on how the run got here."""
        if epoch != self._perm_epoch:
            if self._rng is None or epoch != self._perm_epoch + 1:
                self._rng, self._perm_epoch = np.random.Generator(np.random.PCG64(self.seed_key)), -1
            while self._perm_epoch < epoch:
                self._perm = self._rng.permutation(self.n)
                self._perm_epoch += 1
        return self._perm

    def next(self) -> torch.Tensor:
        epoch, pos = divmod(self.samples, self.per_epoch)
        idx = self._permutation(epoch)[pos:pos + self.batch]
        self.samples += self.batch
        return torch.from_numpy(idx.copy())

    def state_dict(self) -> dict:
        return {"samples": self.samples, "batch": self.batch}

    def load_state_dict(self, s: dict) -> None:
        samples = s.get("samples") if isinstance(s, dict) else None
        if not isinstance(samples, int) or samples < 0:
            raise ValueError(f"{self.task}: a data position must hold a sample count >= 0, got {s!r}")
        if s.get("batch", self.batch) != self.batch:
            raise ValueError(f"{self.task}: the checkpoint's global batch is {s['batch']}, this run's is "
                             f"{self.batch}; resume with the same --batch-size (any number of ranks)")
        self.samples = samples


def lr_lambda(cfg: TrainConfig):
    """Linear warmup to lr over warmup_steps, then cosine down to lr * min_lr_ratio at the end."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


# ----------------------------------------------------------------------------- data


def load_tasks(tcfg: TrainConfig, log=print) -> dict:
    """The benchmark's tasks (model.data.build_benchmark), only those asked for (all by default).
    Raises DataError when none exists."""
    try:
        from model.data import build_benchmark
    except ImportError as e:
        raise DataError(f"model.data is not importable ({e}); the benchmark builder is part of this repo") from e
    asked = list(tcfg.tasks) or list(TASK_KINDS)
    tasks = build_benchmark(tcfg.data_root or None, tasks=asked, size=tcfg.data_size, seed=tcfg.seed, log=log)
    missing = [t for t in asked if t not in tasks]
    if not tasks:
        raise DataError(f"no benchmark task could be built (asked {asked}); the messages above say which "
                        "source is missing and how to install it")
    if missing:
        log(f"training on {sorted(tasks)}; missing (no source here, see above): {missing}")
    return tasks


def _check_task_data(name: str, task, mcfg: ModelConfig) -> None:
    """The tensors a task gives fit the model: clear errors instead of shape errors later."""
    for split in ("train", "val", "test"):
        if split not in task.splits:
            raise DataError(f"{name}: the data has no {split!r} split (has {sorted(task.splits)})")
        s = task.splits[split]
        need = {"classify": ("ids", "mask", "label"), "retrieve": ("x", "ids", "mask")}[task.kind]
        if TASK_MODALITIES[name][0] == "code":
            need = ("x_ids", "x_mask", "ids", "mask")
        missing = [k for k in need if k not in s]
        if missing:
            raise DataError(f"{name}/{split}: missing tensors {missing} (has {sorted(s)})")
        n = {int(v.shape[0]) for v in s.values()}
        if len(n) != 1:
            raise DataError(f"{name}/{split}: tensors disagree on the number of examples: "
                            f"{ {k: tuple(v.shape) for k, v in s.items()} }")
        for k in ("ids", "x_ids"):
            if k in s and s[k].numel() and int(s[k].max()) >= mcfg.vocab_size:
                raise DataError(f"{name}/{split}: `{k}` holds token id {int(s[k].max())} >= the model's "
                                f"vocab_size={mcfg.vocab_size} (a different tokenizer built the data?)")
            if k in s and s[k].shape[1] > mcfg.max_text_len:
                raise DataError(f"{name}/{split}: `{k}` has {s[k].shape[1]} tokens per item > "
                                f"max_text_len={mcfg.max_text_len}; raise it with --set max_text_len=...")


def _take(split: dict, idx: torch.Tensor, device) -> dict:
    return {k: v[idx].to(device, non_blocking=True) for k, v in split.items()}


# ----------------------------------------------------------------------------- distributed


def dist_info() -> tuple[int, int, object]:
    """(rank, world, process group or None)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), dist.group.WORLD
    return 0, 1, None


def maybe_init_distributed(device: torch.device) -> None:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: join the group (nccl on GPUs, gloo on CPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Builds the model and everything that trains it. fit() runs to TrainConfig.steps (or to
    `stop_at`, to simulate a killed run) and returns the losses of the steps it ran.

    tasks: {name: Task} as model.data gives them; None loads the benchmark (the only source of
    data the command line uses). device: default cuda when available (LOCAL_RANK's GPU under
    torchrun). fsdp: shard with FSDP2 (model.dist.shard_model) instead of DDP when there are
    several ranks. After fit(), `preempted` names the signal that stopped the run early (None
    when it ran to its end)."""

    def __init__(self, mcfg: ModelConfig, tcfg: TrainConfig, tasks: dict | None = None, *,
                 device: torch.device | str | None = None, resume: bool = False, fsdp: bool = False, log=print,
                 progress: bool = True):
        tcfg.validate()
        if device is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        maybe_init_distributed(self.device)
        self.rank, self.world, self.group = dist_info()
        self.log = log if self.rank == 0 else (lambda *a, **k: None)
        self.progress = progress and self.rank == 0
        self.tcfg = tcfg
        self.run_dir = os.path.join(tcfg.runs_dir, tcfg.run_name)
        self.ckpt_dir = os.path.join(self.run_dir, "ckpt")
        self.metrics_path = os.path.join(self.run_dir, "metrics.jsonl")

        if tasks is None:
            tasks = self._load_tasks_once()
            mcfg = self._fit_vocab(mcfg, tasks)
        tasks = {n: t for n, t in tasks.items() if not tcfg.tasks or n in tcfg.tasks}
        if not tasks:
            raise DataError(f"none of the asked tasks {list(tcfg.tasks)} is in the data")
        self.tasks = tasks
        try:
            specs = specs_from_tasks(tasks)
        except ValueError as e:
            raise DataError(str(e)) from None
        for name, t in tasks.items():
            _check_task_data(name, t, mcfg)
        self.mcfg = mcfg.validate()
        # seeded here, after the data: building the benchmark (vs. loading its cache) must not
        # change the initial weights
        self._seed_everything(tcfg.seed)
        self.model = SkillNetWukong(mcfg, specs).to(self.device)
        if tcfg.init_from:
            self._load_weights(tcfg.init_from)
        self.fused_modules = self.model.set_backend(tcfg.backend)
        self._check_backend()
        if mcfg.lit:
            frozen = self.model.lock_image_tower()
            self.log(f"LiT: image tower locked ({frozen / 1e6:.2f} M parameter elements frozen)"
                     + ("" if tcfg.init_from or resume else "; without --set init_from=<model.safetensors> "
                        "the locked tower is the random initialisation"))
        if self.device.type == "cuda":
            # routing ids are built by the model from the validated config: skip skillkern's
            # per-call range check and its host sync
            skillkern.set_check_ids(False)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        self.ddp = None
        self.fsdp = fsdp and self.world > 1
        if fsdp and self.world == 1:
            self.log("--fsdp with one process: nothing to shard, training unsharded")
        if self.fsdp:
            if mcfg.lit:
                raise ValueError("--fsdp: LiT (`lit`=True) locks rows of the skill banks in place, which "
                                 "sharded parameters do not support; train LiT with DDP (without --fsdp)")
            shard_model(self.model, self.device, bf16=self.device.type == "cuda" and tcfg.amp)
        elif self.world > 1:
            # one task per step leaves the other tasks' embedders and heads unused
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(tcfg))
        names = sorted(tasks)
        self.sampler = TaskSampler(names, tcfg.task_weights, tcfg.seed)
        self.orders = {n: BatchOrder(int(next(iter(tasks[n].splits["train"].values())).shape[0]),
                                     tcfg.batch_size, tcfg.seed, i, n) for i, n in enumerate(names)}
        if tcfg.batch_size % (tcfg.grad_accum * self.world):
            raise ValueError(f"TrainConfig: `batch_size`={tcfg.batch_size} must be divisible by grad_accum x "
                             f"world size = {tcfg.grad_accum} x {self.world}")
        self.step = 0
        self.preempted: str | None = None
        self.metrics: list[dict] = []
        self.peak = peak_flops(self.device)
        self.autocast = self.device.type == "cuda" and tcfg.amp
        if resume:
            self.load_checkpoint()
        elif self.rank == 0:
            self._fresh_run_dir()
        _barrier()

    # ------------------------------------------------------------------ set-up helpers
    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _load_tasks_once(self) -> dict:
        # rank 0 builds (and caches) the benchmark first; the others then load the cache
        if self.rank == 0:
            tasks = load_tasks(self.tcfg, self.log)
        _barrier()
        if self.rank != 0:
            tasks = load_tasks(self.tcfg, lambda *a, **k: None)
        return tasks

    def _fit_vocab(self, mcfg: ModelConfig, tasks: dict) -> ModelConfig:
        """The token table follows the tokenizer that built the data (bert-base-chinese's 21,128,
        or model.data's fallback vocabulary when its package is missing)."""
        sizes = {t.meta.get("tokenizer", {}).get("vocab_size") for t in tasks.values() if getattr(t, "meta", None)}
        sizes.discard(None)
        if len(sizes) > 1:
            raise DataError(f"the tasks were tokenized with different vocabularies {sorted(sizes)}; "
                            "rebuild the benchmark (python -m model.data --rebuild)")
        if sizes and sizes != {mcfg.vocab_size}:
            (v,) = sizes
            self.log(f"vocab_size {mcfg.vocab_size} -> {v} (the data's tokenizer)")
            mcfg = dataclasses.replace(mcfg, vocab_size=v)
        return mcfg

    def _check_backend(self) -> None:
        b = self.tcfg.backend
        if b in ("auto", "torch"):
            return
        problems = []
        for op in FUSED_OPS:
            try:
                skillkern._backend.resolve(op, b, self.device)
            except skillkern.BackendUnavailable as e:
                problems.append(str(e))
        if problems:
            raise skillkern.BackendUnavailable(f"--backend {b} cannot run every fused layer on {self.device}:\n  "
                                               + "\n  ".join(problems))

    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.dim() < 2 or any(k in n for k in NO_DECAY) else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.tcfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        fused = {"fused": True} if self.device.type == "cuda" else {}
        return torch.optim.AdamW(groups, lr=self.tcfg.lr, betas=tuple(self.tcfg.betas), eps=self.tcfg.adam_eps,
                                 **fused)

    def _load_weights(self, path: str) -> None:
        from safetensors.torch import load_file
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TrainConfig: `init_from` file {path!r} does not exist")
        state = load_file(path, device=str(self.device))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        self.log(f"init from {path}: {len(state) - len(unexpected)} tensors loaded"
                 + (f"; not in the file (kept fresh): {missing}" if missing else "")
                 + (f"; ignored (not in this model): {unexpected}" if unexpected else ""))

    def _fresh_run_dir(self) -> None:
        if os.path.isdir(self.ckpt_dir) or os.path.exists(self.metrics_path):
            self.log(f"starting fresh in {self.run_dir} (its old checkpoints and metrics are replaced; "
                     "--resume continues them instead)")
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.metrics_path)
        os.makedirs(self.run_dir, exist_ok=True)

    # ------------------------------------------------------------------ one step
    def _micro_batches(self, task: str) -> list[dict]:
        """This rank's parts of the next global batch of `task`: the batch is cut into grad_accum
        micro-batches, and each micro-batch into world contiguous rank slices, so micro-step j
        covers the same items on any number of ranks (FILIP's contrastive set is the micro-batch)."""
        idx = self.orders[task].next()
        split = self.tasks[task].splits["train"]
        out = []
        for micro in idx.chunk(self.tcfg.grad_accum):
            per_rank = len(micro) // self.world
            out.append(_take(split, micro[self.rank * per_rank:(self.rank + 1) * per_rank], self.device))
        return out

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        task = self.sampler.next()
        micro = self._micro_batches(task)
        model = self.ddp or self.model
        self.model.train()
        value, tokens, flops = 0.0, 0, 0.0
        for i, batch in enumerate(micro):
            sync = i == len(micro) - 1
            ctx = model.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
            if self.fsdp:  # FSDP2: reduce-scatter the gradients on the last micro-step only
                self.model.set_requires_gradient_sync(sync)
            with ctx, torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                out = model(task, batch, self.group)
                (out["loss"] / len(micro)).backward()
            value += out["value"] / len(micro)
            tokens += out["tokens"] * self.world
            flops += step_flops(self.model, task, batch) * self.world
        if self.world > 1 and TASK_KINDS[task] == "classify":
            # the logged value: the global batch's mean (FILIP's value already is)
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world
        gnorm = full_tensor(nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip)
                            if self.tcfg.grad_clip > 0 else _grad_norm(self.model))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.mcfg.lit:
            self.model.restore_locked()
        loss = float(value)       # the one host sync of the step (also makes dt honest on a GPU)
        self.step += 1
        dt = time.perf_counter() - t0
        row = {"type": "train", "step": self.step, "task": task, "loss": loss, "lr": lr,
               "grad_norm": float(gnorm), "tokens": tokens, "step_s": dt, "tok_s": tokens / dt,
               "mfu": flops / dt / (self.peak * self.world) if self.peak else None}
        if not math.isfinite(loss):
            raise FloatingPointError(f"step {self.step} ({task}): loss is {loss}; lower --set lr=... "
                                     "or check the data")
        return row

    # ------------------------------------------------------------------ loop
    def fit(self, stop_at: int | None = None) -> list[float]:
        """Train to TrainConfig.steps (or stop after step `stop_at`, as a killed run would).
        Returns the losses of the steps run here. SIGTERM / SIGUSR1 on any rank stop every rank
        after the same step, with a checkpoint of it (model.dist.Preemption); `preempted` then
        names the signal."""
        cfg = self.tcfg
        last = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        bar = self._bar(last)
        losses = []
        t_start = time.perf_counter()
        with Preemption() as signals:
            while self.step < last:
                row = self.train_step()
                losses.append(row["loss"])
                self._record(row)
                self._show(bar, row, t_start)
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                    self._record_eval(self.evaluate("val"), "val")
                saved = self.step % cfg.ckpt_every == 0 or self.step == cfg.steps
                if saved:
                    self.save_checkpoint()
                if signals.agreed(self.group, self.device):  # every rank stops after the same step
                    if not saved:
                        self.save_checkpoint()
                    self.preempted = signals.signal or "a signal to another rank"
                    self.log(f"stopped after step {self.step} on {self.preempted}: checkpoint written; "
                             f"exit status {EXIT_PREEMPTED}, continue with --resume")
                    break
        if bar is not None:
            bar.close()
        return losses

    def _bar(self, last: int):
        if not self.progress or not sys.stderr.isatty():
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=last, initial=self.step, desc=self.tcfg.run_name, dynamic_ncols=True)

    def _show(self, bar, row: dict, t_start: float) -> None:
        mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
        if bar is not None:
            bar.set_postfix_str(f"{row['task']} loss {row['loss']:.3f} | {row['tok_s']:,.0f} tok/s | MFU {mfu}")
            bar.update(1)
        elif self.rank == 0 and (self.step % self.tcfg.log_every == 0 or self.step == self.tcfg.steps):
            self.log(f"step {self.step:5d}/{self.tcfg.steps} {row['task']:11s} loss {row['loss']:.4f} "
                     f"lr {row['lr']:.2e} | {row['tok_s']:,.0f} tok/s | MFU {mfu} | "
                     f"{time.perf_counter() - t_start:.0f} s")

    def _record(self, row: dict) -> None:
        self.metrics.append(row)
        if self.rank == 0:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def _record_eval(self, results: dict, split: str) -> None:
        for task, m in results.items():
            self._record({"type": "eval", "step": self.step, "split": split, "task": task, **m})

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, dict]:
        """Per task: {"n", "accuracy"} or {"n", "i2t_R@1", ..., "t2i_R@10", "mean_R"}, on the
        whole split, computed by every rank alike (no collectives)."""
        from model.data import accuracy
        self.model.eval()
        out = {}
        bs = self.tcfg.eval_batch
        for name in sorted(self.tasks):
            s = self.tasks[name].splits[split]
            n = int(next(iter(s.values())).shape[0])
            chunks = [torch.arange(i, min(n, i + bs)) for i in range(0, n, bs)]
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                if TASK_KINDS[name] == "classify":
                    logits = torch.cat([self.model.classify_logits(name, _take(s, c, self.device)).float()
                                        for c in chunks])
                    out[name] = {"n": n, "accuracy": accuracy(logits.cpu(), s["label"])}
                    continue
                feats = [self.model.retrieval_features(name, _take(s, c, self.device)) for c in chunks]
            res = self._retrieval(feats, n)
            res["mean_R"] = sum(res.values()) / len(res)
            out[name] = {"n": n, **res}
        self.model.train()
        return out

    def _retrieval(self, feats: list, n: int) -> dict[str, float]:
        """R@K both ways over the whole gallery, the Wukong protocol: FILIP's token-wise scores
        (mean over the query's tokens of the max over the candidate's) through
        skillkern.maxsim_topk, which streams the candidates and keeps each query's best
        max K + 1 on the device, so no (N, N) score matrix is ever held. Items rank texts (i2t)
        and texts rank items (t2i); ties count against the match (model.data.topk_recall)."""
        from model.data import topk_recall
        from model.data.metrics import RECALL_KS

        def cat(i):
            parts = [f[i] for f in feats]
            return None if parts[0] is None else torch.cat(parts)
        img, img_m, txt, txt_m = cat(0), cat(1), cat(2), cat(3)
        k = min(n, max(RECALL_KS) + 1)
        # maxsim has torch and Triton kernels; a run on the CUDA extension scores on the default one
        backend = self.tcfg.backend if self.tcfg.backend in ("torch", "triton") else "auto"
        res = {}
        for prefix, q, q_m, d, d_m in (("i2t", img, img_m, txt, txt_m), ("t2i", txt, txt_m, img, img_m)):
            values, indices = skillkern.maxsim_topk(q.float(), d.float(), k, q_m, d_m, reduce="mean", backend=backend)
            res.update(topk_recall(values, indices, n, prefix))
        return res

    # ------------------------------------------------------------------ checkpoints
    def _param_names(self) -> dict[int, str]:
        """id(parameter) -> its name in the plain model (model.dist.canonical_name: the same under
        DDP, FSDP2 and one process, so a checkpoint moves between them)."""
        return {id(p): canonical_name(n)[0] for n, p in self.model.named_parameters()}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole weights under their plain names and shapes, on the CPU (under FSDP2 gathered
        from the shards: a collective, every rank calls it)."""
        out = {}
        for k, v in self.model.state_dict().items():
            name, lifted = canonical_name(k)
            t = full_tensor(v).detach().cpu()
            out[name] = (t.reshape(()) if lifted else t).contiguous()
        return out

    def _tensor_state(self) -> dict:
        """What DCP saves: model/<name> (weights and buffers) and optim/<name>/<key> (AdamW's
        moments and step), as tensors or, under FSDP2, this rank's DTensor shards; 0-dim tensors
        as 1-element vectors (the shape FSDP2 gives them), so every layout reads every other."""
        out = {f"model/{canonical_name(k)[0]}": _stored(v) for k, v in self.model.state_dict().items()}
        names = self._param_names()
        for p, st in self.optimizer.state.items():
            for k, v in st.items():
                if not isinstance(v, torch.Tensor):
                    raise TypeError(f"save_checkpoint: optimiser state {names[id(p)]}/{k} is a "
                                    f"{type(v).__name__}, not a tensor")
                out[f"optim/{names[id(p)]}/{k}"] = _stored(v)
        return out

    def _train_state(self) -> dict:
        """The rest of the state, as plain JSON."""
        names = self._param_names()
        groups = [{**{k: list(v) if isinstance(v, tuple) else v for k, v in g.items() if k != "params"},
                   "params": [names[id(p)] for p in g["params"]]} for g in self.optimizer.param_groups]
        return {"format": ckpt_io.FORMAT, "step": self.step, "world": self.world, "fsdp": self.fsdp,
                "optim_groups": groups,
                "optim_state": {names[id(p)]: {k: "param" if v.shape == p.shape else list(v.shape)
                                                for k, v in sorted(st.items())}
                                for p, st in self.optimizer.state.items()},
                "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                "orders": {n: o.state_dict() for n, o in self.orders.items()}, "metrics": self.metrics}

    def save_checkpoint(self) -> str:
        """Write ckpt/step_NNNNNN atomically (temporary folder, fsync, manifest last, rename), point
        ckpt/latest at it and keep the newest keep_ckpts. A collective: every rank calls it."""
        from safetensors.torch import save_file
        name = f"step_{self.step:06d}"
        final = os.path.join(self.ckpt_dir, name)
        tmp = final + ".tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while writing
            os.makedirs(tmp)
        _barrier()
        ckpt_io.save_tensors(self._tensor_state(), tmp, self.group)
        rng_path = os.path.join(tmp, f"rng_rank{self.rank}.pt")
        torch.save(ckpt_io.rng_state(self.device), rng_path)
        ckpt_io.fsync_path(rng_path)
        # the full weights for init_from / inspection (gathered from the shards under FSDP2)
        weights = self.full_state_dict() if self.fsdp or self.rank == 0 else None
        if self.rank == 0:
            save_file(weights, os.path.join(tmp, "model.safetensors"))
            ckpt_io.fsync_path(os.path.join(tmp, "model.safetensors"))
            ckpt_io.write_json(os.path.join(tmp, "train_state.json"), self._train_state())
            ckpt_io.write_json(os.path.join(tmp, "config.json"), {
                "model": to_dict(self.mcfg), "train": to_dict(self.tcfg), "step": self.step, "world": self.world})
        del weights
        _barrier()
        if self.rank == 0:
            ckpt_io.write_manifest(tmp)  # last: a folder with a manifest is complete
            if os.path.isdir(final):  # the same step again (a resumed run re-saving): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            ckpt_io.write_bytes(os.path.join(self.ckpt_dir, "latest.tmp"), name.encode())
            os.replace(os.path.join(self.ckpt_dir, "latest.tmp"), os.path.join(self.ckpt_dir, "latest"))
            ckpt_io.fsync_path(self.ckpt_dir)
            # prune the older ones; a newer folder (left behind when --resume fell back past it)
            # is not counted, so the valid chain behind this checkpoint is what is kept
            old = [d for d in ckpt_io.step_folders(self.ckpt_dir) if d <= name][self.tcfg.keep_ckpts:]
            for d in old:
                shutil.rmtree(os.path.join(self.ckpt_dir, d), ignore_errors=True)
        _barrier()
        return final

    def _choose_checkpoint(self) -> str:
        """The folder --resume continues from: the newest one that matches its manifest. Rank 0
        checks (and says which newer ones it skipped and why) and tells the other ranks."""
        found, why, step = None, [], -1
        if self.rank == 0:
            found, why = ckpt_io.newest_valid(self.ckpt_dir)
            for reason in why:
                self.log(f"--resume: skipping an invalid checkpoint: {reason}")
            if found is not None:
                step = int(os.path.basename(found)[len("step_"):])
                if why:
                    self.log(f"--resume: falling back to {found}, the newest valid checkpoint")
        if self.group is not None:
            t = torch.tensor([step], dtype=torch.int64, device=self.device)
            dist.broadcast(t, src=0, group=self.group)
            step = int(t.item())
        if step >= 0:
            return os.path.join(self.ckpt_dir, f"step_{step:06d}")
        if self.rank == 0 and why:
            raise CheckpointError(f"--resume: no valid checkpoint in {self.ckpt_dir}:\n  " + "\n  ".join(why))
        if self.rank == 0 or not os.path.isdir(self.ckpt_dir):
            raise FileNotFoundError(f"--resume: no checkpoint in {self.ckpt_dir} (no 'latest' file); "
                                    "run without --resume to start this run")
        raise CheckpointError(f"--resume: rank 0 found no valid checkpoint in {self.ckpt_dir} (see its error)")

    def load_checkpoint(self, path: str | None = None) -> None:
        """Restore everything save_checkpoint wrote: `path`, or the newest valid checkpoint of this
        run (falling back past corrupted or partial ones). The checkpoint may come from any number
        of ranks, with or without FSDP2: DCP reshards the model and optimiser to this run."""
        if path is None:
            path = self._choose_checkpoint()
        else:
            ckpt_io.verify(path)
        saved = ckpt_io.read_json(os.path.join(path, "config.json"))
        if saved.get("model") != to_dict(self.mcfg):
            diff = {k: (saved["model"].get(k), v) for k, v in to_dict(self.mcfg).items() if saved["model"].get(k) != v}
            raise ValueError(f"--resume: the model config differs from the checkpoint's (saved, now): {diff}")
        state_path = os.path.join(path, "train_state.json")
        state = ckpt_io.read_json(state_path)
        if not isinstance(state, dict) or state.get("format") != ckpt_io.FORMAT:
            raise CheckpointError(f"{state_path}: not a format-{ckpt_io.FORMAT} train state")
        live = self.model.state_dict()  # DCP loads into these (views of the weights) in place
        targets, optim = self._load_targets(path, state, live)
        ckpt_io.load_tensors(targets, path, self.group)
        self.model.load_state_dict(live)
        self._load_optimizer(state, optim, state_path)
        try:
            self.scheduler.load_state_dict(state["scheduler"])
            self.sampler.load_state_dict(state["sampler"])
            for n, o in self.orders.items():
                if n not in state["orders"]:
                    raise ValueError(f"--resume: task {n!r} was not in the checkpointed run "
                                     f"({sorted(state['orders'])})")
                o.load_state_dict(state["orders"][n])
            self.step = int(state["step"])
            self.metrics = list(state["metrics"])
            saved_world = int(state["world"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{state_path}: incomplete train state ({type(e).__name__}: {e})") from None
        self._load_rng(path, saved_world)
        if self.mcfg.lit:
            self.model.snapshot_locked()  # the locked skills as the checkpoint has them
        if self.rank == 0:  # metrics.jsonl = the checkpoint's rows (a killed run may have logged more)
            with open(self.metrics_path + ".tmp", "w") as f:
                for r in self.metrics:
                    f.write(json.dumps(r) + "\n")
            os.replace(self.metrics_path + ".tmp", self.metrics_path)
        how = ("" if saved_world == self.world else
               f"; saved by {saved_world} rank(s), resharded to {self.world} (equal up to summation order, "
               "bitwise only on the same world size)")
        self.log(f"resumed {path} at step {self.step}{how}")

    def _load_targets(self, path: str, state: dict, live: dict) -> tuple[dict, dict]:
        """(what DCP loads into, {name: {key: optimiser state tensor}}): views of the live
        weights, and fresh optimiser moments / steps (DTensor shards under FSDP2) for the
        parameters the checkpoint has state for, in the layout _tensor_state saves."""
        md = ckpt_io.read_dcp_metadata(os.path.join(path, ".metadata")).state_dict_metadata
        targets = {f"model/{canonical_name(k)[0]}": _stored(v) for k, v in live.items()}
        params = {canonical_name(n)[0]: p for n, p in self.model.named_parameters()}
        optim = {}
        for name, keys in (state.get("optim_state") or {}).items():
            if name not in params:
                raise ValueError(f"--resume: the checkpoint has optimiser state for {name!r}, "
                                 "which this model does not have")
            p = params[name].detach()
            optim[name] = {}
            for k, shape in keys.items():
                key = f"optim/{name}/{k}"
                if key not in md or not hasattr(md[key], "properties"):
                    raise CheckpointError(f"{os.path.join(path, '.metadata')}: no tensor {key!r}")
                dtype = md[key].properties.dtype
                t = torch.zeros_like(p, dtype=dtype) if shape == "param" else torch.zeros(shape, dtype=dtype)
                optim[name][k] = t
                targets[key] = _stored(t)
        return targets, optim

    def _load_optimizer(self, state: dict, loaded: dict, state_path: str) -> None:
        """AdamW's state from the loaded tensors and the JSON hyper-parameters; the parameter
        groups must name the same parameters (by name) as this run's."""
        names = self._param_names()
        index, sd_groups = {}, []
        saved_groups = state.get("optim_groups", [])
        if len(saved_groups) != len(self.optimizer.param_groups):
            raise ValueError(f"--resume: {state_path} has {len(saved_groups)} optimiser groups, this run "
                             f"{len(self.optimizer.param_groups)}")
        for g_saved, g in zip(saved_groups, self.optimizer.param_groups):
            now = [names[id(p)] for p in g["params"]]
            if g_saved["params"] != now:
                diff = sorted(set(g_saved["params"]) ^ set(now))
                raise ValueError(f"--resume: the trainable parameters differ from the checkpoint's: {diff[:8]}")
            ids = list(range(len(index), len(index) + len(now)))
            index.update(zip(now, ids))
            sd_groups.append({**{k: tuple(v) if k == "betas" else v for k, v in g_saved.items()}, "params": ids})
        opt_state = {index[n]: st for n, st in loaded.items()}
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": sd_groups})

    def _load_rng(self, path: str, saved_world: int) -> None:
        """This rank's RNG states; a rank the checkpoint did not have seeds them from
        (seed, step, rank)."""
        rng_path = os.path.join(path, f"rng_rank{self.rank}.pt")
        if self.rank < saved_world:
            ckpt_io.set_rng_state(ckpt_io.load_tensors_file(rng_path), self.device, rng_path)
        else:
            ckpt_io.seed_rng(self.tcfg.seed, self.step, self.rank)


def _stored(t: torch.Tensor) -> torch.Tensor:
    """How a checkpoint stores a tensor: a 0-dim one as a 1-element view (FSDP2's shape for it)."""
    return t.reshape(1) if t.dim() == 0 else t


def _grad_norm(model: nn.Module) -> torch.Tensor:
    gs = [p.grad for p in model.parameters() if p.grad is not None]
    return nn.utils.get_total_norm(gs) if gs else torch.zeros(())


# ----------------------------------------------------------------------------- report


def eval_table(results: dict, split: str, step: int) -> str:
    """The final table: accuracy for classification, R@1/5/10 both ways for retrieval; beside
    them the reference points when _add_reference_points put them in: chance (the majority class;
    1/n for R@1 over a gallery of n), the model's mean R@1 (both ways) in multiples of chance, and
    the task's trivial baseline (model.baselines) on the same split, with whether the model beats it."""
    from model.data import mean_r1
    lines = [f"eval on {split} (step {step})",
             f"{'task':12s} {'n':>5s} {'acc':>6s} {'i2t R@1':>8s} {'R@5':>6s} {'R@10':>6s} "
             f"{'t2i R@1':>8s} {'R@5':>6s} {'R@10':>6s} {'mean R':>7s} | {'chance':>6s} {'x chance':>8s} | "
             f"{'baseline':>8s} {'(method)':22s} beats"]
    lines.append("-" * len(lines[1]))
    for task in sorted(results):
        r = results[task]
        base = r.get("baseline")
        if "accuracy" in r:
            score, chance = r["accuracy"], r.get("chance", float("nan"))
            row = (f"{task:12s} {r['n']:5d} {score:6.3f} {'':>8s} {'':>6s} {'':>6s} {'':>8s} "
                   f"{'':>6s} {'':>6s} {'':>7s} | {chance:6.3f} {'':>8s} |")
            base_score = base["accuracy"] if base else None
        else:
            score, chance = mean_r1(r), 1 / r["n"]
            row = (f"{task:12s} {r['n']:5d} {'':>6s} {r['i2t_R@1']:8.3f} {r['i2t_R@5']:6.3f} "
                   f"{r['i2t_R@10']:6.3f} {r['t2i_R@1']:8.3f} {r['t2i_R@5']:6.3f} {r['t2i_R@10']:6.3f} "
                   f"{r['mean_R']:7.3f} | {chance:6.3f} {score / chance:7.1f}x |")
            base_score = base["mean_R@1"] if base else None
        if base is not None:
            row += f" {base_score:8.3f} {'(' + base['name'] + ')':22s} {'yes' if score > base_score else 'NO'}"
        lines.append(row)
    lines.append("retrieval: x chance and the baseline compare the mean of i2t and t2i R@1")
    return "\n".join(lines)


def _add_reference_points(trainer: Trainer, results: dict, split: str) -> None:
    """Chance (majority class) for classification and each task's trivial baseline on the split."""
    from model.baselines import baseline
    vocab = trainer.mcfg.vocab_size
    for name, r in results.items():
        splits = trainer.tasks[name].splits
        if "accuracy" in r:
            labels = splits[split]["label"]
            r["chance"] = float(torch.bincount(labels).max()) / len(labels)  # majority class
        r["baseline"] = baseline(name, splits, split, vocab)


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--model", default="tiny", help="preset: tiny (CPU main job) or base (SkillNet-base)")
    ap.add_argument("--name", default=None, help="run name: outputs go to runs/<name>/ (default: the preset)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="global batch per optimiser step")
    ap.add_argument("--grad-accum", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--backend", default=None, choices=("auto", "torch", "triton", "cuda"),
                    help="skillkern backend of every fused layer (default auto: the fused Triton kernels on a GPU)")
    ap.add_argument("--tasks", default=None, help="comma list of tasks (default: every task whose data exists)")
    ap.add_argument("--data-size", default=None, choices=("mini", "tiny"))
    ap.add_argument("--data-root", default=None, help="benchmark cache folder (default: model.data's)")
    ap.add_argument("--lit", action="store_true", help="LiT: lock the image tower (use with --set init_from=...)")
    ap.add_argument("--resume", action="store_true",
                    help="continue runs/<name> from its newest valid checkpoint (written on any number of ranks)")
    ap.add_argument("--fsdp", action="store_true",
                    help="under torchrun: shard with FSDP2 (fully_shard per Transformer block; bf16 compute on "
                         "a GPU) instead of DDP")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--no-plot", action="store_true", help="skip curves.png")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="any ModelConfig / TrainConfig field, value as JSON (e.g. skill_every=2)")
    return ap.parse_args(argv)


def configs_from_args(args) -> tuple[ModelConfig, TrainConfig]:
    model_over, train_over = parse_overrides(args.set)
    for key, val in (("run_name", args.name), ("steps", args.steps), ("batch_size", args.batch_size),
                     ("grad_accum", args.grad_accum), ("lr", args.lr), ("backend", args.backend),
                     ("data_size", args.data_size), ("data_root", args.data_root)):
        if val is not None:
            train_over[key] = val
    if args.tasks:
        train_over["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.lit:
        model_over["lit"] = True
    if "steps" in train_over and "warmup_steps" not in train_over:
        # keep the preset's warmup share when only the length changes
        preset = train_config(args.model) if args.model in ("tiny", "base") else None
        if preset is not None:
            train_over["warmup_steps"] = max(0, round(preset.warmup_steps * train_over["steps"] / preset.steps))
    return model_config(args.model, **model_over), train_config(args.model, **train_over)


def _val_score(m: dict) -> float:
    """A task's one score: accuracy, or the mean of i2t and t2i R@1 (as the eval table's)."""
    from model.data import mean_r1
    return m["accuracy"] if "accuracy" in m else mean_r1(m)


def time_to_quality(rows: list[dict]) -> dict | None:
    """From a run's metrics rows: training steps/s (optimiser steps over the summed step times,
    evaluations excluded), and the first val evaluation at which every task had reached its
    score of the last val evaluation (accuracy, or the mean of i2t and t2i R@1): its step and
    the training seconds up to it. None without val evaluations."""
    train = [r for r in rows if r["type"] == "train"]
    val = [r for r in rows if r["type"] == "eval" and r["split"] == "val"]
    if not train or not val:
        return None
    last = max(r["step"] for r in val)
    final = {r["task"]: _val_score(r) for r in val if r["step"] == last}
    by_step: dict = {}
    for r in val:
        by_step.setdefault(r["step"], {})[r["task"]] = _val_score(r)
    step = next(s for s in sorted(by_step) if all(by_step[s].get(t, -1.0) >= v for t, v in final.items()))
    seconds = sum(r["step_s"] for r in train if r["step"] <= step)
    return {"steps_per_s": len(train) / sum(r["step_s"] for r in train), "step": step,
            "train_s": seconds, "final_val": final}


def _finish(trainer: Trainer, t0: float, plot: bool) -> dict | None:
    trainer.fit()
    if trainer.preempted:
        return None
    results = trainer.evaluate("test")
    _add_reference_points(trainer, results, "test")
    if trainer.rank == 0:
        trainer._record_eval(results, "test")
        print("\n" + eval_table(results, "test", trainer.step))
        ttq = time_to_quality(trainer.metrics)
        if ttq is not None:
            scores = ", ".join(f"{t} {v:.3f}" for t, v in sorted(ttq["final_val"].items()))
            print(f"\ntime to quality ({trainer.tcfg.backend} -> {_resolved(trainer)}, {trainer.device}): "
                  f"{ttq['steps_per_s']:.2f} steps/s; the final val scores ({scores}) first reached at step "
                  f"{ttq['step']}, after {ttq['train_s']:.0f} s of training")
        if plot:
            from model.plot import plot_metrics
            png = os.path.join(trainer.run_dir, "curves.png")
            plot_metrics(trainer.metrics_path, png)
            print(f"\ncurves: {png}")
        print(f"metrics: {trainer.metrics_path} | checkpoints: {trainer.ckpt_dir} | "
              f"{time.perf_counter() - t0:.0f} s in all")
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        mcfg, tcfg = configs_from_args(args)
    except ValueError as e:
        print(f"model.train: {e}", file=sys.stderr)
        return 2
    try:
        results = run_main(mcfg, tcfg, resume=args.resume, device=args.device, plot=not args.no_plot,
                           fsdp=args.fsdp)
    except (DataError, FileNotFoundError, CheckpointError, skillkern.BackendUnavailable) as e:
        print(f"model.train: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return EXIT_PREEMPTED if results is None else 0


def run_main(mcfg: ModelConfig, tcfg: TrainConfig, *, resume=False, device=None, plot=True, tasks=None,
             fsdp=False) -> dict | None:
    """Train (on the benchmark unless `tasks` is given), evaluate on test, print the table, plot.
    Returns the test results, or None when a preemption signal stopped the run (after its
    checkpoint; main() then exits with EXIT_PREEMPTED)."""
    t0 = time.perf_counter()
    trainer = Trainer(mcfg, tcfg, tasks, device=device, resume=resume, fsdp=fsdp)
    if trainer.rank == 0:
        n = sum(p.numel() for p in trainer.model.parameters())
        trainer.log(f"model {mcfg.preset}: {n / 1e6:.2f} M parameters | tasks {sorted(trainer.tasks)} | "
                    f"{tcfg.steps} steps x batch {tcfg.batch_size} | backend {tcfg.backend} -> "
                    f"{_resolved(trainer)} | {trainer.device}" + (f" x {trainer.world}" if trainer.world > 1 else "")
                    + (" (FSDP2)" if trainer.fsdp else " (DDP)" if trainer.world > 1 else "")
                    + (" | bf16 autocast" if trainer.autocast else ""))
    return _finish(trainer, t0, plot)


def _resolved(trainer: Trainer) -> str:
    return ", ".join(f"{op}: {skillkern._backend.resolve(op, trainer.tcfg.backend, trainer.device)}"
                     for op in FUSED_OPS)


if __name__ == "__main__":
    raise SystemExit(main())
