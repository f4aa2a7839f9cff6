"""The compiled extension skillkern._C: torch.ops.skillkern.skill_route against route_ref.

Routing is integer bookkeeping, so every comparison is exact (torch.equal, dtype and shape):
a stable counting sort has exactly one right answer.
"""
from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from skillkern.ops.skill_ffn.reference import route_ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_extension():
    """import skillkern._C; if the package itself does not import (mid-edit), load the built
    library file directly so these tests still check the extension. None if neither works."""
    try:
        return importlib.import_module("skillkern._C"), None
    except Exception as e:  # ImportError, or an undefined symbol surfacing as OSError
        error = f"{type(e).__name__}: {e}"
    for path in sorted(glob.glob(os.path.join(REPO, "skillkern", "_C*.so"))):
        try:
            spec = importlib.util.spec_from_file_location("skillkern._C", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module, None
        except Exception as e:
            error += f"; loading {path}: {type(e).__name__}: {e}"
    return None, error



_C, _C_ERROR = _load_extension()
if _C is None:
    pytest.skip(
        f"skillkern._C is not built ({_C_ERROR}); build it with a CUDA toolkit: "
        "`pip install --no-build-isolation -e .` (see setup.py)",
        allow_module_level=True,
    )
op = torch.ops.skillkern.skill_route.default

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TILE = 2048  # slots per CUDA block (kTile in csrc/skill_ffn/route.cu)


def random_ids(shape, num_skills, dtype, seed, low=-1, high=None):
    """Fresh ids in [low, high): by default every skill, -1 holes and ids >= num_skills."""
    g = torch.Generator().manual_seed(seed)
    high = num_skills + 2 if high is None else high
    return torch.randint(low, high, shape, generator=g).to(dtype)


# (shape, num_skills, dtype, low, high): ids drawn from [low, high).
CASES = [
    pytest.param((1,), 8, torch.int64, -1, 10, id="N=1"),
    pytest.param((0,), 5, torch.int64, -1, 7, id="N=0 empty"),
    pytest.param((TILE + 17,), 8, torch.int32, -1, 10, id="N=2065 not a tile multiple, int32"),
    pytest.param((3 * TILE - 1,), 5, torch.int64, -1, 7, id="N=6143 three tiles minus one, int64"),
    pytest.param((997, 3), 7, torch.int32, -1, 9, id="(T,k)=(997,3) 2-D, prime T and E"),
    pytest.param((513,), 8, torch.int64, -1, 0, id="all -1"),
    pytest.param((4099,), 8, torch.int32, 3, 4, id="every slot on skill 3"),
    pytest.param((4099,), 8, torch.int64, 7, 8, id="every slot on the last skill"),
    pytest.param((3000,), 4, torch.int64, -1000, 1000, id="mostly out-of-range ids (< -1, >= E)"),
    pytest.param((5000,), 1, torch.int32, -1, 3, id="E=1"),
    pytest.param((2, 4096), 8, torch.int64, -1, 8, id="E=8 no out-of-range, 2-D"),
    pytest.param((20000,), 1024, torch.int32, -1, 1030, id="E=1024 max skills"),
    pytest.param((100_003,), 6, torch.int64, -1, 8, id="big N=100003"),
    pytest.param((100_000, 2), 5, torch.int32, -1, 6, id="big (T,k)=(100000,2) int32"),
]


def check_route(order, offsets, ids, num_skills):
    ref_order, ref_offsets = route_ref(ids.cpu(), num_skills)
    assert order.dtype == torch.int32 and offsets.dtype == torch.int32
    assert order.shape == (ids.numel(),) and offsets.shape == (num_skills + 1,)
    assert torch.equal(offsets.cpu(), ref_offsets), "offsets differ from route_ref"
    assert torch.equal(order.cpu(), ref_order), "order differs from route_ref"


def test_schema():
    assert str(op._schema) == "skillkern::skill_route(Tensor skill_ids, int num_skills) -> (Tensor, Tensor)"


_COEXIST_SCRIPT = """
import importlib.util, sys, torch

def load_extension():
    spec = importlib.util.spec_from_file_location("skillkern._C", sys.argv[1])
    spec.loader.exec_module(importlib.util.module_from_spec(spec))

def define_python_op():
    @torch.library.custom_op("skillkern::_extension_test_probe", mutates_args=())
    def probe(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

steps = [load_extension, define_python_op]
for step in steps if sys.argv[2] == "extension-first" else steps[::-1]:
    step()
order, offsets = torch.ops.skillkern.skill_route(torch.tensor([1, -1, 0]), 2)
assert order.tolist() == [2, 0, 1] and offsets.tolist() == [0, 1, 2]
assert torch.ops.skillkern._extension_test_probe(torch.ones(2)).tolist() == [1.0, 1.0]
"""


@pytest.mark.parametrize("first", ["extension-first", "python-first"])
def test_coexists_with_python_custom_ops(first):
    """The C++ TORCH_LIBRARY(skillkern) block and Python torch.library.custom_op fragments
    (how the package registers its Triton ops) must share the namespace in either import
    order; a second TORCH_LIBRARY(skillkern) anywhere would make this fail."""
    run = subprocess.run([sys.executable, "-c", _COEXIST_SCRIPT, _C.__file__, first],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.parametrize("shape, num_skills, dtype, low, high", CASES)
def test_cpu_matches_reference(shape, num_skills, dtype, low, high):
    ids = random_ids(shape, num_skills, dtype, seed=hash((shape, num_skills)) % 2**31, low=low, high=high)
    order, offsets = op(ids, num_skills)
    check_route(order, offsets, ids, num_skills)


def test_cpu_non_contiguous_and_narrow_dtypes():
    ids = random_ids((64, 9), 6, torch.int64, seed=1).t()  # transposed: not contiguous
    assert not ids.is_contiguous()
    check_route(*op(ids, 6), ids, 6)
    for dtype in (torch.int16, torch.int8, torch.uint8):
        small = random_ids((777,), 6, dtype, seed=2, low=0, high=9)
        check_route(*op(small, 6), small, 6)


def test_int64_ids_beyond_int32_are_inactive():
    """An int64 id like 2^32 + 1 must not wrap to skill 1 (bucketing compares in 64 bits)."""
    ids = torch.tensor([2**32 + 1, 1, -(2**40), 2**31, 0], dtype=torch.int64)
    order, offsets = op(ids, 3)
    assert offsets.tolist() == [0, 1, 2, 2]
    assert order.tolist() == [4, 1, 0, 2, 3]


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(4, dtype=torch.float32), "`skill_ids` must be an integer"),
    (torch.zeros(4, dtype=torch.bool), "`skill_ids` must be an integer"),
])
def test_rejects_non_integer_ids(bad, match):
    with pytest.raises(RuntimeError, match=match):
        op(bad, 4)
    with pytest.raises(RuntimeError, match=match):
        op(bad.to("meta"), 4)


