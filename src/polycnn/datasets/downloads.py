"""Real data sets: MNIST, Fashion-MNIST, CIFAR-10, a folder of images, and the UCI digits.

Every loader returns host arrays: images float32 NCHW, labels int64. ``load_splits(name, ...)``
returns ``{"train": (x, y), "val": (x, y), "test": (x, y)}`` with the validation split carved
from the training set by a seeded permutation.

Files on disk (``data_dir``):
- MNIST / Fashion-MNIST: the four IDX files under their standard names, gzipped (``.gz``) or raw:
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``. Pixels are scaled to 0..1 and then normalised with the data set's
  usual mean and standard deviation (:data:`NORMALIZE`).
- CIFAR-10, binary version: ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``,
  in ``data_dir`` or its ``cifar-10-batches-bin/`` sub-folder; normalised per channel.
- Image folder: one sub-folder per class holding PNG/JPEG files (needs Pillow), resized to a
  square; ``train/`` and ``test/`` sub-folders, when both exist, are used as the splits.

``download(name, data_dir)`` fetches the files from the mirrors in :data:`MIRRORS` (or the
``POLYCNN_MIRRORS`` environment variable: base URLs separated by commas), checks each against
its SHA-256 in :data:`SHA256`, and writes through a temporary file in the same folder that is
renamed only after the checksum matched: a failed download leaves no file behind. A file whose
checksum is not in the table is refused rather than trusted. Mirrors are ``https://`` only
(redirects included); a mirror given on purpose (the ``mirrors`` argument or
``POLYCNN_MIRRORS``, never the built-in table) may also be a local test mirror: ``file:///FOLDER/``
or ``http://`` on the loopback address (``127.0.0.1``, ``[::1]``, ``localhost``), where no
network is crossed. A transfer is stopped as soon as more bytes arrive than the file's size in
:data:`SIZES`. The CIFAR-10 archive is unpacked member by member after checking every member
(tarfile's ``data`` filter: no absolute or ``..`` paths, no links, no devices) and each batch's
size.

The UCI digits ship inside the package (``polycnn/data/digits.csv.gz``): E. Alpaydin and
C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning Repository, 1998,
https://doi.org/10.24432/C50P49, licensed CC BY 4.0. 1,797 images of 8x8 pixels with values
0..16 (the copy distributed with scikit-learn, ``sklearn/datasets/data/digits.csv.gz``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import math
import os
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zlib

import numpy as np

from . import limits
from ._files import replaced_atomically

#: the data sets :func:`load_splits` knows
NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "folder")

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR_SUBDIR = "cifar-10-batches-bin"
CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
#: records in each CIFAR-10 batch file (each record: 1 label byte + 3 x 32 x 32 pixel bytes)
CIFAR_BATCH_RECORDS = 10000
_CIFAR_RECORD = 1 + 3 * 32 * 32

CLASSES = {
    "digits": tuple(str(i) for i in range(10)),
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                      "sneaker", "bag", "ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
}

#: (mean, std) per channel, applied after scaling pixels to 0..1
NORMALIZE = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

#: base URLs tried in order by :func:`download`; ``POLYCNN_MIRRORS`` overrides them
MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    "fashion-mnist": ["https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
                      "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
}
MIRRORS_ENV = "POLYCNN_MIRRORS"

#: SHA-256 of each downloadable file, as published alongside the data sets and repeated by
#: several independent loaders. None (unknown) makes download() refuse the file.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    "cifar10": {CIFAR_ARCHIVE: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"},
}
#: size in bytes of each downloadable file (the published files whose SHA-256 is above): a
#: transfer is stopped as soon as more bytes than this arrive
SIZES = {
    "mnist": {"train-images-idx3-ubyte.gz": 9912422, "train-labels-idx1-ubyte.gz": 28881,
              "t10k-images-idx3-ubyte.gz": 1648877, "t10k-labels-idx1-ubyte.gz": 4542},
    "fashion-mnist": {"train-images-idx3-ubyte.gz": 26421880, "train-labels-idx1-ubyte.gz": 29515,
                      "t10k-images-idx3-ubyte.gz": 4422102, "t10k-labels-idx1-ubyte.gz": 5148},
    "cifar10": {CIFAR_ARCHIVE: 170052171},
}

#: validation images carved from the training set when the caller does not say
DEFAULT_VAL = {"mnist": 5000, "fashion-mnist": 5000, "cifar10": 5000}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


# ---- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------------
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


def _find(data_dir: str, names) -> tuple[dict, list]:
    """-> ({name: existing path}, [missing names]); a name matches ``name`` or ``name.gz``."""
    found, missing = {}, []
    for name in names:
        for candidate in (name + ".gz", name) if not name.endswith(".bin") else (name,):
            path = os.path.join(data_dir, candidate)
            if os.path.isfile(path):
                found[name] = path
                break
        else:
            missing.append(name)
    return found, missing


def _missing_error(name: str, data_dir: str, files, where: str | None = None) -> FileNotFoundError:
    """``where``: the folder the files go in, when not ``data_dir`` itself."""
    listed = ", ".join(files)
    how = (f"download them with --download (or pc.datasets.download({name!r}, {data_dir!r}))"
           if all(SHA256.get(name, {}).values()) else "copy them there by hand")
    return FileNotFoundError(f"{name}: missing {len(files)} file(s) in"
                             f" {os.path.abspath(where or data_dir)}: {listed}; put them in that"
                             f" folder or {how}")


def standardize(x: np.ndarray, mean, std) -> np.ndarray:
    """(x - mean) / std per channel of images x (N, C, H, W), in x's dtype: how the loaders
    scale a data set (:data:`NORMALIZE`), and how new inputs must be scaled to match."""
    shape = (1, len(mean), 1, 1)
    return (x - np.array(mean, x.dtype).reshape(shape)) / np.array(std, x.dtype).reshape(shape)


def _scale(x_uint8: np.ndarray, name: str) -> np.ndarray:
    return standardize(x_uint8.astype(np.float32) / np.float32(255.0), *NORMALIZE[name])


def _idx_split(name: str, data_dir: str, split: str, download_missing: bool, mirrors):
    data_dir = os.fspath(data_dir)
    found, missing = _find(data_dir, IDX_FILES.values())
    if missing and download_missing:
        download(name, data_dir, mirrors=mirrors)
        found, missing = _find(data_dir, IDX_FILES.values())
    if missing:
        raise _missing_error(name, data_dir, [m + ".gz" for m in missing])
    prefix = "train" if split == "train" else "test"
    images = read_idx(found[IDX_FILES[prefix + "_images"]], 3, (28, 28))
    labels = read_idx(found[IDX_FILES[prefix + "_labels"]], 1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{found[IDX_FILES[prefix + '_labels']]}: {labels.shape[0]:,} labels for"
                         f" {images.shape[0]:,} images in {found[IDX_FILES[prefix + '_images']]}")
    if labels.max() > 9:
        raise ValueError(f"{found[IDX_FILES[prefix + '_labels']]}: label {labels.max()} outside 0..9")
    return _scale(images[:, None], name), labels.astype(np.int64)


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def mnist(data_dir, split: str = "train", download: bool = False, mirrors=None):
    """MNIST from the IDX files in ``data_dir``: (x float32 (N, 1, 28, 28) normalised, y int64)."""
    return _idx_split("mnist", data_dir, _check_split(split), download, mirrors)


def fashion_mnist(data_dir, split: str = "train", download: bool = False, mirrors=None):
    """Fashion-MNIST from the IDX files in ``data_dir`` (same format and names as MNIST)."""
    return _idx_split("fashion-mnist", data_dir, _check_split(split), download, mirrors)


# ---- CIFAR-10 ---------------------------------------------------------------------------------
def read_cifar_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: (uint8 (N, 3, 32, 32), uint8 (N,)), size (checked before
    reading) and labels checked."""
    path = os.fspath(path)
    size = limits.regular_file(path, "CIFAR-10 batch")
    expected = CIFAR_BATCH_RECORDS * _CIFAR_RECORD
    if size != expected:
        raise ValueError(f"{path}: {size:,} bytes but a CIFAR-10 binary batch has {expected:,}"
                         f" ({CIFAR_BATCH_RECORDS:,} records of {_CIFAR_RECORD:,} bytes)")
    with open(path, "rb") as f:
        raw = limits.read_exact(f, expected, path, "the batch")
    rec = np.frombuffer(raw, np.uint8).reshape(CIFAR_BATCH_RECORDS, _CIFAR_RECORD)
    labels = rec[:, 0]
    if labels.max() > 9:
        raise ValueError(f"{path}: label byte {labels.max()} outside 0..9 (not a CIFAR-10 batch;"
                         " CIFAR-100 has two label bytes)")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def _cifar_dir(data_dir: str) -> str | None:
    for d in (data_dir, os.path.join(data_dir, CIFAR_SUBDIR)):
        if all(os.path.isfile(os.path.join(d, f)) for f in CIFAR_FILES):
            return d
    return None


