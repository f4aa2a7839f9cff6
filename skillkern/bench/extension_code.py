"""The compiled extension (skillkern._C, built from csrc/) in `skillkern inspect`: one record per
__global__ kernel of the library's sm_<arch> code, read from the built .so without a GPU.

    records, reason = extension_records(arch=90)   # reason is None when the library was read;
                                                   # else records == [] and reason says what is missing

One `cuobjdump -res-usage -elf -sass` run per (library, arch), split per kernel, gives:
  - the resource usage: REG, STACK, SHARED (static shared memory only: the dynamic amount is a
    launch argument, a per-kernel constant in skill_ffn / token_similarity and shape-dependent in
    token_reduce, so `smem_dynamic` is None and `smem_note` says so), LOCAL;
  - the ELF's .nv.info.<kernel> attributes: EIATTR_MAX_THREADS (from __launch_bounds__; every
    launch in csrc/ passes the same constant as the block size) or EIATTR_REQNTID, which give the
    warps per block for the occupancy;
  - the SASS instruction mix (machine_code.mix): HMMA / HGMMA, LDGSTS / UTMALDG / LDG, LDSM versus
    MOVM + LDS for the MMA fragment loads, and STL / LDL (local memory).
A built library carries no ptxas log, so `spill_bytes` is the static byte count of its local-memory
instructions (STL + LDL in the SASS), and `spill_source` says so. That is ptxas -v's "spill stores" +
"spill loads" (the Triton records' spill_bytes) when the kernel keeps no array in local memory:
equal on all 9 sm_90 token_similarity forward kernels of this build (172 to 792 B; ptxas run on the
PTX that -lineinfo embeds). `wgmma_pipelined` stays None (ptxas's serialization warning is not in
the binary). There is no work model for the extension's kernels yet:
predicted_ms, flops and the bytes are None (`note`).

The parsed facts are cached under machine_code.cache_dir() by the library's path, mtime, size and arch
(the sm_90 dump of the current build is ~300 MB of text: ~30 s cold for sm_90 and ~25 s for sm_80
on 2 shared cores, ~0.1 s from the cache). machine_code.sass_of is not used: the one streamed run
gives the resource usage and the ELF attributes with the SASS.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import tempfile

from skillkern.bench import machine_code as mc

_FORMAT = 1  # bump when the parsed facts change shape: older cache files are then ignored

NOTE = "no work model for extension kernels yet: no prediction"
SMEM_NOTE = ("static only: dynamic shared memory is a launch argument (a per-kernel constant in skill_ffn "
             "and token_similarity, shape-dependent in token_reduce), so occupancy is an upper bound")
SPILL_SOURCE = "SASS STL + LDL bytes (spills or local arrays; a built library has no ptxas log)"

# sm_90 code declares the driver's 1 KB per-block shared-memory reservation (.nv.reservedSmem) and
# cuobjdump counts it in SHARED: every kernel of this build reports 1,024 B more for sm_90 than
# for sm_80 (_combine_slots_kernel 1024 vs 0, _skill_down_kernel 3072 vs 2048).
_RESERVED_SMEM = 1024
_ATTRS = ("MAX_THREADS", "REQNTID", "MAXREG_COUNT")  # the .nv.info attributes kept
_OPS = {"skill_ffn": "skill_ffn", "token_similarity": "token_similarity", "token_reduce": "token_reduce"}
_NAMESPACE_OPS = {"ffn": "skill_ffn", "toksim": "token_similarity", "tokred": "token_reduce"}
_TYPES = {"__nv_bfloat16": "bf16", "__half": "fp16", "bfloat16_t": "bf16", "half_t": "fp16", "float": "fp32",
          "double": "fp64", "int": "int32", "long": "int64", "unsigned char": "uint8"}
_LOCAL_WIDTH = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}  # STL / LDL bytes by suffix


# ----------------------------------------------------------------------------- finding the library

def extension_path() -> str | None:
    """The extension library inspect reads: $SKILLKERN_EXTENSION_LIB (a csrc/build_dev.py build),
    else the installed skillkern._C (found, not imported), else None."""
    dev = os.environ.get("SKILLKERN_EXTENSION_LIB")
    if dev:
        return dev
    try:
        spec = importlib.util.find_spec("skillkern._C")
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin else None


def _cuobjdump() -> str | None:
    return mc.tool("cuobjdump")


# ----------------------------------------------------------------------------- parsing the dump

_FIELD = re.compile(r"([A-Z]+(?:\[\d+\])?):(\d+)")
_HEX = re.compile(r"0x[0-9a-fA-F]+")


def _local_bytes(ops: list[str]) -> tuple[int, int, int]:
    """(STL count, LDL count, their bytes) of a kernel's opcodes."""
    stl = ldl = nbytes = 0
    for op in ops:
        parts = op.split(".")
        if parts[0] not in ("STL", "LDL"):
            continue
        if parts[0] == "STL":
            stl += 1
        else:
            ldl += 1
        nbytes += next((_LOCAL_WIDTH[p] for p in parts[1:] if p in _LOCAL_WIDTH), 4)
    return stl, ldl, nbytes


