"""Forward + backward of token_reduce / token_pool with backend="cuda" (and "triton") at small
adversarial shapes, for compute-sanitizer on a GPU machine:

    compute-sanitizer --tool memcheck  python csrc/token_reduce/sanitize.py
    compute-sanitizer --tool racecheck python csrc/token_reduce/sanitize.py --quick
    compute-sanitizer --tool initcheck python csrc/token_reduce/sanitize.py --quick

(with a dev build: SKILLKERN_EXTENSION_LIB=<.so from csrc/build_dev.py token_reduce>). Every
result is compared with reference.py in float64 (relative error of the whole tensor, limits
per dtype below); the exit status is 1 if any backend disagrees, 0 otherwise. Shapes cover
each code path of the kernels: odd D (element loads instead of 16-byte copies), D not a
multiple of 16, N below one tile and one past a tile, S = 1 and S = 32, masks with an item
without real positions, given scores (token_pool), pool_input, two feature chunks (D > 1024)
and many items per backward block.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import skillkern
from skillkern.ops.token_reduce.reference import token_pool_ref, token_reduce_ref

# max relative error against the float64 reference (the tests' floors, loose enough for the
# rounding of 16-bit outputs: this script hunts memory errors, the tests check precision)
LIMIT = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}

# label, B, N, D, S, options
CASES = [
    ("odd D=33, N=37, S=5, LN weight only, masks", 3, 37, 33, 5, {"ln": True, "masked": True}),
    ("D=40 (not a multiple of 16), N=9 < 16, S=1", 2, 9, 40, 1, {"ln": True, "lnb": True}),
    ("N=33 (one past a tile), S=32, empty row", 4, 33, 64, 32, {"ln": True, "lnb": True, "masked": True,
                                                                "empty": True}),
    ("pool_input, S=12", 3, 49, 96, 12, {"ln": True, "lnb": True, "masked": True, "pool_input": True}),
    ("no LayerNorm, S=24", 2, 50, 48, 24, {"masked": True}),
    ("token_pool (scores given), empty row", 3, 21, 40, 12, {"pool": True, "masked": True, "empty": True}),
    ("many items per backward block", 300, 5, 24, 3, {"ln": True, "lnb": True, "masked": True}),
    ("two feature chunks, D=1100", 2, 20, 1100, 20, {"ln": True, "lnb": True, "masked": True, "slow": True}),
]


def make(B, N, D, S, o, dtype, device, g):
    t = {"x": torch.randn(B, N, D, generator=g, dtype=torch.float64) * 1.5 + 0.3}
    if o.get("pool"):
        t["scores"] = torch.randn(B, N, S, generator=g, dtype=torch.float64) * 2
    else:
        t["w_score"] = torch.randn(D, S, generator=g, dtype=torch.float64) / D ** 0.5 * 3
    if o.get("ln"):
        t["ln_weight"] = torch.rand(D, generator=g, dtype=torch.float64) + 0.5
        if o.get("lnb"):
            t["ln_bias"] = torch.randn(D, generator=g, dtype=torch.float64) * 0.2
    mask = None
    if o.get("masked"):
        lengths = torch.randint(1, N + 1, (B,), generator=g)
        mask = (torch.arange(N)[None, :] < lengths[:, None])[:, torch.randperm(N, generator=g)]
        if o.get("empty"):
            mask[B // 2] = False
        mask = mask.to(device)
    return {k: v.to(dtype).to(device) for k, v in t.items()}, mask


def run(t, mask, backend, pool_input, acc=None):
    leaves = {k: (v.to(acc) if acc else v).clone().requires_grad_() for k, v in t.items()}
    if "scores" in leaves:
        out = (token_pool_ref(leaves["x"], leaves["scores"], mask) if backend == "ref"
               else skillkern.token_pool(leaves["x"], leaves["scores"], mask, backend=backend))
    else:
        args = (leaves["x"], leaves["w_score"], leaves.get("ln_weight"), leaves.get("ln_bias"), mask)
        out = (token_reduce_ref(*args, pool_input=pool_input) if backend == "ref"
               else skillkern.token_reduce(*args, pool_input=pool_input, backend=backend))
    return out, leaves


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the large cases (racecheck is slow)")
    ap.add_argument("--backends", default="cuda,triton")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("sanitize.py needs a CUDA device")
        return 1
    device = torch.device("cuda")
    bad = 0
    for label, B, N, D, S, o in CASES:
        if args.quick and o.get("slow"):
            continue
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            g = torch.Generator().manual_seed(B * 1000 + N + D)
            t, mask = make(B, N, D, S, o, dtype, device, g)
            pool_input = bool(o.get("pool_input"))
            ref, ref_leaves = run(t, mask, "ref", pool_input, acc=torch.float64)
            d_out = torch.randn(ref.shape, generator=g, dtype=torch.float64).to(device)
            ref_grads = torch.autograd.grad(ref, list(ref_leaves.values()), d_out)
            for backend in args.backends.split(","):
                out, leaves = run(t, mask, backend, pool_input)
                grads = torch.autograd.grad(out, list(leaves.values()), d_out.to(out.dtype))
                torch.cuda.synchronize()
                errs = {"out": (out, ref)}
                for name, a, r in zip(leaves, grads, ref_grads):
                    if not (pool_input and name == "ln_bias"):  # exactly 0 in exact arithmetic
                        errs[name] = (a, r)
                worst = []
                for name, (a, r) in errs.items():
                    e = ((a.double() - r).norm() / r.norm().clamp_min(1e-30)).item()
                    if not (e <= LIMIT[dtype]):  # also catches NaN
                        worst.append(f"{name} {e:.2e}")
                status = "FAIL" if worst else "ok"
                bad += bool(worst)
                print(f"[{status}] {backend:6s} {str(dtype)[6:]:8s} {label}" + (f": {', '.join(worst)}" if worst else ""),
                      flush=True)
    print("sanitize.py:", "FAILED" if bad else "all results match the reference")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
