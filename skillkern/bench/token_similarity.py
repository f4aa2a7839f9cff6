"""Benchmark skillkern.token_similarity (FILIP late interaction) against baselines.

    i2t[a, b] = mean over real k of  max over real l of <img[a, k], txt[b, l]>
    t2i[a, b] = mean over real l of  max over real k of <img[a, k], txt[b, l]>

Providers (forward returns (i2t, t2i)):
  skillkern-triton / -cuda / -torch  skillkern.token_similarity(..., backend=...)
  naive          einsum -> (Bi, Bt, Ni, Nt) in the input dtype -> masked amax both ways -> mean
  chunked-naive  Wukong's eval code: naive over chunks of --chunk texts, concatenated
  lik            late-interaction-kernels' maxsim once per direction (sums over real query
                 tokens, divided here by the real counts); pads the query length to a power of 2
  flash-maxsim   flash_maxsim_batched_train once per direction (lengths: prefix masks)
The peers are imported only when asked for and are unavailable when absent; on CPU they run
forward only under TRITON_INTERPRET=1 (their backward kernels need CUDA).

Inputs: img (Bi, Ni, D), txt (Bt, Nt, D), L2-normalised; text lengths uniform in [tmin, Nt]
(prefix masks), images all real unless imin > 0. Upstream gradients random (Bi, Bt) fp32.
Check: against skillkern's reference in fp32 (fp64 for fp32 inputs) over text chunks; allowed
error max(floor, 2 x torch's own error in the input dtype), torch's own error being the larger of
the reference's and naive's in that dtype (bf16 rounding flips near-tie arg-maxes: ~7% of the
gradient norm at B=64, Ni=50, Nt=32, D=256). FLOPs = 2*Bi*Bt*Ni*Nt*D per forward (padding
included); bwd = 2x, fwd+bwd = 3x; % of ceiling: of the run's matmul TFLOP/s. A naive provider
whose estimated memory exceeds 70% of the GPU's is skipped.

Examples:
  python benchmarks/bench.py token_similarity --quick        # CPU demo, or the goal shape on a GPU
  python benchmarks/bench.py token_similarity --shapes B=1024:Ni=50:Nt=32:D=256 --providers lik,skillkern-triton
  TRITON_INTERPRET=1 python benchmarks/bench.py token_similarity --quick --dtype fp32 --providers naive,skillkern-triton,lik
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import skillkern as sk
from skillkern.bench._common import MODE_FLOP_FACTOR, Unavailable, backend_reason
from skillkern.bench.runner import OpSpec, Provider, Reference, errors, parse_spec, peer_module
from skillkern.ops.token_similarity.reference import token_similarity_ref

TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 5e-2, torch.float32: 1e-2}  # floors
PEERS = {"lik": "late_interaction_kernels", "flash-maxsim": "flash_maxsim"}
# Skip a naive provider whose estimated peak exceeds this share of the GPU's memory: an OOM
# part-way through would leave the allocator fragmented for the providers after it.
NAIVE_MEM_FRACTION = 0.70
REF_CHUNK_BYTES = 256 * 2**20  # the reference's (Bi, chunk, Ni, Nt) block, per text chunk


@dataclass(frozen=True)
class Shape:
    Bi: int = 1024
    Bt: int = 1024
    Ni: int = 50
    Nt: int = 32
    D: int = 256
    tmin: int = 8  # text lengths uniform in [min(tmin, Nt), Nt]
    imin: int = 0  # 0: images all real (no mask); else lengths uniform in [imin, Ni]

    def label(self) -> str:
        s = f"Bi{self.Bi}-Bt{self.Bt}-Ni{self.Ni}-Nt{self.Nt}-D{self.D}-txt{min(self.tmin, self.Nt)}..{self.Nt}"
        return s + (f"-img{self.imin}..{self.Ni}" if self.imin else "")


GOAL = Shape()
PRESETS = {
    # 2 batch sizes x 4 image lengths (ViT-B/32: 50 tokens; reduced 12 / 24; 16x16 patches: 256)
    "gpu": lambda: [GOAL] + [Shape(B, B, Ni) for B in (256, 1024) for Ni in (50, 12, 256, 24) if Shape(B, B, Ni) != GOAL],
    "gpu-quick": lambda: [GOAL, Shape(Ni=12), Shape(Ni=256), Shape(256, 256)],
    "goal": lambda: [GOAL],
    # tiny: tmin=3 so that the text masks vary; the last one masks images too
    "cpu": lambda: [Shape(8, 8, 12, 8, 32, tmin=3), Shape(16, 12, 50, 32, 64), Shape(8, 10, 24, 8, 32, tmin=3, imin=5)],
    "cpu-quick": lambda: [Shape(8, 8, 12, 8, 32, tmin=3)],
}


def parse_shape(item: str) -> Shape:
    s = parse_spec(Shape, item, "B=1024:Ni=50:Nt=32:D=256", PRESETS, {"B": ("Bi", "Bt")})
    if min(s.Bi, s.Bt, s.Ni, s.Nt, s.D, s.tmin) < 1 or s.imin > s.Ni:
        raise SystemExit(f"bad shape spec {item!r}: sizes and tmin must be >= 1, imin <= Ni")
    return s


def naive_similarity(img, txt, img_mask, txt_mask, inv_ni, inv_nt):
    """Plain torch: all Bi*Bt*Ni*Nt similarities in the input dtype, masked (-inf) max both
    ways, masked mean (inv_ni (Bi,), inv_nt (Bt,) = 1 / real-token counts)."""
    sim = torch.einsum("akd,bld->abkl", img, txt)  # (Bi, Bt, Ni, Nt)
    s_row = sim if txt_mask is None else sim.masked_fill(~txt_mask[None, :, None, :], float("-inf"))
    s_col = sim if img_mask is None else sim.masked_fill(~img_mask[:, None, :, None], float("-inf"))
    row, col = s_row.amax(3).float(), s_col.amax(2).float()  # (Bi, Bt, Ni), (Bi, Bt, Nt)
    row = row if img_mask is None else row.masked_fill(~img_mask[:, None, :], 0.0)
    col = col if txt_mask is None else col.masked_fill(~txt_mask[None, :, :], 0.0)
    return row.sum(2) * inv_ni[:, None], col.sum(2) * inv_nt[None, :]


def chunked(fn, c, chunk: int, img, txt):
    """fn(img, txt[a:b], img_mask, txt_mask[a:b], inv_ni, inv_nt[a:b]) over text chunks: the
    (i2t, t2i) parts and the chunks' slices."""
    for a in range(0, txt.shape[0], chunk):
        b = a + chunk
        tm = None if c.txt_mask is None else c.txt_mask[a:b]
        yield fn(img, txt[a:b], c.img_mask, tm, c.inv_ni, c.inv_nt[a:b]), slice(a, b)


