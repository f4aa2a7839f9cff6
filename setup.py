"""Build of skillkern's optional CUDA C++ extension, skillkern._C (csrc/*.cpp, csrc/*.cu).

Package metadata lives in pyproject.toml; this file only adds the extension. The extension is
built when torch is a CUDA build (torch.version.cuda) and a CUDA toolkit with nvcc is found. A
visible GPU is NOT needed, so GPU-less CI machines compile (and so test) the CUDA code. When the
toolkit is found, a compile error fails the install: there is no silent fallback.

Environment (see also the Makefile):
  SKILLKERN_SKIP_CUDA_BUILD=1  skip the extension (pure Python + Triton install)
  SKILLKERN_CUDA_ARCHS         arch list, overrides TORCH_CUDA_ARCH_LIST (e.g. "9.0")
  TORCH_CUDA_ARCH_LIST         default "8.0;9.0" (A100, H100/H200); each arch adds a full
                               device compile, so keep the list short. 9.0 compiles as 9.0a and
                               needs the nvidia-cutlass wheel's headers (sm90_build below)
  CUDA_HOME / CUDA_PATH        toolkit root; else found from nvcc on PATH, /usr/local/cuda,
                               /usr/local/cuda-13.0, /usr/local/cuda-*
  MAX_JOBS                     parallel compile jobs; default min(2, cores, RAM GB / 4), since
                               one nvcc job against torch's headers peaks at ~3-4 GB
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0"


def log(msg: str) -> None:
    print(f"[skillkern setup] {msg}", file=sys.stderr, flush=True)


def is_cuda_toolkit(home: str | None) -> bool:
    """A toolkit root has bin/nvcc and the runtime headers (so /usr/local, where a bare nvcc
    wrapper script may sit in /usr/local/bin, is not mistaken for one)."""
    return bool(home) and os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isfile(
        os.path.join(home, "include", "cuda_runtime_api.h")
    )


def nvcc_top(nvcc: str) -> str | None:
    """The toolkit root nvcc itself reports (`#$ TOP=...` in a dry run); this sees through
    wrapper scripts such as /usr/local/bin/nvcc -> `exec /usr/local/cuda-13.0/bin/nvcc`."""
    try:
        out = subprocess.run([nvcc, "-dryrun", "-c", "-x", "cu", os.devnull], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (out.stderr + out.stdout).splitlines():
        if line.startswith("#$ TOP="):
            return os.path.normpath(line[len("#$ TOP="):].strip())
    return None


def find_cuda_home() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            if is_cuda_toolkit(home):
                return home
            log(f"{var}={home} has no bin/nvcc + include/cuda_runtime_api.h; searching elsewhere")
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        candidates.append(nvcc_top(nvcc))
    candidates += ["/usr/local/cuda", "/usr/local/cuda-13.0"]
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in candidates:
        if is_cuda_toolkit(home):
            return home
    return None


def default_max_jobs() -> int:
    cores = os.cpu_count() or 1
    try:
        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        ram_gb = 8.0
    return max(1, min(2, cores, int(ram_gb // 4)))


def wheel_include_dirs(torch_module, cuda_major: str) -> list[str]:
    """Headers of torch's `nvidia` pip wheels (cuBLAS, cuSPARSE, cuSOLVER, ...), which
    ATen/cuda/CUDAContext.h includes and a partial toolkit may lack."""
    site = os.path.dirname(os.path.dirname(os.path.abspath(torch_module.__file__)))
    nvidia = os.path.join(site, "nvidia")
    majors = [f"cu{cuda_major}"] + [m for m in ("cu13", "cu12") if m != f"cu{cuda_major}"]
    dirs = [os.path.join(nvidia, m, "include") for m in majors]
    # Older wheels (CUDA 12) put each library's headers in nvidia/<lib>/include.
    dirs += [os.path.join(nvidia, lib, "include") for lib in ("cublas", "cusparse", "cusolver")]
    return [d for d in dirs if os.path.isdir(d)]


CUTLASS_WHEEL = "nvidia-cutlass==4.2.0.0"


def cutlass_include() -> str | None:
    """The C++ headers (cutlass/, cute/) that the nvidia-cutlass wheel ships under
    cutlass_library/source/include, found without importing the package (its Python side wants
    more than headers). A build dependency only: nothing of it is needed at run time."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("cutlass_library")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        inc = os.path.join(loc, "source", "include")
        if os.path.isfile(os.path.join(inc, "cutlass", "cutlass.h")) and os.path.isdir(os.path.join(inc, "cute")):
            return inc
    return None


