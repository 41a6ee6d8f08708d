"""Train / validation / test splits of a named data set: :func:`load` for every data set polycnn
knows (the generated shapes included), :func:`load_splits` for the real ones (:data:`NAMES`).

Both return ``{"train": (x, y), "val": (x, y), "test": (x, y), "classes": names,
"normalize": (mean, std) or None}``: host arrays, images float32 NCHW, labels int64. The
validation split of a real data set is carved from its training set by a seeded permutation.
"""

from __future__ import annotations

import os

import numpy as np

from .. import _args, limits
from .bundled import digits
from .catalog import CLASSES, DEFAULT_VAL, NAMES, NORMALIZE, SHA256, carve
from .cifar import cifar10
from .folders import folder_splits
from .generated import CLASSES as SHAPES_CLASSES
from .generated import shapes_splits
from .idx import fashion_mnist, mnist

#: the data sets :func:`load` knows: the generated shapes, then the real ones (:data:`NAMES`)
LOAD_NAMES = ("shapes", *NAMES)

#: what :func:`load` uses for the arguments left out, for the data sets that take them
LOAD_DEFAULTS = {"shapes": {"n_train": 6000, "n_val": 1000, "n_test": 2000, "image_size": 32,
                            "channels": 3},
                 "folder": {"image_size": 32, "channels": 3}}

#: (channels, image size) of the data sets whose images have one size
IMAGE_SHAPES = {"digits": (1, 8), "mnist": (1, 28), "fashion-mnist": (1, 28), "cifar10": (3, 32)}


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
        (train, test), classes = carve(x, y, len(y) // 5, seed + 1000), CLASSES["digits"]
    elif name == "folder":
        train, test, classes = folder_splits(data_dir, image_size, channels, seed)
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
    train, val = carve(*train, n_val, seed)
    return {"train": train, "val": val, "test": test, "classes": list(classes),
            "normalize": normalize}


def load(name: str, data_dir=None, *, seed: int = 0, n_train: int | None = None,
         n_val: int | None = None, n_test: int | None = None, image_size: int | None = None,
         channels: int | None = None, download: bool = False, mirrors=None) -> dict:
    """The splits of data set ``name``, one of :data:`LOAD_NAMES`, as :func:`load_splits`
    returns them (``{"train", "val", "test": (x, y), "classes", "normalize"}``):

    - ``"shapes"``: generated from ``seed`` (:func:`.generated.shapes_splits`): ``n_train``,
      ``n_val``, ``n_test`` images of ``channels`` x ``image_size`` x ``image_size``
      (:data:`LOAD_DEFAULTS`), counted against the memory limit first. No ``data_dir``.
    - ``"digits"``: the shipped UCI digits (1x8x8); a seeded 20% is the test split. No
      ``data_dir``.
    - ``"mnist"``, ``"fashion-mnist"`` (1x28x28), ``"cifar10"`` (3x32x32): the files in
      ``data_dir``; ``download=True`` fetches the missing ones (from ``mirrors`` if given).
    - ``"folder"``: the image folder ``data_dir`` (one sub-folder per class, or ``train/`` and
      ``test/``), read as ``channels`` (1 or 3) x ``image_size`` squares.

    ``n_val`` validation images are carved from the training set by ``seed`` (default: see
    :func:`load_splits`); for the real data sets ``n_train`` keeps at most that many of the
    remaining training images. ``image_size`` and ``channels``, given for a data set of one
    image size, must be that size. An unknown name or a bad argument raises ``TypeError`` or
    ``ValueError`` naming the argument, the value given and what was expected."""
    with _args.owned_by("pc.datasets.load"):
        _check_name(name)
        seed = _args.integer(seed, "seed", 0)
        sizes = {k: None if v is None else _args.integer(v, k, low)
                 for k, v, low in (("n_train", n_train, 1), ("n_val", n_val, 0),
                                   ("n_test", n_test, 0), ("image_size", image_size, 1),
                                   ("channels", channels, 1))}
        _check_source(name, data_dir, _args.flag(download, "download"), mirrors)
        _check_sizes(name, sizes)
    if name == "shapes":
        return _load_shapes(seed, {**LOAD_DEFAULTS["shapes"],
                                   **{k: v for k, v in sizes.items() if v is not None}})
    picture = {k: sizes[k] if sizes[k] is not None else v
               for k, v in LOAD_DEFAULTS.get(name, {}).items()}
    data = load_splits(name, data_dir, n_val=sizes["n_val"], seed=seed, download=download,
                       mirrors=mirrors, **picture)
    if sizes["n_train"] is not None:
        data["train"] = tuple(a[:sizes["n_train"]] for a in data["train"])
    return data


def _check_name(name) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name must be a data set name (a str), got {name!r}; expected one of"
                        f" {', '.join(LOAD_NAMES)}")
    if name not in LOAD_NAMES:
        raise ValueError(f"unknown data set name={name!r}; expected one of {', '.join(LOAD_NAMES)}")


def _check_source(name: str, data_dir, download: bool, mirrors) -> None:
    """``data_dir``, ``download`` and ``mirrors`` against what data set ``name`` reads."""
    if name in ("shapes", "digits"):
        if data_dir is not None:
            raise ValueError(f"the {name} data set needs no files, got data_dir={data_dir!r};"
                             " expected None")
    elif data_dir is None:
        raise ValueError(f"the {name} data set needs a data folder, got data_dir=None; expected"
                         " the folder of its files")
    elif not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a folder (a str or a path), got {data_dir!r}")
    for arg, value, off in (("download", download, False), ("mirrors", mirrors, None)):
        if value is not off and name not in SHA256:
            raise ValueError(f"the {name} data set is not downloaded, got {arg}={value!r};"
                             f" expected {off!r} (downloadable: {', '.join(SHA256)})")


def _check_sizes(name: str, sizes: dict) -> None:
    """``n_test``, ``image_size`` and ``channels`` against what data set ``name`` allows."""
    if name != "shapes" and sizes["n_test"] is not None:
        test = "its test files" if name in SHA256 else "a seeded 20% of its images"
        if name == "folder":
            test += " (or its test/ folder)"
        raise ValueError(f"only the shapes data set takes a test size ({name}'s test split is"
                         f" {test}), got n_test={sizes['n_test']!r}; expected None")
    fixed = IMAGE_SHAPES.get(name)
    if fixed is None:
        if name == "folder" and sizes["channels"] not in (None, 1, 3):
            raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {sizes['channels']!r}")
        return
    for arg, want in zip(("channels", "image_size"), fixed):
        if sizes[arg] not in (None, want):
            raise ValueError(f"{name} images are {fixed[0]}x{fixed[1]}x{fixed[1]}, got"
                             f" {arg}={sizes[arg]!r}; expected {want} or None")


def _load_shapes(seed: int, p: dict) -> dict:
    c, s = p["channels"], p["image_size"]
    n = p["n_train"] + p["n_val"] + p["n_test"]
    limits.check_memory("shapes", f"{p['n_train']:,} training, {p['n_val']:,} validation and"
                        f" {p['n_test']:,} test images of {c}x{s}x{s}",
                        2 * limits.images_bytes(n, (c, s, s)))
    data = shapes_splits(p["n_train"], p["n_val"], p["n_test"], s, c, seed)
    return {**data, "classes": list(SHAPES_CLASSES), "normalize": None}
