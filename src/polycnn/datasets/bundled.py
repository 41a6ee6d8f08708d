"""The UCI digits, shipped inside the package (``polycnn/data/digits.csv.gz``).

E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning
Repository, 1998, https://doi.org/10.24432/C50P49, licensed CC BY 4.0. 1,797 images of 8x8
pixels with values 0..16 (the copy distributed with scikit-learn,
``sklearn/datasets/data/digits.csv.gz``); see ``polycnn/data/README.md``.
"""

from __future__ import annotations

import gzip
import io

import numpy as np


def digits(seed: int | None = None):
    """The UCI optical-recognition digits shipped with polycnn (CC BY 4.0; see the module doc):
    (x float32 (1797, 1, 8, 8) scaled to 0..1, y int64 0..9); ``seed`` shuffles the order."""
    from importlib.resources import files

    raw = (files("polycnn") / "data" / "digits.csv.gz").read_bytes()
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    if table.shape != (1797, 65):
        raise ValueError(f"polycnn/data/digits.csv.gz: table of shape {table.shape}, expected"
                         " (1797, 65); the installation is damaged")
    x = (table[:, :64].reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = table[:, 64].astype(np.int64)
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(y))
        x, y = x[order], y[order]
    return x, y

