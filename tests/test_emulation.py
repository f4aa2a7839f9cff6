"""The CUDA kernels of every family (csrc/skill_ffn, csrc/token_similarity, csrc/token_reduce) on
the CPU emulation of csrc/emu/ (each CUDA thread a fiber; shared memory, barriers, shuffles,
cp.async, wmma and mma.sync modelled), against float64 references in fp32, fp16 and bf16. Needs
g++ and the CUDA headers, neither a GPU nor the built extension.

Each case runs twice: thread schedule 1 with every cp.async copy landing at the wait that retires
it, schedule 2 with copies landing when issued. The two runs must give the same bits (a
shared-memory race, or a tile used before its wait, would not), and outputs start as NaN
(deterministic mode fills at::empty), so an element that no kernel writes fails. The last tests
inject bugs through the emulation (a cp.async wait one group short, no zero-fill, a missing
barrier) and check that these comparisons catch them. Sanitizer runs: csrc/emu/run.py.
"""
from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch
from conftest import rel_err, skill_ffn_sanitize

from skillkern.ops.skill_ffn.reference import skill_ffn_ref, slot_scale
from skillkern.ops.token_reduce.reference import token_pool_ref, token_reduce_ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SCHEDULES = ((1, False), (2, True))  # (seed, cp.async copies land when issued)
# SKILLKERN_EMU_ALL=1 (csrc/emu/run.py --all) adds the long cases: every token_reduce case in each
# of its dtypes, and token_similarity's largest tiles (a few minutes more)
ALL = os.environ.get("SKILLKERN_EMU_ALL", "0") == "1"

pytestmark = pytest.mark.slow  # one g++ build of csrc/emu first (~3 min on 2 cores, then cached)


