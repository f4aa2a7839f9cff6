"""Checkpoint files that cannot run code, with a manifest of checksums written last.

A checkpoint folder (ckpt/step_NNNNNN/) holds:

    .metadata, __R_0.distcp   torch.distributed.checkpoint (DCP): the model and optimiser tensors,
                              each rank writing its own shard (FSDP) or one rank each replicated
                              tensor (DDP, one process); any number of ranks can read them back
    train_state.json          step, scheduler, task sampler, data positions, metrics, optimiser
                              hyper-parameters: plain JSON
    rng_rankR.pt              each rank's RNG states as tensors, ints and lists (loads with
                              torch.load(weights_only=True))
    model.safetensors         the full weights, for `init_from` and inspection (not read by resume)
    config.json               the model and train configs
    manifest.json             written last: every file above with its size and SHA-256

Nothing here unpickles arbitrary objects. DCP's .metadata is a pickle by DCP's design; it is read
by an unpickler that admits only DCP's own metadata classes and torch's dtype / size types;
this trainer puts only tensors into DCP, and an item stored there as a pickle is refused (DCP
itself would unpickle it freely). A checkpoint that tries to load anything else is refused with
UnsafeCheckpointError, naming the file. 0-dim tensors are stored as 1-element vectors (the shape
FSDP2 needs), so FSDP2, DDP and single-process runs read each other's checkpoints.

verify() checks a folder against its manifest (a missing manifest means the write was cut off or
the checkpoint is from an older trainer); newest_valid() walks the checkpoints newest first and
returns the first that verifies, with the reasons the newer ones were skipped.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import warnings

import numpy as np
import torch

MANIFEST = "manifest.json"
FORMAT = 2  # 1: the pickled train_state.pt of earlier versions, which resume no longer reads


class CheckpointError(RuntimeError):
    """A checkpoint that is partial, corrupted or otherwise unusable; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file that would need to run code (an arbitrary pickle) to load."""


# ----------------------------------------------------------------------------- writing


def fsync_path(path: str) -> None:
    """Flush a written file to the disk (so a rename after it never exposes a partial file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes) -> None:
    """Write and fsync one file."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str, obj) -> None:
    """Write and fsync a JSON file (floats round-trip exactly: json writes their repr)."""
    write_bytes(path, json.dumps(obj, indent=1).encode())


def read_json(path: str):
    """A JSON file's content; a missing or unreadable file is a CheckpointError naming it."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON (truncated or corrupted?): {e}") from None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str) -> None:
    """List every file of `folder` with its size and SHA-256 in manifest.json, written last: a
    checkpoint with a manifest is complete."""
    files = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name != MANIFEST and os.path.isfile(path):
            files[name] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    write_json(os.path.join(folder, MANIFEST), {"format": FORMAT, "files": files})


# ----------------------------------------------------------------------------- checking


def verify(folder: str) -> None:
    """Raise CheckpointError (naming the file) unless every file the manifest lists is present,
    of its size and checksum."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        old = os.path.isfile(os.path.join(folder, "train_state.pt"))
        raise CheckpointError(f"{path}: missing; " + (
            "the checkpoint is from an older trainer that pickled its state (resume no longer loads "
            "pickles, which can run code); start a fresh run" if old else
            "the checkpoint was cut off while being written (partial)"))
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a format-{FORMAT} manifest")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{path}: has no file list")
    for name, want in files.items():
        f = os.path.join(folder, name)
        if not isinstance(want, dict) or not {"bytes", "sha256"} <= set(want):
            raise CheckpointError(f"{path}: the entry of {name!r} lacks its size or checksum")
        if os.path.basename(name) != name:
            raise CheckpointError(f"{path}: lists {name!r}, which is not a plain file name")
        if not os.path.isfile(f):
            raise CheckpointError(f"{f}: missing (the manifest lists it; a lost shard?)")
        size = os.path.getsize(f)
        if size != want["bytes"]:
            raise CheckpointError(f"{f}: {size} bytes, the manifest says {want['bytes']} (truncated?)")
        if _sha256(f) != want["sha256"]:
            raise CheckpointError(f"{f}: SHA-256 differs from the manifest's (corrupted)")


def step_folders(ckpt_dir: str) -> list[str]:
    """The step_NNNNNN folders of ckpt_dir, newest first (unfinished *.tmp ones left out)."""
    if not os.path.isdir(ckpt_dir):
        return []
    names = [d for d in os.listdir(ckpt_dir) if d.startswith("step_") and not d.endswith(".tmp")
             and os.path.isdir(os.path.join(ckpt_dir, d))]
    return sorted(names, reverse=True)


def newest_valid(ckpt_dir: str) -> tuple[str | None, list[str]]:
    """(the newest checkpoint folder that verifies or None, [why each newer one was skipped]).
    ckpt/latest is tried first (it names the newest complete write), then every step folder
    newest first."""
    order = step_folders(ckpt_dir)
    latest = os.path.join(ckpt_dir, "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            name = f.read().strip()
        if name in order:
            order.remove(name)
            order.insert(0, name)
    skipped = []
    for name in order:
        folder = os.path.join(ckpt_dir, name)
        try:
            verify(folder)
        except CheckpointError as e:
            skipped.append(str(e))
            continue
        return folder, skipped
    return None, skipped


# ----------------------------------------------------------------------------- safe reading


def load_tensors_file(path: str):
    """torch.load with weights_only=True (tensors and plain Python types only). A file that needs
    anything else, a pickle that would run code among them, is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(f"{path}: refused: it holds objects other than tensors and plain "
                                    f"Python types, which could run code when loaded ({e})") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable (truncated or corrupted?): {e}") from None


