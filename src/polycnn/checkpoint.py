"""Checkpoints: one ``.npz`` file, no pickle, written atomically, checked on load.

Inside the archive:
- ``__meta__``: UTF-8 JSON as a uint8 array: format and version, the architecture spec, the
  optimiser's spec (type, hyperparameters, schedule, step count), the RNG state, the epoch, the
  history and metrics, user metadata, and a SHA-256 over every array (name, dtype, shape, bytes);
- ``model.<layer>.<name>``: parameters and buffers, e.g. ``model.0.weight``;
- ``optim.<param index>.<buffer>``: optimiser state, e.g. ``optim.0.velocity``.

The file is written to a temporary file in the same folder and renamed over the target
(``os.replace``), so a crash never leaves a half-written checkpoint. ``load`` reads with
``allow_pickle=False``; a truncated, altered or foreign file raises ``ValueError`` saying so.
Arrays are stored as host NumPy arrays, so a checkpoint loads on any backend.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ._files import replaced_atomically

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
         metrics=None, **metadata) -> str:
    """Write ``model`` (and optionally the optimiser, the RNG, the epoch, history, metrics and
    JSON-ready ``metadata``) to ``path`` atomically; returns the path."""
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

    with replaced_atomically(path, suffix=".npz") as f:
        np.savez(f, **arrays)
    return path


def read(path) -> tuple[dict, dict]:
    """-> (metadata dict, host arrays by name); raises ``ValueError`` for a damaged file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":  # NOTE: every .npz is a zip archive
            raise ValueError(f"{path} is not a polycnn checkpoint (not an .npz archive)")
    try:
        z = np.load(path, allow_pickle=False)
        with z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        if "not a polycnn checkpoint" in str(exc):
            raise
        raise ValueError(f"{path} is not a readable polycnn checkpoint (truncated or corrupt): {exc}") from None
    except (OSError, EOFError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise ValueError(f"{path} is not a readable polycnn checkpoint (truncated or corrupt): {exc}") from None
    except Exception as exc:  # NOTE: zipfile.BadZipFile, zlib.error, ValueError for a bad header
        raise ValueError(f"{path} is not a readable polycnn checkpoint (truncated or corrupt):"
                         f" {type(exc).__name__}: {exc}") from None
    raw = arrays.pop(_META, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"{path} is an .npz file but not a polycnn checkpoint (no {_META} record)")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: the checkpoint's metadata is corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a polycnn checkpoint (format {meta.get('format')!r})"
                         if isinstance(meta, dict) else f"{path}: corrupt checkpoint metadata")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {meta.get('version')} is not supported"
                         f" (this polycnn reads version {VERSION})")
    if _digest(arrays) != meta.get("sha256"):
        raise ValueError(f"{path}: checkpoint contents do not match its checksum (the file was"
                         " altered or damaged)")
    return meta, arrays


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
        "history": meta.get("history"),
        "metrics": meta.get("metrics"),
        "metadata": meta.get("metadata") or {},
        "path": os.fspath(path),
    }
    return model


__all__ = ["save", "load", "read", "FORMAT", "VERSION"]
