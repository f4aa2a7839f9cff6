"""The native CUDA ops of token_reduce / token_pool without a GPU: schemas, Meta (shape)
kernels, their argument errors, and torch.compile + autograd through them on meta tensors
(which runs the C++ Meta kernels of both ops and the Python autograd registration of
skillkern::token_reduce_fwd_cuda). The kernels' numbers are checked on a GPU in
tests/test_token_reduce.py (backend "cuda") and on the CPU emulation by tests/test_emulation.py.

With a dev build: SKILLKERN_EXTENSION_LIB=$(.venv/bin/python csrc/build_dev.py token_reduce).
"""
from __future__ import annotations

import pytest
import torch

from skillkern import _backend

if not _backend.has_cuda_extension():
    pytest.skip(f"the CUDA extension is not available: {_backend._extension_import_error()}",
                allow_module_level=True)

FWD = torch.ops.skillkern.token_reduce_fwd_cuda.default
BWD = torch.ops.skillkern.token_reduce_bwd_cuda.default
META = torch.device("meta")


def test_schemas():
    assert str(FWD._schema) == (
        "skillkern::token_reduce_fwd_cuda(Tensor x, Tensor? w_score, Tensor? scores, Tensor? ln_weight, "
        "Tensor? ln_bias, Tensor? mask, float eps, bool pool_input) -> (Tensor, Tensor, Tensor)")
    assert str(BWD._schema) == (
        "skillkern::token_reduce_bwd_cuda(Tensor d_out, Tensor out, Tensor x, Tensor? w_score, Tensor? scores, "
        "Tensor? ln_weight, Tensor? ln_bias, Tensor? mask, Tensor lse, float eps, bool pool_input) -> Tensor[]")


def inputs(B, N, D, S, dtype, *, pool=False, ln=True, ln_bias=True, mask=True, param_dtype=None, device=META):
    pd = param_dtype or dtype
    a = {"x": torch.empty(B, N, D, dtype=dtype, device=device), "w_score": None, "scores": None, "ln_weight": None,
             "ln_bias": None, "mask": None}
    if pool:
        a["scores"] = torch.empty(B, N, S, dtype=pd, device=device)
    else:
        a["w_score"] = torch.empty(D, S, dtype=pd, device=device)
    if ln and not pool:
        a["ln_weight"] = torch.empty(D, dtype=pd, device=device)
        if ln_bias:
            a["ln_bias"] = torch.empty(D, dtype=torch.float32, device=device)  # a third dtype on purpose
    if mask:
        a["mask"] = torch.empty(B, N, dtype=torch.bool, device=device)
    return a


def fwd(a, pool_input=False):
    return FWD(a["x"], a["w_score"], a["scores"], a["ln_weight"], a["ln_bias"], a["mask"], 1e-5, pool_input)


# (label, B, N, D, S, dtype, options)
META_CASES = [
    ("ViT-L/14 bf16", 4, 256, 768, 24, torch.bfloat16, {}),
    ("fp32, odd sizes, no bias", 3, 37, 33, 5, torch.float32, {"ln_bias": False}),
    ("fp16, no LN, no mask", 2, 9, 16, 1, torch.float16, {"ln": False, "mask": False}),
    ("token_pool (scores given)", 3, 21, 40, 12, torch.bfloat16, {"pool": True}),
    ("fp32 parameters, bf16 x", 2, 50, 64, 32, torch.bfloat16, {"param_dtype": torch.float32}),
    ("B = 0", 0, 7, 24, 3, torch.float32, {}),
]


@pytest.mark.parametrize("label,B,N,D,S,dtype,opts", META_CASES, ids=[c[0] for c in META_CASES])
def test_meta_shapes_and_dtypes(label, B, N, D, S, dtype, opts):
    a = inputs(B, N, D, S, dtype, **opts)
    out, lse, lo = fwd(a)
    assert (out.shape, out.dtype, out.device) == ((B, S, D), dtype, META)
    assert (lse.shape, lse.dtype) == ((B, S), torch.float32)
    # out's rounding residual where 16-bit x is pooled raw (scores given, or no LayerNorm), else
    # 0-element
    raw16 = dtype != torch.float32 and (a["scores"] is not None or a["ln_weight"] is None)
    assert (tuple(lo.shape), lo.dtype) == ((B, S, D) if raw16 else (0,), dtype)
    grads = BWD(out, out, a["x"], a["w_score"], a["scores"], a["ln_weight"], a["ln_bias"], a["mask"], lse, 1e-5,
                False)
    assert len(grads) == 5
    expected = [a["x"], a["w_score"], a["scores"], a["ln_weight"],
                a["ln_bias"] if a["ln_weight"] is not None else None]
    for g, t, name in zip(grads, expected, ["dx", "d_w_score", "d_scores", "d_ln_weight", "d_ln_bias"]):
        want = (tuple(t.shape), t.dtype) if t is not None else ((0,), dtype)  # absent: 0-element, x's dtype
        assert (tuple(g.shape), g.dtype) == want, name
        assert g.device == META and g.is_contiguous(), name