def _sass_facts(lines: list[str]) -> dict:
    ops = mc.opcodes("".join(lines))
    m = mc.mix(ops)
    stl, ldl, local = _local_bytes(ops)
    return dict(mma=m.mma, mma_shape=m.mma_shape, mma_input=m.mma_input, loads=m.loads,
                counts=dict(m.counts, STL=stl, LDL=ldl), local_inst_bytes=local, instructions=len(ops))


def parse_dump(lines) -> list[dict]:
    """Per-kernel facts from the text of `cuobjdump -res-usage -elf -sass` (any of the three may
    be absent): a list of dicts with name (mangled), arch ("sm_90"), source (the cubin's
    identifier), res ({"REG": .., "STACK": .., "SHARED": .., "LOCAL": ..}), attrs (MAX_THREADS,
    REQNTID, MAXREG_COUNT as lists of ints), reserved_smem (bytes of the driver reservation that
    SHARED includes) and, where SASS was given, the instruction facts (_sass_facts)."""
    cubins = []  # [(header dict, {name: facts})]
    mode = None
    head = funcs = None
    info_fn = attr = sass_fn = None
    sass_lines: list[str] = []

    def fn(name):
        return funcs.setdefault(name, dict(name=name, res={}, attrs={}))

    def flush_sass():
        nonlocal sass_fn, sass_lines
        if sass_fn is not None:
            fn(sass_fn).update(_sass_facts(sass_lines))
        sass_fn, sass_lines = None, []

    for line in lines:
        if line.startswith("Fatbin "):  # a new embedded image: "Fatbin elf code:" (or ptx code, skipped)
            flush_sass()
            mode = "head" if line.startswith("Fatbin elf") else None
            if mode:
                head, funcs = {"arch": None, "source": None, "reserved": False}, {}
                cubins.append((head, funcs))
            info_fn = attr = None
            continue
        if mode is None:
            continue
        if line.startswith("Resource usage:"):  # the blocks of one image, in whatever order they come
            flush_sass()
            mode, info_fn = "res", None
            continue
        stripped = line.strip()
        if stripped.startswith("code for sm_"):
            mode = "sass"
            continue
        if mode == "sass":
            if stripped.startswith("Function : "):
                flush_sass()
                sass_fn = stripped[len("Function : "):]
            elif sass_fn is not None:
                sass_lines.append(line)
            continue
        if mode == "res":
            if stripped.startswith("Function ") and stripped.endswith(":"):
                info_fn = stripped[len("Function "):-1]
            elif info_fn is not None and _FIELD.match(stripped):
                fn(info_fn)["res"] = {k: int(v) for k, v in _FIELD.findall(stripped)}
                info_fn = None
            continue
        # the header lines and the ELF dump
        if line.startswith("arch = "):
            head["arch"] = line.split("=", 1)[1].strip()
        elif line.startswith("identifier = "):
            head["source"] = line.split("=", 1)[1].strip()
        elif line.startswith("."):  # a section starts: keep only .nv.info.<kernel>
            info_fn = line.split()[0][len(".nv.info."):] if line.startswith(".nv.info.") else None
            attr = None
        elif ".nv.reservedSmem" in line or ".nv.shared.reserved" in line:
            head["reserved"] = True
        elif info_fn is not None:
            if stripped.startswith("Attribute:"):
                attr = stripped.split(":", 1)[1].strip().removeprefix("EIATTR_")
            elif stripped.startswith("Value:") and attr in _ATTRS:
                fn(info_fn)["attrs"][attr] = [int(v, 16) for v in _HEX.findall(stripped)]
    flush_sass()
    out = []
    for head, funcs in cubins:
        for f in funcs.values():
            shared = f["res"].get("SHARED")
            reserved = _RESERVED_SMEM if head["reserved"] and shared is not None and shared >= _RESERVED_SMEM else 0
            out.append(dict(f, arch=head["arch"], source=head["source"], reserved_smem=reserved))
    return out


