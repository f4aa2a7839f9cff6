"""skillkern.bench.extension_code: the compiled extension's kernels in `skillkern inspect`.

The parser is tested on a fixed sample of cuobjdump's -elf / -res-usage / -sass text (no library
needed); the built extension's sm_90 and sm_80 code must give a record for every __global__ kernel
in csrc/ (skipped only when the extension is not built); the absent paths give their reason.
"""
import glob
import os
import re

import pytest

from skillkern._backend import has_cuda_extension
from skillkern.bench import extension_code as E
from skillkern.bench import inspect as I
from skillkern.bench import machine_code as mc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GEMM = "_ZN9skillkern3ffn49_GLOBAL__N__e24ea770_10_ffn_bwd_cu_714a85e3_2244419_skill_wgrad_kernelI13__nv_bfloat16EEvPKT_S6_PKfPS4_S9_PKiSB_llibbbbbb"
GEMM_DEMANGLED = ("void skillkern::ffn::(anonymous namespace)::_skill_wgrad_kernel<__nv_bfloat16>(__nv_bfloat16 const*, "
                  "__nv_bfloat16 const*, float const*, __nv_bfloat16*, __nv_bfloat16*, int const*, int const*, long, "
                  "long, int, bool, bool, bool, bool, bool, bool)")
SCAN = "_ZN9skillkern40_GLOBAL__N__fe8a20ab_8_route_cu_528cc4c819_scan_chunks_kernelEPil"

# Excerpts of `cuobjdump -arch sm_90 -res-usage -elf -sass` of the built extension (two cubins,
# instructions cut down), in the tool's own layout.
SAMPLE = f"""
Fatbin elf code:
================
arch = sm_90
code version = [1,8]
host = linux
compile_size = 64bit
identifier = /build/csrc/skill_ffn/ffn_bwd.cu

64-bit ELF: type=ET_EXEC, ABI=8, sm=90, toolkit=13.0, flags=0xa005a04
Sections:
Index Offset   Size ES Align                      Type    Flags Link     Info Name
   50 5db600      0  0  1                       NOBITS        3    0        0 .nv.shared.reserved.0
.section .symtab
 0x5               0             0x4     0x21        0      0     .nv.reservedSmem.offset0

.nv.info
\t<0x1>
\tAttribute:\tEIATTR_REGCOUNT
\tFormat:\tEIFMT_SVAL
\tValue:\tfunction: {GEMM}(0x6c)\tregister count: 32

.nv.info.{GEMM}
\t<0x1>
\tAttribute:\tEIATTR_CUDA_API_VERSION
\tFormat:\tEIFMT_SVAL
\tValue:\t0x82 
\t<0x9>
\tAttribute:\tEIATTR_MAXREG_COUNT
\tFormat:\tEIFMT_HVAL
\tValue:\t0xff
\t<0x12>
\tAttribute:\tEIATTR_MAX_THREADS
\tFormat:\tEIFMT_SVAL
\tValue:\t0x100 0x1 0x1 
\t<0x13>
\tAttribute:\tEIATTR_WMMA_USED
\tFormat:\tEIFMT_NVAL

.section .debug_line
\tAttribute:\tEIATTR_MAX_THREADS
\tValue:\t0x400 0x1 0x1 

Resource usage:
 Common:
  GLOBAL:28 CONSTANT[4]:224
 Function {GEMM}:
  REG:169 STACK:16 SHARED:2432 LOCAL:0 CONSTANT[2]:8 CONSTANT[0]:434 TEXTURE:0 SURFACE:0 SAMPLER:0

\tcode for sm_90
\t.target\tsm_90

\t\tFunction : {GEMM}
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                                            /* 0x00000a00ff017b82 */
                                                                                                     /* 0x000fe20000000800 */
        /*1940*/                   LDGSTS.E.BYPASS.128 [R17], desc[UR8][R14.64], P0 ;                /* 0x000000000e117fae */
        /*1b20*/                   LDGSTS.E.BYPASS.128 [R17], desc[UR8][R14.64], P0 ;                /* 0x000000000e117fae */
        /*1c00*/               @P0 LDG.E.U16.CONSTANT R10, desc[UR20][R8.64] ;                       /* 0x00000014080a0981 */
        /*1810*/                   LDS.64 R14, [R14] ;                                               /* 0x000000000e0e7984 */
        /*1fca0*/                   MOVM.16.MT88 R142, R142 ;                                        /* 0x000000008e8e723a */
        /*1fcb0*/                   MOVM.16.MT88 R143, R143 ;                                        /* 0x000000008f8f723a */
        /*dc10*/                   LDSM.16.M88.4 R72, [R72] ;                                        /* 0x000000004848783b */
        /*dfb0*/                   HMMA.16816.F32.BF16 R52, R64.reuse, R110, R52 ;                   /* 0x0000006e4034723c */
        /*dfc0*/                   HMMA.16816.F32.BF16 R56, R64.reuse, R108, R56 ;                   /* 0x0000006c4038723c */
        /*00a0*/                   STL.64 [R1+0x28], R6 ;                                            /* 0x0000280601007387 */
        /*04a0*/                   LDL R10, [R1+0x28] ;                                              /* 0x00002800010a7983 */
        /*0730*/                   EXIT ;                                                            /* 0x000000000000794d */
\t\t..........



Fatbin elf code:
================
arch = sm_90
code version = [1,8]
identifier = /build/csrc/skill_ffn/route.cu

Resource usage:
 Function {SCAN}:
  REG:27 STACK:0 SHARED:32 LOCAL:0 CONSTANT[0]:368 TEXTURE:0 SURFACE:0 SAMPLER:0

\tcode for sm_90
\t\tFunction : {SCAN}
        /*0010*/                   LDG.E R3, desc[UR4][R2.64] ;                                      /* 0x0000000402037981 */
        /*0020*/                   EXIT ;                                                            /* 0x000000000000794d */
"""


