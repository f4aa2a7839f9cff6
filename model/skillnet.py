"""SkillNet encoder: one Transformer for text, image, sound, video and code (Dai et al. 2022).

    tokens of a modality --embedder--> (B, N, d) --> L x [ x += Attn(LN(x));  x += FFN(LN(x), skills) ]
                                                  --> LN --> (B, N, d)

Attention and LayerNorms are shared by every modality. The FFN of a skill layer is a
skillkern.nn.SkillFFN bank of E skills (one per modality, plus a shared "general" skill): each
token runs only the skills its task gives its modality (ModelConfig.skills_for), averaged when
there are several (SkillFFN's k slots; padding tokens get no slot, so they cost nothing).
Layers without skills (skill_every=2) have one dense FFN for everyone.

Several streams (e.g. the image side and the text side of a retrieval batch) go through the
encoder in ONE call: attention runs per stream (their lengths differ), while every per-token
part (LayerNorms, residuals, the FFN) runs on all streams' tokens packed into one (T, d)
matrix, so a skill layer is one grouped SkillFFN call over the tokens of several skills, the
case skillkern's fused kernel is built for.

Each embedder ends in its own LayerNorm (BERT's embedding LayerNorm, CLIP's ln_pre): the
residual stream starts at unit scale per feature. Without it the tokens start at the 0.02 scale
of their initialisation, and in the first ~20 AdamW steps the shared biases (lr 1e-3 a step)
outgrew them: every token's output became one common vector and the contrastive losses sat at
ln(batch) with vanishing gradients (measured on the tiny preset).

Embedders (model inputs as model/data gives them):
  text, code  Chinese BERT WordPiece ids (B, L) + bool mask: one token table (both are
              WordPiece text), learned positions, a per-modality type vector
  image       (B, 3, H, W) uint8 -> [CLS] + ViT patches (Conv2d stride p) + positions
  sound       (B, S) float waveform -> log-mel spectrogram computed in torch (STFT, HTK mel
              filterbank, log, per-item standardisation) -> [CLS] + (mel x time) patches
              (default: every mel band x 8 frames, time strips as speech encoders use)
  video       (B, F, 3, H, W) uint8 -> [CLS] + tubelet patches (t frames x p x p, ViViT) +
              spatial positions + a temporal embedding per time step
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import skillkern
from model.config import MODALITIES, SKILL_ID, ModelConfig
from skillkern.ops.skill_ffn.reference import activation_ref
from skillkern.ops._common import expect

# Init scale of every Linear / embedding (BERT's and ViT's 0.02).
INIT_STD = 0.02


def _trunc_normal_(t: Tensor) -> None:
    nn.init.trunc_normal_(t, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)


# ----------------------------------------------------------------------------- embedders


class TokenEmbed(nn.Module):
    """WordPiece ids (B, L) int64 -> (B, L, d): token table + learned positions + type vector.
    One table for text and code (both WordPiece); the type vector says which modality."""

    def __init__(self, cfg: ModelConfig, modalities=("text", "code")):
        super().__init__()
        self.modalities = tuple(modalities)
        self.max_len = cfg.max_text_len
        self.vocab_size = cfg.vocab_size
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Parameter(torch.empty(cfg.max_text_len, cfg.d_model))
        self.modality_vec = nn.ParameterDict({m: nn.Parameter(torch.empty(cfg.d_model)) for m in self.modalities})
        self.norm = nn.LayerNorm(cfg.d_model)
        for p in (self.tok.weight, self.pos, *self.modality_vec.values()):
            _trunc_normal_(p)

    def forward(self, ids: Tensor, mask: Tensor, modality: str) -> tuple[Tensor, Tensor]:
        where = f"SkillNet {modality} input"
        expect(ids.dim() == 2 and not ids.is_floating_point(), where, "ids",
               f"must be integer token ids (B, L), got {ids.dtype} {tuple(ids.shape)}")
        expect(ids.shape[1] <= self.max_len, where, "ids",
               f"has {ids.shape[1]} tokens per item; the model takes max_text_len={self.max_len}")
        expect(mask.dtype == torch.bool and mask.shape == ids.shape, where, "mask",
               f"must be a bool tensor of the ids' shape {tuple(ids.shape)}")
        x = self.tok(ids) + self.pos[: ids.shape[1]] + self.modality_vec[modality]
        return self.norm(x), mask


class ImageEmbed(nn.Module):
    """(B, 3, H, W) uint8 -> [CLS] + (H/p * W/p) patch tokens (B, 1 + P, d), ViT-style."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.size, self.patch = cfg.image_size, cfg.image_patch
        self.proj = nn.Conv2d(3, cfg.d_model, cfg.image_patch, stride=cfg.image_patch)
        self.cls = nn.Parameter(torch.empty(cfg.d_model))
        self.pos = nn.Parameter(torch.empty(cfg.image_tokens, cfg.d_model))
        self.norm = nn.LayerNorm(cfg.d_model)
        for p in (self.proj.weight, self.cls, self.pos):
            _trunc_normal_(p)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        expect(x.dim() == 4 and tuple(x.shape[1:]) == (3, self.size, self.size), "SkillNet image input", "x",
               f"must be (B, 3, {self.size}, {self.size}) (image_size={self.size}), got {tuple(x.shape)}")
        x = _pixels(x, self.proj.weight.dtype)
        t = self.proj(x).flatten(2).transpose(1, 2)                          # (B, P, d)
        t = torch.cat([self.cls.to(t.dtype).expand(t.shape[0], 1, -1), t], 1)
        return self.norm(t + self.pos), None


