"""skillkern.maxsim / maxsim_topk against the float64 reference: padded and packed docs,
candidates, both reductions, gradients through the streamed chunks, ties, the memory bound, bad
input (the torch backend); then the Triton backend (on CPU through the Triton interpreter) on the
same corpora and adversarial ones, its top-k against the torch backend's, its registered ops and
torch.compile."""
import pytest
import torch

import skillkern
from skillkern.ops.maxsim import torch_impl
from skillkern.ops.maxsim.reference import maxsim_ref, maxsim_topk_ref, padded_docs
from skillkern.ops.token_similarity.reference import token_similarity_ref

from conftest import DEVICE, rel_err

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-5}  # the torch backend multiplies in fp32: only its rounding


def corpus(lengths, Bq=3, Nq=5, D=16, seed=0, q_pad=True):
    """Queries (some padding, one with no real token when Bq > 2) and packed docs of `lengths`."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(Bq, Nq, D, generator=g, dtype=torch.float64)
    qm = torch.rand(Bq, Nq, generator=g) > 0.3 if q_pad else torch.ones(Bq, Nq, dtype=torch.bool)
    qm[:, 0] = True
    if Bq > 2 and q_pad:
        qm[2] = False
    lengths = torch.tensor(lengths, dtype=torch.int64)
    off = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    d = torch.randn(int(off[-1]), D, generator=g, dtype=torch.float64)
    return q.to(DEVICE), qm.to(DEVICE), d.to(DEVICE), off.to(DEVICE)


def padded(d, off):
    docs, dm = padded_docs(d, None, off)
    docs = docs.clone()
    docs[~dm] = float("nan")  # padding is never read as a number
    return docs, dm


LENGTHS = {
    "ragged, an empty doc": [3, 0, 1, 7, 4, 2],
    "single-token docs": [1, 1, 1, 1],
    "one doc": [6],
}


@pytest.fixture
def small_chunks(monkeypatch):
    """A budget of 24 similarities: every call streams over many chunks."""
    monkeypatch.setattr(torch_impl, "_BUDGET", 24)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("form", ["packed", "padded"])
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
def test_scores_and_grads_match_reference(lengths, form, reduce, dtype, small_chunks):
    q, qm, d, off = corpus(lengths)
    q, d = q.to(dtype), d.to(dtype)  # the reference sees the same rounded inputs, in float64
    ref_q, ref_d = q.double().requires_grad_(), d.double().requires_grad_()
    ref = maxsim_ref(ref_q, ref_d, qm, None, off, None, reduce)
    gq = q.clone().requires_grad_()
    if form == "packed":
        gd = d.clone().requires_grad_()
        got = skillkern.maxsim(gq, gd, qm, d_offsets=off, reduce=reduce)
    else:
        docs, dm = padded(d, off)
        gd = docs.requires_grad_()
        got = skillkern.maxsim(gq, gd, qm, dm, reduce=reduce)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert rel_err(got, ref) <= TOL[dtype]
    assert torch.count_nonzero(got[2]) == 0  # a query with no real token scores 0
    assert torch.count_nonzero(got[:, torch.tensor(lengths) == 0]) == 0  # so does an empty doc
    g = torch.randn(got.shape, dtype=torch.float64, device=DEVICE)
    dq, dd = torch.autograd.grad(got, [gq, gd], g.float())
    rq, rd = torch.autograd.grad(ref, [ref_q, ref_d], g)
    assert dq.dtype == dtype and dd.dtype == dtype
    assert rel_err(dq, rq) <= 1e-2 if dtype == torch.bfloat16 else rel_err(dq, rq) <= TOL[dtype]
    if form == "padded":  # padding tokens: exactly zero gradient, the real ones the packed rows'
        assert torch.count_nonzero(dd[~dm]) == 0
        dd = dd[dm]
    assert rel_err(dd, rd) <= 1e-2 if dtype == torch.bfloat16 else rel_err(dd, rd) <= TOL[dtype]
    assert torch.count_nonzero(dq[~qm]) == 0


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_candidates(reduce, small_chunks):
    """Reranking: (Bq, C) doc indices, -1 = an empty slot (score 0), a doc named twice by one
    query gets both slots' gradients."""
    q, qm, d, off = corpus(LENGTHS["ragged, an empty doc"], Bq=4)
    cand = torch.tensor([[4, -1, 0], [1, 1, 3], [2, 0, -1], [5, 5, 5]], device=DEVICE)
    rq, rd = q.clone().requires_grad_(), d.clone().requires_grad_()
    ref = maxsim_ref(rq, rd, qm, None, off, cand, reduce)
    gq, gd = q.float().requires_grad_(), d.float().requires_grad_()
    got = skillkern.maxsim(gq, gd, qm, d_offsets=off, candidates=cand, reduce=reduce)
    assert got.shape == (4, 3) and rel_err(got, ref) <= 1e-5
    assert got[0, 1] == 0 and got[2, 2] == 0
    g = torch.randn(4, 3, dtype=torch.float64, device=DEVICE)
    for a, b in zip(torch.autograd.grad(got, [gq, gd], g.float()), torch.autograd.grad(ref, [rq, rd], g)):
        assert rel_err(a, b) <= 1e-5
    # every slot empty
    none = torch.full((4, 2), -1, device=DEVICE)
    assert torch.count_nonzero(skillkern.maxsim(gq, gd, qm, d_offsets=off, candidates=none)) == 0