def _bad_fwd_cases():
    def base():
        return inputs(2, 5, 8, 3, torch.float32)

    def upd(**kw):
        return lambda a: a.update(kw)

    m = META
    return [
        ("x 2-d", "x", upd(x=torch.empty(5, 8, device=m))),
        ("x int", "x", upd(x=torch.empty(2, 5, 8, dtype=torch.int64, device=m))),
        ("w_score wrong D", "w_score", upd(w_score=torch.empty(9, 3, device=m))),
        ("w_score int", "w_score", upd(w_score=torch.empty(8, 3, dtype=torch.int32, device=m))),
        ("S = 33 > 32", "w_score", upd(w_score=torch.empty(8, 33, device=m))),
        ("S = 0", "w_score", upd(w_score=torch.empty(8, 0, device=m))),
        ("both w_score and scores", "w_score", upd(scores=torch.empty(2, 5, 3, device=m))),
        ("neither w_score nor scores", "w_score", upd(w_score=None)),
        ("scores wrong N", "scores", upd(w_score=None, ln_weight=None, ln_bias=None,
                                         scores=torch.empty(2, 4, 3, device=m))),
        ("ln_weight shape", "ln_weight", upd(ln_weight=torch.empty(7, device=m))),
        ("ln_bias without ln_weight", "ln_bias", upd(ln_weight=None)),
        ("ln_bias shape", "ln_bias", upd(ln_bias=torch.empty(9, device=m))),
        ("mask shape", "mask", upd(mask=torch.empty(2, 6, dtype=torch.bool, device=m))),
        ("mask dtype", "mask", upd(mask=torch.empty(2, 5, device=m))),
        ("mask device", "mask", upd(mask=torch.ones(2, 5, dtype=torch.bool))),
        ("w_score device", "w_score", upd(w_score=torch.ones(8, 3))),
    ]


@pytest.mark.parametrize("label,name,mutate", _bad_fwd_cases(), ids=[c[0] for c in _bad_fwd_cases()])
def test_meta_fwd_errors_name_the_argument(label, name, mutate):
    a = inputs(2, 5, 8, 3, torch.float32)
    mutate(a)
    with pytest.raises(RuntimeError, match=f"token_reduce_fwd_cuda: `{name}`"):
        fwd(a)


def test_meta_fwd_eps_error():
    a = inputs(2, 5, 8, 3, torch.float32)
    with pytest.raises(RuntimeError, match="token_reduce_fwd_cuda: `eps`"):
        FWD(a["x"], a["w_score"], None, a["ln_weight"], a["ln_bias"], a["mask"], 0.0, False)


@pytest.mark.parametrize("name", ["d_out", "out", "lse"])
def test_meta_bwd_errors_name_the_argument(name):
    a = inputs(2, 5, 8, 3, torch.bfloat16)
    out, lse, _ = fwd(a)
    args = {"d_out": out, "out": out, "lse": lse}
    args[name] = (torch.empty(2, 4, 8, dtype=torch.bfloat16, device=META) if name != "lse"
                  else torch.empty(2, 3, dtype=torch.bfloat16, device=META))
    with pytest.raises(RuntimeError, match=f"token_reduce_bwd_cuda: `{name}`"):
        BWD(args["d_out"], args["out"], a["x"], a["w_score"], None, a["ln_weight"], a["ln_bias"], a["mask"],
            args["lse"], 1e-5, False)


