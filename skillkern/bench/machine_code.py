"""What a compiled kernel's machine code says about its speed, read without a GPU: ptxas's
resource report (registers, spills, stack, wgmma serialization), the SASS instruction mix
(HGMMA / HMMA / FFMA; UTMALDG / LDGSTS / LDG) and the occupancy that follows.

The tools are the ones Triton ships in triton/backends/nvidia/bin (ptxas, cuobjdump), else
$CUDA_HOME/bin or PATH. Every function here takes files or text, never a device.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

# Per-SM and per-block limits by compute capability (CUDA programming guide, "Compute
# capabilities" table). smem_block is the opt-in maximum per block; 1 KB per block is
# reserved by the driver on sm_80 and later.
LIMITS = {
    80: dict(regs_sm=65536, warps_sm=64, blocks_sm=32, smem_sm=167936, smem_block=166912),
    90: dict(regs_sm=65536, warps_sm=64, blocks_sm=32, smem_sm=233472, smem_block=232448),
    100: dict(regs_sm=65536, warps_sm=64, blocks_sm=32, smem_sm=233472, smem_block=232448),
}
_SMEM_RESERVED = 1024
# Part of every cache key of parsed facts: bump it when a parser here changes what it reports.
FACTS_VERSION = 6


def cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "skillkern", "inspect")


def cached(name: str, compute):
    """compute()'s JSON-able result, kept in cache_dir()/<name>.json (written atomically, so
    concurrent runs never read half a file)."""
    path = os.path.join(cache_dir(), f"{name}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    value = compute()
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)
    return value


@functools.lru_cache(maxsize=None)
def tool(name: str) -> str | None:
    """Path of ptxas / cuobjdump / nvdisasm: Triton's bundled copy first, then the CUDA toolkit."""
    try:
        import triton

        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = os.path.join(home, "bin", name)
    return cand if os.access(cand, os.X_OK) else shutil.which(name)


@dataclass
class Resources:
    regs: int
    spill_bytes: int  # spill stores + spill loads
    stack_bytes: int
    static_smem: int
    wgmma_serialized: str | None  # ptxas's reason, when it serialized the wgmma pipeline


_USED = re.compile(r"Used (\d+) registers")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_SMEM = re.compile(r"(\d+) bytes smem")
_SERIAL = re.compile(r"wgmma\.mma_async instructions are serialized (.*)")


def parse_ptxas(log: str) -> Resources:
    """ptxas -v's report of one kernel."""
    regs = _USED.search(log)
    stack = _STACK.search(log)
    smem = _SMEM.search(log)
    serial = _SERIAL.search(log)
    return Resources(
        regs=int(regs.group(1)) if regs else 0,
        spill_bytes=int(stack.group(2)) + int(stack.group(3)) if stack else 0,
        stack_bytes=int(stack.group(1)) if stack else 0,
        static_smem=int(smem.group(1)) if smem else 0,
        wgmma_serialized=serial.group(1).strip().rstrip(".") if serial else None,
    )


