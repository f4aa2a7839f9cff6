"""What every op shares: the float dtypes the kernels take, the one argument-error helper, the
relative error every test and benchmark compares with, and the tl.dot precision rule."""
from __future__ import annotations

import math

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
