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
    # -ffp-contract=off: no FMA contraction, as the kernels' explicitly rounded ops expect;
    # -Wno-clobbered: swapcontext looks like setjmp to g++ (false positive)
    flags = ["-std=c++20", "-O1", "-g", "-ffp-contract=off", "-fno-omit-frame-pointer", "-Wall", "-Wextra",
             "-Wno-unknown-pragmas", "-Wno-clobbered"]
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


def per_dtype(v, dtype):
    """An option given per dtype ({dtype: value}) or for all."""
    return v[dtype] if isinstance(v, dict) else v


def run_case(exe, c, dtype, workdir):
    t, mask, d_out = make(c, dtype)
    B, N, D, S = c["B"], c["N"], c["D"], c["S"]
    pool_input = bool(c.get("pool_input"))
    codes = {n: CODES[v.dtype] for n, v in t.items()}
    meta = {"x_dtype": CODES[dtype], "B": B, "N": N, "D": D, "S": S, "eps": 1e-5,
            "has_w": int("w_score" in t), "has_scores": int("scores" in t), "has_lnw": int("ln_weight" in t),
            "has_lnb": int("ln_bias" in t), "has_mask": int(mask is not None), "pool_input": int(pool_input),
            "w_dtype": codes.get("w_score", 0), "sc_dtype": codes.get("scores", 0),
            "lnw_dtype": codes.get("ln_weight", 0), "lnb_dtype": codes.get("ln_bias", 0),
            "smem_limit": per_dtype(c.get("smem", H100), dtype), "n_sm": c.get("n_sm", 132)}
    if "smem_fwd" in c:
        meta["fwd_smem_limit"] = per_dtype(c["smem_fwd"], dtype)
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


def case(label, B, N, D, S, seed, **opts):
    """One case: sizes, seed and options (ln, lnb, masked, empty, pool, pool_input, param_dtype,
    smem / smem_fwd limits (bytes, or {dtype: bytes}), n_sm, dtypes, slow)."""
    return {"label": label, "B": B, "N": N, "D": D, "S": S, "seed": seed, **opts}


# every case runs in each of its dtypes (default fp32 and bf16)
CASES = [
    case("ViT-B/32: N=49 -> S=12, LN", 3, 49, 32, 12, 1, ln=True, lnb=True),
    case("odd N and D (element loads), LN weight only, masks", 3, 37, 33, 5, 2, ln=True, masked=True),
    case("S=1, no LN, masks (W exact in bf16)", 4, 20, 24, 1, 3, masked=True),
    case("an all-masked row", 4, 19, 24, 3, 4, ln=True, lnb=True, masked=True, empty=True),
    case("pool_input (Wukong's layer), masks", 3, 30, 40, 8, 5, ln=True, lnb=True, masked=True, pool_input=True),
    case("token_pool: scores given, an empty row", 3, 21, 40, 12, 6, pool=True, masked=True, empty=True),
    case("S=32 (4 token tiles), N=70 (3 tiles of 32)", 2, 70, 64, 32, 7, ln=True, lnb=True),
    case("N=9 <= 16: 16-row tiles, S=24", 2, 9, 48, 24, 8, ln=True, lnb=True),
    # limits (bytes) that leave one x tile of 16 rows in flight: forward and backward single-stage
    case("groups of 3 items per block, single stage (small smem)", 7, 33, 136, 17, 9, ln=True, lnb=True,
         masked=True, n_sm=3, smem={torch.float32: 65000, torch.bfloat16: 52000, torch.float16: 52000},
         smem_fwd={torch.float32: 35000, torch.bfloat16: 25000, torch.float16: 25000}),
    case("fp32 parameters with 16-bit x (W' split both ways)", 2, 25, 48, 6, 10, ln=True, lnb=True,
         param_dtype=torch.float32, dtypes=(torch.bfloat16, torch.float16)),
    case("A100 smem limit, D=520", 2, 40, 520, 24, 11, ln=True, lnb=True, masked=True, smem=A100),
    case("two D chunks (D=1100 > 1024)", 2, 18, 1100, 20, 12, ln=True, lnb=True, slow=True),
    case("fp32 D=768 S=24 at the A100 limit (single-stage backward)", 2, 20, 768, 24, 13, ln=True, lnb=True,
         masked=True, smem=A100, dtypes=(torch.float32,), slow=True),
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