def cifar10(data_dir, split: str = "train", download: bool = False, mirrors=None):
    """CIFAR-10 (binary version) from ``data_dir`` or its ``cifar-10-batches-bin/`` sub-folder:
    (x float32 (N, 3, 32, 32) normalised per channel, y int64)."""
    split = _check_split(split)
    data_dir = os.fspath(data_dir)
    folder = _cifar_dir(data_dir)
    if folder is None and download:
        _download_dataset("cifar10", data_dir, mirrors=mirrors)
        folder = _cifar_dir(data_dir)
    if folder is None:
        have = {f for d in (data_dir, os.path.join(data_dir, CIFAR_SUBDIR)) if os.path.isdir(d)
                for f in os.listdir(d)}
        raise _missing_error("cifar10", data_dir,
                             [f for f in CIFAR_FILES if f not in have] or list(CIFAR_FILES),
                             where=os.path.join(data_dir, CIFAR_SUBDIR))
    names = CIFAR_FILES[:5] if split == "train" else CIFAR_FILES[5:]
    parts = [read_cifar_batch(os.path.join(folder, f)) for f in names]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    return _scale(x, "cifar10"), y


# ---- image folder -----------------------------------------------------------------------------
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


# ---- UCI digits (shipped) ---------------------------------------------------------------------
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