@pytest.mark.parametrize("num_skills", [0, -3, 1025])
def test_rejects_num_skills_out_of_range(num_skills):
    with pytest.raises(RuntimeError, match=r"skill_route: `num_skills` must be in \[1, 1024\]"):
        op(torch.zeros(4, dtype=torch.int64), num_skills)


def test_meta_shapes():
    ids = torch.empty(37, 3, dtype=torch.int32, device="meta")
    order, offsets = op(ids, 7)
    assert order.device.type == "meta" and offsets.device.type == "meta"
    assert order.shape == (111,) and offsets.shape == (8,)
    assert order.dtype == torch.int32 and offsets.dtype == torch.int32


@pytest.mark.parametrize("shape, num_skills", [((1,), 1), ((300, 2), 5), ((TILE + 3,), 8)])
def test_opcheck_cpu(shape, num_skills):
    ids = random_ids(shape, num_skills, torch.int64, seed=3)
    torch.library.opcheck(op, (ids, num_skills))


def test_torch_compile_dynamic():
    """The Meta kernel keeps N symbolic, so one compiled graph serves several N."""
    fn = torch.compile(lambda ids: op(ids, 6), backend="aot_eager", fullgraph=True, dynamic=True)
    for n in (10, 333, 5000):
        ids = random_ids((n,), 6, torch.int32, seed=n)
        check_route(*fn(ids), ids, 6)


# ---------------------------------------------------------------------------------------- CUDA

GPU_CASES = CASES + [
    pytest.param((1_000_000,), 8, torch.int64, -1, 10, id="N=1M int64"),
    pytest.param((500_000, 2), 5, torch.int32, -1, 6, id="N=1M as (T,k)=(500000,2) int32"),
    pytest.param((1_000_000,), 1024, torch.int32, -1, 1030, id="N=1M E=1024"),
    pytest.param((1_000_000,), 8, torch.int64, 2, 3, id="N=1M every slot on one skill"),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("shape, num_skills, dtype, low, high", GPU_CASES)
def test_cuda_matches_reference(shape, num_skills, dtype, low, high):
    ids = random_ids(shape, num_skills, dtype, seed=hash((shape, num_skills)) % 2**31, low=low, high=high)
    order, offsets = op(ids.cuda(), num_skills)
    assert order.is_cuda and offsets.is_cuda
    check_route(order, offsets, ids, num_skills)


@pytest.mark.gpu
@needs_cuda
def test_cuda_deterministic_no_sync_side_stream():
    """Same bits on every run; no host sync; runs on (and only on) the current stream."""
    ids = random_ids((300_001,), 8, torch.int64, seed=4).cuda()
    ref = op(ids, 8)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.stream(stream):
            runs = [op(ids, 8) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.current_stream().wait_stream(stream)
    for order, offsets in runs:
        assert torch.equal(order, ref[0]) and torch.equal(offsets, ref[1])
    check_route(*ref, ids.cpu(), 8)


@pytest.mark.gpu
@needs_cuda
def test_cuda_non_contiguous_and_narrow_dtypes():
    ids = random_ids((64, 9), 6, torch.int64, seed=5).cuda().t()
    check_route(*op(ids, 6), ids.cpu(), 6)
    small = random_ids((5000,), 6, torch.uint8, seed=6, low=0, high=9).cuda()
    check_route(*op(small, 6), small.cpu(), 6)


@pytest.mark.gpu
@needs_cuda
def test_cuda_errors_and_opcheck():
    with pytest.raises(RuntimeError, match="`skill_ids` must be an integer"):
        op(torch.zeros(4, device="cuda"), 4)
    ids = random_ids((3 * TILE + 5,), 7, torch.int32, seed=7).cuda()
    torch.library.opcheck(op, (ids, 7))


def test_build_info_names_the_compiled_archs():
    archs = torch.ops.skillkern.build_info()
    assert isinstance(archs, str) and archs != "unknown"
    # "80_90": each entry a compute capability the build was asked for (setup.py's token)
    for a in archs.split("_"):
        assert a.rstrip("+PTXa").isdigit() and int(a.rstrip("+PTXa")) >= 70, archs
