"""The trainer on a cluster (model/train.py, model/checkpoint.py, model/dist.py): checkpoints
that cannot run code, preemption by SIGTERM / SIGUSR1, resume on a different number of ranks
through torch.distributed.checkpoint, FSDP2 against DDP, and corrupted or partial checkpoints.

Everything runs on CPU with gloo, test_train's tiny model and synthetic tasks, a few steps. The
preemption and elastic tests start real training processes through the command line
(model.train.main), one per rank with the variables torchrun sets, so a signal can go to one
chosen rank; this file is also that process's script (see _worker_main at the end)."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _p in (_ROOT, _HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from test_train import TINY, _free_port, _train_rows, cfgs, make_tasks  # noqa: E402

from model.checkpoint import (CheckpointError, UnsafeCheckpointError, read_dcp_metadata,  # noqa: E402
                              verify, write_manifest)
from model.dist import EXIT_PREEMPTED, Preemption  # noqa: E402
from model.train import BatchOrder, Trainer  # noqa: E402

# The runs of the multi-process tests: 8 steps, global batch 8 in 2 micro-steps, a classification
# and two retrieval tasks (FILIP's gather across ranks). adam_eps as in test_train's DDP_RUN.
TASKS = ("text_cls", "image_text", "code_text")
STEPS = 8
TIMEOUT = 150  # seconds any group of training processes may take before the test fails


# ----------------------------------------------------------------------------- helpers


def _quiet(*a, **k):
    pass


def _final_weights(run_dir) -> dict:
    from safetensors.torch import load_file
    return load_file(str(run_dir / "ckpt" / f"step_{STEPS:06d}" / "model.safetensors"))


def _launch(world: int, spec: dict, tmp_path) -> list[subprocess.Popen]:
    """One training process per rank (python tests/test_train_cluster.py SPEC), with the
    environment torchrun would give it."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1", TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
        log = open(tmp_path / f"{spec['name']}-{len(os.listdir(tmp_path))}-rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), json.dumps(spec)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, cwd=_ROOT))
        procs[-1].log_path = log.name
        log.close()
    return procs


def _log(p) -> str:
    with open(p.log_path) as f:
        return f.read()


def _wait(procs, timeout: float = TIMEOUT) -> list[int]:
    """The exit statuses; kills every process and fails (with their output) on a timeout."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("training processes did not finish in time:\n" + "\n".join(_log(p)[-3000:] for p in procs))


def _spec(tmp_path, name, **kw) -> dict:
    return {"runs_dir": str(tmp_path), "name": name, "dropout": 0.0, "ckpt_every": 100, "resume": False,
            "fsdp": False, "slow": 0.0, **kw}


# ----------------------------------------------------------------------------- 1. no code in checkpoints


class _Payload:
    """A pickle that creates a folder when unpickled: what a hostile checkpoint could do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _small_run(tmp_path, name="run", **train):
    m, t = cfgs(tmp_path, name, **{"steps": 4, "ckpt_every": 2, **train})
    tr = Trainer(m, t, make_tasks(), progress=False, log=_quiet)
    tr.fit()
    return m, t, tr


def test_checkpoint_files_load_without_pickled_objects(tmp_path):
    """Every file a checkpoint holds reads as JSON, safetensors, weights_only torch.load, or DCP
    metadata through the restricted unpickler."""
    _small_run(tmp_path)
    folder = tmp_path / "run" / "ckpt" / "step_000004"
    verify(str(folder))
    for name in ("train_state.json", "config.json", "manifest.json"):
        json.loads((folder / name).read_text())
    rng = torch.load(folder / "rng_rank0.pt", weights_only=True)
    assert isinstance(rng["torch"], torch.Tensor) and len(rng["python"]["state"]) == 625
    md = read_dcp_metadata(str(folder / ".metadata"))
    assert "model/filip.image_text.log_scale" in md.state_dict_metadata
    assert any(k.startswith("optim/") and k.endswith("/exp_avg") for k in md.state_dict_metadata)
    assert not any(n.endswith(".pt") and n.startswith("train_state") for n in os.listdir(folder))


@pytest.mark.parametrize("target", ["rng_rank0.pt", ".metadata"])
def test_resume_refuses_a_checkpoint_with_a_malicious_pickle(tmp_path, target):
    """A checkpoint file replaced by a pickle that would run code (with a manifest that matches,
    as an attacker would write it): resume refuses it, naming the file, and the code never runs."""
    m, t, _ = _small_run(tmp_path)
    folder = tmp_path / "run" / "ckpt" / "step_000004"
    marker = tmp_path / "pwned"
    if target == ".metadata":
        (folder / target).write_bytes(pickle.dumps(_Payload(str(marker))))
    else:
        torch.save({"python": _Payload(str(marker))}, folder / target)
    write_manifest(str(folder))
    with pytest.raises(UnsafeCheckpointError, match=rf"{target}: refused") as e:
        Trainer(m, t, make_tasks(), resume=True, progress=False, log=_quiet)
    assert "makedirs" in str(e.value) or "could run code" in str(e.value)
    assert not marker.exists()


def test_resume_refuses_a_pickled_checkpoint_of_the_older_format(tmp_path):
    """A folder in the old layout (pickled train_state.pt, no manifest) is never unpickled."""
    m, t = cfgs(tmp_path)
    old = tmp_path / "run" / "ckpt" / "step_000003"
    old.mkdir(parents=True)
    torch.save({"step": 3, "evil": _Payload(str(tmp_path / "pwned"))}, old / "train_state.pt")
    (tmp_path / "run" / "ckpt" / "latest").write_text("step_000003")
    with pytest.raises(CheckpointError, match="older trainer"):
        Trainer(m, t, make_tasks(), resume=True, progress=False, log=_quiet)
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- 4. corrupted / partial


def test_corrupted_or_partial_checkpoints_are_named_and_resume_falls_back(tmp_path):
    """A truncated shard, a missing shard, a missing manifest: each is named; --resume skips the
    bad newest checkpoint, says so, continues from the one before, and still ends on the weights
    of an uninterrupted run (bit for bit)."""
    m, t = cfgs(tmp_path, "straight", steps=6, ckpt_every=3)
    straight = Trainer(m, t, make_tasks(), progress=False, log=_quiet)
    straight.fit()

    m, t = cfgs(tmp_path, "run", steps=6, ckpt_every=3)
    Trainer(m, t, make_tasks(), progress=False, log=_quiet).fit()
    ckpt = tmp_path / "run" / "ckpt"
    newest, older = ckpt / "step_000006", ckpt / "step_000003"
    shard = newest / "__0_0.distcp"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"__0_0\.distcp: \d+ bytes, the manifest says \d+ \(truncated"):
        verify(str(newest))
    lines = []
    resumed = Trainer(m, t, make_tasks(), resume=True, progress=False, log=lines.append)
    assert resumed.step == 3
    assert any("skipping" in x and "__0_0.distcp" in x for x in lines)
    assert any("falling back to" in x and x.rstrip().endswith("step_000003, the newest valid checkpoint")
               for x in lines)
    resumed.fit()
    a, b = straight.full_state_dict(), resumed.full_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the re-run wrote a new step 6; now lose a shard, then cut the manifest of both
    (ckpt / "step_000006" / "__0_0.distcp").unlink()
    with pytest.raises(CheckpointError, match=r"__0_0\.distcp: missing \(the manifest lists it"):
        verify(str(ckpt / "step_000006"))
    with pytest.raises(CheckpointError, match="__0_0.distcp: missing"):
        resumed.load_checkpoint(str(ckpt / "step_000006"))
    (older / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"no valid checkpoint(.|\n)*step_000003.manifest\.json: missing; "
                                              r"the checkpoint was cut off"):
        Trainer(m, t, make_tasks(), resume=True, progress=False, log=_quiet)


