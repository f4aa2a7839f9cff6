"""Forward + backward of skillkern.skill_ffn at small adversarial shapes, every dtype, for
compute-sanitizer (needs a GPU):

    compute-sanitizer --tool memcheck  --error-exitcode 1 .venv/bin/python csrc/skill_ffn/sanitize.py
    compute-sanitizer --tool racecheck --error-exitcode 1 .venv/bin/python csrc/skill_ffn/sanitize.py

Shapes hit the edges of the tiled kernels: one token, odd d and h (element-wise copies instead
of 16-byte ones), K and column tails, empty skills, a skill with several row tiles, k slots with
holes, a token without any active slot, no biases. Each result (y and every gradient) is
compared with the float64 reference; the error may be at most 2x PyTorch's own per-skill loop
in the same dtype plus a small floor. Exits 1 on any mismatch (memory errors and races are the
sanitizer's to report). `--backend triton` checks the Triton kernels the same way.
"""
from __future__ import annotations

import argparse
import sys

import torch

import skillkern
from skillkern.ops._common import rel_err
from skillkern.ops.skill_ffn.reference import skill_ffn_ref, slot_scale

FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 5e-3}

# (label, T, k, E, d, h, activation, bias, routing): routing "uniform" (distinct skills per
# token, 20% holes), "one" (every token on the last skill), "sparse" (skills 0 and E-1 only)
SHAPES = [
    ("one token", 1, 1, 3, 16, 32, "gelu", True, "uniform"),
    ("odd d, h (unaligned rows)", 37, 2, 4, 19, 23, "swiglu", True, "uniform"),
    ("K and column tails, k=3", 150, 3, 5, 72, 136, "gelu_tanh", False, "uniform"),
    ("one skill, 3 row tiles", 300, 1, 4, 40, 48, "relu", True, "one"),
    ("empty skills", 90, 2, 6, 24, 200, "silu", True, "sparse"),
]


def make_ids(T, k, E, routing, gen):
    if routing == "one":
        ids = torch.full((T, k), -1, dtype=torch.long)
        ids[:, 0] = E - 1
    elif routing == "sparse":
        ids = torch.where(torch.rand(T, k, generator=gen) < 0.5, 0, E - 1)
        ids[:, 1:] = -1
    else:
        ids = torch.argsort(torch.rand(T, E, generator=gen), dim=1)[:, :k]
        ids = ids.masked_fill(torch.rand(T, k, generator=gen) < 0.2, -1)
    ids[T // 2] = -1  # one token without any active slot
    return ids


def make_case(T, k, E, d, h, activation, bias, routing, device):
    """(inputs, ids) of one SHAPES row on `device`: inputs in float64 (x, w1, w2, b1, b2, sw,
    dy; the biases None without bias), rounded to each dtype by run()."""
    gen = torch.Generator().manual_seed(T * 1000 + d)
    h1 = 2 * h if activation == "swiglu" else h
    cpu = {
        "x": torch.randn(T, d, generator=gen, dtype=torch.float64),
        "w1": torch.randn(E, d, h1, generator=gen, dtype=torch.float64) / d ** 0.5,
        "w2": torch.randn(E, h, d, generator=gen, dtype=torch.float64) / h ** 0.5,
        "b1": torch.randn(E, h1, generator=gen, dtype=torch.float64) * 0.5 if bias else None,
        "b2": torch.randn(E, d, generator=gen, dtype=torch.float64) * 0.5 if bias else None,
        "sw": torch.rand(T, k, generator=gen, dtype=torch.float64) + 0.5,
        "dy": torch.randn(T, d, generator=gen, dtype=torch.float64),
    }
    ids = make_ids(T, k, E, routing, gen).to(device)
    return {n: (t.to(device) if t is not None else None) for n, t in cpu.items()}, ids


def run(inputs, ids, E, activation, backend, dtype):
    """y and the gradients of (x, w1, w2, b1?, b2?, skill_weights) for a fixed upstream grad."""
    leaves = {n: t.to(dtype).clone().requires_grad_() for n, t in inputs.items()
              if t is not None and n not in ("sw", "dy")}
    sw = inputs["sw"].float().clone().requires_grad_()
    if backend == "reference":  # float64 on the inputs as rounded to dtype
        leaves = {n: t.detach().double().requires_grad_() for n, t in leaves.items()}
        sw64 = sw.detach().double().requires_grad_()
        scale = slot_scale(ids, E, sw64, dtype=torch.float64)
        y = skill_ffn_ref(leaves["x"], ids, scale, leaves["w1"], leaves["w2"], leaves.get("b1"), leaves.get("b2"),
                          activation)
        sw = sw64
    elif backend == "torch-same-dtype":
        y = skillkern.skill_ffn(leaves["x"], ids, leaves["w1"], leaves["w2"], leaves.get("b1"), leaves.get("b2"),
                                skill_weights=sw, activation=activation, backend="torch")
    else:
        y = skillkern.skill_ffn(leaves["x"], ids, leaves["w1"], leaves["w2"], leaves.get("b1"), leaves.get("b2"),
                                skill_weights=sw, activation=activation, backend=backend)
    names = list(leaves) + ["skill_weights"]
    g = inputs["dy"].to(y.dtype)
    grads = torch.autograd.grad(y, list(leaves.values()) + [sw], g)
    return dict(zip(["y"] + names, [y, *grads]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="cuda", choices=["cuda", "triton"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("sanitize.py needs a CUDA device", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    failures = 0
    for label, T, k, E, d, h, activation, bias, routing in SHAPES:
        inputs, ids = make_case(T, k, E, d, h, activation, bias, routing, dev)
        before = failures
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            ref = run(inputs, ids, E, activation, "reference", dtype)
            base = run(inputs, ids, E, activation, "torch-same-dtype", dtype)
            got = run(inputs, ids, E, activation, args.backend, dtype)
            for name, r in ref.items():
                err, err_torch = rel_err(got[name], r), rel_err(base[name], r)
                ok = bool(torch.isfinite(got[name]).all()) and err <= 2 * err_torch + FLOOR[dtype]
                if not ok:
                    failures += 1
                    print(f"FAIL {args.backend} [{label}] {dtype} {name}: rel err {err:.3g} "
                          f"(torch {err_torch:.3g})")
        torch.cuda.synchronize()
        print(f"{'ok  ' if failures == before else 'FAIL'} {args.backend} [{label}]", flush=True)
    print(f"{failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