# ----------------------------------------------------------------------------- names

def demangle(names: list[str]) -> list[str]:
    """c++filt / cu++filt of each name (one process); the mangled names when neither is found."""
    exe = mc.tool("cu++filt") or mc.tool("c++filt")
    if exe is None or not names:
        return list(names)
    proc = subprocess.run([exe], input="\n".join(names) + "\n", capture_output=True, text=True)
    out = proc.stdout.splitlines()
    return out if proc.returncode == 0 and len(out) == len(names) else list(names)


def _split_top(s: str) -> list[str]:
    """Split template arguments at the commas outside <...>."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += (ch == "<") - (ch == ">")
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + [cur.strip()] if cur.strip() else parts


def _short_type(arg: str) -> str:
    arg = re.sub(r"\b\w+::", "", arg)  # namespaces
    for long, short in sorted(_TYPES.items(), key=lambda kv: -len(kv[0])):
        arg = re.sub(rf"(?<![\w]){re.escape(long)}(?![\w])", short, arg)
    return arg


def split_name(demangled: str) -> tuple[str, str, list[str]]:
    """(namespace path, function name, template arguments (shortened)) of a demangled kernel
    signature such as `void skillkern::ffn::(anonymous namespace)::_skill_up_fwd_kernel<__half, 1>(...)`.
    A name that is not demangled comes back whole with no arguments."""
    s = demangled.replace("(anonymous namespace)::", "")
    if s.startswith("void "):
        s = s[len("void "):]
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch == "<") - (ch == ">")
        if ch == "(" and depth == 0:
            s = s[:i]
            break
    lt = s.find("<")
    qual, args = (s[:lt], _split_top(s[lt + 1:s.rfind(">")])) if lt >= 0 else (s, [])
    scope, _, name = qual.rpartition("::")
    args = [_short_type(a) for a in args]
    if args:  # a nested config's copy of the element type (FwdCfg<bf16, 128, ...> -> FwdCfg<128, ...>)
        args = [args[0]] + [a.replace(f"<{args[0]}, ", "<") for a in args[1:]]
    return scope, name, args


def cutlass_name(mangled: str) -> tuple[str, list[str]] | None:
    """(a readable name, its config) of one of the CUTLASS grouped GEMMs of
    csrc/skill_ffn/sm90_grouped.cu, read from markers in the mangled name (the demanglers give
    up on names this long), or None for any other kernel: cutlass_grouped_up (GEMM1, its
    activation epilogue; also the backward's recompute), cutlass_grouped_down (GEMM2, the slot
    scale), cutlass_grouped_dgrad (the backward's G and dX) or cutlass_grouped_wgrad (dW1, dW2),
    the element type and the schedule."""
    if not (mangled.startswith("_ZN7cutlass13device_kernel") and "GemmUniversal" in mangled):
        return None
    markers = (("SkillAct", "up"), ("multiplies", "down"), ("DgradStore", "dgrad"), ("WgradStore", "wgrad"))
    which = next((w for m, w in markers if m in mangled), "gemm")
    dtype = "bf16" if "bfloat16_t" in mangled else "fp16" if "half_t" in mangled else "?"
    sched = "cooperative" if "Cooperative" in mangled else "pingpong" if "Pingpong" in mangled else "?"
    return f"cutlass_grouped_{which}", [dtype, sched]


def _op_of(scope: str, name: str, source: str | None) -> str | None:
    parts = (source or "").replace("\\", "/").split("/")
    folder = parts[-2] if len(parts) >= 2 else ""
    if "route" in name or (parts[-1].startswith("route.") and folder == "skill_ffn"):
        return "skill_route"
    if folder in _OPS:
        return _OPS[folder]
    return _NAMESPACE_OPS.get(scope.rpartition("::")[2])


def _phase_of(name: str, source: str | None) -> str | None:
    """fwd / bwd / route from the kernel's name, else from its source file's name, else None.
    The CUTLASS GEMMs (cutlass_name): up and down are the forward's, dgrad and wgrad the backward's."""
    if name.startswith("cutlass_grouped_"):
        return "bwd" if name.endswith("grad") else "fwd"
    stem = os.path.basename(source or "").split(".")[0]
    for text in (f"_{name.lower()}_", f"_{stem}_"):
        if "route" in text or "_scan_" in text:
            return "route"
        for tag in ("fwd", "bwd"):
            if f"_{tag}_" in text:
                return tag
    return None


def _source_rel(source: str | None) -> str | None:
    if not source:
        return None
    s = source.replace("\\", "/")
    return s[s.rfind("csrc/"):] if "csrc/" in s else os.path.basename(s)


# ----------------------------------------------------------------------------- running cuobjdump

def archs_in(lib: str) -> list[str]:
    """The sm_XX of every cubin in the library (`cuobjdump -lelf`)."""
    proc = subprocess.run([_cuobjdump(), "-lelf", lib], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cuobjdump -lelf {lib} failed: {proc.stderr.strip()[-2000:]}")
    return sorted(set(re.findall(r"\.(sm_\d+[a-z]?)\.cubin", proc.stdout)))


def dump_facts(lib: str, sm: str) -> list[dict]:
    """parse_dump of one streamed `cuobjdump -arch <sm> -res-usage -elf -sass <lib>` run."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([_cuobjdump(), "-arch", sm, "-res-usage", "-elf", "-sass", lib],
                                stdout=subprocess.PIPE, stderr=err, text=True, errors="replace")
        try:
            facts = parse_dump(proc.stdout)
        finally:
            proc.stdout.close()
            rc = proc.wait()
        if rc != 0:
            err.seek(0)
            raise RuntimeError(f"cuobjdump -arch {sm} {lib} failed (rc {rc}): "
                               f"{err.read().decode(errors='replace').strip()[-2000:]}")
    names = [f["name"] for f in facts]
    for f, dem in zip(facts, demangle(names)):
        f["demangled"] = dem
    return facts


