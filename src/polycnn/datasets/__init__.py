"""Data sets: generated shapes, the shipped UCI digits, MNIST / Fashion-MNIST (IDX files),
CIFAR-10 (binary batches), folders of images, and their downloads.

Every loader returns host arrays: images float32 NCHW, labels int64. One entry takes any of
them by name, with its train / validation / test splits::

    data = pc.datasets.load("mnist", "data/mnist", n_val=5000, seed=0)
    x, y = data["train"]          # also data["val"], data["test"], data["classes"]

One module per source:

- :mod:`.generated`: the shapes data set (triangles, squares, circles) drawn from a seed;
  :data:`CLASSES` are its class names.
- :mod:`.bundled`: the UCI digits shipped inside the package (CC BY 4.0).
- :mod:`.idx`: MNIST and Fashion-MNIST from their four IDX files.
- :mod:`.cifar`: CIFAR-10 from its binary batches.
- :mod:`.folders`: a folder of PNG/JPEG pictures, one sub-folder per class (needs Pillow).
- :mod:`.downloads`: mirrors, checksums, size caps and the safe unpacking of archives.
- :mod:`.catalog`: what each real data set is (files, classes, normalisation, checksums).
- :mod:`.splits`: :func:`load` and :func:`load_splits`.

Readers check what a file claims (header, size, the memory it needs) before they allocate.
"""

from .generated import CLASSES, SPLITS, shapes, shapes_splits
from .catalog import (CIFAR_ARCHIVE, CIFAR_BATCH_RECORDS, CIFAR_FILES, CIFAR_SUBDIR, DEFAULT_VAL,
                      IDX_FILES, IMAGE_EXTENSIONS, MIRRORS, MIRRORS_ENV, NAMES, NORMALIZE, SHA256,
                      SIZES, standardize)
from .catalog import CLASSES as CLASS_NAMES   # NOTE: CLASSES here are the shapes' class names
from .bundled import digits
from .idx import fashion_mnist, mnist, read_idx
from .cifar import cifar10, read_cifar_batch
from .folders import image_folder, read_image
from .downloads import download, mirrors_for
from .splits import IMAGE_SHAPES, LOAD_DEFAULTS, LOAD_NAMES, load, load_splits

__all__ = [
    # every data set by name
    "load", "LOAD_NAMES", "LOAD_DEFAULTS", "IMAGE_SHAPES", "load_splits", "NAMES",
    # generated shapes
    "CLASSES", "SPLITS", "shapes", "shapes_splits",
    # real data sets
    "CLASS_NAMES", "NORMALIZE", "standardize", "mnist", "fashion_mnist", "read_idx", "cifar10",
    "read_cifar_batch", "image_folder", "read_image", "digits",
    # files and downloads
    "IDX_FILES", "CIFAR_FILES", "CIFAR_SUBDIR", "CIFAR_ARCHIVE", "CIFAR_BATCH_RECORDS",
    "DEFAULT_VAL", "IMAGE_EXTENSIONS", "MIRRORS", "MIRRORS_ENV", "SHA256", "SIZES", "download",
    "mirrors_for",
]
