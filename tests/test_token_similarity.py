"""token_similarity: every reachable backend against a float64 reference, gradients included.

The reference is evaluated in float64 on the inputs as rounded to the test dtype (the exact
answer for what the backend receives). Tolerance: at most 2x the error of PyTorch's own
einsum path at the same precision, plus a small floor.

Backends: "triton" everywhere (the Triton interpreter on a CPU-only machine); "cuda" (the native
kernels, csrc/token_similarity/) only on a GPU, where it needs the built extension.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import skillkern
from skillkern.ops.token_similarity.op import index_dtype
from skillkern.ops.token_similarity.reference import token_similarity_ref
from skillkern.ops.token_similarity.triton_impl import logical_indices

from conftest import DEVICE, assert_error_names, bad_arg_params, poison_padding, rel_err

ON_GPU = pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a CUDA device")
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, ON_GPU])
BACKENDS = ["triton", CUDA]
EDGE_BACKENDS = ["torch", "triton", CUDA]  # the edge-input contract holds for the reference too
FLOOR = {torch.float32: 1e-5, torch.bfloat16: 5e-3, torch.float16: 2e-3}


def fwd_op(backend):
    """The registered forward op of a backend: -> (i2t, t2i, row_idx, col_idx), the indices as
    (Bi, Bt, Ni) and (Bi, Bt, Nt) views whatever layout the backend keeps them in."""
    if backend == "triton":
        def triton_fwd(img, txt, *masks):
            i2t, t2i, R, C = torch.ops.skillkern.token_similarity_fwd(img, txt, *masks)
            return (i2t, t2i, *logical_indices(R, C, img.shape[1], txt.shape[1]))
        return triton_fwd
    return torch.ops.skillkern.token_similarity_fwd_cuda


def random_mask(B, N, lo):
    """Random real-token counts in [min(lo, N), N], real tokens first (like padded captions)."""
    lengths = torch.randint(min(lo, N), N + 1, (B,))
    return torch.arange(N)[None, :] < lengths[:, None]


def make_inputs(Bi, Bt, Ni, Nt, D, masked, empty_img=False, empty_txt=False):
    img = F.normalize(torch.randn(Bi, Ni, D, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(Bt, Nt, D, dtype=torch.float64), dim=-1)
    im = random_mask(Bi, Ni, 1) if masked else None
    tm = random_mask(Bt, Nt, 1) if masked else None
    if empty_img:
        im = torch.ones(Bi, Ni, dtype=torch.bool) if im is None else im
        im[Bi // 2] = False
    if empty_txt:
        tm = torch.ones(Bt, Nt, dtype=torch.bool) if tm is None else tm
        tm[-1] = False
    mv = lambda t: None if t is None else t.to(DEVICE)
    return img.to(DEVICE), txt.to(DEVICE), mv(im), mv(tm)


def run(img, txt, im, tm, dtype, backend, g_i, g_t):
    a = img.to(dtype).clone().requires_grad_()
    b = txt.to(dtype).clone().requires_grad_()
    if backend == "ref64":
        a = img.to(dtype).double().requires_grad_()
        b = txt.to(dtype).double().requires_grad_()
        i2t, t2i = token_similarity_ref(a, b, im, tm)
    else:
        i2t, t2i = skillkern.token_similarity(a, b, im, tm, backend=backend)
        assert i2t.dtype == torch.float32 and t2i.dtype == torch.float32
    da, db = torch.autograd.grad((i2t * g_i.to(i2t.dtype)).sum() + (t2i * g_t.to(t2i.dtype)).sum(), [a, b])
    return i2t, t2i, da, db


def check(img, txt, im, tm, dtype, backend):
    Bi, Bt = img.shape[0], txt.shape[0]
    g_i = torch.randn(Bi, Bt, device=DEVICE)
    g_t = torch.randn(Bi, Bt, device=DEVICE)
    ref = run(img, txt, im, tm, dtype, "ref64", g_i, g_t)
    base = run(img, txt, im, tm, dtype, "torch", g_i, g_t)
    got = run(img, txt, im, tm, dtype, backend, g_i, g_t)
    for what, x, y, r in zip(("i2t", "t2i", "d_img", "d_txt"), got, base, ref):
        assert torch.isfinite(x).all(), f"{backend}: non-finite {what}"
        err, err_torch = rel_err(x, r), rel_err(y, r)
        assert err <= 2 * err_torch + FLOOR[dtype], f"{backend} {what}: {err:.3g} vs torch {err_torch:.3g}"
    # padding tokens get exactly zero gradient
    if im is not None:
        assert torch.count_nonzero(got[2][~im]) == 0
    if tm is not None:
        assert torch.count_nonzero(got[3][~tm]) == 0


# (label, Bi, Bt, Ni, Nt, D, masked, backends). Every case runs on the CUDA kernels; the first
# block on Triton too (under the interpreter without a GPU: small). The "cuda" block reaches each
# tiling case of csrc/token_similarity/fwd.cu: its three row tiles (128 / 256 / 512 rows of whole
# texts), images straddling column chunks (state carried between chunks), images longer than a
# chunk, texts longer than a tile (roles swapped), the element-wise load path (D not a multiple
# of 8) and int16 indices.
BOTH, NATIVE = ("triton", "cuda"), ("cuda",)
SHAPES = [
    ("Bi != Bt, ViT-B/32-like tokens", 3, 5, 50, 32, 24, True, BOTH),
    ("Ni = 1", 6, 4, 1, 7, 16, True, BOTH),
    ("long Ni = 73, odd D", 2, 3, 73, 9, 19, True, BOTH),
    ("Nt odd, no masks", 4, 3, 12, 13, 32, False, BOTH),
    ("one image, many texts", 1, 9, 5, 6, 8, True, BOTH),
    ("Ni = 150: several image-token chunks", 2, 3, 150, 20, 16, True, BOTH),
    ("Nt = 300: long texts, Ni = 40 (images held)", 3, 2, 40, 300, 8, True, BOTH),
    ("Bi=70, Bt=37: last image and text tiles partial", 70, 37, 9, 5, 16, True, BOTH),
    ("Bi=1, Nt=200: one image, one 256-token text per tile", 1, 3, 10, 200, 16, True, BOTH),
    ("Ni=12, Nt=77: the image side pads better, held", 3, 4, 12, 77, 16, True, BOTH),
    ("D=300: text tile read in D slices", 3, 4, 7, 30, 300, True, BOTH),
    ("Ni=50 x 45 images: 8-chunk groups, images straddle chunks", 45, 7, 50, 32, 64, True, NATIVE),
    ("Nt=200: 256-row tile", 3, 5, 30, 200, 32, True, NATIVE),
    ("Nt=300, Ni=300: 512-row tile, int16 indices both ways", 2, 3, 300, 300, 16, True, NATIVE),
    ("Ni=700: one image over 6 chunks", 3, 4, 700, 20, 32, False, NATIVE),
    ("Nt=600 > 512: texts streamed, images held", 4, 3, 40, 600, 16, True, BOTH),
    ("Nt=3: 16 texts per tile", 9, 40, 17, 3, 24, True, NATIVE),
    ("D=20: element-wise loads", 5, 6, 33, 11, 20, True, NATIVE),
]
TILING = [s for s in SHAPES if s[-1] == NATIVE]
DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _reference_params():
    """Triton: fp32 and bf16 (fp16: test_fp16); CUDA: all three float dtypes."""
    for shape in SHAPES:
        for backend in shape[-1]:
            dtypes = (torch.float32, torch.bfloat16) + ((torch.float16,) if backend == "cuda" else ())
            marks = [pytest.mark.gpu, ON_GPU] if backend == "cuda" else []
            for dtype in dtypes:
                yield pytest.param(shape, dtype, backend, marks=marks,
                                   id=f"{shape[0]}-{DTYPE_IDS[dtype]}-{backend}")


@pytest.mark.parametrize("shape,dtype,backend", list(_reference_params()))
def test_matches_reference(shape, dtype, backend):
    _, Bi, Bt, Ni, Nt, D, masked, _ = shape
    check(*make_inputs(Bi, Bt, Ni, Nt, D, masked), dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["image", "text", "both"])
def test_all_padding_item_scores_zero_without_nan(which, backend):
    img, txt, im, tm = make_inputs(4, 5, 6, 7, 16, True, empty_img=which != "text", empty_txt=which != "image")
    check(img, txt, im, tm, torch.float32, backend)
    for b in ["torch", backend]:
        i2t, t2i = skillkern.token_similarity(img.float(), txt.float(), im, tm, backend=b)
        if which != "text":
            assert torch.count_nonzero(i2t[2]) == 0 and torch.count_nonzero(t2i[2]) == 0
        if which != "image":
            assert torch.count_nonzero(i2t[:, -1]) == 0 and torch.count_nonzero(t2i[:, -1]) == 0


def test_both_sides_longer_than_a_tile_say_what_to_do():
    """Either side may be long (the other is held whole, up to 256 tokens per item); both long is
    refused, naming the argument and the way out."""
    img, txt, _, _ = make_inputs(1, 1, 300, 257, 4, False)
    with pytest.raises(ValueError, match="token_similarity: `txt`.*backend='torch'"):
        skillkern.token_similarity(img.float(), txt.float(), backend="triton")


def test_roles_follow_the_shapes():
    """The side held whole is the one that fits and pads better."""
    from skillkern.ops.token_similarity.triton_impl import swap_roles
    assert not swap_roles(50, 32) and not swap_roles(257, 32) and not swap_roles(4000, 256)
    assert swap_roles(12, 77) and swap_roles(40, 300) and swap_roles(9, 100000)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16(backend):
    check(*make_inputs(3, 4, 10, 8, 32, True), torch.float16, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_and_small_index_state(backend):
    img, txt, im, tm = make_inputs(5, 6, 20, 11, 16, True)
    a, b = img.bfloat16().requires_grad_(), txt.bfloat16().requires_grad_()
    outs = []
    for _ in range(2):
        i2t, t2i = skillkern.token_similarity(a, b, im, tm, backend=backend)
        outs.append([i2t, t2i, *torch.autograd.grad(i2t.sum() + 2 * t2i.sum(), [a, b])])
    for x, y in zip(*outs):
        assert torch.equal(x, y)
    _, _, row_idx, col_idx = fwd_op(backend)(a, b, im, tm)
    assert row_idx.dtype == torch.uint8 and row_idx.shape == (5, 6, 20)
    assert col_idx.dtype == torch.uint8 and col_idx.shape == (5, 6, 11)


def _bad_args():
    def base():
        return dict(img=torch.randn(2, 3, 8), txt=torch.randn(4, 5, 8), img_mask=None,
                    txt_mask=torch.rand(4, 5) < 0.5, backend="auto")

    cases = [
        ("D mismatch", "txt", lambda a: a.update(txt=torch.randn(4, 5, 9))),
        ("dtype mismatch", "txt", lambda a: a.update(txt=a["txt"].double())),
        ("img not 3-d", "img", lambda a: a.update(img=torch.randn(2, 8))),
        ("img int", "img", lambda a: a.update(img=torch.ones(2, 3, 8, dtype=torch.long))),
        ("img not a Tensor", "img", lambda a: a.update(img=a["img"].tolist())),
        ("txt None", "txt", lambda a: a.update(txt=None)),
        ("device mismatch", "txt", lambda a: a.update(txt=a["txt"].to("meta"))),
        ("img_mask shape", "img_mask", lambda a: a.update(img_mask=torch.ones(2, 4, dtype=torch.bool))),
        ("img_mask not a Tensor", "img_mask", lambda a: a.update(img_mask=[[True] * 3] * 2)),
        ("txt_mask dtype", "txt_mask", lambda a: a.update(txt_mask=torch.ones(4, 5))),
        ("txt_mask device", "txt_mask", lambda a: a.update(txt_mask=torch.ones(4, 5, dtype=torch.bool, device="meta"))),
        ("unknown backend", "backend", lambda a: a.update(backend="cudnn")),
    ]
    return bad_arg_params(base, cases)


@pytest.mark.parametrize("base,name,mutate", _bad_args())
def test_bad_input_names_the_argument(base, name, mutate):
    assert_error_names(skillkern.token_similarity, base, name, mutate)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dims", [(3, 4, 6, 5), (0, 4, 6, 5), (3, 4, 0, 5), (3, 4, 6, 0)],
                         ids=["full", "Bi=0", "Ni=0", "Nt=0"])
def test_opcheck(dims, masked, backend):
    """Schema, fake kernel (the empty shapes' outputs too) and autograd registration."""
    img, txt, im, tm = make_inputs(*dims, 16, masked)
    op = getattr(torch.ops.skillkern, {"triton": "token_similarity_fwd", "cuda": "token_similarity_fwd_cuda"}[backend])
    torch.library.opcheck(op.default, (img.float().requires_grad_(), txt.float().requires_grad_(), im, tm))


@pytest.mark.gpu
@ON_GPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck_cuda_backward_op(dtype):
    img, txt, im, tm = make_inputs(3, 4, 6, 5, 16, True)
    img, txt = img.to(dtype), txt.to(dtype)
    _, _, row_idx, col_idx = torch.ops.skillkern.token_similarity_fwd_cuda(img, txt, im, tm)
    g_i, g_t = torch.randn(3, 4, device=DEVICE), torch.randn(3, 4, device=DEVICE)
    torch.library.opcheck(torch.ops.skillkern.token_similarity_bwd_cuda.default,
                          (g_i, g_t, img, txt, im, tm, row_idx, col_idx))


@pytest.mark.parametrize("backend", EDGE_BACKENDS)
def test_torch_compile_fullgraph_forward_backward(backend):
    """One compiled function (default inductor: its codegen is where compiled backwards went
    wrong, pytorch#180642) at two batch sizes, the second a recompile with a dynamic batch:
    loss and gradients as in eager."""

    def loss(a, b, im, tm):
        i2t, t2i = skillkern.token_similarity(F.normalize(a, dim=-1), F.normalize(b, dim=-1), im, tm,
                                              backend=backend)
        return (i2t.logsumexp(1) - i2t.diag()).mean() + (t2i.t().logsumexp(1) - t2i.diag()).mean()

    compiled = torch.compile(loss, fullgraph=True)
    for B in (4, 6):
        img, txt, im, tm = make_inputs(B, B, 9, 6, 16, True)
        a, b = img.float().requires_grad_(), txt.float().requires_grad_()
        l_c = compiled(a, b, im, tm)
        g_c = torch.autograd.grad(l_c, [a, b])
        l_e = loss(a, b, im, tm)
        g_e = torch.autograd.grad(l_e, [a, b])
        torch.testing.assert_close(l_c, l_e, rtol=1e-5, atol=1e-6)
        for x, y in zip(g_c, g_e):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- edge inputs
# The contract of every backend, the torch one included: empty batches, no tokens, garbage in
# the padding, meta tensors.

# (label, Bi, Bt, Ni, Nt)
EMPTY = [
    ("no images", 0, 3, 5, 4),
    ("no texts", 3, 0, 5, 4),
    ("no items", 0, 0, 5, 4),
    ("Ni = 0", 3, 4, 0, 5),
    ("Nt = 0", 3, 4, 5, 0),
    ("Ni = Nt = 0", 2, 3, 0, 0),
    ("no images of no tokens", 0, 3, 0, 4),
]


@pytest.mark.parametrize("backend", EDGE_BACKENDS)
@pytest.mark.parametrize("masked", [False, True], ids=["no-masks", "masks"])
@pytest.mark.parametrize("shape", EMPTY, ids=[e[0] for e in EMPTY])
def test_zero_sizes(shape, masked, backend):
    """An empty batch gives empty (Bi, Bt) outputs; with Ni = 0 or Nt = 0 no item has a real
    token, so every pair scores 0. Gradients: zeros shaped like the inputs."""
    _, Bi, Bt, Ni, Nt = shape
    img = torch.randn(Bi, Ni, 8, device=DEVICE, requires_grad=True)
    txt = torch.randn(Bt, Nt, 8, device=DEVICE, requires_grad=True)
    im = torch.rand(Bi, Ni, device=DEVICE) < 0.7 if masked else None
    tm = torch.rand(Bt, Nt, device=DEVICE) < 0.7 if masked else None
    i2t, t2i = skillkern.token_similarity(img, txt, im, tm, backend=backend)
    for out in (i2t, t2i):
        assert out.shape == (Bi, Bt) and out.dtype == torch.float32 and out.device == img.device
        assert torch.count_nonzero(out) == 0
    up = torch.randn(2, Bi, Bt, device=DEVICE)
    d_img, d_txt = torch.autograd.grad((i2t * up[0]).sum() + (t2i * up[1]).sum(), [img, txt])
    assert d_img.shape == img.shape and d_txt.shape == txt.shape
    assert torch.count_nonzero(d_img) == 0 and torch.count_nonzero(d_txt) == 0


@pytest.mark.parametrize("backend", EDGE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("side", ["img", "txt", "both"])
def test_nan_and_inf_in_padding_reach_no_output_or_gradient(side, dtype, backend):
    """Padding holding NaN and +-inf (as fully masked attention rows do) gives the very outputs
    and gradients of random finite padding, items without a real token included."""
    img, txt, im, tm = make_inputs(5, 4, 13, 7, 16, True, empty_img=True, empty_txt=True)
    assert (~im).any() and (~tm).any()
    bad_img = poison_padding(img, im) if side != "txt" else img
    bad_txt = poison_padding(txt, tm) if side != "img" else txt
    g_i, g_t = torch.randn(2, 5, 4, device=DEVICE)
    clean = run(img, txt, im, tm, dtype, backend, g_i, g_t)
    dirty = run(bad_img, bad_txt, im, tm, dtype, backend, g_i, g_t)
    for what, x, y in zip(("i2t", "t2i", "d_img", "d_txt"), dirty, clean):
        assert torch.isfinite(x).all(), f"{backend}: non-finite {what}"
        assert torch.equal(x, y), f"{backend}: {what} depends on the padding"


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("dims", [(3, 5, 7, 4), (0, 5, 7, 4), (3, 5, 0, 4)], ids=["full", "Bi=0", "Ni=0"])
def test_meta_tensors(dims, dtype, backend):
    """Shapes and dtypes without data (model tracing, FakeTensor), forward and backward."""
    Bi, Bt, Ni, Nt = dims
    img = torch.empty(Bi, Ni, 16, dtype=dtype, device="meta", requires_grad=True)
    txt = torch.empty(Bt, Nt, 16, dtype=dtype, device="meta", requires_grad=True)
    im = torch.empty(Bi, Ni, dtype=torch.bool, device="meta")
    tm = torch.empty(Bt, Nt, dtype=torch.bool, device="meta")
    i2t, t2i = skillkern.token_similarity(img, txt, im, tm, backend=backend)
    for out in (i2t, t2i):
        assert out.is_meta and out.shape == (Bi, Bt) and out.dtype == torch.float32
    d_img, d_txt = torch.autograd.grad(i2t.sum() + t2i.sum(), [img, txt])
    assert d_img.is_meta and d_img.shape == img.shape and d_img.dtype == dtype
    assert d_txt.is_meta and d_txt.shape == txt.shape and d_txt.dtype == dtype


@pytest.mark.gpu
@ON_GPU
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("Ni", [50, 12, 257, 24])
def test_gpu_realistic_shapes(Ni, backend):
    check(*make_inputs(128, 96, Ni, 32, 256, True), torch.bfloat16, backend)


@pytest.mark.gpu
@ON_GPU
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_never_allocates_bi_bt_ni_nt(backend):
    Bi = Bt = 512
    Ni, Nt, D = 50, 32, 256
    img = F.normalize(torch.randn(Bi, Ni, D, device=DEVICE), dim=-1).bfloat16().requires_grad_()
    txt = F.normalize(torch.randn(Bt, Nt, D, device=DEVICE), dim=-1).bfloat16().requires_grad_()
    skillkern.token_similarity(img, txt, backend=backend)  # compile / warm up
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    i2t, t2i = skillkern.token_similarity(img, txt, backend=backend)
    (i2t.sum() + t2i.sum()).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    dense = Bi * Bt * Ni * Nt * 2  # what the naive path materialises, in bf16
    assert extra < dense / 10, f"peak extra {extra / 2**20:.1f} MB vs {dense / 2**20:.0f} MB naive"


# ----------------------------------------------------------------------------- the CUDA kernels


def reference_indices(img, txt, im, tm):
    """float64 arg-max indices (first of equal maxima, 0 for an item without real tokens) and
    the gap between the best and second-best candidate."""
    sim = torch.einsum("akd,bld->abkl", img.double(), txt.double())
    Bi, Ni = img.shape[:2]
    Bt, Nt = txt.shape[:2]
    im = torch.ones(Bi, Ni, dtype=torch.bool, device=img.device) if im is None else im
    tm = torch.ones(Bt, Nt, dtype=torch.bool, device=img.device) if tm is None else tm
    row = sim.masked_fill(~tm[None, :, None, :], -math.inf)
    col = sim.masked_fill(~im[:, None, :, None], -math.inf)

    def gap(x, dim):
        top = x.topk(2, dim=dim).values if x.shape[dim] > 1 else torch.cat([x, x - math.inf], dim)
        return top.select(dim, 0) - top.select(dim, 1)

    ri = torch.where(tm.any(1)[None, :, None], row.argmax(3), 0)
    ci = torch.where(im.any(1)[:, None, None], col.argmax(2), 0)
    return ri, ci, gap(row, 3), gap(col, 2)


def _index_params():
    """CUDA: its tiling cases and the first shapes; Triton (everywhere): the first shapes and its
    tile edges, the exchanged roles included."""
    for shape in TILING[:3] + SHAPES[:3]:
        yield pytest.param(shape, "cuda", marks=[pytest.mark.gpu, ON_GPU], id=f"{shape[0]}-cuda")
    for shape in SHAPES[:3] + SHAPES[6:10]:
        yield pytest.param(shape, "triton", id=f"{shape[0]}-triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape,backend", list(_index_params()))
def test_indices_are_the_arg_max(shape, backend, dtype):
    """Where the best candidate beats the second by more than the kernel's rounding (1e-4), the
    stored index must be the float64 arg-max; CUDA: everywhere (where items have no real token,
    0); Triton: at real tokens (a padding token's index is never read, and it leaves it open)."""
    _, Bi, Bt, Ni, Nt, D, masked, _ = shape
    img, txt, im, tm = make_inputs(Bi, Bt, Ni, Nt, D, masked)
    img, txt = img.to(dtype), txt.to(dtype)
    _, _, row_idx, col_idx = fwd_op(backend)(img, txt, im, tm)
    assert row_idx.dtype == index_dtype(Nt) and col_idx.dtype == index_dtype(Ni)
    ri, ci, r_gap, c_gap = reference_indices(img, txt, im, tm)
    every = backend == "cuda"
    real_i = torch.ones(Bi, Ni, dtype=torch.bool, device=DEVICE) if im is None or every else im
    real_t = torch.ones(Bt, Nt, dtype=torch.bool, device=DEVICE) if tm is None or every else tm
    for what, got, want, g, real in (("row_idx", row_idx, ri, r_gap, real_i[:, None, :]),
                                     ("col_idx", col_idx, ci, c_gap, real_t[None, :, :])):
        clear = ~(g <= 1e-4) & real  # inf / nan gaps: one candidate, or none
        assert clear.sum() > 0.5 * real.expand_as(clear).sum(), "test inputs too close to test anything"
        bad = (got.long() != want) & clear
        assert not bad.any(), f"{what}: {int(bad.sum())} of {int(clear.sum())} clear arg-maxes differ"


@pytest.mark.parametrize("backend", ["triton", CUDA])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_ties_go_to_the_first_token(dtype, backend):
    """Exactly equal similarities (duplicate tokens; inputs in multiples of 1/8, so every dot
    product is exact in any order): the lowest token index wins, in both directions, as in
    torch.max and the Triton kernels. 45 images of 50 tokens also put ties across chunks."""
    g = torch.Generator().manual_seed(0)
    img = torch.randint(-2, 3, (45, 50, 16), generator=g).double() / 8
    txt = torch.randint(-2, 3, (7, 12, 16), generator=g).double() / 8
    img[:, 9] = img[:, 3]
    img[:, 49] = img[:, 1]
    txt[:, 7] = txt[:, 2]
    im = random_mask(45, 50, 1).to(DEVICE)
    img, txt = img.to(DEVICE, dtype), txt.to(DEVICE, dtype)
    _, _, row_idx, col_idx = fwd_op(backend)(img, txt, im, None)
    ri, ci, _, _ = reference_indices(img, txt, im, None)
    # Triton: a padding token's index is never read and left open; CUDA: the arg-max everywhere
    real = im[:, None, :].expand_as(ri) if backend == "triton" else torch.ones_like(ri, dtype=torch.bool)
    assert torch.equal(row_idx.long()[real], ri[real])
    assert torch.equal(col_idx.long(), ci)


@pytest.mark.gpu
@ON_GPU
def test_cuda_long_texts_need_no_swap_by_the_caller():
    """Texts over 512 tokens: the CUDA kernels swap the roles themselves, as the Triton launchers do."""
    img, txt, im, tm = make_inputs(3, 2, 9, 700, 16, True)
    check(img, txt, im, tm, torch.float32, "cuda")
    _, _, row_idx, col_idx = torch.ops.skillkern.token_similarity_fwd_cuda(img.float(), txt.float(), im, tm)
    assert row_idx.dtype == torch.int16 and col_idx.dtype == torch.uint8
    # both sides longer than a tile: refused, naming the argument
    img, txt, _, _ = make_inputs(1, 1, 513, 514, 4, False)
    with pytest.raises(ValueError, match="token_similarity: `txt`.*backend='torch'"):
        skillkern.token_similarity(img.float(), txt.float(), backend="cuda")


@pytest.mark.gpu
@ON_GPU
def test_cuda_non_contiguous_inputs():
    img, txt, im, tm = make_inputs(4, 5, 14, 9, 32, True)
    img, txt = img.float(), txt.float()
    a = torch.stack([img, -img], dim=-1)[..., 0]  # the same values at stride 2 in D
    b = txt.transpose(0, 1).contiguous().transpose(0, 1)  # batch and token strides exchanged
    assert not a.is_contiguous() and not b.is_contiguous()
    want = token_similarity_ref(img.double(), txt.double(), im, tm)
    for x, y in zip(skillkern.token_similarity(a, b, im, tm, backend="cuda"), want):
        torch.testing.assert_close(x, y.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@ON_GPU
def test_cuda_op_argument_errors_name_the_argument():
    """Direct torch.ops calls skip the Python checks: the C++ checks name the argument."""
    img, txt, im, tm = make_inputs(2, 3, 6, 5, 8, True)
    img, txt = img.float(), txt.float()
    fwd = torch.ops.skillkern.token_similarity_fwd_cuda
    with pytest.raises(RuntimeError, match="token_similarity: `img_mask`"):
        fwd(img, txt, im.cpu(), tm)
    with pytest.raises(RuntimeError, match="token_similarity: `txt`"):
        fwd(img, txt.half(), im, tm)
    with pytest.raises(RuntimeError, match="token_similarity: `txt`"):
        fwd(img[:, :, :7], txt, im, tm)
    _, _, r, c = fwd(img, txt, im, tm)
    g = torch.randn(2, 3, device=DEVICE)
    bwd = torch.ops.skillkern.token_similarity_bwd_cuda
    with pytest.raises(RuntimeError, match="token_similarity: `row_idx`"):
        bwd(g, g, img, txt, im, tm, r.float(), c)
    with pytest.raises(RuntimeError, match="token_similarity: `g_t2i`"):
        bwd(g, g.t(), img, txt, im, tm, r, c)
    with pytest.raises(RuntimeError, match="token_similarity: `col_idx`"):
        bwd(g, g, img, txt, im, tm, r, c.cpu())