def test_mean_is_token_similarity_i2t():
    """reduce='mean' is FILIP's image-to-text direction."""
    q, qm, d, off = corpus([4, 2, 5], q_pad=False, Bq=2)
    docs, dm = padded_docs(d, None, off)
    i2t, _ = token_similarity_ref(q, docs, qm, dm)
    assert rel_err(skillkern.maxsim(q.float(), docs.float(), qm, dm, reduce="mean"), i2t) <= 1e-6


def test_deterministic(small_chunks):
    q, qm, d, off = corpus(LENGTHS["ragged, an empty doc"])
    runs = []
    for _ in range(2):
        gq, gd = q.float().requires_grad_(), d.float().requires_grad_()
        s = skillkern.maxsim(gq, gd, qm, d_offsets=off)
        runs.append([s, *torch.autograd.grad(s.square().sum(), [gq, gd])])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("chunk", [1, 2, 100])
@pytest.mark.parametrize("k", [0, 3, 6])
def test_topk_matches_reference(k, chunk, small_chunks):
    q, qm, d, off = corpus(LENGTHS["ragged, an empty doc"], Bq=4)
    q, d = q.mul(2).round(), d.mul(2).round()  # small integers: every score exact, in any order of adds
    d = torch.cat([d, d[off[3]:off[4]]])  # doc 6 = doc 3: equal scores for every query
    off = torch.cat([off, off[-1:] + (off[4] - off[3])])
    vals, idx = skillkern.maxsim_topk(q.float(), d.float(), k, qm, d_offsets=off, chunk=chunk)
    rv, ri = maxsim_topk_ref(q, d, k, qm, None, off)
    assert vals.shape == (4, k) and idx.dtype == torch.int64
    assert torch.equal(idx, ri)  # ties (doc 3 and doc 6; the empty query's all-zero row) to the lower index
    assert rel_err(vals, rv) <= 1e-5
    if k:
        assert (vals[:, :-1] >= vals[:, 1:]).all()


def test_topk_k_equals_docs_and_one_query():
    q, qm, d, off = corpus([2, 3, 1], Bq=1, q_pad=False)
    vals, idx = skillkern.maxsim_topk(q.float(), d.float(), 3, qm, d_offsets=off)
    rv, ri = maxsim_topk_ref(q, d, 3, qm, None, off)
    assert torch.equal(idx, ri) and sorted(idx[0].tolist()) == [0, 1, 2]


def test_memory_bound(monkeypatch):
    """maxsim_topk never holds more than Bq * (chunk + k) scores, and no chunk more than the
    similarity budget."""
    q, qm, d, off = corpus([5, 3, 8, 1, 4, 6, 2, 7, 3, 3], Bq=3)
    monkeypatch.setattr(torch_impl, "_BUDGET", 40)
    sims, scores = [], []
    real_chunk, real_scores = torch_impl._chunk, torch_impl.doc_scores

    def chunk(qf, table, docs, L):
        sims.append(qf.shape[0] * len(docs) * L)
        return real_chunk(qf, table, docs, L)

    def doc_scores(*a):
        out = real_scores(*a)
        scores.append(out.numel())
        return out

    monkeypatch.setattr(torch_impl, "_chunk", chunk)
    monkeypatch.setattr(torch_impl, "doc_scores", doc_scores)
    skillkern.maxsim_topk(q.float(), d.float(), 2, qm, d_offsets=off, chunk=3)
    assert max(scores) <= 3 * 3 and len(scores) == 4  # Bq x chunk per step, 4 steps for 10 docs
    # a doc longer than the budget's share still goes alone (one doc per chunk at least)
    assert max(sims) <= max(40, 3 * 5 * 8) and len(sims) >= 10


