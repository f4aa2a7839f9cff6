"""Run the token_reduce CUDA kernels on the CPU (emu.h) and check them against reference.py.

    .venv/bin/python csrc/token_reduce/emu/run_emu.py [--quick] [--no-asan] [-k SUBSTRING]

Builds tokred_emu.cc with g++ (AddressSanitizer + UBSan by default, ~1-2 min, cached by source
hash under /tmp), then for every case and dtype: writes inputs, runs prep -> forward ->
backward -> reduce in the emulator twice with different thread schedules, and checks
  - both schedules give the same bits (a race on shared memory would not);
  - out and every gradient against a float64 autograd reference of reference.py on the inputs
    as rounded to the dtype, with the tolerance of tests/test_token_reduce.py: error at most
    2x that of PyTorch computing in fp32, plus a floor for the storage dtype;
  - masked positions get exactly zero dx, items without real positions exactly zero outputs.
What it cannot check: real-GPU timing, the hardware's own accumulation order, memory-model
effects beyond barriers (the emulator runs one thread at a time between barriers).
Exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, ROOT)

from skillkern.ops.token_reduce.reference import token_pool_ref, token_reduce_ref

CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
FLOOR = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}
H100, A100 = 232448, 166912  # sharedMemPerBlockOptin (bytes)


def build(asan: bool) -> str:
    import torch.utils.cpp_extension as ce
    srcs = [os.path.join(HERE, "tokred_emu.cc"), os.path.join(HERE, "emu.h")]
    srcs += [os.path.join(HERE, "..", f) for f in sorted(os.listdir(os.path.join(HERE, "..")))
             if f.endswith((".cuh", ".h"))]
    srcs.append(os.path.join(ROOT, "csrc", "common.h"))
    h = hashlib.sha1()
    for s in srcs:
        with open(s, "rb") as f:
            h.update(f.read())
    h.update(b"asan" if asan else b"plain")
    exe = os.path.join(tempfile.gettempdir(), f"tokred_emu_{h.hexdigest()[:12]}")
    if os.path.exists(exe):
        return exe
    cuda_inc = next(p for p in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda") if p and os.path.isdir(p))
    site = os.path.dirname(os.path.dirname(torch.__file__))
    incs = [f"-I{os.path.join(ROOT, 'csrc')}", "-isystem", os.path.join(cuda_inc, "include")]
    for p in ce.include_paths():
        incs += ["-isystem", p]
    wheel = os.path.join(site, "nvidia", "cu13", "include")
    if os.path.isdir(wheel):
        incs += ["-isystem", wheel]
    flags = ["-std=c++20", "-O1", "-g", "-ffp-contract=off", "-fno-omit-frame-pointer", "-Wall", "-Wextra", "-Wno-unknown-pragmas", "-Wno-clobbered"]
    if asan:
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    cmd = ["g++", *flags, *incs, os.path.join(HERE, "tokred_emu.cc"), "-o", exe + ".tmp"]
    print("building", exe, flush=True)
    subprocess.run(cmd, check=True)
    os.replace(exe + ".tmp", exe)
    return exe


def raw(t: torch.Tensor) -> bytes:
    t = t.contiguous().cpu()
    if t.dtype == torch.bool:
        return t.to(torch.uint8).numpy().tobytes()
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32).numpy().tobytes()


def from_raw(path: str, dtype: torch.dtype, shape) -> torch.Tensor:
    with open(path, "rb") as f:
        data = f.read()
    n = 1
    for s in shape:
        n *= s
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    store = torch.int16 if dtype in (torch.float16, torch.bfloat16) else torch.int32
    return torch.frombuffer(bytearray(data), dtype=store)[:n].view(dtype).reshape(shape).clone()


def make(c, dtype):
    g = torch.Generator().manual_seed(c["seed"])
    B, N, D, S = c["B"], c["N"], c["D"], c["S"]
    t = {"x": (torch.randn(B, N, D, generator=g, dtype=torch.float64) * 1.5 + 0.3)}
    pdt = c.get("param_dtype", dtype)
    if c.get("pool"):
        t["scores"] = torch.randn(B, N, S, generator=g, dtype=torch.float64) * 2
    else:
        t["w_score"] = torch.randn(D, S, generator=g, dtype=torch.float64) / D ** 0.5 * 3
    if c.get("ln"):
        t["ln_weight"] = torch.rand(D, generator=g, dtype=torch.float64) + 0.5
        if c.get("lnb"):
            t["ln_bias"] = torch.randn(D, generator=g, dtype=torch.float64) * 0.2
    mask = None
    if c.get("masked") or c.get("empty"):
        lengths = torch.randint(1, N + 1, (B,), generator=g)
        mask = torch.arange(N)[None, :] < lengths[:, None]
        mask = mask[:, torch.randperm(N, generator=g)]
        if c.get("empty"):
            mask[B // 2] = False
    dts = {n: (dtype if n == "x" else pdt) for n in t}
    t = {n: v.to(dts[n]) for n, v in t.items()}  # rounded to the test dtypes
    d_out = torch.randn(B, S, D, generator=g, dtype=torch.float64).to(dtype)
    return t, mask, d_out


def reference(t, mask, d_out, pool_input, acc):
    leaves = {n: v.to(acc).clone().requires_grad_() for n, v in t.items()}
    if "scores" in leaves:
        out = token_pool_ref(leaves["x"], leaves["scores"], mask)
    else:
        out = token_reduce_ref(leaves["x"], leaves["w_score"], leaves.get("ln_weight"), leaves.get("ln_bias"), mask,
                               pool_input=pool_input)
    grads = torch.autograd.grad(out, list(leaves.values()), d_out.to(out.dtype))
    return out, dict(zip(leaves, grads))


def torch_path(t, mask, d_out, pool_input):
    """What skillkern's torch backend gives in the test dtype (fp32 compute, dtype outputs)."""
    leaves = {n: v.clone().requires_grad_() for n, v in t.items()}
    if "scores" in leaves:
        out = token_pool_ref(leaves["x"], leaves["scores"], mask)
    else:
        out = token_reduce_ref(leaves["x"], leaves["w_score"], leaves.get("ln_weight"), leaves.get("ln_bias"), mask,
                               pool_input=pool_input)
    grads = torch.autograd.grad(out, list(leaves.values()), d_out.to(out.dtype))
    return out, dict(zip(leaves, grads))


