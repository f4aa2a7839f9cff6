"""Shim for scripts in this folder that do `sys.path.insert(0, <this folder>)` and then
`from _common import ...` (bench_train_step.py): the shared harness lives in the package
(skillkern/bench/_common.py: environment, timing, rows; skillkern/bench/runner.py: the loop's
steps), so that the `skillkern bench` console script and these scripts share one
implementation. Everything public of both is re-exported."""
import os
import sys

# The package sits at the repo root in a plain checkout.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from skillkern.bench._common import *  # noqa: E402,F403 (the shim re-exports everything)
from skillkern.bench.runner import run_shapes, setup_failed, stamp_rows  # noqa: E402,F401
