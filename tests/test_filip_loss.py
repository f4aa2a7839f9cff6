"""filip_loss / FILIPLoss: value and gradients against a float64 loss written here in plain
PyTorch, argument errors, the module's temperature, and the distributed path (2 gloo ranks on
CPU) against the one-process loss on the whole batch.

Tolerance (fp32): relative error (norm of the difference / norm of the float64 answer) at most
1e-5 for the loss and the img/txt gradients, 3e-5 for logit_scale's gradient, a sum of
cancelling terms (p - y) * similarity. Measured worst over 3 seeds x every case below, torch and
Triton (fp32 dots in IEEE fp32 at torch's default "highest" matmul precision): 3.7e-7 and 3.8e-6.
bf16 follows the repo's rule: at most 2x the torch backend's own error plus a floor.
"""
import math
import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import skillkern
from skillkern import BackendUnavailable, _backend
from skillkern.nn import FILIPLoss

from conftest import DEVICE, assert_error_names, bad_arg_params, poison_padding, rel_err


def _triton_skip_reason():
    """None if the triton backend can run on DEVICE here, else why not: skips only where the
    backend is truly absent (no triton, or CPU tensors without the interpreter); any other
    failure of the kernels fails the tests."""
    try:
        _backend.resolve("token_similarity", "triton", DEVICE)
    except BackendUnavailable as e:
        return str(e)
    return None


_TRITON_SKIP = _triton_skip_reason()
_NEEDS_TRITON = pytest.mark.skipif(_TRITON_SKIP is not None, reason=str(_TRITON_SKIP))
BACKENDS = ["torch", pytest.param("triton", marks=_NEEDS_TRITON)]


TOL = {"loss": 1e-5, "img": 1e-5, "txt": 1e-5, "logit_scale": 3e-5}


def filip_loss64(img, txt, img_mask, txt_mask, logit_scale, label_smoothing):
    """The loss from its definition, float64: einsum, masked max, masked mean, cross entropy."""
    img, txt = img.double(), txt.double()
    sim = torch.einsum("akd,bld->abkl", img, txt)  # (B, B, Ni, Nt)
    if img_mask is None:
        img_mask = torch.ones(img.shape[:2], dtype=torch.bool, device=img.device)
    if txt_mask is None:
        txt_mask = torch.ones(txt.shape[:2], dtype=torch.bool, device=txt.device)
    best_txt = sim.masked_fill(~txt_mask[None, :, None, :], -math.inf).amax(3)  # (B, B, Ni)
    best_img = sim.masked_fill(~img_mask[:, None, :, None], -math.inf).amax(2)  # (B, B, Nt)
    # every item has >= 1 real token here, so no real token's best is -inf
    i2t = torch.where(img_mask[:, None, :], best_txt, 0.0).sum(2) / img_mask.sum(1)[:, None]
    t2i = torch.where(txt_mask[None, :, :], best_img, 0.0).sum(2) / txt_mask.sum(1)[None, :]
    labels = torch.arange(img.shape[0], device=img.device)
    s = logit_scale.double() if isinstance(logit_scale, torch.Tensor) else logit_scale
    return 0.5 * (F.cross_entropy(s * i2t, labels, label_smoothing=label_smoothing)
                  + F.cross_entropy(s * t2i.t(), labels, label_smoothing=label_smoothing))


def random_lengths(B, N, gen=None):
    """Lengths in [1, N], one item full and (B > 2) one with a single token."""
    n = torch.randint(1, N + 1, (B,), generator=gen)
    n[0] = N
    if B > 2:
        n[1] = 1
    return torch.arange(N)[None, :] < n[:, None]


