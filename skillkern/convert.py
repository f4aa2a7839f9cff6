"""Drop-in conversion of the dense FFN blocks of existing PyTorch models to skill FFNs.

SkillNet's recipe: take a trained dense Transformer, copy each FFN into every skill (so the
converted model computes exactly what the dense one did), then train with each token routed to
the skills of its modality / task.

    model = skillkern.convert.to_skill_ffn(model, num_skills=5)          # in place
    with skillkern.convert.set_skill_ids(model, modality_ids):           # (B,) or (B, L) ids
        out = model(batch)

Supported blocks:
  * torch.nn.TransformerEncoderLayer (either norm_first, batch_first or not, relu / gelu or any
    activation equal to one of skillkern's): the layer is replaced by a SkillEncoderLayer that
    keeps its attention, norms and dropouts and runs SkillFFN in place of linear1 / linear2.
  * Hugging Face layers built like BERT's (also RoBERTa, ELECTRA, ViT before transformers 5,
    ...): a layer with `.intermediate` (a `dense` nn.Linear and an `intermediate_act_fn`) and
    `.output` (a `dense` nn.Linear back to the hidden size). `.intermediate` becomes a
    SkillFFNBlock that computes the whole FFN and `.output.dense` an nn.Identity, so the layer's
    own code (dropout, residual, LayerNorm) runs unchanged.
  * MLP modules whose forward is fc2(act(fc1(x))) (ViT in transformers 5, CLIP, SigLIP, ...):
    children `fc1`, `fc2` (nn.Linear) and the activation (`activation_fn`, `act_fn`, `act` or
    `activation`) and nothing else; the forward is checked on a random input before converting.
    The module is replaced by a SkillFFNBlock.

What changes: SkillFFN runs dense -> act -> dense as fused GEMMs, so the dropout that
nn.TransformerEncoderLayer applies to the hidden activation (between the activation and
linear2; `dropout` of the layer) is not applied (a warning says so when p > 0); the dropout
after the FFN is kept. An nn.TransformerEncoder whose layers are converted no longer takes
its nested-tensor fast path (the converted layers cannot take nested tensors), so positions
masked by src_key_padding_mask hold computed values instead of that path's zeros.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from skillkern.ops.skill_ffn.module import SkillFFN
from skillkern.ops.skill_ffn.reference import activation_ref
from skillkern.ops._common import expect

__all__ = ["SkillEncoderLayer", "SkillFFNBlock", "set_skill_ids", "skill_ffn_blocks", "to_skill_ffn"]

SUPPORTED = ("nn.TransformerEncoderLayer; a Hugging Face layer with .intermediate (dense, "
             "intermediate_act_fn) and .output.dense (BERT-style); an MLP module computing "
             "fc2(act(fc1(x))) (ViT-, CLIP-style)")
_ACT_ATTRS = ("activation_fn", "act_fn", "act", "activation")  # names HF gives an MLP's activation
# Activations a dense FFN may use: skillkern's element-wise ones (swiglu needs a gated fc1).
_PROBE_ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


# ----------------------------------------------------------------------------- modules


class SkillFFNBlock(nn.Module):
    """x (..., d) -> SkillFFN(x, skill ids of each token): the FFN of one converted layer.

    The ids come from set_skill_ids(model, ids), given per sequence or per token and
    broadcast here to x's tokens; `batch_first` says whether x is (B, L, d) or (L, B, d) (an
    unbatched (L, d) input is a batch of one). With a general skill (SkillNet's skill that
    every token uses), the general skill's id `general_id` is appended to every token's slots
    and the active skills are averaged.
    """

    def __init__(self, ffn: SkillFFN, batch_first: bool = True, general_id: int | None = None):
        super().__init__()
        self.ffn = ffn
        self.batch_first = batch_first
        self.general_id = general_id
        self.skill_ids: Tensor | None = None  # set by set_skill_ids; not a buffer (per batch)
        self.skill_weights: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        ids, weights = self.token_ids(x)
        return self.ffn(x, ids, weights)

    def token_ids(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The skill_ids (and skill_weights) for x's tokens: x.shape[:-1] + (k,)."""
        if self.skill_ids is None:
            raise RuntimeError("SkillFFNBlock: no skill ids set; call skillkern.convert.set_skill_ids("
                               "model, ids) (ids (B,) per sequence or (B, L) per token) before the forward")
        lead = tuple(x.shape[:-1])
        if len(lead) not in (1, 2):
            raise ValueError(f"SkillFFNBlock: input must be (B, L, d), (L, B, d) or (L, d), got {tuple(x.shape)}")
        unbatched = len(lead) == 1
        if unbatched:
            B, L = 1, lead[0]
        else:
            B, L = lead if self.batch_first else (lead[1], lead[0])
        ids = _broadcast(self.skill_ids, B, L, "skill_ids", x.device)
        weights = None if self.skill_weights is None else _broadcast(self.skill_weights, B, L, "skill_weights", x.device)
        if self.general_id is not None:
            ids = torch.cat([ids, torch.full_like(ids[..., :1], self.general_id)], -1)
        if not self.batch_first and not unbatched:
            ids = ids.transpose(0, 1)
            weights = None if weights is None else weights.transpose(0, 1)
        if unbatched:
            ids = ids[0]
            weights = None if weights is None else weights[0]
        return ids.contiguous(), (None if weights is None else weights.contiguous())

    def extra_repr(self) -> str:
        return f"batch_first={self.batch_first}, general_id={self.general_id}"


