"""The native skill-FFN ops of the compiled extension, checked without a GPU: schemas, the C++
Meta (shape) kernels, their argument errors, the autograd registration through torch.compile
on meta tensors. (The CUDA kernels' own source runs on the CPU emulation in
tests/test_emulation.py; on a GPU, tests/test_skill_ffn.py runs the "cuda" backend and
csrc/skill_ffn/sanitize.py runs under compute-sanitizer.)

A Meta kernel that returned a wrong shape or dtype, or a backward that was not registered,
fails these tests: every output's shape and dtype is compared with what the contract says.
"""
from __future__ import annotations

import pytest
import torch

import skillkern
from skillkern.ops.skill_ffn import op as ffn_op  # noqa: F401  (registers the autograd hook)

if not skillkern._backend.has_cuda_extension():
    pytest.skip("the CUDA extension (skillkern._C or SKILLKERN_EXTENSION_LIB) is not built",
                allow_module_level=True)

FWD = torch.ops.skillkern.skill_ffn_fwd_cuda.default
BWD = torch.ops.skillkern.skill_ffn_bwd_cuda.default
META = torch.device("meta")


def test_schemas():
    assert str(FWD._schema) == (
        "skillkern::skill_ffn_fwd_cuda(Tensor x, Tensor skill_ids, Tensor scale, Tensor w1, "
        "Tensor w2, Tensor? b1, Tensor? b2, str activation) -> (Tensor, Tensor, Tensor)")
    assert str(BWD._schema) == (
        "skillkern::skill_ffn_bwd_cuda(Tensor dy, Tensor x, Tensor scale, Tensor w1, Tensor w2, "
        "Tensor? b1, Tensor? b2, Tensor order, Tensor offsets, str activation, bool need_dscale) "
        "-> Tensor[]")


def fwd_args(T, k, E, d, h, activation="gelu", dtype=torch.bfloat16, bias=True, device=META,
             ids_dtype=torch.int64):
    """Arguments of skill_ffn_fwd_cuda (no values on the meta device, only shapes)."""
    h1 = 2 * h if activation == "swiglu" else h
    return {
        "x": torch.empty(T, d, dtype=dtype, device=device),
        "skill_ids": torch.empty(T, k, dtype=ids_dtype, device=device),
        "scale": torch.empty(T, k, dtype=torch.float32, device=device),
        "w1": torch.empty(E, d, h1, dtype=dtype, device=device),
        "w2": torch.empty(E, h, d, dtype=dtype, device=device),
        "b1": torch.empty(E, h1, dtype=dtype, device=device) if bias else None,
        "b2": torch.empty(E, d, dtype=dtype, device=device) if bias else None,
        "activation": activation,
    }


def call_fwd(a):
    return FWD(a["x"], a["skill_ids"], a["scale"], a["w1"], a["w2"], a["b1"], a["b2"], a["activation"])


def bwd_args(a, need_dscale=True):
    T, d = a["x"].shape
    E = a["w1"].shape[0]
    dev = a["x"].device
    return {"dy": torch.empty(T, d, dtype=a["x"].dtype, device=dev), "x": a["x"], "scale": a["scale"],
            "w1": a["w1"], "w2": a["w2"], "b1": a["b1"], "b2": a["b2"],
            "order": torch.empty(a["scale"].numel(), dtype=torch.int32, device=dev),
            "offsets": torch.empty(E + 1, dtype=torch.int32, device=dev),
            "activation": a["activation"], "need_dscale": need_dscale}


def call_bwd(b):
    return BWD(b["dy"], b["x"], b["scale"], b["w1"], b["w2"], b["b1"], b["b2"], b["order"], b["offsets"],
               b["activation"], b["need_dscale"])


# (label, T, k, E, d, h, activation, dtype, bias, need_dscale)
META_CASES = [
    ("one token, k=1, bf16", 1, 1, 1, 8, 16, "gelu", torch.bfloat16, True, True),
    ("odd sizes, k=3, fp32, no bias", 37, 3, 5, 19, 23, "relu", torch.float32, False, True),
    ("swiglu fp16 without dscale", 20, 2, 6, 24, 40, "swiglu", torch.float16, True, False),
    ("swiglu bf16, no bias", 9, 4, 4, 16, 8, "swiglu", torch.bfloat16, False, True),
    ("no tokens", 0, 2, 3, 8, 8, "silu", torch.float32, True, True),
    ("max skills", 5, 1, 1024, 8, 8, "gelu_tanh", torch.bfloat16, True, False),
]