def test_parse_dump_sample():
    facts = {f["name"]: f for f in E.parse_dump(SAMPLE.splitlines(keepends=True))}
    assert set(facts) == {GEMM, SCAN}
    g = facts[GEMM]
    assert g["arch"] == "sm_90" and g["source"] == "/build/csrc/skill_ffn/ffn_bwd.cu"
    assert g["res"]["REG"] == 169 and g["res"]["STACK"] == 16 and g["res"]["SHARED"] == 2432
    # the global .nv.info's per-function REGCOUNT and the debug section's text are not the kernel's attributes
    assert g["attrs"] == {"MAXREG_COUNT": [0xff], "MAX_THREADS": [256, 1, 1]}
    assert g["reserved_smem"] == 1024  # the sm_90 cubin declares .nv.reservedSmem: SHARED includes it
    assert g["mma"] == "mma.sync" and g["mma_shape"] == "16816.F32.BF16" and g["loads"] == "cp.async"
    c = g["counts"]
    assert (c["HMMA"], c["LDSM"], c["MOVM"], c["LDS"], c["LDGSTS"], c["LDG"], c["STL"], c["LDL"]) == (2, 1, 2, 1, 2, 1, 1, 1)
    assert g["local_inst_bytes"] == 8 + 4  # STL.64 + LDL (32-bit)
    s = facts[SCAN]
    assert s["attrs"] == {} and s["reserved_smem"] == 0  # its cubin declares no reservation
    assert s["mma"] == "none" and s["loads"] == "ldg" and s["instructions"] == 2


def test_record_from_sample():
    facts = {f["name"]: f for f in E.parse_dump(SAMPLE.splitlines(keepends=True))}
    g = dict(facts[GEMM], demangled=GEMM_DEMANGLED)
    r = E.record_of(g, 90, "h100")
    assert set(I.KERNEL_KEYS) <= set(r)
    assert (r["op"], r["phase"], r["kernel"]) == ("skill_ffn", "bwd", "_skill_wgrad_kernel")
    assert r["config"] == "bf16, 8 warps"
    assert (r["regs"], r["stack_bytes"], r["spill_bytes"]) == (169, 16, 12)
    assert (r["smem_bytes"], r["smem_reserved"]) == (2432 - 1024, 1024)
    # 169 registers -> 5,632 per warp (units of 256) -> 11 warps of 64K -> one 8-warp block
    assert (r["threads"], r["blocks_per_sm"], r["warps_per_sm"], r["occupancy_limiter"]) == (256, 1, 8, "regs")
    assert r["mma"] == "mma.sync" and r["wgmma_pipelined"] is None and r["tma"] is False
    assert r["predicted_ms"] is None and r["chosen"] is None and r["pruned"] is False and r["note"] == E.NOTE
    assert r["smem_dynamic"] is None and r["smem_note"].startswith("static only")
    assert r["smem_limit"] == mc.LIMITS[90]["smem_block"] and r["source"] == "csrc/skill_ffn/ffn_bwd.cu"
    # no demangler output and no launch bounds: the mangled name's short form, no occupancy
    s = E.record_of(facts[SCAN], 90)
    assert (s["op"], s["phase"]) == ("skill_route", "route")
    assert s["threads"] is None and s["blocks_per_sm"] is None and s["config"] == ""
    text = E.format_records([r, s])
    assert "_skill_wgrad_kernel" in text and "mma.sync 16816" in text


