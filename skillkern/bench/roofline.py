"""The static speed model: a target GPU's ceilings, a kernel's work (FLOPs, HBM and L2 bytes,
declared beside its launcher in skillkern/ops/<op>/cost.py) and, from the machine code's facts
(MMA kind, occupancy, how loads are made), a predicted time, % of peak and limiter.

  t = max(mma, hbm, l2, skew) + launch   (mma + memory where loads cannot overlap)
  mma  = flops / (peak of the MMA the SASS uses, for its input type) / wave efficiency
  hbm  = hbm bytes / (HBM bandwidth x latency cover)
  l2   = l2 bytes / (L2 bandwidth x latency cover)
  skew = for launches whose programs differ in work: the busiest slot's flops when each program,
         in launch order, starts on the first free slot, at one slot's share of the peak
  issue = the CUDA-core instructions of the MMA loop (SASS: per warp and step) x warps x steps
          (cost.py: Work.steps, the loop's iterations over all programs) / (4 schedulers x SMs x
          clock): epilogues such as masked maxima, or operands built in registers. A program
          waits for its own MMAs before using their result, and its warps meet at a barrier
          every step, so mma and issue overlap only across programs resident on one SM:
          t >= (mma + issue) / (programs resident per SM, at most 2).

Wave efficiency: programs / (waves x resident slots). Latency cover (Little's law): bytes in flight
over the whole GPU / (bandwidth x latency), at most 1; a pipelined kernel (cp.async / TMA) keeps
stages - 1 of its shared-memory stages in flight, a plain-load kernel about 2 16-byte loads per
thread. Each ceiling says whether it was measured on the device or assumed (a spec sheet or a
rule of thumb): `skillkern bench` on a GPU prints the prediction beside the measurement so the
assumed ones get corrected.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Target:
    name: str
    cc: int  # compute capability, e.g. 90
    sms: int
    mma_tflops: float  # dense bf16/fp16 tensor-core peak through the arch's best MMA
    mma_src: str
    hbm_tbps: float
    hbm_src: str
    l2_tbps: float
    l2_src: str
    fp32_tflops: float  # FFMA (no tensor cores): exact-fp32 paths
    mma_sync_factor: float  # mma.sync's share of mma_tflops (1.0 where mma.sync is the native MMA)
    serialized_factor: float = 0.5  # wgmma with every instruction waited for (ptxas serialized it)
    hbm_latency_ns: float = 700.0  # assumed: loaded-latency of a DRAM access
    l2_latency_ns: float = 300.0  # assumed
    launch_us: float = 3.0  # assumed: a back-to-back kernel's fixed cost on the device
    clock_ghz: float = 1.75  # assumed: the SM clock under a sustained tensor-core load

    def sources(self) -> dict:
        return {"mma_tflops": self.mma_src, "hbm_tbps": self.hbm_src, "l2_tbps": self.l2_src,
                "mma_sync_factor": "assumed", "serialized_factor": "assumed", "launch_us": "assumed",
                "latency_ns": "assumed", "fp32_tflops": "spec", "clock_ghz": "assumed"}


TARGETS = {
    # bf16 dense and HBM measured on an H100 SXM / H200 (shared/GPU.md). L2 -> SM: the 5.5 TB/s
    # published for L2 was read on a PCIe H100 (114 SMs, power-capped clocks); Triton's 128x128x64
    # GEMMs (64 FLOP per L2 byte) reach > 500 TFLOP/s on the SXM part, which takes >= 8 TB/s.
    # 10 TB/s assumed until `skillkern bench` measures it.
    "h100": Target("h100", 90, 132, 790.0, "measured", 3.0, "measured", 10.0, "assumed", 67.0, 0.62),
    "h200": Target("h200", 90, 132, 790.0, "measured", 4.3, "measured", 10.0, "assumed", 67.0, 0.62),
    # A100 SXM 80GB: spec sheet peak, ~90 % of its 2.04 TB/s on copies (both assumed until measured)
    "a100": Target("a100", 80, 108, 280.0, "assumed", 1.8, "assumed", 4.0, "assumed", 19.5, 1.0),
    # B200: spec-sheet dense bf16 at ~85 %, HBM3e 8 TB/s at ~90 % (assumed); wgmma does not exist there
    "b200": Target("b200", 100, 148, 1900.0, "assumed", 7.2, "assumed", 10.0, "assumed", 75.0, 0.5),
}
ARCH_DEFAULT = {90: "h100", 80: "a100", 100: "b200"}


def target_for(arch: int | None = None, gpu: str | None = None) -> Target:
    """The target named `gpu`, else the default one of compute capability `arch` (90: h100)."""
    if gpu is not None:
        if gpu not in TARGETS:
            raise ValueError(f"unknown gpu {gpu!r}; choose from {sorted(TARGETS)}")
        return TARGETS[gpu]
    arch = 90 if arch is None else int(arch)
    if arch not in ARCH_DEFAULT:
        raise ValueError(f"unsupported arch {arch}; choose from {sorted(ARCH_DEFAULT)}")
    return TARGETS[ARCH_DEFAULT[arch]]


def target_of_device(name: str) -> Target | None:
    """The target matching a CUDA device name (torch.cuda.get_device_name), if any."""
    low = name.lower()
    for key in ("h200", "h100", "a100", "b200"):
        if key in low:
            return TARGETS[key]
    return None


@dataclass
class Work:
    """What one launch of a kernel does, from its grid and what each program loads."""

    flops: float  # multiply-adds x 2 through the MMA
    hbm_bytes: float  # compulsory DRAM traffic (each byte once, assuming L2 reuse within the launch)
    l2_bytes: float  # bytes all programs load and store (every re-read counts)
    # each program's flops in launch order, where programs differ (skewed work): priced by the
    # greedy schedule the block scheduler runs (each program to the first free slot)
    program_flops: tuple = ()
    steps: float = 0.0  # iterations of the kernel's MMA loop over all programs (the issue term)
    note: str = ""


# tensor-core input type (SASS suffix) -> share of the bf16 peak
_INPUT_RATE = {"BF16": 1.0, "F16": 1.0, "TF32": 0.5, "E4M3": 2.0, "E5M2": 2.0, "S8": 2.0}


def mma_rate(t: Target, mma: str, mma_input: str | None, pipelined: bool) -> float:
    """FLOP/s the kernel's MMA instructions can reach on target t."""
    if mma == "none":
        return t.fp32_tflops * 1e12
    rate = t.mma_tflops * 1e12 * _INPUT_RATE.get(mma_input or "BF16", 1.0)
    if "mma.sync" in mma:  # a kernel mixing wgmma and mma.sync dots is priced at the slower
        rate *= t.mma_sync_factor
    elif not pipelined:
        rate *= t.serialized_factor
    return rate


