"""skill_ffn's contract for edge inputs, on every backend (torch, triton; cuda on a GPU with
the extension): every integer dtype of skill_ids, meta tensors, zero tokens, garbage (NaN,
inf) where no active slot reads, bad input that leaves the inputs as they were, and the
reference backward that the torch backend runs."""
import pytest
import torch

import skillkern
from skillkern.ops.skill_ffn.reference import (ID_DTYPES, route_ref, skill_ffn_bwd_ref, skill_ffn_ref,
                                               slot_scale)

from conftest import DEVICE, rel_err, skill_ffn_sanitize
from skillkern.ops.skill_ffn import kernels as _skill_ffn_kernels
from test_skill_ffn import BACKENDS, _bad_args, make_problem, run

ALL = ["torch"] + BACKENDS
ID_NAMES = [str(t).removeprefix("torch.") for t in ID_DTYPES]


def _grads(y, leaves, seed=1):
    """Gradients of <y, g> for a fixed random g w.r.t. every leaf (None for an unused one)."""
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y)
    return torch.autograd.grad(y, list(leaves.values()), g, allow_unused=True)


# ----------------------------------------------------------------------------- id dtypes


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("idtype", ID_DTYPES, ids=ID_NAMES)
def test_every_id_dtype_gives_the_int64_result(idtype, backend):
    """The same routing in any integer dtype gives bit-identical outputs and gradients (uint8
    has no -1: its tokens all have two active slots; the signed dtypes carry -1 holes)."""
    holes = 0.0 if idtype == torch.uint8 else 0.3
    p, ids = make_problem((29,), 24, 40, 5, 2, "uniform", holes, True, "gelu")
    y64, l64 = run(p, ids, torch.float32, "gelu", backend)
    y, leaves = run(p, ids.to(idtype), torch.float32, "gelu", backend)
    assert torch.equal(y, y64)
    for a, b in zip(_grads(y, leaves), _grads(y64, l64)):
        assert torch.equal(a, b)
    assert torch.count_nonzero(y) > 0


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("idtype", ID_DTYPES, ids=ID_NAMES)
def test_out_of_range_ids_of_every_dtype_are_named(idtype, backend):
    """A wrong id is reported with its true value (in uint8, 200 is not "< -1"), in each
    dtype's own extremes; an in-range batch of the same dtype passes."""
    E = 5
    p, ids = make_problem((12,), 16, 24, E, 1, "uniform", 0.0, False, "relu")
    info = torch.iinfo(idtype)
    for bad_value in sorted({E, info.max} | ({info.min, -2} if info.min < 0 else set())):
        bad = ids.to(idtype).clone()
        bad[7] = bad_value
        with pytest.raises(ValueError, match=rf"`skill_ids`.*\(min {bad_value}, max {bad_value}\)"):
            run(p, bad, torch.float32, "relu", backend)
    y, _ = run(p, ids.to(idtype), torch.float32, "relu", backend)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("backend", ALL)
def test_unchecked_out_of_range_ids_are_empty_slots_in_every_dtype(backend):
    """With the check off, an id outside [-1, E) is an empty slot, whatever its dtype: 200 in
    uint8, -100 in int8, and 2^32 + 1 in int64 (which must not wrap to skill 1 in int32)."""
    E = 4
    p, ids = make_problem((16,), 16, 24, E, 2, "uniform", 0.0, True, "silu")
    try:
        skillkern.set_check_ids(False)
        for idtype, bad_value in [(torch.uint8, 200), (torch.int8, -100), (torch.int64, 2**32 + 1)]:
            bad, clean = ids.to(idtype).clone(), ids.clone()
            bad[3, 1], bad[9, 0] = bad_value, bad_value
            clean[3, 1], clean[9, 0] = -1, -1
            y_bad, l_bad = run(p, bad, torch.float32, "silu", backend)
            y_clean, l_clean = run(p, clean, torch.float32, "silu", backend)
            assert torch.equal(y_bad, y_clean), f"{idtype} {bad_value}"
            for a, b in zip(_grads(y_bad, l_bad), _grads(y_clean, l_clean)):
                assert torch.equal(a, b)
            # the routing itself puts such a slot last, with the empty ones (inside skill_ffn a
            # slot routed by mistake would only be hidden by its zero weight)
            for got, want in zip(skillkern.skill_route(bad, E, backend=backend), route_ref(clean, E)):
                assert torch.equal(got.cpu(), want.cpu()), f"{idtype} {bad_value}"
    finally:
        skillkern.set_check_ids(True)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("idtype", ID_DTYPES, ids=ID_NAMES)
