"""The trainer (model/train.py): exact resume after a kill, DDP (2 gloo processes) against one
process on the same global batch, gradient accumulation, atomic checkpoints, the task sampler and
data order, the schedule, metrics / plot / eval table, and clear errors for bad configs and
missing data.

The data here is a tiny synthetic stand-in built in this file (random ids, pixels, waveforms in
model.data.Task containers): the trainer's mechanics need no real benchmark, and these tests must
not depend on the optional data sources. The model is test_model's tiny one (d=32, 2 layers)."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # model/ is not an installed package (see test_model.py)
    sys.path.insert(0, _ROOT)

from model.config import TASK_MODALITIES, model_config, train_config  # noqa: E402
from model.data import Task  # noqa: E402
from model.train import (BatchOrder, DataError, TaskSampler, Trainer, eval_table, load_tasks,  # noqa: E402
                         lr_lambda, main, run_main)

TINY = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=100, max_text_len=16,
            image_size=16, image_patch=8, sound_samples=1600, n_fft=128, hop_length=32, n_mels=16,
            sound_patch_freq=8, sound_patch_time=8, video_frames=2, video_size=16, video_patch=8,
            proj_dim=16, reduced_tokens=4, reduce_groups=4)


def _text(g, N, L):
    ids = torch.randint(5, 100, (N, L), generator=g)
    ids[:, 0] = 2
    lens = torch.randint(2, L + 1, (N,), generator=g)
    mask = torch.arange(L)[None] < lens[:, None]
    return ids.masked_fill(~mask, 0), mask


def make_tasks(sizes=(24, 10, 10), seed=0, names=tuple(TASK_MODALITIES)) -> dict:
    """Synthetic stand-ins with the benchmark's field names, dtypes and ragged text masks."""
    g = torch.Generator().manual_seed(seed)
    tasks = {}
    for name in names:
        mod = TASK_MODALITIES[name][0]
        splits = {}
        for split, N in zip(("train", "val", "test"), sizes):
            ids, mask = _text(g, N, 16 if name == "text_cls" else 7)
            s = {"ids": ids, "mask": mask}
            if name == "text_cls":
                s["label"] = torch.randint(0, 3, (N,), generator=g)
            elif mod == "image":
                s["x"] = torch.randint(0, 256, (N, 3, 16, 16), generator=g, dtype=torch.uint8)
            elif mod == "sound":
                s["x"] = torch.randn(N, 1600, generator=g)
            elif mod == "video":
                s["x"] = torch.randint(0, 256, (N, 2, 3, 16, 16), generator=g, dtype=torch.uint8)
            else:
                s["x_ids"], s["x_mask"] = _text(g, N, 12)
            splits[split] = s
        kind = "classify" if name == "text_cls" else "retrieve"
        tasks[name] = Task(name, mod, kind, 3 if kind == "classify" else None, splits)
    return tasks


def cfgs(tmp_path, name="run", model=None, **train):
    m = model_config("tiny", **{**TINY, **(model or {})})
    t = train_config("tiny", **{"run_name": name, "runs_dir": str(tmp_path), "steps": 6, "batch_size": 8,
                                "warmup_steps": 2, "ckpt_every": 3, "eval_batch": 4, **train})
    return m, t


def _state(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _train_rows(path):
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["type"] == "train"]