@pytest.mark.parametrize("case", META_CASES, ids=[c[0] for c in META_CASES])
def test_meta_shapes(case):
    _, T, k, E, d, h, activation, dtype, bias, need_dscale = case
    a = fwd_args(T, k, E, d, h, activation, dtype, bias)
    y, order, offsets = call_fwd(a)
    assert y.device == META and y.shape == (T, d) and y.dtype == dtype
    assert order.shape == (T * k,) and order.dtype == torch.int32
    assert offsets.shape == (E + 1,) and offsets.dtype == torch.int32

    grads = call_bwd(bwd_args(a, need_dscale))
    assert len(grads) == 6
    dx, dw1, dw2, db1, db2, dscale = grads
    assert dx.shape == (T, d) and dx.dtype == dtype
    assert dw1.shape == a["w1"].shape and dw1.dtype == dtype
    assert dw2.shape == a["w2"].shape and dw2.dtype == dtype
    for g, b in ((db1, a["b1"]), (db2, a["b2"])):
        if b is None:
            assert g.numel() == 0
        else:
            assert g.shape == b.shape and g.dtype == dtype
    if need_dscale:
        assert dscale.shape == (T, k) and dscale.dtype == torch.float32
    else:
        assert dscale.numel() == 0


def test_meta_int32_ids_and_fp32_weights():
    a = fwd_args(11, 2, 3, 16, 24, "silu", torch.float32, ids_dtype=torch.int32)
    y, order, offsets = call_fwd(a)
    assert y.shape == (11, 16) and y.dtype == torch.float32
    assert order.shape == (22,) and offsets.shape == (4,)


def _mutations():
    """(label, argument the error must name, mutation of valid fwd kwargs)."""
    def set_(**kw):
        return lambda a: a.update(kw)
    E, d, h, T, k = 3, 8, 16, 6, 2
    e = {"device": META}
    return [
        ("x float64", "x", set_(x=torch.empty(T, d, dtype=torch.float64, **e))),
        ("x 3-d", "x", set_(x=torch.empty(1, T, d, dtype=torch.bfloat16, **e))),
        ("ids float", "skill_ids", set_(skill_ids=torch.empty(T, k, **e))),
        ("ids wrong T", "skill_ids", set_(skill_ids=torch.empty(T + 1, k, dtype=torch.long, **e))),
        ("ids 1-d", "skill_ids", set_(skill_ids=torch.empty(T * k, dtype=torch.long, **e))),
        ("scale fp16", "scale", set_(scale=torch.empty(T, k, dtype=torch.float16, **e))),
        ("scale wrong T", "scale", set_(scale=torch.empty(T + 2, k, **e))),
        ("w1 2-d", "w1", set_(w1=torch.empty(d, h, dtype=torch.bfloat16, **e))),
        ("w1 wrong d", "w1", set_(w1=torch.empty(E, d + 1, h, dtype=torch.bfloat16, **e))),
        ("w1 dtype", "w1", set_(w1=torch.empty(E, d, h, dtype=torch.float16, **e))),
        ("w1 too many skills", "w1", set_(w1=torch.empty(1025, d, h, dtype=torch.bfloat16, **e))),
        ("swiglu odd w1", "w1", set_(activation="swiglu", b1=None,
                                     w1=torch.empty(E, d, 2 * h + 1, dtype=torch.bfloat16, **e))),
        ("w2 wrong h", "w2", set_(w2=torch.empty(E, h + 1, d, dtype=torch.bfloat16, **e))),
        ("w2 wrong E", "w2", set_(w2=torch.empty(E + 1, h, d, dtype=torch.bfloat16, **e))),
        ("w2 dtype", "w2", set_(w2=torch.empty(E, h, d, dtype=torch.float32, **e))),
        ("b1 wrong shape", "b1", set_(b1=torch.empty(E, h + 2, dtype=torch.bfloat16, **e))),
        ("b1 dtype", "b1", set_(b1=torch.empty(E, h, dtype=torch.float32, **e))),
        ("b2 1-d", "b2", set_(b2=torch.empty(d, dtype=torch.bfloat16, **e))),
        ("bad activation", "activation", set_(activation="tanh")),
        ("w1 on cpu", "w1", set_(w1=torch.empty(E, d, h, dtype=torch.bfloat16))),
    ]


@pytest.mark.parametrize("label, name, mutate", _mutations(), ids=[m[0] for m in _mutations()])
def test_meta_fwd_errors_name_the_argument(label, name, mutate):
    a = fwd_args(6, 2, 3, 8, 16)
    mutate(a)
    with pytest.raises(RuntimeError, match=f"skill_ffn: `{name}`"):
        call_fwd(a)


@pytest.mark.parametrize("label, name, mutate", [
    ("dy wrong shape", "dy", lambda b: b.update(dy=torch.empty(6, 9, dtype=torch.bfloat16, device=META))),
    ("dy dtype", "dy", lambda b: b.update(dy=torch.empty(6, 8, dtype=torch.float32, device=META))),
    ("order int64", "order", lambda b: b.update(order=torch.empty(12, dtype=torch.int64, device=META))),
    ("order wrong length", "order", lambda b: b.update(order=torch.empty(11, dtype=torch.int32, device=META))),
    ("offsets wrong length", "offsets", lambda b: b.update(offsets=torch.empty(3, dtype=torch.int32, device=META))),
    ("bad activation", "activation", lambda b: b.update(activation="gelu_erf")),
], ids=lambda v: v if isinstance(v, str) else "")
def test_meta_bwd_errors_name_the_argument(label, name, mutate):
    b = bwd_args(fwd_args(6, 2, 3, 8, 16))
    mutate(b)
    with pytest.raises(RuntimeError, match=f"skill_ffn: `{name}`"):
        call_bwd(b)