def test_route_every_id_dtype(idtype, backend):
    E, N = 6, 1500  # two routing blocks of the Triton kernels
    ids = torch.randint(0, E, (N,))
    if idtype != torch.uint8:
        ids = ids.masked_fill(torch.rand(N) < 0.2, -1)
    order, offsets = skillkern.skill_route(ids.to(idtype).to(DEVICE), E, backend=backend)
    ref_order, ref_offsets = route_ref(ids, E)
    assert torch.equal(order.cpu(), ref_order) and torch.equal(offsets.cpu(), ref_offsets)


# ----------------------------------------------------------------------------- meta tensors


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("k,weighted,activation,bias", [(1, False, "gelu", True), (2, True, "swiglu", True),
                                                        (3, True, "relu", False)])
def test_meta_tensors_give_shapes_and_dtypes(k, weighted, activation, bias, backend):
    E, d, h = 4, 24, 40
    h1 = 2 * h if activation == "swiglu" else h
    meta = dict(device="meta", dtype=torch.bfloat16)
    leaves = {"x": torch.empty(2, 7, d, **meta), "w1": torch.empty(E, d, h1, **meta),
              "w2": torch.empty(E, h, d, **meta)}
    if bias:
        leaves.update(b1=torch.empty(E, h1, **meta), b2=torch.empty(E, d, **meta))
    ids = torch.empty((2, 7, k) if k > 1 else (2, 7), dtype=torch.int64, device="meta")
    if weighted:
        leaves["skill_weights"] = torch.empty(ids.shape, device="meta")
    for t in leaves.values():
        t.requires_grad_()
    y = skillkern.skill_ffn(leaves["x"], ids, leaves["w1"], leaves["w2"], leaves.get("b1"), leaves.get("b2"),
                            skill_weights=leaves.get("skill_weights"), activation=activation, backend=backend)
    assert y.device.type == "meta" and y.shape == (2, 7, d) and y.dtype == torch.bfloat16
    grads = torch.autograd.grad(y, list(leaves.values()), torch.empty_like(y))
    for g, t in zip(grads, leaves.values()):
        assert g.device.type == "meta" and g.shape == t.shape and g.dtype == t.dtype
    order, offsets = skillkern.skill_route(ids, E, backend=backend)
    assert order.shape == (ids.numel(),) and offsets.shape == (E + 1,)
    assert order.dtype == offsets.dtype == torch.int32 and order.device.type == "meta"


def test_skillffn_layer_on_meta():
    layer = skillkern.nn.SkillFFN(16, 32, 3, activation="silu", device="meta")
    y = layer(torch.empty(5, 16, device="meta"), torch.empty(5, 2, dtype=torch.int8, device="meta"))
    assert y.shape == (5, 16) and y.dtype == torch.float32 and y.device.type == "meta"