def _broadcast(t: Tensor, B: int, L: int, name: str, device) -> Tensor:
    """(B,) -> (B, L, 1); (B, L') -> (B, L, 1); (B, L', k) -> (B, L, k), with L' in {1, L}."""
    shape = tuple(t.shape)
    if t.dim() == 1:
        t = t[:, None, None]
    elif t.dim() == 2:
        t = t[:, :, None]
    if t.shape[0] != B or t.shape[1] not in (1, L):
        raise ValueError(f"set_skill_ids: `{name}` has shape {shape} but the input holds {B} sequence(s) "
                         f"of {L} tokens; give (B,) = ({B},) per sequence, (B, L) = ({B}, {L}) per token "
                         f"or (B, L, k) / (B, 1, k) for k skills per token")
    return t.to(device).expand(B, L, t.shape[2])


class SkillEncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer with its FFN (linear1, activation, dropout, linear2) replaced
    by a SkillFFNBlock; attention, norms, dropout1 / dropout2, norm_first and batch_first are
    the original layer's modules and settings. forward takes the same arguments."""

    def __init__(self, layer: nn.TransformerEncoderLayer, ffn: SkillFFNBlock):
        super().__init__()
        self.self_attn = layer.self_attn
        self.norm1, self.norm2 = layer.norm1, layer.norm2
        self.dropout1, self.dropout2 = layer.dropout1, layer.dropout2
        self.norm_first = layer.norm_first
        self.ffn = ffn

    def forward(self, src: Tensor, src_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self.dropout2(self.ffn(self.norm2(x)))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self.dropout2(self.ffn(x)))
        return x

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                           need_weights=False, is_causal=is_causal)[0]
        return self.dropout1(x)


# ----------------------------------------------------------------------------- conversion


def _activation_name(fn, where: str) -> str:
    """Which of skillkern's activations `fn` computes, found by evaluating it: works for
    functions (F.gelu), modules (nn.GELU("tanh"), HF's GELUActivation) and lambdas alike."""
    z = torch.linspace(-6.0, 6.0, 481)  # gelu and gelu_tanh differ by up to 2e-4 here
    try:
        out = fn(z)
    except Exception as e:  # noqa: BLE001 - any failure means "not an element-wise activation"
        # raised inside the handler, so the probe's own exception stays attached as the context
        expect(False, "to_skill_ffn", "model", f"layer {where!r}: its activation {fn!r} could not be "
               f"evaluated on a float32 tensor ({type(e).__name__}: {e})")
    for name in _PROBE_ACTIVATIONS:
        if isinstance(out, Tensor) and out.shape == z.shape and torch.allclose(out, activation_ref(z, name), rtol=0, atol=1e-6):
            return name
    expect(False, "to_skill_ffn", "model", f"layer {where!r}: its activation {fn!r} is none of skillkern's "
           f"{_PROBE_ACTIVATIONS}; convert only the layers that use one (argument `layers`)")


def _mlp_parts(module: nn.Module):
    """(fc1, fc2, activation) of an MLP module made of exactly those, else None."""
    fc1, fc2 = getattr(module, "fc1", None), getattr(module, "fc2", None)
    if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
            and fc2.in_features == fc1.out_features and fc2.out_features == fc1.in_features):
        return None
    act_attr = next((a for a in _ACT_ATTRS if hasattr(module, a)), None)
    if act_attr is None or any(n not in ("fc1", "fc2", act_attr) for n, _ in module.named_children()):
        return None  # e.g. a dropout child: the forward does more than fc2(act(fc1(x)))
    return fc1, fc2, getattr(module, act_attr)


def _computes_ffn(module: nn.Module, fc1: nn.Linear, fc2: nn.Linear, act) -> bool:
    """Whether module(z) == fc2(act(fc1(z))) on a random z (the forward is not read, it is run)."""
    w = fc1.weight
    g = torch.Generator(device=w.device).manual_seed(0)
    z = torch.randn(2, 3, fc1.in_features, generator=g, device=w.device).to(w.dtype)
    try:
        with torch.no_grad():
            return torch.allclose(module(z), fc2(act(fc1(z))), rtol=1e-4, atol=1e-5)
    except Exception:  # noqa: BLE001 - a forward that needs other arguments is not a plain MLP
        return False