def test_bad_input():
    q, qm, d, off = corpus([2, 3])
    q, d = q.float(), d.float()
    docs, dm = padded_docs(d, None, off)
    cases = [
        ("d", lambda: skillkern.maxsim(q, d[:, :8], d_offsets=off)),  # D mismatch
        ("d", lambda: skillkern.maxsim(q, d.double(), d_offsets=off)),
        ("d", lambda: skillkern.maxsim(q, d)),  # 2-d without d_offsets
        ("d_offsets", lambda: skillkern.maxsim(q, d, d_offsets=torch.tensor([0, 3, 2, 5], device=DEVICE))),
        ("d_offsets", lambda: skillkern.maxsim(q, d, d_offsets=torch.tensor([0, 2, 4], device=DEVICE))),
        ("d_offsets", lambda: skillkern.maxsim(q, d, d_offsets=torch.tensor([1, 2, 5], device=DEVICE))),
        ("d_offsets", lambda: skillkern.maxsim(q, d, d_offsets=off.float())),
        ("d_mask", lambda: skillkern.maxsim(q, d, d_mask=dm, d_offsets=off)),
        ("d_mask", lambda: skillkern.maxsim(q, docs, None, dm[:, :1])),
        ("q_mask", lambda: skillkern.maxsim(q, docs, qm.int(), dm)),
        ("q_mask", lambda: skillkern.maxsim(q, docs, qm[:1], dm)),
        ("candidates", lambda: skillkern.maxsim(q, docs, candidates=torch.tensor([[0], [2], [1]], device=DEVICE))),
        ("candidates", lambda: skillkern.maxsim(q, docs, candidates=torch.tensor([[0], [-2], [1]], device=DEVICE))),
        ("candidates", lambda: skillkern.maxsim(q, docs, candidates=torch.zeros(3, 1, dtype=torch.int32,
                                                                                 device=DEVICE))),
        ("reduce", lambda: skillkern.maxsim(q, docs, reduce="max")),
        ("k", lambda: skillkern.maxsim_topk(q, docs, 3)),
        ("k", lambda: skillkern.maxsim_topk(q, docs, -1)),
        ("chunk", lambda: skillkern.maxsim_topk(q, docs, 1, chunk=0)),
        ("q", lambda: skillkern.maxsim(q[0], docs)),
    ]
    for name, call in cases:
        with pytest.raises((ValueError, TypeError), match=f"`{name}`"):
            call()
    with pytest.raises(skillkern.BackendUnavailable, match="no CUDA C.. kernels"):
        skillkern.maxsim(q, docs, backend="cuda")
    with pytest.raises(skillkern.BackendUnavailable, match="no CUDA C.. kernels"):
        skillkern.maxsim_topk(q, docs, 1, backend="cuda")
    long_q = torch.zeros(1, 257, 16, device=DEVICE)  # the Triton kernels hold whole queries of <= 256
    with pytest.raises(ValueError, match="`q`"):
        skillkern.maxsim(long_q, docs, backend="triton")
    with pytest.raises(ValueError, match="`q`"):
        skillkern.maxsim_topk(long_q, docs, 1, backend="triton")
    assert skillkern.maxsim(long_q, docs).shape == (1, 2)  # auto: torch takes it


def test_torch_compile_fullgraph():
    q, qm, d, off = corpus([3, 1, 4])
    gq, gd = q.float().requires_grad_(), d.float().requires_grad_()

    def f(a, b):
        return skillkern.maxsim(a, b, qm, d_offsets=off, reduce="mean").square().sum()

    loss = torch.compile(f, fullgraph=True)(gq, gd)
    got = torch.autograd.grad(loss, [gq, gd])
    want = torch.autograd.grad(f(gq, gd), [gq, gd])
    assert torch.allclose(loss, f(gq, gd)) and all(torch.equal(a, b) for a, b in zip(got, want))


# ----------------------------------------------------------------------------- Triton backend

from skillkern.ops.maxsim import triton_impl  # noqa: E402

