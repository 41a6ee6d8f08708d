"""pc.datasets.load(name, ...): every data set by name gives the splits its own loader gives, and
an unknown name or a bad argument is refused before anything is read, naming the argument, the
value given and what was expected."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import os
import re

import numpy as np
import pytest

import polycnn as pc
from polycnn.datasets import catalog
from support.datafiles import idx_bytes, write_cifar, write_mnist, write_png_folder

SPLITS = ("train", "val", "test")


def _same(a: dict, b: dict) -> None:
    assert a["classes"] == b["classes"] and a["normalize"] == b["normalize"]
    for k in SPLITS:
        for got, want, what in zip(a[k], b[k], ("x", "y")):
            assert got.dtype == want.dtype, (k, what)
            np.testing.assert_array_equal(got, want, err_msg=f"{k} {what}")


def _sizes(data: dict) -> list[int]:
    return [data[k][0].shape[0] for k in SPLITS]


def test_names_are_the_shapes_then_the_real_sets():
    assert pc.datasets.LOAD_NAMES == ("shapes", *pc.datasets.NAMES)
    assert set(pc.datasets.LOAD_NAMES) == {"shapes", "digits", "mnist", "fashion-mnist", "cifar10",
                                           "folder"}


def test_shapes_are_shapes_splits_with_classes():
    got = pc.datasets.load("shapes", n_train=30, n_val=10, n_test=12, image_size=16, channels=1,
                           seed=2)
    want = pc.datasets.shapes_splits(30, 10, 12, 16, 1, 2)
    _same(got, {**want, "classes": ["triangle", "square", "circle"], "normalize": None})
    assert got["train"][0].shape == (30, 1, 16, 16)


def test_shapes_defaults_are_shapes_splits_defaults():
    params = inspect.signature(pc.datasets.shapes_splits).parameters
    assert pc.datasets.LOAD_DEFAULTS["shapes"] == {k: params[k].default for k in
                                                   ("n_train", "n_val", "n_test", "image_size",
                                                    "channels")}


def test_shapes_are_counted_against_the_memory_limit(monkeypatch):
    monkeypatch.setenv("POLYCNN_MEMORY_LIMIT", "1M")
    with pytest.raises(ValueError, match=r"shapes: 10,000 training, 1,000 validation and 2,000 test"
                                         r" images of 3x32x32 would need about"):
        pc.datasets.load("shapes", n_train=10_000)


def test_digits_and_the_training_size():
    full = pc.datasets.load("digits", seed=1)
    _same(full, pc.datasets.load_splits("digits", seed=1))
    assert sum(_sizes(full)) == 1797 and full["classes"] == [str(i) for i in range(10)]
    cut = pc.datasets.load("digits", seed=1, n_train=100, n_val=50, image_size=8, channels=1)
    assert _sizes(cut) == [100, 50, 359]
    np.testing.assert_array_equal(cut["train"][0], pc.datasets.load("digits", seed=1, n_val=50)
                                  ["train"][0][:100])


@pytest.mark.parametrize("name, mean", [("mnist", 0.1307), ("fashion-mnist", 0.2860)])
def test_idx_sets(tmp_path, name, mean):
    write_mnist(tmp_path, n_train=50, n_test=20)
    got = pc.datasets.load(name, tmp_path, n_val=10, seed=4, image_size=28, channels=1)
    _same(got, pc.datasets.load_splits(name, tmp_path, n_val=10, seed=4))
    assert _sizes(got) == [40, 10, 20] and got["normalize"][0] == (mean,)
    assert _sizes(pc.datasets.load(name, os.fspath(tmp_path), n_train=7)) == [7, 5, 20]


def test_cifar10(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "CIFAR_BATCH_RECORDS", 4)
    write_cifar(tmp_path / catalog.CIFAR_SUBDIR, 4)
    got = pc.datasets.load("cifar10", tmp_path, seed=0)
    _same(got, pc.datasets.load_splits("cifar10", tmp_path, seed=0))
    assert _sizes(got) == [18, 2, 4] and got["train"][0].shape[1:] == (3, 32, 32)
    assert got["classes"][0] == "airplane" and len(got["normalize"][0]) == 3


def test_image_folder(tmp_path):
    write_png_folder(tmp_path, per_class=10)
    got = pc.datasets.load("folder", tmp_path, n_val=2, seed=1)
    _same(got, pc.datasets.load_splits("folder", tmp_path, n_val=2, seed=1, image_size=32,
                                       channels=3))
    assert _sizes(got) == [14, 2, 4] and got["classes"] == ["left", "right"]
    grey = pc.datasets.load("folder", tmp_path, n_val=2, seed=1, image_size=8, channels=1)
    assert grey["train"][0].shape == (14, 1, 8, 8) and grey["normalize"] is None


def test_download_through_load(tmp_path, monkeypatch):
    """``download=True`` fetches the missing files from the mirror given, as the loaders do."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rng = np.random.default_rng(0)
    sums = {}
    for name, shape in (("train-images-idx3-ubyte", (30, 28, 28)), ("train-labels-idx1-ubyte", 30),
                        ("t10k-images-idx3-ubyte", (10, 28, 28)), ("t10k-labels-idx1-ubyte", 10)):
        body = gzip.compress(idx_bytes(rng.integers(0, 10 if "labels" in name else 256, shape)))
        (mirror / f"{name}.gz").write_bytes(body)
        sums[f"{name}.gz"] = hashlib.sha256(body).hexdigest()
    monkeypatch.setitem(catalog.SHA256, "mnist", sums)
    got = pc.datasets.load("mnist", tmp_path / "data", download=True, mirrors=[mirror.as_uri()],
                           n_val=5)
    assert _sizes(got) == [25, 5, 10]
    assert sorted(os.listdir(tmp_path / "data")) == sorted(sums)


