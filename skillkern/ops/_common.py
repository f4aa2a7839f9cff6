"""What every op shares: the float dtypes the kernels take, the one argument-error helper, the
relative error every test and benchmark compares with, the tl.dot precision rule, the device's
SM count and TMA rule for launch shapes, and the one way a Triton kernel is autotuned (configs
that would spill or overflow shared memory pruned)."""
from __future__ import annotations

import contextlib
import math
import warnings

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def expect(cond: bool, where: str, name: str, msg: str, kind: type[Exception] = ValueError) -> None:
    """Raise kind("<where>: `<name>` <msg>") unless cond: every bad argument is named. The one
    argument-error helper of skillkern (ops, layers, convert) and of model/; `kind` is TypeError
    where the argument has the wrong Python type."""
    if not cond:
        raise kind(f"{where}: `{name}` {msg}")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error of a whole tensor, ||out - ref|| / ||ref|| in float64 (0 when both are 0;
    inf when either holds NaN or inf, so a non-finite result never passes a tolerance)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    e = ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()
    return e if math.isfinite(e) else float("inf")


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input_precision for inputs of `dtype`: fp32 follows torch's matmul precision
    setting (exact fp32 under the default "highest", like torch.mm); otherwise TF32 tensor
    cores (16-bit operands, and the fp32 intermediates some kernels feed to tl.dot)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def register_autograd_pair(op: str, make_backward, setup_context) -> None:
    """The one backward-builder pattern of every op: one autograd formula for the Triton op
    skillkern::<op>_fwd (registered now) and the native skillkern::<op>_fwd_cuda (registered
    once the extension is loaded, when that build has the op). `make_backward(bwd_name)` returns
    the autograd backward, calling torch.ops.skillkern.<bwd_name> (<op>_bwd or <op>_bwd_cuda:
    same arguments and outputs), looked up per call because the C++ op exists only after the
    library is loaded."""
    from skillkern import _backend  # the backend module imports nothing of ops/

    torch.library.register_autograd(f"skillkern::{op}_fwd", make_backward(f"{op}_bwd"),
                                    setup_context=setup_context)

    @_backend.on_extension_load
    def _register_native():
        # a library built before this op's csrc/ folder existed lacks it: the cuda backend
        # then reports the op as missing (_backend.has_native_op) instead of failing here
        if hasattr(torch.ops.skillkern, f"{op}_fwd_cuda"):
            torch.library.register_autograd(f"skillkern::{op}_fwd_cuda", make_backward(f"{op}_bwd_cuda"),
                                            setup_context=setup_context)


# ----------------------------------------------------------------------------- autotuning

# (kernel, positional args, call kwargs with the config's) -> (spilled bytes, shared memory fits):
# the facts of this config's compiled kernel on the target. None: the current device's own
# answer (_device_facts); `skillkern inspect` swaps in its static one for the target it compiles for.
_fit_check = None


@contextlib.contextmanager
def fit_check(facts):
    """Judge autotune configs with `facts(kernel, args, kwargs)` inside this block."""
    global _fit_check
    saved, _fit_check = _fit_check, facts
    try:
        yield
    finally:
        _fit_check = saved


_target_cc = None


@contextlib.contextmanager
def target_arch(cc: int):
    """Inside this block, launchers choose their arch-dependent paths (TMA) for compute
    capability cc instead of their tensors' device: `skillkern inspect` records the launches
    of CPU tensors for a target GPU."""
    global _target_cc
    saved, _target_cc = _target_cc, cc
    try:
        yield
    finally:
        _target_cc = saved