# fp32: exact products (input_precision "ieee"); fp16 / bf16: the products of the rounded inputs
# are exact in fp32 too, so the scores differ from the float64 reference by fp32 sums only; the
# gradients are rounded to the input dtype (and dd's coefficients enter its tl.dot in it).
TRITON_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-5, 3e-3), torch.bfloat16: (1e-5, 2e-2)}
TRITON_LENGTHS = dict(LENGTHS, **{"blocks of 64: 70, 0, 1, 130, 64, 65": [70, 0, 1, 130, 64, 65]})


@pytest.fixture(params=["default", "small"])
def tiles(request, monkeypatch):
    """default: the launchers' tiles (one program holds every query here; doc tiles by TMA
    in 16-bit types); small: 16-row programs (3 queries of 5 tokens, so several query blocks)
    over 3 docs each, doc tiles by masked loads, and a doc-gradient loop of 3 queries a step."""
    if request.param == "small":
        monkeypatch.setattr(triton_impl, "_USE_TMA", False)
        monkeypatch.setattr(triton_impl, "_DD_ROWS", 16)
        monkeypatch.setattr(triton_impl, "_ROWS", 16)
        monkeypatch.setattr(triton_impl, "_ROWS_PER_QUERY", 16)
        monkeypatch.setattr(triton_impl, "_docs_per_program", lambda *a: 3)
    return request.param


def poisoned(q, qm):
    """q with NaN in its padding tokens (which must never reach a result)."""
    q = q.clone()
    q[~qm] = float("nan")
    return q


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("form", ["packed", "padded"])
@pytest.mark.parametrize("lengths", list(TRITON_LENGTHS.values()), ids=list(TRITON_LENGTHS))
def test_triton_matches_reference(lengths, form, reduce, dtype, tiles):
    """Scores and both gradients against the float64 reference on the same rounded inputs; NaN in
    every padding token (queries and padded docs) reaches nothing; padding gets exact zeros."""
    q, qm, d, off = corpus(lengths, Bq=4)
    q, d = q.to(dtype), d.to(dtype)
    ref_q, ref_d = q.double().requires_grad_(), d.double().requires_grad_()
    ref = maxsim_ref(ref_q, ref_d, qm, None, off, None, reduce)
    gq = poisoned(q, qm).requires_grad_()
    if form == "packed":
        gd = d.clone().requires_grad_()
        got = skillkern.maxsim(gq, gd, qm, d_offsets=off.int() if dtype == torch.float16 else off, reduce=reduce,
                               backend="triton")
    else:
        docs, dm = padded(d, off)
        gd = docs.requires_grad_()
        got = skillkern.maxsim(gq, gd, qm, dm, reduce=reduce, backend="triton")
    tol_fwd, tol_grad = TRITON_TOL[dtype]
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert rel_err(got, ref) <= tol_fwd
    assert torch.count_nonzero(got[2]) == 0 and torch.count_nonzero(got[:, torch.tensor(lengths) == 0]) == 0
    g = torch.randn(got.shape, dtype=torch.float64, device=DEVICE)
    dq, dd = torch.autograd.grad(got, [gq, gd], g.float())
    rq, rd = torch.autograd.grad(ref, [ref_q, ref_d], g)
    assert dq.dtype == dtype and dd.dtype == dtype
    assert torch.count_nonzero(dq[~qm]) == 0
    if form == "padded":
        assert torch.count_nonzero(dd[~dm]) == 0
        dd = dd[dm]
    assert rel_err(dq, rq) <= tol_grad and rel_err(dd, rd) <= tol_grad


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_triton_candidates(reduce, tiles):
    """Reranking: empty slots score 0, a doc named twice (by one query, by several) gets every
    slot's gradient, an empty doc named scores 0."""
    q, qm, d, off = corpus(LENGTHS["ragged, an empty doc"], Bq=4)
    cand = torch.tensor([[4, -1, 0], [1, 1, 3], [2, 0, -1], [5, 5, 3]], device=DEVICE)
    rq, rd = q.clone().requires_grad_(), d.clone().requires_grad_()
    ref = maxsim_ref(rq, rd, qm, None, off, cand, reduce)
    gq, gd = poisoned(q.float(), qm).requires_grad_(), d.float().requires_grad_()
    got = skillkern.maxsim(gq, gd, qm, d_offsets=off, candidates=cand, reduce=reduce, backend="triton")
    assert got.shape == (4, 3) and rel_err(got, ref) <= 1e-5
    assert got[0, 1] == 0 and got[2, 2] == 0 and got[1, 0] == 0  # empty slots; doc 1 has no token
    g = torch.randn(4, 3, dtype=torch.float64, device=DEVICE)
    for a, b in zip(torch.autograd.grad(got, [gq, gd], g.float()), torch.autograd.grad(ref, [rq, rd], g)):
        assert rel_err(a, b) <= 1e-5
    none = torch.full((4, 2), -1, device=DEVICE)
    out = skillkern.maxsim(gq, gd, qm, d_offsets=off, candidates=none, backend="triton")
    assert out.shape == (4, 2) and torch.count_nonzero(out) == 0
    assert all(torch.count_nonzero(x) == 0 for x in torch.autograd.grad(out.sum(), [gq, gd]))


