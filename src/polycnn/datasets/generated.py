"""The built-in shapes data set: triangles, squares and circles, generated from a seed.

Every image is drawn on the host, vectorised over the batch, from signed distance functions:
each shape gets a random centre, size, rotation, outline or filled style (with a random line
width), colour/intensity, background level and Gaussian pixel noise. The three classes have the
same area distribution, so size does not give the class away, and shapes sit anywhere in the
frame, so a linear classifier on raw pixels does clearly worse than a CNN.

Splits never share an image: each split is drawn from its own stream of the seed
(``SeedSequence([seed, split index])``), and :func:`shapes_splits` also drops any validation or
test image whose bytes equal a training image's.
"""

from __future__ import annotations

import hashlib

import numpy as np

CLASSES = ("triangle", "square", "circle")
SPLITS = ("train", "val", "test")


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _render(rng: np.random.Generator, n: int, size: int, channels: int):
    """-> (images float32 (n, channels, size, size), labels int64 (n,))."""
    labels = rng.integers(0, len(CLASSES), size=n)
    # radius of the circle with the same area; the square and triangle are scaled to match
    r = rng.uniform(0.16, 0.30, size=n) * size
    theta = rng.uniform(0.0, 2 * np.pi, size=n)
    filled = rng.random(n) < 0.5
    width = rng.uniform(1.0, 2.2, size=n)
    half_side = r * np.sqrt(np.pi) / 2.0                         # square of area pi r^2
    circum = r * np.sqrt(4.0 * np.pi / (3.0 * np.sqrt(3.0)))     # triangle of area pi r^2
    reach = np.select([labels == 0, labels == 1], [circum, half_side * np.sqrt(2.0)], r) + 1.0
    reach = np.minimum(reach, size / 2.0)   # NOTE: at the smallest sizes a corner may touch the border
    cx = rng.uniform(reach, size - reach)
    cy = rng.uniform(reach, size - reach)
    colour = rng.uniform(0.35, 1.0, size=(n, channels))
    background = rng.uniform(0.0, 0.3, size=(n, channels))
    sigma = rng.uniform(0.02, 0.12, size=n)
    noise = rng.standard_normal((n, channels, size, size))

    grid = np.arange(size) + 0.5
    dx = grid[None, None, :] - cx[:, None, None]
    dy = grid[None, :, None] - cy[:, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy          # pixel centres in the shape's frame

    d = np.sqrt(u * u + v * v) - r[:, None, None]     # circle
    square = np.maximum(np.abs(u), np.abs(v)) - half_side[:, None, None]
    tri = np.full_like(u, -np.inf)
    for k in range(3):                                # equilateral triangle: 3 half-planes
        a = np.pi / 2 + 2 * np.pi * k / 3
        tri = np.maximum(tri, np.cos(a) * u + np.sin(a) * v)
    tri -= (circum / 2.0)[:, None, None]              # inradius is half the circumradius
    d = np.where((labels == 0)[:, None, None], tri, np.where((labels == 1)[:, None, None], square, d))

    # antialiased coverage: one pixel of ramp across the edge
    fill = np.clip(0.5 - d, 0.0, 1.0)
    outline = np.clip(width[:, None, None] / 2 + 0.5 - np.abs(d), 0.0, 1.0)
    cover = np.where(filled[:, None, None], fill, outline)

    img = background[:, :, None, None] + cover[:, None] * (colour - background)[:, :, None, None]
    img += sigma[:, None, None, None] * noise
    return img.astype(np.float32), labels.astype(np.int64)


def shapes(n: int = 6000, image_size: int = 32, channels: int = 3, seed: int = 0,
           split: str = "train"):
    """``n`` images of triangles (0), squares (1) and circles (2) as float32 NCHW with values
    about 0..1, and int64 labels. ``split`` ("train", "val" or "test") picks an independent
    stream of ``seed``; the same arguments always give the same images."""
    n = _check_int(n, "n", 1)
    image_size = _check_int(image_size, "image_size", 12)
    channels = _check_int(channels, "channels", 1)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS.index(split)]))
    xs, ys = [], []
    chunk = max(1, 2**22 // (image_size * image_size * max(channels, 4)))   # bounded temporaries
    for start in range(0, n, chunk):
        x, y = _render(rng, min(chunk, n - start), image_size, channels)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _digests(x: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in x]


def shapes_splits(n_train: int = 6000, n_val: int = 1000, n_test: int = 2000, image_size: int = 32,
                  channels: int = 3, seed: int = 0) -> dict:
    """``{"train": (x, y), "val": (x, y), "test": (x, y)}``; no image appears in two splits
    (validation and test images equal to an earlier split's are dropped, which in practice never
    happens)."""
    out, seen = {}, set()
    for split, n in zip(SPLITS, (n_train, n_val, n_test)):
        if n == 0 and split != "train":
            out[split] = (np.zeros((0, channels, image_size, image_size), np.float32),
                          np.zeros(0, np.int64))
            continue
        x, y = shapes(n, image_size, channels, seed, split)
        digests = _digests(x)
        keep = np.array([d not in seen for d in digests])
        seen.update(digests)
        out[split] = (x[keep], y[keep])
    return out


__all__ = ["CLASSES", "SPLITS", "shapes", "shapes_splits"]
