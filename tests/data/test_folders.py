"""Image folders (polycnn.datasets.folders): PNGs of one sub-folder per class, read resized to a
square; a ``train/`` and ``test/`` pair as the splits; a broken file named."""

from __future__ import annotations

import numpy as np
import pytest

import polycnn as pc
from support.datafiles import write_png_folder


def test_image_folder_reads_rgb_and_names_a_corrupt_file(tmp_path):
    write_png_folder(tmp_path)
    x, y, classes = pc.datasets.image_folder(tmp_path, image_size=8, channels=3)
    assert x.shape == (12, 3, 8, 8) and x.dtype == np.float32 and classes == ("left", "right")
    assert 0.0 <= x.min() and x.max() <= 1.0 and y.tolist() == [0] * 6 + [1] * 6
    # the bright half is where the class says
    assert (x[y == 0][..., :4].mean() > x[y == 0][..., 4:].mean())
    (tmp_path / "right" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"right[/\\]broken.png: not a readable image"):
        pc.datasets.image_folder(tmp_path, image_size=8)


def test_image_folder_with_train_and_test_folders(tmp_path):
    write_png_folder(tmp_path / "train", per_class=5)
    write_png_folder(tmp_path / "test", per_class=2)
    s = pc.datasets.load_splits("folder", tmp_path, image_size=8, channels=3, n_val=2, seed=0)
    assert s["classes"] == ["left", "right"]
    assert [s[k][0].shape[0] for k in ("train", "val", "test")] == [8, 2, 4]
    assert s["test"][1].tolist() == [0, 0, 1, 1] and s["normalize"] is None


def test_a_single_folder_holds_out_a_seeded_fifth(tmp_path):
    write_png_folder(tmp_path, per_class=10)
    x, y, _ = pc.datasets.image_folder(tmp_path, image_size=8, channels=1)
    s = pc.datasets.load_splits("folder", tmp_path, image_size=8, channels=1, n_val=2, seed=3)
    assert [s[k][0].shape[0] for k in ("train", "val", "test")] == [14, 2, 4]
    # the three splits partition the folder's images
    together = np.concatenate([s[k][0] for k in ("train", "val", "test")]).reshape(20, -1)
    assert sorted(map(bytes, together)) == sorted(map(bytes, x.reshape(20, -1)))
    again = pc.datasets.load_splits("folder", tmp_path, image_size=8, channels=1, n_val=2, seed=3)
    np.testing.assert_array_equal(s["test"][0], again["test"][0])


@pytest.mark.parametrize("setup, kwargs, exc, message", [
    (lambda root: None, {}, FileNotFoundError, "image folder not found"),
    (lambda root: (root / "only").mkdir(parents=True), {}, ValueError,
     "needs one sub-folder per class (at least two)"),
    (lambda root: write_png_folder(root), {"channels": 2}, ValueError,
     "channels must be 1 (greyscale) or 3 (RGB), got 2"),
    (lambda root: write_png_folder(root), {"image_size": 0}, ValueError,
     "image_size must be a positive int, got 0"),
], ids=["missing", "one-class", "channels", "image-size"])
def test_image_folder_errors(tmp_path, setup, kwargs, exc, message):
    root = tmp_path / "pics"
    setup(root)
    with pytest.raises(exc) as e:
        pc.datasets.image_folder(root, **kwargs)
    assert message in str(e.value)