# ----------------------------------------------------------------------------- zero-size


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("lead,k", [((0,), 1), ((3, 0), 2), ((0, 4), 3)], ids=["T=0", "(3,0) k=2", "(0,4) k=3"])
def test_zero_tokens(lead, k, backend):
    """An empty batch gives an empty output and gradients of the right shapes: weight and bias
    gradients exact zeros, d skill_weights empty."""
    E, d, h = 3, 16, 24
    x = torch.randn(*lead, d, device=DEVICE, requires_grad=True)
    ids = torch.zeros(lead + ((k,) if k > 1 else ()), dtype=torch.long, device=DEVICE)
    sw = torch.rand(ids.shape, device=DEVICE, requires_grad=True)
    params = [torch.randn(s, device=DEVICE, requires_grad=True) for s in ((E, d, h), (E, h, d), (E, h), (E, d))]
    y = skillkern.skill_ffn(x, ids, *params, skill_weights=sw, activation="gelu", backend=backend)
    assert y.shape == x.shape and y.dtype == x.dtype
    gx, gsw, *gp = torch.autograd.grad(y.sum(), [x, sw, *params])
    assert gx.shape == x.shape and gsw.shape == sw.shape
    for g, t in zip(gp, params):
        assert g.shape == t.shape and torch.count_nonzero(g) == 0
    order, offsets = skillkern.skill_route(ids, E, backend=backend)
    assert order.shape == (0,) and offsets.tolist() == [0] * (E + 1)


# ----------------------------------------------------------------------------- garbage padding


def _poisoned(p, ids, empty_tokens, poison):
    """p with `poison` (NaN or inf) in the x rows of tokens without an active slot and in the
    skill_weights of every -1 slot."""
    q = dict(p)
    q["x"] = p["x"].clone()
    q["x"][empty_tokens] = poison
    q["skill_weights"] = p["skill_weights"].masked_fill(ids < 0, poison)
    return q


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_garbage_where_no_active_slot_reads(dtype, poison, backend):
    """NaN or inf in x rows of tokens whose slots are all -1, and in the weights of -1 slots,
    reach no output and no gradient: the results equal those of clean (random) padding, a
    -1 slot's weight gradient is 0 and an empty token's x gradient is 0."""
    p, ids = make_problem((40,), 24, 36, 4, 2, "uniform", 0.3, True, "gelu")
    ids[::5] = -1  # tokens 0, 5, 10, ...: no active slot
    empty = (ids < 0).all(-1)
    y_c, l_c = run(p, ids, dtype, "gelu", backend)
    y_p, l_p = run(_poisoned(p, ids, empty, poison), ids, dtype, "gelu", backend)
    assert torch.isfinite(y_p).all() and torch.equal(y_p, y_c)
    assert torch.count_nonzero(y_p[empty]) == 0
    grads = dict(zip(l_p, _grads(y_p, l_p)))
    for (name, a), b in zip(grads.items(), _grads(y_c, l_c)):
        assert torch.isfinite(a).all(), f"{name}: non-finite gradient"
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name}: gradient differs from clean padding")
    assert torch.count_nonzero(grads["x"][empty]) == 0
    assert torch.count_nonzero(grads["skill_weights"][ids < 0]) == 0


# ----------------------------------------------------------------------------- bad input


def _type_error_cases():
    E, d, h = 3, 8, 16

    def base():
        return dict(x=torch.randn(6, d), skill_ids=torch.randint(0, E, (6,)),
                    w1=torch.randn(E, d, h), w2=torch.randn(E, h, d), b1=torch.randn(E, h),
                    b2=torch.randn(E, d))

    cases = [
        ("x a list", "x", lambda a: a.update(x=a["x"].tolist())),
        ("ids a list", "skill_ids", lambda a: a.update(skill_ids=a["skill_ids"].tolist())),
        ("w1 None", "w1", lambda a: a.update(w1=None)),
        ("w2 an array", "w2", lambda a: a.update(w2=a["w2"].numpy())),
        ("weights a float", "skill_weights", lambda a: a.update(skill_weights=0.5)),
    ]
    return [pytest.param(base, name, mutate, id=label) for label, name, mutate in cases]


def _call_and_check_unchanged(kwargs, name, kind):
    # (a meta tensor holds no values to compare)
    before = {n: t.clone() for n, t in kwargs.items() if isinstance(t, torch.Tensor) and not t.is_meta}
    with pytest.raises(kind, match=f"`{name}`|{name} must"):
        skillkern.skill_ffn(**kwargs)
    for n, t in before.items():
        assert torch.equal(kwargs[n], t), f"`{n}` was changed by the failed call"


@pytest.mark.parametrize("base,name,mutate", _bad_args())
def test_bad_input_leaves_the_inputs_unchanged(base, name, mutate):
    kwargs = base()
    mutate(kwargs)
    _call_and_check_unchanged(kwargs, name, ValueError)


