"""Build a development copy of the extension from a subset of csrc/, for one arch.

    .venv/bin/python csrc/build_dev.py skill_ffn [token_similarity ...] [--arch 9.0]

Compiles csrc/ops.cpp plus every .cpp/.cu under the named csrc/ folders (default: all) into
one shared library without a Python module and prints its path. Point skillkern at it with
SKILLKERN_EXTENSION_LIB=<path>: skillkern then loads it with torch.ops.load_library instead
of importing the installed skillkern._C. Never load both in one process (TORCH_LIBRARY
(skillkern) may be defined once). The real build is setup.py (`make build`).
"""
import argparse
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*", help="csrc/ sub-folders to include (default: all)")
    ap.add_argument("--arch", default="9.0", help="TORCH_CUDA_ARCH_LIST for this build (default 9.0)")
    ap.add_argument("--out", default=None, help="build directory (default /tmp/skillkern_dev_<folders>)")
    args = ap.parse_args()

    sys.path.insert(0, ROOT)
    import setup as sk_setup  # the same toolkit search and header fix-ups as the real build

    cuda_home = sk_setup.find_cuda_home()
    if cuda_home is None:
        sys.exit("build_dev: no CUDA toolkit (nvcc) found")
    os.environ["CUDA_HOME"] = cuda_home
    os.environ["TORCH_CUDA_ARCH_LIST"] = args.arch
    os.environ.setdefault("MAX_JOBS", str(sk_setup.default_max_jobs()))
    import torch
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = cuda_home
    folders = args.folders or sorted(  # emu/ is the CPU emulation, built by emu/build.py
        d for d in os.listdir(os.path.join(ROOT, "csrc"))
        if os.path.isdir(os.path.join(ROOT, "csrc", d)) and d not in ("emu", "__pycache__"))
    sources = [os.path.join(ROOT, "csrc", "ops.cpp")]
    for f in folders:
        found = sorted(p for ext in ("cpp", "cu")
                       for p in glob.glob(os.path.join(ROOT, "csrc", f, "**", f"*.{ext}"), recursive=True))
        if not found:
            sys.exit(f"build_dev: no .cpp/.cu files under csrc/{f}")
        sources += found
    name = "skillkern_dev_" + "_".join(folders)
    out = args.out or os.path.join("/tmp", name)
    os.makedirs(out, exist_ok=True)
    extra = sk_setup.wheel_include_dirs(torch, torch.version.cuda.split(".")[0])
    sys_includes = [flag for d in extra for flag in ("-isystem", d)]
    token = "_".join(a.replace(".", "") for a in args.arch.replace(";", " ").split())
    os.environ["TORCH_CUDA_ARCH_LIST"], sm90_flags = sk_setup.sm90_build(args.arch)
    cpp_extension.load(
        name=name, sources=sources, build_directory=out, is_python_module=False, verbose=True,
        extra_include_paths=[os.path.join(ROOT, "csrc")],
        extra_cflags=["-O2", f"-DSKILLKERN_CUDA_ARCHS={token}"] + sys_includes,
        extra_cuda_cflags=["-O3", "-lineinfo"] + sys_includes + sm90_flags,
    )
    print(os.path.join(out, f"{name}.so"))


if __name__ == "__main__":
    main()
