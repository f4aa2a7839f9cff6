"""model.compare: the smoke run end to end, the verdict against the seed spread, the dense
variant's config (one shared FFN of width 2 x d_ff, the activated parameters of skillnet) and the
separate variant's step split."""
import json
import os

import pytest
import torch

from model import compare
from model.config import SKILL_ID, TASK_KINDS, TASK_MODALITIES
from model.train import TaskSampler
from model.wukong import SkillNetWukong, default_specs
from skillkern.ops.skill_ffn.reference import activation_ref

TASKS = sorted(TASK_MODALITIES)


def _configs():
    """(skillnet, dense) model configs of the tiny preset over every task."""
    return (compare.variant_model_config("skillnet", "tiny", TASKS),
            compare.variant_model_config("dense", "tiny", TASKS))


def test_dense_runs_one_shared_ffn_of_double_width():
    """Every token of every task side runs skill "general" alone, whose FFN is 2 x d_ff wide, and
    the skill layer then computes exactly a dense FFN of those weights."""
    sk, de = _configs()
    compare.check_dense(de, sk, TASKS)
    assert de.d_ff == 2 * sk.d_ff
    torch.manual_seed(0)
    model = SkillNetWukong(de, default_specs())
    model.set_backend("torch")
    enc = model.encoder
    general = SKILL_ID["general"]
    for task in TASKS:
        for m in TASK_MODALITIES[task]:
            mask = torch.tensor([[True, True, False]])
            ids = enc.skill_ids(de.skills_for(task, m), mask, 1, 3, "cpu")
            assert ids.shape == (3, 1)
            assert ids[:2].eq(general).all() and ids[2].eq(-1).all(), (task, m, ids)
    layers = enc.skill_layers()
    assert len(layers) == de.n_layers
    x = torch.randn(5, de.d_model)
    ids = torch.full((5, 1), general)
    for ffn in layers:
        assert ffn.w1.shape[-1] == 2 * sk.d_ff
        with torch.no_grad():
            ffn.b1.normal_()
            ffn.b2.normal_()
            hidden = activation_ref(x @ ffn.w1[general] + ffn.b1[general], de.activation)
            dense = hidden @ ffn.w2[general] + ffn.b2[general]
            assert torch.allclose(ffn(x, ids), dense, atol=1e-5, rtol=1e-5)


def test_dense_activates_skillnets_parameters_per_token():
    """Activated weights per token are equal; the one difference is skillnet's second output bias
    (d_model per skill layer). Dense's total leaves out the 5 skills no token runs."""
    sk, de = _configs()
    specs = {t: type("T", (), {"kind": k, "num_classes": 2 if k == "classify" else 0})() for t, k in TASK_KINDS.items()}
    p_sk = compare.count_params(sk, specs)
    p_de = compare.count_params(de, specs)
    skill_layers = sum(sk.skilled_layer(i) for i in range(sk.n_layers))
    assert p_sk["activated"] - p_de["activated"] == sk.d_model * skill_layers
    d, h = sk.d_model, sk.d_ff
    ffn_sk = 2 * (2 * d * h + h + d)          # two skills of width d_ff
    ffn_de = 2 * d * (2 * h) + 2 * h + d      # one FFN of width 2 d_ff
    assert ffn_sk - ffn_de == d
    bank_row = 2 * d * 2 * h + 2 * h + d
    full = sum(p.numel() for p in compare.meta_model(de, specs).parameters())
    assert p_de["total"] == full - 5 * skill_layers * bank_row


