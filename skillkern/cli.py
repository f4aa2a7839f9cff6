"""The `skillkern` command (console script `skillkern = "skillkern.cli:main"`; without the
installed script: `python -m skillkern.cli ...`).

  skillkern bench    every op benchmark against its baselines and the device's measured
                     ceilings; history file, --compare REV|FILE, --plot (skillkern/bench/suite.py)
  skillkern profile  one op at one shape under torch.profiler: kernel table, Chrome trace, the
                     ncu command line (skillkern/bench/profile.py)
  skillkern info     versions, devices, compiled extension archs, backends per op and the one
                     "auto" picks (skillkern/_info.py)
  skillkern inspect  a static profile of every kernel an op call launches, compiled for a target
                     GPU without the GPU: registers, spills, shared memory, occupancy, MMA kind,
                     loads, predicted time and limiter (skillkern/bench/inspect.py)

Examples:
  skillkern bench --quick                          # all ops, quick presets (CPU: tiny shapes)
  skillkern bench --op skill_ffn --shapes gpu-quick --compare main --plot
  skillkern bench --op token_similarity -- --providers naive,lik,skillkern-triton
  skillkern bench --no-run --compare HEAD~3        # the newest recorded run vs an older commit
  skillkern profile --op skill_ffn --shape T=32768:d=1024:h=4096:routing=skewed --mode fwd+bwd
  skillkern info --json
  skillkern inspect --op skill_ffn --all-configs   # every autotune config at the goal shape, sm_90
  skillkern inspect --arch 80 --json static.json   # every op for an A100, records as JSON lines
  skillkern inspect --op skill_ffn --activation swiglu --compare HEAD~1
"""
from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="skillkern", description="Benchmark, profile and inspect skillkern's kernels.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Examples:" + __doc__.split("Examples:")[1])
    sub = ap.add_subparsers(dest="command", required=True, metavar="{bench,profile,info,inspect}")

    from skillkern.bench import profile, suite

    b = sub.add_parser("bench", help="run the op benchmarks, record history, compare, plot",
                       description=suite.__doc__.split("\n\n")[0],
                       epilog="Arguments after `--` go to every op benchmark (e.g. -- --providers a,b --modes fwd+bwd; "
                              "see python benchmarks/bench.py <op> --help).")
    suite.add_args(b)
    p = sub.add_parser("profile", help="profile one op at one shape (torch.profiler, Chrome trace, ncu line)",
                       description=profile.__doc__.split("\n\n")[0])
    profile.add_args(p)
    i = sub.add_parser("info", help="versions, device, extension archs, backends per op")
    i.add_argument("--json", action="store_true", help="print info() as JSON")
    from skillkern.bench import inspect

    s = sub.add_parser("inspect", help="static profile of every kernel for a target GPU (no GPU needed)",
                       description=inspect.__doc__.split("\n\n")[0],
                       epilog="Other options go to the op's benchmark case (e.g. --activation swiglu, --no-bias).")
    inspect.add_args(s)
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `skillkern bench ... -- <op options>`: what follows -- is passed to every op benchmark.
    passthrough = []
    if "--" in argv:
        k = argv.index("--")
        argv, passthrough = argv[:k], argv[k + 1:]
    if argv[:1] == ["inspect"]:  # the op's own options (--activation ...) pass through
        args, extra = _parser().parse_known_args(argv)
        from skillkern.bench import inspect

        return inspect.run(args, argv[1:], extra)
    args = _parser().parse_args(argv)
    if passthrough and args.command != "bench":
        raise SystemExit(f"skillkern {args.command}: arguments after `--` are only for `skillkern bench`")
    if args.command == "info":
        from skillkern._info import format_info, info

        d = info()
        print(json.dumps(d, indent=2) if args.json else format_info(d))
        return 0
    if args.command == "profile":
        from skillkern.bench import profile

        return profile.run(args)
    from skillkern.bench import suite

    return suite.run(args, passthrough)


if __name__ == "__main__":
    sys.exit(main())
