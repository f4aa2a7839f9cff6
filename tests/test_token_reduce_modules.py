"""TokenReduction (Wukong) and TokenLearner (v1.1) modules against literal references.

TokenReduction runs on the fused op with the two score convs folded into one matrix W_eff and
the value conv applied after pooling; TokenReductionRef computes Wukong's layer conv by conv.
Three levels of checks, outputs and the gradients of x and every parameter each time:
  - float64, the modules' op calls routed to the op's reference functions (skillkern's ops take
    fp32/fp16/bf16 only): the folding algebra alone, equal up to fp64 rounding (1e-10);
  - float32 through skillkern's "torch", "triton" (the interpreter on CPU) and "cuda" (a GPU
    with the extension built) backends, against the float64 conv-by-conv reference.
Tolerances: fp32 results against the fp64 reference, relative error of the whole tensor (norm
of the difference over the norm of the reference). Measured on these shapes: <= 8e-7 for both
backends (interpreter, ieee fp32 dots), as fp32 rounding of the folded path's sums predicts;
5e-6 leaves room for other block sizes and summation orders on a GPU, and would still catch a
dropped term or a TF32 dot (~1e-3).
"""
import pytest
import torch
import torch.nn.functional as F

import skillkern
import skillkern.ops.token_reduce.module as tr_module
from skillkern.ops.token_reduce.module import TokenLearner, TokenReduction, TokenReductionRef
from skillkern.ops.token_reduce.reference import token_pool_ref, token_reduce_ref

from conftest import DEVICE, assert_error_names, poison_padding, rel_err
from test_token_reduce import CUDA

BACKENDS = ["torch", "triton", CUDA]  # the torch backend on CPU tensors, the others on DEVICE

TOL64 = 1e-10  # only rounding differs: conv-by-conv vs folded (W_eff) and pool-then-project
TOL32 = 5e-6   # fp32 module vs fp64 reference, see the module docstring

# (B, N, C, S, groups)
CASES = [
    (3, 49, 64, 12, 8),   # Wukong ViT-B/32: 7x7 patch grid -> 12 tokens, 8 groups
    (2, 50, 48, 8, 8),    # N not a square, 6 channels per group
    (2, 37, 45, 5, 3),    # odd N and C, 3 groups of 15
    (3, 23, 45, 7, 9),    # odd, 9 groups of 5 channels
    (1, 9, 24, 24, 24),   # depthwise convs (groups == C), S > N, one item
    (2, 13, 16, 3, 1),    # groups = 1: dense convs
]
CASE_IDS = ["wukong-b32", "n50", "odd-g3", "odd-g9", "depthwise-s>n", "dense-g1"]


def device_of(backend):
    return torch.device("cpu") if backend == "torch" else DEVICE


def make_mask(B, N):
    """Random lengths (prefix masks) in [2, N]; with B >= 2 the last item has no real position,
    with B >= 3 the first has one (its scores then cannot matter: weight 1 whatever they are;
    in a one-item batch that would leave the score parameters without gradient to compare)."""
    lengths = torch.randint(2, N + 1, (B,))
    if B >= 2:
        lengths[-1] = 0
    if B >= 3:
        lengths[0] = 1
    return torch.arange(N)[None, :] < lengths[:, None]


def make_reduction(C, S, G, *, values, bias, dtype=torch.float64):
    """A reference module with fresh random parameters (peaky scores: std ~2) and the fast
    module loaded with the same state_dict."""
    ref = TokenReductionRef(C, S, G, values=values, bias=bias, dtype=dtype)
    cg = C // G
    with torch.no_grad():
        ref.norm.weight.copy_(1 + 0.3 * torch.randn(C))
        ref.norm.bias.copy_(0.3 * torch.randn(C))
        ref.score_conv1.weight.copy_(torch.randn(C, cg, 1) / cg ** 0.5)
        ref.score_conv2.weight.copy_(2 * torch.randn(S, C, 1) / C ** 0.5)
        ref.value_conv.weight.copy_(torch.randn(C, cg, 1) / cg ** 0.5)
        if bias:
            ref.score_conv2.bias.copy_(3 * torch.randn(S))
    mod = TokenReduction(C, S, G, values=values, bias=bias, dtype=dtype)
    mod.load_state_dict(ref.state_dict())
    return mod, ref


