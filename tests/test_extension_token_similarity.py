"""The native token_similarity ops (csrc/token_similarity/) without a GPU: schemas, the Meta
(shape) kernels and their argument errors, torch.compile + autograd through
token_similarity_fwd_cuda on meta tensors (runs the Python autograd registration in op.py and
the backward's Meta kernel). The CUDA kernels' own source runs on the CPU emulation in
test_emulation.py; on a GPU: test_token_similarity.py (backend="cuda") and
csrc/token_similarity/sanitize.py under compute-sanitizer.

Run against a development build with
    SKILLKERN_EXTENSION_LIB=$(.venv/bin/python csrc/build_dev.py token_similarity | tail -1) pytest ...
"""
import pytest
import torch

import skillkern
from skillkern import _backend
from skillkern.ops.token_similarity.op import index_dtype


def _extension_state():
    """(loaded with the token_similarity ops, why not)."""
    if not _backend.has_cuda_extension():
        return False, f"the CUDA extension is not loaded: {_backend._extension_import_error()}"
    if not hasattr(torch.ops.skillkern, "token_similarity_fwd_cuda"):
        return False, "this build of the extension has no token_similarity kernels"
    return True, ""


HAS_EXT, NO_EXT_REASON = _extension_state()
needs_ext = pytest.mark.skipif(not HAS_EXT, reason=NO_EXT_REASON)
FWD = torch.ops.skillkern.token_similarity_fwd_cuda.default if HAS_EXT else None
BWD = torch.ops.skillkern.token_similarity_bwd_cuda.default if HAS_EXT else None
META = torch.device("meta")


@needs_ext
def test_schemas():
    assert str(FWD._schema) == (
        "skillkern::token_similarity_fwd_cuda(Tensor img, Tensor txt, Tensor? img_mask, Tensor? txt_mask) "
        "-> (Tensor, Tensor, Tensor, Tensor)")
    assert str(BWD._schema) == (
        "skillkern::token_similarity_bwd_cuda(Tensor g_i2t, Tensor g_t2i, Tensor img, Tensor txt, "
        "Tensor? img_mask, Tensor? txt_mask, Tensor row_idx, Tensor col_idx) -> (Tensor, Tensor)")
    # the Triton ops take the same arguments: one backward serves both
    triton_fwd = torch.ops.skillkern.token_similarity_fwd.default._schema
    assert [a.name for a in FWD._schema.arguments] == [a.name for a in triton_fwd.arguments]


def meta_inputs(Bi, Bt, Ni, Nt, D, dtype, masks, requires_grad=False):
    img = torch.empty(Bi, Ni, D, device=META, dtype=dtype, requires_grad=requires_grad)
    txt = torch.empty(Bt, Nt, D, device=META, dtype=dtype, requires_grad=requires_grad)
    im = torch.empty(Bi, Ni, device=META, dtype=torch.bool) if masks in ("img", "both") else None
    tm = torch.empty(Bt, Nt, device=META, dtype=torch.bool) if masks in ("txt", "both") else None
    return img, txt, im, tm


# (label, Bi, Bt, Ni, Nt, D, dtype, masks)
SHAPES = [
    ("goal-like bf16, both masks", 3, 5, 50, 32, 24, torch.bfloat16, "both"),
    ("fp32, image mask only, Ni=256 still uint8", 2, 3, 256, 7, 8, torch.float32, "img"),
    ("fp16, Ni=257 -> int16 col_idx", 4, 1, 257, 9, 16, torch.float16, "txt"),
    ("Nt=600 (roles swapped in the kernel) -> int16 row_idx", 2, 2, 12, 600, 16, torch.bfloat16, "both"),
    ("Ni=40000 -> int32 col_idx", 1, 2, 40000, 3, 4, torch.float32, None),
    ("empty image batch", 0, 4, 5, 6, 8, torch.float32, "both"),
    ("no text tokens", 3, 2, 5, 0, 8, torch.bfloat16, None),
]


@needs_ext
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_meta_shapes_and_dtypes(shape):
    _, Bi, Bt, Ni, Nt, D, dtype, masks = shape
    img, txt, im, tm = meta_inputs(Bi, Bt, Ni, Nt, D, dtype, masks)
    i2t, t2i, row_idx, col_idx = FWD(img, txt, im, tm)
    for t in (i2t, t2i):
        assert t.device == META and t.dtype == torch.float32 and t.shape == (Bi, Bt)
    assert row_idx.shape == (Bi, Bt, Ni) and row_idx.dtype == index_dtype(Nt)
    assert col_idx.shape == (Bi, Bt, Nt) and col_idx.dtype == index_dtype(Ni)
    g = torch.empty(Bi, Bt, device=META)
    d_img, d_txt = BWD(g, g, img, txt, im, tm, row_idx, col_idx)
    assert d_img.shape == img.shape and d_img.dtype == dtype and d_img.device == META
    assert d_txt.shape == txt.shape and d_txt.dtype == dtype and d_txt.device == META