@pytest.mark.parametrize("demangled, want", [
    (GEMM_DEMANGLED, ("skillkern::ffn", "_skill_wgrad_kernel", ["bf16"])),
    ("void skillkern::toksim::(anonymous namespace)::_token_similarity_fwd_kernel<__half, skillkern::toksim::"
     "(anonymous namespace)::FwdCfg<__half, 256, 64, 8, 32> >(skillkern::toksim::FwdProblem, int, long, long)",
     ("skillkern::toksim", "_token_similarity_fwd_kernel", ["fp16", "FwdCfg<256, 64, 8, 32>"])),
    ("void skillkern::tokred::token_reduce_fwd_kernel<float, 4, 2>(skillkern::tokred::FwdParams)",
     ("skillkern::tokred", "token_reduce_fwd_kernel", ["fp32", "4", "2"])),
    ("skillkern::(anonymous namespace)::_scan_chunks_kernel(int*, long)", ("skillkern", "_scan_chunks_kernel", [])),
    (SCAN, ("", SCAN, [])),  # not demangled: kept whole
])
def test_split_name(demangled, want):
    assert E.split_name(demangled) == want


def test_demangle():
    got = E.demangle([GEMM, SCAN])
    if mc.tool("cu++filt") or mc.tool("c++filt"):
        assert got == [GEMM_DEMANGLED, "skillkern::(anonymous namespace)::_scan_chunks_kernel(int*, long)"]
    else:
        assert got == [GEMM, SCAN]


def test_no_extension_gives_reason(tmp_path, monkeypatch):
    missing = str(tmp_path / "_C.so")
    records, reason = E.extension_records(90, lib=missing)
    assert records == [] and "not built" in reason and missing in reason
    monkeypatch.setenv("SKILLKERN_EXTENSION_LIB", missing)
    assert E.extension_path() == missing
    records, reason = E.extension_records(90)
    assert records == [] and "not built" in reason
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\x7fELF")
    monkeypatch.setattr(E, "_cuobjdump", lambda: None)
    records, reason = E.extension_records(90, lib=str(lib))
    assert records == [] and "cuobjdump not found" in reason


# ----------------------------------------------------------------------------- the built extension

