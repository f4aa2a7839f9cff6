"""skill_ffn: every reachable backend against a float64 reference, gradients included.

Tolerance rule (flash-attn's): a backend's relative RMS error against the float64 reference
may be at most 2x the error of PyTorch's own per-skill loop at the same precision, plus a
small floor for shapes where torch happens to be nearly exact.
"""
import pytest
import torch

import skillkern
from skillkern import BackendUnavailable
from skillkern.ops.skill_ffn.reference import route_ref, skill_ffn_ref, slot_scale

from conftest import DEVICE, assert_error_names, bad_arg_params, rel_err

# "torch" is the baseline every comparison is made against; "cuda" (the compiled extension,
# csrc/skill_ffn/) runs wherever the Triton backend runs on a GPU
BACKENDS = ["triton"] + (["cuda"] if DEVICE.type == "cuda" and skillkern.has_cuda_extension() else [])
needs_gpu = pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a CUDA device")
# No NaN may be computed anywhere, masked lanes included: a NaN in the interpreter's matmul means
# a kernel read memory nothing wrote (the TMA tiles of a partial last tile read past their skill)
pytestmark = pytest.mark.filterwarnings("error:invalid value encountered:RuntimeWarning")

needs_cuda_backend = pytest.mark.skipif("cuda" not in BACKENDS, reason="needs a CUDA device and the extension")
FLOOR = {torch.float32: 1e-5, torch.bfloat16: 5e-3, torch.float16: 2e-3}



def make_ids(lead, k, E, routing, hole_frac, gen=None):
    """Skill ids of shape lead + (k,) (k slots, distinct skills per token), -1 holes."""
    T = 1
    for s in lead:
        T *= s
    if routing == "one":  # every token on skill E - 1
        ids = torch.full((T, k), -1, dtype=torch.long)
        ids[:, 0] = E - 1
    elif routing == "sparse":  # only skills 0 and E - 1 used: the others are empty
        ids = torch.where(torch.rand(T, k) < 0.5, 0, E - 1)
        if k > 1:
            ids[:, 1:] = -1
    else:  # uniform over distinct skills per token
        ids = torch.argsort(torch.rand(T, E), dim=1)[:, :k]
    holes = torch.rand(T, k) < hole_frac
    ids = ids.masked_fill(holes, -1)
    return ids.reshape(*lead, k) if k > 1 else ids[:, 0].reshape(lead)


def make_problem(lead, d, h, E, k, routing="uniform", hole_frac=0.0, weighted=False,
                 activation="gelu", bias=True):
    """float64 master inputs (fresh random, never zeros) on DEVICE."""
    h1 = 2 * h if activation == "swiglu" else h
    p = {
        "x": torch.randn(*lead, d, dtype=torch.float64),
        "w1": torch.randn(E, d, h1, dtype=torch.float64) / d ** 0.5,
        "w2": torch.randn(E, h, d, dtype=torch.float64) / h ** 0.5,
        "b1": torch.randn(E, h1, dtype=torch.float64) * 0.5 if bias else None,
        "b2": torch.randn(E, d, dtype=torch.float64) * 0.5 if bias else None,
    }
    ids = make_ids(lead, k, E, routing, hole_frac)
    p["skill_weights"] = torch.rand(ids.shape, dtype=torch.float64) + 0.5 if weighted else None
    p = {n: (t.to(DEVICE) if t is not None else None) for n, t in p.items()}
    return p, ids.to(DEVICE)