def _dcp_metadata_types() -> dict:
    """What DCP's .metadata pickle may name: DCP's metadata dataclasses, torch.Size, dtypes,
    layouts and the path type of the checkpoint id; nothing that can run code."""
    from torch.distributed.checkpoint import filesystem, metadata
    allowed = {("torch.distributed.checkpoint.metadata", n): getattr(metadata, n) for n in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")}
    allowed[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = filesystem._StorageInfo
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    allowed[("collections", "OrderedDict")] = __import__("collections").OrderedDict
    allowed[("pathlib", "PosixPath")] = __import__("pathlib").PosixPath
    allowed[("pathlib", "WindowsPath")] = __import__("pathlib").PureWindowsPath
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata, refusing every global outside _dcp_metadata_types()."""

    def __init__(self, f, path: str):
        super().__init__(f)
        self.path = path
        self.allowed = _dcp_metadata_types()

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        torch_type = (torch.dtype, torch.layout, torch.memory_format)
        if module == "torch" and isinstance(getattr(torch, name, None), torch_type):
            return getattr(torch, name)
        raise UnsafeCheckpointError(f"{self.path}: refused: the pickle names {module}.{name}, which is not "
                                    "one of DCP's metadata types (loading it could run code)")


def read_dcp_metadata(path: str):
    """DCP's Metadata from a .metadata file, through the restricted unpickler."""
    try:
        with open(path, "rb") as f:
            return _MetadataUnpickler(f, path).load()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable (truncated or corrupted?): {e}") from None


def _safe_reader_and_planner(folder: str):
    """A DCP FileSystemReader and load planner that unpickle nothing freely: the metadata goes
    through _MetadataUnpickler, and an item stored as pickled bytes is refused (this trainer puts
    only tensors into DCP; everything else is JSON)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            md = read_dcp_metadata(os.path.join(folder, ".metadata"))
            if getattr(md, "storage_meta", None) is None:
                md.storage_meta = StorageMeta()
            md.storage_meta.load_id = self.load_id
            return md

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            raise UnsafeCheckpointError(
                f"{folder}: refused item {read_item.dest_index.fqn!r}: stored as a pickle, where this "
                "trainer stores only tensors (loading it could run code)")

    return SafeReader(folder), SafePlanner()


def save_tensors(state: dict, folder: str, group=None) -> None:
    """Save a flat {name: tensor or DTensor} dict with DCP into `folder` (a collective under a
    process group: every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process.*")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(folder, sync_files=True), process_group=group,
                 no_dist=group is None)


def load_tensors(state: dict, folder: str, group=None) -> None:
    """Fill the tensors of `state` in place from the DCP checkpoint in `folder`, resharded to
    this run's layout (any number of ranks), without a free unpickler."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    reader, planner = _safe_reader_and_planner(folder)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process.*")
            dcp.load(state, storage_reader=reader, planner=planner, process_group=group, no_dist=group is None)
    except CheckpointException as e:  # DCP gathers each rank's failure: re-raise ours by kind
        errors = [exc for exc, _ in e.failures.values()]
        for kind in (UnsafeCheckpointError, CheckpointError):
            for exc in errors:
                if isinstance(exc, kind):
                    raise exc from None
        raise CheckpointError(f"{folder}: the DCP tensors could not be loaded: "
                              + "; ".join(f"{type(x).__name__}: {x}" for x in errors)) from None


# ----------------------------------------------------------------------------- RNG states


def rng_state(device: torch.device) -> dict:
    """Every RNG this process draws from, as tensors, ints and lists (weights_only-loadable)."""
    version, mt, gauss = random.getstate()
    legacy = np.random.get_state(legacy=False)
    s = {"python": {"version": version, "state": list(mt), "gauss": gauss},
         "numpy": {"key": torch.from_numpy(legacy["state"]["key"].astype(np.int64)),
                   "pos": int(legacy["state"]["pos"]), "has_gauss": int(legacy["has_gauss"]),
                   "gauss": float(legacy["gauss"])},
         "torch": torch.get_rng_state()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def set_rng_state(s: dict, device: torch.device, path: str) -> None:
    """Restore what rng_state() returned; a malformed state is a CheckpointError naming `path`."""
    try:
        p = s["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
        n = s["numpy"]
        np.random.set_state({"bit_generator": "MT19937",
                             "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                             "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
        torch.set_rng_state(s["torch"])
        if "cuda" in s and device.type == "cuda":
            torch.cuda.set_rng_state(s["cuda"], device)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: not an RNG state this trainer wrote ({type(e).__name__}: {e})") from None


def seed_rng(seed: int, step: int, rank: int) -> None:
    """Seed every RNG of a rank that the checkpoint has no state for (more ranks than it was
    saved with): a deterministic function of (seed, step, rank)."""
    s = int(np.random.SeedSequence([seed, step, rank, 31337]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