def _pixels(x: Tensor, dtype) -> Tensor:
    """uint8 [0, 255] -> [-1, 1] (mean 0.5, std 0.5 per channel); float input is taken as [0, 1]."""
    x = x.to(dtype) / 255.0 if x.dtype == torch.uint8 else x.to(dtype)
    return (x - 0.5) / 0.5


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filters, equally spaced on the HTK mel scale
    mel(f) = 2595 log10(1 + f / 700) from 0 Hz to Nyquist, peak 1 (no area normalisation)."""
    n_freqs = n_fft // 2 + 1
    freqs = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)
    mel_max = 2595.0 * math.log10(1.0 + (sample_rate / 2) / 700.0)
    mels = torch.linspace(0.0, mel_max, n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)                             # n_mels + 2 edges
    lower, center, upper = hz[:-2], hz[1:-1], hz[2:]
    up = (freqs[:, None] - lower) / (center - lower)
    down = (upper - freqs[:, None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(torch.float32)


class LogMel(nn.Module):
    """(B, S) waveform -> (B, n_mels, frames) standardised log-mel spectrogram, in fp32.

    |STFT|^2 (Hann window n_fft, hop, centred: frames = S // hop + 1) -> mel filterbank ->
    log(. + 1e-6) -> per item (x - mean) / std: loudness differences between the clips would
    otherwise dominate the first layer's inputs."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop_length
        # buffers, not parameters: fixed transforms, rebuilt from the config (not checkpointed)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("fbank", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        with torch.autocast(wave.device.type, enabled=False):  # STFT and log in fp32
            spec = torch.stft(wave.float(), self.n_fft, self.hop, window=self.window, center=True,
                              return_complex=True)                            # (B, F, T)
            power = spec.real.square() + spec.imag.square()
            mel = torch.matmul(self.fbank.t(), power)                          # (B, M, T)
            logmel = torch.log(mel + 1e-6)
            mean = logmel.mean(dim=(1, 2), keepdim=True)
            std = logmel.std(dim=(1, 2), keepdim=True)
            return (logmel - mean) / (std + 1e-5)


class SoundEmbed(nn.Module):
    """(B, S) float waveform -> [CLS] + (n_mels/pf x frames/pt) log-mel patch tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.samples = cfg.sound_samples
        self.grid = cfg.sound_grid
        self.patch = (cfg.sound_patch_freq, cfg.sound_patch_time)
        self.logmel = LogMel(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels)
        self.proj = nn.Conv2d(1, cfg.d_model, self.patch, stride=self.patch)
        self.cls = nn.Parameter(torch.empty(cfg.d_model))
        self.pos = nn.Parameter(torch.empty(cfg.sound_tokens, cfg.d_model))
        self.norm = nn.LayerNorm(cfg.d_model)
        for p in (self.proj.weight, self.cls, self.pos):
            _trunc_normal_(p)
        nn.init.zeros_(self.proj.bias)

    def forward(self, wave: Tensor) -> tuple[Tensor, None]:
        expect(wave.dim() == 2 and wave.shape[1] == self.samples and wave.is_floating_point(),
               "SkillNet sound input", "x", f"must be a float waveform (B, {self.samples}) (sound_samples), "
               f"got {wave.dtype} {tuple(wave.shape)}")
        spec = self.logmel(wave)                                               # (B, M, T)
        spec = spec[:, : self.grid[0] * self.patch[0], : self.grid[1] * self.patch[1]]  # whole patches
        t = self.proj(spec.unsqueeze(1).to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.to(t.dtype).expand(t.shape[0], 1, -1), t], 1)
        return self.norm(t + self.pos), None


class VideoEmbed(nn.Module):
    """(B, F, 3, H, W) uint8 -> [CLS] + F/t x (H/p * W/p) tubelet tokens (ViViT's tubelet
    embedding: a Conv3d over t frames x p x p pixels; t = 1 is plain per-frame patches), each
    with its spatial position and its time step's temporal embedding added."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.frames, self.size, self.tubelet = cfg.video_frames, cfg.video_size, cfg.video_tubelet
        n_patch = (cfg.video_size // cfg.video_patch) ** 2
        kernel = (cfg.video_tubelet, cfg.video_patch, cfg.video_patch)
        self.proj = nn.Conv3d(3, cfg.d_model, kernel, stride=kernel)
        self.cls = nn.Parameter(torch.empty(cfg.d_model))
        self.pos = nn.Parameter(torch.empty(n_patch, cfg.d_model))                              # spatial
        self.time = nn.Parameter(torch.empty(cfg.video_frames // cfg.video_tubelet, cfg.d_model))  # temporal
        self.norm = nn.LayerNorm(cfg.d_model)
        for p in (self.proj.weight, self.cls, self.pos, self.time):
            _trunc_normal_(p)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        want = (self.frames, 3, self.size, self.size)
        expect(x.dim() == 5 and tuple(x.shape[1:]) == want, "SkillNet video input", "x",
               f"must be (B, {', '.join(map(str, want))}) (video_frames, video_size), got {tuple(x.shape)}")
        B = x.shape[0]
        v = _pixels(x, self.proj.weight.dtype).transpose(1, 2)                 # (B, 3, F, H, W)
        t = self.proj(v)                                                        # (B, d, F/t, H/p, W/p)
        t = t.flatten(3).permute(0, 2, 3, 1)                                    # (B, F/t, P, d)
        t = (t + self.pos + self.time[:, None, :]).reshape(B, -1, t.shape[-1])  # time-major
        return self.norm(torch.cat([self.cls.to(t.dtype).expand(B, 1, -1), t], 1)), None


# ----------------------------------------------------------------------------- Transformer


class Attention(nn.Module):
    """Multi-head self-attention (torch SDPA: flash / memory-efficient kernels on a GPU)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        B, N, d = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # mask (B, N), True = real key; padded queries still see the real keys (finite, unused)
        am = None if mask is None else mask[:, None, None, :]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=am,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(o.transpose(1, 2).reshape(B, N, d))


class DenseFFN(nn.Module):
    """The FFN of a layer without skills: one for every modality."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h1 = 2 * cfg.d_ff if cfg.activation == "swiglu" else cfg.d_ff
        self.fc1 = nn.Linear(cfg.d_model, h1)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.activation = cfg.activation

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(activation_ref(self.fc1(x), self.activation))


class Block(nn.Module):
    """Pre-LN Transformer layer over packed streams (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, skilled: bool):
        super().__init__()
        self.skilled = skilled
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        if skilled:
            self.ffn = skillkern.nn.SkillFFN(cfg.d_model, cfg.d_ff, cfg.num_skills, cfg.activation)
            _init_skills_alike(self.ffn)
        else:
            self.ffn = DenseFFN(cfg)
            for lin in (self.ffn.fc1, self.ffn.fc2):
                _trunc_normal_(lin.weight)
                nn.init.zeros_(lin.bias)
        self.drop = nn.Dropout(cfg.dropout)
        for lin in (self.attn.qkv, self.attn.out):
            _trunc_normal_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, h: Tensor, shapes: list[tuple[int, int]], masks: list, skill_ids: Tensor) -> Tensor:
        a = self.ln1(h)
        parts = a.split([b * n for b, n in shapes])
        att = [self.attn(p.view(b, n, -1), m).reshape(b * n, -1) for p, (b, n), m in zip(parts, shapes, masks)]
        h = h + self.drop(att[0] if len(att) == 1 else torch.cat(att))
        f = self.ln2(h)
        return h + self.drop(self.ffn(f, skill_ids) if self.skilled else self.ffn(f))


def _init_skills_alike(ffn: nn.Module) -> None:
    """Every skill starts as the same dense FFN (SkillNet initialises its skills from one dense
    FFN, so training starts from a dense Transformer and the skills diverge from there)."""
    with torch.no_grad():
        for w in (ffn.w1, ffn.w2):
            _trunc_normal_(w[0])
            w.copy_(w[0].expand_as(w))
        for b in (ffn.b1, ffn.b2):
            if b is not None:
                b.zero_()


class SkillNetEncoder(nn.Module):
    """The shared encoder. embed(modality, inputs) -> (x (B, N, d), mask (B, N) or None);
    forward(streams) with streams = [(x, mask, skills)] -> [(B, N, d)] per stream, where
    skills is a tuple of skill names run by every real token of that stream."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.text = TokenEmbed(cfg)          # text and code
        self.image = ImageEmbed(cfg)
        self.sound = SoundEmbed(cfg)
        self.video = VideoEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg, cfg.skilled_layer(i)) for i in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def embedder(self, modality: str) -> nn.Module:
        if modality not in MODALITIES:
            raise ValueError(f"SkillNetEncoder: `modality` must be one of {MODALITIES}, got {modality!r}")
        return self.text if modality in ("text", "code") else getattr(self, modality)

    def embed(self, modality: str, inputs: dict) -> tuple[Tensor, Tensor | None]:
        """inputs: {"ids", "mask"} for text and code, {"x"} for image, sound and video."""
        emb = self.embedder(modality)
        if modality in ("text", "code"):
            return emb(inputs["ids"], inputs["mask"], modality)
        return emb(inputs["x"])

    def skill_ids(self, skills: tuple[str, ...], mask: Tensor | None, B: int, N: int, device) -> Tensor:
        """(B * N, k) skill ids of a stream: every real token runs `skills`, padding none (-1)."""
        if max(SKILL_ID[s] for s in skills) >= self.cfg.num_skills:
            raise ValueError(f"SkillNetEncoder: skills {skills} need the general skill, which this "
                             f"model (num_skills={self.cfg.num_skills}) does not have")
        ids = torch.tensor([SKILL_ID[s] for s in skills], dtype=torch.int64).to(device, non_blocking=True)
        out = ids.expand(B * N, len(skills))
        if mask is not None:
            out = torch.where(mask.reshape(-1, 1), out, -1)
        return out

    def forward(self, streams: list[tuple[Tensor, Tensor | None, tuple[str, ...]]]) -> list[Tensor]:
        d = self.cfg.d_model
        shapes = [tuple(x.shape[:2]) for x, _, _ in streams]
        masks = [m for _, m, _ in streams]
        k = max(len(s) for _, _, s in streams)
        ids = []
        for (x, m, skills), (B, N) in zip(streams, shapes):
            sid = self.skill_ids(skills, m, B, N, x.device)
            if sid.shape[1] < k:  # fewer skills than another stream: pad with empty slots
                sid = torch.cat([sid, sid.new_full((B * N, k - sid.shape[1]), -1)], 1)
            ids.append(sid)
        skill_ids = ids[0] if len(ids) == 1 else torch.cat(ids)
        h = torch.cat([x.reshape(-1, d) for x, _, _ in streams]) if len(streams) > 1 else streams[0][0].reshape(-1, d)
        for blk in self.blocks:
            h = blk(h, shapes, masks, skill_ids)
        h = self.norm(h)
        return [p.view(B, N, d) for p, (B, N) in zip(h.split([B * N for B, N in shapes]), shapes)]

    def encode(self, modality: str, inputs: dict, skills: tuple[str, ...]) -> tuple[Tensor, Tensor | None]:
        """One stream: embed and encode. Returns (hidden (B, N, d), mask or None)."""
        x, m = self.embed(modality, inputs)
        return self([(x, m, skills)])[0], m

    def skill_layers(self) -> list[nn.Module]:
        return [b.ffn for b in self.blocks if b.skilled]
