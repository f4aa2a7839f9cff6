"""What every op shares: the float dtypes the kernels take, the argument-error format, and the
tl.dot precision rule."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def expect(cond: bool, op: str, name: str, msg: str) -> None:
    """Raise ValueError("<op>: `<name>` <msg>") unless cond: every bad argument is named."""
    if not cond:
        raise ValueError(f"{op}: `{name}` {msg}")


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input_precision for inputs of `dtype`: fp32 follows torch's matmul precision
    setting (exact fp32 under the default "highest", like torch.mm); otherwise TF32 tensor
    cores (16-bit operands, and the fp32 intermediates some kernels feed to tl.dot)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"