@dataclass
class Case:
    shape: Shape
    img: torch.Tensor  # (Bi, Ni, D), leaf
    txt: torch.Tensor  # (Bt, Nt, D), leaf
    img_len: torch.Tensor | None  # (Bi,) int32, None = all real
    txt_len: torch.Tensor | None  # (Bt,) int32
    img_mask: torch.Tensor | None  # (Bi, Ni) bool prefix masks
    txt_mask: torch.Tensor | None
    inv_ni: torch.Tensor  # (Bi,) fp32, 1 / real image tokens
    inv_nt: torch.Tensor  # (Bt,)
    grads: tuple  # upstream gradients of (i2t, t2i), (Bi, Bt) fp32


def make_case(s: Shape, dtype, device, args) -> Case:
    g = torch.Generator(device=device).manual_seed(args.seed)

    def tokens(B, N):
        return F.normalize(torch.randn(B, N, s.D, generator=g, device=device), dim=-1).to(dtype).requires_grad_()

    def lengths(B, N, lo):
        return torch.randint(min(lo, N), N + 1, (B,), generator=g, device=device, dtype=torch.int32)

    img, txt = tokens(s.Bi, s.Ni), tokens(s.Bt, s.Nt)
    txt_len = lengths(s.Bt, s.Nt, s.tmin) if s.tmin < s.Nt else None
    img_len = lengths(s.Bi, s.Ni, s.imin) if s.imin else None
    masks = [None if n is None else torch.arange(N, device=device)[None, :] < n[:, None]
             for n, N in ((img_len, s.Ni), (txt_len, s.Nt))]
    inv = [1.0 / (torch.full((B,), float(N), device=device) if n is None else n.float())
           for n, B, N in ((img_len, s.Bi, s.Ni), (txt_len, s.Bt, s.Nt))]
    grads = tuple(torch.randn(s.Bi, s.Bt, generator=g, device=device) for _ in range(2))
    return Case(s, img, txt, img_len, txt_len, *masks, *inv, grads)