def _leaves(T, k, E, d, h, activation, dtype, bias):
    a = fwd_args(T, k, E, d, h, activation, dtype, bias)
    for n in ("x", "scale", "w1", "w2", "b1", "b2"):
        if a[n] is not None:
            a[n].requires_grad_()
    return a


@pytest.mark.parametrize("activation, dtype, bias", [("gelu", torch.bfloat16, True),
                                                     ("swiglu", torch.float32, False)])
def test_compile_forward_backward_on_meta(activation, dtype, bias):
    """torch.compile(fullgraph) of the op + autograd.grad on meta tensors: runs the Python
    autograd registration, the fwd and the bwd Meta kernels; every gradient has its input's
    shape and dtype."""
    T, k, E, d, h = 13, 2, 4, 24, 40
    a = _leaves(T, k, E, d, h, activation, dtype, bias)

    def fn(x, skill_ids, scale, w1, w2, b1, b2):
        y, order, offsets = torch.ops.skillkern.skill_ffn_fwd_cuda(x, skill_ids, scale, w1, w2, b1, b2, activation)
        return y, order, offsets

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    y, order, offsets = compiled(a["x"], a["skill_ids"], a["scale"], a["w1"], a["w2"], a["b1"], a["b2"])
    assert y.shape == (T, d) and y.dtype == dtype and y.requires_grad
    assert order.shape == (T * k,) and offsets.shape == (E + 1,)
    inputs = [a[n] for n in ("x", "scale", "w1", "w2", "b1", "b2") if a[n] is not None]
    grads = torch.autograd.grad(y, inputs, torch.empty_like(y))
    for g, t in zip(grads, inputs):
        assert g is not None and g.shape == t.shape and g.dtype == t.dtype


def test_backward_without_scale_grad():
    """need_dscale follows scale.requires_grad: no dscale is asked for when it is False."""
    a = _leaves(7, 3, 2, 8, 16, "relu", torch.float16, True)
    a["scale"].requires_grad_(False)
    y = call_fwd(a)[0]
    y.sum().backward()
    for n in ("x", "w1", "w2", "b1", "b2"):
        assert a[n].grad is not None and a[n].grad.shape == a[n].shape
    assert a["scale"].grad is None


def test_compile_dynamic_token_count():
    """The Meta kernels keep T symbolic: one dynamic graph serves several token counts."""
    fn = torch.compile(lambda a: call_fwd(a)[0].sum(dim=1), fullgraph=True, backend="aot_eager", dynamic=True)
    for T in (5, 17, 64):
        a = _leaves(T, 2, 3, 16, 24, "gelu", torch.bfloat16, True)
        out = fn(a)
        assert out.shape == (T,)
        (gx,) = torch.autograd.grad(out, [a["x"]], torch.empty_like(out))
        assert gx.shape == (T, 16)


@pytest.mark.parametrize("check_ids", [True, False])
def test_public_cuda_branch_compiles_fullgraph(monkeypatch, check_ids):
    """skillkern.skill_ffn(..., backend="cuda") as torch.compile(fullgraph=True) traces it:
    the extension load, the id check (an opaque op) and the C++ op with its autograd. Run on
    meta tensors with the backend choice forced to "cuda" (it needs CUDA tensors otherwise);
    the id check cannot read meta values, so at run time it is checked only as traced."""
    monkeypatch.setattr(skillkern._backend, "resolve", lambda op, backend, device: "cuda")
    monkeypatch.setattr(skillkern.ops.skill_ffn.op, "check_ids_in_range", lambda ids, n: None)
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *a: False)  # no autocast for meta
    try:
        skillkern.set_check_ids(check_ids)
        a = _leaves(12, 2, 3, 16, 24, "swiglu", torch.bfloat16, True)
        x = a["x"].reshape(4, 3, 16)

        def step(x, ids):
            return skillkern.skill_ffn(x, ids, a["w1"], a["w2"], a["b1"], a["b2"], activation="swiglu",
                                       backend="cuda")

        y = torch.compile(step, fullgraph=True, backend="aot_eager")(x, a["skill_ids"].reshape(4, 3, 2))
        assert y.shape == (4, 3, 16) and y.dtype == torch.bfloat16
        # (d skill_weights is not checked here: under compile on meta tensors no backend,
        # Triton included, connects it; it is checked on a GPU in test_skill_ffn.py)
        leaves = [a["x"], a["w1"], a["w2"], a["b1"], a["b2"]]
        grads = torch.autograd.grad(y, leaves, torch.empty_like(y))
        for g, t in zip(grads, leaves):
            assert g.shape == t.shape and g.dtype == t.dtype
    finally:
        skillkern.set_check_ids(True)