# ---- splits -----------------------------------------------------------------------------------
def _carve(x, y, n_val: int, seed: int):
    """Seeded split of (x, y) into (rest, first n_val of a permutation)."""
    if not 0 <= n_val < len(y):
        raise ValueError(f"n_val must be in [0, {len(y) - 1}] for {len(y):,} training images,"
                         f" got {n_val}")
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 1])).permutation(len(y))
    val, rest = np.sort(order[:n_val]), np.sort(order[n_val:])
    return (x[rest], y[rest]), (x[val], y[val])


def load_splits(name: str, data_dir=None, *, n_val: int | None = None, seed: int = 0,
                download: bool = False, mirrors=None, image_size: int = 32,
                channels: int = 3) -> dict:
    """``{"train", "val", "test": (x, y), "classes": names, "normalize": (mean, std) or None}``
    for one of :data:`NAMES`. The validation split is ``n_val`` training images chosen by
    ``seed`` (default: 5,000 for MNIST, Fashion-MNIST and CIFAR-10, or 10% of a smaller training
    file, 10% otherwise; at most half the training images when given). ``digits``
    and a single image folder also hold out a seeded 20% as the test split."""
    if name not in NAMES:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(NAMES)}")
    if name != "digits" and data_dir is None:
        raise ValueError(f"the {name} data set needs a data folder (--data-dir)")
    normalize = NORMALIZE.get(name)
    if name == "digits":
        x, y = digits()
        (train, test), classes = _carve(x, y, len(y) // 5, seed + 1000), CLASSES["digits"]
    elif name == "folder":
        root = os.fspath(data_dir)
        parts = [os.path.join(root, s) for s in ("train", "test")]
        if all(os.path.isdir(p) for p in parts):
            *train, classes = image_folder(parts[0], image_size, channels)
            *test, _ = image_folder(parts[1], image_size, channels, classes)
        else:
            x, y, classes = image_folder(root, image_size, channels)
            train, test = _carve(x, y, max(1, len(y) // 5), seed + 1000)
        train, test = tuple(train), tuple(test)
    else:
        loader = {"mnist": mnist, "fashion-mnist": fashion_mnist, "cifar10": cifar10}[name]
        train = loader(data_dir, "train", download=download, mirrors=mirrors)
        test = loader(data_dir, "test", download=download, mirrors=mirrors)
        classes = CLASSES[name]
    n = len(train[1])
    if n_val is None:
        # NOTE: 10% of a training file too small for the default: a 1,400-image MNIST file gave
        # 5,000 cut to 1,399 validation images, leaving 1 to train on
        n_val = min(DEFAULT_VAL.get(name, n // 10), n // 10)
    elif isinstance(n_val, (int, np.integer)) and not isinstance(n_val, bool) and n_val > n - n_val:
        raise ValueError(f"{name}: n_val {n_val:,} would leave {max(0, n - n_val):,} of its {n:,}"
                         f" training images to train on (fewer than it validates on); give n_val"
                         f" <= {n // 2:,}")
    train, val = _carve(*train, n_val, seed)
    return {"train": train, "val": val, "test": test, "classes": list(classes),
            "normalize": normalize}


# ---- download ---------------------------------------------------------------------------------
_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_MIRROR_FORMS = ("https://HOST/PATH/ (or, given on purpose for a test, file:///FOLDER/ or"
                 " http://127.0.0.1:PORT/PATH/)")


def _check_mirror(url: str, explicit: bool, where: str) -> str:
    """``url`` with a final slash, or ValueError: https always; file:// and loopback http:// only
    when the caller named the mirror (``explicit``)."""
    if not isinstance(url, str):
        raise TypeError(f"{where}: a mirror must be a URL string, got {type(url).__name__}")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(f"{where}: {url!r} is not a URL ({exc}); expected"
                         f" {_MIRROR_FORMS}") from None
    scheme = parts.scheme.lower()
    if scheme == "https" and host:
        pass
    elif explicit and scheme == "file" and parts.path and host in (None, "", "localhost"):
        pass
    elif explicit and scheme == "http" and host in _LOOPBACK:
        pass
    elif scheme in ("http", "ftp", "ftps", "file", "data"):
        raise ValueError(f"{where}: {url!r} is refused: mirrors must be https:// (file:// and"
                         " http://127.0.0.1 only as a local test mirror passed in mirrors= or"
                         f" {MIRRORS_ENV})")
    else:
        raise ValueError(f"{where}: {url!r} is not a mirror URL; expected {_MIRROR_FORMS}")
    return url if url.endswith("/") else url + "/"


def mirrors_for(name: str, mirrors=None) -> list[str]:
    """Base URLs for ``name``: ``mirrors`` if given, else ``$POLYCNN_MIRRORS`` (comma-separated),
    else :data:`MIRRORS`; each checked (see the module doc), with a final slash."""
    if mirrors is not None:
        where = "mirrors"
        if isinstance(mirrors, str):
            mirrors = [mirrors]
        elif not isinstance(mirrors, (list, tuple)):
            raise TypeError(f"mirrors must be a URL or a list of URLs, got"
                            f" {type(mirrors).__name__}")
        return [_check_mirror(m, True, where) for m in mirrors]
    env = os.environ.get(MIRRORS_ENV, "")
    if env.strip():
        urls = [m.strip() for m in env.split(",") if m.strip()]
        if not urls:
            raise ValueError(f"{MIRRORS_ENV}={env!r} names no mirror; expected base URLs separated"
                             f" by commas: {_MIRROR_FORMS}")
        return [_check_mirror(m, True, MIRRORS_ENV) for m in urls]
    return [_check_mirror(m, False, f"MIRRORS[{name!r}]") for m in MIRRORS.get(name, [])]


class _HttpsRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an https:// URL (an https mirror must not hand over to http)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() != "https":
            raise ValueError(f"redirected to {newurl!r}, which is not https://")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, dest: str, sha256: str, size: int, timeout: float) -> None:
    """Stream ``url`` to a temporary file next to ``dest``, stopping as soon as more than ``size``
    bytes arrive; check length and SHA-256, rename."""
    opener = urllib.request.build_opener(_HttpsRedirects)
    try:
        with replaced_atomically(dest) as out, opener.open(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            length = int(length) if length is not None and length.strip().isdigit() else None
            if length is not None and length > size:
                raise ValueError(f"the mirror announces {length:,} bytes but the file has {size:,}")
            h, got = hashlib.sha256(), 0
            while True:
                # NOTE: never more than one byte past the cap, so an endless body stops at once
                chunk = resp.read(min(1 << 16, size + 1 - got))
                if not chunk:
                    break
                got += len(chunk)
                if got > size:
                    raise ValueError(f"more than the expected {size:,} bytes arrived; transfer"
                                     " stopped")
                h.update(chunk)
                out.write(chunk)
            if length is not None and got != length:
                raise ValueError(f"transfer cut short: {got:,} of {length:,} bytes")
            if h.hexdigest() != sha256:
                raise ValueError(f"SHA-256 {h.hexdigest()} does not match the expected {sha256}")
    except http.client.IncompleteRead as exc:
        raise ValueError(f"transfer cut short: {len(exc.partial):,} bytes, {exc.expected} more"
                         " expected") from None


def download(name: str, data_dir, mirrors=None, checksums=None, timeout: float = 60.0,
             sizes=None) -> list[str]:
    """Fetch the files of ``name`` (mnist, fashion-mnist, cifar10) missing from ``data_dir``;
    returns the paths written. Each mirror is tried in turn; a file is kept only when its SHA-256
    matches ``checksums`` (default :data:`SHA256`); more bytes than ``sizes`` (default
    :data:`SIZES`) stop its transfer. Raises ``ValueError`` naming the file and what each mirror
    did when none gave a good copy; never leaves a partial file. See the module doc for the
    mirrors allowed."""
    if name not in SHA256:
        raise ValueError(f"cannot download {name!r}; downloadable: {', '.join(SHA256)}")
    data_dir = os.fspath(data_dir)
    table = SHA256[name] if checksums is None else checksums
    caps = SIZES[name] if sizes is None else sizes
    urls = mirrors_for(name, mirrors)
    if not urls:
        raise ValueError(f"no mirror for {name}: pass mirrors or set {MIRRORS_ENV}")
    if name == "cifar10":
        if _cifar_dir(data_dir) is not None:
            return []
        wanted = [CIFAR_ARCHIVE]
    else:
        _, missing = _find(data_dir, IDX_FILES.values())
        wanted = [m + ".gz" for m in missing]
    for fname in wanted:
        if not table.get(fname):
            raise ValueError(f"{name}: no known SHA-256 for {fname}, so polycnn will not download"
                             f" it unchecked; fetch it yourself into {os.path.abspath(data_dir)}")
        if not caps.get(fname):
            raise ValueError(f"{name}: no known size for {fname}, so polycnn will not download it"
                             f" unbounded; fetch it yourself into {os.path.abspath(data_dir)}")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ValueError(f"data folder {os.path.abspath(data_dir)} is a file, not a folder")
    os.makedirs(data_dir, exist_ok=True)
    written = []
    for fname in wanted:
        dest = os.path.join(data_dir, fname)
        errors = []
        for base in urls:
            try:
                _fetch(base + fname, dest, table[fname], int(caps[fname]), timeout)
                break
            except (ValueError, OSError, urllib.error.URLError, http.client.HTTPException) as exc:
                errors.append(f"{base + fname}: {exc}")
        else:
            raise ValueError(f"{name}: could not download {fname} ({'; '.join(errors)});"
                             f" nothing was written to {os.path.abspath(data_dir)}")
        written.append(dest)
    if name == "cifar10":
        written = _extract_cifar(os.path.join(data_dir, CIFAR_ARCHIVE), data_dir)
    return written


_download_dataset = download   # NOTE: the loaders' `download` flag shadows the function

#: an archive with more members than this is not the CIFAR-10 one (it has 9)
_CIFAR_MAX_MEMBERS = 64


def _unsafe_member(member: tarfile.TarInfo, target: str) -> str | None:
    """Why extracting ``member`` under ``target`` would be unsafe, or None."""
    if member.name.startswith(("/", "\\")) or os.path.isabs(member.name):
        return "an absolute path"   # NOTE: the data filter would only strip the slash
    if hasattr(tarfile, "data_filter"):
        try:
            tarfile.data_filter(member, target)
        except tarfile.FilterError as exc:
            return str(exc)
        return None
    # NOTE: Pythons without extraction filters: the same rules, by hand
    path = os.path.normpath(os.path.join(target, member.name))
    if os.path.isabs(member.name) or os.path.commonpath([target, path]) != target:
        return "a path outside the folder"
    if not (member.isfile() or member.isdir()):
        return "a link or special file"
    return None


def _extract_cifar(archive: str, data_dir: str) -> list[str]:
    """Unpack only the six batch files of a verified archive into ``data_dir/cifar-10-batches-bin``,
    after checking every member (no path out of the folder, no links or devices, at most
    :data:`_CIFAR_MAX_MEMBERS`) and that each batch has the size of one. The archive is removed
    whether or not it unpacks."""
    target = os.path.abspath(os.path.join(data_dir, CIFAR_SUBDIR))
    expected = CIFAR_BATCH_RECORDS * _CIFAR_RECORD
    out = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {}
            for i, member in enumerate(tar):
                if i >= _CIFAR_MAX_MEMBERS:
                    raise ValueError(f"more than {_CIFAR_MAX_MEMBERS} members")
                why = _unsafe_member(member, os.path.dirname(target))
                if why is not None:
                    raise ValueError(f"member {member.name!r} is unsafe ({why})")
                members[member.name] = member
            for fname in CIFAR_FILES:
                member = members.get(f"{CIFAR_SUBDIR}/{fname}")
                if member is None or not member.isfile():
                    raise ValueError(f"{CIFAR_SUBDIR}/{fname} is missing or not a regular file")
                if member.size != expected:
                    raise ValueError(f"{CIFAR_SUBDIR}/{fname} has {member.size:,} bytes, a batch"
                                     f" has {expected:,}")
            os.makedirs(target, exist_ok=True)
            for fname in CIFAR_FILES:
                src = tar.extractfile(members[f"{CIFAR_SUBDIR}/{fname}"])
                with replaced_atomically(os.path.join(target, fname)) as f:
                    f.write(src.read(expected))
                out.append(os.path.join(target, fname))
    except (ValueError, EOFError, OSError, tarfile.TarError, zlib.error) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise   # NOTE: the disk's error (full, read-only), not the archive's
        raise ValueError(f"{archive}: not the CIFAR-10 binary archive ({exc}); it was"
                         " removed") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(archive)
    return out


__all__ = ["NAMES", "CLASSES", "NORMALIZE", "MIRRORS", "MIRRORS_ENV", "SHA256", "SIZES", "read_idx",
           "standardize",
           "read_cifar_batch", "mnist", "fashion_mnist", "cifar10", "read_image", "image_folder",
           "digits",
           "load_splits", "download", "mirrors_for"]