def _kind(module: nn.Module) -> str | None:
    """'torch' for an nn.TransformerEncoderLayer, 'hf' for a BERT-style layer, 'mlp' for an
    fc1 / act / fc2 module, else None."""
    if isinstance(module, nn.TransformerEncoderLayer):
        return "torch"
    inter, out = getattr(module, "intermediate", None), getattr(module, "output", None)
    if (isinstance(getattr(inter, "dense", None), nn.Linear) and hasattr(inter, "intermediate_act_fn")
            and isinstance(getattr(out, "dense", None), nn.Linear)
            and out.dense.in_features == inter.dense.out_features
            and out.dense.out_features == inter.dense.in_features):
        return "hf"
    parts = _mlp_parts(module)
    if parts is not None and _computes_ffn(module, *parts):
        return "mlp"
    return None


def _select(model: nn.Module, layers) -> list[tuple[str, nn.Module, str]]:
    """(qualified name, module, kind) of the blocks to convert, outermost first."""
    named = dict(model.named_modules())
    if layers is None or callable(layers):
        picked = [(n, m, k) for n, m in named.items() if (k := _kind(m)) and (layers is None or layers(n, m))]
    else:
        expect(not isinstance(layers, str), "to_skill_ffn", "layers", "must be an iterable of module names or a "
               f"callable (name, module) -> bool, got the string {layers!r} (write [{layers!r}])")
        picked = []
        for n in layers:
            expect(n in named, "to_skill_ffn", "layers", f"names {n!r}, which is not a module of `model`")
            k = _kind(named[n])
            expect(k is not None, "to_skill_ffn", "layers", f"names {n!r}, a {type(named[n]).__name__}, which is "
                   f"not a supported FFN block (supported: {SUPPORTED})")
            picked.append((n, named[n], k))
    # A converted layer's submodules are not converted again (a layer nested in another).
    out = []
    for n, m, k in picked:
        if not any(n.startswith(p + ".") or p == "" for p, _, _ in out):
            out.append((n, m, k))
    return out


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def to_skill_ffn(model: nn.Module, num_skills: int, *, general_skill: bool = False,
                 layers: Iterable[str] | Callable[[str, nn.Module], bool] | None = None,
                 batch_first: bool = True, backend: str = "auto") -> nn.Module:
    """Replace the dense FFN blocks of `model` by skill FFNs initialised from the dense weights.

    num_skills: skills per converted FFN (e.g. one per modality); every skill starts as a copy
        of the dense FFN, so outputs equal the dense model's for any ids until training moves
        the skills apart.
    general_skill: add one more skill (id num_skills) that every token uses besides its own
        (SkillNet's general skill); the token's skills are averaged.
    layers: which blocks to convert: None = every supported block; a list of qualified module
        names (e.g. ["encoder.layer.1", "encoder.layer.3"], SkillNet's every other layer); or
        a callable (name, module) -> bool.
    batch_first: whether the Hugging Face-style blocks see (B, L, d) hidden states (True, as
        in transformers) or (L, B, d); nn.TransformerEncoderLayer's own setting is used for it.
    backend: SkillFFN.backend of the new blocks ("auto", "torch", "triton", "cuda").

    Converts in place and returns the model (a new object only when `model` itself is an
    nn.TransformerEncoderLayer). Give skill ids with set_skill_ids(model, ids) before calling
    the model. Raises ValueError naming the argument: no supported block (`model`), a named
    layer that is missing or unsupported (`layers`), an activation skillkern lacks (`model`).
    """
    expect(isinstance(model, nn.Module), "to_skill_ffn", "model", f"must be an nn.Module, got {type(model).__name__}")
    expect(isinstance(num_skills, int) and not isinstance(num_skills, bool) and num_skills >= 1, "to_skill_ffn",
           "num_skills", f"must be a positive int, got {num_skills!r}")
    blocks = _select(model, layers)
    expect(len(blocks) > 0, "to_skill_ffn", "model", "has no FFN block to convert "
           + ("among `layers` " if layers is not None else "") + f"(supported: {SUPPORTED})")
    E = num_skills + (1 if general_skill else 0)
    general_id = num_skills if general_skill else None
    plans = []
    for name, module, kind in blocks:  # check every block before changing any
        where = name or type(module).__name__
        if kind == "torch":
            act = _activation_name(module.activation, where)
            plans.append((name, module, kind, module.linear1, module.linear2, act, module.self_attn.batch_first))
        elif kind == "hf":
            act = _activation_name(module.intermediate.intermediate_act_fn, where)
            plans.append((name, module, kind, module.intermediate.dense, module.output.dense, act, batch_first))
        else:
            fc1, fc2, act_fn = _mlp_parts(module)
            plans.append((name, module, kind, fc1, fc2, _activation_name(act_fn, where), batch_first))
    dropped = []
    root = model
    for name, module, kind, fc1, fc2, act, batch_first in plans:
        ffn = SkillFFN.from_dense(fc1, fc2, num_skills=E, activation=act)
        ffn.backend = backend
        ffn.train(module.training)
        block = SkillFFNBlock(ffn, batch_first=batch_first, general_id=general_id)
        if kind == "hf":
            module.intermediate = block
            module.output.dense = nn.Identity()
            continue
        if kind == "torch":
            if module.dropout.p > 0:
                dropped.append(f"{name or 'model'} (p={module.dropout.p:g})")
            new = SkillEncoderLayer(module, block).train(module.training)
        else:
            new = block.train(module.training)
        if name:
            _set_child(root, name, new)
        else:
            root = new
    # An nn.TransformerEncoder would turn padded batches into nested tensors for its layers'
    # fused fast path, which the converted layers cannot take.
    for m in root.modules():
        if isinstance(m, nn.TransformerEncoder) and any(isinstance(la, SkillEncoderLayer) for la in m.layers):
            m.use_nested_tensor = False
    if dropped:
        warnings.warn("to_skill_ffn: SkillFFN has no dropout between the FFN's activation and its second "
                      f"linear; that dropout of {', '.join(dropped)} is not applied (the one after the FFN is)",
                      stacklevel=2)
    return root