def test_a_truncated_json_file_is_named(tmp_path):
    m, t, _ = _small_run(tmp_path)
    folder = tmp_path / "run" / "ckpt" / "step_000004"
    state = folder / "train_state.json"
    state.write_bytes(state.read_bytes()[:100])
    write_manifest(str(folder))  # the manifest matches: the parser must still name the file
    with pytest.raises(CheckpointError, match=r"train_state\.json: not valid JSON"):
        Trainer(m, t, make_tasks(), resume=True, progress=False, log=_quiet)


def test_command_line_names_an_unusable_checkpoint_and_exits_2(tmp_path, monkeypatch, capsys):
    import model.data as data
    from model.train import main
    monkeypatch.setattr(data, "build_benchmark", lambda root, tasks, **k: make_tasks(names=("text_cls",)))
    folder = tmp_path / "cli" / "ckpt" / "step_000002"
    folder.mkdir(parents=True)
    (folder / "train_state.json").write_text("{}")
    argv = ["--name", "cli", "--tasks", "text_cls", "--batch-size", "8", "--device", "cpu", "--no-plot", "--resume",
            "--set", f"runs_dir={tmp_path}", *[f"{k}={json.dumps(v)}" for k, v in TINY.items()]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no valid checkpoint" in err and "step_000002/manifest.json: missing" in err


# ----------------------------------------------------------------------------- data order, signals


def test_data_order_is_a_function_of_the_sample_count():
    """A BatchOrder restored from a sample count continues the same global stream, across epochs,
    whatever happened before; a different global batch is refused."""
    a = BatchOrder(10, 3, seed=4, task_index=1, task="t")
    stream = [a.next().tolist() for _ in range(12)]
    for k in (0, 2, 3, 7):
        b = BatchOrder(10, 3, seed=4, task_index=1, task="t")
        b.load_state_dict({"samples": 3 * k, "batch": 3})
        assert [b.next().tolist() for _ in range(12 - k)] == stream[k:]
    assert a.state_dict() == {"samples": 36, "batch": 3}
    with pytest.raises(ValueError, match="same --batch-size"):
        BatchOrder(10, 2, seed=4, task_index=1, task="t").load_state_dict({"samples": 6, "batch": 3})


def test_signal_handler_only_sets_a_flag():
    before = signal.getsignal(signal.SIGUSR1)
    with Preemption() as p:
        assert not p.agreed(None, torch.device("cpu"))
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert p.signal == "SIGUSR1" and p.agreed(None, torch.device("cpu"))
    assert signal.getsignal(signal.SIGUSR1) is before


# ----------------------------------------------------------------------------- 2. preemption


def _wait_for_steps(metrics, procs, n: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            pytest.fail("a training process ended before the signal:\n" + "\n".join(_log(p)[-3000:] for p in procs))
        if metrics.exists() and len(_train_rows(metrics)) >= n:
            return
        time.sleep(0.1)
    for p in procs:
        p.kill()
    pytest.fail(f"no {n} steps logged in {TIMEOUT} s")


@pytest.mark.parametrize("world", [1, 2])
def test_preempted_run_checkpoints_its_step_and_resumes_bitwise(tmp_path, world):
    """SIGTERM (1 rank) or SIGUSR1 to the last rank only (2 gloo ranks) during training: every
    rank stops after the same step, one checkpoint holds that step, the processes exit with
    EXIT_PREEMPTED, and --resume ends on the weights of an uninterrupted run, bit for bit (dropout
    on, so each rank's RNG must come back too)."""
    sig = signal.SIGTERM if world == 1 else signal.SIGUSR1
    straight = _launch(world, _spec(tmp_path, "straight", dropout=0.1), tmp_path)
    cut = _launch(world, _spec(tmp_path, "cut", dropout=0.1, slow=0.4), tmp_path)
    _wait_for_steps(tmp_path / "cut" / "metrics.jsonl", cut, 2)
    cut[-1].send_signal(sig)
    codes = _wait(cut)
    assert codes == [EXIT_PREEMPTED] * world, [_log(p)[-2000:] for p in cut]
    assert _wait(straight) == [0] * world, [_log(p)[-2000:] for p in straight]

    ckpt = tmp_path / "cut" / "ckpt"
    stop = int((ckpt / "latest").read_text()[len("step_"):])
    assert 2 <= stop < STEPS
    assert sorted(os.listdir(ckpt)) == ["latest", f"step_{stop:06d}"]
    assert json.loads((ckpt / f"step_{stop:06d}" / "train_state.json").read_text())["step"] == stop
    assert [r["step"] for r in _train_rows(tmp_path / "cut" / "metrics.jsonl")] == list(range(1, stop + 1))
    said = _log(cut[0])
    assert f"stopped after step {stop} on " in said and f"exit status {EXIT_PREEMPTED}" in said
    assert (sig.name if world == 1 else "a signal to another rank") in said

    resumed = _launch(world, _spec(tmp_path, "cut", dropout=0.1, resume=True), tmp_path)
    assert _wait(resumed) == [0] * world, [_log(p)[-2000:] for p in resumed]
    assert f"resumed {ckpt / f'step_{stop:06d}'} at step {stop}" in _log(resumed[0])
    a, b = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [r["loss"] for r in _train_rows(tmp_path / "straight" / "metrics.jsonl")]
    lb = [r["loss"] for r in _train_rows(tmp_path / "cut" / "metrics.jsonl")]
    assert la == lb and len(la) == STEPS


# ----------------------------------------------------------------------------- 3. elastic resume

# Saved on 2 ranks, resumed on 1, against 1 rank throughout: the same tasks and data in the same
# order; the numbers differ only by summation order (2-rank gradient all-reduce and FILIP's
# gather), amplified by AdamW. Measured (8 steps, lr 1e-3): weights 2.8e-7 apart (absolute),
# losses 3.6e-7; the bounds leave room for other CPUs' kernels.
ELASTIC_WEIGHT_ATOL, ELASTIC_LOSS_ATOL = 1e-5, 5e-6


def test_saved_on_two_ranks_resumes_on_one(tmp_path):
    two = _launch(2, _spec(tmp_path, "elastic", stop_at=4, ckpt_every=4), tmp_path)
    one = _launch(1, _spec(tmp_path, "one"), tmp_path)
    assert _wait(two) == [0, 0], [_log(p)[-2000:] for p in two]
    assert _wait(one) == [0], _log(one[0])[-2000:]
    assert json.loads((tmp_path / "elastic" / "ckpt" / "step_000004" / "train_state.json").read_text())["world"] == 2
    resumed = _launch(1, _spec(tmp_path, "elastic", resume=True), tmp_path)
    assert _wait(resumed) == [0], _log(resumed[0])[-2000:]
    assert "saved by 2 rank(s), resharded to 1" in _log(resumed[0])

    rows_a = _train_rows(tmp_path / "one" / "metrics.jsonl")
    rows_b = _train_rows(tmp_path / "elastic" / "metrics.jsonl")
    assert [r["task"] for r in rows_a] == [r["task"] for r in rows_b] and len(rows_a) == STEPS
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(rows_a, rows_b))
    a, b = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "elastic")
    assert a.keys() == b.keys()
    weight_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"\nsaved on 2 ranks, resumed on 1 vs 1 rank: max |loss diff| {loss_diff:.2e}, "
          f"max |weight diff| {weight_diff:.2e}")
    assert loss_diff <= ELASTIC_LOSS_ATOL and weight_diff <= ELASTIC_WEIGHT_ATOL
    moved = [k for k in a if not torch.equal(a[k], _final_weights_at(tmp_path / "elastic", 4)[k])]
    assert len(moved) > len(a) // 2  # steps 5-8 trained after the resume