@pytest.mark.parametrize("name, exc, message", [
    ("svhn", ValueError, "unknown data set name='svhn'; expected one of shapes, digits, mnist,"
                         " fashion-mnist, cifar10, folder"),
    ("MNIST", ValueError, "unknown data set name='MNIST'"),
    ("", ValueError, "unknown data set name=''"),
    (None, TypeError, "name must be a data set name (a str), got None; expected one of shapes"),
    (10, TypeError, "name must be a data set name (a str), got 10"),
])
def test_unknown_names(name, exc, message):
    with pytest.raises(exc) as e:
        pc.datasets.load(name)
    assert str(e.value).startswith("pc.datasets.load: ") and message in str(e.value)


@pytest.mark.parametrize("name, kwargs, exc, message", [
    ("shapes", {"data_dir": "x"}, ValueError,
     "the shapes data set needs no files, got data_dir='x'; expected None"),
    ("digits", {"data_dir": "x"}, ValueError, "the digits data set needs no files"),
    ("mnist", {}, ValueError,
     "the mnist data set needs a data folder, got data_dir=None; expected the folder of its files"),
    ("folder", {"data_dir": 5}, TypeError, "data_dir must be a folder (a str or a path), got 5"),
    ("shapes", {"download": True}, ValueError,
     "the shapes data set is not downloaded, got download=True; expected False (downloadable:"
     " mnist, fashion-mnist, cifar10)"),
    ("folder", {"data_dir": "x", "mirrors": ["https://a.example/"]}, ValueError,
     "the folder data set is not downloaded, got mirrors=['https://a.example/']; expected None"),
    ("mnist", {"data_dir": "x", "download": "yes"}, TypeError,
     "download must be True or False, got 'yes'"),
    ("shapes", {"seed": -1}, ValueError, "seed must be an int >= 0, got -1"),
    ("shapes", {"seed": True}, TypeError, "seed must be an int >= 0, got True"),
    ("shapes", {"n_train": 0}, ValueError, "n_train must be an int >= 1, got 0"),
    ("digits", {"n_val": -1}, ValueError, "n_val must be an int >= 0, got -1"),
    ("digits", {"n_val": 1.5}, TypeError, "n_val must be an int >= 0, got 1.5"),
    ("shapes", {"n_test": "9"}, TypeError, "n_test must be an int >= 0, got '9'"),
    ("mnist", {"data_dir": "x", "n_test": 100}, ValueError,
     "only the shapes data set takes a test size (mnist's test split is its test files), got"
     " n_test=100; expected None"),
    ("digits", {"n_test": 5}, ValueError, "(digits's test split is a seeded 20% of its images)"),
    ("folder", {"data_dir": "x", "n_test": 5}, ValueError, "(or its test/ folder)"),
    ("mnist", {"data_dir": "x", "image_size": 32}, ValueError,
     "mnist images are 1x28x28, got image_size=32; expected 28 or None"),
    ("cifar10", {"data_dir": "x", "channels": 1}, ValueError,
     "cifar10 images are 3x32x32, got channels=1; expected 3 or None"),
    ("digits", {"image_size": 0}, ValueError, "image_size must be an int >= 1, got 0"),
    ("folder", {"data_dir": "x", "channels": 2}, ValueError,
     "channels must be 1 (greyscale) or 3 (RGB), got 2"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 16 else None)
def test_bad_arguments_are_named_before_anything_is_read(tmp_path, monkeypatch, name, kwargs, exc,
                                                         message):
    monkeypatch.chdir(tmp_path)      # "x" does not exist: a check that read files would say so
    with pytest.raises(exc) as e:
        pc.datasets.load(name, **kwargs)
    assert str(e.value).startswith("pc.datasets.load: "), str(e.value)
    assert message in str(e.value), str(e.value)
    assert os.listdir(tmp_path) == []


def test_the_loaders_own_errors_pass_through(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mnist: missing 4 file\(s\)"):
        pc.datasets.load("mnist", tmp_path)
    with pytest.raises(ValueError, match=re.escape("image_size must be >= 12, got 8")):
        pc.datasets.load("shapes", image_size=8, n_train=4)
    with pytest.raises(ValueError, match=r"digits: n_val 1,000 would leave 438 of its 1,438"):
        pc.datasets.load("digits", n_val=1000)
