"""MNIST and Fashion-MNIST from their IDX files (:data:`.catalog.IDX_FILES`, gzipped or raw).

Pixels are scaled to 0..1 and then normalised with the data set's usual mean and standard
deviation (:data:`.catalog.NORMALIZE`). Every file is checked (magic number, dimensions, size,
memory) before its data is read.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from .. import limits
from .catalog import IDX_FILES, check_split, find_files, missing_error, scale
from .downloads import download


def _open_idx(path: str):
    """A binary stream of ``path``'s bytes, decompressed when it ends in ``.gz``."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_idx(path, ndim: int, tail: tuple | None = None) -> np.ndarray:
    """The unsigned-byte IDX array in ``path`` (``.gz`` or raw), checked before its data is
    read: a regular file, magic number ``00 00 08 ndim``, positive dimensions, ``tail`` (the
    dimensions after the first, if given), the memory the array needs (:mod:`polycnn.limits`)
    and, for a raw file, the exact file size. The data is then read in bounded chunks, so a
    gzip stream that holds more than its header says is stopped after one chunk."""
    path = os.fspath(path)
    size = limits.regular_file(path, "IDX file")
    want = f"an IDX file of unsigned bytes with {ndim} dimension{'s' if ndim > 1 else ''}"
    head = 4 + 4 * ndim
    try:
        with _open_idx(path) as f:
            raw = f.read(head)
            if len(raw) < head:
                raise ValueError(f"{path}: {len(raw)} bytes, too short for {want} (truncated?)")
            magic = raw[:4]
            if magic[:2] != b"\0\0" or magic[2] != 0x08 or magic[3] != ndim:
                raise ValueError(f"{path}: magic number {magic.hex()} but expected {want}"
                                 f" (magic 000008{ndim:02x})")
            dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
            if tail is not None and dims[1:] != tuple(tail):
                raise ValueError(f"{path}: dimensions {dims} but expected"
                                 f" (N, {', '.join(map(str, tail))})")
            if min(dims) < 1:
                raise ValueError(f"{path}: dimensions {dims} include an empty one")
            expected = math.prod(dims)
            if not path.endswith(".gz") and size - head != expected:
                cut = "truncated" if size - head < expected else "trailing data"
                raise ValueError(f"{path}: {size - head:,} data bytes but its header {dims} says"
                                 f" {expected:,} ({cut})")
            # NOTE: the bytes, then float32 pixels and their scaled copy
            limits.check_memory(path, f"an IDX header of dimensions {dims}", expected * 9)
            body = limits.read_exact(f, expected, path, f"the data of its header {dims}")
            if f.read(1):
                raise ValueError(f"{path}: more data than its header {dims} says ({expected:,}"
                                 " bytes): trailing data")
    except (OSError, EOFError, zlib.error) as exc:
        if not path.endswith(".gz") or isinstance(exc, (PermissionError, FileNotFoundError)):
            raise
        raise ValueError(f"{path}: not a complete gzip file ({exc}); delete it and fetch it"
                         " again") from None
    return np.frombuffer(body, np.uint8).reshape(dims)



def _idx_split(name: str, data_dir: str, split: str, download_missing: bool, mirrors):
    data_dir = os.fspath(data_dir)
    found, missing = find_files(data_dir, IDX_FILES.values())
    if missing and download_missing:
        download(name, data_dir, mirrors=mirrors)
        found, missing = find_files(data_dir, IDX_FILES.values())
    if missing:
        raise missing_error(name, data_dir, [m + ".gz" for m in missing])
    prefix = "train" if split == "train" else "test"
    images = read_idx(found[IDX_FILES[prefix + "_images"]], 3, (28, 28))
    labels = read_idx(found[IDX_FILES[prefix + "_labels"]], 1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{found[IDX_FILES[prefix + '_labels']]}: {labels.shape[0]:,} labels for"
                         f" {images.shape[0]:,} images in {found[IDX_FILES[prefix + '_images']]}")
    if labels.max() > 9:
        raise ValueError(f"{found[IDX_FILES[prefix + '_labels']]}: label {labels.max()} outside 0..9")
    return scale(images[:, None], name), labels.astype(np.int64)


def mnist(data_dir, split: str = "train", download: bool = False, mirrors=None):
    """MNIST from the IDX files in ``data_dir``: (x float32 (N, 1, 28, 28) normalised, y int64)."""
    return _idx_split("mnist", data_dir, check_split(split), download, mirrors)


def fashion_mnist(data_dir, split: str = "train", download: bool = False, mirrors=None):
    """Fashion-MNIST from the IDX files in ``data_dir`` (same format and names as MNIST)."""
    return _idx_split("fashion-mnist", data_dir, check_split(split), download, mirrors)