def forward_backward(m, x, mask, d_out):
    """Output and gradients (x first, then every parameter in named_parameters order; an exact
    zero where a parameter does not reach the output)."""
    x = x.detach().clone().requires_grad_()
    params = [p for _, p in m.named_parameters()]
    out = m(x, mask)
    grads = torch.autograd.grad(out, [x] + params, d_out, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, [x] + params)]
    return out.detach(), grads


def assert_match(out, grads, out_ref, grads_ref, names, tol, zero_grads=()):
    """Relative error <= tol for the output and each gradient, except for the parameters in
    zero_grads, whose true gradient is 0 (they only shift a softmax over positions by a
    constant): there both results must be rounding noise, <= tol times the largest gradient."""
    assert out.shape == out_ref.shape
    errs = {"out": rel_err(out, out_ref)}
    scale = max(g.abs().max().item() for n, g in zip(names, grads_ref) if n not in zero_grads)
    for name, g, g_ref in zip(names, grads, grads_ref):
        if name in zero_grads:
            errs[name] = max(g.abs().max().item(), g_ref.abs().max().item()) / scale
        else:
            errs[name] = rel_err(g, g_ref)
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f"relative errors above {tol:g}: {bad}"


def reduction_zero_grads(values):
    """conv2's bias adds b[s] to every position's score for token s; with values="input" the
    LayerNorm bias only reaches the scores, where it adds (beta @ W_eff)[s], another constant."""
    return ("score_conv2.bias", "norm.bias") if values == "input" else ("score_conv2.bias",)


@pytest.fixture
def ref_ops(monkeypatch):
    """skillkern.token_reduce / token_pool check for fp32/fp16/bf16; their reference functions
    (the math every backend matches) run in fp64. Route the modules' calls to them, recording
    the backend each call was given."""
    seen = []

    def reduce(x, w_score, ln_weight=None, ln_bias=None, mask=None, *, eps=1e-5, pool_input=False,
               backend="auto"):
        seen.append(backend)
        return token_reduce_ref(x, w_score, ln_weight, ln_bias, mask, eps, pool_input)

    def pool(x, scores, mask=None, *, backend="auto"):
        seen.append(backend)
        return token_pool_ref(x, scores, mask)

    monkeypatch.setattr(tr_module, "token_reduce", reduce)
    monkeypatch.setattr(tr_module, "token_pool", pool)
    return seen


# ----------------------------------------------------------------------------- TokenReduction


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("values", ["input", "norm"])
@pytest.mark.parametrize("B,N,C,S,G", CASES, ids=CASE_IDS)
def test_reduction_matches_ref_fp64(ref_ops, B, N, C, S, G, values, bias, masked):
    mod, ref = make_reduction(C, S, G, values=values, bias=bias)
    mod.backend = "torch"
    x = torch.randn(B, N, C, dtype=torch.float64) * 2 + 0.5
    mask = make_mask(B, N) if masked else None
    d_out = torch.randn(B, S, C, dtype=torch.float64)
    names = ["x"] + [n for n, _ in mod.named_parameters()]
    assert names == ["x"] + [n for n, _ in ref.named_parameters()]
    out, grads = forward_backward(mod, x, mask, d_out)
    out_ref, grads_ref = forward_backward(ref, x, mask, d_out)
    assert_match(out, grads, out_ref, grads_ref, names, TOL64, reduction_zero_grads(values))
    assert ref_ops == ["torch"]  # the module's backend reached the op
    if masked and B >= 2:  # the item with no real position: zeros, finite gradients
        assert torch.equal(out[-1], torch.zeros_like(out[-1]))
        assert all(torch.isfinite(g).all() for g in grads)


