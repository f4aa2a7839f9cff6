"""`skillkern inspect` (skillkern/bench/inspect.py): every kernel an op call launches, at every
autotune config, compiled for sm_90 and sm_80 with the JIT's own specialization (no GPU), its
machine-code facts, the prune rule and the model.

Compiling needs a process without TRITON_INTERPRET (conftest sets it for this one), so the
compiling tests run `python -m skillkern.cli inspect` in a child process and read its JSON."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from skillkern.bench import machine_code as mc
from skillkern.bench import roofline

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
ENV["PYTHONPATH"] = os.pathsep.join([str(ROOT), ENV.get("PYTHONPATH", "")])
needs_tools = pytest.mark.skipif(mc.tool("ptxas") is None or mc.tool("cuobjdump") is None,
                                 reason="ptxas / cuobjdump not found (they ship with triton's nvidia backend)")


def inspect_rows(tmp: Path, *argv: str, env: dict | None = None) -> list[dict]:
    out = tmp / f"rows-{abs(hash(argv))}.jsonl"
    proc = subprocess.run([sys.executable, "-m", "skillkern.cli", "inspect", "--no-extension", "--all-configs",
                           "--json", str(out), *argv], cwd=ROOT, capture_output=True, text=True,
                          env=dict(env or ENV, SKILLKERN_RESULTS_DIR=str(tmp)), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def kernels(rows):
    return [r for r in rows if r["kind"] == "kernel"]


def check_records(rows: list[dict], ops: set, arch: int) -> None:
    """The contract of a report: an op-call record per shape with a prediction, both phases,
    every config compiled, one priced config per launch, pruned exactly when it does not fit."""
    from skillkern.bench.inspect import CALL_KEYS, KERNEL_KEYS

    calls = [r for r in rows if r["kind"] == "call"]
    assert {c["op"] for c in calls} == ops
    assert all(set(CALL_KEYS) <= set(c) for c in calls)
    assert all(set(KERNEL_KEYS) <= set(r) for r in kernels(rows))
    for c in calls:
        assert c["arch"] == arch and c["predicted_ms"] > 0 and 0 < c["predicted_pct_of_peak"] < 100, c
    ks = kernels(rows)
    for op in ops:
        assert {r["phase"] for r in ks if r["op"] == op} == {"fwd", "bwd"}, op
    sites = {}
    for r in ks:
        assert r["regs"] > 0 and r["arch"] == arch and r["smem_limit"] == mc.LIMITS[arch]["smem_block"], r
        assert r["flops"] >= 0 and 0 < r["hbm_bytes"] <= r["l2_bytes"] * 1.0001, r
        sites.setdefault((r["op"], r["shape"], r["launch"]), []).append(r)
    for group in sites.values():
        if group[0]["tuned"]:  # the prune rule: what fits; where nothing does, the least spilling in smem
            # first, a launch that cannot take TMA (TMA_OK False: sm_80, unaligned) drops the configs
            # asking for it ("... tma" configs compiled without TMA loads)
            cand = [r for r in group if not (r["config"].endswith(" tma") and not r["tma"])] or group
            fit = [r for r in cand if r["fits"]] or [r for r in cand if r["smem_bytes"] <= r["smem_limit"]]
            least = min(r["spill_bytes"] for r in fit)
            assert [not r["pruned"] for r in group] == [r in fit and r["spill_bytes"] == least for r in group], group
        chosen = [r for r in group if r["chosen"]]
        assert len(chosen) == 1 and not chosen[0]["pruned"] and chosen[0]["predicted_ms"] > 0, group


def spilling(rows):
    return [(r["kernel"], r["config"], r["spill_bytes"], r["smem_bytes"]) for r in kernels(rows)
            if r["chosen"] and not r["fits"]]


# ----------------------------------------------------------------------------- compiled kernels

@pytest.fixture(scope="module")
def sm90(tmp_path_factory):
    return inspect_rows(tmp_path_factory.mktemp("sm90"), "--arch", "90")


@pytest.fixture(scope="module")
def sm80(tmp_path_factory):
    return inspect_rows(tmp_path_factory.mktemp("sm80"), "--arch", "80")


@needs_tools
@pytest.mark.parametrize("arch", [90, 80])
def test_every_config_compiles_at_the_goal_shapes(arch, request):
    rows = request.getfixturevalue(f"sm{arch}")
    check_records(rows, {"skill_ffn", "token_similarity", "token_reduce", "maxsim"}, arch)
    ks = kernels(rows)
    ffn = [r for r in ks if r["op"] == "skill_ffn"]
    assert sum(r["tuned"] for r in ffn) >= 20  # every autotune config of every skill-FFN launch
    gemms = [r for r in ffn if r["kernel"].startswith("_skill_")]  # not routing, gathers, zeroing
    assert len({r["kernel"] for r in gemms}) == 4
    assert all(r["mma"] == ("wgmma" if arch == 90 else "mma.sync") for r in gemms), gemms
    assert all(r["loads"] in ("cp.async", "tma") for r in gemms)
    if arch == 90:  # the 128x256 up_fwd config spills on sm_90 (shared/FINDINGS.md): pruned, never priced
        assert any(r["pruned"] and r["spill_bytes"] > 0 for r in ffn)
    # TMA where the config asks for it on sm_90 (an unpruned choice for each GEMM), never on
    # sm_80 (those configs are dropped there)
    for name in ("_skill_up_fwd_kernel", "_skill_down_kernel", "_skill_up_bwd_kernel", "_skill_wgrad_kernel"):
        tma = [r for r in gemms if r["kernel"] == name and r["config"].endswith(" tma")]
        assert tma and all(r["tma"] == (arch == 90) for r in tma), name
        assert any(not r["pruned"] for r in tma) == (arch == 90), name


@needs_tools
@pytest.mark.parametrize("arch", [90, 80])
def test_skill_ffn_priced_configs_fit(arch, request):
    rows = [r for r in request.getfixturevalue(f"sm{arch}") if r.get("op") == "skill_ffn"]
    assert spilling(rows) == []


@needs_tools
def test_token_reduce_priced_configs_fit(sm90):
    assert spilling([r for r in sm90 if r.get("op") == "token_reduce"]) == []


@needs_tools
def test_token_similarity_priced_configs_fit(sm90):
    assert spilling([r for r in sm90 if r.get("op") == "token_similarity"]) == []


@needs_tools
def test_maxsim_priced_configs_fit_and_use_wgmma(sm90):
    rows = [r for r in sm90 if r.get("op") == "maxsim"]
    assert spilling(rows) == []
    assert all("wgmma" in r["mma"] for r in kernels(rows) if r["kernel"] != "_maxsim_dq_kernel"), rows


VARIANTS = [  # (op, options): dtypes, activations, masks, LayerNorm paths and odd sizes
    ("skill_ffn", ("--activation", "swiglu")),
    ("skill_ffn", ("--recompute", "--shape", "T=4096,d=512,h=1024,k=2")),
    ("skill_ffn", ("--dtype", "fp32", "--no-bias", "--shape", "T=2048,d=256,h=512,k=2,routing=uniform")),
    ("skill_ffn", ("--dtype", "fp16", "--activation", "gelu_tanh", "--shape", "T=1000,d=200,h=300,E=5")),
    ("token_similarity", ("--dtype", "fp32", "--shape", "Bi=64,Bt=64,Ni=257,Nt=77,imin=100")),
    ("token_similarity", ("--dtype", "fp16", "--shape", "Bi=33,Bt=20,Ni=3000,Nt=200,tmin=1")),
    ("token_similarity", ("--shape", "Bi=20,Bt=33,Ni=40,Nt=300,imin=7")),  # roles exchanged
    ("maxsim", ("--dtype", "fp32", "--shape", "Bq=5,Nq=20,Bd=50,dmin=0,dmax=70,D=96,grad=1,qmin=3")),
    ("token_reduce", ("--dtype", "fp32", "--shape", "B=64,N=50,D=33,S=1,G=3,lmin=4")),
    ("token_reduce", ("--shape", "B=256,N=256,D=768,S=24,values=input")),
]


@needs_tools
@pytest.mark.parametrize("op,options", VARIANTS, ids=[f"{op}{' '.join(o)}" for op, o in VARIANTS])
def test_variants_compile_for_sm90(op, options, tmp_path):
    rows = inspect_rows(tmp_path, "--op", op, *options)
    check_records(rows, {op}, 90)


# ----------------------------------------------------------------------------- the prune rule

SPILL_SCRIPT = textwrap.dedent('''
    import json, torch, triton, triton.language as tl
    from skillkern.bench import inspect as I, roofline
    from skillkern.ops._common import autotune

    @triton.jit
    def _square_kernel(a_ptr, out_ptr, n, BLOCK: tl.constexpr):
        """out = a @ a for one BLOCK x BLOCK tile: a BLOCK=128 fp32 accumulator in 1 warp
        needs 512 registers per thread, so ptxas must spill; BLOCK=32 does not."""
        r = tl.arange(0, BLOCK)
        a = tl.load(a_ptr + r[:, None] * n + r[None, :])
        tl.store(out_ptr + r[:, None] * n + r[None, :], tl.dot(a, a))

    tuned = autotune(_square_kernel, [triton.Config({"BLOCK": 128}, num_warps=1),
                                      triton.Config({"BLOCK": 32}, num_warps=1)], key=["n"])
    a = torch.empty(128, 128, dtype=torch.float16)
    call = lambda: tuned[(1,)](a, a, 128)
    work = lambda args, grid, ctx: roofline.Work(2.0 * args["BLOCK"] ** 3, 1.0, 1.0)
    rows = I.profile_calls([("fwd", call)], {"_square_kernel": work}, {}, roofline.target_for(90))
    print(json.dumps([{k: r[k] for k in ("config", "spill_bytes", "fits", "pruned", "chosen")} for r in rows]))
''')


@needs_tools
def test_a_spilling_kernel_is_reported_and_pruned(tmp_path):
    script = tmp_path / "spill.py"
    script.write_text(SPILL_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["config"].split()[0]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert rows["128"]["spill_bytes"] > 0 and not rows["128"]["fits"] and rows["128"]["pruned"]
    assert not rows["128"]["chosen"]
    assert rows["32"]["spill_bytes"] == 0 and rows["32"]["fits"] and not rows["32"]["pruned"] and rows["32"]["chosen"]


def test_keep_fitting_rule():
    from skillkern.ops._common import keep_fitting

    cfgs = ["a", "b", "c", "d"]
    assert keep_fitting(cfgs, [(0, True), (8, True), (0, False), (0, True)], "k") == ["a", "d"]
    with pytest.warns(RuntimeWarning, match="k: every autotune config spills"):
        assert keep_fitting(cfgs, [(16, True), (8, True), (0, False), (8, True)], "k") == ["b", "d"]
    with pytest.raises(RuntimeError, match="k: none of its 4 autotune configs fits"):
        keep_fitting(cfgs, [(0, False)] * 4, "k")


def test_device_facts_on_a_gpu_faked():
    """What the prune function asks the device (faked here): spills from the loaded kernel, too
    much shared memory as OutOfResources, and a Triton without the API keeps the config."""
    from types import SimpleNamespace

    from triton.runtime.errors import OutOfResources

    from skillkern.ops._common import _device_facts

    def kernel(load):
        return SimpleNamespace(__name__="k", warmup=lambda *a, grid, **kw: SimpleNamespace(_init_handles=load,
                                                                                             n_spills=12))

    assert _device_facts(kernel(lambda: None), (), {}) == (12, True)

    def too_big():
        raise OutOfResources(300000, 232448, "shared memory")

    assert _device_facts(kernel(too_big), (), {}) == (0, False)
    with pytest.warns(RuntimeWarning, match="keeping it unpruned"):
        assert _device_facts(SimpleNamespace(__name__="k"), (), {}) == (0, True)


def test_every_autotuner_prunes_by_the_fit_rule():
    """Each Triton autotuner of the package goes through ops._common.autotune (its prune function)."""
    import importlib

    from triton.runtime.autotuner import Autotuner

    tuners = []
    for op in ("skill_ffn", "token_similarity", "token_reduce"):
        mod = importlib.import_module(f"skillkern.ops.{op}.triton_impl")
        tuners += [v for v in vars(mod).values() if isinstance(v, Autotuner)]
    assert tuners
    for t in tuners:
        assert t.early_config_prune is not None and t.early_config_prune.__name__ == "keep_fitting", t


# ----------------------------------------------------------------------------- parsers and model

PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k' for 'sm_90a'
ptxas info    : Function properties for k
    24 bytes stack frame, 16 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
ptxas warning : (C7515) Potential Performance Loss: wgmma.mma_async instructions are serialized due to the presence of Extern calls in the function 'k'.
"""