def _makespan(program_flops, slots: int) -> float:
    """The flops of the busiest of `slots` resident-block slots when programs, in launch order,
    each start on the first slot to come free (list scheduling; each slot at 1/slots of the
    rate, as when all are busy): the tail of a skewed launch."""
    free = [0.0] * slots
    for f in program_flops:
        heapq.heappush(free, heapq.heappop(free) + f)
    return max(free)


def predict(t: Target, work: Work, *, programs: int, blocks_per_sm: int, mma: str, mma_input: str | None,
            pipelined: bool, inflight_bytes: float, overlap: bool = True, step_instrs: int = 0,
            warps: int = 4) -> dict:
    """Predicted time (ms), the limiter and the terms behind it, for one launch. overlap=False
    (each load stage waited for before its MMA, and one block per SM to hide it): the MMA and
    memory terms add up instead of overlapping, unless the kernel declares its MMA-loop steps
    and each step computes for longer than an L2 access (the copies of the next step, issued
    one step ahead, then arrive in time)."""
    if blocks_per_sm <= 0:
        return dict(predicted_ms=None, limiter="does not fit", terms={})
    slots = t.sms * blocks_per_sm
    waves = max(1, math.ceil(programs / slots))
    wave_eff = programs / (waves * slots)
    rate = mma_rate(t, mma, mma_input, pipelined)
    resident = min(programs, slots)
    cover_hbm = min(1.0, resident * inflight_bytes / (t.hbm_tbps * 1e12 * t.hbm_latency_ns * 1e-9))
    cover_l2 = min(1.0, resident * inflight_bytes / (t.l2_tbps * 1e12 * t.l2_latency_ns * 1e-9))
    terms = {
        "mma": work.flops / rate / wave_eff if work.flops else 0.0,
        "hbm": work.hbm_bytes / (t.hbm_tbps * 1e12 * max(cover_hbm, 1e-9)),
        "l2": work.l2_bytes / (t.l2_tbps * 1e12 * max(cover_l2, 1e-9)),
        "skew": _makespan(work.program_flops, slots) / (rate / slots) if work.program_flops else 0.0,
        "issue": work.steps * step_instrs * warps / (4 * t.sms * t.clock_ghz * 1e9),
    }
    # a program's MMAs and CUDA-core work serialize (its warpgroups meet at a barrier every
    # step); two or more resident programs per SM interleave them
    groups = min(2, max(1, blocks_per_sm))
    joint = (terms["mma"] + terms["issue"]) / groups
    terms["mma+issue"] = joint if terms["issue"] else 0.0
    limiter = max(terms, key=terms.get)
    if limiter in ("hbm", "l2") and (cover_hbm if limiter == "hbm" else cover_l2) < 1.0:
        limiter += " latency"  # too few bytes in flight to reach the bandwidth
    busy = max(terms.values())
    if not overlap and work.steps:
        # copies issued one step ahead are hidden when a step computes for longer than an L2
        # access takes (each resident program runs its share of the steps one after another)
        step_s = (terms["mma"] + terms["issue"]) * resident / work.steps
        overlap = step_s >= t.l2_latency_ns * 1e-9
    if not overlap:
        busy = max(busy, terms["mma"] + max(terms["hbm"], terms["l2"]))
        if busy > max(terms.values()):
            limiter = "loads not overlapped"
    seconds = busy + t.launch_us * 1e-6
    if t.launch_us * 1e-6 > busy:
        limiter = "launch"
    return dict(predicted_ms=seconds * 1e3, limiter=limiter, wave_eff=round(wave_eff, 3),
                latency_cover=round(cover_hbm, 3), terms={k: v * 1e3 for k, v in terms.items()})


def target_dict(t: Target) -> dict:
    return dict(asdict(t), sources=t.sources())