def make_batch(B, Ni, Nt, D, masks, gen=None, device=DEVICE):
    """L2-normalised img (B, Ni, D), txt (B, Nt, D), float32; masks of random lengths or None.
    Padding positions hold random values too, so a mask that is ignored changes the answer."""
    img = F.normalize(torch.randn(B, Ni, D, generator=gen), dim=-1)
    txt = F.normalize(torch.randn(B, Nt, D, generator=gen), dim=-1)
    im = random_lengths(B, Ni, gen) if masks in ("both", "img") else None
    tm = random_lengths(B, Nt, gen) if masks in ("both", "txt") else None
    to = lambda t: t.to(device) if t is not None else None  # noqa: E731
    return to(img), to(txt), to(im), to(tm)


SHAPES = [  # (name, B, Ni, Nt, D)
    ("small-odd", 6, 7, 5, 24),  # nothing a power of two
    ("filip-tokens", 9, 50, 32, 64),  # ViT-B/32 patches + CLS vs. a 32-token caption
]


def _reference_cases():
    """Every combination on torch; on triton (slow under the interpreter) every shape and mask
    set with one (label_smoothing, scale): the loss code around the op is the same."""
    for shape in SHAPES:
        for masks in ("both", "img", "none"):
            for smoothing in (0.0, 0.1):
                for scale in ("float", "tensor"):
                    yield pytest.param(shape, masks, smoothing, scale, "torch",
                                       id=f"{shape[0]}-{masks}-ls{smoothing}-{scale}-torch")
            yield pytest.param(shape, masks, 0.1, "tensor", "triton", marks=_NEEDS_TRITON,
                               id=f"{shape[0]}-{masks}-ls0.1-tensor-triton")


