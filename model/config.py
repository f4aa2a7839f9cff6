"""Configs of the SkillNet + Wukong model and of its trainer: dataclasses, presets, validation.

Two presets (PRESETS):
  tiny  the README's main job: d=128, 4 layers, trains on 2 CPU cores in minutes on the mini
        benchmark (32x32 images, 1 s of 16 kHz sound, 8-frame 32x32 video, 64-token code).
  base  SkillNet-base: BERT-base widths (d=768, 12 layers, 12 heads, d_ff=3072), a skill FFN in
        every layer as in SkillNet; inputs of the mini benchmark's sizes. The train-step
        benchmark sets Wukong's ViT-B/32 geometry on top (224x224 images, 49 patches -> 12).

Every field is checked by validate(); a bad value raises ValueError naming the field, and
from_overrides() turns `--set key=value` strings into typed fields (an unknown key is named).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from skillkern.ops._common import expect

MODALITIES = ("text", "image", "sound", "video", "code")
# Skill ids: one skill per modality, then the shared "general" skill (SkillNet's six skills;
# the ids are fixed so a checkpoint's skill banks mean the same thing under any task config).
SKILLS = MODALITIES + ("general",)
SKILL_ID = {name: i for i, name in enumerate(SKILLS)}

# The tasks of the mini benchmark (model/data) and the modalities each one encodes. A retrieval
# task pairs its non-text side (first) with Chinese text; text_cls classifies text.
TASK_MODALITIES = {
    "text_cls": ("text",),
    "image_text": ("image", "text"),
    "sound_text": ("sound", "text"),
    "video_text": ("video", "text"),
    "code_text": ("code", "text"),
}
TASK_KINDS = {"text_cls": "classify", "image_text": "retrieve", "sound_text": "retrieve",
              "video_text": "retrieve", "code_text": "retrieve"}

_ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "swiglu")  # skillkern's skill_ffn activations
BACKENDS = ("auto", "torch", "triton", "cuda")


@dataclass
class ModelConfig:
    """The encoder, its input embedders and the Wukong dual-encoder head."""
    preset: str = "tiny"
    # --- Transformer (pre-LayerNorm; attention and LayerNorms shared by every modality)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    activation: str = "gelu"
    # 1: a SkillFFN in every layer; 2: in every other layer (layers 1, 3, ... as in SkillNet-NLG),
    # a dense FFN shared by all modalities in the others
    skill_every: int = 1
    # each token's modality skill averaged with a shared general skill (k = 2 slots per token)
    general_skill: bool = True
    # per-task skill activation, overriding the default above:
    # {"image_text": {"image": ["image", "general"], "text": ["text"]}, ...}
    task_skills: dict = field(default_factory=dict)
    dropout: float = 0.0
    # --- text and code: Chinese BERT WordPiece ids (21,128 entries, Wukong's vocabulary)
    vocab_size: int = 21128
    max_text_len: int = 64
    # --- image: ViT patches of a square RGB image (uint8 in, scaled to [-1, 1])
    image_size: int = 32
    image_patch: int = 8      # 16 patches + [CLS] (base: 4, 64 patches)
    # --- sound: log-mel spectrogram computed in torch, cut into (mel x time) patches. The
    # default patch spans every mel band for 8 frames (80 ms): 12 time strips, as speech encoders
    # frame their input; a syllable (~200-300 ms) then lies across 3-4 strips that FILIP's token-
    # wise max can match to its character. AST's 16 x 16 squares cut each strip into 4 bands that
    # no token sees together (sound_text alone, 400 steps, val mean R@1: 16 x 16 0.010, 64 x 8
    # 0.165 / 0.067 over two seeds; both with every token kept; benchmarks/NOTES.md)
    sample_rate: int = 16000
    sound_samples: int = 16000
    n_fft: int = 400          # 25 ms windows at 16 kHz
    hop_length: int = 160     # 10 ms hop -> 101 frames per second
    n_mels: int = 64
    sound_patch_freq: int = 64
    sound_patch_time: int = 8
    # --- video: tubelet patches (video_tubelet frames x video_patch^2 pixels) + a temporal
    # embedding; tubelets of 2 frames halve the tokens of per-frame patches (ViViT)
    video_frames: int = 8
    video_size: int = 32
    video_patch: int = 8
    video_tubelet: int = 2
    # --- Wukong head: token projection, token reduction on the non-text side, FILIP loss
    proj_dim: int = 256
    reduced_tokens: int = 12
    reduce_groups: int = 8
    # the non-text modalities whose tokens TokenReduction pools (Wukong reduces image tokens);
    # the others keep every token, padding masked, for FILIP's token-wise max. Code and sound are
    # not reduced: a code identifier and a spoken syllable are each what matches one word or
    # character of the text, and pooling them into groups blurs that (code_text alone, 600 steps:
    # val mean_R, R@1/5/10 both ways, 0.157 reduced, 0.431 not; sound_text alone, 400 steps, 64 x 8
    # patches: val mean R@1 0.022 reduced, 0.165 not)
    reduced_modalities: tuple = ("image", "video")
    # one text projection per retrieval task instead of one shared by all: each task's text
    # tokens then meet only their own partner's space. Sharing one made the tasks pull the
    # text features four ways (the main job, val mean R@1 at step 1,200: code 0.019 -> 0.253,
    # video 0.005 -> 0.042, image 0.015 -> 0.023, sound 0.002 -> 0.005; benchmarks/NOTES.md)
    text_proj_per_task: bool = True
    temperature: float = 0.07
    # LiT: lock the image tower (every parameter the image side reads is frozen)
    lit: bool = False

    # ------------------------------------------------------------------ derived
    @property
    def num_skills(self) -> int:
        """6 with the general skill in use anywhere, else the 5 modality skills."""
        uses_general = self.general_skill or any(
            "general" in skills for per_mod in self.task_skills.values() for skills in per_mod.values())
        return len(SKILLS) if uses_general else len(MODALITIES)

    def skilled_layer(self, i: int) -> bool:
        """Layer i has a SkillFFN (else a dense FFN)."""
        return i % self.skill_every == self.skill_every - 1

    def skills_for(self, task: str, modality: str) -> tuple[str, ...]:
        """The skills a token of `modality` runs in `task` (averaged by SkillFFN)."""
        per_task = self.task_skills.get(task, {})
        if modality in per_task:
            return tuple(per_task[modality])
        return (modality, "general") if self.general_skill else (modality,)

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.image_patch) ** 2 + 1  # + [CLS]

    @property
    def sound_frames(self) -> int:
        return self.sound_samples // self.hop_length + 1  # torch.stft(center=True)

    @property
    def sound_grid(self) -> tuple[int, int]:
        return self.n_mels // self.sound_patch_freq, self.sound_frames // self.sound_patch_time

    @property
    def sound_tokens(self) -> int:
        f, t = self.sound_grid
        return f * t + 1

    @property
    def video_tokens(self) -> int:
        return self.video_frames // self.video_tubelet * (self.video_size // self.video_patch) ** 2 + 1

    def tokens(self, modality: str, text_len: int | None = None) -> int:
        """Positions per item that the encoder sees for `modality` (text/code: text_len)."""
        if modality in ("text", "code"):
            return text_len if text_len is not None else self.max_text_len
        return {"image": self.image_tokens, "sound": self.sound_tokens, "video": self.video_tokens}[modality]

    # ------------------------------------------------------------------ checks
    def validate(self) -> ModelConfig:
        c = "ModelConfig"
        _check_types(self, c)
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "vocab_size", "max_text_len", "image_size",
                     "image_patch", "sample_rate", "sound_samples", "n_fft", "hop_length", "n_mels",
                     "sound_patch_freq", "sound_patch_time", "video_frames", "video_size", "video_patch", "video_tubelet",
                     "proj_dim", "reduced_tokens", "reduce_groups"):
            expect(getattr(self, name) >= 1, c, name, f"must be a positive int, got {getattr(self, name)}")
        expect(self.d_model % self.n_heads == 0, c, "n_heads",
               f"must divide d_model={self.d_model}, got {self.n_heads}")
        expect((self.d_model // self.n_heads) % 2 == 0, c, "n_heads",
               f"gives head size {self.d_model // self.n_heads}; use an even head size")
        expect(self.activation in _ACTIVATIONS, c, "activation",
               f"must be one of {_ACTIVATIONS}, got {self.activation!r}")
        expect(self.skill_every in (1, 2), c, "skill_every",
               f"must be 1 (every layer) or 2 (every other layer), got {self.skill_every}")
        expect(self.skill_every <= self.n_layers, c, "skill_every",
               f"={self.skill_every} leaves no skill layer in {self.n_layers} layer(s)")
        expect(0.0 <= self.dropout < 1.0, c, "dropout", f"must be in [0, 1), got {self.dropout}")
        expect(self.temperature > 0, c, "temperature", f"must be > 0, got {self.temperature}")
        for size, patch, what in ((self.image_size, self.image_patch, "image"),
                                  (self.video_size, self.video_patch, "video")):
            expect(size % patch == 0, c, f"{what}_patch", f"={patch} must divide {what}_size={size}")
        expect(self.video_frames % self.video_tubelet == 0, c, "video_tubelet",
               f"={self.video_tubelet} must divide video_frames={self.video_frames}")
        expect(self.n_fft <= self.sound_samples, c, "n_fft",
               f"={self.n_fft} is longer than sound_samples={self.sound_samples}")
        expect(self.n_mels <= self.n_fft // 2 + 1, c, "n_mels",
               f"={self.n_mels} exceeds the {self.n_fft // 2 + 1} frequency bins of n_fft={self.n_fft}")
        empty = _empty_mel_filters(self.sample_rate, self.n_fft, self.n_mels)
        expect(not empty, c, "n_mels",
               f"={self.n_mels} is too many for n_fft={self.n_fft} at {self.sample_rate} Hz: "
               f"mel filter(s) {empty} fall between two FFT bins and would always be empty "
               "(lower n_mels or raise n_fft)")
        f, t = self.sound_grid
        expect(f >= 1, c, "sound_patch_freq", f"={self.sound_patch_freq} is larger than n_mels={self.n_mels}")
        expect(t >= 1, c, "sound_patch_time",
               f"={self.sound_patch_time} is longer than the {self.sound_frames} frames")
        expect(self.proj_dim % self.reduce_groups == 0, c, "reduce_groups",
               f"={self.reduce_groups} must divide proj_dim={self.proj_dim} (TokenReduction's grouped 1x1 convs)")
        expect(all(m in ("image", "sound", "video", "code") for m in self.reduced_modalities), c,
               "reduced_modalities", f"may name image, sound, video and code only, got {self.reduced_modalities!r}")
        expect(isinstance(self.task_skills, dict), c, "task_skills",
               f"must be a dict task -> {{modality: [skills]}}, got {type(self.task_skills).__name__}")
        for task, per_mod in self.task_skills.items():
            expect(task in TASK_MODALITIES, c, "task_skills",
                   f"names unknown task {task!r}; tasks: {sorted(TASK_MODALITIES)}")
            expect(isinstance(per_mod, dict), c, "task_skills", f"[{task!r}] must be a dict modality -> [skills]")
            for mod, skills in per_mod.items():
                expect(mod in TASK_MODALITIES[task], c, "task_skills",
                       f"[{task!r}] names modality {mod!r}, but {task} encodes {TASK_MODALITIES[task]}")
                ok = (isinstance(skills, (list, tuple)) and len(skills) > 0
                      and all(s in SKILLS for s in skills) and len(set(skills)) == len(skills))
                expect(ok, c, "task_skills", f"[{task!r}][{mod!r}] must be a non-empty list of distinct "
                       f"skills from {SKILLS}, got {skills!r}")
        return self


@dataclass
class TrainConfig:
    """The trainer: data, schedule, optimiser, precision, checkpoints, logging."""
    run_name: str = "tiny"
    runs_dir: str = "runs"
    data_root: str = ""          # "" = model.data's default location
    data_size: str = "mini"      # "mini" (the benchmark) or "tiny" (smoke tests)
    tasks: tuple = ()            # () = every task whose data exists
    # sampling weight per task (missing = 1): one task per step, drawn from a seeded generator
    task_weights: dict = field(default_factory=dict)
    # tiny on 2 CPU cores: ~0.23 s a step (0.14-0.4 s by task), so 1,800 steps are ~7 minutes,
    # which with the data build (~25 s) and the evaluations keeps the main job at ~8.5 minutes
    # (measured: 512 s on a fresh data root, 410 s of it training). More steps learn more
    # (1,200 -> 1,800: test mean R@1 2-3.5x -> 2-5.5x chance); the 10-minute budget bounds them
    steps: int = 1800
    batch_size: int = 32         # global batch per optimiser step (all ranks, all micro-steps)
    grad_accum: int = 1          # micro-steps per optimiser step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1    # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 60
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.98)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0       # max global grad norm; 0 = off
    seed: int = 0
    backend: str = "auto"        # skillkern backend of every fused layer
    amp: bool = True             # bf16 autocast on a GPU (ignored on CPU: fp32)
    eval_every: int = 600        # val evaluation every N steps and at the last (0 = none; test at the end)
    eval_batch: int = 256
    ckpt_every: int = 200        # and always at the last step
    keep_ckpts: int = 2
    log_every: int = 50
    init_from: str = ""          # a model.safetensors to start from (e.g. for LiT)

    def validate(self) -> TrainConfig:
        c = "TrainConfig"
        _check_types(self, c)
        for name in ("steps", "batch_size", "grad_accum", "eval_batch", "ckpt_every", "keep_ckpts", "log_every"):
            expect(getattr(self, name) >= 1, c, name, f"must be a positive int, got {getattr(self, name)}")
        expect(self.eval_every >= 0, c, "eval_every", f"must be >= 0, got {self.eval_every}")
        expect(0 <= self.warmup_steps < self.steps, c, "warmup_steps",
               f"must be in [0, steps={self.steps}), got {self.warmup_steps}")
        expect(self.lr > 0, c, "lr", f"must be > 0, got {self.lr}")
        expect(0.0 <= self.min_lr_ratio <= 1.0, c, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        expect(self.weight_decay >= 0, c, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        expect(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), c, "betas",
               f"must be two floats in [0, 1), got {self.betas}")
        expect(self.adam_eps > 0, c, "adam_eps", f"must be > 0, got {self.adam_eps}")
        expect(self.grad_clip >= 0, c, "grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")
        expect(self.backend in BACKENDS, c, "backend", f"must be one of {BACKENDS}, got {self.backend!r}")
        expect(self.data_size in ("mini", "tiny"), c, "data_size",
               f"must be 'mini' or 'tiny', got {self.data_size!r}")
        expect(self.batch_size % self.grad_accum == 0, c, "grad_accum",
               f"={self.grad_accum} must divide batch_size={self.batch_size}")
        plain = (bool(self.run_name) and not any(ch in self.run_name for ch in "/\\")
                 and self.run_name not in (".", ".."))
        expect(plain, c, "run_name", f"must be a plain folder name, got {self.run_name!r}")
        for t in self.tasks:
            expect(t in TASK_MODALITIES, c, "tasks", f"names unknown task {t!r}; tasks: {sorted(TASK_MODALITIES)}")
        for t, w in self.task_weights.items():
            expect(t in TASK_MODALITIES, c, "task_weights",
                   f"names unknown task {t!r}; tasks: {sorted(TASK_MODALITIES)}")
            number = isinstance(w, (int, float)) and not isinstance(w, bool)
            expect(number and w >= 0 and math.isfinite(w), c, "task_weights",
                   f"[{t!r}] must be a finite number >= 0, got {w!r}")
        return self


def _empty_mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> list[int]:
    """Indices of the HTK-mel triangular filters (model.skillnet.mel_filterbank) that contain no
    FFT bin strictly inside their (lower, upper) edges."""
    mel_max = 2595.0 * math.log10(1.0 + (sample_rate / 2) / 700.0)
    edges = [700.0 * (10 ** (mel_max * i / (n_mels + 1) / 2595.0) - 1.0) for i in range(n_mels + 2)]
    step = sample_rate / n_fft  # bin spacing, Hz
    out = []
    for m in range(n_mels):
        lo, hi = edges[m], edges[m + 2]
        first = math.floor(lo / step) + 1  # the first bin above lo
        if first * step >= hi:
            out.append(m)
    return out


def _check_types(cfg, cls: str) -> None:
    """Every field has its default's type (ints accepted for floats)."""
    for f in dataclasses.fields(cfg):
        v, default = getattr(cfg, f.name), _default(f)
        want = type(default)
        ok = isinstance(v, want) and not (want is int and isinstance(v, bool))
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            setattr(cfg, f.name, float(v))
            ok = True
        if want is tuple and isinstance(v, list):
            setattr(cfg, f.name, tuple(v))
            ok = True
        expect(ok, cls, f.name, f"must be {want.__name__}, got {type(v).__name__} {v!r}")


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