@needs_ext
def test_meta_backward_takes_other_index_and_gradient_dtypes():
    """Direct calls may pass wider indices (int64) or a bf16 upstream gradient."""
    img, txt, im, tm = meta_inputs(2, 3, 6, 5, 8, torch.float16, "both")
    r = torch.empty(2, 3, 6, device=META, dtype=torch.int64)
    c = torch.empty(2, 3, 5, device=META, dtype=torch.int32)
    g = torch.empty(2, 3, device=META, dtype=torch.bfloat16)
    d_img, d_txt = BWD(g, g, img, txt, im, tm, r, c)
    assert d_img.shape == (2, 6, 8) and d_txt.shape == (3, 5, 8) and d_img.dtype == torch.float16


def _fwd_cases():
    def base():
        img, txt, im, tm = meta_inputs(2, 3, 6, 5, 8, torch.float32, "both")
        return {"img": img, "txt": txt, "img_mask": im, "txt_mask": tm}

    e = lambda *shape, dtype=torch.float32: torch.empty(*shape, device=META, dtype=dtype)
    return [
        pytest.param(base, "img", lambda a: a.update(img=e(2, 8)), id="img not 3-d"),
        pytest.param(base, "txt", lambda a: a.update(txt=e(3, 5, 8, 1)), id="txt 4-d"),
        pytest.param(base, "img", lambda a: a.update(img=e(2, 6, 8, dtype=torch.int32)), id="img int"),
        pytest.param(base, "img", lambda a: a.update(img=e(2, 6, 8, dtype=torch.float64),
                                                     txt=e(3, 5, 8, dtype=torch.float64)), id="float64"),
        pytest.param(base, "txt", lambda a: a.update(txt=e(3, 5, 8, dtype=torch.float16)), id="dtype mismatch"),
        pytest.param(base, "txt", lambda a: a.update(txt=e(3, 5, 9)), id="D mismatch"),
        pytest.param(base, "img_mask", lambda a: a.update(img_mask=e(2, 6)), id="img_mask float"),
        pytest.param(base, "img_mask", lambda a: a.update(img_mask=e(2, 7, dtype=torch.bool)), id="img_mask shape"),
        pytest.param(base, "txt_mask", lambda a: a.update(txt_mask=e(3, dtype=torch.bool)), id="txt_mask 1-d"),
        pytest.param(base, "txt", lambda a: a.update(img=e(2, 513, 8), img_mask=None, txt=e(3, 600, 8),
                                                     txt_mask=None), id="both sides over 512 tokens"),
    ]


@needs_ext
@pytest.mark.parametrize("base,name,mutate", _fwd_cases())
def test_meta_fwd_errors_name_the_argument(base, name, mutate):
    kwargs = base()
    mutate(kwargs)
    with pytest.raises(RuntimeError, match=f"token_similarity: `{name}`"):
        FWD(kwargs["img"], kwargs["txt"], kwargs["img_mask"], kwargs["txt_mask"])


def _bwd_cases():
    def base():
        img, txt, im, tm = meta_inputs(2, 3, 6, 5, 8, torch.bfloat16, "both")
        _, _, r, c = FWD(img, txt, im, tm)
        g = torch.empty(2, 3, device=META)
        return {"g_i2t": g, "g_t2i": g, "img": img, "txt": txt, "img_mask": im, "txt_mask": tm,
                "row_idx": r, "col_idx": c}

    e = lambda *shape, dtype=torch.float32: torch.empty(*shape, device=META, dtype=dtype)
    return [
        pytest.param(base, "g_i2t", lambda a: a.update(g_i2t=e(3, 2)), id="g_i2t transposed"),
        pytest.param(base, "g_t2i", lambda a: a.update(g_t2i=e(2, 3, dtype=torch.int64)), id="g_t2i int"),
        pytest.param(base, "row_idx", lambda a: a.update(row_idx=e(2, 3, 5, dtype=torch.uint8)), id="row_idx shape"),
        pytest.param(base, "row_idx", lambda a: a.update(row_idx=e(2, 3, 6)), id="row_idx float"),
        pytest.param(base, "col_idx", lambda a: a.update(col_idx=e(2, 3, 6, dtype=torch.uint8)), id="col_idx shape"),
        pytest.param(base, "col_idx", lambda a: a.update(col_idx=e(2, 3, 5, dtype=torch.bool)), id="col_idx bool"),
        pytest.param(base, "txt_mask", lambda a: a.update(txt_mask=e(3, 4, dtype=torch.bool)), id="txt_mask shape"),
    ]