def _build_module():
    spec = importlib.util.spec_from_file_location("skillkern_emu_build", os.path.join(REPO, "csrc", "emu", "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def emu():
    """torch.ops.skillkern_emu: every kernel family compiled as host code (csrc/emu/build.py)."""
    build = _build_module()
    reason = build.unavailable()
    if reason:
        pytest.skip(reason)
    return build.load()


def _bits(t):
    return t.detach().contiguous().view(-1).view(torch.uint8) if t.numel() else t


def emulate(emu, op, *args, bug=None):
    """op(*args) under both schedules (and the injected bug, a dict of configure's arguments);
    checks that the runs agree bit for bit and returns the first run's outputs as a list."""
    runs = []
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # at::empty fills NaN
    try:
        for seed, at_issue in SCHEDULES:
            emu.configure(seed, at_issue, **(bug or {}))
            out = op(*args)
            runs.append(list(out) if isinstance(out, (tuple, list)) else [out])
    finally:
        emu.configure(1, False)
        torch.use_deterministic_algorithms(previous)
    for i, (a, b) in enumerate(zip(*runs)):
        assert a.shape == b.shape and torch.equal(_bits(a), _bits(b)), \
            f"output {i} differs between two thread schedules / cp.async timings (a race or an early read)"
    return runs[0]


def _guarded(t, offset):
    """t copied into a NaN-filled buffer, 32 + `offset` elements from its (64-byte aligned)
    start and 32 + 64 before its end: reads past either edge poison the results, and an odd
    offset misaligns the rows (the kernels then take their element-wise copy path)."""
    buf = torch.full((t.numel() + offset + 96,), math.nan, dtype=t.dtype)
    view = buf[32 + offset:32 + offset + t.numel()]
    view.copy_(t.reshape(-1))
    return view.view(t.shape)


# ----------------------------------------------------------------------------- skill_ffn

FFN_FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 5e-3}


# (label, T, k, E, d, h, activation, dtype, bias, routing, offset): sizes against the tiles
# (BM = 128 rows; BN = 128 or 64 columns; BK = 32 (16-bit) / 16 (fp32) of K)
FFN_CASES = [
    ("bf16 gelu_tanh, K tail, column tails, k=2", 300, 2, 4, 72, 136, "gelu_tanh", torch.bfloat16, True,
     "uniform", 0),
    ("fp32 swiglu (SIMT), one skill of 3 row tiles", 300, 1, 4, 40, 72, "swiglu", torch.float32, True, "one", 0),
    ("fp16 silu, odd d and h (element-wise copies), k=3", 37, 3, 5, 19, 23, "silu", torch.float16, True,
     "uniform", 0),
    ("bf16 relu, misaligned base pointers, no bias", 70, 2, 3, 32, 48, "relu", torch.bfloat16, False,
     "uniform", 1),
    ("fp32 gelu, empty skills", 90, 2, 6, 24, 40, "gelu", torch.float32, True, "sparse", 0),
    ("bf16 swiglu, many skills with few rows", 60, 3, 23, 16, 24, "swiglu", torch.bfloat16, True, "uniform", 0),
]


# The Hopper path's cases (fwd_sm90.cuh / bwd_sm90.cuh with csrc/emu/sm90_host.cc's GEMMs): 16-bit,
# d and h multiples of 8, aligned tensors
SM90_CASES = [
    ("bf16 gelu_tanh, k=2", 300, 2, 4, 72, 136, "gelu_tanh", torch.bfloat16, True, "uniform", 0),
    ("fp16 silu, empty skills, k=2", 90, 2, 6, 24, 40, "silu", torch.float16, True, "sparse", 0),
    ("bf16 relu, one skill, no bias", 64, 1, 3, 32, 48, "relu", torch.bfloat16, False, "one", 0),
    ("fp16 gelu, many skills with few rows, k=3", 60, 3, 23, 16, 24, "gelu", torch.float16, True, "uniform", 0),
    ("bf16 swiglu, k=2", 200, 2, 4, 40, 72, "swiglu", torch.bfloat16, True, "uniform", 0),
    ("fp16 swiglu, empty skills, no bias, k=3", 90, 3, 6, 24, 16, "swiglu", torch.float16, False, "sparse", 0),
]


def check_skill_ffn(emu, case, bug=None, sm90=False):
    """skill_ffn's kernels against the float64 reference on the same (rounded) inputs: y and
    every gradient within 2x PyTorch's own error in the dtype (+ a floor). sm90: the Hopper
    path's orchestration instead of the mma.sync kernels."""
    _, T, k, E, d, h, activation, dtype, bias, routing, offset = case
    # the inputs and routings of the compute-sanitizer script (float64 masters, ids with holes)
    master, ids = skill_ffn_sanitize().make_case(T, k, E, d, h, activation, bias, routing, torch.device("cpu"))
    sw, dy = master.pop("sw"), master.pop("dy")
    names = [n for n, t in master.items() if t is not None]

    def reference(work_dtype):
        leaves = {n: master[n].to(dtype).to(work_dtype).requires_grad_() for n in names}
        exact = work_dtype == torch.float64  # else torch in dtype, with the kernels' fp32 scale
        sc = slot_scale(ids, E, sw.float().to(work_dtype if exact else torch.float32),
                        dtype=torch.float64 if exact else torch.float32).requires_grad_()
        y = skill_ffn_ref(leaves["x"], ids, sc, leaves["w1"], leaves["w2"], leaves.get("b1"), leaves.get("b2"),
                          activation)
        grads = torch.autograd.grad(y, [leaves[n] for n in names] + [sc], dy.to(y.dtype))
        return [y, *grads]

    ref = reference(torch.float64)
    base = reference(dtype)  # torch's own error in this dtype
    args = {n: _guarded(master[n].to(dtype), offset) for n in names}
    scale = slot_scale(ids, E, sw.float())
    fwd, bwd = (emu.skill_ffn_fwd_sm90, emu.skill_ffn_bwd_sm90) if sm90 else (emu.skill_ffn_fwd, emu.skill_ffn_bwd)
    y, order, offsets = emulate(emu, fwd, args["x"], ids, scale, args["w1"], args["w2"],
                                args.get("b1"), args.get("b2"), activation, bug=bug)
    grads = emulate(emu, bwd, _guarded(dy.to(dtype), offset), args["x"], scale, args["w1"],
                    args["w2"], args.get("b1"), args.get("b2"), order, offsets, activation, True, bug=bug)
    dx, dw1, dw2, db1, db2, dscale = grads
    got = [y, dx, dw1, dw2] + ([db1, db2] if bias else []) + [dscale]
    assert (db1.numel() == 0 and db2.numel() == 0) != bias
    labels = ["y"] + ["d" + n for n in names] + ["dscale"]
    for label, g, r, b in zip(labels, got, ref, base):
        assert g.shape == r.shape, label
        assert torch.isfinite(g).all(), f"{label}: non-finite values (unwritten or poisoned reads)"
        err, err_torch = rel_err(g, r), rel_err(b, r)
        assert err <= 2 * err_torch + FFN_FLOOR[dtype], f"{label}: rel err {err:.3g} vs torch {err_torch:.3g}"
    if routing == "sparse":  # skills 1 .. E-2 have no rows: exact zeros
        for g in (dw1, dw2) + ((db1, db2) if bias else ()):
            assert torch.count_nonzero(g[1:E - 1]) == 0


@pytest.mark.parametrize("case", FFN_CASES, ids=[c[0] for c in FFN_CASES])
def test_skill_ffn(emu, case):
    check_skill_ffn(emu, case)


@pytest.mark.parametrize("case", SM90_CASES, ids=[c[0] for c in SM90_CASES])
def test_skill_ffn_sm90_path(emu, case):
    """The Hopper path around the CUTLASS GEMMs (gather, the backward's row kernel, bias sums,
    combine, unused skills' zeros), with the GEMMs as host loops of their contract."""
    check_skill_ffn(emu, case, sm90=True)


@pytest.mark.parametrize("ids_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_skill_ffn_every_integer_id_dtype(emu, ids_dtype):
    """The C++ forward takes skill_ids of any integer dtype: the same outputs as int64 ids
    (uint8 has no -1: its empty slots are 255, out of range like any id >= E)."""
    gen = torch.Generator().manual_seed(7)
    T, k, E, d, h = 40, 2, 5, 16, 24
    x = torch.randn(T, d, generator=gen)
    w1 = torch.randn(E, d, h, generator=gen) / 4
    w2 = torch.randn(E, h, d, generator=gen) / 5
    ids = skill_ffn_sanitize().make_ids(T, k, E, "uniform", gen)
    scale = slot_scale(ids, E, torch.rand(T, k, generator=gen) + 0.5)
    want = emulate(emu, emu.skill_ffn_fwd, x, ids, scale, w1, w2, None, None, "relu")
    got = emulate(emu, emu.skill_ffn_fwd, x, ids.to(ids_dtype), scale, w1, w2, None, None, "relu")
    for a, b in zip(got, want):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- token_similarity

SIM_GRAD_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# (label, Bi, Bt, Ni, Nt, D, masks, an item without real tokens on each side, aligned)
SIM_CASES = [
    ("goal-like tokens, images straddle chunks", 3, 5, 50, 32, 24, True, False, True),
    ("Ni = 1: an image per column", 6, 4, 1, 7, 16, True, False, True),
    ("odd D: element-wise loads", 2, 3, 73, 9, 19, True, False, False),
    ("no masks", 4, 3, 12, 13, 32, False, False, True),
    ("items without real tokens", 4, 5, 6, 7, 16, True, True, True),
    ("an image longer than a chunk", 2, 3, 150, 20, 16, True, False, True),
    ("a group of 20 images over 8 chunks, then a second group", 21, 3, 50, 32, 8, True, False, True),
    ("256-row tile", 3, 2, 7, 200, 8, True, False, True),
    ("an image over 3 chunks, int16 col_idx", 2, 2, 300, 3, 4, True, False, True),
    ("texts longer than a tile: roles swapped, int16 row_idx", 2, 2, 12, 520, 4, True, False, True),
    ("16 texts per tile", 20, 40, 3, 2, 4, True, False, True),
    ("D = 0", 3, 2, 1, 1, 0, False, False, True),
    ("Nt = 5: 7 texts per backward slice", 4, 6, 37, 5, 16, True, False, True),
    ("64 images per backward block: terms past the prefetch", 300, 3, 2, 9, 8, True, False, True),
    ("misaligned bases: element-wise loads", 3, 4, 9, 6, 16, True, False, False),
] + ([
    ("512-row tile", 2, 3, 40, 300, 8, True, False, True),
    ("130 images of one token", 130, 18, 1, 3, 16, True, False, True),
    ("element-wise loads over chunk boundaries", 3, 4, 130, 9, 20, True, False, False),
] if ALL else [])


def _sim_inputs(case, dtype, seed, poison=None):
    _, Bi, Bt, Ni, Nt, D, masks, empty, aligned = case
    gen = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(Bi, Ni, D, generator=gen, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(Bt, Nt, D, generator=gen, dtype=torch.float64), dim=-1)
    if Ni > 2:  # exact ties: the lower token index must win
        img[:, 2] = img[:, 0]
    if Nt > 3:
        txt[:, 3] = txt[:, 1]
    img, txt = img.to(dtype), txt.to(dtype)
    im = torch.ones(Bi, Ni, dtype=torch.bool)
    tm = torch.ones(Bt, Nt, dtype=torch.bool)
    if masks:
        im = torch.arange(Ni)[None] < torch.randint(1, max(Ni, 1) + 1, (Bi, 1), generator=gen)
        tm = torch.arange(Nt)[None] < torch.randint(1, max(Nt, 1) + 1, (Bt, 1), generator=gen)
    if empty:
        im[Bi // 2] = False
        tm[Bt - 1] = False
    if poison is not None:  # garbage at padding: must reach no output or gradient
        img = img.masked_fill(~im[:, :, None], poison)
        txt = txt.masked_fill(~tm[:, :, None], poison)
    if not aligned:  # one element past a 16-byte boundary: the kernels' element-wise path
        img, txt = _guarded(img, 1), _guarded(txt, 1)
    use_masks = masks or empty or poison is not None
    return img, txt, (im if use_masks else None), (tm if use_masks else None), im, tm


def _best(sim, real, dim):
    """Max over `dim` of sim (real entries only), its lowest arg-max, and the runner-up."""
    s = sim.masked_fill(~real, -math.inf)
    best, arg = s.max(dim=dim)
    idx = torch.arange(s.shape[dim]).view([-1 if i == dim % s.dim() else 1 for i in range(s.dim())])
    first = torch.where(s == best.unsqueeze(dim), idx, s.shape[dim]).min(dim=dim).values
    second = s.masked_fill(idx == first.unsqueeze(dim), -math.inf).max(dim=dim).values
    return best, first, second


def check_token_similarity(emu, case, dtype, bug=None, poison=None):
    """Scores within 2e-6 of float64 on the same rounded inputs; every arg-max that beats the
    runner-up by > 1e-4 and every exact tie (lowest index) as the reference's, 0 where an item
    has no real token; gradients from the kernel's own indices within SIM_GRAD_TOL of the
    largest reference value; padding tokens exactly 0; every output written."""
    img, txt, img_mask, txt_mask, im, tm = _sim_inputs(case, dtype, seed=len(case[0]), poison=poison)
    i2t, t2i, row_idx, col_idx = emulate(emu, emu.token_similarity_fwd, img, txt, img_mask, txt_mask, bug=bug)
    Bi, Ni, D = img.shape
    Bt, Nt, _ = txt.shape
    a64 = img.double().masked_fill(~im[:, :, None], 0)
    t64 = txt.double().masked_fill(~tm[:, :, None], 0)
    sim = torch.einsum("akd,bld->abkl", a64, t64)
    n_img, n_txt = im.sum(1).double(), tm.sum(1).double()
    assert torch.isfinite(i2t).all() and torch.isfinite(t2i).all(), "unwritten or poisoned scores"
    for idx, dim, real_other, real_own, n_own, score in (
            (row_idx, 3, tm[None, :, None, :], im[:, None, :], n_img[:, None], i2t),
            (col_idx, 2, im[:, None, :, None], tm[None, :, :], n_txt[None, :], t2i)):
        if sim.numel() == 0 or sim.shape[dim] == 0:
            assert torch.count_nonzero(score) == 0 and torch.count_nonzero(idx) == 0
            continue
        best, first, second = _best(sim, real_other.expand_as(sim), dim)
        found = real_other.expand_as(sim).any(dim)
        got = idx.long()
        assert torch.equal(got[~found], torch.zeros_like(got[~found])), "index of a token with no partner not 0"
        decided = found & ((best - second > 1e-4) | (best == second))
        assert torch.equal(got[decided], first[decided]), "arg-max differs from the reference"
        terms = torch.where(found & real_own, best, 0.0).sum(2)
        want = terms / n_own.clamp(min=1)
        want = torch.where((n_img[:, None] > 0) & (n_txt[None, :] > 0), want, 0.0)
        err = (score.double() - want).abs().max().item() if want.numel() else 0.0
        assert err < 2e-6, f"scores max abs err {err:.3g}"

    gen = torch.Generator().manual_seed(3)
    g_i2t, g_t2i = torch.randn(Bi, Bt, generator=gen), torch.randn(Bi, Bt, generator=gen)
    d_img, d_txt = emulate(emu, emu.token_similarity_bwd, g_i2t, g_t2i, img, txt, img_mask, txt_mask, row_idx,
                           col_idx, bug=bug)
    # reference gradients from the same indices (float64)
    valid = ((n_img[:, None] > 0) & (n_txt[None, :] > 0)).double()
    ci = g_i2t.double() * valid / n_img.clamp(min=1)[:, None]  # (Bi, Bt)
    ct = g_t2i.double() * valid / n_txt.clamp(min=1)[None, :]
    r_img, r_txt = torch.zeros(Bi, Ni, D, dtype=torch.float64), torch.zeros(Bt, Nt, D, dtype=torch.float64)
    if Ni and Nt:
        a_i, b_i = torch.meshgrid(torch.arange(Bi), torch.arange(Bt), indexing="ij")
        w_row = ci[:, :, None] * im[:, None, :]  # (Bi, Bt, Ni): row term of image token k
        l_sel = row_idx.long()
        r_img += torch.einsum("abk,abkd->akd", w_row, t64[b_i[..., None], l_sel])
        r_txt.index_put_((b_i[..., None].expand_as(l_sel), l_sel), w_row[..., None] * a64[:, None], accumulate=True)
        w_col = ct[:, :, None] * tm[None, :, :]  # (Bi, Bt, Nt): column term of text token l
        k_sel = col_idx.long()
        r_txt += torch.einsum("abl,abld->bld", w_col, a64[a_i[..., None], k_sel])
        r_img.index_put_((a_i[..., None].expand_as(k_sel), k_sel), w_col[..., None] * t64[None], accumulate=True)
    for name, got, ref, real in (("d_img", d_img, r_img, im), ("d_txt", d_txt, r_txt, tm)):
        assert torch.isfinite(got).all(), f"{name}: unwritten or poisoned values"
        assert torch.count_nonzero(got[~real]) == 0, f"{name}: a padding token got a gradient"
    ge = max([(d_img.double() - r_img).abs().max().item() if r_img.numel() else 0.0,
              (d_txt.double() - r_txt).abs().max().item() if r_txt.numel() else 0.0])
    gn = max([r_img.abs().max().item() if r_img.numel() else 0.0, r_txt.abs().max().item() if r_txt.numel() else 0.0])
    assert ge <= SIM_GRAD_TOL[dtype] * max(gn, 1.0), f"grad max abs err {ge:.3g} (max {gn:.3g})"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", SIM_CASES, ids=[c[0] for c in SIM_CASES])
def test_token_similarity(emu, case, dtype):
    check_token_similarity(emu, case, dtype)


@pytest.mark.parametrize("poison", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_token_similarity_garbage_at_padding(emu, dtype, poison):
    """NaN or inf in padding tokens reaches no score, index or gradient."""
    check_token_similarity(emu, ("padding poisoned", 4, 5, 19, 11, 16, True, True, True), dtype, poison=poison)


@pytest.mark.parametrize("Bi,Bt,Ni,Nt", [(0, 3, 4, 5), (3, 0, 4, 5), (3, 4, 0, 5), (3, 4, 5, 0), (0, 0, 0, 0)])
def test_token_similarity_empty_dimensions(emu, Bi, Bt, Ni, Nt):
    """No item or no token: empty outputs, or every pair scoring 0 with zero indices and gradients."""
    img, txt = torch.randn(Bi, Ni, 8), torch.randn(Bt, Nt, 8)
    i2t, t2i, row_idx, col_idx = emulate(emu, emu.token_similarity_fwd, img, txt, None, None)
    assert i2t.shape == t2i.shape == (Bi, Bt)
    assert row_idx.shape == (Bi, Bt, Ni) and col_idx.shape == (Bi, Bt, Nt)
    for t in (i2t, t2i, row_idx, col_idx):
        assert torch.count_nonzero(t) == 0
    g = torch.randn(Bi, Bt)
    d_img, d_txt = emulate(emu, emu.token_similarity_bwd, g, g, img, txt, None, None, row_idx, col_idx)
    assert d_img.shape == img.shape and d_txt.shape == txt.shape
    assert torch.count_nonzero(d_img) == 0 and torch.count_nonzero(d_txt) == 0


# ----------------------------------------------------------------------------- token_reduce

RED_FLOOR = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}
H100, A100 = 232448, 166912  # sharedMemPerBlockOptin (bytes)


def red_case(label, B, N, D, S, seed, **opts):
    """One case: sizes, seed and options (ln, lnb, masked, empty, pool, pool_input, param_dtype,
    smem / smem_fwd limits (bytes, or {dtype: bytes}), n_sm, dtypes)."""
    return {"label": label, "B": B, "N": N, "D": D, "S": S, "seed": seed, **opts}


# every case runs in each of its dtypes (default fp32 and bf16)
RED_CASES = [
    red_case("ViT-B/32: N=49 -> S=12, LN", 3, 49, 32, 12, 1, ln=True, lnb=True),
    red_case("odd N and D (element loads), LN weight only, masks", 3, 37, 33, 5, 2, ln=True, masked=True),
    red_case("S=1, no LN, masks (W exact in bf16)", 4, 20, 24, 1, 3, masked=True),
    red_case("an all-masked row", 4, 19, 24, 3, 4, ln=True, lnb=True, masked=True, empty=True),
    red_case("pool_input (Wukong's layer), masks", 3, 30, 40, 8, 5, ln=True, lnb=True, masked=True,
             pool_input=True),
    red_case("token_pool: scores given, an empty row", 3, 21, 40, 12, 6, pool=True, masked=True, empty=True),
    red_case("S=32 (4 token tiles), N=70 (3 tiles of 32)", 2, 70, 64, 32, 7, ln=True, lnb=True),
    red_case("N=9 <= 16: 16-row tiles, S=24", 2, 9, 48, 24, 8, ln=True, lnb=True),
    # limits (bytes) that leave one x tile of 16 rows in flight: forward and backward single-stage
    red_case("groups of 3 items per block, single stage (small smem)", 7, 33, 136, 17, 9, ln=True, lnb=True,
             masked=True, n_sm=3, smem={torch.float32: 65000, torch.bfloat16: 52000, torch.float16: 52000},
             smem_fwd={torch.float32: 35000, torch.bfloat16: 25000, torch.float16: 25000}),
    red_case("fp32 parameters with 16-bit x (W' split both ways)", 2, 25, 48, 6, 10, ln=True, lnb=True,
             param_dtype=torch.float32, dtypes=(torch.bfloat16, torch.float16)),
    red_case("A100 smem limit, D=520", 2, 40, 520, 24, 11, ln=True, lnb=True, masked=True, smem=A100),
    red_case("two D chunks (D=1100 > 1024)", 2, 18, 1100, 20, 12, ln=True, lnb=True),
    red_case("fp32 D=768 S=24 at the A100 limit (single-stage backward)", 2, 20, 768, 24, 13, ln=True, lnb=True,
             masked=True, smem=A100, dtypes=(torch.float32,)),
    # raw pooled rows whose mean is 60x their spread: delta = <d_out, out> must use out as
    # computed (out + out_lo), not out rounded to 16 bits (11 % dx error in bf16 before)
    red_case("large-mean rows pooled raw (out's rounding residual)", 3, 40, 96, 6, 14, ln=True, lnb=True,
             masked=True, pool_input=True, x_scale=1.0, x_shift=60.0, dtypes=(torch.bfloat16, torch.float16)),
]
# the cases the suite runs by default (CI time); with ALL, every case in each of its dtypes
RED_RUN = [(c["label"], dt) for c in RED_CASES for dt in c.get("dtypes", (torch.float32, torch.bfloat16))] if ALL \
    else [("ViT-B/32", torch.bfloat16), ("an all-masked row", torch.float32), ("token_pool", torch.bfloat16),
          ("fp32 parameters with 16-bit x", torch.float16), ("odd N and D", torch.float16),
          ("large-mean rows", torch.bfloat16)]


def _per_dtype(v, dtype):
    return v[dtype] if isinstance(v, dict) else v


def _red_inputs(c, dtype, poison=None):
    g = torch.Generator().manual_seed(c["seed"])
    B, N, D, S = c["B"], c["N"], c["D"], c["S"]
    t = {"x": torch.randn(B, N, D, generator=g, dtype=torch.float64) * c.get("x_scale", 1.5) + c.get("x_shift", 0.3)}
    if c.get("pool"):
        t["scores"] = torch.randn(B, N, S, generator=g, dtype=torch.float64) * 2
    else:
        t["w_score"] = torch.randn(D, S, generator=g, dtype=torch.float64) / D ** 0.5 * 3
    if c.get("ln"):
        t["ln_weight"] = torch.rand(D, generator=g, dtype=torch.float64) + 0.5
        if c.get("lnb"):
            t["ln_bias"] = torch.randn(D, generator=g, dtype=torch.float64) * 0.2
    mask = None
    if c.get("masked") or c.get("empty") or poison is not None:
        lengths = torch.randint(1, N + 1, (B,), generator=g)
        mask = torch.arange(N)[None, :] < lengths[:, None]
        mask = mask[:, torch.randperm(N, generator=g)]
        if c.get("empty"):
            mask[B // 2] = False
    pdt = c.get("param_dtype", dtype)
    t = {n: v.to(dtype if n == "x" else pdt) for n, v in t.items()}  # rounded to the test dtypes
    d_out = torch.randn(B, S, D, generator=g, dtype=torch.float64).to(dtype)
    x_kernel = t["x"] if poison is None else t["x"].masked_fill(~mask[:, :, None], poison)
    if poison is not None and "scores" in t:
        t["scores"] = t["scores"].masked_fill(~mask[:, :, None], poison)
    return t, x_kernel, mask, d_out


def _red_torch(t, mask, d_out, pool_input, acc=None):
    """Output and gradients of reference.py: in float64 (acc) or as the torch backend computes
    in the test dtype."""
    leaves = {n: (v.to(acc) if acc else v).clone().requires_grad_() for n, v in t.items()}
    if "scores" in leaves:
        out = token_pool_ref(leaves["x"], leaves["scores"], mask)
    else:
        out = token_reduce_ref(leaves["x"], leaves["w_score"], leaves.get("ln_weight"), leaves.get("ln_bias"), mask,
                               pool_input=pool_input)
    grads = torch.autograd.grad(out, list(leaves.values()), d_out.to(out.dtype))
    return out, dict(zip(leaves, grads))


def check_token_reduce(emu, c, dtype, bug=None, poison=None):
    """out and every gradient within 2x PyTorch's own fp32 error (+ a floor for the dtype) of
    float64; masked positions exactly zero dx; an item without real positions zero outputs and
    lse = +inf."""
    t, x_kernel, mask, d_out = _red_inputs(c, dtype, poison)
    pool_input, eps = bool(c.get("pool_input")), 1e-5
    smem, n_sm = _per_dtype(c.get("smem", H100), dtype), c.get("n_sm", 132)
    smem_fwd = _per_dtype(c.get("smem_fwd", smem), dtype)
    w, sc, lnw, lnb = (t.get(n) for n in ("w_score", "scores", "ln_weight", "ln_bias"))
    out, lse, lo = emulate(emu, emu.token_reduce_fwd, x_kernel, w, sc, lnw, lnb, mask, eps, pool_input, smem_fwd,
                           n_sm, bug=bug)
    assert lo.numel() == (out.numel() if dtype != torch.float32 and (pool_input or sc is not None) else 0)
    # the backward takes out as computed, out + out_lo in fp32, where the forward gives out_lo (op.py)
    out_bwd = out.float() + lo.float() if lo.numel() else out
    grads = emulate(emu, emu.token_reduce_bwd, d_out, out_bwd, x_kernel, w, sc, lnw, lnb, mask, lse, eps,
                    pool_input, smem, n_sm, bug=bug)
    got = dict(zip(["x", "w_score", "scores", "ln_weight", "ln_bias"], grads))
    clean = dict(t)
    if mask is not None:  # the references see zeros where the kernels see garbage
        clean["x"] = t["x"].masked_fill(~mask[:, :, None], 0)
        if "scores" in t:
            clean["scores"] = t["scores"].masked_fill(~mask[:, :, None], 0)
    ref_out, ref_g = _red_torch(clean, mask, d_out, pool_input, torch.float64)
    base_out, base_g = _red_torch(clean, mask, d_out, pool_input)
    checks = [("out", out, base_out, ref_out)] + [("d" + n, got[n], base_g[n], ref_g[n]) for n in t]
    for what, g_, base, ref in checks:
        assert g_.shape == ref.shape, what
        assert torch.isfinite(g_.double()).all(), f"{what}: non-finite values"
        if pool_input and what == "dln_bias":  # exactly 0 in exact arithmetic: noise vs d ln_weight's scale
            scale = got["ln_weight"].double().norm()
            assert g_.double().norm() <= RED_FLOOR[dtype] * scale, f"dln_bias (pool_input): {g_.double().norm():.3g}"
            continue
        err, err_t = rel_err(g_, ref), rel_err(base, ref)
        assert err <= 2 * err_t + RED_FLOOR[dtype], f"{what}: rel err {err:.3g} > 2 x torch {err_t:.3g}"
    if mask is not None:
        assert torch.count_nonzero(got["x"][~mask]) == 0, "dx: nonzero at masked positions"
        empty = ~mask.any(1)
        assert torch.count_nonzero(out[empty]) == 0, "out: nonzero for an item without real positions"
        assert torch.isinf(lse[empty]).all() and torch.isfinite(lse[~empty]).all(), "lse"
    else:
        assert torch.isfinite(lse).all(), "lse"


@pytest.mark.parametrize("label,dtype", RED_RUN, ids=[f"{c[0]}-{str(c[1])[6:]}" for c in RED_RUN])
def test_token_reduce(emu, label, dtype):
    check_token_reduce(emu, next(c for c in RED_CASES if c["label"].startswith(label)), dtype)


@pytest.mark.parametrize("poison", [math.nan, math.inf])
@pytest.mark.parametrize("pool", [False, True], ids=["token_reduce", "token_pool"])
def test_token_reduce_garbage_at_masked_positions(emu, pool, poison):
    """NaN or inf in masked rows of x (and of scores) reaches no output or gradient."""
    c = red_case("padding poisoned", 3, 21, 24, 5, 21, ln=not pool, lnb=not pool, pool=pool, empty=True)
    check_token_reduce(emu, c, torch.bfloat16, poison=poison)


# ----------------------------------------------------------------------------- injected bugs
# Each bug is one the comparisons above exist to catch; the emulation injects it into the real
# kernels. A check that passed with the bug in place would be a check that cannot fail.

BUGS = {
    "cp.async wait one group short": {"wait_short": 1},
    "a missing __syncthreads": {"drop_barrier": 1},
}
FAMILY_CASES = {
    "skill_ffn": lambda emu, bug: check_skill_ffn(emu, FFN_CASES[0], bug=bug),
    "token_similarity": lambda emu, bug: check_token_similarity(emu, SIM_CASES[0], torch.bfloat16, bug=bug),
    "token_reduce": lambda emu, bug: check_token_reduce(emu, RED_CASES[0], torch.bfloat16, bug=bug),
}


@pytest.mark.parametrize("bug", list(BUGS), ids=list(BUGS))
@pytest.mark.parametrize("family", list(FAMILY_CASES))
def test_injected_bugs_are_caught(emu, family, bug):
    with pytest.raises((AssertionError, RuntimeError)):
        FAMILY_CASES[family](emu, BUGS[bug])


def test_skill_ffn_rows_past_the_edge_must_be_zero_filled(emu):
    """skill_ffn zero-fills tile rows past the edge with predicated-off copies; without the
    zero-fill they keep the NaN poison and the results show it."""
    with pytest.raises((AssertionError, RuntimeError)):
        check_skill_ffn(emu, FFN_CASES[0], bug={"no_zero_fill": True})
