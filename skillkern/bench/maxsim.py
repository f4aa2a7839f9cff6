"""Benchmark skillkern.maxsim / maxsim_topk (multi-vector retrieval: ColBERT, ColPali) against
baselines.

    scores[i, j] = sum over real k of query i of  max over real l of doc j of <q[i, k], d[j, l]>

Shapes: Bq queries of Nq tokens (lengths uniform in [qmin, Nq], or all real when qmin = 0),
Bd ragged docs of dmin..dmax tokens (uniform), D features, L2-normalised. k = 0: the (Bq, Bd)
scores; k > 0: the top-k values (Bq, k) of maxsim_topk (the indices are not compared: near ties
may swap in 16-bit inputs). grad = 0: a retrieval shape, forward only; grad = 1: a training
batch (fwd, bwd, fwd+bwd; scoring only).

Providers (forward returns the scores, or the top-k values):
  skillkern-triton / -torch  skillkern.maxsim(q, tokens, q_mask, d_offsets=...) on the packed docs,
                             or maxsim_topk(..., chunk=--chunk)
  skillkern-cuda             the same call with backend='cuda': unavailable (no CUDA C++ kernel)
  einsum         plain torch on the padded docs, chunks of docs: einsum -> masked amax -> sum
                 (then torch.topk)
  lik            late-interaction-kernels: maxsim(q, docs, q_mask, d_mask) (padded), and its
                 retrieve(..., normalize=False) for top-k
  flash-maxsim   flash_maxsim_batched_train(q, docs, doc_lengths=, query_lengths=) (then
                 torch.topk)
The peers are imported only when asked for and are unavailable when absent; on CPU they run
forward only under TRITON_INTERPRET=1. Padded providers get the padded docs as their leaf; their
doc gradient is compared on the real rows.

Check: against skillkern's reference (fp64 for fp32 inputs, fp32 otherwise) over doc chunks;
allowed error: the floors below (16-bit inputs flip near-tie arg-maxes in the gradients).
FLOPs = 2 * Bq * Nq * T * D per forward for T real doc tokens; bwd = 2x, fwd+bwd = 3x.

Examples:
  python benchmarks/bench.py maxsim --quick
  python benchmarks/bench.py maxsim --shapes Bq=64:Nq=32:Bd=100000:dmin=64:dmax=300:D=128:k=100
  TRITON_INTERPRET=1 python benchmarks/bench.py maxsim --quick --dtype fp32 --providers einsum,skillkern-triton
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import skillkern as sk
from skillkern.bench._common import MODE_FLOP_FACTOR, Unavailable, backend_reason
from skillkern.bench.runner import OpSpec, Provider, Reference, parse_spec, peer_module
from skillkern.ops.maxsim.reference import maxsim_ref

TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 5e-2, torch.float32: 1e-2}  # floors
PEERS = {"lik": "late_interaction_kernels", "flash-maxsim": "flash_maxsim"}
CHUNK_SIMS = 1 << 27  # similarities per doc chunk of the einsum provider and the reference


@dataclass(frozen=True)
class Shape:
    Bq: int = 64
    Nq: int = 32
    Bd: int = 100_000
    dmin: int = 64
    dmax: int = 300
    D: int = 128
    k: int = 0  # 0: scores; else the top-k values
    grad: int = 0  # 1: a training batch (gradients); 0: retrieval, forward only
    qmin: int = 0  # 0: queries all real; else lengths uniform in [qmin, Nq]

    def label(self) -> str:
        s = f"Bq{self.Bq}-Nq{self.Nq}-Bd{self.Bd}-Nd{self.dmin}..{self.dmax}-D{self.D}"
        s += f"-q{self.qmin}..{self.Nq}" if self.qmin else ""
        return s + (f"-top{self.k}" if self.k else "") + ("-train" if self.grad else "")


COLBERT = Shape()
COLPALI = Shape(Nq=20, Bd=10_000, dmin=1030, dmax=1030)
TRAIN = Shape(Bq=256, Bd=256, grad=1)
PRESETS = {
    "gpu": lambda: [COLBERT, Shape(k=100), COLPALI, Shape(Nq=20, Bd=10_000, dmin=1030, dmax=1030, k=100), TRAIN,
                    Shape(Bq=256, Nq=20, Bd=256, dmin=1030, dmax=1030, grad=1)],
    "gpu-quick": lambda: [COLBERT, Shape(k=100), TRAIN],
    # the static profile's: ColBERT scoring at 1/6 of the docs (each program's work is the
    # same; only the number of programs shrinks) and the training batch
    "goal": lambda: [Shape(Bd=16384), TRAIN],
    "cpu": lambda: [Shape(3, 5, 7, 0, 9, 16, grad=1, qmin=2), Shape(4, 6, 12, 1, 70, 32, k=5),
                    Shape(3, 8, 9, 2, 20, 16, grad=1)],
    "cpu-quick": lambda: [Shape(3, 5, 7, 0, 9, 16, grad=1, qmin=2)],
}


def parse_shape(item: str) -> Shape:
    s = parse_spec(Shape, item, "Bq=64:Nq=32:Bd=100000:dmin=64:dmax=300:D=128", PRESETS)
    if min(s.Bq, s.Nq, s.Bd, s.dmax, s.D) < 1 or not 0 <= s.dmin <= s.dmax or not 0 <= s.k <= s.Bd \
            or s.qmin > s.Nq or (s.grad and s.k):
        raise SystemExit(f"bad shape spec {item!r}: sizes >= 1, 0 <= dmin <= dmax, k <= Bd, qmin <= Nq, "
                         "and top-k (k > 0) without grad")
    return s


@dataclass
class Case:
    shape: Shape
    q: torch.Tensor  # (Bq, Nq, D), leaf
    tok: torch.Tensor  # (T, D) packed doc tokens, leaf
    off: torch.Tensor  # (Bd + 1,) int64
    lengths: torch.Tensor  # (Bd,) int32
    q_len: torch.Tensor | None  # (Bq,) int32, None = all real
    q_mask: torch.Tensor | None  # (Bq, Nq) bool prefix masks
    grad: torch.Tensor  # upstream gradient of the scores (Bq, Bd) fp32
    _padded: tuple | None = None

    def padded(self):
        """(docs (Bd, Nd, D) leaf, d_mask (Bd, Nd), real rows' positions): the padded copy the
        padded providers read, made once."""
        if self._padded is None:
            s, dev = self.shape, self.tok.device
            Nd = max(1, int(self.lengths.max()))
            mask = torch.arange(Nd, device=dev)[None, :] < self.lengths[:, None]
            docs = self.tok.new_zeros(s.Bd, Nd, s.D)
            docs[mask] = self.tok.detach()
            self._padded = (docs.requires_grad_(self.tok.requires_grad), mask)
        return self._padded


def make_case(s: Shape, dtype, device, args) -> Case:
    g = torch.Generator(device=device).manual_seed(args.seed)
    lengths = torch.randint(s.dmin, s.dmax + 1, (s.Bd,), generator=g, device=device, dtype=torch.int32)
    off = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), lengths.long().cumsum(0)])
    T = int(off[-1])
    tok = torch.empty(T, s.D, dtype=dtype, device=device)
    step = max(1, (1 << 24) // s.D)  # filled in slices: no fp32 copy of the whole corpus
    for a in range(0, T, step):
        tok[a:a + step] = F.normalize(torch.randn(min(step, T - a), s.D, generator=g, device=device), dim=-1)
    q = F.normalize(torch.randn(s.Bq, s.Nq, s.D, generator=g, device=device), dim=-1).to(dtype)
    q_len = torch.randint(s.qmin, s.Nq + 1, (s.Bq,), generator=g, device=device, dtype=torch.int32) if s.qmin else None
    q_mask = None if q_len is None else torch.arange(s.Nq, device=device)[None, :] < q_len[:, None]
    grad = torch.randn(s.Bq, s.Bd, generator=g, device=device)
    return Case(s, q.requires_grad_(bool(s.grad)), tok.requires_grad_(bool(s.grad)), off, lengths, q_len, q_mask,
                grad)


def _provider(c: Case, forward, inputs, to_ref=None, version=None, fwd_only=None) -> Provider:
    if not c.shape.grad:
        fwd_only = "a retrieval shape: forward only (grad=1 shapes time the backward)"
    return Provider(forward, inputs, c.grad, ("q", "d"), to_ref=to_ref, version=version, fwd_only=fwd_only)


def _packed_grads(c: Case):
    """The padded providers' doc gradient -> the packed rows the reference has."""
    return lambda g: (g[0], g[1][c.padded()[1]])


def _top(scores, c: Case):
    return scores if not c.shape.k else torch.topk(scores, c.shape.k, dim=1).values


def _skillkern(backend: str):
    def build(c: Case, args) -> Provider:
        why = backend_reason("maxsim", backend, c.q.device)
        if why:
            raise Unavailable(why)
        if c.shape.k:
            def forward():
                return sk.maxsim_topk(c.q, c.tok, c.shape.k, c.q_mask, d_offsets=c.off, chunk=args.chunk,
                                      backend=backend)[0]
        else:
            def forward():
                return sk.maxsim(c.q, c.tok, c.q_mask, d_offsets=c.off, backend=backend)
        return _provider(c, forward, (c.q, c.tok))
    return build


def einsum_scores(q, docs, q_mask, d_mask, chunk_sims: int = CHUNK_SIMS):
    """Plain torch over chunks of padded docs, in the input dtype: (Bq, Bd) fp32 sums of maxima."""
    Bq, Nq, _ = q.shape
    Bd, Nd, _ = docs.shape
    step = max(1, chunk_sims // max(1, Bq * Nq * Nd))
    parts = []
    for a in range(0, Bd, step):
        sim = torch.einsum("ikc,jlc->ijkl", q, docs[a:a + step])  # (Bq, chunk, Nq, Nd)
        best = sim.masked_fill(~d_mask[None, a:a + step, None, :], float("-inf")).amax(3).float()
        best = torch.where(d_mask[a:a + step].any(1)[None, :, None], best, 0.0)
        if q_mask is not None:
            best = best.masked_fill(~q_mask[:, None, :], 0.0)
        parts.append(best.sum(2))
    return torch.cat(parts, 1)


def _einsum(c: Case, args) -> Provider:
    docs, mask = c.padded()
    return _provider(c, lambda: _top(einsum_scores(c.q, docs, c.q_mask, mask), c), (c.q, docs), _packed_grads(c))


def _peer(name: str, call):
    """A peer's provider on the padded docs: call(mod, c, docs, mask) -> scores or top-k values."""
    def build(c: Case, args) -> Provider:
        cpu = not c.q.is_cuda
        mod = peer_module(name, PEERS[name], cuda=not cpu)
        docs, mask = c.padded()
        return _provider(c, lambda: call(mod, c, docs, mask), (c.q, docs), _packed_grads(c),
                         getattr(mod, "__version__", None), "the peer's backward kernels need CUDA" if cpu else None)
    return build


def _lik(mod, c: Case, docs, mask):
    if c.shape.k:
        return mod.retrieve(c.q, docs, c.shape.k, c.q_mask, mask, normalize=False)[0]
    return mod.maxsim(c.q, docs, c.q_mask, mask)


def _flash(mod, c: Case, docs, mask):
    scores = mod.flash_maxsim_batched_train(c.q, docs, shared_docs=True, doc_lengths=c.lengths,
                                            query_lengths=c.q_len)
    return _top(scores, c)


def reference(c: Case, args) -> Reference:
    """skillkern's reference in a wide dtype over doc chunks (gradients for grad shapes)."""
    s, dtype = c.shape, c.q.dtype
    wide = torch.float64 if dtype == torch.float32 else torch.float32
    q = c.q.detach().to(wide).requires_grad_(bool(s.grad))
    tok = c.tok.detach().to(wide).requires_grad_(bool(s.grad))
    dq = torch.zeros_like(q) if s.grad else None
    dd = torch.zeros_like(tok) if s.grad else None
    lengths = c.lengths.tolist()
    scores, a = [], 0
    while a < s.Bd:  # chunks of docs within the similarity budget
        b, longest = a + 1, max(1, lengths[a])
        while b < s.Bd and s.Bq * s.Nq * (b + 1 - a) * max(longest, lengths[b]) <= CHUNK_SIMS:
            longest, b = max(longest, lengths[b]), b + 1
        t0, t1 = int(c.off[a]), int(c.off[b])
        part = tok[t0:t1]
        out = maxsim_ref(q, part, c.q_mask, None, c.off[a:b + 1] - t0)
        if s.grad:
            gq, gd = torch.autograd.grad(out, [q, part], c.grad[:, a:b].to(wide))
            dq += gq
            dd[t0:t1] = gd
        scores.append(out.detach())
        a = b
    scores = torch.cat(scores, 1)
    outs = (_top(scores, c),)
    grads = {"q": dq, "d": dd} if s.grad else {}
    tol = TOLERANCE.get(dtype, 5e-2)
    return Reference(outs, grads, tol, tol, note=f"reference in {wide} over doc chunks")


def _add_args(ap) -> None:
    ap.add_argument("--chunk", type=int, default=None,
                    help="docs per step of maxsim_topk (default: skillkern's, 8192; 3 on CPU so tiny shapes loop)")


def _finish_args(args, cpu: bool) -> None:
    args.chunk = args.chunk if args.chunk is not None else (3 if cpu else None)
    if args.chunk is not None and args.chunk < 1:
        raise SystemExit("--chunk must be >= 1")


def _work(c: Case, mode: str) -> dict:
    T = int(c.off[-1])
    factor = MODE_FLOP_FACTOR[mode] if c.shape.grad else 1  # a retrieval shape is a forward
    return {"flops": 2.0 * c.shape.Bq * c.shape.Nq * T * c.shape.D * factor}


SPEC = OpSpec(
    name="maxsim", doc=__doc__, metric="tflops", presets=PRESETS, parse_shape=parse_shape,
    header="skillkern benchmark: maxsim, late-interaction (ColBERT / ColPali) scoring and top-k.",
    shape_help="Bq=..:Nq=..:Bd=..:dmin=..:dmax=..:D=..[:k=..:grad=1:qmin=..]",
    quick_help="one shape: Bq=3,Nq=5,Bd=7 with gradients on CPU; ColBERT scoring, top-100, training on a GPU",
    providers={
        "skillkern-triton": _skillkern("triton"), "skillkern-cuda": _skillkern("cuda"),
        "skillkern-torch": _skillkern("torch"), "einsum": _einsum,
        "lik": _peer("lik", _lik), "flash-maxsim": _peer("flash-maxsim", _flash),
    },
    default_gpu=("einsum", "lik", "flash-maxsim", "skillkern-torch", "skillkern-triton"),
    default_cpu=("einsum", "skillkern-torch"),
    baselines=("einsum", "lik", "flash-maxsim"), peers=PEERS,
    make_case=make_case, reference=reference, add_args=_add_args, finish_args=_finish_args, work=_work,
    out_spec=lambda c: [((c.shape.Bq, c.shape.k or c.shape.Bd), torch.float32)],
)