def reference64(p, ids, activation, dtype=torch.float64):
    """float64 reference on the inputs as rounded to `dtype`: the exact answer for the values
    a backend actually receives, so input rounding (which flips relu' near 0 at random) is
    not counted as kernel error."""
    leaves = {n: t.to(dtype).double().requires_grad_() for n, t in p.items() if t is not None}
    if "skill_weights" in leaves:  # passed as fp32 whatever the dtype, see run()
        leaves["skill_weights"] = p["skill_weights"].float().double().requires_grad_()
    E = p["w1"].shape[0]
    d = p["x"].shape[-1]
    ids2 = ids.reshape(p["x"].numel() // d, -1)
    sw = leaves.get("skill_weights")
    scale = slot_scale(ids2, E, sw.reshape(ids2.shape) if sw is not None else None, dtype=torch.float64)
    y = skill_ffn_ref(leaves["x"].reshape(-1, d), ids2, scale, leaves["w1"], leaves["w2"],
                      leaves.get("b1"), leaves.get("b2"), activation).reshape(p["x"].shape)
    return y, leaves


def run(p, ids, dtype, activation, backend, recompute=True):
    leaves = {n: t.to(dtype).clone().requires_grad_() for n, t in p.items() if t is not None}
    if "skill_weights" in leaves:  # weights stay fp32: they are per-slot coefficients
        leaves["skill_weights"] = p["skill_weights"].float().clone().requires_grad_()
    y = skillkern.skill_ffn(leaves["x"], ids, leaves["w1"], leaves["w2"], leaves.get("b1"),
                            leaves.get("b2"), skill_weights=leaves.get("skill_weights"),
                            activation=activation, recompute=recompute, backend=backend)
    return y, leaves


def check_against_reference(p, ids, dtype, activation, recompute=True):
    y64, l64 = reference64(p, ids, activation, dtype)
    g = torch.randn_like(y64).to(dtype).double()
    names = list(l64)
    grads64 = torch.autograd.grad(y64, [l64[n] for n in names], g)
    y_t, l_t = run(p, ids, dtype, activation, "torch")
    grads_t = torch.autograd.grad(y_t, [l_t[n] for n in names], g.to(dtype))
    for backend in BACKENDS:
        y_b, l_b = run(p, ids, dtype, activation, backend, recompute)
        assert y_b.dtype == dtype and y_b.shape == p["x"].shape
        grads_b = torch.autograd.grad(y_b, [l_b[n] for n in names], g.to(dtype))
        for what, got, torch_val, ref in [("y", y_b, y_t, y64)] + list(zip(names, grads_b, grads_t, grads64)):
            assert torch.isfinite(got).all(), f"{backend}: non-finite {what}"
            err, err_torch = rel_err(got, ref), rel_err(torch_val, ref)
            assert err <= 2 * err_torch + FLOOR[dtype], (
                f"{backend} {what}: rel err {err:.3g} vs torch {err_torch:.3g} (dtype {dtype})")


# (label, token shape, d, h, E, k, routing, hole fraction)
SHAPES = [
    ("T < block, odd d and h", (5,), 19, 23, 3, 1, "uniform", 0.0),
    ("multi-tile, skill boundary inside a block", (100,), 40, 72, 2, 1, "uniform", 0.0),
    ("(B, S, d) input, prime E", (3, 17), 24, 40, 7, 1, "uniform", 0.0),
    ("empty skills", (50,), 32, 48, 6, 1, "sparse", 0.0),
    ("all tokens on one skill", (45,), 32, 40, 4, 1, "one", 0.0),
    ("k=1 with -1 holes", (40,), 24, 36, 4, 1, "uniform", 0.3),
    ("k=2 with -1 holes", (40,), 24, 36, 4, 2, "uniform", 0.3),
    ("k=3 with -1 holes", (33,), 24, 36, 5, 3, "uniform", 0.3),
    ("k == E", (21,), 16, 32, 3, 3, "uniform", 0.0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("weighted", [False, True], ids=["average", "weighted"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_matches_reference(shape, weighted, dtype):
    _, lead, d, h, E, k, routing, holes = shape
    activation = "swiglu" if k == 2 else "gelu"
    p, ids = make_problem(lead, d, h, E, k, routing, holes, weighted, activation)
    check_against_reference(p, ids, dtype, activation)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu", "swiglu"])
def test_every_activation(activation, dtype):
    p, ids = make_problem((37,), 40, 48, 4, 2, "uniform", 0.2, True, activation)
    check_against_reference(p, ids, dtype, activation)


STORED_SHAPES = [s for s in SHAPES if s[0] in ("T < block, odd d and h", "empty skills", "all tokens on one skill",
                                                 "k=2 with -1 holes")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu", "swiglu"])
@pytest.mark.parametrize("shape", STORED_SHAPES, ids=[s[0] for s in STORED_SHAPES])
def test_recompute_false_matches_reference(shape, activation, dtype):
    """recompute=False: the backward reads the forward's pre-activation instead of redoing GEMM1."""
    _, lead, d, h, E, k, routing, holes = shape
    p, ids = make_problem(lead, d, h, E, k, routing, holes, True, activation)
    check_against_reference(p, ids, dtype, activation, recompute=False)


def test_recompute_switch_on_the_module_and_bad_value():
    layer = skillkern.nn.SkillFFN(16, 24, 3, activation="gelu", recompute=False)
    assert layer.recompute is False and "recompute=False" in repr(layer)
    p, ids = make_problem((9,), 16, 24, 3, 1)
    with pytest.raises(TypeError, match="skill_ffn: `recompute` must be a bool"):
        skillkern.skill_ffn(p["x"], ids, p["w1"], p["w2"], recompute="no")
    with pytest.raises(TypeError, match="SkillFFN: `recompute` must be a bool"):
        skillkern.nn.SkillFFN(16, 24, 3, recompute=1)


def test_no_bias_fp16():
    p, ids = make_problem((29,), 24, 40, 3, 2, "uniform", 0.2, False, "silu", bias=False)
    check_against_reference(p, ids, torch.float16, "silu")


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_unused_skill_gets_exact_zero_grads(backend):
    p, ids = make_problem((30,), 24, 32, 5, 1, "sparse", 0.0, True, "gelu")
    used = set(ids.unique().tolist())
    y, leaves = run(p, ids, torch.float32, "gelu", backend)
    y.sum().backward()
    for e in range(5):
        for n in ("w1", "w2", "b1", "b2"):
            gr = leaves[n].grad[e]
            assert torch.isfinite(gr).all()
            if e not in used:
                assert torch.count_nonzero(gr) == 0, f"skill {e} unused but {n}.grad != 0"
            else:
                assert torch.count_nonzero(gr) > 0


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_token_without_skill_gets_zeros(backend):
    p, ids = make_problem((24,), 16, 32, 3, 2, "uniform", 0.0, True, "relu")
    ids[::3] = -1  # every third token: no active slot
    y, leaves = run(p, ids, torch.float32, "relu", backend)
    assert torch.count_nonzero(y[::3]) == 0
    assert torch.count_nonzero(y[1::3]) > 0
    y.square().sum().backward()
    assert torch.count_nonzero(leaves["x"].grad[::3]) == 0
    assert torch.count_nonzero(leaves["skill_weights"].grad[::3]) == 0


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_deterministic(backend):
    p, ids = make_problem((70,), 32, 48, 3, 2, "uniform", 0.1, True, "gelu")
    outs = []
    for _ in range(2):
        y, leaves = run(p, ids, torch.bfloat16, "gelu", backend)
        grads = torch.autograd.grad(y, list(leaves.values()), torch.ones_like(y))
        outs.append([y, *grads])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# (label, token shape, d, h, E, k, routing, hole fraction, rows per weight-gradient chunk):
# skills longer than the chunk are split and their partials summed in a fixed order
SPLIT_SHAPES = [
    ("one skill holds every row, chunk not a multiple of BLOCK_R", (130,), 40, 48, 4, 1, "one", 0.0, 24),
    ("empty skills beside split ones", (120,), 32, 40, 6, 1, "sparse", 0.0, 32),
    ("k=2, holes, some skills of one chunk", (70,), 24, 36, 4, 2, "uniform", 0.2, 40),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=[s[0] for s in SPLIT_SHAPES])
def test_split_weight_gradients_match_reference_and_repeat_bitwise(shape, activation, dtype, monkeypatch):
    from skillkern.ops.skill_ffn import triton_impl as TI
    _, lead, d, h, E, k, routing, holes, R = shape
    monkeypatch.setattr(TI, "_wgrad_chunk_rows", lambda N, P, Q, device: R)
    p, ids = make_problem(lead, d, h, E, k, routing, holes, True, activation)
    check_against_reference(p, ids, dtype, activation, recompute=False)
    grads = []
    for _ in range(2):
        y, leaves = run(p, ids, dtype, activation, "triton", recompute=False)
        grads.append(torch.autograd.grad(y, [leaves["w1"], leaves["w2"], leaves["b1"]], torch.ones_like(y)))
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    unused = [e for e in range(E) if not (ids == e).any()]
    for e in unused:  # no rows: exact zeros, written by the reduction
        assert not grads[0][0][e].any() and not grads[0][1][e].any()


def test_wgrad_chunk_rule():
    """The chunk length is a power of two >= 256 that keeps every program within one SM's
    share of the launch; the workspace bound covers every routing."""
    from skillkern.ops.skill_ffn import triton_impl as TI
    cpu = torch.device("cpu")  # 132 SMs assumed off the GPU
    assert TI._wgrad_chunk_rows(32768, 1024, 4096, cpu) == 32768  # goal shape: 256 tiles per skill, no split
    assert TI._wgrad_chunk_rows(32768, 512, 2048, cpu) == 8192  # 64 tiles per skill
    assert TI._wgrad_chunk_rows(32768, 256, 1024, cpu) == 2048  # 16 tiles per skill
    assert TI._wgrad_chunk_rows(200, 32, 32, cpu) == 200 and TI._wgrad_partials(200, 200) == 0
    assert TI._wgrad_chunk_rows(300, 32, 32, cpu) == 256 and TI._wgrad_partials(300, 256) == 2
    gen = torch.Generator().manual_seed(0)
    for N, P, Q in [(32768, 256, 1024), (100000, 512, 2048), (5000, 64, 64)]:
        R = TI._wgrad_chunk_rows(N, P, Q, cpu)
        assert R & (R - 1) == 0 and 256 <= R <= max(256, N * (P // 128) * (Q // 128) // 132)
        for _ in range(20):  # random skews of N rows over E skills
            E = int(torch.randint(1, 40, (1,), generator=gen))
            cut = torch.sort(torch.randint(0, N + 1, (E - 1,), generator=gen)).values.tolist()
            rows = [b - a for a, b in zip([0] + cut, cut + [N])]
            need = sum(-(-r // R) for r in rows if r > R)
            assert need <= TI._wgrad_partials(N, R)


ROUTE_CASES = [
    ("one slot", 1, 3, 0.0),
    ("several route blocks, odd N", 2500, 5, 0.2),
    ("E=1", 300, 1, 0.1),
    ("all empty", 77, 4, 1.0),
    ("E=8", 4097, 8, 0.05),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("idtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("case", ROUTE_CASES, ids=[c[0] for c in ROUTE_CASES])
def test_route_matches_reference(case, idtype, backend):
    _, N, E, holes = case
    ids = torch.randint(0, E, (N,)).masked_fill(torch.rand(N) < holes, -1).to(idtype).to(DEVICE)
    order, offsets = skillkern.skill_route(ids, E, backend=backend)
    ref_order, ref_offsets = route_ref(ids, E)
    assert order.dtype == torch.int32 and offsets.dtype == torch.int32
    assert torch.equal(order, ref_order) and torch.equal(offsets, ref_offsets)


def test_out_of_range_ids_raise_and_check_can_be_disabled():
    p, ids = make_problem((20,), 16, 24, 3, 2, "uniform", 0.0, False, "gelu")
    bad = ids.clone()
    bad[3, 1] = 3  # == E
    bad[5, 0] = -2
    for backend in ["torch"] + BACKENDS:
        with pytest.raises(ValueError, match="skill_ids"):
            run(p, bad, torch.float32, "gelu", backend)
    clean = bad.masked_fill((bad < -1) | (bad >= 3), -1)
    try:
        skillkern.set_check_ids(False)
        assert not skillkern.check_ids_enabled()
        for backend in ["torch"] + BACKENDS:  # documented: out-of-range ids act as empty slots
            y_bad, _ = run(p, bad, torch.float32, "gelu", backend)
            y_clean, _ = run(p, clean, torch.float32, "gelu", backend)
            assert torch.equal(y_bad, y_clean)
    finally:
        skillkern.set_check_ids(True)


def _bad_args():
    """(label, argument the error must name, mutation of the valid kwargs)."""
    E, d, h = 3, 8, 16

    def base():
        return dict(x=torch.randn(6, d), skill_ids=torch.randint(0, E, (6,)),
                    w1=torch.randn(E, d, h), w2=torch.randn(E, h, d), b1=torch.randn(E, h),
                    b2=torch.randn(E, d))

    cases = [
        ("x float64", "x", lambda a: a.update(x=a["x"].double())),
        ("x int", "x", lambda a: a.update(x=a["x"].long())),
        ("ids float", "skill_ids", lambda a: a.update(skill_ids=a["skill_ids"].float())),
        ("ids wrong shape", "skill_ids", lambda a: a.update(skill_ids=a["skill_ids"][:5])),
        ("ids on another device", "skill_ids", lambda a: a.update(skill_ids=a["skill_ids"].to("meta"))),
        ("w1 not 3-d", "w1", lambda a: a.update(w1=a["w1"][0])),
        ("w1 wrong d", "w1", lambda a: a.update(w1=torch.randn(E, d + 1, h))),
        ("w1 dtype", "w1", lambda a: a.update(w1=a["w1"].double())),
        ("w1 on another device", "w1", lambda a: a.update(w1=a["w1"].to("meta"))),
        ("w2 wrong h", "w2", lambda a: a.update(w2=torch.randn(E, h + 1, d))),
        ("w2 wrong E", "w2", lambda a: a.update(w2=torch.randn(E + 1, h, d))),
        ("b1 wrong shape", "b1", lambda a: a.update(b1=torch.randn(E, h + 2))),
        ("b2 wrong shape", "b2", lambda a: a.update(b2=torch.randn(d))),
        ("weights wrong shape", "skill_weights", lambda a: a.update(skill_weights=torch.rand(6, 2))),
        ("weights int", "skill_weights", lambda a: a.update(skill_weights=torch.ones(6, dtype=torch.long))),
        ("bad activation", "activation", lambda a: a.update(activation="tanh")),
        ("swiglu odd width", "w1", lambda a: a.update(activation="swiglu", w1=torch.randn(E, d, 2 * h + 1),
                                                        b1=None)),
        ("bad backend", "backend", lambda a: a.update(backend="cublas")),
    ]
    return bad_arg_params(base, cases)


@pytest.mark.parametrize("base,name,mutate", _bad_args())
def test_bad_input_names_the_argument(base, name, mutate):
    assert_error_names(skillkern.skill_ffn, base, name, mutate)


def test_missing_backend_says_how_to_get_it():
    x = torch.randn(4, 8)
    ids = torch.zeros(4, dtype=torch.long)
    w1, w2 = torch.randn(2, 8, 16), torch.randn(2, 16, 8)
    with pytest.raises(BackendUnavailable, match="triton|cuda"):
        skillkern.skill_ffn(x, ids, w1, w2, backend="cuda")
    if DEVICE.type == "cpu" and not skillkern._backend.interpreting():
        with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET"):
            skillkern.skill_ffn(x, ids, w1, w2, backend="triton")


def test_auto_backend_on_cpu_is_the_reference():
    assert skillkern._backend.resolve("skill_ffn", "auto", torch.device("cpu")) == "torch"


def _op_args(k, weighted, activation="gelu", bias=True):
    p, ids = make_problem((23,), 16, 40, 3, k, "uniform", 0.2, weighted, activation, bias)
    x, w1, w2 = (p[n].float().requires_grad_() for n in ("x", "w1", "w2"))
    b1 = p["b1"].float().requires_grad_() if bias else None
    b2 = p["b2"].float().requires_grad_() if bias else None
    ids2 = ids.reshape(23, k)
    sw = p["skill_weights"].float().reshape(23, k).requires_grad_() if weighted else None
    scale = slot_scale(ids2, 3, sw).detach().requires_grad_(weighted)
    return (x, ids2, scale, w1, w2, b1, b2, activation)


@pytest.mark.parametrize("k,weighted,activation,bias", [(1, False, "gelu", True), (2, True, "swiglu", True),
                                                        (2, True, "relu", False)])
def test_opcheck(k, weighted, activation, bias):
    args = _op_args(k, weighted, activation, bias)
    torch.library.opcheck(torch.ops.skillkern.skill_ffn_fwd.default, args)
    torch.library.opcheck(torch.ops.skillkern.skill_ffn_fwd_stored.default, args)
    ids = args[1]
    torch.library.opcheck(torch.ops.skillkern.skill_route_triton.default, (ids, 3))
    torch.library.opcheck(torch.ops.skillkern.skill_ids_checked.default, (ids, 3))
    if "cuda" in BACKENDS:  # the C++ op: Meta kernel, Python autograd registration, bwd op
        torch.library.opcheck(torch.ops.skillkern.skill_ffn_fwd_cuda.default, args)


@pytest.mark.parametrize("backend,recompute", [("torch", True)] + [(b, r) for b in BACKENDS for r in (True, False)
                                                                   if r or b == "triton"])
def test_torch_compile_fullgraph_forward_backward(backend, recompute):
    """Two token counts (the second recompiles with a dynamic shape) with the id check on: the
    check is an opaque op in the graph, so the compiled step still rejects a bad id."""
    layer = skillkern.nn.SkillFFN(16, 40, 3, activation="silu", recompute=recompute).to(DEVICE)
    layer.backend = backend

    def step(x, ids, sw):
        return layer(x, ids, sw).square().sum()

    # the custom ops are opaque nodes; inductor compiles the glue around them (on CPU as C++,
    # which this machine can build); "aot_eager" would skip the codegen that pytorch#180642 hit
    compiled = torch.compile(step, fullgraph=True)
    assert skillkern.check_ids_enabled()
    for lead in [(2, 11), (3, 7)]:
        p, ids = make_problem(lead, 16, 40, 3, 2, "uniform", 0.2, True, "silu")
        x = p["x"].float().requires_grad_()
        sw = p["skill_weights"].float().requires_grad_()
        loss_c = compiled(x, ids, sw)
        grads_c = torch.autograd.grad(loss_c, [x, sw, *layer.parameters()])
        loss_e = step(x, ids, sw)
        grads_e = torch.autograd.grad(loss_e, [x, sw, *layer.parameters()])
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads_c, grads_e):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    bad = ids.clone()
    bad[1, 2, 0] = 3
    with pytest.raises(ValueError, match="skill_ids"):
        compiled(x, bad, sw)


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_from_dense_equals_dense_ffn(activation):
    d, h = 24, 40
    fc1 = torch.nn.Linear(d, 2 * h if activation == "swiglu" else h).to(DEVICE)
    fc2 = torch.nn.Linear(h, d).to(DEVICE)
    layer = skillkern.nn.SkillFFN.from_dense(fc1, fc2, num_skills=4, activation=activation)
    assert layer.w1.shape == (4, d, fc1.out_features) and layer.w2.shape == (4, h, d)
    x = torch.randn(3, 10, d, device=DEVICE)
    z = fc1(x)
    if activation == "swiglu":
        g, u = z.chunk(2, -1)
        dense = fc2(torch.nn.functional.silu(g) * u)
    else:
        dense = fc2(torch.nn.functional.gelu(z))
    ids = torch.randint(0, 4, (3, 10, 2), device=DEVICE)
    ids[0, :, 1] = -1  # one active slot for some tokens, two (averaged) for others
    for backend in ["torch"] + BACKENDS:
        layer.backend = backend
        torch.testing.assert_close(layer(x, ids), dense, rtol=1e-4, atol=1e-5)


def test_skillffn_module_matches_functional():
    layer = skillkern.nn.SkillFFN(16, 24, 5, activation="gelu_tanh", bias=False).to(DEVICE)
    assert layer.b1 is None and layer.b2 is None
    assert [n for n, _ in layer.named_parameters()] == ["w1", "w2"]
    x = torch.randn(12, 16, device=DEVICE)
    ids = torch.randint(-1, 5, (12,), device=DEVICE)
    y = layer(x, ids)
    ref = skillkern.skill_ffn(x, ids, layer.w1, layer.w2, activation="gelu_tanh", backend="torch")
    torch.testing.assert_close(y, ref)
    with pytest.raises(ValueError, match="fc1"):
        skillkern.nn.SkillFFN.from_dense(torch.nn.Linear(8, 16), torch.nn.Linear(12, 8), 2)


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_strided_weights_int32_ids_single_token(backend):
    """Weights as transposed views (kernels read them through strides), int32 ids, and an
    x of shape (d,) (no token dimensions) all give the reference's answer."""
    E, d, h = 3, 24, 40
    w1 = torch.randn(E, h, d, device=DEVICE).transpose(1, 2)  # (E, d, h), not contiguous
    w2 = torch.randn(E, d, h, device=DEVICE).transpose(1, 2) / h ** 0.5
    b1, b2 = torch.randn(E, h, device=DEVICE), torch.randn(E, d, device=DEVICE)
    x = torch.randn(17, d, device=DEVICE)
    ids = torch.randint(-1, E, (17, 2), device=DEVICE, dtype=torch.int32)
    got = skillkern.skill_ffn(x, ids, w1, w2, b1, b2, backend=backend)
    ref = skillkern.skill_ffn(x, ids.long(), w1.contiguous(), w2.contiguous(), b1, b2, backend="torch")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    one = skillkern.skill_ffn(x[3], ids[3], w1, w2, b1, b2, backend=backend)
    assert one.shape == (d,)
    torch.testing.assert_close(one, ref[3], rtol=1e-5, atol=1e-5)


def test_autotuning_over_several_configs_keeps_grads_right(monkeypatch):
    """Autotuning runs every config on the real buffers before the chosen one. Simulated here
    (the interpreter cannot time kernels): a fake benchmark runs each config once and picks
    the wider BLOCK_N last, the case where stale partial sums from the narrower config would
    survive into d skill_weights unless the buffer is reset."""
    import triton

    from skillkern.ops.skill_ffn import kernels as K
    from skillkern.ops.skill_ffn import triton_impl as TI

    timings = iter([2.0, 1.0])  # first config (BLOCK_N=32) slower: BLOCK_N=64 is chosen

    def fake_bench(kernel_call, quantiles=None, **_):
        kernel_call()
        t = next(timings)
        return [t, t, t] if quantiles else t

    cfgs = [triton.Config(dict(BLOCK_M=32, BLOCK_N=bn, BLOCK_K=32, GROUP_M=4, USE_TMA=False), num_warps=4,
                          num_stages=1) for bn in (32, 64)]
    tuned = triton.autotune(cfgs, key=["d", "h"], reset_to_zero=TI._up_bwd.reset_to_zero,
                            do_bench=fake_bench)(K._skill_up_bwd_kernel)
    monkeypatch.setattr(TI, "_up_bwd", tuned)
    p, ids = make_problem((30,), 24, 100, 3, 2, "uniform", 0.1, True, "gelu")
    check_against_reference(p, ids, torch.float32, "gelu")
    assert tuned.best_config.kwargs["BLOCK_N"] == 64


def test_autocast_fp32_parameters():
    layer = skillkern.nn.SkillFFN(16, 32, 3, activation="gelu").to(DEVICE)
    x = torch.randn(20, 16, device=DEVICE, requires_grad=True)
    ids = torch.randint(0, 3, (20,), device=DEVICE)
    for backend in ["torch"] + BACKENDS:
        layer.backend = backend
        layer.zero_grad()
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            y = layer(x, ids)
        assert y.dtype == torch.bfloat16
        y.float().sum().backward()
        assert layer.w1.grad.dtype == torch.float32 and torch.count_nonzero(layer.w1.grad) > 0
        ref = skillkern.skill_ffn(x.bfloat16(), ids, *(p.bfloat16() for p in (layer.w1, layer.w2, layer.b1, layer.b2)),
                                  backend="torch")
        torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_no_host_sync_with_id_check_off(backend):
    """The fused forward and backward never sync with the host (once autotuning is done)."""
    layer = skillkern.nn.SkillFFN(256, 512, 6, device=DEVICE, dtype=torch.bfloat16)
    layer.backend = backend
    x = torch.randn(4096, 256, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    ids = torch.randint(-1, 6, (4096, 2), device=DEVICE)
    sw = torch.rand(4096, 2, device=DEVICE, requires_grad=True)
    layer(x, ids, sw).sum().backward()  # autotune (benchmarks, so it syncs) outside the check
    try:
        skillkern.set_check_ids(False)
        torch.cuda.set_sync_debug_mode("error")
        layer(x, ids, sw).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        skillkern.set_check_ids(True)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_gpu_realistic_shapes(activation, dtype):
    """Shapes that exercise the tuned configs: many tiles per skill, skewed routing."""
    p, ids = make_problem((2048,), 256, 384, 6, 2, "uniform", 0.1, True, activation)
    check_against_reference(p, ids, dtype, activation)


# (label, token shape, d, h, E, k, routing, hole fraction): K tails, several column tiles,
# row tiles split across skills, rows of a length that is not a multiple of 16 bytes
EDGE_SHAPES = [
    ("aligned, K tail, 3 column tiles", (700,), 200, 328, 5, 2, "uniform", 0.1),
    ("unaligned d and h (element-wise copies)", (300,), 203, 133, 3, 1, "uniform", 0.0),
    ("one skill with 3 row tiles, others empty", (333,), 64, 96, 6, 1, "one", 0.0),
    ("many skills, few rows each", (150,), 32, 64, 37, 3, "uniform", 0.2),
]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("activation", ["gelu_tanh", "swiglu"])
@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=[s[0] for s in EDGE_SHAPES])
def test_gpu_tile_edges(shape, activation, dtype):
    _, lead, d, h, E, k, routing, holes = shape
    p, ids = make_problem(lead, d, h, E, k, routing, holes, True, activation)
    check_against_reference(p, ids, dtype, activation)


@pytest.mark.gpu
@needs_cuda_backend
def test_cuda_op_argument_errors_name_the_argument():
    """Direct torch.ops calls bypass the Python checks: the C++ checks name the argument."""
    args = list(_op_args(2, True, "gelu"))
    fwd = torch.ops.skillkern.skill_ffn_fwd_cuda
    cases = [
        (0, args[0].double(), "x"),
        (2, args[2].half(), "scale"),
        (3, args[3][:, :-1], "w1"),
        (4, args[4].bfloat16(), "w2"),
        (5, args[5][:-1], "b1"),
        (1, args[1].float(), "skill_ids"),
        (7, "tanh", "activation"),
        (3, args[3].cpu(), "w1"),
    ]
    for i, bad, name in cases:
        a = list(args)
        a[i] = bad
        with pytest.raises(RuntimeError, match=f"skill_ffn: `{name}`"):
            fwd(*a)


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_cuda_matches_triton_closely(dtype):
    """Both backends accumulate in fp32 over the same operands, so they agree far more closely
    than either agrees with a float64 reference (a loose bug, e.g. one dropped K step,
    would show here even where the reference tolerance is wide)."""
    p, ids = make_problem((513,), 96, 160, 4, 2, "uniform", 0.1, True, "gelu")
    outs = {}
    for backend in ("triton", "cuda"):
        y, leaves = run(p, ids, dtype, "gelu", backend)
        g = torch.autograd.grad(y, list(leaves.values()), torch.ones_like(y))
        outs[backend] = [y, *g]
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(outs["triton"], outs["cuda"]):
        assert rel_err(b, a) < tol
