"""Test set-up. Without a GPU, Triton kernels run on CPU tensors through the Triton
interpreter: TRITON_INTERPRET=1 must be set before any kernel module is imported (here, as
conftest is imported first). With a GPU, the same tests run on CUDA tensors, compiled."""
import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from skillkern.ops._common import rel_err  # noqa: E402,F401  (tests import it from here)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _patch_interpreter_bf16():
    """Two fixes to the interpreter's bf16 (GPU runs need neither).
    (1) Its tl.dot multiplies bf16 operands as their raw uint16 bit patterns
    (triton-lang/triton#11584): upcast bf16 operands to fp32 first, as the GPU's MMA does.
    (2) Its fp32 -> bf16 cast truncates: round to nearest even, as the GPU does."""
    from triton.runtime import interpreter as I
    import triton.language as tl

    if getattr(I.InterpreterBuilder.create_dot, "_skillkern_patched", False):
        return
    original = I.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        def up(t):
            if t.dtype.scalar == tl.bfloat16:
                # bf16 is the top half of an fp32: widen the bit pattern, exact
                data = (t.data.astype(np.uint32) << 16).view(np.float32)
                return I.TensorHandle(data, tl.float32)
            return t
        return original(self, up(a), up(b), d, input_precision, max_num_imprecise_acc)

    create_dot._skillkern_patched = True
    I.InterpreterBuilder.create_dot = create_dot

    # fp32 -> bf16 casts truncate in the interpreter; the GPU rounds to nearest even. Truncation
    # biases every stored bf16 tile towards zero and doubles the error of long reductions.
    cast = I.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.ascontiguousarray(src.data).view(np.uint32)
            finite = (bits & 0x7F800000) != 0x7F800000
            rounded = np.where(finite, bits + 0x7FFF + ((bits >> 16) & 1), bits)
            return I.TensorHandle((rounded >> 16).astype(np.uint16), tl.bfloat16)
        return cast(self, src, dst_type)

    I.InterpreterBuilder.cast_impl = cast_impl


if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    _patch_interpreter_bf16()


def bad_arg_params(base, cases):
    """pytest params for argument-check tests: cases are (label, argument the error must name,
    mutation of the valid kwargs that base() returns)."""
    return [pytest.param(base, name, mutate, id=label) for label, name, mutate in cases]


def assert_error_names(fn, base, name, mutate):
    """fn(**kwargs) with one bad argument raises a ValueError (a TypeError where the argument has
    the wrong Python type) whose message names it, and leaves every tensor argument bit-identical."""
    kwargs = base()
    mutate(kwargs)
    before = {k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor) and not v.is_meta}
    with pytest.raises((ValueError, TypeError), match=name):
        fn(**kwargs)
    for k, v in before.items():
        torch.testing.assert_close(kwargs[k], v, rtol=0, atol=0, equal_nan=True, msg=f"`{k}` was changed")


def poison_padding(x, real):
    """x (B, N, ...) with every element of the padding (~real, a bool (B, N)) replaced by NaN, inf
    or -inf at random: garbage that must reach no output or gradient."""
    x = x.clone()
    garbage = torch.tensor([math.nan, math.inf, -math.inf], dtype=x.dtype, device=x.device)
    x[~real] = garbage[torch.randint(0, 3, x[~real].shape, device=x.device)]
    return x


def skill_ffn_sanitize():
    """csrc/skill_ffn/sanitize.py as a module: its adversarial cases (make_case) serve the CPU
    tests too, so what runs under compute-sanitizer on a GPU is what runs here."""
    import importlib.util
    import sys

    name = "skillkern_skill_ffn_sanitize"
    if name not in sys.modules:
        path = os.path.join(os.path.dirname(__file__), "..", "csrc", "skill_ffn", "sanitize.py")
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
