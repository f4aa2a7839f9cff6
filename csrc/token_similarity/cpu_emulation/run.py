"""Run the token-similarity CUDA kernels on the CPU, under sanitizers, without a GPU.

    .venv/bin/python csrc/token_similarity/cpu_emulation/run.py [--sanitizer address|thread]
                                                                [--big] [--dtypes f32,f16,bf16]

Makes host-compilable copies of ../tile.cuh, ../fwd.cu and ../bwd.cu in a temporary folder (the
kernels as they are; only cp.async's inline PTX becomes a call into the emulation, the launchers
are cut and shared memory comes from the emulator), compiles them with driver.cc and emu.h
(g++ -std=c++20, -fsanitize=address,undefined or thread), and runs the driver twice: with
every cp.async copy done when issued and with each done only at the wait that retires it.
Exits non-zero on a wrong result, a sanitizer report (ASan: out-of-bounds global or shared
memory; TSan: shared-memory races, i.e. a missing barrier) or a deadlock (timeout: a barrier
in divergent code). What it cannot check: tensor-core numerics and fragment layouts, timing,
anything the GPU's compiler does differently; compute-sanitizer on a GPU (../sanitize.py) is
still the real check. ~2-4 min per sanitizer on 2 cores.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
ROOT = os.path.dirname(os.path.dirname(SRC))


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def sub(text: str, old: str, new: str, regex: bool = False) -> str:
    """Replace exactly one occurrence (the kernels changed if this fails: update run.py)."""
    count = len(re.findall(old, text, flags=re.DOTALL)) if regex else text.count(old)
    if count != 1:
        sys.exit(f"cpu_emulation: expected one match of {old[:60]!r}, found {count}")
    return re.sub(old, lambda _: new, text, flags=re.DOTALL) if regex else text.replace(old, new)


def kernel_copy(path: str, cut_from: str) -> str:
    """fwd.cu / bwd.cu up to their launchers, with emulator shared memory."""
    text = read(path)
    for inc in ('#include <c10/cuda/CUDAException.h>\n', '#include <c10/util/Exception.h>\n'):
        text = sub(text, inc, "")
    text = sub(text, '#include "token_similarity/tile.cuh"', '#include "tile.cuh"')
    text = sub(text, '#include "token_similarity/token_similarity.h"', '#include "token_similarity.h"')
    text = sub(text, "extern __shared__ __align__(128) unsigned char smem[];", "unsigned char* smem = emu_smem;")
    return text[:text.index(cut_from)] + "\n}  // namespace\n}  // namespace toksim\n}  // namespace skillkern\n"


def generate(out: str) -> None:
    tile = read(os.path.join(SRC, "tile.cuh"))
    for inc in ("#include <cuda_bf16.h>\n", "#include <cuda_fp16.h>\n", "#include <mma.h>\n"):
        tile = sub(tile, inc, "")
    tile = sub(tile, r"__device__ __forceinline__ void cp_async16\(void\* smem, const void\* gmem\) \{.*?\n\}",
               "__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) { emu_cp_async16(smem, gmem); }",
               regex=True)
    tile = sub(tile, 'asm volatile("cp.async.commit_group;\\n" ::);', "emu_cp_async_commit();")
    tile = sub(tile, 'asm volatile("cp.async.wait_group %0;\\n" ::"n"(kPending));', "emu_cp_async_wait(kPending);")
    if "asm" in tile:
        sys.exit("cpu_emulation: tile.cuh has inline PTX the emulation does not know")
    header = sub(read(os.path.join(SRC, "token_similarity.h")), "#include <cuda_runtime_api.h>\n", "")
    files = {
        "tile.cuh": tile,
        "token_similarity.h": header,
        "fwd_k.inc": kernel_copy(os.path.join(SRC, "fwd.cu"), "template <typename T, class Cfg>\nvoid launch_cfg"),
        "bwd_k.inc": kernel_copy(os.path.join(SRC, "bwd.cu"), "template <typename T, int KC>\nvoid launch_typed"),
        # csrc/common.h without ATen: the conversions only
        "common.h": """#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
namespace skillkern {
template <typename T> inline float to_f32(T v) { return static_cast<float>(v); }
template <> inline float to_f32<__half>(__half v) { return __half2float(v); }
template <> inline float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> inline T from_f32(float v) { return static_cast<T>(v); }
template <> inline __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> inline __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
}  // namespace skillkern
""",
    }
    for name, text in files.items():
        with open(os.path.join(out, name), "w") as f:
            f.write(text)


def cuda_include() -> str:
    sys.path.insert(0, ROOT)
    import setup as sk_setup  # the toolkit search of the real build

    home = sk_setup.find_cuda_home() or "/usr/local/cuda"
    return os.path.join(home, "include")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sanitizer", choices=("address", "thread", "none"), default="address",
                    help="address: ASan + UBSan (out of bounds); thread: TSan (races); none: results only")
    ap.add_argument("--big", action="store_true", help="also the slower cases (512-row tile, ...)")
    ap.add_argument("--dtypes", default="all", choices=("all", "f32", "f16", "bf16"))
    ap.add_argument("--copies", default="issue,wait",
                    help="cp.async timings to run: issue (copy when issued), wait (copy at the retiring wait)")
    ap.add_argument("--timeout", type=int, default=3000, help="seconds per run (a deadlock hangs)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="toksim_emu_") as tmp:
        generate(tmp)
        exe = os.path.join(tmp, "driver")
        san = {"address": ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"],
               "thread": ["-fsanitize=thread"], "none": []}[args.sanitizer]
        cmd = ["g++", "-std=c++20", "-O1", "-g", "-pthread", "-Wall", "-Wextra", "-Wno-unknown-pragmas", *san,
               "-I", HERE, "-I", tmp, "-isystem", cuda_include(), os.path.join(HERE, "driver.cc"), "-o", exe]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66",
                   UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1")
        status = 0
        for mode in args.copies.split(","):
            copy_at_wait = {"issue": "0", "wait": "1"}[mode]
            print(f"--- cp.async copies {'at the wait' if copy_at_wait == '1' else 'when issued'}", flush=True)
            try:
                run = subprocess.run([exe, copy_at_wait, "1" if args.big else "0", args.dtypes], env=env,
                                     timeout=args.timeout, check=False)
                status = status or run.returncode
            except subprocess.TimeoutExpired:
                print("cpu_emulation: timed out (a __syncthreads that not every thread reaches?)")
                status = 1
    print("cpu_emulation:", "FAILED" if status else "ok")
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main())
