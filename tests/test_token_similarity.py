"""token_similarity: every reachable backend against a float64 reference, gradients included.

The reference is evaluated in float64 on the inputs as rounded to the test dtype (the exact
answer for what the backend receives). Tolerance: at most 2x the error of PyTorch's own
einsum path at the same precision, plus a small floor.
"""
import pytest
import torch
import torch.nn.functional as F

import skillkern
from skillkern.ops.token_similarity.reference import token_similarity_ref

from conftest import DEVICE, assert_error_names, bad_arg_params, rel_err

BACKENDS = ["triton"]
FLOOR = {torch.float32: 1e-5, torch.bfloat16: 5e-3, torch.float16: 2e-3}



def random_mask(B, N, lo):
    """Random real-token counts in [lo, N], real tokens first (like padded captions)."""
    lengths = torch.randint(lo, N + 1, (B,))
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


def check(img, txt, im, tm, dtype):
    Bi, Bt = img.shape[0], txt.shape[0]
    g_i = torch.randn(Bi, Bt, device=DEVICE)
    g_t = torch.randn(Bi, Bt, device=DEVICE)
    ref = run(img, txt, im, tm, dtype, "ref64", g_i, g_t)
    base = run(img, txt, im, tm, dtype, "torch", g_i, g_t)
    for backend in BACKENDS:
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