def check_fp32(fast, ref64, backend, B, N, C, S, zero_grads):
    """fast: an fp32 module on its backend's device; ref64: the same parameters, rounded to fp32,
    in an fp64 reference. Random x and mask (the last item all padding), the output and every
    gradient within TOL32; the all-padding item gives zeros."""
    device = device_of(backend)
    fast.backend = backend
    x = torch.randn(B, N, C) * 2 + 0.5
    mask = make_mask(B, N)
    d_out = torch.randn(B, S, C)
    names = ["x"] + [n for n, _ in fast.named_parameters()]
    out, grads = forward_backward(fast, x.to(device), mask.to(device), d_out.to(device))
    out_ref, grads_ref = forward_backward(ref64, x.double(), mask, d_out.double())
    assert out.dtype == torch.float32 and out.shape == (B, S, C)
    assert_match(out, grads, out_ref, grads_ref, names, TOL32, zero_grads)
    if B >= 2:
        assert torch.equal(out[-1].cpu(), torch.zeros(S, C))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("values", ["input", "norm"])
@pytest.mark.parametrize("B,N,C,S,G", CASES, ids=CASE_IDS)
def test_reduction_fp32(B, N, C, S, G, values, backend):
    """The real op (not routed), fp32, against the fp64 conv-by-conv reference."""
    mod64, ref = make_reduction(C, S, G, values=values, bias=True)
    mod = TokenReduction(C, S, G, values=values, bias=True, device=device_of(backend))
    mod.load_state_dict(mod64.state_dict())  # rounds the parameters to fp32
    ref.load_state_dict({k: v.float().double() for k, v in mod64.state_dict().items()})
    check_fp32(mod, ref, backend, B, N, C, S, reduction_zero_grads(values))


def test_score_bias_cancels(ref_ops):
    """conv2's bias adds b[s] to output token s's score at every position; the softmax over
    positions removes any such constant. Changing it changes nothing, in the literal reference
    too, and its gradient is exactly 0 in the module (the reference's is rounding noise)."""
    B, N, C, S, G = 3, 49, 64, 12, 8
    mod, ref = make_reduction(C, S, G, values="input", bias=True)
    mod.backend = "torch"
    x = torch.randn(B, N, C, dtype=torch.float64)
    mask = make_mask(B, N)
    d_out = torch.randn(B, S, C, dtype=torch.float64)
    out_m, grads_m = forward_backward(mod, x, mask, d_out)
    out_r, grads_r = forward_backward(ref, x, mask, d_out)
    i_bias = 1 + [n for n, _ in mod.named_parameters()].index("score_conv2.bias")
    assert torch.equal(grads_m[i_bias], torch.zeros(S, dtype=torch.float64))
    assert grads_r[i_bias].abs().max() < 1e-12
    with torch.no_grad():
        for m in (mod, ref):
            m.score_conv2.bias.copy_(torch.randn(S) * 100)
    assert torch.equal(mod(x, mask), out_m)
    assert rel_err(ref(x, mask), out_r) < TOL64
    assert rel_err(ref(x, mask), out_m) < TOL64
    no_bias = TokenReductionRef(C, S, G, values="input", bias=False, dtype=torch.float64)
    no_bias.load_state_dict({k: v for k, v in ref.state_dict().items() if k != "score_conv2.bias"})
    assert rel_err(no_bias(x, mask), out_r) < TOL64


