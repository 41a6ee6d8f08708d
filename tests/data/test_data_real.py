"""Loaders of real data sets from generated files: IDX (MNIST layout), CIFAR-10 binary batches,
the shipped UCI digits; validation errors name the file and what was expected."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

import polycnn as pc
from polycnn import datasets as dr
from polycnn.datasets import catalog
from support.datafiles import idx_bytes, write_cifar, write_mnist


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files_scaled_and_normalised(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    x, y = pc.datasets.mnist(tmp_path, "train")
    assert x.shape == (40, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(y, arrays["train-labels-idx1-ubyte"])
    expected = (arrays["train-images-idx3-ubyte"] / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(x[:, 0], expected, rtol=1e-5, atol=1e-5)
    xt, yt = pc.datasets.fashion_mnist(tmp_path, "test")
    assert xt.shape == (20, 1, 28, 28)
    np.testing.assert_allclose(xt[:, 0], (arrays["t10k-images-idx3-ubyte"] / 255 - 0.2860) / 0.3530,
                               rtol=1e-5, atol=1e-5)


def test_splits_carve_a_seeded_validation_set(tmp_path):
    write_mnist(tmp_path, n_train=50)
    a = dr.load_splits("mnist", tmp_path, n_val=10, seed=3)
    b = dr.load_splits("mnist", tmp_path, n_val=10, seed=3)
    c = dr.load_splits("mnist", tmp_path, n_val=10, seed=4)
    assert a["train"][0].shape[0] == 40 and a["val"][0].shape[0] == 10 and a["test"][0].shape[0] == 20
    np.testing.assert_array_equal(a["val"][0], b["val"][0])
    assert not np.array_equal(a["val"][0], c["val"][0])
    # train and val partition the training file
    full, _ = pc.datasets.mnist(tmp_path)
    together = np.concatenate([a["train"][0], a["val"][0]]).reshape(50, -1)
    assert sorted(map(bytes, together)) == sorted(map(bytes, full.reshape(50, -1)))
    assert a["classes"] == [str(i) for i in range(10)]


def test_a_small_training_file_keeps_a_training_set(tmp_path):
    """The default 5,000 validation images of a 1,400-image MNIST file: it was cut to 1,399,
    leaving one image to train on, silently; now 10% of such a file, and an n_val given that
    leaves fewer training than validation images raises, naming the sizes."""
    write_mnist(tmp_path, n_train=1400, n_test=10)
    s = dr.load_splits("mnist", tmp_path, seed=0)
    assert [s[k][0].shape[0] for k in ("train", "val", "test")] == [1260, 140, 10]
    with pytest.raises(ValueError, match=r"mnist: n_val 5,000 would leave 0 of its 1,400 training"
                                         r" images .* n_val <= 700"):
        dr.load_splits("mnist", tmp_path, n_val=5000)
    with pytest.raises(ValueError, match=r"n_val 701 would leave 699 of its 1,400"):
        dr.load_splits("mnist", tmp_path, n_val=701)
    assert dr.load_splits("mnist", tmp_path, n_val=700)["train"][0].shape[0] == 700


def test_missing_files_are_listed_with_the_folder(tmp_path):
    write_mnist(tmp_path)
    os.unlink(tmp_path / "t10k-labels-idx1-ubyte.gz")
    os.unlink(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(FileNotFoundError) as e:
        pc.datasets.mnist(tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert "train-labels" not in msg and str(tmp_path) in msg and "--download" in msg


def test_truncated_foreign_and_mismatched_idx_files(tmp_path):
    arrays = write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*truncated"):
        pc.datasets.mnist(tmp_path)
    path.write_bytes(b"\x89PNG" + data[4:])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: magic number 89504e47.*000803"):
        pc.datasets.mnist(tmp_path)
    path.write_bytes(idx_bytes(np.zeros((40, 32, 32))))
    with pytest.raises(ValueError, match=r"dimensions \(40, 32, 32\) but expected \(N, 28, 28\)"):
        pc.datasets.mnist(tmp_path)
    path.write_bytes(idx_bytes(arrays["train-images-idx3-ubyte"][:39]))
    with pytest.raises(ValueError, match="39 images"):
        pc.datasets.mnist(tmp_path)
    # a cut-off gzip stream
    gzpath = tmp_path / "t10k-images-idx3-ubyte.gz"
    gzpath.write_bytes(gzip.compress(idx_bytes(arrays["t10k-images-idx3-ubyte"]))[:-30])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: not a complete gzip file"):
        pc.datasets.mnist(tmp_path, "test")




@pytest.mark.parametrize("sub", [False, True])
def test_cifar10_binary_batches(tmp_path, monkeypatch, sub):
    monkeypatch.setattr(catalog, "CIFAR_BATCH_RECORDS", 4)
    written = write_cifar(tmp_path / dr.CIFAR_SUBDIR if sub else tmp_path, 4)
    x, y = pc.datasets.cifar10(tmp_path, "train")
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(y[4:8], written["data_batch_2.bin"][1])
    mean = np.array([0.4914, 0.4822, 0.4465])[:, None, None]
    std = np.array([0.2470, 0.2435, 0.2616])[:, None, None]
    np.testing.assert_allclose(x[0], (written["data_batch_1.bin"][0][0] / 255 - mean) / std,
                               rtol=1e-5, atol=1e-5)
    xt, yt = pc.datasets.cifar10(tmp_path, "test")
    np.testing.assert_array_equal(yt, written["test_batch.bin"][1])


def test_cifar10_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "CIFAR_BATCH_RECORDS", 4)
    write_cifar(tmp_path, 4)
    (tmp_path / "data_batch_3.bin").write_bytes((tmp_path / "data_batch_3.bin").read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"data_batch_3.bin: 12,287 bytes but a CIFAR-10 binary batch has 12,292"):
        pc.datasets.cifar10(tmp_path)
    os.unlink(tmp_path / "test_batch.bin")
    with pytest.raises(FileNotFoundError, match=r"missing 1 file\(s\).*test_batch.bin"):
        pc.datasets.cifar10(tmp_path, "test")


def test_shipped_digits():
    x, y = pc.datasets.digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() == 1.0
    assert np.bincount(y).min() >= 170          # about 180 of each digit
    xs, ys = pc.datasets.digits(seed=1)
    assert sorted(ys.tolist()) == sorted(y.tolist()) and not np.array_equal(ys, y)
    s = dr.load_splits("digits", seed=0)
    sizes = [s[k][0].shape[0] for k in ("train", "val", "test")]
    assert sum(sizes) == 1797 and sizes[2] == 359


def test_unknown_data_set_and_missing_folder():
    with pytest.raises(ValueError, match="unknown data set 'svhn'"):
        dr.load_splits("svhn", "x")
    with pytest.raises(ValueError, match="needs a data folder"):
        dr.load_splits("mnist", None)
