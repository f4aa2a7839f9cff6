"""The one place that decides which backend runs an op.

Backends:
  "torch"  - the pure-PyTorch reference beside each op; any device. Ops whose reference is
             written as a registered forward/backward pair (skill_ffn: skill_ffn_fwd_torch /
             skill_ffn_bwd_torch) run through it, so meta tensors and torch.compile work;
             the others are differentiated by torch's autograd.
  "triton" - Triton kernels; CUDA tensors, or CPU tensors when TRITON_INTERPRET=1 was set
             before skillkern was imported (the Triton interpreter, used by the tests).
  "cuda"   - the compiled extension skillkern._C (csrc/, built by setup.py).
  "auto"   - the fastest backend available for the tensors' device, by measurement where its GPU
             model was measured (see auto_order).

Nothing here touches CUDA or imports Triton at import time.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

from skillkern import _measured

BACKENDS = ("auto", "torch", "triton", "cuda")

# Per op, the order in which "auto" tries backends on a CUDA device whose model has no
# measurement in skillkern/_measured.py (written from goal-shape bench rows by
# `python -m skillkern.bench.auto_order`); "cuda" is what runs where Triton cannot. Triton
# first: it takes every input, and on the one GPU measured so far (H200, 2026-12-04) it was
# the faster for skill_ffn and token_similarity.
_AUTO_ORDER = {
    "skill_ffn": ("triton", "cuda", "torch"),
    "skill_route": ("triton", "cuda", "torch"),
    "token_similarity": ("triton", "cuda", "torch"),
    "token_reduce": ("triton", "cuda", "torch"),
    "token_pool": ("triton", "cuda", "torch"),
    "maxsim": ("triton", "torch"),
}

# Ops whose CUDA path takes only part of the inputs (token_reduce: S <= 32 and a shared-memory
# bound on D; it raises beyond): auto, chosen per op and not per call, never puts cuda before
# triton for them, whatever the measurement.
_CUDA_PARTIAL = frozenset({"token_reduce", "token_pool"})


@functools.lru_cache(maxsize=None)
def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def auto_order(op: str, device: torch.device) -> tuple:
    """The backends "auto" tries for op on a CUDA device, in order: the measured order for this
    GPU model (skillkern/_measured.py) when there is one, else _AUTO_ORDER's."""
    default = _AUTO_ORDER.get(op, ("torch",))
    if not _measured.MEASURED or not torch.cuda.is_available():
        return default
    name = _device_name(device.index if device.index is not None else torch.cuda.current_device())
    return tuple(_measured.MEASURED.get(name, {}).get(op, {}).get("order", default))


# Public op -> the torch.ops.skillkern entry that the compiled extension provides for it.
_CUDA_OPS = {
    "skill_route": "skill_route",
    "skill_ffn": "skill_ffn_fwd_cuda",
    "token_similarity": "token_similarity_fwd_cuda",
    "token_reduce": "token_reduce_fwd_cuda",
    "token_pool": "token_reduce_fwd_cuda",
}

# Functions to run once skillkern._C is loaded (each op's autograd/fake registrations for
# its C++ ops, which only exist after the library is loaded).
_on_load: list = []
_loaded = False


def on_extension_load(fn):
    """Decorator: run `fn()` once skillkern._C has been imported (now, if it already was)."""
    _on_load.append(fn)
    if _loaded:
        fn()
    return fn


class BackendUnavailable(RuntimeError):
    """A backend was asked for that cannot run here; the message says how to get it."""


def interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        importlib.import_module("triton")
    except Exception as e:  # ImportError, or a broken install raising something else
        return f"{type(e).__name__}: {e}"
    return None


@functools.lru_cache(maxsize=None)
def _extension_import_error() -> str | None:
    global _loaded
    try:
        dev_lib = os.environ.get("SKILLKERN_EXTENSION_LIB")
        if dev_lib:  # a library built by csrc/build_dev.py, instead of the installed one
            torch.ops.load_library(dev_lib)
        else:
            importlib.import_module("skillkern._C")
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    _loaded = True
    try:
        for fn in _on_load:
            fn()
    except Exception as e:  # e.g. a stale build that lacks an op the Python side registers
        return (f"the loaded extension does not match this checkout ({type(e).__name__}: {e}); "
                "rebuild it (`make build`)")
    return None


