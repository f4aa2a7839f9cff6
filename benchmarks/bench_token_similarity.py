#!/usr/bin/env python3
"""Runs skillkern.bench.token_similarity (the token_similarity benchmark; it lives in the package so that the
`skillkern bench` console script and this file share one implementation). Same options:
`python benchmarks/bench_token_similarity.py --help`; `skillkern bench --op token_similarity` adds the measured
ceilings, the history file, --compare and --plot."""
import os
import sys

# A plain checkout works too (make demo): the package sits at the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    from skillkern.bench.token_similarity import main
except Exception as e:  # a broken install: say why instead of a traceback
    print(f"bench_token_similarity: import skillkern failed ({type(e).__name__}: {e}); run `make demo` "
          "(it installs the package first).", file=sys.stderr)
    raise SystemExit(2)

if __name__ == "__main__":
    sys.exit(main())