@pytest.mark.parametrize("base,name,mutate", _type_error_cases())
def test_wrong_python_type_is_a_type_error(base, name, mutate):
    kwargs = base()
    mutate(kwargs)
    _call_and_check_unchanged(kwargs, name, TypeError)


@pytest.mark.parametrize("backend", ALL)
def test_out_of_range_ids_leave_the_inputs_unchanged(backend):
    p, ids = make_problem((20,), 16, 24, 3, 2, "uniform", 0.2, True, "gelu")
    ids[4, 0] = 3
    kwargs = {n: t.float() for n, t in p.items()}
    kwargs.update(skill_ids=ids, activation="gelu", backend=backend)
    _call_and_check_unchanged(kwargs, "skill_ids", ValueError)


@pytest.mark.parametrize("bad,kind", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)])
def test_skill_route_bad_num_skills(bad, kind):
    with pytest.raises(kind, match="`num_skills`"):
        skillkern.skill_route(torch.zeros(4, dtype=torch.long), bad)


@pytest.mark.parametrize("bad,kind", [(torch.zeros(4), ValueError), (torch.zeros(4, dtype=torch.bool), ValueError),
                                      ([0, 1], TypeError)], ids=["float", "bool", "list"])
def test_skill_route_bad_ids(bad, kind):
    with pytest.raises(kind, match="`skill_ids`"):
        skillkern.skill_route(bad, 3)


@pytest.mark.parametrize("kwargs,name,kind", [
    (dict(d_model=0), "d_model", ValueError), (dict(d_ff=-1), "d_ff", ValueError),
    (dict(num_skills=0), "num_skills", ValueError), (dict(d_ff=8.0), "d_ff", TypeError),
    (dict(activation="tanh"), "activation", ValueError)], ids=["d_model 0", "d_ff<0", "E=0", "d_ff float", "act"])
def test_skillffn_layer_bad_arguments(kwargs, name, kind):
    args = dict(d_model=8, d_ff=16, num_skills=3) | kwargs
    with pytest.raises(kind, match=f"SkillFFN: `{name}`"):
        skillkern.nn.SkillFFN(**args)
    with pytest.raises(ValueError, match="SkillFFN.from_dense: `fc2`"):
        skillkern.nn.SkillFFN.from_dense(torch.nn.Linear(8, 16), torch.nn.Linear(16, 9), 2)


# ----------------------------------------------------------------------------- reference backward


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu", "swiglu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_reference_backward_is_autograd_of_the_reference(activation, bias):
    """skill_ffn_bwd_ref (the torch backend's backward) against torch autograd of
    skill_ffn_ref in float64: the same chain rule, so equal to rounding."""
    p, ids = make_problem((31,), 20, 28, 4, 3, "uniform", 0.3, True, activation, bias)
    ids = ids.cpu()
    leaves = {n: t.cpu().clone().requires_grad_() for n, t in p.items() if t is not None}
    scale = slot_scale(ids, 4, leaves.pop("skill_weights"), dtype=torch.float64).detach().requires_grad_()
    args = [leaves["x"], ids, scale, leaves["w1"], leaves["w2"], leaves.get("b1"), leaves.get("b2"), activation]
    y = skill_ffn_ref(*args)
    dy = torch.randn_like(y)
    wanted = [leaves[n] for n in ("x", "w1", "w2", "b1", "b2") if n in leaves] + [scale]
    expected = torch.autograd.grad(y, wanted, dy)
    order, offsets = route_ref(ids, 4)
    with torch.no_grad():
        got = skill_ffn_bwd_ref(dy, leaves["x"], scale, leaves["w1"], leaves["w2"], leaves.get("b1"),
                                leaves.get("b2"), order, offsets, activation, True)
    got = [g for g in got if g is not None]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(got[-1][ids < 0]) == 0


