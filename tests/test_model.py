"""SkillNet encoder + Wukong head (model/): every modality forward and backward, skill routing
(a token's output depends only on its own skills' weights), the parameter report against the
gradients that really flow, LiT locking, --backend reaching every fused layer, and clear errors
for bad configs and bad inputs. Tiny models and random inputs (never zeros); no benchmark data."""
from __future__ import annotations

import os
import sys

import pytest
import torch

# model/ lives at the repo root and is not part of the installed package: `python -m pytest`
# finds it through the working directory, plain `pytest` through this
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from conftest import rel_err

import skillkern
from model.config import SKILL_ID, SKILLS, TASK_MODALITIES, model_config, parse_overrides, train_config
from model.params import activated, param_groups, report, step_flops
from model.wukong import SkillNetWukong, default_specs

# A model small enough for the Triton interpreter: d=32, 2 layers; 16x16 images in 8x8 patches
# (4 + [CLS] tokens), 0.1 s of sound (n_fft 128, 51 frames, 16 mels, 8x8 patches: 12 + 1), 2-frame video.
TINY = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=100, max_text_len=16,
            image_size=16, image_patch=8, sound_samples=1600, n_fft=128, hop_length=32, n_mels=16,
            sound_patch_freq=8, sound_patch_time=8, video_frames=2, video_size=16, video_patch=8,
            proj_dim=16, reduced_tokens=4, reduce_groups=4)
TASKS = tuple(TASK_MODALITIES)


def make_model(seed=0, **over) -> SkillNetWukong:
    torch.manual_seed(seed)
    return SkillNetWukong(model_config("tiny", **{**TINY, **over}), default_specs({"text_cls": 3}))


def _text(g, B, L, vocab=100):
    ids = torch.randint(5, vocab, (B, L), generator=g)
    ids[:, 0] = 2                                             # [CLS]
    lens = torch.randint(2, L + 1, (B,), generator=g)
    lens[0] = L                                               # one full row, the rest ragged
    mask = torch.arange(L)[None] < lens[:, None]
    return ids.masked_fill(~mask, 0), mask