needs_extension = pytest.mark.skipif(not has_cuda_extension(), reason="the CUDA extension skillkern._C is not built")
_GLOBAL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\((?:[^()]|\([^()]*\))*\)\s+)?(\w+)\s*\(")
# the GEMM kernels: wmma / mma.sync on 16-bit inputs, cp.async-fed
GEMMS = ("_skill_up_fwd_kernel", "_skill_down_kernel", "_skill_up_bwd_kernel", "_skill_wgrad_kernel",
         "_token_similarity_fwd_kernel", "_token_similarity_bwd_kernel", "token_reduce_fwd_kernel",
         "token_reduce_bwd_kernel")


def _source_kernels() -> set:
    names = set()
    for path in glob.glob(os.path.join(ROOT, "csrc", "*", "*.cu*")):
        if os.sep + "emu" + os.sep not in path:
            with open(path) as f:
                names.update(_GLOBAL.findall(f.read()))
    return names


@needs_extension
@pytest.mark.parametrize("arch", [90, 80])
def test_extension_records(arch):
    records, reason = E.extension_records(arch)
    assert reason is None, reason
    expected = _source_kernels()
    assert {"_skill_up_fwd_kernel", "_route_hist_kernel", "token_reduce_bwd_kernel"} <= expected  # the scan works
    if E.extension_records(90)[1] is not None:  # no sm_90 in this build: sm90_grouped.cu is stubs
        expected -= {"_grouped_args_kernel", "_zero_empty_skills_kernel"}
    assert expected <= {r["kernel"] for r in records}
    for r in records:
        assert set(I.KERNEL_KEYS) <= set(r)
        assert r["arch"] == arch and r["sm"] in (f"sm_{arch}", f"sm_{arch}a")
        assert r["op"] in ("skill_ffn", "skill_route", "token_similarity", "token_reduce"), r
        assert r["regs"] > 0 and r["threads"] and r["blocks_per_sm"] >= 1, r
        if r["kernel"].startswith("cutlass_grouped_"):  # test_sm90_grouped_gemms
            continue
        assert r["mma"] in ("mma.sync", "none")  # wgmma only in the CUTLASS GEMMs
        if r["kernel"] in GEMMS and r["config"].startswith(("bf16", "fp16")):
            assert r["mma"] == "mma.sync" and r["mma_shape"].startswith("16816"), r
            assert r["loads"] == "cp.async" and r["sass_counts"]["HMMA"] > 0, r
    phases = {(r["kernel"], r["phase"]) for r in records}
    assert {("_skill_up_fwd_kernel", "fwd"), ("_skill_up_bwd_kernel", "bwd"), ("_skill_wgrad_kernel", "bwd"),
            ("_route_scatter_kernel", "route"), ("_token_similarity_bwd_kernel", "bwd"),
            ("token_reduce_fwd_kernel", "fwd")} <= phases


@needs_extension
def test_sm90_grouped_gemms():
    """The skill FFN's sm_90 GEMMs (CUTLASS ptr-array grouped, csrc/skill_ffn/sm90_grouped.cu;
    built whenever the arch list has 9.0): wgmma (HGMMA) fed by TMA (UTMALDG), both dtypes and
    all four GEMMs, no spill and no stack."""
    records, reason = E.extension_records(90)
    if reason is not None:
        pytest.skip(reason)
    grouped = [r for r in records if r["kernel"].startswith("cutlass_grouped_")]
    assert sorted((r["kernel"], r["config"]) for r in grouped) == [
        (f"cutlass_grouped_{g}", f"{t}, cooperative, 12 warps")
        for g in ("dgrad", "down", "up", "wgrad") for t in ("bf16", "fp16")]
    for r in grouped:
        phase = "bwd" if r["kernel"].endswith("grad") else "fwd"
        assert (r["op"], r["phase"], r["mma"], r["loads"]) == ("skill_ffn", phase, "wgmma", "tma"), r
        assert r["sass_counts"]["HGMMA"] > 0 and r["sass_counts"]["UTMALDG"] > 0, r
        assert r["spill_bytes"] == 0 and r["stack_bytes"] == 0 and r["local_bytes"] == 0, r
    # the sm_80 code of the same file: CUTLASS's placeholders (no MMA), never launched
    for r in E.extension_records(80)[0]:
        if r["kernel"].startswith("cutlass_grouped_"):
            assert r["mma"] == "none" and r["sass_counts"]["HMMA"] == 0, r


def test_cutlass_name():
    up = ("_ZN7cutlass13device_kernelINS_4gemm6kernel13GemmUniversalINS1_17GroupProblemShapeIN4cute5tupleIJiiiEEEE"
          "NS_10bfloat16_tE43KernelPtrArrayTmaWarpSpecializedCooperative8SkillAct")
    assert E.cutlass_name(up) == ("cutlass_grouped_up", ["bf16", "cooperative"])
    down = up.replace("10bfloat16_t", "6half_t").replace("8SkillAct", "10multiplies")
    assert E.cutlass_name(down) == ("cutlass_grouped_down", ["fp16", "cooperative"])
    for which in ("dgrad", "wgrad"):
        tagged = up.replace("8SkillAct", f"10{which.capitalize()}Store")
        assert E.cutlass_name(tagged) == (f"cutlass_grouped_{which}", ["bf16", "cooperative"])
    assert E.cutlass_name(GEMM) is None and E.cutlass_name(SCAN) is None


@needs_extension
def test_extension_cached_and_missing_arch(monkeypatch):
    first, _ = E.extension_records(90)

    def no_dump(*a):
        raise AssertionError("cuobjdump ran again for a cached (library, arch)")

    monkeypatch.setattr(E, "dump_facts", no_dump)
    again, reason = E.extension_records(90)
    assert reason is None and again == first
    records, reason = E.extension_records(100)
    assert records == [] and "no sm_100 code" in reason


def test_sm90_build_arch_list(monkeypatch):
    """setup.py: 9.0 in the arch list builds as sm_90a with the CUTLASS headers (a "+PTX" entry
    keeps compute_90 PTX beside it); without 9.0 nothing changes; 9.0 without the headers is a
    clear error, not a silent build without the sm_90 GEMMs."""
    import setup
    monkeypatch.setattr(setup, "cutlass_include", lambda: "/inc")
    assert setup.sm90_build("8.0;9.0") == ("8.0;9.0a", ["-DSKILLKERN_SM90_GROUPED", "-isystem", "/inc"])
    assert setup.sm90_build("9.0+PTX")[0] == "9.0a;9.0+PTX"
    assert setup.sm90_build("8.0 8.6") == ("8.0 8.6", [])
    monkeypatch.setattr(setup, "cutlass_include", lambda: None)
    with pytest.raises(SystemExit, match="nvidia-cutlass"):
        setup.sm90_build("8.0;9.0")