def _cached_facts(lib: str, sm: str) -> list[dict]:
    st = os.stat(lib)
    key = hashlib.sha256(
        f"{_FORMAT}|{mc.FACTS_VERSION}|{os.path.realpath(lib)}|{st.st_mtime_ns}|{st.st_size}|{sm}".encode())
    return mc.cached(f"extension-{key.hexdigest()[:24]}", lambda: dump_facts(lib, sm))


# ----------------------------------------------------------------------------- records

def record_of(f: dict, cc: int, gpu: str | None = None) -> dict:
    """One kernel record (the keys of inspect.KERNEL_KEYS, plus the extension's own) from parse_dump's facts."""
    scope, name, targs = split_name(f.get("demangled") or f["name"])
    named = cutlass_name(f["name"])
    if named:
        scope, (name, targs) = "cutlass", named
    dims = f["attrs"].get("MAX_THREADS") or f["attrs"].get("REQNTID")
    threads = dims[0] * dims[1] * dims[2] if dims and len(dims) == 3 else None
    warps = -(-threads // 32) if threads else None
    res = f["res"]
    regs = res.get("REG")
    smem = res.get("SHARED", 0) - f.get("reserved_smem", 0) if "SHARED" in res else None
    if warps and regs is not None and smem is not None and cc in mc.LIMITS:
        occ = mc.occupancy(cc, regs, smem, warps)
    else:
        occ = dict(blocks_per_sm=None, warps_per_sm=None, occupancy_limiter=None)
    config = ", ".join(targs + ([f"{warps} warps"] if warps else []))
    mma = f.get("mma")
    return dict(op=_op_of(scope, name, f.get("source")), phase=_phase_of(name, f.get("source")), kernel=name,
                config=config, arch=cc, gpu=gpu, backend="cuda", tuned=False, chosen=None, pruned=False,
                regs=regs, spill_bytes=f.get("local_inst_bytes"), spill_source=SPILL_SOURCE,
                stack_bytes=res.get("STACK"), local_bytes=res.get("LOCAL"), smem_bytes=smem, smem_dynamic=None,
                smem_reserved=f.get("reserved_smem", 0), smem_note=SMEM_NOTE,
                smem_limit=mc.LIMITS[cc]["smem_block"] if cc in mc.LIMITS else None, threads=threads,
                maxreg=(f["attrs"].get("MAXREG_COUNT") or [None])[0], **occ, mma=mma, mma_shape=f.get("mma_shape"),
                wgmma_pipelined=None, loads=f.get("loads"), tma=f["loads"] == "tma" if f.get("loads") else None,
                sass_counts=f.get("counts"), programs=None, flops=None, hbm_bytes=None, l2_bytes=None,
                predicted_ms=None, limiter=None, note=NOTE, source=_source_rel(f.get("source")),
                sm=f.get("arch"), mangled=f["name"])


def extension_records(arch: int = 90, gpu: str | None = None, lib: str | None = None) -> tuple[list[dict], str | None]:
    """(records, reason): one record per __global__ kernel of the extension's sm_<arch> code
    (sm_<arch>a when the library has that instead), sorted by op, phase, kernel, config.
    `lib`: the .so to read (default: extension_path()). reason is None when the library was read;
    otherwise records is [] and reason says what is missing. A library that cuobjdump cannot read
    raises RuntimeError (that is a failure, not an absence)."""
    lib = lib or extension_path()
    if not lib or not os.path.exists(lib):
        where = f" ({lib} does not exist)" if lib else ""
        return [], (f"the CUDA extension skillkern._C is not built{where}: build it with nvcc present "
                    "(`make build`; TORCH_CUDA_ARCH_LIST picks the archs, default '8.0;9.0')")
    if _cuobjdump() is None:
        return [], "cuobjdump not found (it ships with triton's nvidia backend, or set CUDA_HOME)"
    present = archs_in(lib)
    sm = next((s for s in (f"sm_{arch}a", f"sm_{arch}") if s in present), None)
    if sm is None:
        return [], (f"the extension {os.path.basename(lib)} has no sm_{arch} code (it has "
                    f"{', '.join(present) or 'no device code'}; rebuild with TORCH_CUDA_ARCH_LIST including "
                    f"{arch // 10}.{arch % 10})")
    records = [record_of(f, arch, gpu) for f in _cached_facts(lib, sm)]
    records.sort(key=lambda r: (r["op"] or "", r["phase"] or "", r["kernel"], r["config"], r["source"] or ""))
    return records, None


def format_records(records: list[dict]) -> str:
    """The report table of extension_records' records."""
    if not records:
        return "== compiled extension: no kernels"
    r0 = records[0]
    lines = [f"== compiled extension ({r0['sm']}, {len(records)} kernels; {r0['smem_note']}; spill = {SPILL_SOURCE}; "
             f"{NOTE})",
             f"  {'op':16s} {'phase':5s} {'kernel':30s} {'config':30s} {'regs':>4s} {'spill':>5s} {'stack':>5s} "
             f"{'smem':>5s} {'blk/SM':>9s} {'mma':15s} {'loads':8s} {'HMMA':>5s} {'LDSM':>5s} {'MOVM':>5s} "
             f"{'LDS':>5s} {'LDGSTS':>6s}"]
    for r in records:
        c = r["sass_counts"] or {}
        occ = (f"{r['blocks_per_sm']:2d}x{r['warps_per_sm']:2d}w {r['occupancy_limiter'][:3]:3s}"
               if r["blocks_per_sm"] is not None else "        -")
        mma = r["mma"] if r["mma"] in ("none", None) else f"{r['mma']} {(r['mma_shape'] or '').split('.')[0]}"
        lines.append(f"  {r['op'] or '-':16s} {r['phase'] or '-':5s} {r['kernel'][:30]:30s} {r['config'][:30]:30s} "
                     f"{r['regs'] or 0:4d} {r['spill_bytes'] or 0:5d} {r['stack_bytes'] or 0:5d} "
                     f"{r['smem_bytes'] or 0:5d} {occ} {str(mma)[:15]:15s} {str(r['loads']):8s} "
                     f"{c.get('HMMA', 0):5d} {c.get('LDSM', 0):5d} {c.get('MOVM', 0):5d} {c.get('LDS', 0):5d} "
                     f"{c.get('LDGSTS', 0):6d}")
    return "\n".join(lines)
