"""token_similarity forward + backward at small adversarial shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck  --error-exitcode 1 .venv/bin/python csrc/token_similarity/sanitize.py
    compute-sanitizer --tool racecheck --error-exitcode 1 .venv/bin/python csrc/token_similarity/sanitize.py

Runs backend="cuda" (and "triton", unless --cuda-only) in fp32 / fp16 / bf16 on shapes that
reach every tiling case of csrc/token_similarity/fwd.cu and bwd.cu, and compares outputs and
gradients with a float64 reference: relative error at most 2x that of the torch backend at the
same precision plus a floor (the rule of tests/test_token_similarity.py). The kernels' outputs
are allocated uninitialised (torch.empty), so `--tool initcheck` also catches an output element
no kernel writes. Exits 1 on any disagreement. Shapes are small: under memcheck every access is
checked (~100x slower).
"""
import argparse
import sys

import torch
import torch.nn.functional as F

import skillkern
from skillkern.ops._common import rel_err
from skillkern.ops.token_similarity.reference import token_similarity_ref

FLOOR = {torch.float32: 1e-5, torch.bfloat16: 5e-3, torch.float16: 2e-3}

# (label, Bi, Bt, Ni, Nt, D, masks, empty items)
SHAPES = [
    ("Ni=50: images straddle 128-token chunks", 6, 5, 50, 32, 24, True, False),
    ("Ni=1, Nt=3: 16 texts per tile, 128 images per chunk", 130, 18, 1, 3, 16, True, False),
    ("Ni=130 > chunk, D=20 element-wise loads", 3, 4, 130, 9, 20, True, False),
    ("Nt=200: 256-row tile", 3, 2, 33, 200, 16, True, False),
    ("Nt=300: 512-row tile, int16 col/row indices", 2, 2, 260, 300, 8, True, False),
    ("Nt=520 > 512: roles swapped", 3, 2, 9, 520, 16, True, False),
    ("empty image and empty text, no masks elsewhere", 4, 5, 6, 7, 16, False, True),
]


def inputs(Bi, Bt, Ni, Nt, D, masks, empty):
    img = F.normalize(torch.randn(Bi, Ni, D, dtype=torch.float64), dim=-1).cuda()
    txt = F.normalize(torch.randn(Bt, Nt, D, dtype=torch.float64), dim=-1).cuda()
    im = tm = None
    if masks:
        im = torch.arange(Ni)[None] < torch.randint(1, Ni + 1, (Bi, 1))
        tm = torch.arange(Nt)[None] < torch.randint(1, Nt + 1, (Bt, 1))
    if empty:
        im = torch.ones(Bi, Ni, dtype=torch.bool) if im is None else im
        tm = torch.ones(Bt, Nt, dtype=torch.bool) if tm is None else tm
        im[Bi // 2] = False
        tm[-1] = False
    return img, txt, None if im is None else im.cuda(), None if tm is None else tm.cuda()


def run(img, txt, im, tm, dtype, backend, g_i, g_t):
    a = img.to(dtype)
    b = txt.to(dtype)
    if backend == "ref64":
        a, b = a.double().requires_grad_(), b.double().requires_grad_()
        i2t, t2i = token_similarity_ref(a, b, im, tm)
    else:
        a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
        i2t, t2i = skillkern.token_similarity(a, b, im, tm, backend=backend)
    grads = torch.autograd.grad((i2t * g_i.to(i2t.dtype)).sum() + (t2i * g_t.to(t2i.dtype)).sum(), [a, b])
    return [i2t, t2i, *grads]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda-only", action="store_true", help="skip the Triton backend")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("sanitize: needs a CUDA device")
        return 1
    backends = ["cuda"] if args.cuda_only else ["cuda", "triton"]
    torch.manual_seed(0)
    failures = 0
    for label, Bi, Bt, Ni, Nt, D, masks, empty in SHAPES:
        img, txt, im, tm = inputs(Bi, Bt, Ni, Nt, D, masks, empty)
        g_i = torch.randn(Bi, Bt, device="cuda")
        g_t = torch.randn(Bi, Bt, device="cuda")
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            ref = run(img, txt, im, tm, dtype, "ref64", g_i, g_t)
            base = run(img, txt, im, tm, dtype, "torch", g_i, g_t)
            for backend in backends:
                if backend == "triton" and Nt > 512:
                    continue  # the Triton kernels refuse it (the caller swaps the roles)
                got = run(img, txt, im, tm, dtype, backend, g_i, g_t)
                torch.cuda.synchronize()
                worst = []
                for what, x, y, r in zip(("i2t", "t2i", "d_img", "d_txt"), got, base, ref):
                    err, limit = rel_err(x, r), 2 * rel_err(y, r) + FLOOR[dtype]
                    if not torch.isfinite(x).all() or not err <= limit:
                        worst.append(f"{what} {err:.3g} > {limit:.3g}")
                if im is not None and torch.count_nonzero(got[2][~im]):
                    worst.append("padding image tokens got gradient")
                if tm is not None and torch.count_nonzero(got[3][~tm]):
                    worst.append("padding text tokens got gradient")
                status = "ok  " if not worst else "FAIL"
                failures += bool(worst)
                print(f"{status} {backend:6s} {str(dtype)[6:]:8s} {label}" + (": " + "; ".join(worst) if worst else ""))
    print(f"sanitize: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