SASS = """
        /*0100*/                   LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R4.64] ;  /* 0x000000000403 */
        /*0110*/              @!P0 LDG.E.128 R8, desc[UR4][R6.64] ;                      /* 0x000000000608 */
        /*0120*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24, gsb0 ; /* 0x000000000824 */
        /*0130*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR12], R24 ;      /* 0x000000000c24 */
        /*0140*/               @P1 BAR.SYNC.DEFER_BLOCKING 0x0 ;                         /* 0x000000000000 */
"""


def test_ptxas_and_sass_parsers():
    res = mc.parse_ptxas(PTXAS_LOG)
    assert (res.regs, res.spill_bytes, res.stack_bytes, res.static_smem) == (168, 24, 24, 1024)
    assert res.wgmma_serialized.startswith("due to the presence of Extern calls")
    m = mc.mix(mc.opcodes(SASS))
    assert (m.mma, m.mma_shape, m.mma_input, m.loads) == ("wgmma", "64x128x16.F32.BF16", "BF16", "cp.async")
    assert m.counts["HGMMA"] == 2 and m.counts["LDG"] == 1 and m.counts["BAR"] == 1 and m.counts["HMMA"] == 0
    assert mc.mix(mc.opcodes("/*0010*/ HMMA.16816.F32.BF16 R4, R8, R12, R4 ;")).mma == "mma.sync"
    assert mc.mix([]).mma == "none" and mc.mix([]).loads == "none"
    assert mc.mix(["UTCHMMA", "HMMA.16816.F32.BF16"]).mma == "tcgen05+mma.sync"  # sm_100