@pytest.mark.parametrize("steps,seed,weights", [(10, 0, None), (600, 1, None), (97, 2, {"video_text": 3.0})])
def test_separate_steps_sum_to_the_multitask_total(steps, seed, weights):
    split = compare.separate_steps(TASKS, steps, seed, weights)
    assert sum(split.values()) == steps
    sampler = TaskSampler(TASKS, weights or {}, seed)  # the trainer's schedule, drawn again
    drawn = [sampler.next() for _ in range(steps)]
    assert split == {t: drawn.count(t) for t in TASKS}


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="--variants"):
        compare.parse_args(["--variants", "skillnet,sparse"])
    with pytest.raises(ValueError, match="--seeds"):
        compare.parse_args(["--seeds", "0,x"])
    with pytest.raises(ValueError, match="--steps"):
        compare.parse_args(["--steps", "0"])
    with pytest.raises(ValueError, match="--threads"):
        compare.parse_args(["--threads", "-1"])
    with pytest.raises(ValueError, match="--device"):
        compare.parse_args(["--device", "tpu"])
    with pytest.raises(ValueError, match="variant"):
        compare.variant_model_config("moe", "tiny", TASKS)
    assert compare.main(["--smoke", "--seeds", "1,1"]) == 2


def test_smoke_writes_table_json_and_plot(tmp_path):
    """The CI mode end to end: every variant trained and tested, the three outputs written, and the
    separate models' steps equal to the tasks' steps in the multi-task run."""
    out = str(tmp_path / "cmp")
    threads = torch.get_num_threads()
    assert compare.main(["--smoke", "--out", out, "--device", "cpu", "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # --threads is undone afterwards
    for name in ("compare.md", "compare.json", "compare.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "compare.json")) as f:
        report = json.load(f)
    assert list(report["variants"]) == list(compare.VARIANTS)
    tasks = report["tasks"]
    for v, r in report["variants"].items():
        seed = r["seeds"]["0"]
        assert sorted(seed["tasks"]) == tasks, v
        for t in tasks:
            key = "accuracy" if TASK_KINDS[t] == "classify" else "mean_R"
            assert 0.0 <= seed["tasks"][t][key] <= 1.0
        assert r["params"]["total"] > r["params"]["activated"] > 0
        assert seed["steps"] == compare.SMOKE_STEPS or v == "separate"
    sep = report["variants"]["separate"]["seeds"]["0"]
    assert sum(sep["task_steps"].values()) == compare.SMOKE_STEPS
    multi = report["variants"]["skillnet"]["seeds"]["0"]["task_steps"]
    assert {t: n for t, n in sep["task_steps"].items() if n} == multi
    assert "## Verdict" in open(os.path.join(out, "compare.md")).read()
    assert report["verdict"].startswith("Not shown: with one seed")


def _report(scores: dict) -> dict:
    """A report of fake per-seed scores: {variant: [(text_cls accuracy, image_text mean_R) per seed]}."""
    tasks = ["image_text", "text_cls"]
    variants = {}
    for v, per_seed in scores.items():
        seeds = {str(i): {"tasks": {"text_cls": {"accuracy": a, "score": a},
                                    "image_text": {"R@1": r / 2, "mean_R": r, "score": r}},
                          "tokens": 100, "train_s": 1.0, "wall_s": 2.0}
                 for i, (a, r) in enumerate(per_seed)}
        variants[v] = {"seeds": seeds, "summary": compare.summarize(seeds, tasks)}
    return {"tasks": tasks, "variants": variants}


def test_verdict_follows_the_seed_spread():
    apart = _report({"skillnet": [(0.80, 0.30), (0.82, 0.32), (0.81, 0.31)],
                     "dense": [(0.70, 0.20), (0.72, 0.22), (0.71, 0.21)]})
    assert compare.verdict(apart).startswith("Reproduced")
    overlap = _report({"skillnet": [(0.80, 0.30), (0.70, 0.20), (0.75, 0.25)],
                       "dense": [(0.78, 0.28), (0.72, 0.22), (0.74, 0.24)]})
    text = compare.verdict(overlap)
    assert text.startswith("Not shown at this scale") and "within the seed spread" in text
    below = _report({"skillnet": [(0.60, 0.10), (0.61, 0.11)], "dense": [(0.70, 0.20), (0.71, 0.21)]})
    assert compare.verdict(below).startswith("Not reproduced")
    s = apart["variants"]["skillnet"]["summary"]["mean"]
    assert s["n"] == 3 and s["min"] == pytest.approx(0.55) and s["max"] == pytest.approx(0.57)
