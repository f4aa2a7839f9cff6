"""skillkern's benchmark harness: one runner (runner.py) that the op benchmarks declare
themselves to (skill_ffn.py, token_similarity.py, token_reduce.py, maxsim.py: shapes, providers, reference,
FLOPs / bytes), the device ceilings, the history file and the charts behind the `skillkern
bench` and `skillkern profile` commands; and the static profile behind `skillkern inspect`
(inspect.py; Python API: inspect.inspect_op(op, shape, dtype, arch) -> (op-call record, kernel
records), inspect.collect(...) for several ops and the extension, extension_code.extension_records).

It lives in the package, not only in the repo's benchmarks/ folder, so that an installed
skillkern can measure itself (`pip install skillkern; skillkern bench`). In a checkout,
benchmarks/bench.py <op> runs the same and adds the project's goal verdicts; scripts there named
bench_<name>.py (bench_train_step.py) are found by `ops()` and run by `skillkern bench` too.

Nothing here is imported by `import skillkern`.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass

from skillkern.bench._common import REPO

# The op benchmarks that ship with the package: name -> module holding its runner.OpSpec, SPEC.
BUILTIN = {
    "skill_ffn": "skillkern.bench.skill_ffn",
    "token_similarity": "skillkern.bench.token_similarity",
    "token_reduce": "skillkern.bench.token_reduce",
    "maxsim": "skillkern.bench.maxsim",
}


@dataclass(frozen=True)
class OpBench:
    """One benchmark `skillkern bench` can run: a module of the package or a repo script."""

    name: str
    module: str | None = None  # dotted module of a built-in
    path: str | None = None  # benchmarks/bench_<name>.py of a checkout

    def child_cmd(self) -> list[str]:
        """The command that runs it in a child process (options follow)."""
        if self.module:
            return [sys.executable, "-m", "skillkern.bench.runner", self.name]
        return [sys.executable, self.path]

    def main(self, argv) -> int:
        """Runs it in this process: the runner for a built-in, the script's main() otherwise."""
        if self.module:
            from skillkern.bench import runner

            return runner.main(self.name, argv)
        return self.load().main(argv)

    def load(self):
        """The imported module (a repo script is imported from its file, with benchmarks/ on
        sys.path so that its `from _common import ...` finds the shim there)."""
        if self.module:
            return importlib.import_module(self.module)
        folder = os.path.dirname(self.path)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        mod_name = f"skillkern_bench_script_{self.name}"
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        spec = importlib.util.spec_from_file_location(mod_name, self.path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[mod_name]
            raise
        return mod


def script_dir() -> str | None:
    """The checkout's benchmarks/ folder, or None for an installed package."""
    return os.path.join(REPO, "benchmarks") if REPO else None


def ops() -> dict[str, OpBench]:
    """Every benchmark that can run here, built-ins first, then the checkout's
    benchmarks/bench_<name>.py whose <name> is not a built-in (those are wrappers)."""
    out = {name: OpBench(name, module=mod) for name, mod in BUILTIN.items()}
    folder = script_dir()
    if folder and os.path.isdir(folder):
        for fname in sorted(os.listdir(folder)):
            if fname.startswith("bench_") and fname.endswith(".py"):
                name = fname[len("bench_"):-len(".py")]
                if name not in out:
                    out[name] = OpBench(name, path=os.path.join(folder, fname))
    return out
