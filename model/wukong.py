"""The multi-task model: the SkillNet encoder with Wukong's dual-encoder head (and a classifier).

Retrieval tasks (image/sound/video/code <-> Chinese text), Wukong + FILIP style:

    other side:  SkillNet(x; the modality's skills) -> proj_m (d -> 256) -> [CLS] kept aside,
                 TokenReduction on the other tokens (e.g. 64 image patches -> 12; image and
                 video: ModelConfig.reduced_modalities; code and sound keep theirs) -> L2 norm
    text side:   SkillNet(ids; the text skill(s))  -> proj_text (d -> 256) -> L2 norm (padding masked)
    loss:        skillkern.nn.FILIPLoss (token-wise late interaction, learnable temperature;
                 all-gathered across ranks with a process group)

Both sides go through the ONE encoder in one packed call (model/skillnet.py), each token running
its own modality's skill. Classification (text_cls): [CLS] hidden state -> Linear -> cross
entropy.

LiT (ModelConfig.lit): the image tower is locked. With one shared encoder the "image tower" is
every parameter the image side reads: the shared attention / LayerNorms / dense FFNs, the image
embedder, the image-side skills, the image projection and its token reduction. Those are frozen
(a skill bank's locked skills by a gradient hook, and restore_locked() after each optimiser step
undoes weight decay on them), and the image side runs under no_grad, so the image features never
change while the text side (its embeddings, its skill, its projection) and the temperature train.
Use it with weights from a trained model (train --set init_from=...).

`backend` ("auto", "torch", "triton", "cuda") reaches every fused layer through set_backend():
each SkillFFN, TokenReduction and FILIPLoss (evaluation scores through skillkern.maxsim_topk, on the
torch or Triton backend).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import skillkern
from model.config import BACKENDS, SKILL_ID, TASK_KINDS, TASK_MODALITIES, ModelConfig
from model.skillnet import INIT_STD, SkillNetEncoder

# The modules whose `backend` attribute selects a skillkern backend.
FUSED_MODULES = (skillkern.nn.SkillFFN, skillkern.nn.TokenReduction, skillkern.nn.FILIPLoss)


@dataclass(frozen=True)
class TaskSpec:
    """What the model needs to know about a task: its kind and, to classify, its classes."""
    name: str
    kind: str            # "classify" | "retrieve"
    num_classes: int = 0

    @property
    def modalities(self) -> tuple[str, ...]:
        return TASK_MODALITIES[self.name]


def default_specs(num_classes: dict | None = None) -> dict[str, TaskSpec]:
    """Every benchmark task; classification tasks get num_classes[name] (default 2)."""
    num_classes = num_classes or {}
    return {t: TaskSpec(t, k, num_classes.get(t, 2) if k == "classify" else 0) for t, k in TASK_KINDS.items()}


def specs_from_tasks(tasks: dict) -> dict[str, TaskSpec]:
    """TaskSpecs of model.data Task objects (name, kind, num_classes)."""
    out = {}
    for name, t in tasks.items():
        if name not in TASK_MODALITIES:
            raise ValueError(f"specs_from_tasks: unknown task {name!r}; the model knows {sorted(TASK_MODALITIES)}")
        if t.kind != TASK_KINDS[name]:
            raise ValueError(f"specs_from_tasks: task {name!r} has kind {t.kind!r}, expected {TASK_KINDS[name]!r}")
        out[name] = TaskSpec(name, t.kind, int(t.num_classes or 0))
    return out


class SkillNetWukong(nn.Module):
    """forward(task, batch, process_group=None) -> {"loss", "value", "tokens"}.

    batch: the task's tensors as model/data gives them (text_cls: ids, mask, label; image_text /
    sound_text / video_text: x, ids, mask; code_text: x_ids, x_mask, ids, mask).
    loss: what to backpropagate (FILIP: the loss times the world size under a process group, so
    that DDP's gradient average gives the single-process gradient; see skillkern.filip_loss);
    value: the loss to log (the whole-batch value on every rank); tokens: positions encoded.
    """

    def __init__(self, cfg: ModelConfig, specs: dict[str, TaskSpec] | None = None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.specs = dict(specs if specs is not None else default_specs())
        if not self.specs:
            raise ValueError("SkillNetWukong: `specs` is empty: the model needs at least one task")
        for name, s in self.specs.items():
            if s.kind == "classify" and s.num_classes < 2:
                raise ValueError(f"SkillNetWukong: task {name!r} classifies into {s.num_classes} classes (need >= 2)")
        self.encoder = SkillNetEncoder(cfg)
        retrieve = [s for s in self.specs.values() if s.kind == "retrieve"]
        other = sorted({s.modalities[0] for s in retrieve})
        # projections without bias, as CLIP's and Wukong's: a bias is one vector added to every
        # token of every item; growing it makes all similarities alike (loss ln B) and shrinks
        # every gradient through the L2 norm by 1/|bias|, a collapse seen here from scratch
        # the text side's projection: one for every task, or one per task (cfg.text_proj_per_task)
        texts = {self.proj_key(s.name, "text") for s in retrieve}
        self.proj = nn.ModuleDict({m: nn.Linear(cfg.d_model, cfg.proj_dim, bias=False)
                                   for m in sorted(set(other) | texts)})
        self.reduce = nn.ModuleDict({m: skillkern.nn.TokenReduction(cfg.proj_dim, cfg.reduced_tokens, cfg.reduce_groups)
                                     for m in other if m in cfg.reduced_modalities})
        for red in self.reduce.values():
            # Wukong's layer pools x and scores LN(x): LN's bias shifts every position's scores
            # by one constant, which the softmax over positions cancels. Its true gradient is 0,
            # but its float gradient is rounding noise that Adam would turn into lr-sized random
            # steps, so it is not trained.
            red.norm.bias.requires_grad_(False)
        self.filip = nn.ModuleDict({s.name: skillkern.nn.FILIPLoss(cfg.temperature) for s in retrieve})
        self.cls_head = nn.ModuleDict({s.name: nn.Linear(cfg.d_model, s.num_classes)
                                       for s in self.specs.values() if s.kind == "classify"})
        for lin in [*self.proj.values(), *self.cls_head.values()]:
            nn.init.trunc_normal_(lin.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        self.backend = "auto"
        self._locked: list[tuple[Tensor, list[int], Tensor]] = []

    # ------------------------------------------------------------------ backend
    def set_backend(self, backend: str) -> list[str]:
        """Route every fused layer to `backend`; returns the names of the modules set."""
        if backend not in BACKENDS:
            raise ValueError(f"set_backend: `backend` must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        names = []
        for name, mod in self.named_modules():
            if isinstance(mod, FUSED_MODULES):
                mod.backend = backend
                names.append(name)
        return names

    # ------------------------------------------------------------------ pieces
    def _spec(self, task: str) -> TaskSpec:
        if task not in self.specs:
            raise ValueError(f"SkillNetWukong: unknown `task` {task!r}; this model has {sorted(self.specs)}")
        return self.specs[task]

    @staticmethod
    def side_inputs(task: str, batch: dict) -> list[tuple[str, dict]]:
        """[(modality, inputs)] of the sides of a batch, the non-text side first."""
        mods = TASK_MODALITIES[task]
        _need(task, batch, ("ids", "mask"))
        text = {"ids": batch["ids"], "mask": batch["mask"]}
        if mods == ("text",):
            return [("text", text)]
        if mods[0] == "code":
            _need(task, batch, ("x_ids", "x_mask"))
            return [("code", {"ids": batch["x_ids"], "mask": batch["x_mask"]}), ("text", text)]
        _need(task, batch, ("x",))
        return [(mods[0], {"x": batch["x"]}), ("text", text)]

    def encode(self, task: str, batch: dict) -> list[tuple[str, Tensor, Tensor | None]]:
        """Encode every side of a batch in one packed encoder call (LiT: the image side alone,
        without gradients). Returns [(modality, hidden (B, N, d), mask or None)]."""
        sides = self.side_inputs(task, batch)
        embedded = [(m, *self.encoder.embed(m, inp)) for m, inp in sides] if not self._lit_side(task) else None
        if embedded is None:  # LiT: locked image tower, computed apart and without a graph
            with torch.no_grad():
                x, m = self.encoder.embed("image", sides[0][1])
                img = self.encoder([(x, m, self.cfg.skills_for(task, "image"))])[0]
            x, m_t = self.encoder.embed("text", sides[1][1])
            txt = self.encoder([(x, m_t, self.cfg.skills_for(task, "text"))])[0]
            return [("image", img, m), ("text", txt, m_t)]
        hidden = self.encoder([(x, m, self.cfg.skills_for(task, mod)) for mod, x, m in embedded])
        return [(mod, h, m) for (mod, _, m), h in zip(embedded, hidden)]

    def proj_key(self, task: str, modality: str) -> str:
        """The key in self.proj of `modality`'s projection in `task`: the modality's own, except
        text's with cfg.text_proj_per_task, which is the task's own ("text_<task>")."""
        return f"text_{task}" if modality == "text" and self.cfg.text_proj_per_task else modality

    def _lit_side(self, task: str) -> bool:
        return self.cfg.lit and TASK_MODALITIES[task][0] == "image"

    def features(self, task: str, modality: str, hidden: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Wukong's token features: proj -> (cfg.reduced_modalities: [CLS] + TokenReduction of the
        rest) -> L2 norm. Returns ((B, n, proj_dim), mask or None), in the autocast dtype if any."""
        z = self.proj[self.proj_key(task, modality)](hidden)
        if modality in self.reduce:
            red = self.reduce[modality](z[:, 1:], None if mask is None else mask[:, 1:])
            z = torch.cat([z[:, :1], red.to(z.dtype)], 1)
            # the reduced tokens are real whenever the item has any real token ([CLS] always is)
            mask = None
        dtype = z.dtype
        if torch.is_autocast_enabled(z.device.type):
            dtype = torch.get_autocast_dtype(z.device.type)
        return F.normalize(z.float(), dim=-1).to(dtype), mask

    def retrieval_features(self, task: str, batch: dict) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """(other (B, n, D), its mask, text (B, L, D), text mask): the FILIP inputs."""
        return self._retrieval_features(self.encode(task, batch), task)

    def _retrieval_features(self, encoded, task: str):
        (m0, h0, k0), (m1, h1, k1) = encoded
        f0, k0 = self.features(task, m0, h0, k0)
        f1, k1 = self.features(task, m1, h1, k1)
        return f0, k0, f1, k1

    def classify_logits(self, task: str, batch: dict) -> Tensor:
        return self._logits(self.encode(task, batch), task)

    def _logits(self, encoded, task: str) -> Tensor:
        (_, h, _), = encoded
        return self.cls_head[task](h[:, 0])   # [CLS]: the tokenizer's first token

    # ------------------------------------------------------------------ forward
    def forward(self, task: str, batch: dict, process_group=None) -> dict:
        spec = self._spec(task)
        if spec.kind == "classify":
            _need(task, batch, ("label",))
        encoded = self.encode(task, batch)
        tokens = sum(h.shape[0] * h.shape[1] for _, h, _ in encoded)  # positions encoded, padding included
        if spec.kind == "classify":
            loss = F.cross_entropy(self._logits(encoded, task).float(), batch["label"])
            # under DDP each rank's local mean; DDP's gradient average makes it the global mean's
            return {"loss": loss, "value": loss.detach(), "tokens": tokens}
        f0, k0, f1, k1 = self._retrieval_features(encoded, task)
        loss = self.filip[task](f0, f1, k0, k1, process_group=process_group)
        world = torch.distributed.get_world_size(process_group) if process_group is not None else 1
        # `loss * 1` beside `loss.detach()` in one output makes torch.compile (2.14) drop the
        # loss's grad_fn: scale only under a process group
        return {"loss": loss * world if world > 1 else loss, "value": loss.detach(), "tokens": tokens}

    # ------------------------------------------------------------------ LiT
    def lock_image_tower(self) -> int:
        """Freeze what the image side reads (see the module docstring). Returns the number of
        frozen parameter elements. Call after loading weights and before building the optimiser."""
        if not any(TASK_MODALITIES[t][0] == "image" for t in self.specs):
            raise ValueError("lock_image_tower: `lit` needs the image_text task in the model")
        frozen = 0
        enc = self.encoder
        shared = [p for n, p in enc.named_parameters()
                  if not n.startswith(("text.", "sound.", "video.", "image.")) and not _is_skill_param(enc, n)]
        for p in [*shared, *enc.image.parameters(), *self.proj["image"].parameters(),
                  *self.reduce["image"].parameters()]:
            if p.requires_grad:
                p.requires_grad_(False)
                frozen += p.numel()
        locked = sorted({SKILL_ID[s] for t in self.specs if TASK_MODALITIES[t][0] == "image"
                         for s in self.cfg.skills_for(t, "image")})
        if not self._locked:  # hooks once, however often this is called (a resumed run calls it again)
            for ffn in enc.skill_layers():
                for p in (ffn.w1, ffn.w2, ffn.b1, ffn.b2):
                    if p is not None:
                        p.register_hook(_zero_rows_hook(locked))
                        self._locked.append((p, locked, None))
        self.snapshot_locked()
        return frozen + sum(p[rows].numel() for p, rows, _ in self._locked)

    @torch.no_grad()
    def snapshot_locked(self) -> None:
        """Remember the locked skills' current values (restore_locked puts them back)."""
        self._locked = [(p, rows, p.detach()[rows].clone()) for p, rows, _ in self._locked]

    @torch.no_grad()
    def restore_locked(self) -> None:
        """Put the locked skills back (AdamW's decoupled weight decay moves them otherwise)."""
        for p, rows, saved in self._locked:
            p[rows] = saved


def _is_skill_param(enc: SkillNetEncoder, name: str) -> bool:
    return ".ffn." in name and enc.blocks[int(name.split(".")[1])].skilled


def _zero_rows_hook(rows: list[int]):
    def hook(g: Tensor) -> Tensor:
        g = g.clone()
        g[rows] = 0
        return g
    return hook


def _need(task: str, batch: dict, keys) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"SkillNetWukong: a {task} `batch` needs {list(keys)}; missing {missing} "
                         f"(got {sorted(batch)})")
