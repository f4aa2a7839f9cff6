"""Ahead-of-time compilation of every Triton kernel for sm_90 (H100/H200) - no GPU needed.

The interpreter runs kernels as Python; only the real compiler catches layout, dtype and
shared-memory errors. tests/aot_check.py compiles each kernel variant in a fresh process
(TRITON_INTERPRET must be unset while kernels are defined)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("op", ["skill_ffn", "token_similarity", "token_reduce"])
def test_every_kernel_compiles_for_sm90(op):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "aot_check.py"), op],
                          capture_output=True, text=True, env=env, timeout=1200)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, "\n".join([l for l in lines if l.startswith("FAIL")] + [proc.stderr[-3000:]])
    assert sum(l.startswith("ok ") for l in lines) >= 10, proc.stdout  # really compiled variants