def sm90_build(arch_list: str) -> tuple[str, list[str]]:
    """(the arch list to compile, extra nvcc flags) for the skill FFN's sm_90 grouped GEMMs
    (csrc/skill_ffn/sm90_grouped_fwd.cu: CUTLASS, wgmma and setmaxnreg, so sm_90a). With 9.0 in the
    list, 9.0 becomes 9.0a (the same machines: sm_90a code runs on compute capability 9.0, as
    sm_90 code does) and the CUTLASS headers must be found; without it nothing changes and the
    file compiles to stubs."""
    archs = arch_list.replace(";", " ").split()
    if not any(a.split("+")[0] in ("9.0", "9.0a") for a in archs):
        return arch_list, []
    inc = cutlass_include()
    if inc is None:
        raise SystemExit(f"[skillkern setup] the arch list {arch_list!r} has 9.0, whose skill-FFN GEMMs need the "
                         f"CUTLASS headers: `pip install --no-deps {CUTLASS_WHEEL}` (headers only, a build "
                         "dependency), or leave 9.0 out of SKILLKERN_CUDA_ARCHS / TORCH_CUDA_ARCH_LIST")
    out = []
    for a in archs:
        if a.split("+")[0] in ("9.0", "9.0a"):
            out.append("9.0a")
            if a.endswith("+PTX"):  # compute_90a PTX would not run on later GPUs: keep compute_90's too
                out.append("9.0+PTX")
        else:
            out.append(a)
    return ";".join(dict.fromkeys(out)), ["-DSKILLKERN_SM90_GROUPED", "-isystem", inc]


def cuda_extensions():
    """([extension], cmdclass) for skillkern._C, or ([], {}) with the reason printed."""
    if os.environ.get("SKILLKERN_SKIP_CUDA_BUILD", "0") not in ("", "0"):
        log("SKILLKERN_SKIP_CUDA_BUILD is set: skipping the CUDA extension skillkern._C")
        return [], {}
    cuda_home = find_cuda_home()
    if cuda_home is None:
        log("no CUDA toolkit (nvcc) found: skipping the CUDA extension skillkern._C "
            "(set CUDA_HOME to build it)")
        return [], {}
    # torch.utils.cpp_extension reads CUDA_HOME when it is first imported.
    os.environ["CUDA_HOME"] = cuda_home
    try:
        import torch
    except ImportError as e:
        log(f"torch is not importable ({e}): skipping the CUDA extension skillkern._C "
            "(install torch first and use --no-build-isolation)")
        return [], {}
    if not torch.version.cuda:
        log(f"torch {torch.__version__} is not a CUDA build: skipping the CUDA extension skillkern._C")
        return [], {}

    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    cpp_extension.CUDA_HOME = cuda_home  # in case torch was imported with another value
    if os.environ.get("SKILLKERN_CUDA_ARCHS"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["SKILLKERN_CUDA_ARCHS"]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    os.environ.setdefault("MAX_JOBS", str(default_max_jobs()))

    # -isystem, not -I: searched after the toolkit's own include dir (which torch adds with -I),
    # so a complete toolkit keeps its headers and the wheel's only fill the gaps.
    extra = wheel_include_dirs(torch, torch.version.cuda.split(".")[0])
    sys_includes = [flag for d in extra for flag in ("-isystem", d)]
    sources = sorted(
        os.path.relpath(p, ROOT)
        for ext in ("cpp", "cu")
        for p in glob.glob(os.path.join(ROOT, "csrc", "**", f"*.{ext}"), recursive=True)
    )
    log(f"building skillkern._C with CUDA_HOME={cuda_home}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}), TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}, "
        f"MAX_JOBS={os.environ['MAX_JOBS']}, wheel headers={extra or 'none'}")
    # No --use_fast_math: the FFN's exact-erf GELU must stay exact. No -std either: torch passes
    # the standard its own headers need (torch 2.14's fail under -std=c++17: std::strong_ordering
    # in c10/util/intrusive_ptr.h), and our sources are valid C++17 and C++20.
    # The arch list as one shell- and macro-safe token ("8.0;9.0" -> 80_90; csrc/ops.cpp
    # stringifies it for skillkern.info()).
    archs_token = "_".join(a.replace(".", "") for a in
                           os.environ["TORCH_CUDA_ARCH_LIST"].replace(";", " ").split())
    archs_define = f"-DSKILLKERN_CUDA_ARCHS={archs_token}"
    os.environ["TORCH_CUDA_ARCH_LIST"], sm90_flags = sm90_build(os.environ["TORCH_CUDA_ARCH_LIST"])
    log(f"compiling for {os.environ['TORCH_CUDA_ARCH_LIST']}; sm_90 grouped GEMMs: "
        f"{'CUTLASS at ' + sm90_flags[-1] if sm90_flags else 'not built (no 9.0)'}")
    ext = CUDAExtension(
        name="skillkern._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={
            "cxx": ["-O3", archs_define] + sys_includes,
            "nvcc": ["-O3", "-lineinfo"] + sys_includes + sm90_flags,
        },
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


if __name__ == "__main__":  # setuptools runs this file as __main__; csrc/build_dev.py imports it
    ext_modules, cmdclass = cuda_extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
