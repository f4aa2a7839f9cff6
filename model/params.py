"""Total vs activated parameters per modality (SkillNet's headline) and model FLOPs for MFU.

    python -m model.params                 # the tiny preset
    python -m model.params --model base    # SkillNet-base
    python -m model.params --model base --set skill_every=2 general_skill=false

A token of a task side activates the shared encoder (attention, LayerNorms, dense FFNs), its
modality's embedder and, in each skill layer, only the skills the task gives it; the other
skills' FFNs are never read for it. "activated" counts those parameters; embedding tables count
whole (as SkillNet and most papers do), although a token reads one row. The head columns are
the side's own head (projection + token reduction for retrieval, the classifier for text_cls).

FLOPs (for MFU): the usual analytic count, 2 FLOPs per multiply-add, forward + backward = 3x
forward: per token 6 x (the matrix parameters it multiplies: attention and FFN weights, k skill
FFNs for k active skills, its patch embedding and head projections; embedding lookups are not
FLOPs) + attention 12 x layers x d x N (QK^T and AV over N positions), plus the FILIP similarity
of a retrieval batch (2 B^2 n m D forward, 3x with its backward).
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from model.config import MODALITIES, model_config, parse_overrides
from model.wukong import SkillNetWukong, default_specs

_EMBED_PREFIX = {"text": ("encoder.text.tok.", "encoder.text.pos", "encoder.text.norm.", "encoder.text.modality_vec.text"),
                 "code": ("encoder.text.tok.", "encoder.text.pos", "encoder.text.norm.", "encoder.text.modality_vec.code"),
                 "image": ("encoder.image.",), "sound": ("encoder.sound.",), "video": ("encoder.video.",)}


def _skill_params(model: SkillNetWukong) -> dict[str, nn.Parameter]:
    """name -> parameter of every skill bank (first dim = skills)."""
    out = {}
    for i, blk in enumerate(model.encoder.blocks):
        if blk.skilled:
            for n, p in blk.ffn.named_parameters():
                out[f"encoder.blocks.{i}.ffn.{n}"] = p
    return out


def param_groups(model: SkillNetWukong) -> dict[str, int]:
    """Element counts: "total", "encoder", "shared" (read by every token), "embed:<m>",
    "skill" (one skill across all skill layers), "head:<task>:<m>" per task side."""
    skill = _skill_params(model)
    counts = {"total": sum(p.numel() for p in model.parameters()),
              "encoder": sum(p.numel() for p in model.encoder.parameters()),
              "skill": sum(p[0].numel() for p in skill.values()), "num_skills": model.cfg.num_skills}
    embed_all = set()
    for m in MODALITIES:
        names = [n for n, _ in model.named_parameters() if n.startswith(_EMBED_PREFIX[m])]
        embed_all.update(names)
        counts[f"embed:{m}"] = sum(model.get_parameter(n).numel() for n in names)
    counts["shared"] = sum(p.numel() for n, p in model.encoder.named_parameters(prefix="encoder")
                           if n not in embed_all and n not in skill)
    for task, spec in model.specs.items():
        for m in spec.modalities:
            counts[f"head:{task}:{m}"] = sum(p.numel() for p in _head_params(model, task, m))
    return counts


def _head_params(model: SkillNetWukong, task: str, modality: str) -> list[nn.Parameter]:
    spec = model.specs[task]
    if spec.kind == "classify":
        return list(model.cls_head[task].parameters())
    ps = list(model.proj[model.proj_key(task, modality)].parameters())
    if modality in model.reduce:
        ps += list(model.reduce[modality].parameters())
    return ps


def activated(model: SkillNetWukong, task: str, modality: str, counts: dict | None = None) -> dict:
    """The parameters a token of `modality` in `task` reads: a dict with embed, shared, skills
    (names), skill_ffn (their elements), encoder (embed + shared + skill_ffn), head, total."""
    counts = counts or param_groups(model)
    skills = model.cfg.skills_for(task, modality)
    enc = counts[f"embed:{modality}"] + counts["shared"] + len(skills) * counts["skill"]
    head = counts[f"head:{task}:{modality}"]
    return {"skills": skills, "embed": counts[f"embed:{modality}"], "shared": counts["shared"],
            "skill_ffn": len(skills) * counts["skill"], "encoder": enc, "head": head, "total": enc + head}


def report(model: SkillNetWukong, file=None) -> list[dict]:
    """Print the table (to sys.stdout by default); returns its rows."""
    file = file or sys.stdout
    c = param_groups(model)
    cfg = model.cfg
    n_skill_layers = len(model.encoder.skill_layers())
    print(f"SkillNet ({cfg.preset}): {c['total'] / 1e6:.2f} M parameters in all, encoder "
          f"{c['encoder'] / 1e6:.2f} M (d={cfg.d_model}, {cfg.n_layers} layers, {c['num_skills']} skills "
          f"in {n_skill_layers} skill layer(s), {c['skill'] / 1e6:.2f} M per skill)", file=file)
    print(f"shared by every token: {c['shared'] / 1e6:.2f} M (attention, LayerNorms"
          + (", dense FFNs" if cfg.skill_every > 1 else "") + ")", file=file)
    head = (f"{'task side':22s} {'skills':16s} {'embedder':>9s} {'skill FFNs':>10s} {'encoder':>9s} "
            f"{'% of enc':>8s} {'head':>8s} {'activated':>10s} {'% of all':>8s}")
    print(head, file=file)
    print("-" * len(head), file=file)
    rows = []
    for task, spec in model.specs.items():
        for m in spec.modalities:
            a = activated(model, task, m, c)
            rows.append({"task": task, "modality": m, **a, "skills": list(a["skills"]),
                         "model_total": c["total"], "encoder_total": c["encoder"]})
            print(f"{task + '/' + m:22s} {'+'.join(a['skills']):16s} {_m(a['embed'])} {_m(a['skill_ffn']):>10s} "
                  f"{_m(a['encoder'])} {100 * a['encoder'] / c['encoder']:7.1f}% {_m(a['head'], 8)} "
                  f"{_m(a['total'], 10)} {100 * a['total'] / c['total']:7.1f}%", file=file)
    print("(M = millions; embedding tables count whole; 'activated' = encoder part + the side's head)", file=file)
    return rows


def _m(n: int, width: int = 9) -> str:
    return f"{n / 1e6:{width}.3f}"


# ----------------------------------------------------------------------------- FLOPs


def _matrix_params_per_token(model: SkillNetWukong, task: str, modality: str) -> int:
    """Multiply-adds per token of the encoder's and the head's weight matrices."""
    cfg = model.cfg
    d, h = cfg.d_model, cfg.d_ff
    h1 = 2 * h if cfg.activation == "swiglu" else h
    ffn = d * h1 + h * d
    k = len(cfg.skills_for(task, modality))
    per_layer_attn = 4 * d * d
    total = 0
    for blk in model.encoder.blocks:
        total += per_layer_attn + (k * ffn if blk.skilled else ffn)
    if modality == "image":
        total += model.encoder.image.proj.weight.numel()
    elif modality == "sound":
        total += model.encoder.sound.proj.weight.numel()
    elif modality == "video":
        total += model.encoder.video.proj.weight.numel()
    spec = model.specs[task]
    if spec.kind == "retrieve":
        total += d * cfg.proj_dim
    return total


def step_flops(model: SkillNetWukong, task: str, batch: dict) -> float:
    """Model FLOPs of one training step (forward + backward) on `batch` (see module docstring).
    Sides that run without gradients (LiT's locked image side) count forward only."""
    cfg = model.cfg
    total = 0.0
    for m, inp in model.side_inputs(task, batch):
        B = int(inp["ids"].shape[0] if "ids" in inp else inp["x"].shape[0])
        N = int(inp["ids"].shape[1]) if "ids" in inp else cfg.tokens(m)
        factor = 2.0 if (cfg.lit and m == "image") else 6.0  # forward only, or forward + backward
        total += factor * B * N * (_matrix_params_per_token(model, task, m) + 2 * cfg.n_layers * cfg.d_model * N)
    if model.specs[task].kind == "retrieve":
        (m, inp), (_, txt) = model.side_inputs(task, batch)
        B, L = txt["ids"].shape
        # the other side's tokens: [CLS] + the reduced ones, or all of them (code is not reduced)
        n = 1 + cfg.reduced_tokens if m in cfg.reduced_modalities else (
            int(inp["ids"].shape[1]) if "ids" in inp else cfg.tokens(m))
        total += 3 * 2.0 * B * B * n * L * cfg.proj_dim
    return total


# Dense bf16 peak of the GPUs these runs meet (NVIDIA datasheets, without sparsity), TFLOP/s.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0, "A800": 312.0,
                    "L40S": 362.1, "L4": 121.0, "A10": 125.0, "4090": 165.2, "V100": 125.0}


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None (CPU, or a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tf in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tf * 1e12
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="SkillNet: total vs activated parameters per modality")
    ap.add_argument("--model", default="tiny", help="preset: tiny or base")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ModelConfig overrides")
    args = ap.parse_args(argv)
    try:
        overrides, train = parse_overrides(args.set)
        if train:
            raise ValueError(f"--set: {sorted(train)} are trainer fields; model.params takes model fields")
        cfg = model_config(args.model, **overrides)
    except ValueError as e:
        print(f"model.params: {e}", file=sys.stderr)
        return 2
    with torch.device("meta"):  # shapes only: SkillNet-base needs no memory to be counted
        model = SkillNetWukong(cfg, default_specs())
    report(model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
