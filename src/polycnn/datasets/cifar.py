"""CIFAR-10 from its binary batches (:data:`.catalog.CIFAR_FILES`), in ``data_dir`` or its
``cifar-10-batches-bin/`` sub-folder; pixels scaled to 0..1 and normalised per channel.

NOTE: the number of records in a batch is read from :mod:`.catalog` at each call
(``catalog.catalog.CIFAR_BATCH_RECORDS``), so the tests can write small batches.
"""

from __future__ import annotations

import os

import numpy as np

from .. import limits
from . import catalog
from .catalog import (CIFAR_FILES, CIFAR_RECORD, CIFAR_SUBDIR, check_split, cifar_dir, missing_error,
                      scale)
from .downloads import download as _download_dataset   # NOTE: the loader's `download` flag shadows it


def read_cifar_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: (uint8 (N, 3, 32, 32), uint8 (N,)), size (checked before
    reading) and labels checked."""
    path = os.fspath(path)
    size = limits.regular_file(path, "CIFAR-10 batch")
    expected = catalog.CIFAR_BATCH_RECORDS * CIFAR_RECORD
    if size != expected:
        raise ValueError(f"{path}: {size:,} bytes but a CIFAR-10 binary batch has {expected:,}"
                         f" ({catalog.CIFAR_BATCH_RECORDS:,} records of {CIFAR_RECORD:,} bytes)")
    with open(path, "rb") as f:
        raw = limits.read_exact(f, expected, path, "the batch")
    rec = np.frombuffer(raw, np.uint8).reshape(catalog.CIFAR_BATCH_RECORDS, CIFAR_RECORD)
    labels = rec[:, 0]
    if labels.max() > 9:
        raise ValueError(f"{path}: label byte {labels.max()} outside 0..9 (not a CIFAR-10 batch;"
                         " CIFAR-100 has two label bytes)")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def cifar10(data_dir, split: str = "train", download: bool = False, mirrors=None):
    """CIFAR-10 (binary version) from ``data_dir`` or its ``cifar-10-batches-bin/`` sub-folder:
    (x float32 (N, 3, 32, 32) normalised per channel, y int64)."""
    split = check_split(split)
    data_dir = os.fspath(data_dir)
    folder = cifar_dir(data_dir)
    if folder is None and download:
        _download_dataset("cifar10", data_dir, mirrors=mirrors)
        folder = cifar_dir(data_dir)
    if folder is None:
        have = {f for d in (data_dir, os.path.join(data_dir, CIFAR_SUBDIR)) if os.path.isdir(d)
                for f in os.listdir(d)}
        raise missing_error("cifar10", data_dir,
                            [f for f in CIFAR_FILES if f not in have] or list(CIFAR_FILES),
                            where=os.path.join(data_dir, CIFAR_SUBDIR))
    names = CIFAR_FILES[:5] if split == "train" else CIFAR_FILES[5:]
    parts = [read_cifar_batch(os.path.join(folder, f)) for f in names]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    return scale(x, "cifar10"), y