def _final_weights_at(run_dir, step: int) -> dict:
    from safetensors.torch import load_file
    path = run_dir / "ckpt" / f"step_{step:06d}" / "model.safetensors"
    if not path.exists():  # pruned (keep_ckpts): compare with the start of the resumed part instead
        pytest.skip(f"{path} was pruned")
    return load_file(str(path))


# ----------------------------------------------------------------------------- 3. FSDP2

# FSDP2 (reduce-scatter of gradients, sharded AdamW) against DDP (all-reduce, replicated AdamW)
# on 2 gloo ranks, 4 steps: the same batches, so they differ by summation order only. Measured:
# losses 2.4e-7 apart, weights 5.1e-8; the bounds leave room for other CPUs' kernels.
FSDP_LOSS_ATOL, FSDP_WEIGHT_ATOL = 2e-6, 1e-6
FSDP_RUN = dict(steps=4, grad_accum=2, tasks=TASKS, adam_eps=1e-6, ckpt_every=2)


def _fsdp_worker(rank, port, out_dir):
    from torch.distributed.tensor import DTensor
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=90))
    try:
        res = {}
        for mode in ("fsdp", "ddp"):
            m, t = cfgs(out_dir, mode, **FSDP_RUN)
            tr = Trainer(m, t, make_tasks(), fsdp=mode == "fsdp", progress=False, log=_quiet)
            if mode == "fsdp":
                w1 = tr.model.encoder.blocks[0].ffn.w1  # a skill FFN bank, sharded over the 2 ranks
                assert isinstance(w1, DTensor) and w1.to_local().shape[0] * 2 >= w1.shape[0] > w1.to_local().shape[0]
            losses = tr.fit()
            if mode == "fsdp":  # resume the sharded run from step 2 on the same 2 ranks: bitwise
                again = Trainer(m, t, make_tasks(), fsdp=True, resume=True, progress=False, log=_quiet)
                again.load_checkpoint(str(out_dir / mode / "ckpt" / "step_000002"))
                assert again.step == 2 and again.fit() == losses[2:]
                ref, got = tr.full_state_dict(), again.full_state_dict()
                assert all(torch.equal(ref[k], got[k]) for k in ref)
            res[mode] = {"losses": losses, "state": tr.full_state_dict(), "tasks": [r["task"] for r in tr.metrics],
                         "optim": sorted(json.loads((out_dir / mode / "ckpt" / "step_000004" / "train_state.json")
                                                    .read_text())["optim_state"])}
        torch.save(res, out_dir / f"fsdp_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fsdp_matches_ddp_and_its_checkpoint_resumes_on_one_process(tmp_path):
    """--fsdp on 2 gloo ranks (fully_shard per block, skill FFN banks sharded, FILIP's gather
    across ranks) against DDP: the same tasks, losses and weights within the bounds above. Resumed
    from its step-2 checkpoint on the same 2 ranks it ends bit for bit where it did; its DCP
    checkpoint loads into one unsharded process with the same weights, bit for bit."""
    ctx = mp.spawn(_fsdp_worker, args=(_free_port(), tmp_path), nprocs=2, join=False)
    deadline = time.monotonic() + TIMEOUT
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"FSDP training did not finish in {TIMEOUT} s")
    res = [torch.load(tmp_path / f"fsdp_rank{r}.pt") for r in range(2)]
    fsdp, ddp = res[0]["fsdp"], res[0]["ddp"]
    assert fsdp["tasks"] == ddp["tasks"] and {"text_cls"} < set(fsdp["tasks"])
    assert fsdp["optim"] == ddp["optim"]  # optimiser state under the same (plain) names
    loss_diff = max(abs(a - b) for a, b in zip(fsdp["losses"], ddp["losses"]))
    weight_diff = max(float((fsdp["state"][k] - ddp["state"][k]).abs().max()) for k in ddp["state"])
    print(f"\nFSDP vs DDP (2 gloo ranks, 4 steps): max |loss diff| {loss_diff:.2e}, "
          f"max |weight diff| {weight_diff:.2e}")
    assert fsdp["state"].keys() == ddp["state"].keys()
    assert all(fsdp["state"][k].shape == ddp["state"][k].shape for k in ddp["state"])
    assert loss_diff <= FSDP_LOSS_ATOL and weight_diff <= FSDP_WEIGHT_ATOL
    assert all(torch.equal(res[1]["fsdp"]["state"][k], v) for k, v in fsdp["state"].items())

    m, t = cfgs(tmp_path, "fsdp", **FSDP_RUN)
    one = Trainer(m, t, make_tasks(), resume=True, progress=False, log=_quiet)
    assert one.step == 4
    loaded = one.full_state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in fsdp["state"].items())
    assert len(one.optimizer.state) == len(fsdp["optim"])