def make_batch(task: str, B: int = 4, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids, mask = _text(g, B, 16 if task == "text_cls" else 7)  # 7: not a power of two
    b = {"ids": ids, "mask": mask}
    other = TASK_MODALITIES[task][0]
    if task == "text_cls":
        b["label"] = torch.randint(0, 3, (B,), generator=g)
    elif other == "image":
        b["x"] = torch.randint(0, 256, (B, 3, 16, 16), generator=g, dtype=torch.uint8)
    elif other == "sound":
        b["x"] = torch.randn(B, 1600, generator=g) * torch.rand(B, 1, generator=g)  # varied loudness
    elif other == "video":
        b["x"] = torch.randint(0, 256, (B, 2, 3, 16, 16), generator=g, dtype=torch.uint8)
    else:
        b["x_ids"], b["x_mask"] = _text(g, B, 12)
    return b


def _skill_banks(model):
    return [(f"encoder.blocks.{i}.ffn.{n}", p) for i, blk in enumerate(model.encoder.blocks) if blk.skilled
            for n, p in blk.ffn.named_parameters()]


# ----------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("task", TASKS)
def test_forward_backward_each_modality(task):
    model = make_model()
    out = model(task, make_batch(task))
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    mods = TASK_MODALITIES[task]
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    # the task's own embedders learn; the other modalities' embedders are never touched
    own = {"text": "encoder.text.", "code": "encoder.text.", "image": "encoder.image.",
           "sound": "encoder.sound.", "video": "encoder.video."}
    for m in ("image", "sound", "video"):
        touched = [n for n, g in grads.items() if n.startswith(own[m]) and g is not None and g.abs().sum() > 0]
        assert bool(touched) == (m in mods), (m, touched)
    # each skill bank: rows of the task's skills get gradient, every other row is exactly zero
    used = {SKILL_ID[s] for m in mods for s in model.cfg.skills_for(task, m)}
    for name, p in _skill_banks(model):
        for e in range(p.shape[0]):
            nz = bool(p.grad[e].abs().sum() > 0)
            assert nz == (e in used), (name, SKILLS[e], nz)
    b = make_batch(task)
    want = sum(b[k].numel() for k in ("ids", "x_ids") if k in b)
    if mods[0] in ("image", "sound", "video"):
        want += 4 * model.cfg.tokens(mods[0])
    assert out["tokens"] == want


def test_retrieval_features_are_wukong_tokens():
    """proj -> [CLS] + TokenReduction to reduced_tokens -> unit L2 norm; text keeps its mask."""
    model = make_model()
    b = make_batch("image_text")
    f_img, m_img, f_txt, m_txt = model.retrieval_features("image_text", b)
    assert f_img.shape == (4, 1 + model.cfg.reduced_tokens, model.cfg.proj_dim) and m_img is None
    assert f_txt.shape == (4, 7, model.cfg.proj_dim) and torch.equal(m_txt, b["mask"])
    torch.testing.assert_close(f_img.norm(dim=-1), torch.ones(f_img.shape[:2]))
    torch.testing.assert_close(f_txt.norm(dim=-1), torch.ones(f_txt.shape[:2]))


def test_unreduced_modalities_keep_every_token_and_their_mask():
    """A modality outside reduced_modalities (code and sound, by default) keeps every projected
    token (and its padding mask, where it has one) and owns no TokenReduction; one inside it is
    pooled."""
    model = make_model()
    assert not {"code", "sound"} & set(model.reduce) and {"image", "video"} <= set(model.reduce)
    b = make_batch("code_text")
    f_code, m_code, _, _ = model.retrieval_features("code_text", b)
    assert f_code.shape == (*b["x_ids"].shape, model.cfg.proj_dim) and torch.equal(m_code, b["x_mask"])
    torch.testing.assert_close(f_code.norm(dim=-1), torch.ones(f_code.shape[:2]))
    s = make_batch("sound_text")
    f_snd, m_snd, _, _ = model.retrieval_features("sound_text", s)
    assert f_snd.shape == (s["x"].shape[0], model.cfg.sound_tokens, model.cfg.proj_dim) and m_snd is None
    reduced = make_model(reduced_modalities=("image", "sound", "video", "code"))
    f_code, m_code, _, _ = reduced.retrieval_features("code_text", b)
    assert f_code.shape == (b["x_ids"].shape[0], 1 + reduced.cfg.reduced_tokens, reduced.cfg.proj_dim)
    assert m_code is None


def test_text_projection_per_task_trains_only_its_task():
    """text_proj_per_task (the default): each retrieval task's text tokens go through their own
    projection (and params' head count follows); without it one "text" projection is shared."""
    shared = make_model(text_proj_per_task=False)
    assert "text" in shared.proj and not any(k.startswith("text_") for k in shared.proj)
    model = make_model()
    retrieval = [t for t in TASKS if t != "text_cls"]
    assert "text" not in model.proj and {f"text_{t}" for t in retrieval} <= set(model.proj)
    model.zero_grad(set_to_none=True)
    model("code_text", make_batch("code_text"))["loss"].backward()
    for t in retrieval:
        g = model.proj[f"text_{t}"].weight.grad
        assert (g is not None and g.abs().sum() > 0) == (t == "code_text"), t
    counts = param_groups(model)
    assert counts["head:code_text:text"] == model.cfg.d_model * model.cfg.proj_dim


def test_log_mel_frontend_matches_a_direct_computation():
    """The sound frontend: |STFT|^2 through an HTK mel filterbank, log, standardised per item."""
    from model.skillnet import LogMel, mel_filterbank
    fb = mel_filterbank(16000, 128, 16)
    assert fb.shape == (65, 16) and fb.min() >= 0 and torch.all(fb.max(0).values > 0.5)  # 16 live filters
    # a 1 kHz tone lands in the filter whose centre is nearest 1 kHz
    t = torch.arange(1600) / 16000
    wave = torch.sin(2 * torch.pi * 1000 * t)[None]
    spec = LogMel(16000, 128, 32, 16)(wave)
    mel_max = 2595 * torch.log10(torch.tensor(1 + 8000 / 700))
    centers = 700 * (10 ** (torch.linspace(0, float(mel_max), 18)[1:-1] / 2595) - 1)
    assert int(spec[0, :, 25].argmax()) == int((centers - 1000).abs().argmin())
    assert abs(float(spec.mean())) < 1e-4 and abs(float(spec.std()) - 1) < 1e-3


@pytest.mark.parametrize("n_fft,n_mels", [(64, 16), (128, 16), (400, 64), (400, 128), (512, 128)])
def test_config_finds_the_empty_mel_filters(n_fft, n_mels):
    """ModelConfig rejects mel filters narrower than the FFT bin spacing; its pure-Python count
    agrees with the filterbank the frontend builds."""
    from model.config import _empty_mel_filters
    from model.skillnet import mel_filterbank
    fb = mel_filterbank(16000, n_fft, n_mels)
    assert _empty_mel_filters(16000, n_fft, n_mels) == [i for i in range(n_mels) if fb[:, i].max() == 0]


# ----------------------------------------------------------------------------- routing


def _encode_two_streams(model, img, ids, mask, task="image_text"):
    enc = model.encoder
    xi, mi = enc.embed("image", {"x": img})
    xt, mt = enc.embed("text", {"ids": ids, "mask": mask})
    return enc([(xi, mi, model.cfg.skills_for(task, "image")), (xt, mt, model.cfg.skills_for(task, "text"))])


@pytest.mark.parametrize("general", [True, False])
def test_tokens_depend_only_on_their_skills(general):
    """Image and text tokens share one packed SkillFFN call per layer. Perturbing a skill's
    weights changes exactly the streams whose tokens run it (bitwise identical otherwise)."""
    model = make_model(general_skill=general)
    b = make_batch("image_text")
    with torch.no_grad():
        base = _encode_two_streams(model, b["x"], b["ids"], b["mask"])
        for skill in SKILLS[: model.cfg.num_skills]:
            saved = [(p, p.detach().clone()) for _, p in _skill_banks(model)]
            for _, p in _skill_banks(model):
                p[SKILL_ID[skill]] += torch.randn_like(p[SKILL_ID[skill]]) * 0.5
            img, txt = _encode_two_streams(model, b["x"], b["ids"], b["mask"])
            for p, v in saved:
                p.copy_(v)
            runs_img = skill in model.cfg.skills_for("image_text", "image")
            runs_txt = skill in model.cfg.skills_for("image_text", "text")
            assert torch.equal(img, base[0]) != runs_img, skill
            # padding positions run no skill: compare the real text tokens only
            real = b["mask"]
            assert torch.equal(txt[real], base[1][real]) != runs_txt, skill
            assert torch.equal(txt[~real], base[1][~real]) or runs_txt, skill


def test_task_skill_config_changes_routing():
    """task_skills: the image side of image_text runs only the image skill here, so the general
    skill (still run by text) no longer touches image tokens; video keeps the default."""
    model = make_model(task_skills={"image_text": {"image": ["image"]}})
    assert model.cfg.skills_for("image_text", "image") == ("image",)
    assert model.cfg.skills_for("video_text", "video") == ("video", "general")
    b = make_batch("image_text")
    with torch.no_grad():
        img0, txt0 = _encode_two_streams(model, b["x"], b["ids"], b["mask"])
        for _, p in _skill_banks(model):
            p[SKILL_ID["general"]] *= 1.5
        img1, txt1 = _encode_two_streams(model, b["x"], b["ids"], b["mask"])
    assert torch.equal(img0, img1)
    assert not torch.equal(txt0[b["mask"]], txt1[b["mask"]])


def test_packed_streams_equal_separate_calls():
    """Packing two streams into one encoder call gives each stream what it gets alone."""
    model = make_model()
    b = make_batch("code_text")
    enc = model.encoder
    with torch.no_grad():
        xc, mc = enc.embed("code", {"ids": b["x_ids"], "mask": b["x_mask"]})
        xt, mt = enc.embed("text", {"ids": b["ids"], "mask": b["mask"]})
        code, txt = enc([(xc, mc, ("code", "general")), (xt, mt, ("text",))])
        code1 = enc([(xc, mc, ("code", "general"))])[0]
        txt1 = enc([(xt, mt, ("text",))])[0]
    torch.testing.assert_close(code[mc], code1[mc], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(txt[mt], txt1[mt], rtol=1e-5, atol=1e-6)


def test_skill_every_other_layer():
    model = make_model(n_layers=4, skill_every=2)
    assert [blk.skilled for blk in model.encoder.blocks] == [False, True, False, True]
    assert [type(blk.ffn).__name__ for blk in model.encoder.blocks] == ["DenseFFN", "SkillFFN"] * 2
    out = model("video_text", make_batch("video_text"))
    out["loss"].backward()
    assert model.encoder.blocks[0].ffn.fc1.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- parameter report


def _touched_elements(model) -> dict[str, int]:
    """Elements of the parameters that got a nonzero gradient; skill banks count per skill row."""
    banks = dict(_skill_banks(model))
    out = {}
    for n, p in model.named_parameters():
        if p.grad is None or not bool(p.grad.abs().sum() > 0):
            continue
        if n in banks:
            out[n] = sum(p[e].numel() for e in range(p.shape[0]) if p.grad[e].abs().sum() > 0)
        else:
            out[n] = p.numel()
    return out


@pytest.mark.parametrize("task,modality", [("text_cls", "text"), ("image_text", "image"),
                                           ("sound_text", "sound"), ("video_text", "video"),
                                           ("code_text", "code"), ("image_text", "text")])
@pytest.mark.parametrize("over", [{}, {"skill_every": 2, "general_skill": False}], ids=["every", "other"])
def test_activated_parameters_match_the_gradients(task, modality, over):
    """The report's activated count of a task side = the elements that get a gradient when only
    that side is encoded (an independent count: autograd decides what was read)."""
    model = make_model(**over)
    b = make_batch(task)
    inp = dict(model.side_inputs(task, b))[modality]
    h, m = model.encoder.encode(modality, inp, model.cfg.skills_for(task, modality))
    if task == "text_cls":
        out = model.cls_head[task](h[:, 0])
    else:
        out, _ = model.features(task, modality, h, m)
    g = torch.Generator().manual_seed(3)
    out.backward(torch.randn(out.shape, generator=g))
    touched = _touched_elements(model)
    enc = sum(v for n, v in touched.items() if n.startswith("encoder."))
    head = sum(v for n, v in touched.items() if not n.startswith("encoder."))
    a = activated(model, task, modality)
    frozen_head = sum(p.numel() for n, p in model.named_parameters()
                      if not p.requires_grad and n.startswith(f"reduce.{modality}."))
    assert enc == a["encoder"]
    assert head == a["head"] - frozen_head
    assert a["encoder"] < param_groups(model)["encoder"]  # sparse: never the whole encoder


def test_param_report_prints_every_task_side(capsys):
    model = make_model()
    rows = report(model)
    text = capsys.readouterr().out
    assert len(rows) == 9 and "image_text/image" in text and "image+general" in text
    c = param_groups(model)
    assert c["total"] == sum(p.numel() for p in model.parameters())
    # text and code share the token table and positions; code adds its type vector only
    assert c["embed:code"] == c["embed:text"]
    assert c["encoder"] == (c["shared"] + c["embed:text"] + TINY["d_model"] + c["embed:image"]
                            + c["embed:sound"] + c["embed:video"] + c["skill"] * c["num_skills"])


def test_params_command_runs_on_base_without_memory(capsys):
    from model.params import main
    assert main(["--model", "base"]) == 0
    out = capsys.readouterr().out
    assert "d=768, 12 layers" in out and "image_text/image" in out
    assert main(["--set", "skill_every=5"]) == 2
    assert "skill_every" in capsys.readouterr().err


def test_step_flops_counts_skills_and_attention():
    """FLOPs grow with active skills: one more skill per token adds 6 x FFN params per token."""
    b = make_batch("text_cls")
    f2 = step_flops(make_model(), "text_cls", b)
    f1 = step_flops(make_model(general_skill=False), "text_cls", b)
    d, h, L = TINY["d_model"], TINY["d_ff"], TINY["n_layers"]
    tokens = b["ids"].numel()
    assert f2 - f1 == pytest.approx(6 * tokens * L * 2 * d * h)


# ----------------------------------------------------------------------------- LiT


def test_lit_locks_every_parameter_the_image_side_reads():
    model = make_model(lit=True)
    frozen = model.lock_image_tower()
    assert frozen > 0
    b = make_batch("image_text")
    with torch.no_grad():
        img0, _, txt0, _ = model.retrieval_features("image_text", b)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        model("image_text", b)["loss"].backward()
        opt.step()
        opt.zero_grad()
        model.restore_locked()
    with torch.no_grad():
        img1, _, txt1, _ = model.retrieval_features("image_text", b)
    assert torch.equal(img0, img1)                   # the locked tower did not move at all
    assert not torch.equal(txt0, txt1)               # the text side learned
    assert model.encoder.text.tok.weight.requires_grad and not model.encoder.blocks[0].attn.qkv.weight.requires_grad


# ----------------------------------------------------------------------------- backends


def test_backend_reaches_every_fused_layer(monkeypatch):
    """set_backend sets every SkillFFN, TokenReduction and FILIPLoss; a training step then asks
    skillkern for that backend in every fused op (recorded at the one place that resolves it)."""
    from skillkern import _backend
    model = make_model()
    names = model.set_backend("torch")
    n_skill = sum(blk.skilled for blk in model.encoder.blocks)
    reductions = len(model.cfg.reduced_modalities)  # image, video (code and sound keep their tokens)
    assert len(names) == n_skill + reductions + 4  # skill layers, TokenReductions, 4 FILIP losses
    calls = []
    real = _backend.resolve

    def spy(op, backend, device):
        calls.append((op, backend))
        return real(op, backend, device)

    monkeypatch.setattr(_backend, "resolve", spy)
    model("image_text", make_batch("image_text"))["loss"].backward()
    assert {op for op, _ in calls} >= {"skill_ffn", "token_reduce", "token_similarity"}
    assert {b for _, b in calls} == {"torch"}
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("fast")


@pytest.mark.skipif(not (torch.cuda.is_available() or skillkern._backend.interpreting()),
                    reason="Triton needs a GPU or TRITON_INTERPRET=1")
def test_triton_backend_matches_torch_end_to_end(device):
    """The whole retrieval step on the fused Triton kernels (interpreted on CPU) gives the torch
    backend's loss and gradients (fp32: kernel vs reference rounding only)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    res = {}
    for backend in ("torch", "triton"):
        model = make_model().to(device)
        model.set_backend(backend)
        b = {k: v.to(device) for k, v in make_batch("image_text", B=3).items()}
        out = model("image_text", b)
        out["loss"].backward()
        res[backend] = (out["loss"].detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                               if p.grad is not None})
    torch.testing.assert_close(res["triton"][0], res["torch"][0], rtol=1e-4, atol=1e-5)
    assert res["triton"][1].keys() == res["torch"][1].keys()
    for n, g in res["torch"][1].items():
        if g.abs().sum() > 0:
            assert rel_err(res["triton"][1][n], g) < 1e-3, n


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("field,value", [
    ("n_heads", 5),                       # does not divide d_model=32
    ("skill_every", 3),
    ("activation", "tanh"),
    ("image_patch", 5),
    ("reduce_groups", 5),                 # does not divide proj_dim
    ("reduced_modalities", ("image", "text")),
    ("dropout", 1.5),
    ("n_mels", 100),                      # more mel bands than FFT bins
    ("n_mels", 40),                       # the lowest filters fall between two FFT bins
    ("task_skills", {"image_text": {"image": ["vision"]}}),
    ("task_skills", {"image_text": {"sound": ["sound"]}}),
    ("task_skills", {"retrieval": {"image": ["image"]}}),
    ("d_model", "wide"),
])
def test_bad_model_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        model_config("tiny", **{**TINY, field: value})


@pytest.mark.parametrize("field,value", [
    ("batch_size", 0), ("grad_accum", 3), ("warmup_steps", 5000), ("backend", "fast"),
    ("lr", -1.0), ("tasks", ("image_text", "ocr")), ("task_weights", {"image_text": -1}),
    ("run_name", "a/b"), ("data_size", "huge"), ("betas", (0.9,)),
])
def test_bad_train_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        train_config("tiny", **{field: value})


def test_unknown_fields_and_presets_are_named():
    with pytest.raises(ValueError, match="`colour`"):
        model_config("tiny", colour=1)
    with pytest.raises(ValueError, match="`preset`"):
        model_config("huge")
    with pytest.raises(ValueError, match="`colour`"):
        parse_overrides(["colour=red"])
    assert parse_overrides(["d_model=64", "lr=0.01", "tasks=[\"image_text\"]"]) == (
        {"d_model": 64}, {"lr": 0.01, "tasks": ["image_text"]})


@pytest.mark.parametrize("task,key,bad,name", [
    ("image_text", "x", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "`x`"),        # wrong image size
    ("video_text", "x", torch.zeros(2, 3, 3, 16, 16, dtype=torch.uint8), "`x`"),     # 3 frames, not 2
    ("sound_text", "x", torch.zeros(2, 800), "`x`"),                                 # too short
    ("text_cls", "ids", torch.zeros(2, 40, dtype=torch.int64), "`ids`"),             # > max_text_len
])
def test_bad_inputs_name_the_tensor(task, key, bad, name):
    model = make_model()
    b = make_batch(task, B=2)
    b[key] = bad
    if key == "ids":
        b["mask"] = torch.ones(bad.shape, dtype=torch.bool)
    with pytest.raises(ValueError, match=name):
        model(task, b)


def test_missing_batch_keys_and_unknown_task_are_named():
    model = make_model()
    b = make_batch("image_text")
    del b["x"]
    with pytest.raises(ValueError, match=r"missing \['x'\]"):
        model("image_text", b)
    with pytest.raises(ValueError, match="`task`"):
        model("ocr", make_batch("image_text"))