@needs_ext
@pytest.mark.parametrize("base,name,mutate", _bwd_cases())
def test_meta_bwd_errors_name_the_argument(base, name, mutate):
    kwargs = base()
    mutate(kwargs)
    with pytest.raises(RuntimeError, match=f"token_similarity: `{name}`"):
        BWD(*kwargs.values())


@needs_ext
@pytest.mark.parametrize("masks", [None, "both"])
def test_autograd_on_meta_tensors(masks):
    """Eager autograd through the C++ op: register_autograd (op.py) + the bwd Meta kernel."""
    img, txt, im, tm = meta_inputs(3, 4, 7, 5, 16, torch.bfloat16, masks, requires_grad=True)
    i2t, t2i, _, _ = FWD(img, txt, im, tm)
    assert i2t.requires_grad and t2i.requires_grad
    d_img, d_txt = torch.autograd.grad((i2t * 2).sum() + t2i.sum(), [img, txt])
    assert d_img.shape == img.shape and d_img.dtype == img.dtype and d_img.device == META
    assert d_txt.shape == txt.shape and d_txt.dtype == txt.dtype
    # one direction only: the other output gets no upstream gradient
    i2t = FWD(img, txt, im, tm)[0]
    d_img, d_txt = torch.autograd.grad(i2t.sum(), [img, txt])
    assert d_img.shape == img.shape and d_txt.shape == txt.shape


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_torch_compile_fullgraph_forward_backward_on_meta(dtype):
    img, txt, im, tm = meta_inputs(4, 3, 9, 6, 16, dtype, "both", requires_grad=True)
    w = torch.empty(4, 3, device=META)

    def loss(img, txt, im, tm, w):
        i2t, t2i, _, _ = torch.ops.skillkern.token_similarity_fwd_cuda(img, txt, im, tm)
        return (i2t * w).sum() + (t2i.t().logsumexp(1)).sum()

    out = torch.compile(loss, fullgraph=True, backend="aot_eager")(img, txt, im, tm, w)
    assert out.shape == () and out.dtype == torch.float32 and out.device == META
    d_img, d_txt = torch.autograd.grad(out, [img, txt])
    assert d_img.shape == img.shape and d_img.dtype == dtype
    assert d_txt.shape == txt.shape and d_txt.dtype == dtype


@needs_ext
def test_torch_compile_dynamic_batch_sizes_compile_once():
    """The Meta kernels keep Bi, Bt (and D) symbolic: new batch sizes reuse the graph. Token
    counts are specialised (they pick the index dtypes)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")

    def loss(img, txt, im, tm):
        i2t, t2i, _, _ = torch.ops.skillkern.token_similarity_fwd_cuda(img, txt, im, tm)
        return i2t.sum() + t2i.logsumexp(0).sum()

    f = torch.compile(loss, fullgraph=True, backend=counter, dynamic=True)
    for Bi, Bt in ((4, 3), (6, 5), (7, 2)):
        img, txt, im, tm = meta_inputs(Bi, Bt, 9, 6, 16, torch.bfloat16, "both", requires_grad=True)
        d_img, d_txt = torch.autograd.grad(f(img, txt, im, tm), [img, txt])
        assert d_img.shape == (Bi, 9, 16) and d_txt.shape == (Bt, 6, 16)
    assert counter.frame_count == 1


@needs_ext
def test_cuda_backend_on_cpu_tensors_says_why():
    x = torch.randn(2, 3, 8)
    with pytest.raises(_backend.BackendUnavailable, match="CUDA tensors"):
        skillkern.token_similarity(x, x, backend="cuda")


@needs_ext
def test_cuda_kernel_rejects_cpu_tensors():
    """A direct call with CPU tensors finds no CPU kernel (the op is CUDA + Meta only)."""
    x = torch.randn(2, 3, 8)
    with pytest.raises(NotImplementedError, match="token_similarity_fwd_cuda"):
        FWD(x, x, None, None)
