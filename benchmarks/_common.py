"""Shim for scripts in this folder that do `sys.path.insert(0, <this folder>)` and then
`from _common import ...` (the convention of the first benchmark scripts): the shared harness
now lives in the package, skillkern/bench/_common.py, so that the `skillkern bench` console
script and these scripts share one implementation. Everything public is re-exported."""
import os
import sys

# The package sits at the repo root in a plain checkout.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from skillkern.bench._common import *  # noqa: F403 (the shim re-exports everything)
