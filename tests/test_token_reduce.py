"""token_reduce / token_pool: every reachable backend against a float64 reference, gradients
included. Reference on the inputs as rounded to the test dtype; tolerance 2x PyTorch's own error
at that precision plus a floor (the torch path computes in fp32, so the floor carries bf16)."""
import pytest
import torch

import skillkern
from skillkern import _backend
from skillkern.ops.token_reduce.reference import token_pool_ref, token_reduce_ref

from conftest import DEVICE, assert_error_names, poison_padding, rel_err

BACKENDS = ["triton"]
FLOOR = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}

# The native CUDA backend (csrc/token_reduce/) runs on CUDA tensors only: on a GPU with the
# extension built; everywhere else these parameters skip.
_CUDA_READY = DEVICE.type == "cuda" and _backend.has_cuda_extension()
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not _CUDA_READY, reason="backend='cuda' needs a CUDA device and the built extension")])
ALL_BACKENDS = ["triton", CUDA]


def make(B, N, D, S, ln, ln_bias, masked, empty_row, pool=False):
    t = {"x": torch.randn(B, N, D, dtype=torch.float64) * 1.5 + 0.3}
    if pool:
        t["scores"] = torch.randn(B, N, S, dtype=torch.float64) * 2
    else:
        t["w_score"] = torch.randn(D, S, dtype=torch.float64) / D ** 0.5 * 3
    if ln:
        t["ln_weight"] = torch.rand(D, dtype=torch.float64) + 0.5
        if ln_bias:
            t["ln_bias"] = torch.randn(D, dtype=torch.float64) * 0.2
    mask = None
    if masked or empty_row:
        lengths = torch.randint(1, N + 1, (B,))
        mask = torch.arange(N)[None, :] < lengths[:, None]
        mask = mask[:, torch.randperm(N)]  # real positions anywhere, not only a prefix
        if empty_row:
            mask[B // 2] = False
    return {k: v.to(DEVICE) for k, v in t.items()}, None if mask is None else mask.to(DEVICE)


def call(t, mask, backend, pool_input=False):
    if "scores" in t:
        if backend == "ref":
            return token_pool_ref(t["x"], t["scores"], mask)
        return skillkern.token_pool(t["x"], t["scores"], mask, backend=backend)
    args = (t["x"], t["w_score"], t.get("ln_weight"), t.get("ln_bias"), mask)
    if backend == "ref":
        return token_reduce_ref(*args, pool_input=pool_input)
    return skillkern.token_reduce(*args, pool_input=pool_input, backend=backend)


def check(t, mask, dtype, pool_input=False, backends=BACKENDS, floor=None):
    names = list(t)
    leaves = {"ref": {n: v.to(dtype).double().requires_grad_() for n, v in t.items()}}
    for be in ["torch"] + backends:
        leaves[be] = {n: v.to(dtype).clone().requires_grad_() for n, v in t.items()}
    outs = {be: call(lv, mask, be, pool_input) for be, lv in leaves.items()}
    g = torch.randn_like(outs["ref"]).to(dtype)
    grads = {be: torch.autograd.grad(o, [leaves[be][n] for n in names], g.to(o.dtype)) for be, o in outs.items()}
    for be in backends:
        assert outs[be].dtype == dtype and outs[be].shape == outs["ref"].shape
        for what, got, base, ref in zip(["out"] + names, [outs[be], *grads[be]], [outs["torch"], *grads["torch"]],
                                        [outs["ref"], *grads["ref"]]):
            assert torch.isfinite(got).all(), f"{be}: non-finite {what}"
            if pool_input and what == "ln_bias":
                # exactly 0 in exact arithmetic (it shifts every position's scores alike, which the
                # softmax cancels): compare the rounding noise with the scale of d ln_weight
                scale = grads[be][names.index("ln_weight")].norm()
                assert got.norm() <= (floor or FLOOR[dtype]) * scale, f"{be} ln_bias: {got.norm():.3g} vs {scale:.3g}"
                continue
            err, err_torch = rel_err(got, ref), rel_err(base, ref)
            assert err <= 2 * err_torch + (floor or FLOOR[dtype]), f"{be} {what}: {err:.3g} vs torch {err_torch:.3g}"
        if mask is not None:  # masked positions: no influence, exactly zero gradient
            x_grad = grads[be][0]
            assert torch.count_nonzero(x_grad[~mask]) == 0
            empty = ~mask.any(1)
            assert torch.count_nonzero(outs[be][empty]) == 0


GPU_ONLY = [pytest.mark.gpu, pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a CUDA device")]
# fp16 is checked on a GPU only: the interpreter adds nothing over fp32/bf16 for it
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16"),
          pytest.param(torch.float16, id="fp16", marks=GPU_ONLY)]

# (label, B, N, D, S, ln, ln_bias, masked, empty_row, gpu_only). The gpu_only ones are sizes too
# slow for the interpreter: Wukong's shapes and those that pick other kernel variants of the cuda
# backend (csrc/token_reduce/token_reduce.h).
SHAPES = [
    ("ViT-B/32: N=49 -> S=12, LN", 3, 49, 32, 12, True, True, False, False, False),
    ("N=256 (ViT-L/14) with masks", 2, 256, 16, 8, True, True, True, False, False),
    ("odd N and D, LN weight only", 3, 37, 33, 5, True, False, True, False, False),
    ("S=1, no LN", 4, 20, 24, 1, False, False, True, False, False),
    ("an all-masked row", 4, 19, 24, 3, True, True, True, True, False),
    ("D > one feature slice", 2, 30, 200, 6, True, True, False, False, False),
    ("forward over two programs per item (accumulators past the register budget)", 2, 20, 800, 20, True, True, True,
     False, False),
    ("Wukong B/32 batch", 64, 49, 256, 12, True, True, True, True, True),
    ("Wukong L/14 batch, D=256", 64, 256, 256, 24, True, True, True, True, True),
    ("Wukong L/14 batch, D=768", 64, 256, 768, 24, True, True, True, True, True),
    ("S=32: four token tiles, N=70: three 32-row tiles", 3, 70, 64, 32, True, True, True, False, True),
    ("N=9 <= 16: 16-row tiles", 4, 9, 48, 24, True, True, False, False, True),
    ("D=1100: two feature chunks per item", 2, 40, 1100, 20, True, True, True, True, True),
    ("D=1000 not a multiple of 16", 3, 33, 1000, 8, True, False, True, False, True),
    ("many items per backward block (B >> SMs)", 600, 20, 96, 6, True, True, True, True, True),
]


def shape_params(shapes):
    return [pytest.param(s[1:9], id=s[0], marks=GPU_ONLY if s[9] else ()) for s in shapes]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", shape_params(SHAPES))
def test_token_reduce_matches_reference(shape, dtype, backend):
    check(*make(*shape), dtype, backends=[backend])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", shape_params([s for s in SHAPES if s[5]]))  # with a LayerNorm
def test_token_reduce_pool_input_matches_reference(shape, dtype, backend):
    """Scores from LayerNorm(x), pooled values x itself (Wukong's released layer)."""
    check(*make(*shape), dtype, pool_input=True, backends=[backend])


# A handful of features, fp32 only: with 16-bit x the Triton backward's softmax term
# delta = <d_out, out> comes from the 16-bit output (triton_impl.token_reduce_bwd), and at D <= 4
# its rounding (2^-9 relative) is not small against d_w_score / d_ln_*: measured 10-250x the torch
# path's error in bf16 (D=1: 0.36 vs 0.0014 relative). That needs the forward to keep delta's
# operand in fp32, a change of the op pair's outputs shared with the cuda backend.
SMALL_D = [
    ("D=1, no LN", 3, 11, 1, 3, False, False, True, False),
    ("D=2, no LN, S > N", 3, 6, 2, 7, False, False, True, True),
    ("D=3 with LN, S > N, an all-masked row", 2, 5, 3, 7, True, True, True, True),
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("pool_input", [False, True], ids=["pool_ln", "pool_input"])
@pytest.mark.parametrize("shape", SMALL_D, ids=[s[0] for s in SMALL_D])
def test_token_reduce_small_d_matches_reference(shape, pool_input, backend):
    check(*make(*shape[1:]), torch.float32, pool_input=pool_input, backends=[backend])


POOL_SHAPES = [
    ("N=49, S=12", 3, 49, 40, 12, False, False),
    ("odd N and D, masks", 2, 37, 33, 5, True, False),
    ("S=1, an all-masked row", 4, 21, 16, 1, True, True),
    ("D=1", 3, 10, 1, 4, True, True),
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=[s[0] for s in POOL_SHAPES])
def test_token_pool_matches_reference(shape, dtype, backend):
    _, B, N, D, S, masked, empty = shape
    check(*make(B, N, D, S, False, False, masked, empty, pool=True), dtype, backends=[backend])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_large_mean_rows(dtype, backend):
    """Rows with a mean 40x their spread. The kernels fold the LayerNorm into the score matrix
    and the pooling (x enters the MMAs unnormalized), so the mean cancels there: in fp32 that
    costs ~|mean|/std x 2^-24 x sqrt(D) relative (the floor is 1e-4 here instead of 1e-5); in
    16-bit the usual floor holds. Pooling raw x (pool_input) also checks that the backward's
    delta = <d_out, out> uses out as computed, not out rounded to 16 bits (which alone gave
    7-12 % gradient errors here)."""
    torch.manual_seed(3)
    t, mask = make(3, 40, 96, 6, True, True, True, False)
    t["x"] = t["x"] / 1.5 + 40.0
    floor = 1e-4 if dtype == torch.float32 else None
    check(t, mask, dtype, backends=[backend], floor=floor)
    check(t, mask, dtype, pool_input=True, backends=[backend], floor=floor)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_deterministic(backend):
    t, mask = make(6, 40, 48, 6, True, True, True, False)
    leaves = {n: v.float().requires_grad_() for n, v in t.items()}
    runs = []
    for _ in range(2):
        out = call(leaves, mask, backend)
        runs.append([out, *torch.autograd.grad(out.square().sum(), list(leaves.values()))])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- edge inputs

# what a test runs: (label, LayerNorm, LayerNorm bias, pool_input, token_pool)
KINDS = [
    ("LN", True, True, False, False),
    ("LN weight only", True, False, False, False),
    ("no LN", False, False, False, False),
    ("LN, pool_input", True, True, True, False),
    ("token_pool", False, False, True, True),
]
KIND_PARAMS = [pytest.param(k[1:], id=k[0]) for k in KINDS]
EVERY_BACKEND = ["torch", "triton", CUDA]


def leaves_of(t, dtype, device=DEVICE):
    return {n: v.to(device=device, dtype=dtype).clone().requires_grad_() for n, v in t.items()}


def forward_backward(t, mask, backend, pool_input, d_out):
    """Output and the gradient of every input of t (a dict of leaves)."""
    out = call(t, mask, backend, pool_input)
    return [out, *torch.autograd.grad(out, list(t.values()), d_out.to(out.dtype))]


@pytest.mark.parametrize("backend", EVERY_BACKEND)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_padding_values_never_reach_outputs_or_gradients(kind, dtype, backend):
    """NaN, +inf and -inf at masked positions (of x, and of scores for token_pool): outputs and
    every gradient are finite and bit-equal to those with random finite padding; dx (and
    d_scores) at masked positions are exactly 0. One item is all padding."""
    ln, lnb, pool_input, pool = kind
    t, mask = make(4, 21, 24, 5, ln, lnb, True, True, pool=pool)
    pad = ~mask
    poisoned = {n: poison_padding(v, mask) if n in ("x", "scores") else v for n, v in t.items()}
    d_out = torch.randn(4, 5, 24, device=DEVICE)
    clean = forward_backward(leaves_of(t, dtype), mask, backend, pool_input, d_out)
    dirty = forward_backward(leaves_of(poisoned, dtype), mask, backend, pool_input, d_out)
    for what, a, b in zip(["out", *t], clean, dirty):
        assert torch.isfinite(b).all(), f"non-finite {what}"
        assert torch.equal(a, b), f"{what} depends on what the padding holds"
    for what, g in zip(t, dirty[1:]):
        if what in ("x", "scores"):
            assert torch.count_nonzero(g[pad]) == 0, f"d {what} at padding"
    assert torch.count_nonzero(dirty[0][~mask.any(1)]) == 0  # the all-padding item


@pytest.mark.parametrize("backend", EVERY_BACKEND)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("B,N", [(0, 7), (3, 0), (0, 0)], ids=["B=0", "N=0", "B=N=0"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_zero_size(kind, B, N, masked, backend):
    """No item (B = 0): an empty output; no position (N = 0): each item's output is zeros (the
    documented 'no real position' result). Every gradient has its input's shape and is 0."""
    ln, lnb, pool_input, pool = kind
    D, S = 12, 3
    t, _ = make(max(B, 1), max(N, 1), D, S, ln, lnb, False, False, pool=pool)
    t = {n: v[:B, :N] if n in ("x", "scores") else v for n, v in t.items()}
    mask = torch.rand(B, N, device=DEVICE) < 0.5 if masked else None
    leaves = leaves_of(t, torch.float32)
    out, *grads = forward_backward(leaves, mask, backend, pool_input, torch.randn(B, S, D, device=DEVICE))
    assert out.shape == (B, S, D) and out.dtype == torch.float32
    assert torch.count_nonzero(out) == 0
    for (n, v), g in zip(leaves.items(), grads):
        assert g.shape == v.shape and g.dtype == v.dtype, n
        assert torch.count_nonzero(g) == 0, n


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_meta_tensors(kind, dtype, backend):
    """Shapes and dtypes on the meta device, forward and backward."""
    ln, lnb, pool_input, pool = kind
    B, N, D, S = 3, 10, 16, 4
    t, mask = make(B, N, D, S, ln, lnb, True, False, pool=pool)
    leaves = leaves_of(t, dtype, "meta")
    out, *grads = forward_backward(leaves, mask.to("meta"), backend, pool_input, torch.empty(B, S, D, device="meta"))
    assert out.device.type == "meta" and out.shape == (B, S, D) and out.dtype == dtype
    for (n, v), g in zip(leaves.items(), grads):
        assert g.device.type == "meta" and g.shape == v.shape and g.dtype == v.dtype, n


def _bad_args():
    def base():
        return dict(x=torch.randn(2, 5, 8), w_score=torch.randn(8, 3), ln_weight=torch.rand(8) + 0.5,
                    ln_bias=torch.randn(8), mask=torch.rand(2, 5) < 0.7)

    cases = [
        ("x not a tensor", "x", TypeError, lambda a: a.update(x=a["x"].tolist())),
        ("x 2-d", "x", ValueError, lambda a: a.update(x=torch.randn(5, 8))),
        ("x int", "x", ValueError, lambda a: a.update(x=torch.ones(2, 5, 8, dtype=torch.long))),
        ("x float64", "x", ValueError, lambda a: a.update(x=a["x"].double())),
        ("x with D=0", "x", ValueError, lambda a: a.update(x=torch.randn(2, 5, 0), w_score=torch.randn(0, 3),
                                                           ln_weight=None, ln_bias=None)),
        ("w_score not a tensor", "w_score", TypeError, lambda a: a.update(w_score=3)),
        ("w_score wrong D", "w_score", ValueError, lambda a: a.update(w_score=torch.randn(9, 3))),
        ("w_score 3-d", "w_score", ValueError, lambda a: a.update(w_score=torch.randn(8, 3, 1))),
        ("w_score with S=0", "w_score", ValueError, lambda a: a.update(w_score=torch.randn(8, 0))),
        ("w_score device", "w_score", ValueError, lambda a: a.update(w_score=a["w_score"].to("meta"))),
        ("ln_weight shape", "ln_weight", ValueError, lambda a: a.update(ln_weight=torch.ones(7))),
        ("ln_weight 2-d", "ln_weight", ValueError, lambda a: a.update(ln_weight=torch.ones(8, 1))),
        ("ln_weight int", "ln_weight", ValueError, lambda a: a.update(ln_weight=torch.ones(8, dtype=torch.int32))),
        ("ln_bias without weight", "ln_bias", ValueError, lambda a: a.update(ln_weight=None)),
        ("ln_bias shape", "ln_bias", ValueError, lambda a: a.update(ln_bias=torch.zeros(8, 1))),
        ("mask not a tensor", "mask", TypeError, lambda a: a.update(mask=a["mask"].tolist())),
        ("mask shape", "mask", ValueError, lambda a: a.update(mask=torch.ones(2, 6, dtype=torch.bool))),
        ("mask dtype", "mask", ValueError, lambda a: a.update(mask=torch.ones(2, 5))),
        ("mask uint8", "mask", ValueError, lambda a: a.update(mask=torch.ones(2, 5, dtype=torch.uint8))),
        ("eps 0", "eps", ValueError, lambda a: a.update(eps=0.0)),
        ("eps nan", "eps", ValueError, lambda a: a.update(eps=float("nan"))),
        ("eps a string", "eps", TypeError, lambda a: a.update(eps="1e-5")),
    ]
    reduce_cases = [pytest.param(skillkern.token_reduce, base, name, kind, mutate, id=label)
                    for label, name, kind, mutate in cases]

    def pool_base():
        return dict(x=torch.randn(2, 5, 8), scores=torch.randn(2, 5, 3), mask=torch.rand(2, 5) < 0.7)

    pool_cases = [
        ("scores not a tensor", "scores", TypeError, lambda a: a.update(scores=None)),
        ("scores wrong N", "scores", ValueError, lambda a: a.update(scores=torch.randn(2, 4, 3))),
        ("scores 2-d", "scores", ValueError, lambda a: a.update(scores=torch.randn(2, 5))),
        ("scores with S=0", "scores", ValueError, lambda a: a.update(scores=torch.randn(2, 5, 0))),
        ("scores int", "scores", ValueError, lambda a: a.update(scores=torch.ones(2, 5, 3, dtype=torch.long))),
        ("scores device", "scores", ValueError, lambda a: a.update(scores=a["scores"].to("meta"))),
        ("x int", "x", ValueError, lambda a: a.update(x=torch.ones(2, 5, 8, dtype=torch.int16))),
        ("mask shape", "mask", ValueError, lambda a: a.update(mask=torch.ones(5, 2, dtype=torch.bool))),
    ]
    return reduce_cases + [pytest.param(skillkern.token_pool, pool_base, name, kind, mutate, id="pool: " + label)
                           for label, name, kind, mutate in pool_cases]


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda", "auto"])
@pytest.mark.parametrize("fn,base,name,kind,mutate", _bad_args())
def test_bad_input_names_the_argument(fn, base, name, kind, mutate, backend):
    """A ValueError (TypeError for a wrong Python type) naming the argument, before any backend
    is picked (so every backend, the cuda one included, says the same here), and every input
    tensor bit-identical afterwards."""
    def fn_raising_kind(**kwargs):
        try:
            fn(**kwargs, backend=backend)
        except Exception as e:
            assert type(e) is kind, f"{type(e).__name__} instead of {kind.__name__}: {e}"
            raise

    assert_error_names(fn_raising_kind, base, f"^{fn.__name__}: `{name}` ", mutate)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("pool", [False, True], ids=["reduce", "pool"])
def test_opcheck(pool, dtype, backend):
    t, mask = make(3, 18, 24, 4, not pool, not pool, True, True, pool=pool)
    f = {n: v.to(dtype).requires_grad_() for n, v in t.items()}
    args = (f["x"], f.get("w_score"), f.get("scores"), f.get("ln_weight"), f.get("ln_bias"), mask, 1e-5, pool)
    op = torch.ops.skillkern.token_reduce_fwd if backend == "triton" else torch.ops.skillkern.token_reduce_fwd_cuda
    torch.library.opcheck(op.default, args)


@pytest.mark.parametrize("backend", EVERY_BACKEND)
@pytest.mark.parametrize("pool", [False, True], ids=["reduce", "pool"])
def test_torch_compile_fullgraph_forward_backward(pool, backend):
    """fullgraph (no graph break), forward and backward against eager, at two batch sizes (the
    second call recompiles with a dynamic batch). The torch backend runs on CPU tensors: inductor
    compiles its graph to C++ there."""
    device = torch.device("cpu") if backend == "torch" else DEVICE

    def step(t, mask):
        if pool:
            return skillkern.token_pool(t["x"] * 2, t["scores"], mask, backend=backend).square().mean()
        return skillkern.token_reduce(t["x"] * 2, t["w_score"], t["ln_weight"], t["ln_bias"], mask,
                                      backend=backend).square().mean()

    compiled = torch.compile(step, fullgraph=True)
    for B in (3, 5):
        t, mask = make(B, 21, 24, 4, not pool, not pool, True, True, pool=pool)
        t = leaves_of(t, torch.float32, device)
        mask = mask.to(device)
        loss_c = compiled(t, mask)
        grads_c = torch.autograd.grad(loss_c, list(t.values()))
        loss_e = step(t, mask)
        grads_e = torch.autograd.grad(loss_e, list(t.values()))
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads_c, grads_e):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_fp32_parameters_with_16bit_x(dtype, backend):
    """fp32 w_score / LayerNorm parameters with 16-bit activations (autocast-style modules)."""
    t, mask = make(5, 60, 136, 12, True, True, True, False)
    x = t["x"].to(dtype)
    params = {n: v.float().requires_grad_() for n, v in t.items() if n != "x"}
    xs = {be: x.clone().requires_grad_() for be in ["ref", backend]}
    ref = token_reduce_ref(xs["ref"].double(), *(params[n].double() for n in ["w_score", "ln_weight", "ln_bias"]),
                           mask)
    out = skillkern.token_reduce(xs[backend], params["w_score"], params["ln_weight"], params["ln_bias"], mask,
                                 backend=backend)
    assert out.dtype == dtype
    assert rel_err(out, ref) <= 2 * FLOOR[dtype]
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [xs[backend], *params.values()], g)
    want = torch.autograd.grad(ref, [xs["ref"], *params.values()], g.double())
    for name, a, b in zip(["x", *params], got, want):
        assert a.dtype == (dtype if name == "x" else torch.float32), name
        assert rel_err(a, b) <= 2 * FLOOR[dtype], name


@pytest.mark.gpu
@pytest.mark.skipif(not _CUDA_READY, reason="needs a CUDA device and the built extension")
def test_gpu_cuda_op_errors_name_the_argument():
    """What only the C++ ops check (the public API never passes these), on CUDA tensors."""
    x = torch.randn(2, 5, 8, device=DEVICE)
    op = torch.ops.skillkern.token_reduce_fwd_cuda
    with pytest.raises(RuntimeError, match="token_reduce_fwd_cuda: `w_score` gives S = 40"):
        op(x, torch.randn(8, 40, device=DEVICE), None, None, None, None, 1e-5, False)
    with pytest.raises(RuntimeError, match="token_reduce_fwd_cuda: `w_score` and `scores`"):
        op(x, None, None, None, None, None, 1e-5, False)
    with pytest.raises(RuntimeError, match="token_reduce_fwd_cuda: `x`"):  # D far beyond shared memory
        op(torch.randn(1, 3, 100_000, device=DEVICE), torch.randn(100_000, 4, device=DEVICE), None, None, None,
           None, 1e-5, False)
    with pytest.raises(RuntimeError, match="token_reduce_fwd_cuda: `mask`"):
        op(x, torch.randn(8, 3, device=DEVICE), None, None, None, torch.ones(2, 5, dtype=torch.bool), 1e-5, False)
    with pytest.raises(ValueError, match="token_reduce: `w_score`"):  # the public API checks first
        skillkern.token_reduce(x, torch.randn(9, 3, device=DEVICE), backend="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not _CUDA_READY, reason="needs a CUDA device and the built extension")
def test_gpu_cuda_backend_handles_non_contiguous_inputs():
    t, mask = make(4, 30, 64, 8, True, True, True, False)
    x = t["x"].float().transpose(0, 1).contiguous().transpose(0, 1)  # (B, N, D) view, not contiguous
    w = t["w_score"].float().t().contiguous().t()
    assert not x.is_contiguous() and not w.is_contiguous()
    out = skillkern.token_reduce(x, w, t["ln_weight"].float(), t["ln_bias"].float(), mask, backend="cuda")
    ref = token_reduce_ref(x.double(), w.double(), t["ln_weight"], t["ln_bias"], mask)
    assert rel_err(out, ref) <= 1e-5
