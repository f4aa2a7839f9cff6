#!/usr/bin/env python3
"""Runs one of the package's op benchmarks, then prints the project's goal verdicts on its rows.

    python benchmarks/bench.py <op> [options]       op: skill_ffn, token_similarity, token_reduce
    python benchmarks/bench.py <op> --help          the op's options (shapes, providers, modes, ...)

The benchmark itself is skillkern/bench/<op>.py run by skillkern/bench/runner.py (what `skillkern
bench --op <op>` runs too, which adds the measured ceilings, the history file, --compare and
--plot); the goals live here, in goals.py, because they are this project's targets, not part of
the installed package. Exit status 1 when a provider failed or was wrong.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # a plain checkout: the package at the repo root

try:
    from goals import goal_lines
    from skillkern.bench import BUILTIN, runner
except ImportError as e:  # a broken install: say why instead of a traceback
    print(f"benchmarks/bench.py: import skillkern failed ({type(e).__name__}: {e}); run `make demo` "
          "(it installs the package first).", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BUILTIN:
        print(f"usage: python benchmarks/bench.py <op> [options]; op one of {list(BUILTIN)}", file=sys.stderr)
        return 2
    result = runner.run(argv[0], argv[1:])
    for line in goal_lines(argv[0], result.rows, result.cpu):
        print(line)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
