"""Run the emulated-kernel tests (tests/test_emulation.py) under AddressSanitizer + UBSan.

    .venv/bin/python csrc/emu/run.py [--no-sanitize] [--all] [pytest arguments, e.g. -k token_reduce]

Builds the emulation with -fsanitize=address,undefined (SKILLKERN_EMU_SANITIZE=1, a separate
cached build) and runs pytest with the sanitizer runtime preloaded, so an out-of-bounds access
of global or shared memory (the emulation's shared memory is an exactly sized heap buffer) stops
the run with a report. Races need no sanitizer: every case already runs under two thread
schedules and must give the same bits. --all adds the long cases (SKILLKERN_EMU_ALL=1: every
token_reduce case in each of its dtypes, token_similarity's largest tiles). Exits with pytest's
status.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    args = sys.argv[1:]
    env = dict(os.environ)
    if "--all" in args:
        args.remove("--all")
        env["SKILLKERN_EMU_ALL"] = "1"
    if "--no-sanitize" in args:
        args.remove("--no-sanitize")
    else:
        def lib(name):
            return subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True,
                                  check=True).stdout.strip()

        # libstdc++ with it: the sanitizer intercepts C++ exceptions (triton's import throws some)
        env.update(SKILLKERN_EMU_SANITIZE="1", LD_PRELOAD=f"{lib('libasan.so')} {lib('libstdc++.so')}",
                   # the interpreter's own allocations are not the kernels' leaks
                   ASAN_OPTIONS="detect_leaks=0:halt_on_error=1",
                   UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    cmd = [sys.executable, "-m", "pytest", "-q", os.path.join(ROOT, "tests", "test_emulation.py"), *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