# ----------------------------------------------------------------------------- exact resume


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    """6 steps straight vs. killed after step 4 (checkpoint at 3, one step logged past it, a
    half-written checkpoint folder left behind) and resumed from a fresh Trainer: the same
    losses bit for bit, the same weights, the same metrics.jsonl. Dropout is on, so the torch RNG
    must be restored too; grad accumulation 2, every task sampled."""
    tasks = make_tasks()
    m, t = cfgs(tmp_path, "straight", model={"dropout": 0.1}, grad_accum=2)
    straight = Trainer(m, t, tasks, progress=False)
    losses = straight.fit()
    assert len(losses) == 6 and len({r["task"] for r in straight.metrics}) >= 3

    m, t = cfgs(tmp_path, "killed", model={"dropout": 0.1}, grad_accum=2)
    first = Trainer(m, t, tasks, progress=False)
    part1 = first.fit(stop_at=4)
    del first
    ckpt = tmp_path / "killed" / "ckpt"
    assert (ckpt / "latest").read_text() == "step_000003"
    (ckpt / "step_000006.tmp").mkdir()          # a checkpoint write cut off by the kill
    (ckpt / "step_000006.tmp" / "model.safetensors").write_bytes(b"partial")
    torch.manual_seed(12345)                    # a new process would not share our RNG state
    resumed = Trainer(m, t, tasks, resume=True, progress=False)
    assert resumed.step == 3
    part2 = resumed.fit()
    assert part1[:3] + part2 == losses         # exact float equality, step by step
    s1, s2 = _state(straight), _state(resumed)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    rows_a = _train_rows(tmp_path / "straight" / "metrics.jsonl")
    rows_b = _train_rows(tmp_path / "killed" / "metrics.jsonl")
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b] == losses
    assert [r["task"] for r in rows_a] == [r["task"] for r in rows_b]
    assert sorted(os.listdir(ckpt)) == ["latest", "step_000003", "step_000006"]
    assert set(os.listdir(ckpt / "step_000006")) == {"model.safetensors", "train_state.json", "rng_rank0.pt",
                                                     "config.json", ".metadata", "__0_0.distcp",
                                                     "manifest.json"}


def test_resume_refuses_a_different_model(tmp_path):
    tasks = make_tasks()
    m, t = cfgs(tmp_path, steps=3)
    Trainer(m, t, tasks, progress=False).fit()
    m2, _ = cfgs(tmp_path, model={"d_ff": 128})
    with pytest.raises(ValueError, match="d_ff"):
        Trainer(m2, t, tasks, resume=True, progress=False)
    m3, t3 = cfgs(tmp_path, "empty")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(m3, t3, tasks, resume=True, progress=False)


def test_checkpoints_are_pruned_and_latest_is_complete(tmp_path):
    m, t = cfgs(tmp_path, steps=7, ckpt_every=2, keep_ckpts=2)
    tr = Trainer(m, t, make_tasks(), progress=False)
    tr.fit()
    ckpt = tmp_path / "run" / "ckpt"
    assert sorted(os.listdir(ckpt)) == ["latest", "step_000006", "step_000007"]   # last step always saved
    from safetensors.torch import load_file
    saved = load_file(str(ckpt / "step_000007" / "model.safetensors"))
    live = tr.model.state_dict()
    assert saved.keys() == live.keys() and all(torch.equal(saved[k], live[k]) for k in saved)
    cfg = json.loads((ckpt / "step_000007" / "config.json").read_text())
    assert cfg["step"] == 7 and cfg["model"]["d_model"] == 32


# ----------------------------------------------------------------------------- DDP

WORLD = 2
# Adam normalises each element's step to ~lr whatever its gradient's size, so an element whose
# true gradient is ~0 would turn summation-order noise into a random +-lr step. eps = 1e-6 (vs
# 1e-8) keeps such elements still; every gradient that matters here is far above it.
DDP_RUN = dict(steps=4, grad_accum=2, tasks=("text_cls", "image_text", "code_text"), adam_eps=1e-6)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record_grads(trainer) -> list[dict]:
    """The (reduced, clipped) gradients each optimiser step applies, step by step."""
    steps = []

    def record(opt, args, kwargs):
        steps.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(record)
    return steps