# ----------------------------------------------------------------------------- the training process


def _worker_main(spec: dict) -> int:
    """One rank of a test run through model.train.main, on test_train's synthetic tasks (the
    benchmark builder is replaced by them). spec: runs_dir, name, dropout, ckpt_every, resume,
    fsdp, slow (seconds of sleep after each step, to leave time for a signal), stop_at (stop
    after that step, without the end-of-run evaluation)."""
    import model.data as data
    import model.train as train
    torch.set_num_threads(1)
    data.build_benchmark = lambda root, tasks, **k: {n: t for n, t in make_tasks().items() if n in tasks}
    if spec["slow"]:
        step = train.Trainer.train_step

        def slow_step(self):
            row = step(self)
            time.sleep(spec["slow"])
            return row
        train.Trainer.train_step = slow_step
    if spec.get("stop_at"):
        fit = train.Trainer.fit
        train.Trainer.fit = lambda self, stop_at=None: fit(self, stop_at=spec["stop_at"])
        train.Trainer.evaluate = lambda self, split="test": {}
    model_set = {**TINY, "dropout": spec["dropout"]}
    argv = ["--model", "tiny", "--name", spec["name"], "--steps", str(STEPS), "--batch-size", "8",
            "--grad-accum", "2", "--tasks", ",".join(TASKS), "--device", "cpu", "--no-plot",
            "--set", f"runs_dir={spec['runs_dir']}", "warmup_steps=2", "adam_eps=1e-6", "eval_batch=4",
            f"ckpt_every={spec['ckpt_every']}", "log_every=1",
            *[f"{k}={json.dumps(v)}" for k, v in model_set.items()]]
    argv += ["--resume"] * spec["resume"] + ["--fsdp"] * spec["fsdp"]
    return train.main(argv)


if __name__ == "__main__":
    raise SystemExit(_worker_main(json.loads(sys.argv[1])))