def _provider(c: Case, forward, version=None, fwd_only=None) -> Provider:
    return Provider(forward, (c.img, c.txt), c.grads, ("img", "txt"), version=version, fwd_only=fwd_only)


def _skillkern(backend: str):
    def build(c: Case, args) -> Provider:
        why = backend_reason("token_similarity", backend, c.img.device)
        if why:
            raise Unavailable(why)
        return _provider(c, lambda: sk.token_similarity(c.img, c.txt, c.img_mask, c.txt_mask, backend=backend))
    return build


def _naive(c: Case, args) -> Provider:
    return _provider(c, lambda: naive_similarity(c.img, c.txt, c.img_mask, c.txt_mask, c.inv_ni, c.inv_nt))


def _chunked_naive(c: Case, args) -> Provider:
    def forward():
        parts = [o for o, _ in chunked(naive_similarity, c, args.chunk, c.img, c.txt)]
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
    return _provider(c, forward)


def _peer(name: str, fn_name: str, call):
    """A peer's provider: call(fn, c) -> (sums i2t (Bi, Bt), sums t2i (Bt, Bi)) over real query
    tokens, divided here by the real counts for FILIP's mean."""
    def build(c: Case, args) -> Provider:
        cpu = not c.img.is_cuda
        mod = peer_module(name, PEERS[name], cuda=not cpu)
        fn = getattr(mod, fn_name)

        def forward():
            s_it, s_ti = call(fn, c)
            return s_it * c.inv_ni[:, None], s_ti.t() * c.inv_nt[None, :]
        return _provider(c, forward, getattr(mod, "__version__", None),
                         "the peer's backward kernels need CUDA" if cpu else None)
    return build


