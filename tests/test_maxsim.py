"""skillkern.maxsim / maxsim_topk (torch backend) against the float64 reference: padded and packed
docs, candidates, both reductions, gradients through the streamed chunks, ties, the memory
bound, bad input."""
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
    with pytest.raises(skillkern.BackendUnavailable, match="no Triton or CUDA kernels yet"):
        skillkern.maxsim(q, docs, backend="triton")


def test_torch_compile_fullgraph():
    q, qm, d, off = corpus([3, 1, 4])
    gq, gd = q.float().requires_grad_(), d.float().requires_grad_()

    def f(a, b):
        return skillkern.maxsim(a, b, qm, d_offsets=off, reduce="mean").square().sum()

    loss = torch.compile(f, fullgraph=True)(gq, gd)
    got = torch.autograd.grad(loss, [gq, gd])
    want = torch.autograd.grad(f(gq, gd), [gq, gd])
    assert torch.allclose(loss, f(gq, gd)) and all(torch.equal(a, b) for a, b in zip(got, want))