def test_triton_deterministic_and_ties():
    """Bit-identical runs; equal similarities (integer features) send the gradient to the first
    of the maximal tokens, as the reference's max does."""
    q, qm, d, off = corpus([3, 5, 2, 4], Bq=3)
    q, d = q.sign(), d.sign()  # +-1 features: many equal maxima
    runs = []
    for _ in range(2):
        gq, gd = q.float().requires_grad_(), d.float().requires_grad_()
        s = skillkern.maxsim(gq, gd, qm, d_offsets=off, backend="triton")
        runs.append([s, *torch.autograd.grad(s.square().sum(), [gq, gd])])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    rq, rd = q.clone().requires_grad_(), d.clone().requires_grad_()
    ref = maxsim_ref(rq, rd, qm, None, off)
    want = torch.autograd.grad(ref.square().sum(), [rq, rd])
    assert torch.equal(runs[0][0].double(), ref.detach())
    assert all(torch.equal(a.double(), b) for a, b in zip(runs[0][1:], want))


@pytest.mark.parametrize("form", ["packed", "padded"])
@pytest.mark.parametrize("chunk", [1, 3, 100])
@pytest.mark.parametrize("k", [0, 3, 7])
def test_triton_topk_matches_torch(k, chunk, form, tiles):
    """Values and indices equal to the torch backend's and the reference's: ties (doc 6 = doc 3;
    the empty query's all-zero row) to the lower index, k = every doc, padded docs with NaN."""
    q, qm, d, off = corpus(LENGTHS["ragged, an empty doc"], Bq=4)
    q, d = q.mul(2).round(), d.mul(2).round()
    d = torch.cat([d, d[off[3]:off[4]]])
    off = torch.cat([off, off[-1:] + (off[4] - off[3])])
    rv, ri = maxsim_topk_ref(q, d, k, qm, None, off)
    if form == "packed":
        args, kw = (q.float(), d.float(), k, qm), dict(d_offsets=off)
    else:
        docs, dm = padded(d.float(), off)
        args, kw = (poisoned(q.float(), qm), docs, k, qm, dm), {}
    vals, idx = skillkern.maxsim_topk(*args, **kw, chunk=chunk, backend="triton")
    tv, ti = skillkern.maxsim_topk(*args, **kw, chunk=chunk, backend="torch")
    assert torch.equal(idx, ri) and torch.equal(idx, ti)
    assert torch.equal(vals, tv) and rel_err(vals, rv) <= 1e-6


def test_triton_topk_one_query_and_scores_without_grad():
    """One query, k = Bd; without a gradient wanted the arg-max-free kernel runs, same scores."""
    q, qm, d, off = corpus([2, 3, 1, 66], Bq=1, q_pad=False)
    vals, idx = skillkern.maxsim_topk(q.float(), d.float(), 4, qm, d_offsets=off, backend="triton")
    rv, ri = maxsim_topk_ref(q, d, 4, qm, None, off)
    assert torch.equal(idx, ri) and rel_err(vals, rv) <= 1e-6
    with torch.no_grad():
        plain = skillkern.maxsim(q.float(), d.float(), qm, d_offsets=off, backend="triton")
    grad = skillkern.maxsim(q.float().requires_grad_(), d.float(), qm, d_offsets=off, backend="triton")
    assert torch.equal(plain, grad.detach())


def test_triton_opcheck():
    """Schemas, fake kernels and autograd registration of the Triton ops."""
    q, qm, d, off = corpus([3, 0, 2], Bq=3)
    q, d = q.float(), d.float()
    cand = torch.tensor([[2, -1], [0, 1], [1, 1]], device=DEVICE)
    ops = torch.ops.skillkern
    for c in (None, cand):
        torch.library.opcheck(ops.maxsim_fwd_triton.default, (q.clone().requires_grad_(), d.clone().requires_grad_(),
                                                              qm, None, off, c, False))
        torch.library.opcheck(ops.maxsim_scores_triton.default, (q, d, qm, None, off, c, True))  # no gradient
    _, arg = ops.maxsim_fwd_triton(q, d, qm, None, off, None, False)
    torch.library.opcheck(ops.maxsim_bwd_triton.default, (torch.randn(3, 3, device=DEVICE), q, d, qm, None, off,
                                                          None, arg, False))
    torch.library.opcheck(ops.maxsim_topk_triton.default, (q, d, 2, qm, None, off, False, 2))