@pytest.mark.parametrize("shape,masks,label_smoothing,scale,backend", list(_reference_cases()))
def test_matches_reference(shape, masks, label_smoothing, scale, backend):
    _, B, Ni, Nt, D = shape
    img, txt, im, tm = make_batch(B, Ni, Nt, D, masks)
    img.requires_grad_()
    txt.requires_grad_()
    if scale == "tensor":
        s = torch.tensor(1 / 0.07, device=DEVICE, requires_grad=True)  # CLIP's initial scale
        leaves = [img, txt, s]
    else:
        s = 10.0
        leaves = [img, txt]
    loss = skillkern.filip_loss(img, txt, im, tm, s, label_smoothing=label_smoothing, backend=backend)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    up = torch.rand((), device=DEVICE) + 0.5  # a random upstream gradient
    grads = torch.autograd.grad(loss, leaves, up)

    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    s64 = leaves64[2] if scale == "tensor" else s
    ref = filip_loss64(leaves64[0], leaves64[1], im, tm, s64, label_smoothing)
    grads64 = torch.autograd.grad(ref, leaves64, up.double())

    assert rel_err(loss, ref) <= TOL["loss"], (loss.item(), ref.item())
    for name, g, g64 in zip(["img", "txt", "logit_scale"], grads, grads64):
        assert rel_err(g, g64) <= TOL[name], (name, rel_err(g, g64))
    if im is not None:  # padding tokens get exactly zero gradient
        assert (grads[0][~im] == 0).all()
    if tm is not None:
        assert (grads[1][~tm] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16(backend):
    """bf16 features (the usual training dtype): error at most 2x the torch backend's + 5e-3."""
    img, txt, im, tm = make_batch(9, 50, 32, 64, "both")
    img, txt = img.bfloat16(), txt.bfloat16()
    s = torch.tensor(1 / 0.07, device=DEVICE)
    leaves64 = [img.double().requires_grad_(), txt.double().requires_grad_()]
    ref = filip_loss64(*leaves64, im, tm, s, 0.1)
    ref_g = torch.autograd.grad(ref, leaves64)
    errs = {}
    for b in ("torch", backend):
        a, t = img.clone().requires_grad_(), txt.clone().requires_grad_()
        loss = skillkern.filip_loss(a, t, im, tm, s, label_smoothing=0.1, backend=b)
        assert loss.dtype == torch.float32
        ga, gt = torch.autograd.grad(loss, [a, t])
        assert ga.dtype == torch.bfloat16 and gt.dtype == torch.bfloat16
        errs[b] = [rel_err(loss, ref), rel_err(ga, ref_g[0]), rel_err(gt, ref_g[1])]
    for what, err, err_torch in zip(("loss", "img", "txt"), errs[backend], errs["torch"]):
        assert err <= 2 * err_torch + 5e-3, (what, err, err_torch)


def test_matches_repo_reference():
    """Agrees with skillkern's own filip_loss_ref (reference.py) as well."""
    img, txt, im, tm = make_batch(5, 6, 4, 16, "both")
    s = torch.tensor(20.0, device=DEVICE)
    got = skillkern.filip_loss(img, txt, im, tm, s, label_smoothing=0.1, backend="torch")
    from skillkern.ops.token_similarity import filip_loss_ref
    torch.testing.assert_close(got, filip_loss_ref(img, txt, im, tm, s, 0.1).float(), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- errors


def _bad_args():
    def base():
        img, txt, im, tm = make_batch(4, 5, 3, 8, "both")
        return dict(img=img, txt=txt, img_mask=im, txt_mask=tm, logit_scale=torch.tensor(10.0),
                    label_smoothing=0.1)

    def set_(**kw):
        return lambda a: a.update(kw)

    cases = [
        ("unpaired batch", "`txt`", lambda a: a.update(txt=a["txt"][:3], txt_mask=a["txt_mask"][:3])),
        ("empty batch", "`img`",
         lambda a: a.update(img=a["img"][:0], txt=a["txt"][:0], img_mask=None, txt_mask=None)),
        ("img not a Tensor", "`img`", lambda a: a.update(img=a["img"].tolist())),
        ("txt 2-d", "`txt`", lambda a: a.update(txt=a["txt"][:, 0])),
        ("txt_mask dtype", "`txt_mask`", lambda a: a.update(txt_mask=a["txt_mask"].float())),
        ("img_mask shape", "`img_mask`", lambda a: a.update(img_mask=a["img_mask"][:, :2])),
        ("logit_scale shape-1", "`logit_scale`", set_(logit_scale=torch.ones(1))),
        ("logit_scale shape-2x2", "`logit_scale`", set_(logit_scale=torch.ones(2, 2))),
        ("logit_scale int tensor", "`logit_scale`", set_(logit_scale=torch.tensor(3))),
        ("logit_scale str", "`logit_scale`", set_(logit_scale="10")),
        ("logit_scale None", "`logit_scale`", set_(logit_scale=None)),
        ("logit_scale bool", "`logit_scale`", set_(logit_scale=True)),
        ("label_smoothing -0.1", "`label_smoothing`", set_(label_smoothing=-0.1)),
        ("label_smoothing 1.0", "`label_smoothing`", set_(label_smoothing=1.0)),
        ("label_smoothing 1.5", "`label_smoothing`", set_(label_smoothing=1.5)),
        ("label_smoothing str", "`label_smoothing`", set_(label_smoothing="0.1")),
        ("process_group str", "`process_group`", set_(process_group="world")),
    ]
    return bad_arg_params(base, cases)


@pytest.mark.parametrize("base,name,mutate", _bad_args())
def test_bad_input_names_the_argument(base, name, mutate):
    """A ValueError (TypeError for a wrong Python type) naming the argument; inputs unchanged.
    An empty batch is refused: cross entropy's mean over no row is 0/0."""
    assert_error_names(skillkern.filip_loss, base, name, mutate)


# ----------------------------------------------------------------------------- edge inputs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side", ["img", "txt", "both"])
def test_nan_and_inf_in_padding_reach_no_loss_or_gradient(side, backend):
    """NaN and +-inf padding give the very loss and gradients (img, txt, logit_scale) of random
    finite padding."""
    img, txt, im, tm = make_batch(6, 9, 7, 16, "both")
    results = []
    for a, t in ((img, txt), (poison_padding(img, im) if side != "txt" else img,
                              poison_padding(txt, tm) if side != "img" else txt)):
        a, t = a.clone().requires_grad_(), t.clone().requires_grad_()
        s = torch.tensor(14.0, device=DEVICE, requires_grad=True)
        loss = skillkern.filip_loss(a, t, im, tm, s, label_smoothing=0.1, backend=backend)
        results.append([loss, *torch.autograd.grad(loss, [a, t, s])])
    for what, dirty, clean in zip(("loss", "img", "txt", "logit_scale"), results[1], results[0]):
        assert torch.isfinite(dirty).all(), f"non-finite {what}"
        assert torch.equal(dirty, clean), f"{what} depends on the padding"


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_meta_tensors(backend):
    """Shapes and dtypes without data: a 0-dim float32 loss, gradients like the inputs; the
    module too."""
    img = torch.empty(5, 7, 16, dtype=torch.bfloat16, device="meta", requires_grad=True)
    txt = torch.empty(5, 4, 16, dtype=torch.bfloat16, device="meta", requires_grad=True)
    im = torch.empty(5, 7, dtype=torch.bool, device="meta")
    s = torch.empty((), device="meta", requires_grad=True)
    loss = skillkern.filip_loss(img, txt, im, None, s, label_smoothing=0.1, backend=backend)
    assert loss.is_meta and loss.shape == () and loss.dtype == torch.float32
    grads = torch.autograd.grad(loss, [img, txt, s])
    for g, x in zip(grads, (img, txt, s)):
        assert g.is_meta and g.shape == x.shape and g.dtype == x.dtype
    m = FILIPLoss().to("meta")
    m.backend = backend
    loss = m(img, txt, im)
    assert loss.is_meta and loss.shape == () and loss.dtype == torch.float32


def test_items_without_tokens():
    """Ni = 0: every similarity is 0, so the loss is CE of uniform logits, ln B, with zero
    feature gradients (no item has a token to move)."""
    img = torch.randn(4, 0, 8, device=DEVICE, requires_grad=True)
    txt = torch.randn(4, 5, 8, device=DEVICE, requires_grad=True)
    for backend in ("torch", "auto"):
        loss = skillkern.filip_loss(img, txt, logit_scale=10.0, backend=backend)
        assert loss.item() == pytest.approx(math.log(4), rel=1e-6)
        d_img, d_txt = torch.autograd.grad(loss, [img, txt])
        assert d_img.shape == img.shape and torch.count_nonzero(d_txt) == 0


# ----------------------------------------------------------------------------- FILIPLoss


def test_module_import_paths():
    """The layer's home is the op folder's module.py; skillkern.nn re-exports the same class."""
    from skillkern.ops.token_similarity import FILIPLoss as from_op_folder
    from skillkern.ops.token_similarity.module import FILIPLoss as from_module

    assert from_op_folder is from_module is FILIPLoss
    assert FILIPLoss.__module__ == "skillkern.ops.token_similarity.module"


def test_module_temperature_init_and_value():
    m = FILIPLoss(temperature=0.05)
    assert m.backend == "auto"
    assert [n for n, _ in m.named_parameters()] == ["log_scale"]
    assert m.log_scale.item() == pytest.approx(math.log(20.0), rel=1e-6)
    assert m.logit_scale.item() == pytest.approx(20.0, rel=1e-6)
    assert FILIPLoss().logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    m.backend = "torch"
    img, txt, im, tm = make_batch(6, 7, 5, 24, "both")
    got = m(img, txt, im, tm)
    want = skillkern.filip_loss(img, txt, im, tm, 20.0, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_module_scale_gradient():
    """d loss / d log_scale = s * d loss / d s while unclamped (checked in float64)."""
    m = FILIPLoss(temperature=0.1, label_smoothing=0.1).to(DEVICE)
    img, txt, im, tm = make_batch(6, 7, 5, 24, "both")
    m(img, txt, im, tm).backward()
    s64 = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(filip_loss64(img, txt, im, tm, s64, 0.1), [s64])
    assert rel_err(m.log_scale.grad, 10.0 * g) <= 1e-5


def test_module_clamp():
    m = FILIPLoss(temperature=0.001, max_logit_scale=50.0).to(DEVICE)  # 1000 > 50: clamped
    assert m.logit_scale.item() <= 50.0
    assert m.logit_scale.item() == pytest.approx(50.0, rel=1e-6)
    img, txt, im, tm = make_batch(6, 7, 5, 24, "both")
    loss = m(img, txt, im, tm)
    torch.testing.assert_close(loss, skillkern.filip_loss(img, txt, im, tm, 50.0), rtol=1e-6, atol=1e-6)
    loss.backward()
    assert m.log_scale.grad is not None and m.log_scale.grad.item() == 0.0
    # a step past the cap (as an optimiser might take) still leaves the scale at the cap
    with torch.no_grad():
        m.log_scale += 3.0
    assert m.logit_scale.item() <= 50.0


def test_module_fixed_scale():
    m = FILIPLoss(temperature=0.2, learn_scale=False)
    assert list(m.parameters()) == []
    assert "log_scale" in dict(m.named_buffers())
    assert "log_scale" in m.state_dict()
    img, txt, im, tm = make_batch(6, 7, 5, 24, "both")
    img.requires_grad_()
    loss = m(img, txt, im, tm)
    assert not m.log_scale.requires_grad
    torch.testing.assert_close(loss, skillkern.filip_loss(img, txt, im, tm, 5.0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw", [{"temperature": 0.0}, {"temperature": -1.0}, {"max_logit_scale": 0.0},
                                {"label_smoothing": 1.0}])
def test_module_bad_args(kw):
    with pytest.raises(ValueError, match=f"`{next(iter(kw))}`"):
        FILIPLoss(**kw)


# ----------------------------------------------------------------------------- distributed

WORLD = 2
B_GLOBAL = 8


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_case(rank, data, scale, smoothing, drop_img_mask):
    """This rank's half of `data`; returns loss, grads and the shapes token_similarity saw."""
    import skillkern.ops.token_similarity.loss as loss_mod

    img, txt, im, tm = data
    sl = slice(rank * B_GLOBAL // WORLD, (rank + 1) * B_GLOBAL // WORLD)
    img_l = img[sl].clone().requires_grad_()
    txt_l = txt[sl].clone().requires_grad_()
    im_l, tm_l = im[sl], tm[sl]
    if drop_img_mask and rank == 1:  # this half is all real: None must act like all-True
        assert im_l.all()
        im_l = None
    s = torch.tensor(scale, requires_grad=True)
    seen = []
    real = loss_mod.token_similarity

    def spy(a, b, *args, **kw):
        seen.append((a.shape[0], b.shape[0]))
        return real(a, b, *args, **kw)

    loss_mod.token_similarity = spy
    try:
        loss = skillkern.filip_loss(img_l, txt_l, im_l, tm_l, s, label_smoothing=smoothing,
                                    process_group=dist.group.WORLD, backend="torch")
    finally:
        loss_mod.token_similarity = real
    loss.backward()
    return {"loss": loss.detach(), "img": img_l.grad, "txt": txt_l.grad, "s": s.grad, "seen": seen}


class _TwoTowers(torch.nn.Module):
    """Projections + FILIPLoss: the DDP check's model (log_scale inside the wrapped module)."""

    def __init__(self, D):
        super().__init__()
        self.img_proj = torch.nn.Linear(D, D)
        self.txt_proj = torch.nn.Linear(D, D)
        self.crit = FILIPLoss(label_smoothing=0.1)
        self.crit.backend = "torch"

    def forward(self, img, txt, img_mask, txt_mask, process_group=None):
        return self.crit(F.normalize(self.img_proj(img), dim=-1), F.normalize(self.txt_proj(txt), dim=-1),
                         img_mask, txt_mask, process_group=process_group)


def _ddp_case(rank, data):
    """The docstring's DDP rule: backpropagating loss * W under DDP (which averages) gives every
    parameter, log_scale included, the gradient of the one-process loss."""
    from torch.nn.parallel import DistributedDataParallel

    img, txt, im, tm = data
    torch.manual_seed(7)
    model = _TwoTowers(img.shape[-1])
    ddp = DistributedDataParallel(model)
    sl = slice(rank * B_GLOBAL // WORLD, (rank + 1) * B_GLOBAL // WORLD)
    loss = ddp(img[sl], txt[sl], im[sl], tm[sl], dist.group.WORLD)
    (loss * dist.get_world_size()).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _dist_worker(rank, port, cases, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        results = {name: _dist_case(rank, *args) for name, args in cases.items()}
        results["ddp"] = _ddp_case(rank, cases["masks"][0])
        # shape errors must reach every rank (one rank raising alone would hang the other)
        img, txt, im, tm = cases["masks"][0]
        errors = {}
        shapes = {"unequal": (4 - rank, 4 - rank), "unpaired": (4, 4 - rank), "empty": (0, 0)}
        for name, (b_img, b_txt) in shapes.items():
            try:
                skillkern.filip_loss(img[:b_img], txt[:b_txt], process_group=dist.group.WORLD)
                errors[name] = "no error"
            except ValueError as e:
                errors[name] = str(e)
        results["errors"] = errors
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_matches_one_process(tmp_path):
    """2 gloo ranks with 4 items each vs. one process with all 8: value on every rank, each
    rank's img/txt gradient = its slice, logit_scale gradient = 1/W of the whole-batch one."""
    gen = torch.Generator().manual_seed(1234)
    img, txt, im, tm = make_batch(B_GLOBAL, 7, 5, 24, "both", gen=gen, device="cpu")
    im_half_real = im.clone()
    im_half_real[B_GLOBAL // 2:] = True
    cases = {  # name: (data, logit_scale, label_smoothing, rank 1 passes img_mask=None)
        "masks": ((img, txt, im, tm), 14.0, 0.1, False),
        "mask-none-on-one-rank": ((img, txt, im_half_real, tm), 7.0, 0.0, True),
    }
    ctx = mp.spawn(_dist_worker, args=(_free_port(), cases, str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120  # never hang CI
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail("distributed filip_loss did not finish in 120 s")
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    for name, ((img_, txt_, im_, tm_), scale, smoothing, _) in cases.items():
        img1, txt1 = img_.clone().requires_grad_(), txt_.clone().requires_grad_()
        s1 = torch.tensor(scale, requires_grad=True)
        loss1 = skillkern.filip_loss(img1, txt1, im_, tm_, s1, label_smoothing=smoothing, backend="torch")
        loss1.backward()
        B_l = B_GLOBAL // WORLD
        for r in range(WORLD):
            got = res[r][name]
            sl = slice(r * B_l, (r + 1) * B_l)
            torch.testing.assert_close(got["loss"], loss1.detach(), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(got["img"], img1.grad[sl], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(got["txt"], txt1.grad[sl], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(got["s"] * WORLD, s1.grad, rtol=1e-5, atol=1e-7)
            # O(B_l * B_g): local rows x all columns, both directions, never 8 x 8
            assert got["seen"] == [(B_l, B_GLOBAL), (B_GLOBAL, B_l)], got["seen"]
        assert torch.equal(res[0][name]["s"], res[1][name]["s"])  # replicas stay identical
        assert torch.equal(res[0][name]["loss"], res[1][name]["loss"])

    torch.manual_seed(7)
    model = _TwoTowers(img.shape[-1])
    model(img, txt, im, tm).backward()
    for r in range(WORLD):
        for name, p in model.named_parameters():
            torch.testing.assert_close(res[r]["ddp"][name], p.grad, rtol=1e-5, atol=1e-7,
                                       msg=lambda m, n=name: f"{n}: {m}")

    for r in range(WORLD):
        assert "`img`" in res[r]["errors"]["unequal"] and "batch size" in res[r]["errors"]["unequal"]
        assert "`txt`" in res[r]["errors"]["unpaired"] and "rank 1" in res[r]["errors"]["unpaired"]
        assert "`img`" in res[r]["errors"]["empty"] and "no item" in res[r]["errors"]["empty"]