def has_cuda_extension() -> bool:
    """True when skillkern._C (the CUDA C++ extension) was built and imports."""
    return _extension_import_error() is None


def load_cuda_extension():
    """Import skillkern._C (registers torch.ops.skillkern.*) or raise BackendUnavailable."""
    err = _extension_import_error()
    if err is not None:
        raise BackendUnavailable(
            "the CUDA C++ extension skillkern._C is not available "
            f"({err}). Build it with a CUDA toolkit present: "
            "`pip install -e . --no-build-isolation` (unset SKILLKERN_SKIP_CUDA_BUILD; "
            "TORCH_CUDA_ARCH_LIST picks the archs, default '8.0;9.0')."
        )
    return None if os.environ.get("SKILLKERN_EXTENSION_LIB") else importlib.import_module("skillkern._C")


def _triton_reason(device: torch.device) -> str | None:
    """None if Triton kernels can run on tensors of `device`, else why not."""
    err = _triton_import_error()
    if err is not None:
        return f"triton is not importable ({err}); `pip install triton` (Linux only)"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and interpreting():
        return None
    return (
        f"Triton kernels need CUDA tensors (got device {device}); CPU tensors run only "
        "under the Triton interpreter (set TRITON_INTERPRET=1 before importing skillkern)"
    )


def has_native_op(op: str) -> bool:
    """True when the loaded extension provides torch.ops.skillkern.<_CUDA_OPS[op]> (False for
    an op without native kernels, without the extension, or with a build older than its op)."""
    if op not in _CUDA_OPS or not has_cuda_extension():
        return False
    try:
        getattr(torch.ops.skillkern, _CUDA_OPS[op])
    except (AttributeError, RuntimeError):
        return False
    return True


def _cuda_reason(op: str) -> str | None:
    """None if the extension can run `op` (on CUDA tensors), else why not."""
    if op not in _CUDA_OPS:
        return f"skillkern.{op} has no CUDA C++ kernels; use backend='triton' or 'torch'"
    try:
        load_cuda_extension()
    except BackendUnavailable as e:
        return str(e)
    if not has_native_op(op):
        return (f"the loaded extension lacks torch.ops.skillkern.{_CUDA_OPS[op]} (built from older "
                "sources): rebuild it (`make build`)")
    return None


@torch.compiler.assume_constant_result  # a fact about the install: torch.compile folds it
def resolve(op: str, backend: str, device: torch.device) -> str:
    """Turn a requested backend into the one that will run, or raise a clear error."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "triton":
        reason = _triton_reason(device)
        if reason is not None:
            raise BackendUnavailable(f"backend='triton' for skillkern.{op}: {reason}")
        return "triton"
    if backend == "cuda":
        reason = _cuda_reason(op)
        if reason is None and device.type != "cuda":
            reason = f"the CUDA backend needs CUDA tensors (got device {device})"
        if reason is not None:
            raise BackendUnavailable(f"backend='cuda' for skillkern.{op}: {reason}")
        return "cuda"
    # auto: the fastest that can run on this device; interpreted Triton is never "fastest".
    if device.type != "cuda":
        return "torch"
    for cand in auto_order(op, device):
        if cand == "torch":
            return "torch"
        if cand == "triton" and _triton_reason(device) is None:
            return "triton"
        if cand == "cuda" and _cuda_reason(op) is None:
            return "cuda"
    return "torch"


def available_backends(op: str, device: torch.device | str = "cuda") -> list[str]:
    """The backends that could run `op` on `device` here (used by info/benchmarks)."""
    device = torch.device(device)
    out = ["torch"]
    if _triton_reason(device) is None:
        out.append("triton")
    if device.type == "cuda" and _cuda_reason(op) is None:
        out.append("cuda")
    return out