# (label, Bi, Bt, Ni, Nt, D, masked)
SHAPES = [
    ("Bi != Bt, ViT-B/32-like tokens", 3, 5, 50, 32, 24, True),
    ("Ni = 1", 6, 4, 1, 7, 16, True),
    ("long Ni = 73, odd D", 2, 3, 73, 9, 19, True),
    ("Nt odd, no masks", 4, 3, 12, 13, 32, False),
    ("one image, many texts", 1, 9, 5, 6, 8, True),
    ("Ni = 150: several image-token chunks", 2, 3, 150, 20, 16, True),
    ("Nt = 300: long texts, Ni = 40", 3, 2, 40, 300, 8, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_matches_reference(shape, dtype):
    _, Bi, Bt, Ni, Nt, D, masked = shape
    check(*make_inputs(Bi, Bt, Ni, Nt, D, masked), dtype)


@pytest.mark.parametrize("which", ["image", "text", "both"])
def test_all_padding_item_scores_zero_without_nan(which):
    img, txt, im, tm = make_inputs(4, 5, 6, 7, 16, True, empty_img=which != "text", empty_txt=which != "image")
    check(img, txt, im, tm, torch.float32)
    for backend in ["torch"] + BACKENDS:
        i2t, t2i = skillkern.token_similarity(img.float(), txt.float(), im, tm, backend=backend)
        if which != "text":
            assert torch.count_nonzero(i2t[2]) == 0 and torch.count_nonzero(t2i[2]) == 0
        if which != "image":
            assert torch.count_nonzero(i2t[:, -1]) == 0 and torch.count_nonzero(t2i[:, -1]) == 0


def test_texts_longer_than_the_kernel_holds_say_what_to_do():
    img, txt, _, _ = make_inputs(2, 2, 4, 600, 8, False)
    with pytest.raises(ValueError, match="txt.*Swap the roles"):
        skillkern.token_similarity(img.float(), txt.float(), backend="triton")
    # the advertised swap gives the same numbers
    i2t, t2i = skillkern.token_similarity(img.float(), txt.float(), backend="torch")
    s_i2t, s_t2i = skillkern.token_similarity(txt.float(), img.float(), backend="triton")
    torch.testing.assert_close(s_i2t.t(), t2i, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s_t2i.t(), i2t, rtol=1e-5, atol=1e-6)


def test_fp16():
    check(*make_inputs(3, 4, 10, 8, 32, True), torch.float16)


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
    _, _, row_idx, col_idx = torch.ops.skillkern.token_similarity_fwd(a, b, im, tm)
    assert row_idx.dtype == torch.uint8 and row_idx.shape == (5, 6, 20)
    assert col_idx.dtype == torch.uint8 and col_idx.shape == (5, 6, 11)


def _bad_args():
    def base():
        return dict(img=torch.randn(2, 3, 8), txt=torch.randn(4, 5, 8), img_mask=None, txt_mask=None)

    cases = [
        ("D mismatch", "txt", lambda a: a.update(txt=torch.randn(4, 5, 9))),
        ("dtype mismatch", "txt", lambda a: a.update(txt=a["txt"].double())),
        ("img not 3-d", "img", lambda a: a.update(img=torch.randn(2, 8))),
        ("img int", "img", lambda a: a.update(img=torch.ones(2, 3, 8, dtype=torch.long))),
        ("device mismatch", "txt", lambda a: a.update(txt=a["txt"].to("meta"))),
        ("img_mask shape", "img_mask", lambda a: a.update(img_mask=torch.ones(2, 4, dtype=torch.bool))),
        ("txt_mask dtype", "txt_mask", lambda a: a.update(txt_mask=torch.ones(4, 5))),
        ("txt_mask device", "txt_mask", lambda a: a.update(txt_mask=torch.ones(4, 5, dtype=torch.bool, device="meta"))),
    ]
    return bad_arg_params(base, cases)


@pytest.mark.parametrize("base,name,mutate", _bad_args())
def test_bad_input_names_the_argument(base, name, mutate):
    assert_error_names(skillkern.token_similarity, base, name, mutate)


@pytest.mark.parametrize("masked", [False, True])
def test_opcheck(masked):
    img, txt, im, tm = make_inputs(3, 4, 6, 5, 16, masked)
    torch.library.opcheck(torch.ops.skillkern.token_similarity_fwd.default,
                          (img.float().requires_grad_(), txt.float().requires_grad_(), im, tm))


def test_torch_compile_fullgraph_forward_backward():
    img, txt, im, tm = make_inputs(4, 4, 9, 6, 16, True)
    a, b = img.float().requires_grad_(), txt.float().requires_grad_()

    def loss(a, b):
        i2t, t2i = skillkern.token_similarity(F.normalize(a, dim=-1), F.normalize(b, dim=-1), im, tm,
                                              backend="triton")
        return (i2t.logsumexp(1) - i2t.diag()).mean() + (t2i.t().logsumexp(1) - t2i.diag()).mean()

    l_c = torch.compile(loss, fullgraph=True)(a, b)
    g_c = torch.autograd.grad(l_c, [a, b])
    l_e = loss(a, b)
    g_e = torch.autograd.grad(l_e, [a, b])
    torch.testing.assert_close(l_c, l_e, rtol=1e-5, atol=1e-6)
    for x, y in zip(g_c, g_e):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a CUDA device")
@pytest.mark.parametrize("Ni", [50, 12, 257, 24])
def test_gpu_realistic_shapes(Ni):
    check(*make_inputs(128, 96, Ni, 32, 256, True), torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a CUDA device")
def test_gpu_never_allocates_bi_bt_ni_nt():
    Bi = Bt = 512
    Ni, Nt, D = 50, 32, 256
    img = F.normalize(torch.randn(Bi, Ni, D, device=DEVICE), dim=-1).bfloat16().requires_grad_()
    txt = F.normalize(torch.randn(Bt, Nt, D, device=DEVICE), dim=-1).bfloat16().requires_grad_()
    skillkern.token_similarity(img, txt)  # compile / warm up
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    i2t, t2i = skillkern.token_similarity(img, txt)
    (i2t.sum() + t2i.sum()).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    dense = Bi * Bt * Ni * Nt * 2  # what the naive path materialises, in bf16
    assert extra < dense / 10, f"peak extra {extra / 2**20:.1f} MB vs {dense / 2**20:.0f} MB naive"