# ----------------------------------------------------------------------------- skill ids


def skill_ffn_blocks(model: nn.Module) -> list[SkillFFNBlock]:
    """The converted FFN blocks of `model`."""
    return [m for m in model.modules() if isinstance(m, SkillFFNBlock)]


class set_skill_ids:
    """Give every converted FFN block of `model` the skill ids of the next forward calls.

    skill_ids: integer tensor, (B,) one skill per sequence (e.g. a modality id), (B, L) one per
        token, or (B, L, k) / (B, 1, k) k skills per token (-1 = empty slot; a token's active
        skills are averaged). B and L are the model's batch and sequence sizes whatever the
        layers' batch_first; the blocks broadcast the ids to their input. None clears them.
    skill_weights: optional float tensor shaped like skill_ids: weights instead of the average
        (not with general_skill: the general slot's weight would be unspecified).

    The ids stay until the next call. Used as a context manager it restores the previous ids on
    exit:  `with set_skill_ids(model, ids): out = model(x)`.
    """

    def __init__(self, model: nn.Module, skill_ids: Tensor | None, skill_weights: Tensor | None = None):
        blocks = skill_ffn_blocks(model) if isinstance(model, nn.Module) else []
        expect(len(blocks) > 0, "set_skill_ids", "model", "has no converted FFN blocks; convert it first with "
               "skillkern.convert.to_skill_ffn(model, num_skills)")
        if skill_ids is not None:
            integer = (isinstance(skill_ids, Tensor) and not skill_ids.dtype.is_floating_point
                       and not skill_ids.dtype.is_complex and skill_ids.dtype != torch.bool)
            expect(integer, "set_skill_ids", "skill_ids", "must be an integer tensor, got "
                   + (str(skill_ids.dtype) if isinstance(skill_ids, Tensor) else type(skill_ids).__name__))
            expect(skill_ids.dim() in (1, 2, 3), "set_skill_ids", "skill_ids",
                   f"must be (B,), (B, L) or (B, L, k), got shape {tuple(skill_ids.shape)}")
        if skill_weights is not None:
            like = (skill_ids is not None and isinstance(skill_weights, Tensor)
                    and skill_weights.shape == skill_ids.shape and skill_weights.dtype.is_floating_point)
            expect(like, "set_skill_ids", "skill_weights", "must be a float tensor shaped like skill_ids "
                   f"{None if skill_ids is None else tuple(skill_ids.shape)}")
            expect(all(b.general_id is None for b in blocks), "set_skill_ids", "skill_weights", "cannot be given to "
                   "a model converted with general_skill=True (the general slot's weight would be unspecified)")
        self._previous = [(b, b.skill_ids, b.skill_weights) for b in blocks]
        for b in blocks:
            b.skill_ids, b.skill_weights = skill_ids, skill_weights

    def __enter__(self) -> set_skill_ids:
        return self

    def __exit__(self, *exc) -> None:
        for b, ids, weights in self._previous:
            b.skill_ids, b.skill_weights = ids, weights