PRESETS = {
    "tiny": dict(preset="tiny"),
    "base": dict(preset="base", d_model=768, n_layers=12, n_heads=12, d_ff=3072, dropout=0.1, image_patch=4),
}
# Trainer defaults per preset: the tiny main job must finish in minutes on 2 CPU cores.
TRAIN_PRESETS = {
    "tiny": dict(run_name="tiny"),
    "base": dict(run_name="base", lr=2e-4, batch_size=128, steps=2000, warmup_steps=200, ckpt_every=500),
}


def model_config(preset: str = "tiny", **overrides) -> ModelConfig:
    """A preset with field overrides, validated."""
    if preset not in PRESETS:
        raise ValueError(f"model_config: `preset` must be one of {sorted(PRESETS)}, got {preset!r}")
    return _build(ModelConfig, {**PRESETS[preset], **overrides}).validate()


def train_config(preset: str = "tiny", **overrides) -> TrainConfig:
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"train_config: `preset` must be one of {sorted(TRAIN_PRESETS)}, got {preset!r}")
    return _build(TrainConfig, {**TRAIN_PRESETS[preset], **overrides}).validate()


def _build(cls, values: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            raise ValueError(f"{cls.__name__}: unknown field `{k}`; fields: {sorted(names)}")
    return cls(**values)


def parse_overrides(items: list[str]) -> tuple[dict, dict]:
    """`key=value` strings -> (ModelConfig fields, TrainConfig fields). Values are JSON when they
    parse as JSON (numbers, true/false, lists, dicts), else plain strings."""
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    model, train = {}, {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set: `{item}` must look like key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if key in model_names:
            model[key] = value
        elif key in train_names:
            train[key] = value
        else:
            raise ValueError(f"--set: unknown field `{key}`; model fields: {sorted(model_names)}; "
                             f"train fields: {sorted(train_names)}")
    return model, train


def to_dict(cfg) -> dict:
    """The config as plain JSON values (tuples as lists), as a saved config.json reads back."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))
