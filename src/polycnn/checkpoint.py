"""Checkpoints: one ``.npz`` file, no pickle, written atomically, checked on load.

Inside the archive:
- ``__meta__``: UTF-8 JSON as a uint8 array: format and version, the architecture spec, the
  optimiser's spec (type, hyperparameters, schedule, step count), the RNG state, the epoch, the
  history and metrics, user metadata, and a SHA-256 over every array (name, dtype, shape, bytes);
- ``model.<layer>.<name>``: parameters and buffers, e.g. ``model.0.weight``;
- ``optim.<param index>.<buffer>``: optimiser state, e.g. ``optim.0.velocity``.

The file is written to a temporary file in the same folder and renamed over the target
(``os.replace``), so a crash never leaves a half-written checkpoint. ``read`` never unpickles:
it reads the metadata first, then checks every array's ``.npy`` header against the shapes the
architecture gives (and the total against :func:`polycnn.limits.memory_limit`) before its data
is decompressed, so a zip bomb costs nothing; a truncated, altered or foreign file raises
``ValueError`` saying so, and so does an array holding NaN or inf (nothing polycnn saves holds
them on purpose: parameters, BatchNorm statistics and optimiser state are finite in a run that
trains; they are not after a step that diverged).
Arrays are stored as host NumPy arrays, so a checkpoint loads on any backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile

import numpy as np

from . import limits
from ._files import replaced_atomically

#: members and bytes of an archive's directory, checked before zipfile reads it (a model of
#: limits.MAX_LAYERS layers has at most a few thousand arrays)
_MAX_MEMBERS = 20_000
_MAX_DIRECTORY = 16 << 20

FORMAT = "polycnn-checkpoint"
VERSION = 1
_META = "__meta__"


def _digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(path, model, optimizer=None, rng=None, epoch: int | None = None, history=None,
         metrics=None, position=None, **metadata) -> str:
    """Write ``model`` (and optionally the optimiser, the RNG, the epoch, history, metrics, a
    JSON-ready ``position`` inside an unfinished epoch (``fit`` writes it on Ctrl-C) and JSON-ready
    ``metadata``) to ``path`` atomically; returns the path. An existing file keeps its mode."""
    path = os.fspath(path)
    be = model.backend
    arrays = {f"model.{k}": be.to_numpy(v) for k, v in model.named_arrays().items()}
    optim_spec = None
    if optimizer is not None:
        optim_spec = optimizer.spec()
        arrays.update({f"optim.{k}": be.to_numpy(v) for k, v in optimizer.state_arrays().items()})
    meta = {
        "format": FORMAT, "version": VERSION,
        "model": model.spec(),
        "optimizer": optim_spec,
        "rng": None if rng is None else rng.bit_generator.state,
        "epoch": epoch,
        "position": position,
        "history": None if history is None else dict(history),
        "metrics": metrics,
        "metadata": metadata,
        "sha256": _digest(arrays),
    }
    try:
        text = json.dumps(meta, allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"checkpoint metadata must be JSON-ready: {exc}") from None
    arrays[_META] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    with replaced_atomically(path) as f:
        np.savez(f, **arrays)
    return path


def read(path) -> tuple[dict, dict]:
    """-> (metadata dict, host arrays by name); raises ``ValueError`` for a damaged file.

    Sizes are checked before anything is allocated: the metadata record (at most
    :data:`limits.MAX_META_BYTES`) is read first, its architecture gives the shape of every
    array the file may hold, and each array's ``.npy`` header is checked against it (and the
    total against :func:`limits.memory_limit`) before its data is decompressed, in bounded
    chunks."""
    path = os.fspath(path)
    limits.regular_file(path, "checkpoint")
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":  # NOTE: every .npz is a zip archive
            raise ValueError(f"{path} is not a polycnn checkpoint (not an .npz archive)")
        _check_directory(fh, path)
    try:
        with zipfile.ZipFile(path) as zf:
            return _read_archive(zf, path)
    except ValueError:
        raise
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as exc:  # NOTE: zipfile.BadZipFile, zlib.error, EOFError, OSError
        raise ValueError(f"{path} is not a readable polycnn checkpoint (truncated or corrupt):"
                         f" {type(exc).__name__}: {exc}") from None


def _check_directory(fh, path: str) -> None:
    """The zip's end record, read before zipfile loads the whole directory into memory: at most
    :data:`_MAX_MEMBERS` members in at most :data:`_MAX_DIRECTORY` bytes (zip64's markers for
    more than 65,535 members or a 4 GiB directory are over both)."""
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - 22 - 0xFFFF))
    tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise ValueError(f"{path} is not a readable polycnn checkpoint (truncated or corrupt): the"
                         " zip archive has no end record")
    members, directory = struct.unpack_from("<HL", tail, at + 10)
    if members > _MAX_MEMBERS or directory > _MAX_DIRECTORY:
        raise ValueError(f"{path}: the archive claims {members:,} members in a directory of"
                         f" {directory:,} bytes, over the limit of {_MAX_MEMBERS:,} members and"
                         f" {_MAX_DIRECTORY:,} bytes")


def _read_archive(zf: zipfile.ZipFile, path: str) -> tuple[dict, dict]:
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: the archive names an array twice (not written by polycnn)")
    by_name = dict(zip(names, infos))
    if _META + ".npy" not in by_name:
        raise ValueError(f"{path} is an .npz file but not a polycnn checkpoint (no {_META} record)")
    with zf.open(by_name[_META + ".npy"]) as f:
        shape, fortran, dtype = limits.npy_header(f, path, f"the {_META} record")
        if dtype != np.uint8 or len(shape) != 1:
            raise ValueError(f"{path} is an .npz file but not a polycnn checkpoint (no {_META}"
                             " record)")
        if shape[0] > limits.MAX_META_BYTES:
            raise ValueError(f"{path}: the {_META} record claims {shape[0]:,} bytes, over the limit"
                             f" of {limits.MAX_META_BYTES:,}")
        raw = limits.read_npy_data(f, shape, fortran, dtype, path, f"the {_META} record")
        if f.read(1):  # NOTE: reading to the end also checks the member's CRC
            raise ValueError(f"{path}: the {_META} record has data after its {shape[0]:,} bytes")
    meta = limits.parse_json(raw.tobytes(), f"{path}: the checkpoint's metadata",
                             limits.MAX_META_BYTES)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a polycnn checkpoint (format {meta.get('format')!r})"
                         if isinstance(meta, dict) else f"{path}: corrupt checkpoint metadata")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {meta.get('version')} is not supported"
                         f" (this polycnn reads version {VERSION})")
    expected = _expected_arrays(meta, path)

    headers, total = {}, 0
    for name, info in by_name.items():
        if name == _META + ".npy":
            continue
        key = name[:-4] if name.endswith(".npy") else name
        if key not in expected:
            raise ValueError(f"{path}: array {key!r} is not part of the checkpoint's architecture"
                             " (altered or foreign file)")
        with zf.open(info) as f:
            shape, fortran, dtype = limits.npy_header(f, path, f"array {key}")
        if shape != expected[key]:
            raise ValueError(f"{path}: array {key} has shape {shape} but the checkpoint's"
                             f" architecture says {expected[key]}")
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise ValueError(f"{path}: array {key} is {dtype}, expected float32 or float64")
        headers[key] = (info, shape, fortran, dtype)
        total += limits.images_bytes(1, shape, dtype.itemsize)
    limits.check_memory(path, f"arrays of {total:,} bytes", total)

    arrays = {}
    for key, (info, shape, fortran, dtype) in headers.items():
        with zf.open(info) as f:
            limits.npy_header(f, path, f"array {key}")
            arrays[key] = limits.read_npy_data(f, shape, fortran, dtype, path, f"array {key}")
            if f.read(1):  # NOTE: reading to the end also checks the member's CRC
                raise ValueError(f"{path}: array {key} has data after its {shape} values")
    if _digest(arrays) != meta.get("sha256"):
        raise ValueError(f"{path}: checkpoint contents do not match its checksum (the file was"
                         " altered or damaged)")
    for key, a in arrays.items():
        bad = _count_nonfinite(a)
        if bad:
            raise ValueError(f"{path}: array {key} holds {bad:,} NaN or infinite value(s) of"
                             f" {a.size:,} (saved from a run that diverged?): a model computes"
                             " only NaN from them; use an earlier checkpoint or retrain")
    return meta, arrays


def _count_nonfinite(a: np.ndarray, chunk: int = 1 << 20) -> int:
    """NaN and ±inf in ``a``, counted a chunk at a time (the mask is never the array's size)."""
    flat = a.reshape(-1)
    return sum(int(np.count_nonzero(~np.isfinite(flat[i:i + chunk])))
               for i in range(0, flat.size, chunk))


def _expected_arrays(meta: dict, path: str) -> dict:
    """name -> shape of every array the checkpoint's architecture allows: ``model.*`` from the
    layers, ``optim.<i>.<buffer>`` shaped as parameter i (the layers' sizes checked first)."""
    from . import optim
    from .models import layers_from_spec

    spec = meta.get("model")
    if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list):
        raise ValueError(f"{path}: the checkpoint's architecture spec is missing or corrupt")
    layers = layers_from_spec(spec["layers"], f"{path}: the checkpoint's architecture")
    expected = {f"model.{k}": v for k, v in limits.model_arrays(layers).items()}
    params = limits.parameter_shapes(layers)
    buffers = {b for cls in vars(optim).values()
               if isinstance(cls, type) and issubclass(cls, optim.Optimizer)
               for b in getattr(cls, "_buffers", ())}
    for i, shape in enumerate(params):
        for name in buffers:
            expected[f"optim.{i}.{name}"] = shape
    return expected


def load(path, backend=None):
    """The model saved at ``path``, on ``backend`` (name or object; None = default), with
    ``model.training_state`` holding what ``fit(..., resume=True)`` needs."""
    from .layers import Sequential

    meta, arrays = read(path)
    model = Sequential.from_spec(meta["model"], backend=backend)
    model.load_arrays({k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")})
    model.training_state = {
        "optimizer": meta.get("optimizer"),
        "optimizer_arrays": {k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")},
        "rng": meta.get("rng"),
        "epoch": meta.get("epoch"),
        "position": meta.get("position"),
        "history": meta.get("history"),
        "metrics": meta.get("metrics"),
        "metadata": meta.get("metadata") or {},
        "path": os.fspath(path),
    }
    return model


__all__ = ["save", "load", "read", "FORMAT", "VERSION"]