def test_torch_backend_ops_pass_opcheck():
    p, ids = make_problem((23,), 16, 40, 3, 2, "uniform", 0.2, True, "swiglu")
    x, w1, w2, b1, b2 = (p[n].float().requires_grad_() for n in ("x", "w1", "w2", "b1", "b2"))
    scale = slot_scale(ids, 3, p["skill_weights"].float()).requires_grad_()
    torch.library.opcheck(torch.ops.skillkern.skill_ffn_fwd_torch.default,
                          (x, ids, scale, w1, w2, b1, b2, "swiglu"))
    torch.library.opcheck(torch.ops.skillkern.skill_ffn_fwd_torch.default,
                          (x, ids, scale.detach(), w1, w2, None, None, "swiglu"))


def test_package_exports():
    import skillkern.ops.skill_ffn as pkg

    assert pkg.SkillFFN is skillkern.nn.SkillFFN and pkg.skill_ffn is skillkern.skill_ffn
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None


def test_sanitize_script_runs_its_cases_on_cpu():
    """csrc/skill_ffn/sanitize.py (run under compute-sanitizer on the GPU machine) builds each of
    its cases and differentiates them: its float64 reference and the torch backend agree on CPU.
    (On the H200 it once stopped at its first case: dy was taken for a leaf.)"""
    san = skill_ffn_sanitize()
    for label, T, k, E, d, h, activation, bias, routing in san.SHAPES:
        inputs, ids = san.make_case(T, k, E, d, h, activation, bias, routing, torch.device("cpu"))
        ref = san.run(inputs, ids, E, activation, "reference", torch.float32)
        got = san.run(inputs, ids, E, activation, "torch-same-dtype", torch.float32)
        assert set(got) == set(ref) == {"y", "x", "w1", "w2", "skill_weights"} | ({"b1", "b2"} if bias else set())
        for name in ref:
            assert rel_err(got[name], ref[name]) < 1e-5, (label, name)


def test_tma_rules_and_the_prune_of_tma_configs():
    """Weights go by TMA only on sm_90+ (or the interpreter) with a contiguous last dimension and
    16-byte aligned strides; a launch that cannot take TMA drops the autotune configs asking for
    it before the fit rule (where nothing else is left it keeps them: they run the cp.async path)."""
    import triton

    from skillkern.ops import _common

    w = torch.empty(3, 16, 24, dtype=torch.bfloat16)
    with _common.target_arch(90):
        assert _common.tma_ok(w) and _common.tma_ok(torch.empty(3, 16, 4))
        assert not _common.tma_ok(torch.empty(3, 16, 23, dtype=torch.bfloat16))  # 46-byte rows
        assert not _common.tma_ok(torch.empty(3, 24, 16, dtype=torch.bfloat16).transpose(1, 2))
        assert not _common.tma_ok(torch.empty(3 * 16 * 24 + 1, dtype=torch.bfloat16)[1:].view(3, 16, 24))
    with _common.target_arch(80):
        assert not _common.tma_ok(w)
    configs = [triton.Config({"BLOCK": b, "USE_TMA": t}) for t in (True, False) for b in (32, 64)]
    tuner = _common.autotune(_skill_ffn_kernels._skill_down_kernel, configs, key=["K"])
    prune = tuner.early_config_prune
    with _common.fit_check(lambda kernel, args, kwargs: (0, True)):
        assert prune(configs, {}, TMA_OK=False) == configs[2:]
        assert prune(configs, {}, TMA_OK=True) == configs
        assert prune(configs[:2], {}, TMA_OK=False) == configs[:2]


def test_autotune_first_keeps_one_config(monkeypatch):
    """SKILLKERN_AUTOTUNE=first (the GPU test run): each autotuned kernel keeps its first config."""
    import triton

    from skillkern.ops import _common

    configs = [triton.Config({"BLOCK": b}) for b in (32, 64, 128)]
    assert len(_common.autotune(_skill_ffn_kernels._skill_down_kernel, configs, key=["K"]).configs) == 3
    monkeypatch.setenv("SKILLKERN_AUTOTUNE", "first")
    assert _common.autotune(_skill_ffn_kernels._skill_down_kernel, configs, key=["K"]).configs == configs[:1]