def test_meta_fwd_residual_with_pool_input_and_fp32_out_in_bwd():
    """pool_input pools raw x: 16-bit x gets out_lo, and the backward takes out + out_lo as fp32
    (only `out` may be fp32: d_out keeps x's dtype)."""
    a = inputs(2, 5, 8, 3, torch.bfloat16)
    out, lse, lo = fwd(a, pool_input=True)
    assert lo.shape == out.shape and lo.dtype == torch.bfloat16
    grads = BWD(out, out.float() + lo.float(), a["x"], a["w_score"], None, a["ln_weight"], a["ln_bias"], a["mask"],
                lse, 1e-5, True)
    assert grads[0].shape == a["x"].shape
    exact = out.float() + lo.float()
    for d_out in (out.float(), exact):  # the very tensor passed as out too: still refused as d_out
        with pytest.raises(RuntimeError, match="token_reduce_bwd_cuda: `d_out`"):
            BWD(d_out, exact, a["x"], a["w_score"], None, a["ln_weight"], a["ln_bias"], a["mask"], lse, 1e-5, True)


def test_meta_bwd_rejects_a_d_out_of_another_dtype():
    a = inputs(2, 5, 8, 3, torch.bfloat16)
    out, lse, _ = fwd(a)
    with pytest.raises(RuntimeError, match="token_reduce_bwd_cuda: `d_out` must have x's dtype"):
        BWD(out.float(), out, a["x"], a["w_score"], None, a["ln_weight"], a["ln_bias"], a["mask"], lse, 1e-5, False)


def test_cpu_tensors_have_no_kernel():
    a = inputs(2, 5, 8, 3, torch.float32, device=torch.device("cpu"))
    with pytest.raises(NotImplementedError, match="token_reduce_fwd_cuda"):
        fwd(a)


@pytest.mark.parametrize("pool", [False, True], ids=["token_reduce", "token_pool"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_compile_fullgraph_and_autograd_on_meta(pool, dtype):
    """torch.compile (aot_eager) of a function calling the CUDA op, forward and backward on meta
    tensors: the Meta kernels must give the shapes / dtypes autograd and AOT tracing expect (a
    wrong one fails here: shape mismatch in the backward or a wrong output below)."""
    B, N, D, S = 3, 13, 24, 5
    a = inputs(B, N, D, S, dtype, pool=pool)
    leaves = [t.requires_grad_() for n, t in a.items() if t is not None and n != "mask"]

    def f(x, w_score, scores, ln_weight, ln_bias, mask):
        out, lse, _ = torch.ops.skillkern.token_reduce_fwd_cuda(x * 2, w_score, scores, ln_weight, ln_bias, mask, 1e-5,
                                                             False)
        return out.float().square().sum() + lse.sum(), out

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss, out = compiled(**a)
    assert (out.shape, out.dtype) == ((B, S, D), dtype)
    assert loss.shape == () and loss.dtype == torch.float32
    grads = torch.autograd.grad(loss, leaves)
    for g, t in zip(grads, leaves):
        assert (g.shape, g.dtype, g.device) == (t.shape, t.dtype, META)
    # eager autograd through the registered formula as well
    loss_e, _ = f(**a)
    grads_e = torch.autograd.grad(loss_e, leaves)
    for g, t in zip(grads_e, leaves):
        assert (g.shape, g.dtype) == (t.shape, t.dtype)


def test_compile_dynamic_shapes_on_meta():
    """dynamic=True: the Meta kernels see symbolic B and N (their checks guard on them); one
    compiled graph serves two batch shapes, with gradients of the right shapes."""
    def f(x, w, lw, lb, mask):
        out, lse, _ = torch.ops.skillkern.token_reduce_fwd_cuda(x, w, None, lw, lb, mask, 1e-5, False)
        return out.float().square().sum() + lse.sum(), out

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=True)
    for B, N in [(3, 13), (5, 17)]:
        a = inputs(B, N, 24, 5, torch.bfloat16)
        leaves = [a[n].requires_grad_() for n in ["x", "w_score", "ln_weight", "ln_bias"]]
        loss, out = compiled(*leaves, a["mask"])
        assert out.shape == (B, 5, 24)
        for g, t in zip(torch.autograd.grad(loss, leaves), leaves):
            assert (g.shape, g.dtype) == (t.shape, t.dtype)


def test_public_api_refuses_cuda_backend_for_cpu_tensors():
    import skillkern
    x, w = torch.randn(2, 5, 8), torch.randn(8, 3)
    with pytest.raises(skillkern.BackendUnavailable, match="CUDA tensors"):
        skillkern.token_reduce(x, w, backend="cuda")
    with pytest.raises(skillkern.BackendUnavailable, match="CUDA tensors"):
        skillkern.token_pool(x, torch.randn(2, 5, 3), backend="cuda")
