"""Data files the tests write: IDX (MNIST layout), CIFAR-10 binary batches, a folder of PNGs."""

from __future__ import annotations

import gzip
import os

import numpy as np

from polycnn.datasets import CIFAR_FILES


def idx_bytes(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a, np.uint8)
    header = bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes()
    return header + a.tobytes()


def write_mnist(folder, n_train=40, n_test=20, seed=0, gz=True) -> dict:
    """Four IDX files under the standard names; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    os.makedirs(folder, exist_ok=True)
    for name, a in arrays.items():
        data = idx_bytes(a)
        if gz:
            with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                f.write(data)
        else:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
    return arrays


def write_cifar(folder, records, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    out = {}
    for name in CIFAR_FILES:
        labels = rng.integers(0, 10, records).astype(np.uint8)
        pixels = rng.integers(0, 256, (records, 3, 32, 32)).astype(np.uint8)
        rec = np.concatenate([labels[:, None], pixels.reshape(records, -1)], axis=1)
        (folder / name).write_bytes(rec.tobytes())
        out[name] = (pixels, labels)
    return out


def write_png_folder(root, per_class=6, size=12) -> None:
    """An image folder of two classes told apart by where the bright half is: left or right."""
    from PIL import Image  # NOTE: in the test extra: a missing Pillow fails the run, never skips it

    rng = np.random.default_rng(0)
    for label, cls in enumerate(["left", "right"]):
        os.makedirs(root / cls)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            half = slice(0, size // 2) if label == 0 else slice(size // 2, size)
            img[:, half] += 150
            Image.fromarray(img).save(root / cls / f"{i}.png")