def rel_err(a, ref):
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def run_case(exe, c, dtype, workdir):
    t, mask, d_out = make(c, dtype)
    B, N, D, S = c["B"], c["N"], c["D"], c["S"]
    pool_input = bool(c.get("pool_input"))
    meta = {"x_dtype": CODES[dtype], "B": B, "N": N, "D": D, "S": S, "eps": 1e-5, "has_w": int("w_score" in t),
                "has_scores": int("scores" in t), "has_lnw": int("ln_weight" in t), "has_lnb": int("ln_bias" in t),
                "has_mask": int(mask is not None), "pool_input": int(pool_input),
                "w_dtype": CODES[t["w_score"].dtype] if "w_score" in t else 0,
                "sc_dtype": CODES[t["scores"].dtype] if "scores" in t else 0,
                "lnw_dtype": CODES[t["ln_weight"].dtype] if "ln_weight" in t else 0,
                "lnb_dtype": CODES[t["ln_bias"].dtype] if "ln_bias" in t else 0,
                "smem_limit": c.get("smem", H100), "n_sm": c.get("n_sm", 132)}
    files = {"x": t["x"], "w": t.get("w_score"), "scores": t.get("scores"), "lnw": t.get("ln_weight"),
             "lnb": t.get("ln_bias"), "mask": mask, "dout": d_out}
    for name, v in files.items():
        with open(os.path.join(workdir, name + ".bin"), "wb") as f:
            f.write(b"" if v is None else raw(v))
    results, log = [], ""
    for seed in (1, 2):
        with open(os.path.join(workdir, "meta.txt"), "w") as f:
            f.write("".join(f"{k} {v}\n" for k, v in {**meta, "seed": seed}.items()))
        r = subprocess.run([exe, workdir], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            return [f"emulator exit {r.returncode}: {r.stderr[-3000:]}"], r.stdout
        log = r.stdout.strip()
        shapes = {"out": (dtype, (B, S, D)), "lse": (torch.float32, (B, S)), "dx": (dtype, (B, N, D)),
                  "dw": (t["w_score"].dtype, (D, S)) if "w_score" in t else None,
                  "ds": (t["scores"].dtype, (B, N, S)) if "scores" in t else None,
                  "dlnw": (t["ln_weight"].dtype, (D,)) if "ln_weight" in t else None,
                  "dlnb": (t["ln_bias"].dtype, (D,)) if "ln_bias" in t else None}
        results.append({k: from_raw(os.path.join(workdir, k + ".bin"), *v) for k, v in shapes.items() if v})
    errors = []
    for k in results[0]:
        if not torch.equal(results[0][k].view(torch.uint8) if results[0][k].numel() else results[0][k],
                           results[1][k].view(torch.uint8) if results[1][k].numel() else results[1][k]):
            errors.append(f"{k}: differs between two thread schedules (race or uninitialised read)")
    got = results[0]
    ref_out, ref_g = reference(t, mask, d_out, pool_input, torch.float64)
    tp_out, tp_g = torch_path(t, mask, d_out, pool_input)
    names = {"x": "dx", "w_score": "dw", "scores": "ds", "ln_weight": "dlnw", "ln_bias": "dlnb"}
    checks = [("out", got["out"], tp_out, ref_out)]
    checks += [(names[n], got[names[n]], tp_g[n], ref_g[n]) for n in t]
    report = []
    for what, g_, base, ref in checks:
        if not torch.isfinite(g_.double()).all():
            errors.append(f"{what}: non-finite values")
            continue
        if pool_input and what == "dlnb":  # exactly 0 in exact arithmetic: noise vs d ln_weight's scale
            scale = got["dlnw"].double().norm()
            if g_.double().norm() > FLOOR[dtype] * scale:
                errors.append(f"dlnb (pool_input): {g_.double().norm():.3g} vs scale {scale:.3g}")
            continue
        err, err_t = rel_err(g_, ref), rel_err(base, ref)
        report.append(f"{what} {err:.1e}/{err_t:.1e}")
        if err > 2 * err_t + FLOOR[dtype]:
            errors.append(f"{what}: rel err {err:.3g} > 2 x torch {err_t:.3g} + {FLOOR[dtype]}")
    lse_ref = None
    if mask is not None:
        if torch.count_nonzero(got["dx"][~mask]) != 0:
            errors.append("dx: nonzero at masked positions")
        empty = ~mask.any(1)
        if torch.count_nonzero(got["out"][empty]) != 0:
            errors.append("out: nonzero for an item without real positions")
        if empty.any() and not torch.isinf(got["lse"][empty]).all():
            errors.append("lse: not +inf for an item without real positions")
        lse_ref = empty
    if lse_ref is None or not lse_ref.all():
        finite = got["lse"][~lse_ref] if lse_ref is not None else got["lse"]
        if not torch.isfinite(finite).all():
            errors.append("lse: non-finite for an item with real positions")
    return errors, log + " | " + ", ".join(report)


# label, sizes and options; every case runs in each of its dtypes
CASES = [
    {"label": "ViT-B/32: N=49 -> S=12, LN", "B": 3, "N": 49, "D": 32, "S": 12, "ln": True, "lnb": True, "seed": 1},
    {"label": "odd N and D (element loads), LN weight only, masks", "B": 3, "N": 37, "D": 33, "S": 5, "ln": True, "masked": True,
         "seed": 2},
    {"label": "S=1, no LN, masks (W exact in bf16)", "B": 4, "N": 20, "D": 24, "S": 1, "masked": True, "seed": 3},
    {"label": "an all-masked row", "B": 4, "N": 19, "D": 24, "S": 3, "ln": True, "lnb": True, "masked": True, "empty": True, "seed": 4},
    {"label": "pool_input (Wukong's layer), masks", "B": 3, "N": 30, "D": 40, "S": 8, "ln": True, "lnb": True, "masked": True,
         "pool_input": True, "seed": 5},
    {"label": "token_pool: scores given, an empty row", "B": 3, "N": 21, "D": 40, "S": 12, "pool": True, "masked": True, "empty": True,
         "seed": 6},
    {"label": "S=32 (4 token tiles), N=70 (3 tiles of 32)", "B": 2, "N": 70, "D": 64, "S": 32, "ln": True, "lnb": True, "seed": 7},
    {"label": "N=9 <= 16: 16-row tiles, S=24", "B": 2, "N": 9, "D": 48, "S": 24, "ln": True, "lnb": True, "seed": 8},
    {"label": "groups of 3 items per block, single stage (small smem)", "B": 7, "N": 33, "D": 136, "S": 17, "ln": True, "lnb": True,
         "masked": True, "n_sm": 3, "smem": 40000, "seed": 9},
    {"label": "fp32 parameters with 16-bit x (W' split both ways)", "B": 2, "N": 25, "D": 48, "S": 6, "ln": True, "lnb": True,
         "param_dtype": torch.float32, "seed": 10, "dtypes": (torch.bfloat16, torch.float16)},
    {"label": "A100 smem limit, D=520", "B": 2, "N": 40, "D": 520, "S": 24, "ln": True, "lnb": True, "masked": True, "smem": A100,
         "seed": 11},
    {"label": "two D chunks (D=1100 > 1024)", "B": 2, "N": 18, "D": 1100, "S": 20, "ln": True, "lnb": True, "seed": 12, "slow": True},
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the slow cases, bf16 only")
    ap.add_argument("--no-asan", action="store_true", help="build without sanitizers (faster)")
    ap.add_argument("-k", default="", help="only cases whose label contains this")
    args = ap.parse_args()
    exe = build(not args.no_asan)
    failures = 0
    with tempfile.TemporaryDirectory() as wd:
        for c in CASES:
            if args.k not in c["label"] or (args.quick and c.get("slow")):
                continue
            dtypes = c.get("dtypes", (torch.float32, torch.bfloat16) if not args.quick else (torch.bfloat16,))
            if args.quick:
                dtypes = dtypes[:1]
            for dt in dtypes:
                errors, log = run_case(exe, c, dt, wd)
                status = "FAIL" if errors else "ok"
                print(f"[{status}] {c['label']} {str(dt)[6:]}: {log}", flush=True)
                for e in errors:
                    print("      ", e)
                failures += bool(errors)
    print("emulated kernels:", "FAILED" if failures else "all cases match the reference")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
