"""Image folders: one sub-folder per class holding PNG/JPEG files (needs Pillow), each resized to
a square; ``train/`` and ``test/`` sub-folders, when both exist, are used as the splits.

:func:`read_image` reads one picture the way the folders are read; ``polycnn predict`` reads
its inputs with it too (:mod:`polycnn.inputs`). Every file is checked before it is decoded (the
pixel count in its header) and the memory a folder needs before any file is read.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from .. import limits
from .catalog import IMAGE_EXTENSIONS, carve


def _pillow():
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ValueError("reading an image folder needs Pillow: pip install polycnn[images]") from None
    return Image, UnidentifiedImageError


def _class_folders(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(d for d in os.listdir(root)
                     if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"{root}: an image folder needs one sub-folder per class (at least two),"
                         f" found {classes or 'none'}")
    return classes


def read_image(path, image_size: int, channels: int = 3) -> np.ndarray:
    """One PNG/JPEG file as float32 (channels, image_size, image_size), values 0..255, resized
    bilinearly: how :func:`image_folder` reads each file and ``polycnn predict`` a picture.
    The pixel count in its header is checked (:data:`limits.MAX_IMAGE_PIXELS`, and Pillow's
    decompression-bomb limit) before it is decoded; a file Pillow cannot read raises
    ``ValueError`` naming it."""
    Image, Unidentified = _pillow()
    path = os.fspath(path)
    limits.regular_file(path, "image")
    try:
        with warnings.catch_warnings():
            # NOTE: our own, lower limit below says it better than Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: refused to decode the image: {exc}") from None
    except (Unidentified, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    with im:
        width, height = im.size
        if width * height > limits.MAX_IMAGE_PIXELS:
            raise ValueError(f"{path}: the image claims {width}x{height} = {width * height:,} pixels,"
                             f" over the limit of {limits.MAX_IMAGE_PIXELS:,} (a decompression"
                             " bomb?)")
        try:
            im = im.convert("RGB" if channels == 3 else "L")
            im = im.resize((image_size, image_size), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32)
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def image_folder(root, image_size: int = 32, channels: int = 3, classes=None):
    """Every PNG/JPEG under ``root/<class>/``, resized to ``image_size`` square, as
    (x float32 (N, channels, size, size) in 0..1, y int64, class names). ``channels`` 1 reads
    greyscale, 3 RGB. The files are counted and the memory they need checked before any is
    read; a file Pillow cannot read raises ``ValueError`` naming it (:func:`read_image`)."""
    _pillow()
    root = os.fspath(root)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    names = list(classes) if classes is not None else _class_folders(root)
    files = []
    for label, cls in enumerate(names):
        folder = os.path.join(root, cls)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{root}: class folder {cls!r} is missing")
        files += [(os.path.join(folder, f), label) for f in sorted(os.listdir(folder))
                  if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    if not files:
        raise ValueError(f"{root}: no .png/.jpg/.jpeg files in the class folders {names}")
    counts = np.bincount([label for _, label in files], minlength=len(names))
    if (counts == 0).any():
        empty = [n for n, c in zip(names, counts) if c == 0]
        raise ValueError(f"{root}: class folder(s) {empty} hold no .png/.jpg/.jpeg files")
    # NOTE: the images, then their scaled float32 copy
    need = 2 * limits.images_bytes(len(files), (channels, image_size, image_size))
    limits.check_memory(root, f"{len(files):,} images of {channels}x{image_size}x{image_size}", need)
    x = np.empty((len(files), channels, image_size, image_size), np.float32)
    for i, (path, _) in enumerate(files):
        x[i] = read_image(path, image_size, channels)
    x /= np.float32(255.0)
    return x, np.array([label for _, label in files], np.int64), tuple(names)



def folder_splits(root, image_size: int = 32, channels: int = 3, seed: int = 0):
    """-> (train (x, y), test (x, y), class names) of an image folder: its ``train/`` and
    ``test/`` sub-folders when both exist (the test classes are the training ones), else a
    seeded 20% of ``root``'s images held out as the test split."""
    root = os.fspath(root)
    parts = [os.path.join(root, s) for s in ("train", "test")]
    if all(os.path.isdir(p) for p in parts):
        *train, classes = image_folder(parts[0], image_size, channels)
        *test, _ = image_folder(parts[1], image_size, channels, classes)
        return tuple(train), tuple(test), classes
    x, y, classes = image_folder(root, image_size, channels)
    train, test = carve(x, y, max(1, len(y) // 5), seed + 1000)
    return train, test, classes