def test_triton_torch_compile_fullgraph():
    q, qm, d, off = corpus([3, 1, 4])
    gq, gd = q.float().requires_grad_(), d.float().requires_grad_()

    def f(a, b):
        return skillkern.maxsim(a, b, qm, d_offsets=off, reduce="mean", backend="triton").square().sum()

    loss = torch.compile(f, fullgraph=True)(gq, gd)
    got = torch.autograd.grad(loss, [gq, gd])
    want = torch.autograd.grad(f(gq, gd), [gq, gd])
    assert torch.allclose(loss, f(gq, gd)) and all(torch.equal(a, b) for a, b in zip(got, want))


# ----------------------------------------------------------------------------- a peer's semantics

@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_agrees_with_late_interaction_kernels(backend):
    """late-interaction-kernels' maxsim (PyLate's colbert_scores; installed as a test dependency,
    run here under the Triton interpreter) on the inputs where its semantics match ours: padded
    docs and queries, every doc and query with a real token, ColBERT's sum. In-batch scores and
    its per-query candidate layout (Bq, K, Nd, D) against our `candidates`. Its kernels round the
    features to 16 bits (about 1e-3 relative on unit vectors), so the tolerance is its precision,
    not ours; ours is checked against float64 in the tests above."""
    lik = pytest.importorskip("late_interaction_kernels")
    if DEVICE.type == "cpu" and backend == "triton" and not skillkern._backend.interpreting():
        pytest.skip("the Triton backend on CPU needs the interpreter")
    gen = torch.Generator().manual_seed(7)
    Bq, Nq, Bd, Nd, D = 3, 6, 5, 9, 16
    q = torch.nn.functional.normalize(torch.randn(Bq, Nq, D, generator=gen), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(Bd, Nd, D, generator=gen), dim=-1)
    q_mask = torch.arange(Nq) < torch.randint(1, Nq + 1, (Bq, 1), generator=gen)
    d_mask = torch.arange(Nd) < torch.randint(1, Nd + 1, (Bd, 1), generator=gen)
    q, d, q_mask, d_mask = (t.to(DEVICE) for t in (q, d, q_mask, d_mask))
    ours = skillkern.maxsim(q, d, q_mask, d_mask, backend=backend)
    theirs = lik.maxsim(q, d, q_mask, d_mask)
    exact = maxsim_ref(q.double(), d.double(), q_mask, d_mask)
    tol = 4 * rel_err(theirs.float(), exact) + 1e-6  # its own error, x4
    assert rel_err(ours, theirs.float()) <= tol
    cand = torch.tensor([[4, 0], [1, 1], [2, 3]], device=DEVICE)
    ours = skillkern.maxsim(q, d, q_mask, d_mask, candidates=cand, backend=backend)
    theirs = lik.maxsim(q, d[cand], q_mask, d_mask[cand])
    assert rel_err(ours, theirs.float()) <= tol


def test_triton_topk_memory_bound(monkeypatch):
    """The Triton top-k scores `chunk` docs per launch into a Bq x chunk buffer (the only score
    buffer besides the running Bq x k), one launch per chunk: 10 docs at chunk 3 are 4 launches."""
    if DEVICE.type == "cpu" and not skillkern._backend.interpreting():
        pytest.skip("the Triton backend on CPU needs the interpreter")
    q, qm, d, off = corpus([5, 3, 8, 1, 4, 6, 2, 7, 3, 3], Bq=3)
    buffers = []
    real = triton_impl.launch_fwd

    def launch(q_, w, table, plan, s, *a, **kw):
        buffers.append(tuple(s.shape))
        return real(q_, w, table, plan, s, *a, **kw)

    monkeypatch.setattr(triton_impl, "launch_fwd", launch)
    values, _ = skillkern.maxsim_topk(q.float(), d.float(), 2, qm, d_offsets=off, chunk=3, backend="triton")
    assert buffers == [(3, 3), (3, 3), (3, 3), (3, 1)] and values.shape == (3, 2)