def test_state_dict_layout():
    """Conv1d / LayerNorm tensors under the same keys in both modules, loadable both ways."""
    C, S, G = 48, 8, 8
    for bias in (False, True):
        mod = TokenReduction(C, S, G, bias=bias)
        ref = TokenReductionRef(C, S, G, bias=bias)
        shapes = {k: tuple(v.shape) for k, v in mod.state_dict().items()}
        want = {"norm.weight": (C,), "norm.bias": (C,), "score_conv1.weight": (C, C // G, 1),
                "score_conv2.weight": (S, C, 1), "value_conv.weight": (C, C // G, 1)}
        if bias:
            want["score_conv2.bias"] = (S,)
        assert shapes == want
        ref.load_state_dict(mod.state_dict(), strict=True)
        mod.load_state_dict(ref.state_dict(), strict=True)


def test_reduction_bad_arguments():
    with pytest.raises(ValueError, match=r"^TokenReduction: `dim` \(50\) must be divisible by `groups` \(8\)"):
        TokenReduction(50, 12, groups=8)
    with pytest.raises(ValueError, match=r"^TokenReductionRef: `dim` \(45\) must be divisible by `groups` \(4\)"):
        TokenReductionRef(45, 12, groups=4)
    with pytest.raises(ValueError, match="`values` must be one of"):
        TokenReduction(64, 12, values="x")
    with pytest.raises(ValueError, match="`num_tokens` must be positive"):
        TokenReduction(64, 0)
    with pytest.raises(TypeError, match="`dim` must be an int"):
        TokenReduction(64.0, 12)


# ----------------------------------------------------------------------------- TokenLearner


def token_learner_ref(m, x, mask):
    """TokenLearner v1.1 as scenic writes it: LayerNorm, Dense -> gelu -> Dense (scores
    [bs, hw, S]), transpose to [bs, S, hw], softmax over positions, einsum with the input x.
    Masked positions -inf; an item with no real position gets zero weights."""
    u = F.layer_norm(x, (x.shape[-1],), m.norm.weight, m.norm.bias, m.norm.eps)
    hidden = F.gelu(u @ m.fc1.weight.t() + m.fc1.bias, approximate=m.act.approximate)
    selected = (hidden @ m.fc2.weight.t() + m.fc2.bias).transpose(1, 2)  # (B, S, N)
    if mask is not None:
        empty = ~mask.any(dim=1)
        selected = selected.masked_fill(~mask[:, None, :], float("-inf"))
        selected = selected.masked_fill(empty[:, None, None], 0.0)
    selected = torch.softmax(selected, dim=-1)
    if mask is not None:
        selected = selected.masked_fill(empty[:, None, None], 0.0)
    return torch.einsum("bsn,bnc->bsc", selected, x)


class _LearnerRef(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, mask=None):
        return token_learner_ref(self.m, x, mask)


def make_learner(C, S, hidden, gelu="tanh", dtype=torch.float64):
    m = TokenLearner(C, S, hidden, gelu=gelu, dtype=dtype)
    with torch.no_grad():
        m.norm.weight.copy_(1 + 0.3 * torch.randn(C))
        m.norm.bias.copy_(0.3 * torch.randn(C))
        m.fc1.weight.copy_(torch.randn(hidden, C) / C ** 0.5)
        m.fc1.bias.copy_(0.5 * torch.randn(hidden))
        m.fc2.weight.copy_(2 * torch.randn(S, hidden) / hidden ** 0.5)
        m.fc2.bias.copy_(torch.randn(S))
    return m


LEARNER_CASES = [(3, 49, 64, 8, 64), (2, 37, 45, 5, 16), (1, 9, 24, 16, 7)]
LEARNER_IDS = ["b32-grid", "odd", "s>n-one-item"]


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("gelu", ["tanh", "none"])
@pytest.mark.parametrize("B,N,C,S,H", LEARNER_CASES, ids=LEARNER_IDS)
def test_learner_matches_ref_fp64(ref_ops, B, N, C, S, H, gelu, masked):
    m = make_learner(C, S, H, gelu)
    m.backend = "torch"
    x = torch.randn(B, N, C, dtype=torch.float64) * 2 + 0.5
    mask = make_mask(B, N) if masked else None
    d_out = torch.randn(B, S, C, dtype=torch.float64)
    names = ["x"] + [n for n, _ in m.named_parameters()]
    out, grads = forward_backward(m, x, mask, d_out)
    out_ref, grads_ref = forward_backward(_LearnerRef(m), x, mask, d_out)
    assert out.shape == (B, S, C)
    # fc2.bias adds a per-token constant to the scores: its true gradient is 0
    assert_match(out, grads, out_ref, grads_ref, names, TOL64, ("fc2.bias",))
    assert ref_ops == ["torch"]
    if masked and B >= 2:
        assert torch.equal(out[-1], torch.zeros_like(out[-1]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,N,C,S,H", LEARNER_CASES, ids=LEARNER_IDS)
def test_learner_fp32(B, N, C, S, H, backend):
    """The real op in fp32 against the fp64 reference."""
    m64 = make_learner(C, S, H)
    m = TokenLearner(C, S, H, device=device_of(backend))
    m.load_state_dict(m64.state_dict())
    m64.load_state_dict({k: v.float().double() for k, v in m64.state_dict().items()})
    check_fp32(m, _LearnerRef(m64), backend, B, N, C, S, ("fc2.bias",))


def test_learner_bad_arguments():
    with pytest.raises(ValueError, match="^TokenLearner: `gelu` must be 'tanh' or 'none'"):
        TokenLearner(16, 4, gelu="erf")
    with pytest.raises(ValueError, match="^TokenLearner: `hidden` must be positive"):
        TokenLearner(16, 4, hidden=0)
    with pytest.raises(TypeError, match="^TokenLearner: `num_tokens` must be an int"):
        TokenLearner(16, "4")


# ----------------------------------------------------------------------------- both, edge inputs

# (id, constructor): each with fresh random parameters (make_reduction / make_learner scales)
MODULES = {
    "reduction-input": lambda C, S: make_reduction(C, S, 4, values="input", bias=True, dtype=torch.float32)[0],
    "reduction-norm": lambda C, S: make_reduction(C, S, 4, values="norm", bias=False, dtype=torch.float32)[0],
    "reduction-ref": lambda C, S: make_reduction(C, S, 4, values="input", bias=True, dtype=torch.float32)[1],
    "learner": lambda C, S: make_learner(C, S, 16, dtype=torch.float32),
}
# TokenReductionRef runs no op: one backend is enough for it
MODULE_BACKENDS = [pytest.param(name, be, id=f"{name}-{getattr(be, 'values', [be])[0]}",
                                marks=getattr(be, "marks", ()))
                   for name in MODULES for be in (["torch"] if name == "reduction-ref" else BACKENDS)]


def module_on(name, backend, C, S, dtype=torch.float32, device=None):
    m = MODULES[name](C, S).to(device=device or device_of(backend), dtype=dtype)
    m.backend = backend
    return m


@pytest.mark.parametrize("name,backend", MODULE_BACKENDS)
def test_padding_values_never_reach_outputs_or_gradients(name, backend):
    """NaN, +inf and -inf at padding positions: the output and the gradients of x and of every
    parameter are finite and bit-equal to those with random finite padding; dx is exactly 0 at
    padding. The last item is all padding."""
    B, N, C, S = 3, 21, 32, 5
    m = module_on(name, backend, C, S)
    device = device_of(backend)
    x = (torch.randn(B, N, C) * 2 + 0.5).to(device)
    mask = make_mask(B, N).to(device)
    poisoned = poison_padding(x, mask)
    d_out = torch.randn(B, S, C, device=device)
    clean = forward_backward(m, x, mask, d_out)
    dirty = forward_backward(m, poisoned, mask, d_out)
    names = ["out", "x"] + [n for n, _ in m.named_parameters()]
    for what, a, b in zip(names, [clean[0], *clean[1]], [dirty[0], *dirty[1]]):
        assert torch.isfinite(b).all(), f"non-finite {what}"
        assert torch.equal(a, b), f"{what} depends on what the padding holds"
    assert torch.count_nonzero(dirty[1][0][~mask]) == 0
    assert torch.count_nonzero(dirty[0][-1]) == 0


@pytest.mark.parametrize("name,backend", MODULE_BACKENDS)
@pytest.mark.parametrize("B,N", [(0, 9), (3, 0)], ids=["B=0", "N=0"])
def test_zero_size(name, backend, B, N):
    """No item: an empty output; no position: zeros (an item with no real position). The
    gradients of x and of every parameter have their shapes and are 0."""
    C, S = 32, 5
    m = module_on(name, backend, C, S)
    device = device_of(backend)
    x = torch.randn(B, N, C, device=device)
    for mask in (None, torch.ones(B, N, dtype=torch.bool, device=device)):
        out, grads = forward_backward(m, x, mask, torch.randn(B, S, C, device=device))
        assert out.shape == (B, S, C) and torch.count_nonzero(out) == 0
        for (n, p), g in zip([("x", x), *m.named_parameters()], grads):
            assert g.shape == p.shape and torch.count_nonzero(g) == 0, n


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(MODULES))
def test_meta_tensors(name, dtype, backend):
    """Shapes and dtypes on the meta device: output, gradient of x and of every parameter."""
    B, N, C, S = 3, 10, 32, 5
    m = module_on(name, backend, C, S, dtype, torch.device("meta"))
    x = torch.empty(B, N, C, dtype=dtype, device="meta")
    mask = torch.empty(B, N, dtype=torch.bool, device="meta")
    out, grads = forward_backward(m, x, mask, torch.empty(B, S, C, dtype=dtype, device="meta"))
    assert out.device.type == "meta" and out.shape == (B, S, C) and out.dtype == dtype
    for (n, p), g in zip([("x", x), *m.named_parameters()], grads):
        assert g.device.type == "meta" and g.shape == p.shape and g.dtype == dtype, n


@pytest.mark.parametrize("name,backend", MODULE_BACKENDS)
def test_compile_fullgraph_two_batch_sizes(name, backend):
    """torch.compile(fullgraph=True) traces each module whole (W_eff folding, the registered op,
    the value projection), forward and backward, and matches eager at two batch sizes (the
    second recompiles with a dynamic batch). aot_eager: the tracing is what is checked here,
    without a C++/GPU compiler (the op tests cover inductor)."""
    C, S = 48, 8
    m = module_on(name, backend, C, S)
    device = device_of(backend)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    params = [p for _, p in m.named_parameters()]
    for B in (2, 5):
        x = torch.randn(B, 20, C, device=device, requires_grad=True)
        mask = make_mask(B, 20).to(device)
        want = m(x, mask)
        g_want = torch.autograd.grad(want.square().sum(), [x, *params], allow_unused=True)
        got = compiled(x, mask)
        g_got = torch.autograd.grad(got.square().sum(), [x, *params], allow_unused=True)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        for a, b in zip(g_got, g_want):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _bad_masks():
    return [
        ("mask not a tensor", TypeError, lambda a: a.update(mask=[[True] * 6] * 2)),
        ("mask float", ValueError, lambda a: a.update(mask=torch.ones(2, 6))),
        ("mask shape", ValueError, lambda a: a.update(mask=torch.ones(2, 5, dtype=torch.bool))),
        ("mask device", ValueError, lambda a: a.update(mask=torch.ones(2, 6, dtype=torch.bool, device="meta"))),
    ]


@pytest.mark.parametrize("label,kind,mutate", _bad_masks(), ids=[c[0] for c in _bad_masks()])
@pytest.mark.parametrize("name", list(MODULES))
def test_bad_mask_names_it(name, label, kind, mutate):
    """A bad mask gets an error naming it (from the module or from the op it calls), of the
    expected kind, with x and the parameters left bit-identical."""
    m = module_on(name, "torch", 16, 3)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}

    def call(x, mask):
        try:
            m(x, mask)
        except Exception as e:
            assert type(e) is kind, f"{type(e).__name__} instead of {kind.__name__}: {e}"
            raise

    assert_error_names(call, lambda: dict(x=torch.randn(2, 6, 16), mask=torch.rand(2, 6) < 0.6), "`mask`", mutate)
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), n


def test_backend_reaches_the_op():
    x = torch.randn(2, 9, 16)
    for m in (TokenReduction(16, 4, 4), TokenReduction(16, 4, 4, values="norm"), TokenLearner(16, 4)):
        m.backend = "no-such-backend"
        with pytest.raises(ValueError, match="backend must be one of"):
            m(x)


def test_exported():
    assert skillkern.nn.TokenReduction is TokenReduction
    assert skillkern.nn.TokenLearner is TokenLearner
    for name in ("TokenReduction", "TokenReductionRef", "TokenLearner", "token_reduce", "token_pool",
                 "token_reduce_ref", "token_pool_ref"):
        assert name in skillkern.ops.token_reduce.__all__
    assert skillkern.ops.token_reduce.TokenReductionRef is TokenReductionRef
    assert skillkern.ops.token_reduce.TokenLearner is TokenLearner