def test_without_cuobjdump_the_rest_is_reported(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from skillkern.bench import inspect

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(mc, "ptxas_report", lambda ptx, arch, extra=(), exe=None: mc.parse_ptxas(PTXAS_LOG))
    real_tool = mc.tool
    monkeypatch.setattr(mc, "tool", lambda name: None if name == "cuobjdump" else real_tool(name))
    kernel = SimpleNamespace(hash="h", asm={"ptx": "", "cubin": b""},
                             metadata=SimpleNamespace(shared=4096, num_warps=4, num_stages=3))
    facts = inspect.kernel_facts(kernel, 90)
    assert facts["regs"] == 168 and facts["smem_bytes"] == 4096 + 1024 and facts["mma"] == "unknown"
    assert "cuobjdump not found" in facts["note"]
    assert not list(tmp_path.rglob("*.json"))  # incomplete facts are not cached


def test_occupancy():
    # 112 regs x 8 warps: 3584 regs per warp -> 18 warps -> 2 blocks; 96 KB smem -> 2 blocks
    assert mc.occupancy(90, 112, 96 * 1024, 8)["blocks_per_sm"] == 2
    # 255 regs x 8 warps -> 8 warps by registers: 1 block, limited by registers
    assert mc.occupancy(90, 255, 64 * 1024, 8) == dict(blocks_per_sm=1, warps_per_sm=8, occupancy_limiter="regs")
    # 24 regs: 768 per warp -> 85 warps by registers; 4-warp blocks: 16 by the 64-warp limit
    assert mc.occupancy(90, 24, 8 * 1024, 4) == dict(blocks_per_sm=16, warps_per_sm=64, occupancy_limiter="warps")
    assert mc.occupancy(80, 64, 170 * 1024, 4)["blocks_per_sm"] == 0  # over the A100's 163 KB per block
    assert mc.occupancy(90, 64, 170 * 1024, 4)["blocks_per_sm"] == 1


def test_roofline_limiters():
    t = roofline.TARGETS["h100"]
    full = dict(programs=132 * 4, blocks_per_sm=1, mma="wgmma", mma_input="BF16", pipelined=True,
                inflight_bytes=1e6)
    p = roofline.predict(t, roofline.Work(790e12 * 1e-3, 1.0, 1.0), **full)  # 1 ms of MMA at peak
    assert p["limiter"] == "mma" and abs(p["predicted_ms"] - 1.0 - t.launch_us * 1e-3) < 1e-9
    assert roofline.predict(t, roofline.Work(790e12 * 1e-3, 1.0, 1.0), **dict(full, pipelined=False))[
        "predicted_ms"] > 1.9  # serialized wgmma: half the rate
    sync = roofline.predict(t, roofline.Work(790e12 * 1e-3, 1.0, 1.0), **dict(full, mma="mma.sync"))
    assert abs(sync["predicted_ms"] - 1 / t.mma_sync_factor - t.launch_us * 1e-3) < 1e-9
    tf32 = roofline.predict(t, roofline.Work(790e12 * 1e-3, 1.0, 1.0), **dict(full, mma_input="TF32"))
    assert abs(tf32["predicted_ms"] - 2.0 - t.launch_us * 1e-3) < 1e-9
    mem = roofline.predict(t, roofline.Work(0.0, 3e9, 3e9), **full)  # 3 GB at 3 TB/s
    assert mem["limiter"] == "hbm" and abs(mem["predicted_ms"] - 1.0 - t.launch_us * 1e-3) < 1e-9
    starved = roofline.predict(t, roofline.Work(0.0, 3e9, 3e9), **dict(full, inflight_bytes=1024))
    assert starved["limiter"] == "hbm latency" and starved["predicted_ms"] > 10
    # a few programs: half a wave of MMA work runs at half the rate
    half = roofline.predict(t, roofline.Work(790e12 * 1e-3, 1.0, 1.0), **dict(full, programs=66))
    assert abs(half["predicted_ms"] - 2.0 - t.launch_us * 1e-3) < 1e-9
    # 528 equal programs (0.9 ms of MMA on 132 slots) and one as long as two slots' even share:
    # launched last it runs alone after the rest (0.9 + 1.8 ms); launched first, beside them (1.8)
    rate, slots, many = 790e12, 132, 132 * 4
    work = [rate * 0.9e-3 / many] * many + [2 * rate * 0.9e-3 / slots]
    spread = dict(full, programs=many + 1)
    last = roofline.predict(t, roofline.Work(sum(work), 1.0, 1.0, program_flops=tuple(work)), **spread)
    assert last["limiter"] == "skew" and abs(last["predicted_ms"] - 2.7 - t.launch_us * 1e-3) < 1e-6
    first = roofline.predict(t, roofline.Work(sum(work), 1.0, 1.0, program_flops=tuple(work[::-1])), **spread)
    assert abs(first["predicted_ms"] - 1.8 - t.launch_us * 1e-3) < 1e-6
    assert roofline.predict(t, roofline.Work(1.0, 1.0, 1.0), **dict(full, blocks_per_sm=0))["predicted_ms"] is None
    # loads waited for before each MMA: the terms add up
    serial = roofline.predict(t, roofline.Work(790e12 * 1e-3, 3e9, 3e9), **dict(full, overlap=False))
    assert serial["limiter"] == "loads not overlapped" and abs(serial["predicted_ms"] - 2.0 - t.launch_us * 1e-3) < 1e-9
    # ... unless each step computes longer than an L2 access (the next step's copies, issued one
    # step ahead, arrive in time): 528 programs on 132 slots, 1 ms in 4 steps each: 1 us a step
    steps = roofline.Work(790e12 * 1e-3, 3e9, 3e9, steps=528 * 4)
    assert roofline.predict(t, steps, **dict(full, overlap=False))["limiter"] == "mma"
    assert roofline.predict(t, roofline.Work(790e12 * 1e-3, 3e9, 3e9, steps=528 * 4000),
                            **dict(full, overlap=False))["limiter"] == "loads not overlapped"


def test_roofline_issue_term():
    """CUDA-core instructions of the MMA loop: with one program per SM they add to the MMA
    time, with two they interleave."""
    t = roofline.TARGETS["h100"]
    base = dict(programs=132, mma="wgmma", mma_input="BF16", pipelined=True, inflight_bytes=1e6, warps=8)
    # 132 programs x 1000 steps x 875 instructions x 8 warps / (4 x 132 x 1.75 GHz) = 1 ms
    work = roofline.Work(790e12 * 1e-3, 1.0, 1.0, steps=132 * 1000)
    instrs = 4 * t.clock_ghz * 1e9 * 1e-3 / (1000 * 8)
    one = roofline.predict(t, work, blocks_per_sm=1, step_instrs=instrs, **base)
    assert abs(one["terms"]["issue"] - 1.0) < 1e-9 and one["limiter"] == "mma+issue"
    assert abs(one["predicted_ms"] - 2.0 - t.launch_us * 1e-3) < 1e-9
    two = roofline.predict(t, work, blocks_per_sm=2, step_instrs=instrs, **dict(base, programs=264))
    assert abs(two["predicted_ms"] - 1.0 - t.launch_us * 1e-3) < 1e-6
    assert roofline.predict(t, work, blocks_per_sm=1, **base)["limiter"] == "mma"  # no loop known


def test_ptx_pipelining():
    assert mc.ptx_pipelining("wgmma.wait_group.sync.aligned 1;\n cp.async.wait_group 2;\n"
                             "wgmma.wait_group.sync.aligned 0;") == dict(wgmma_pending=1, cp_async_pending=2,
                                                                         wgmma_per_wait=0.0)
    deep = "wgmma.mma_async.sync.aligned.m64n64k16 x;\n" * 16 + "wgmma.wait_group.sync.aligned 0;"
    assert mc.ptx_pipelining(deep) == dict(wgmma_pending=0, cp_async_pending=None, wgmma_per_wait=16.0)


def test_hot_loop():
    """The loop holding the most MMAs, innermost on ties; its instruction count per iteration."""
    sass = "\n".join([
        "/*0000*/ MOV R1, c[0x0][0x28] ;",
        "/*0010*/ HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;",  # outside any loop
        "/*0020*/ FSEL R2, R3, RZ, P0 ;",  # outer loop starts
        "/*0030*/ HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ;",  # inner loop starts
        "/*0040*/ HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;",
        "/*0050*/ @P1 BRA 0x30 ;",
        "/*0060*/ FMNMX R4, R5, R6, !PT ;",
        "/*0070*/ @P2 BRA 0x20 ;",
        "/*0080*/ EXIT ;",
    ])
    assert mc.hot_loop(sass) == dict(instrs=3, mmas=2)
    assert mc.hot_loop("/*0000*/ EXIT ;") is None


def test_targets():
    assert roofline.target_for(90).name == "h100" and roofline.target_for(80).cc == 80
    assert roofline.target_of_device("NVIDIA H200").name == "h200"
    assert roofline.target_of_device("NVIDIA GeForce RTX 4090") is None
    with pytest.raises(ValueError, match="arch"):
        roofline.target_for(75)
    with pytest.raises(ValueError, match="gpu"):
        roofline.target_for(gpu="v100")
    for t in roofline.TARGETS.values():
        assert set(t.sources().values()) <= {"measured", "assumed", "spec"}


# ----------------------------------------------------------------------------- history

@needs_tools
def test_record_compare_and_the_interpreter_reexec(tmp_path):
    """--record appends to static.jsonl; --compare prints what changed; a process that has
    TRITON_INTERPRET set re-runs itself without it."""
    env = dict(ENV, SKILLKERN_RESULTS_DIR=str(tmp_path), TRITON_INTERPRET="1")
    args = [sys.executable, "-m", "skillkern.cli", "inspect", "--op", "token_reduce", "--shape", "B=64,N=49,D=256,S=12",
            "--no-extension"]
    first = subprocess.run(args + ["--record"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "static.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"call", "kernel"} and all(r["commit"] for r in rows)
    # the recorded commit compared with itself: no change
    commit = rows[0]["commit"].removesuffix("-dirty")
    again = subprocess.run(args + ["--compare", commit], cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0 and "no change in the compared fields" in again.stdout, again.stdout[-2000:]
    # a changed record is reported
    rows[0]["predicted_ms"] *= 2
    (tmp_path / "static.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    diff = subprocess.run(args + ["--compare", commit], cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert "diff" in diff.stdout and "predicted_ms" in diff.stdout, diff.stdout[-2000:]


def test_bench_prints_the_prediction_beside_the_measurement(tmp_path, monkeypatch, capsys):
    """What a GPU run of the bench does after its table (faked device and rows): the autotune
    choices go to autotune.jsonl (and inspect prices them), the model's prediction is printed."""
    from types import SimpleNamespace

    from skillkern.bench import _common, inspect, runner
    from skillkern.ops.skill_ffn import triton_impl as TI

    monkeypatch.setattr(_common, "RESULTS", str(tmp_path))
    monkeypatch.setitem(TI._up_fwd.cache, (1024, 4096, 32768, 0, "torch.bfloat16"), TI._up_fwd.configs[0])
    (tmp_path / "static.jsonl").write_text(json.dumps(dict(kind="call", op="skill_ffn", dtype="bf16", arch=90,
                                                           gpu="h100", shape="S1", predicted_ms=2.0,
                                                           commit="abc1234")) + "\n")
    rows = [dict(provider="skillkern-triton", mode="fwd+bwd", status="ok", label="S1", ms=3.0),
            dict(provider="skillkern-triton", mode="fwd+bwd", status="ok", label="S2", ms=1.0)]
    runner.print_predictions(runner.spec_of("skill_ffn"), rows, {"device": "NVIDIA H200", "commit": "c0ffee"},
                             SimpleNamespace(dtype="bf16"))
    out = capsys.readouterr().out
    assert "S1: skillkern-triton fwd+bwd measured 3.000 ms; model 2.000 ms on h100" in out
    assert "measured/model = 1.50" in out and "S2" in out and "no static prediction recorded" in out
    choices = inspect.recorded_choices("h200")
    label = inspect.config_label(TI._up_fwd.configs[0])
    assert choices == {("_skill_up_fwd_kernel", str((1024, 4096, 32768, 0, "torch.bfloat16"))): label}
    assert inspect.recorded_choices("h100") == {}
