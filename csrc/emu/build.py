"""Build and load the CPU emulation of skillkern's CUDA kernels (csrc/emu/), for the tests.

    import build; ops = build.load()            # torch.ops.skillkern_emu
    ops.configure(seed, copies_at_issue)        # thread schedule and cp.async timing
    ops.skill_ffn_fwd(...), ops.token_similarity_fwd(...), ops.token_reduce_fwd(...), ...

One g++ build (torch.utils.cpp_extension, cached and rebuilt when a source or header changes;
~2-4 min from scratch on 2 cores) of the kernel families' own sources with include/ first on the
include path: their #include "ptx.cuh" and <mma.h> land on the host versions there. Needs g++
and the CUDA toolkit's headers (cuda_fp16.h / cuda_bf16.h), no GPU. SKILLKERN_EMU_SANITIZE=1 adds
AddressSanitizer + UBSan; the process must then preload the runtime (python run.py does).
"""
from __future__ import annotations

import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.dirname(HERE)
ROOT = os.path.dirname(CSRC)
SOURCES = ["ops.cc", "skill_ffn.cc", "sm90_host.cc", "token_similarity.cc", "token_similarity_kernels.cc",
           "token_similarity_bwd_kernels.cc", "token_reduce.cc", "token_reduce_kernels.cc",
           "token_reduce_bwd_kernels.cc"]
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def cuda_include() -> str | None:
    """The CUDA toolkit's include folder (the real build's toolkit search), or None."""
    sys.path.insert(0, ROOT)
    import setup as sk_setup

    home = sk_setup.find_cuda_home()
    return os.path.join(home, "include") if home else None


def unavailable() -> str | None:
    """Why the emulation cannot be built here, or None."""
    if shutil.which("g++") is None:
        return "no g++"
    if cuda_include() is None:
        return "no CUDA toolkit: the emulation needs its cuda_fp16.h / cuda_bf16.h"
    return None


def load(sanitize: bool | None = None):
    """Builds (when needed) and loads the emulation; returns torch.ops.skillkern_emu."""
    import torch
    from torch.utils import cpp_extension

    if sanitize is None:
        sanitize = os.environ.get("SKILLKERN_EMU_SANITIZE", "0") == "1"
    reason = unavailable()
    if reason:
        raise RuntimeError(f"the CPU emulation cannot be built: {reason}")
    # -ffp-contract=off: no FMA contraction, as the kernels' explicitly rounded ops expect;
    # -fno-strict-aliasing: device code reads 16-byte vectors through element pointers (uint4 ->
    # bf16), which nvcc compiles as written and g++ -O2 would otherwise reorder; the half / bf16
    # flags are torch's own for nvcc (no implicit conversions or operators)
    flags = ["-O2", "-g0", "-ffp-contract=off", "-fno-strict-aliasing", "-Wall", "-Wno-unknown-pragmas", "-Wno-attributes",
             "-Wno-clobbered", "-isystem", cuda_include(), "-D__CUDA_NO_HALF_OPERATORS__",
             "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
    if sanitize:
        flags += SANITIZE_FLAGS
    cpp_extension.load(
        name="skillkern_emu" + ("_asan" if sanitize else ""), is_python_module=False,
        sources=[os.path.join(HERE, s) for s in SOURCES],
        extra_include_paths=[os.path.join(HERE, "include"), CSRC],  # the host primitives first
        extra_cflags=flags, extra_ldflags=SANITIZE_FLAGS if sanitize else [])
    return torch.ops.skillkern_emu
