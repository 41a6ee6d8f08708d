"""What polycnn knows of each real data set: its names, files, classes, normalisation, mirrors,
checksums and sizes; where its files are found in a data folder; and the steps every real loader
shares (the split names, the seeded validation carve, the normalisation).

The loaders (:mod:`.idx`, :mod:`.cifar`, :mod:`.folders`, :mod:`.bundled`) and :mod:`.downloads`
read these tables; nothing here reads a data file. Files on disk (``data_dir``):

- MNIST / Fashion-MNIST: the four IDX files of :data:`IDX_FILES` under their standard names,
  gzipped (``.gz``) or raw.
- CIFAR-10, binary version: :data:`CIFAR_FILES` in ``data_dir`` or its :data:`CIFAR_SUBDIR`
  sub-folder.
"""

from __future__ import annotations

import os

import numpy as np

#: the data sets :func:`load_splits` knows
NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "folder")

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR_SUBDIR = "cifar-10-batches-bin"
CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
#: records in each CIFAR-10 batch file (each record: 1 label byte + 3 x 32 x 32 pixel bytes).
#: NOTE: read here at each call (the tests write batches of a few records by changing it);
#: ``polycnn.datasets.CIFAR_BATCH_RECORDS`` is a copy, changing which changes nothing
CIFAR_BATCH_RECORDS = 10000
#: bytes of one CIFAR-10 record
CIFAR_RECORD = 1 + 3 * 32 * 32

#: class names of each real data set (``polycnn.datasets.CLASS_NAMES``; the package's
#: ``CLASSES`` are the generated shapes')
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


def check_split(split: str) -> str:
    """The file split a real loader reads: "train" or "test" (validation is carved by the splits)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def carve(x, y, n_val: int, seed: int):
    """Seeded split of (x, y) into (rest, first n_val of a permutation)."""
    if not 0 <= n_val < len(y):
        raise ValueError(f"n_val must be in [0, {len(y) - 1}] for {len(y):,} training images,"
                         f" got {n_val}")
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 1])).permutation(len(y))
    val, rest = np.sort(order[:n_val]), np.sort(order[n_val:])
    return (x[rest], y[rest]), (x[val], y[val])


def find_files(data_dir: str, names) -> tuple[dict, list]:
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


def missing_error(name: str, data_dir: str, files, where: str | None = None) -> FileNotFoundError:
    """``where``: the folder the files go in, when not ``data_dir`` itself."""
    listed = ", ".join(files)
    how = (f"download them with --download (or pc.datasets.download({name!r}, {data_dir!r}))"
           if all(SHA256.get(name, {}).values()) else "copy them there by hand")
    return FileNotFoundError(f"{name}: missing {len(files)} file(s) in"
                             f" {os.path.abspath(where or data_dir)}: {listed}; put them in that"
                             f" folder or {how}")


def cifar_dir(data_dir: str) -> str | None:
    """The folder holding every CIFAR-10 batch: ``data_dir`` or its :data:`CIFAR_SUBDIR`."""
    for d in (data_dir, os.path.join(data_dir, CIFAR_SUBDIR)):
        if all(os.path.isfile(os.path.join(d, f)) for f in CIFAR_FILES):
            return d
    return None


def standardize(x: np.ndarray, mean, std) -> np.ndarray:
    """(x - mean) / std per channel of images x (N, C, H, W), in x's dtype: how the loaders
    scale a data set (:data:`NORMALIZE`), and how new inputs must be scaled to match."""
    shape = (1, len(mean), 1, 1)
    return (x - np.array(mean, x.dtype).reshape(shape)) / np.array(std, x.dtype).reshape(shape)


def scale(x_uint8: np.ndarray, name: str) -> np.ndarray:
    return standardize(x_uint8.astype(np.float32) / np.float32(255.0), *NORMALIZE[name])