def _reference_in(c: Case, dt, naive: bool):
    """Outputs and gradients of skillkern's reference (or naive_similarity) computed in dt over
    text chunks (the fp32 reference at B=1024, Ni=256 would be 34 GB at once)."""
    s = c.shape
    acc = torch.float64 if dt == torch.float64 else torch.float32
    chunk = max(1, min(s.Bt, REF_CHUNK_BYTES // (s.Bi * s.Ni * s.Nt * max(torch.finfo(dt).bits // 8, 4))))
    img, txt = c.img.detach().to(dt).requires_grad_(), c.txt.detach().to(dt).requires_grad_()
    i2t, t2i = (torch.empty(s.Bi, s.Bt, dtype=acc, device=img.device) for _ in range(2))
    d_img, d_txt = torch.zeros(c.img.shape, dtype=acc, device=img.device), torch.zeros(c.txt.shape, dtype=acc, device=img.device)
    ref = (lambda im, tx, imm, txm, *_: token_similarity_ref(im, tx, imm, txm)) if not naive else naive_similarity
    for (o_it, o_ti), sl in chunked(ref, c, chunk, img, txt):
        gi, gt = torch.autograd.grad((o_it, o_ti), (img, txt), (c.grads[0][:, sl].to(o_it.dtype),
                                                                 c.grads[1][:, sl].to(o_ti.dtype)))
        i2t[:, sl], t2i[:, sl] = o_it.detach(), o_ti.detach()
        d_img += gi
        d_txt[sl] = gt[sl]  # gt is the whole txt leaf's gradient, zero outside the chunk
    return (i2t, t2i), {"img": d_img, "txt": d_txt}


def reference(c: Case, args) -> Reference:
    dtype = c.img.dtype
    wide = torch.float64 if dtype == torch.float32 else torch.float32
    ref = Reference(*_reference_in(c, wide, False), 0.0, 0.0)
    t_fwd = t_grad = 0.0  # torch's own error in the input dtype: both ways torch computes it
    if dtype != torch.float32:
        for naive in (False, True):
            outs, grads = _reference_in(c, dtype, naive)
            e = errors(SPEC, outs, grads, ref)
            t_fwd, t_grad = max(t_fwd, e[0]), max(t_grad, e[1])
    floor = TOLERANCE.get(dtype, 5e-2)
    ref.tol_fwd, ref.tol_grad = max(floor, 2 * t_fwd), max(floor, 2 * t_grad)
    ref.fields = {"torch_err_fwd": t_fwd, "torch_err_grad": t_grad}
    ref.note = f"reference in {wide} over text chunks; torch in {args.dtype}: fwd {t_fwd:.2e}, grads {t_grad:.2e}"
    return ref


def skip(c: Case, prov: str, args, device) -> str | None:
    """Why a naive provider would not fit: ~5 S bytes for naive's fwd+bwd, S = one (Bi, Bt, Ni,
    Nt) tensor (sim, two masked copies, amax's tie masks, sim-sized gradients); chunked-naive
    keeps 2 S saved for backward plus one chunk's ~4 S transients."""
    if prov not in ("naive", "chunked-naive") or device.type != "cuda":
        return None
    s = c.shape
    S = float(s.Bi) * s.Bt * s.Ni * s.Nt * c.img.element_size()
    est = 5 * S if prov == "naive" else 2 * S + 4 * S * min(1.0, args.chunk / s.Bt)
    total = torch.cuda.get_device_properties(device).total_memory
    if est > NAIVE_MEM_FRACTION * total:
        return f"estimated {est / 1e9:.1f} GB > {NAIVE_MEM_FRACTION:.0%} of the GPU's {total / 1e9:.1f} GB"
    return None


def _add_args(ap) -> None:
    ap.add_argument("--chunk", type=int, default=None,
                    help="texts per chunk of chunked-naive (default 64 on a GPU, 3 on CPU so tiny shapes loop)")


def _finish_args(args, cpu: bool) -> None:
    args.chunk = args.chunk if args.chunk is not None else (3 if cpu else 64)
    if args.chunk < 1:
        raise SystemExit("--chunk must be >= 1")


SPEC = OpSpec(
    name="token_similarity", doc=__doc__, metric="tflops", presets=PRESETS, parse_shape=parse_shape,
    header="skillkern benchmark: token_similarity, FILIP's token-wise late interaction (i2t and t2i).",
    shape_help="B=..:Ni=..:Nt=..:D=..[:Bi=..:Bt=..:tmin=..:imin=..]",
    quick_help="one shape: B=8,Ni=12,Nt=8,D=32 on CPU; the goal shape on a GPU",
    providers={
        "skillkern-triton": _skillkern("triton"), "skillkern-cuda": _skillkern("cuda"),
        "skillkern-torch": _skillkern("torch"), "naive": _naive, "chunked-naive": _chunked_naive,
        "lik": _peer("lik", "maxsim", lambda fn, c: (fn(c.img, c.txt, c.img_mask, c.txt_mask),
                                                      fn(c.txt, c.img, c.txt_mask, c.img_mask))),
        "flash-maxsim": _peer("flash-maxsim", "flash_maxsim_batched_train", lambda fn, c: (
            fn(c.img, c.txt, shared_docs=True, doc_lengths=c.txt_len, query_lengths=c.img_len),
            fn(c.txt, c.img, shared_docs=True, doc_lengths=c.img_len, query_lengths=c.txt_len))),
    },
    default_gpu=("naive", "chunked-naive", "lik", "flash-maxsim", "skillkern-cuda", "skillkern-triton"),
    default_cpu=("naive", "chunked-naive", "skillkern-torch"),
    baselines=("naive", "chunked-naive", "lik", "flash-maxsim"), peers=PEERS,
    make_case=make_case, reference=reference, skip=skip, add_args=_add_args, finish_args=_finish_args,
    work=lambda c, mode: {"flops": 2.0 * c.shape.Bi * c.shape.Bt * c.shape.Ni * c.shape.Nt * c.shape.D
                          * MODE_FLOP_FACTOR[mode]},
    out_spec=lambda c: [((c.shape.Bi, c.shape.Bt), torch.float32)] * 2,
)