def ptxas_for(cc: int) -> str | None:
    """The ptxas Triton itself assembles compute capability cc with (a newer one for sm_100+)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(cc).path
    except (ImportError, AttributeError, RuntimeError):
        return tool("ptxas")


def ptxas_report(ptx: str, arch: str, extra: tuple = (), exe: str | None = None) -> Resources:
    """Assemble `ptx` for `arch` (e.g. "sm_90a") with -v and parse the report."""
    exe = exe or tool("ptxas")
    if exe is None:
        raise FileNotFoundError("ptxas not found (it ships with triton's nvidia backend)")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([exe, "-v", *extra, f"--gpu-name={arch}", src, "-o", os.path.join(d, "k.cubin")],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed: {proc.stderr[-2000:]}")
    return parse_ptxas(proc.stderr)


_WGMMA_WAIT = re.compile(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)")
_CP_ASYNC_WAIT = re.compile(r"cp\.async\.wait_group\s+(\d+)")
_WGMMA = re.compile(r"wgmma\.mma_async")


def ptx_pipelining(ptx: str) -> dict:
    """How deep the PTX lets loads and MMAs run ahead: the largest N of its `wgmma.wait_group N`
    (0: every wgmma is waited for before the next is issued: MMA and loads serialize) and of its
    `cp.async.wait_group N` (0: each stage's copies are waited for at once: single-buffered).
    None where the instruction does not occur. wgmma_per_wait: wgmma instructions per wait in the
    text (a dot over a deep K issues many before its one wait: they run back to back)."""
    w = [int(n) for n in _WGMMA_WAIT.findall(ptx)]
    c = [int(n) for n in _CP_ASYNC_WAIT.findall(ptx)]
    n_mma = len(_WGMMA.findall(ptx))
    return dict(wgmma_pending=max(w) if w else None, cp_async_pending=max(c) if c else None,
                wgmma_per_wait=n_mma / len(w) if w else None)


def sass_of(binary: bytes | str) -> str:
    """cuobjdump -sass of a cubin (bytes) or of a file (path: a cubin, or a .so with fatbins)."""
    exe = tool("cuobjdump")
    if exe is None:
        raise FileNotFoundError("cuobjdump not found (it ships with triton's nvidia backend)")
    with tempfile.TemporaryDirectory() as d:
        path = binary
        if isinstance(binary, bytes):
            path = os.path.join(d, "k.cubin")
            with open(path, "wb") as f:
                f.write(binary)
        proc = subprocess.run([exe, "-sass", path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed: {proc.stderr[-2000:]}")
    return proc.stdout


_OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_x]+)*)")


def opcodes(sass: str) -> list[str]:
    """Full opcodes (with modifiers, e.g. HGMMA.64x128x16.F32.BF16) in program order."""
    return _OPCODE.findall(sass)


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_TARGET = re.compile(r"0x([0-9a-f]+)")


def hot_loop(sass: str) -> dict | None:
    """The loop that does a kernel's MMA work: among the SASS loops (a branch back to an earlier
    address), the one holding the most MMA instructions, innermost on ties. Returns its
    instruction count per warp and iteration (`instrs`, an inner loop counted once) and its
    MMA count, or None for a kernel without a loop. Its issue slots are what the CUDA cores spend
    per step beside the tensor cores (the roofline's `issue` term)."""
    ins = [(int(a, 16), op, rest) for a, op, rest in _INSTR.findall(sass)]
    best = None
    for addr, op, rest in ins:
        m = _TARGET.search(rest) if op.startswith("BRA") else None
        if m is None or int(m.group(1), 16) >= addr:
            continue
        start = int(m.group(1), 16)
        body = [o for a, o, _ in ins if start <= a <= addr]
        mmas = sum(o.startswith(("HGMMA", "HMMA", "UTCHMMA")) for o in body)
        key = (mmas, -len(body))
        if best is None or key > best[0]:
            best = (key, dict(instrs=len(body), mmas=mmas))
    return None if best is None else best[1]


@dataclass
class Mix:
    mma: str  # "wgmma", "tcgen05" (sm_100), "mma.sync", "<kind>+mma.sync" (both in one kernel) or "none"
    mma_shape: str | None  # e.g. "64x128x16.F32.BF16" or "16816.F32.BF16"
    mma_input: str | None  # the tensor-core input type: BF16, F16, TF32, E4M3, ...
    loads: str  # "tma", "cp.async", "ldg" or "none": how global loads are made (the most capable seen)
    counts: dict  # opcode family -> count


_FAMILIES = ("HGMMA", "HMMA", "UTCMMA", "FFMA", "UTMALDG", "UTMASTG", "LDGSTS", "LDG", "STG", "LDSM", "LDS", "STS",
             "BAR", "SHFL", "MOVM")
# sm_100's tcgen05 MMAs (UTCHMMA: 16-bit, UTCQMMA: 8-bit float, UTCIMMA: integer, UTCOMMA: 4-bit)
_TCGEN05 = ("UTCHMMA", "UTCQMMA", "UTCIMMA", "UTCOMMA")


def mix(ops: list[str]) -> Mix:
    counts = {f: 0 for f in _FAMILIES}
    first = {}
    for op in ops:
        fam = op.split(".")[0]
        fam = "UTCMMA" if fam in _TCGEN05 else fam
        if fam in counts:
            counts[fam] += 1
            first.setdefault(fam, op)
    kind, shape = "none", None
    if counts["HGMMA"]:
        kind, shape = "wgmma", first["HGMMA"].split(".", 1)[1] if "." in first["HGMMA"] else None
        if counts["HMMA"]:  # some dots fell back to mma.sync (e.g. an M < 64 tile): priced as mma.sync
            kind = "wgmma+mma.sync"
    elif counts["UTCMMA"]:  # Blackwell: the operand types are not in the opcode
        kind = "tcgen05+mma.sync" if counts["HMMA"] else "tcgen05"
    elif counts["HMMA"]:
        kind, shape = "mma.sync", first["HMMA"].split(".", 1)[1] if "." in first["HMMA"] else None
    mma_input = shape.split(".")[-1] if shape else None
    loads = ("tma" if counts["UTMALDG"] else "cp.async" if counts["LDGSTS"] else "ldg" if counts["LDG"] else "none")
    return Mix(kind, shape, mma_input, loads, counts)


def occupancy(cc: int, regs: int, smem: int, warps: int) -> dict:
    """Blocks and warps per SM for a kernel of `warps` warps per block, and what limits them
    ("regs", "smem", "warps", "blocks"). blocks_per_sm is 0 when one block does not fit."""
    lim = LIMITS[cc]
    if smem > lim["smem_block"]:
        return dict(blocks_per_sm=0, warps_per_sm=0, occupancy_limiter="smem")
    per_warp = -(-max(regs, 1) * 32 // 256) * 256  # registers are allocated per warp in units of 256
    by = {"regs": (lim["regs_sm"] // per_warp) // warps,
          "smem": lim["smem_sm"] // (smem + _SMEM_RESERVED),
          "warps": lim["warps_sm"] // warps,
          "blocks": lim["blocks_sm"]}
    limiter = min(by, key=by.get)
    return dict(blocks_per_sm=by[limiter], warps_per_sm=by[limiter] * warps, occupancy_limiter=limiter)