def _device_scratch(size: int, alignment: int, stream):
    """Global scratch for kernels that ask for it at launch (TMA descriptors built on the
    device: 128 bytes per program)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (132 on an H100 SXM / H200: the default off the GPU,
    where the number only shapes a launch's schedule, never its result)."""
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def tma_ok(t: torch.Tensor) -> bool:
    """Whether a kernel may fetch t's tiles by TMA (tl.make_tensor_descriptor): on sm_90 or
    newer (or the arch of target_arch), or under the interpreter, which runs the same path on CPU
    tensors; for a t whose last dimension is contiguous and whose base and other strides are
    16-byte aligned (the descriptor's rules: e.g. d and h multiples of 8 in 16-bit types).
    Otherwise the kernels take their cp.async path. On a GPU this also gives Triton an
    allocator for the descriptors' scratch if none is set (the setting is per thread context,
    and autograd runs the backward on a thread of its own)."""
    from skillkern._backend import interpreting

    if _target_cc is not None:
        if _target_cc < 90:
            return False
    elif not interpreting():
        if not (t.is_cuda and torch.cuda.get_device_capability(t.device)[0] >= 9):
            return False
        import triton
        from triton.runtime import _allocation

        if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
            triton.set_allocator(_device_scratch)
    es = t.element_size()
    return t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(s * es % 16 == 0 for s in t.stride()[:-1])


def _device_facts(kernel, args, kwargs) -> tuple[int, bool]:
    """Compile (the autotuner would anyway; Triton caches it) and load on the current device.
    The rule only filters for speed: if this Triton cannot answer (an API it lacks), the config
    is kept, as plain triton.autotune would, and a warning says so once."""
    from triton.runtime.errors import OutOfResources

    try:
        compiled = kernel.warmup(*args, grid=(1,), **kwargs)
        compiled._init_handles()
        return int(compiled.n_spills), True
    except OutOfResources:
        return 0, False
    except (AttributeError, TypeError) as e:
        warnings.warn(f"{kernel.__name__}: could not read a config's compiled facts ({type(e).__name__}: {e}); "
                      "keeping it unpruned", RuntimeWarning, stacklevel=2)
        return 0, True


def keep_fitting(configs: list, facts: list[tuple[int, bool]], name: str) -> list:
    """The prune rule: the configs without spills whose shared memory fits a block. Where every
    config spills, the ones that spill least (a slow kernel still beats none), with a warning;
    where none fits in shared memory, an error naming the kernel."""
    kept = [c for c, (spill, smem) in zip(configs, facts) if smem and spill == 0]
    if kept:
        return kept
    in_smem = [(spill, c) for c, (spill, smem) in zip(configs, facts) if smem]
    if not in_smem:
        raise RuntimeError(f"{name}: none of its {len(configs)} autotune configs fits in this device's "
                           "shared memory per block")
    least = min(spill for spill, _ in in_smem)
    warnings.warn(f"{name}: every autotune config spills registers here; keeping the least-spilling ones",
                  RuntimeWarning, stacklevel=2)
    return [c for spill, c in in_smem if spill == least]


def autotune(kernel, configs: list, key: list, **kw):
    """triton.autotune(configs, key) of `kernel` with the one prune rule (keep_fitting), judged on
    the device it runs on (the same rule `skillkern inspect` reports against): configs that
    spill registers or need more shared memory than a block may have are never timed nor chosen.
    A kernel whose configs carry USE_TMA takes TMA_OK from its launcher (tma_ok of the operand):
    where it is False, the USE_TMA configs are dropped first.
    The timings are kept on disk (Triton's cache_results, in its cache directory, keyed by the
    kernel's source, the tuning key, the arch and the Triton version): a new process compiles
    from Triton's cache and times nothing, so only the first run on a machine pays for tuning.
    SKILLKERN_AUTOTUNE=first (read at import) keeps each list's first config only: the test suite
    on a GPU checks results, not speed, and compiling and timing every config of every new shape
    would take most of a GPU window."""
    import os

    import triton

    if os.environ.get("SKILLKERN_AUTOTUNE", "") == "first":
        configs = configs[:1]

    def prune(configs, named_args, **call):
        call = {k: v for k, v in call.items() if k not in ("grid", "warmup")}
        if call.get("TMA_OK") is False:  # the launch cannot take TMA: drop the configs asking for it
            configs = [c for c in configs if not c.kwargs.get("USE_TMA")] or configs
        facts = _fit_check or _device_facts
        args = tuple(named_args.values())
        return keep_fitting(configs, [facts(kernel, args, {**call, **c.all_kwargs()}) for c in configs],
                            kernel.__name__)

    prune.__name__ = "keep_fitting"
    kw.setdefault("cache_results", True)
    return triton.autotune(configs, key=key, prune_configs_by={"early_config_prune": prune}, **kw)(kernel)
