"""What this skillkern install can do here: versions, devices, the compiled extension and its
archs, the backends each op can use per device and the one "auto" picks.

    >>> import skillkern; from skillkern._info import format_info
    >>> print(format_info(skillkern.info()))            # the same as `skillkern info`

info() never raises: what cannot be found is reported as None with the reason beside it. It
imports the compiled extension (skillkern._C) to read its archs; it does not launch kernels.
"""
from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess

import torch

from skillkern import _backend, _config

# The public ops, in the order `skillkern info` lists them (the keys of _backend's auto order).
OPS = tuple(_backend._AUTO_ORDER)


def _triton_version() -> str | None:
    try:
        import triton
    except Exception:  # noqa: BLE001 - absent or broken: both mean "no Triton"
        return None
    return getattr(triton, "__version__", None)


@functools.lru_cache(maxsize=None)
def driver_version() -> str | None:
    """The NVIDIA driver version (nvidia-smi, else the CUDA driver API version torch reports),
    or None without an NVIDIA driver."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], check=False,
                               capture_output=True, text=True, timeout=20)
            line = r.stdout.strip().splitlines()[0].strip() if r.returncode == 0 and r.stdout.strip() else ""
            if line:
                return line
        except (OSError, subprocess.SubprocessError):
            pass
    if torch.cuda.is_available():
        try:  # e.g. 13000 -> "CUDA driver API 13.0"
            v = torch._C._cuda_getDriverVersion()
            return f"CUDA driver API {v // 1000}.{v % 1000 // 10}"
        except Exception:  # noqa: BLE001 - a private API that may move: no version then
            return None
    return None


def versions() -> dict:
    """skillkern, torch, triton, CUDA (torch's build), driver, python: the fields every
    benchmark row carries."""
    from skillkern import __version__

    return {
        "skillkern": __version__,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "driver": driver_version(),
        "python": platform.python_version(),
    }


def _devices() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                    "memory_gb": round(p.total_memory / 1e9, 1), "sms": p.multi_processor_count})
    return out


def _parse_archs(token: str) -> list[str] | None:
    """build_info()'s token, e.g. "80_90" -> ["8.0", "9.0"]; None when it is not a list of archs."""
    parts = [p for p in token.replace(";", "_").replace(",", "_").split("_") if p]
    if not parts or not all(p.isdigit() and len(p) >= 2 for p in parts):
        return None
    return [f"{p[:-1]}.{p[-1]}" for p in parts]


def extension() -> dict:
    """Whether skillkern._C loads, from where, and the archs it was compiled for."""
    try:
        err = _backend._extension_import_error()
    except Exception as e:  # noqa: BLE001 - a registration hook failed after the library loaded
        err = f"loaded, but registering its ops raised {type(e).__name__}: {e} (stale build? rebuild it)"
    out = {"loaded": err is None, "error": err, "source": os.environ.get("SKILLKERN_EXTENSION_LIB") or "skillkern._C",
           "build_info": None, "archs": None}
    if err is None:
        try:
            token = str(torch.ops.skillkern.build_info())
        except (AttributeError, RuntimeError) as e:
            out["build_info_error"] = (f"{type(e).__name__}: the loaded extension has no build_info() "
                                       "(built before it existed: rebuild with `make build`)")
        else:
            out["build_info"] = token
            out["archs"] = _parse_archs(token)
    return out


def backends() -> dict:
    """{op: {device type: {"available": [...], "auto": backend}}} for cpu and cuda. Without a
    GPU the cuda entry says what CUDA tensors would get from this install (nothing touches
    CUDA to find out); info()["devices"] says whether there is one."""
    out = {}
    for op in OPS:
        out[op] = {}
        for dev in (torch.device("cpu"), torch.device("cuda")):
            try:
                auto = _backend.resolve(op, "auto", dev)
            except Exception as e:  # noqa: BLE001 - report, never raise
                auto = f"error ({type(e).__name__})"
            entry = {}
            try:
                avail = _backend.available_backends(op, dev)
            except Exception as e:  # noqa: BLE001 - the extension's hooks failed: torch / triton still run
                avail = ["torch"] + (["triton"] if _backend._triton_reason(dev) is None else [])
                entry["cuda_error"] = f"{type(e).__name__}: {e}"
            entry.update(available=avail, auto=auto)
            if op in _backend._CUDA_OPS and _backend.has_cuda_extension() and not _backend.has_native_op(op):
                entry["cuda_missing"] = (f"the loaded extension lacks torch.ops.skillkern.{_backend._CUDA_OPS.get(op, op)} "
                                         "(built from older sources: rebuild)")
            out[op][dev.type] = entry
    return out


def info() -> dict:
    """Everything `skillkern info` prints, as a dict (JSON-serialisable)."""
    devices = _devices()
    ext = extension()
    for d in devices:  # can the loaded extension run on this GPU?
        d["extension_has_arch"] = None if not ext["archs"] else d["capability"] in ext["archs"]
    return {
        "versions": versions(),
        "devices": devices,
        "extension": ext,
        "triton_interpreter": _backend.interpreting(),
        "check_ids": _config.check_ids_enabled(),
        "backends": backends(),
    }


def format_info(d: dict) -> str:
    """The text of `skillkern info` for a dict from info()."""
    v = d["versions"]
    lines = ["skillkern " + str(v["skillkern"]),
             "versions: " + ", ".join(f"{k} {v[k] or '-'}" for k in ("torch", "triton", "cuda", "driver", "python"))]
    if d["devices"]:
        for g in d["devices"]:
            has = g.get("extension_has_arch")
            arch = "" if has is None else ("; extension compiled for it" if has else "; extension NOT compiled for it")
            lines.append(f"device {g['index']}: {g['name']} (sm {g['capability']}, {g['memory_gb']} GB, "
                         f"{g['sms']} SMs{arch})")
    else:
        lines.append("device: no CUDA GPU visible (CPU only: the torch backend runs; Triton only interpreted)")
    e = d["extension"]
    if e["loaded"]:
        archs = ", ".join(e["archs"]) if e["archs"] else (e["build_info"] or e.get("build_info_error", "unknown"))
        lines.append(f"extension: {e['source']} loaded; compiled archs: {archs}")
    else:
        lines.append(f"extension: not loaded ({e['error']})")
    flags = []
    if d["triton_interpreter"]:
        flags.append("TRITON_INTERPRET=1 (Triton kernels run on CPU tensors, slowly)")
    if not d["check_ids"]:
        flags.append("SKILLKERN_CHECK_IDS=0 (id range check off)")
    if flags:
        lines.append("settings: " + "; ".join(flags))
    devs = sorted({dev for per in d["backends"].values() for dev in per}, key=lambda s: s != "cpu")
    no_gpu = not d["devices"]
    lines.append("")
    label = {dev: dev + ("*" if dev == "cuda" and no_gpu else "") for dev in devs}
    head = f"{'op':18s}" + "".join(f"  {label[dev] + ' tensors: available':36s}  {'auto':8s}" for dev in devs)
    lines.append(head.rstrip())
    for op, per in d["backends"].items():
        row = f"{op:18s}"
        for dev in devs:
            b = per.get(dev, {})
            avail = (list(b.get("available", [])) + (["cuda(missing in _C)"] if b.get("cuda_missing") else [])
                     + (["cuda(error)"] if b.get("cuda_error") else []))
            row += f"  {', '.join(avail):36s}  {b.get('auto', '-'):8s}"
        lines.append(row.rstrip())
    if no_gpu and "cuda" in devs:
        lines.append("* no GPU here: what CUDA tensors would get from this install")
    return "\n".join(lines)