def _ddp_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=90))
    try:
        m, t = cfgs(out_dir, "ddp", **DDP_RUN)
        tr = Trainer(m, t, make_tasks(), progress=False)
        assert tr.world == WORLD and tr.ddp is not None
        grads = _record_grads(tr)
        losses = tr.fit()
        torch.save({"losses": losses, "state": _state(tr), "tasks": [r["task"] for r in tr.metrics],
                    "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_matches_single_process_on_the_same_global_batch(tmp_path):
    """2 gloo ranks, each with half of every global batch (and 2 micro-steps), vs. one process
    with the whole batch: the same tasks, losses and weights after 4 AdamW steps. Retrieval steps
    use the distributed FILIP loss (features all-gathered, loss x world backpropagated)."""
    ctx = mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 150  # never hang CI
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail("DDP training did not finish in 150 s")
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    m, t = cfgs(tmp_path, "single", **DDP_RUN)
    single = Trainer(m, t, make_tasks(), progress=False)
    grads = _record_grads(single)
    losses = single.fit()
    tasks = [r["task"] for r in single.metrics]
    assert {"text_cls"} < set(tasks)                         # both a classification and a retrieval step
    for r in range(WORLD):
        assert res[r]["tasks"] == tasks
        torch.testing.assert_close(torch.tensor(res[r]["losses"]), torch.tensor(losses), rtol=1e-5, atol=1e-6)
    # Gradients: step 1 starts from identical weights, so DDP's all-reduced gradient must be the
    # single-process one up to summation order (measured: 6e-7 of each tensor's largest entry).
    # Later steps start from weights that differ by rounding, amplified by Adam (below): 1e-3.
    for step, (g_ddp, g_one) in enumerate(zip(res[0]["grads"], grads)):
        assert g_ddp.keys() == g_one.keys()
        for k, g in g_one.items():
            bound = (1e-5 if step == 0 else 1e-3) * float(g.abs().max()) + 1e-12
            assert float((g_ddp[k] - g).abs().max()) <= bound, (step, k)
    # Weights after 4 AdamW steps (lr 1e-3; see DDP_RUN for eps).
    ref = _state(single)
    for k, v in ref.items():
        assert torch.equal(res[0]["state"][k], res[1]["state"][k]), k       # replicas identical
        torch.testing.assert_close(res[0]["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    init = _state(Trainer(*cfgs(tmp_path, "init", steps=4, tasks=("text_cls", "image_text", "code_text")),
                          make_tasks(), progress=False))
    changed = [k for k in ref if not torch.equal(ref[k], init[k])]
    assert len(changed) > len(ref) // 2    # the comparison is about trained weights, not the init


# ----------------------------------------------------------------------------- LiT


def test_lit_run_keeps_the_image_features_through_training_and_resume(tmp_path):
    """--lit: after AdamW steps (weight decay on) and a resume, the image side's features are
    bit for bit those of the start; the text side's are not."""
    tasks = make_tasks(names=("image_text", "text_cls"))
    m, t = cfgs(tmp_path, "lit", model={"lit": True}, steps=4, ckpt_every=2, weight_decay=0.5)
    tr = Trainer(m, t, tasks, progress=False)
    batch = {k: v[:6] for k, v in tasks["image_text"].splits["val"].items()}

    def feats(trainer):
        trainer.model.eval()
        with torch.no_grad():
            f_img, _, f_txt, _ = trainer.model.retrieval_features("image_text", batch)
        return f_img, f_txt

    img0, txt0 = feats(tr)
    tr.fit(stop_at=3)
    resumed = Trainer(m, t, tasks, resume=True, progress=False)
    resumed.fit()
    img1, txt1 = feats(resumed)
    assert torch.equal(img0, img1)
    assert not torch.equal(txt0, txt1)


# ----------------------------------------------------------------------------- accumulation


def test_grad_accumulation_equals_one_big_batch_for_classification(tmp_path):
    """Cross entropy is a mean over the batch, so 4 micro-batches of 2 give the gradient of one
    batch of 8 (FILIP's contrastive loss is not separable: retrieval micro-batches differ).
    adam_eps as in DDP_RUN: the sums differ in order only."""
    out = {}
    for accum in (1, 4):
        m, t = cfgs(tmp_path, f"acc{accum}", steps=3, grad_accum=accum, tasks=("text_cls",), adam_eps=1e-6)
        tr = Trainer(m, t, make_tasks(), progress=False)
        out[accum] = (tr.fit(), _state(tr))
    torch.testing.assert_close(torch.tensor(out[4][0]), torch.tensor(out[1][0]), rtol=1e-5, atol=1e-6)
    for k in out[1][1]:
        torch.testing.assert_close(out[4][1][k], out[1][1][k], rtol=1e-5, atol=1e-6, msg=k)


# ----------------------------------------------------------------------------- sampling, schedule


def test_task_sampler_follows_weights_and_resumes():
    s = TaskSampler(["a", "b", "c"], {"a": 3, "b": 1, "c": 0}, seed=5)
    draws = [s.next() for _ in range(2000)]
    assert "c" not in draws
    assert 0.70 < draws.count("a") / len(draws) < 0.80
    state = s.state_dict()
    nxt = [s.next() for _ in range(20)]
    s2 = TaskSampler(["a", "b", "c"], {"a": 3, "b": 1, "c": 0}, seed=5)
    s2.load_state_dict(state)
    assert [s2.next() for _ in range(20)] == nxt
    with pytest.raises(ValueError, match="task_weights"):
        TaskSampler(["a"], {"a": 0}, seed=0)


def test_batch_order_covers_each_epoch_once():
    o = BatchOrder(10, 3, seed=1, task_index=0, task="t")
    epoch0 = torch.cat([o.next() for _ in range(3)])     # 9 of 10: the tail is dropped
    assert len(set(epoch0.tolist())) == 9 and o.epoch == 0
    o.next()
    assert o.epoch == 1
    with pytest.raises(DataError, match="fewer than one global batch"):
        BatchOrder(4, 8, seed=0, task_index=0, task="tiny_task")


def test_lr_warmup_then_cosine():
    t = train_config("tiny", steps=100, warmup_steps=10, min_lr_ratio=0.1)
    f = lr_lambda(t)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.55) and f(100) == pytest.approx(0.1)
    assert all(f(i) >= f(i + 1) for i in range(10, 100))


# ----------------------------------------------------------------------------- the main job


def test_run_writes_metrics_plot_checkpoint_and_eval_table(tmp_path, capsys):
    m, t = cfgs(tmp_path, "main", steps=4, ckpt_every=4, eval_every=2)
    results = run_main(m, t, tasks=make_tasks())
    out = capsys.readouterr().out
    assert set(results) == set(TASK_MODALITIES)
    assert 0.0 <= results["text_cls"]["accuracy"] <= 1.0 and results["image_text"]["n"] == 10
    for task, r in results.items():
        if task != "text_cls":
            assert r["i2t_R@1"] <= r["i2t_R@5"] <= r["i2t_R@10"] == 1.0   # 10 items: R@10 is 1
    table = out.split("eval on test")[1]
    for task in TASK_MODALITIES:
        row = next(line for line in table.splitlines() if line.startswith(task))
        assert row.rstrip().endswith(("yes", "NO")), row          # beside its trivial baseline
        assert results[task]["baseline"]["name"] in row
    run = tmp_path / "main"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "train"] == [1, 2, 3, 4]
    assert {(r["split"], r["step"]) for r in rows if r["type"] == "eval"} == {("val", 2), ("val", 4), ("test", 4)}
    assert all(r["tok_s"] > 0 and r["mfu"] is None for r in rows if r["type"] == "train")  # CPU: no MFU
    assert "time to quality (" in out and "steps/s" in out
    png = (run / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (run / "ckpt" / "latest").read_text() == "step_000004"


def test_progress_bar_shows_loss_tokens_and_mfu(tmp_path, monkeypatch):
    import io

    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    err = FakeTTY()
    monkeypatch.setattr(sys, "stderr", err)
    m, t = cfgs(tmp_path, steps=2, warmup_steps=1)
    Trainer(m, t, make_tasks(names=("text_cls",)), log=lambda *a: None).fit()
    bar = err.getvalue().split("\r")[-1]
    assert "2/2" in bar and "text_cls loss" in bar and "tok/s" in bar and "MFU n/a" in bar


def test_eval_is_a_pure_function_of_the_weights(tmp_path):
    """Evaluating twice gives the same numbers (eval mode, no state touched)."""
    m, t = cfgs(tmp_path, steps=2, warmup_steps=1)
    tr = Trainer(m, t, make_tasks(), progress=False)
    a, b = tr.evaluate("val"), tr.evaluate("val")
    assert a == b
    table = eval_table(a, "val", 0)
    assert "code_text" in table and "R@1" in table


# ----------------------------------------------------------------------------- errors


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    import model.data as data
    monkeypatch.setattr(data, "build_benchmark", lambda *a, **k: {})
    _, t = cfgs(tmp_path)
    with pytest.raises(DataError, match="no benchmark task could be built"):
        load_tasks(t, log=lambda *a: None)
    m, t = cfgs(tmp_path, tasks=("video_text",))
    with pytest.raises(DataError, match="none of the asked tasks"):
        Trainer(m, t, make_tasks(names=("image_text",)), progress=False)
    assert main(["--no-plot", "--set", f"runs_dir={tmp_path}"]) == 2


def test_missing_tasks_are_skipped_and_named(tmp_path, monkeypatch):
    """The benchmark builder leaves out tasks whose source is missing: the trainer trains on
    the rest and says which are missing."""
    import model.data as data
    have = make_tasks(names=("text_cls", "code_text"))
    asked = []
    monkeypatch.setattr(data, "build_benchmark", lambda root, **k: asked.append(k["tasks"]) or have)
    lines = []
    _, t = cfgs(tmp_path)
    assert load_tasks(t, log=lines.append) is have
    assert asked == [list(TASK_MODALITIES)]
    assert any("missing" in x and "image_text" in x and "sound_text" in x and "video_text" in x for x in lines)


def test_data_that_does_not_fit_the_model_is_named(tmp_path):
    tasks = make_tasks(names=("image_text",))
    tasks["image_text"].splits["train"]["ids"][0, 1] = 5000        # beyond vocab_size=100
    m, t = cfgs(tmp_path)
    with pytest.raises(DataError, match="vocab_size"):
        Trainer(m, t, tasks, progress=False)
    tasks = make_tasks(names=("image_text",))
    del tasks["image_text"].splits["val"]["x"]
    with pytest.raises(DataError, match=r"image_text/val: missing tensors \['x'\]"):
        Trainer(m, t, tasks, progress=False)
    m, t = cfgs(tmp_path, batch_size=32)
    with pytest.raises(DataError, match="fewer than one global batch"):
        Trainer(m, t, make_tasks(), progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuda backend may run everything on a GPU")
def test_unavailable_backend_is_named_before_training(tmp_path):
    import skillkern
    m, t = cfgs(tmp_path, backend="cuda")
    with pytest.raises(skillkern.BackendUnavailable, match="--backend cuda cannot run every fused layer"):
        Trainer(m, t, make_tasks(names=("image_text",)), progress=False)


def test_command_line_config_errors_exit_2(capsys):
    assert main(["--set", "colour=red"]) == 2
    assert "`colour`" in capsys.readouterr().err
    assert main(["--set", "skill_every=3"]) == 2
    assert "`skill_every`" in capsys.readouterr().err
    assert main(["--steps", "10", "--set", "warmup_steps=20"]) == 2
    assert "`warmup_steps`" in capsys.readouterr().err


def test_time_to_quality_finds_the_first_eval_at_the_final_scores():
    from model.train import time_to_quality
    train = [{"type": "train", "step": i, "step_s": 0.5} for i in range(1, 7)]
    val = [{"type": "eval", "split": "val", "step": s, "task": "text_cls", "accuracy": a} for s, a in ((2, 0.6), (4, 0.7), (6, 0.7))]
    val += [{"type": "eval", "split": "val", "step": s, "task": "code_text", "i2t_R@1": a, "t2i_R@1": b}
            for s, a, b in ((2, 0.1, 0.1), (4, 0.3, 0.1), (6, 0.2, 0.2))]
    test = [{"type": "eval", "split": "test", "step": 6, "task": "text_cls", "accuracy": 0.9}]
    ttq = time_to_quality(train + val + test)
    # step 4: text_cls at its final 0.7 and code_text's mean R@1 0.2 = its final 0.2
    assert ttq == {"steps_per_s": 2.0, "step": 4, "train_s": 2.0, "final_val": {"text_cls": 0.7, "code_text": 0.2}}
    val[-1]["t2i_R@1"] = 0.3  # code_text's final is now 0.25, reached only at step 6
    assert time_to_quality(train + val)["step"] == 6
    assert time_to_quality(train) is None
