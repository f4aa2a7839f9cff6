"""The CPU reference paths (backend="torch") as pytest-benchmark tests.

`pytest tests/test_bench_cpu.py --benchmark-enable` times them (pytest-benchmark's table, or
--benchmark-json / --benchmark-compare to keep and compare results); the project's pytest
options pass --benchmark-disable, so in CI and `make test` each body runs once as a plain test.
Either way every result is checked against a computation written here from the definition,
token by token or pair by pair in float64, so a benchmark of a wrong path fails.

Shapes are small enough for a 2-core CPU and large enough that the timed work is the math,
not Python overhead.
"""
import pytest
import torch
import torch.nn.functional as F

import skillkern

pytest.importorskip("pytest_benchmark")

# float32 paths against float64 definitions: sums of ~100 products, ~1e-6 relative error.
TOL = {"rtol": 1e-4, "atol": 1e-5}


def _ffn_case(T=1024, d=96, h=160, E=6, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, d, generator=g)
    first = torch.randint(0, E, (T,), generator=g)
    ids = torch.stack([first, (first + 1 + torch.randint(0, E - 1, (T,), generator=g)) % E], 1)[:, :k]
    ids[::7, 1] = -1  # every 7th token has one active skill only
    w1 = torch.randn(E, d, h, generator=g) * d ** -0.5
    w2 = torch.randn(E, h, d, generator=g) * h ** -0.5
    b1, b2 = torch.randn(E, h, generator=g) * 0.1, torch.randn(E, d, generator=g) * 0.1
    return x, ids, w1, w2, b1, b2


def _ffn_by_token(x, ids, w1, w2, b1, b2):
    """y[t] = mean over t's active skills s of gelu(x[t] w1[s] + b1[s]) w2[s] + b2[s], float64."""
    x, w1, w2, b1, b2 = (t.double() for t in (x, w1, w2, b1, b2))
    y = torch.zeros_like(x)
    for s in range(w1.shape[0]):
        hit = (ids == s).double()                          # (T, k): slots routed to s
        z = F.gelu(x @ w1[s] + b1[s]) @ w2[s] + b2[s]      # every token through skill s
        y += hit.sum(1, keepdim=True) * z
    return y / (ids >= 0).sum(1, keepdim=True).double()


def test_skill_ffn_torch_forward(benchmark):
    x, ids, w1, w2, b1, b2 = _ffn_case()
    y = benchmark(skillkern.skill_ffn, x, ids, w1, w2, b1, b2, activation="gelu", backend="torch")
    torch.testing.assert_close(y.double(), _ffn_by_token(x, ids, w1, w2, b1, b2), **TOL)


def test_skill_ffn_torch_forward_backward(benchmark):
    x, ids, w1, w2, b1, b2 = _ffn_case(T=512)
    leaves = [t.clone().requires_grad_() for t in (x, w1, w2, b1, b2)]
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))

    def step():
        y = skillkern.skill_ffn(leaves[0], ids, *leaves[1:3], *leaves[3:], activation="gelu", backend="torch")
        return torch.autograd.grad(y, leaves, dy)

    grads = benchmark(step)
    wide = [t.double().requires_grad_() for t in (x, w1, w2, b1, b2)]
    ref = torch.autograd.grad(_ffn_by_token(ids=ids, **dict(zip(("x", "w1", "w2", "b1", "b2"), wide))), wide, dy.double())
    for name, g, r in zip(("x", "w1", "w2", "b1", "b2"), grads, ref):
        torch.testing.assert_close(g.double(), r, **TOL, msg=lambda m, name=name: f"d{name}: {m}")


def _sim_case(Bi=24, Bt=20, Ni=50, Nt=16, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(Bi, Ni, D, generator=g), dim=-1)
    txt = F.normalize(torch.randn(Bt, Nt, D, generator=g), dim=-1)
    tlen = torch.randint(3, Nt + 1, (Bt,), generator=g)
    txt_mask = torch.arange(Nt)[None, :] < tlen[:, None]
    return img, txt, txt_mask


def test_token_similarity_torch(benchmark):
    img, txt, txt_mask = _sim_case()
    i2t, t2i = benchmark(skillkern.token_similarity, img, txt, None, txt_mask, backend="torch")
    for a in (0, 7, 23):  # pair by pair, from the definition
        for b in (0, 5, 19):
            s = img[a].double() @ txt[b, txt_mask[b]].double().t()    # (Ni, real text tokens)
            assert abs(i2t[a, b].item() - s.max(1).values.mean().item()) < 1e-5
            assert abs(t2i[a, b].item() - s.max(0).values.mean().item()) < 1e-5


def _reduce_case(B=16, N=64, D=96, S=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g)
    w = torch.randn(D, S, generator=g) * 2 * D ** -0.5   # peaked softmax weights
    lw, lb = 1 + 0.1 * torch.randn(D, generator=g), 0.1 * torch.randn(D, generator=g)
    mask = torch.arange(N)[None, :] < torch.randint(1, N + 1, (B,), generator=g)[:, None]
    return x, w, lw, lb, mask


def _reduce_by_item(x, w, lw, lb, mask, b):
    """out[b] from the definition for one item, float64: LN, scores, softmax over its real
    positions, pooled LN rows."""
    u = F.layer_norm(x[b].double(), (x.shape[-1],), lw.double(), lb.double(), 1e-5)[mask[b]]
    a = torch.softmax(u @ w.double(), dim=0)            # (real N, S), over positions
    return a.t() @ u                                    # (S, D)


def test_token_reduce_torch(benchmark):
    x, w, lw, lb, mask = _reduce_case()
    out = benchmark(skillkern.token_reduce, x, w, lw, lb, mask, backend="torch")
    for b in (0, 5, 15):
        torch.testing.assert_close(out[b].double(), _reduce_by_item(x, w, lw, lb, mask, b), **TOL)


def test_token_pool_torch(benchmark):
    x, w, _, _, mask = _reduce_case(seed=1)
    scores = torch.randn(x.shape[0], x.shape[1], 8, generator=torch.Generator().manual_seed(2)) * 2
    out = benchmark(skillkern.token_pool, x, scores, mask, backend="torch")
    for b in (1, 9):
        a = torch.softmax(scores[b, mask[b]].double(), dim=0)
        torch.testing.assert_close(out[b].double(), a.t() @ x[b, mask[b]].double(), **TOL)
