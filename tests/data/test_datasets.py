"""The shapes data set: determinism, splits, balance, and a real task (linear << CNN)."""

from __future__ import annotations

import numpy as np
import pytest

import polycnn as pc


def test_shapes_types_ranges_and_determinism():
    x, y = pc.datasets.shapes(n=300, image_size=24, channels=3, seed=5)
    assert x.shape == (300, 3, 24, 24) and x.dtype == np.float32
    assert y.shape == (300,) and y.dtype == np.int64 and set(np.unique(y)) == {0, 1, 2}
    assert -1.0 < x.min() and x.max() < 2.0 and np.isfinite(x).all()
    x2, y2 = pc.datasets.shapes(n=300, image_size=24, channels=3, seed=5)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = pc.datasets.shapes(n=300, image_size=24, channels=3, seed=6)
    assert not np.array_equal(x, x3)
    g, _ = pc.datasets.shapes(n=10, image_size=16, channels=1, seed=0)
    assert g.shape == (10, 1, 16, 16)


def test_classes_are_balanced_and_varied():
    x, y = pc.datasets.shapes(n=1500, image_size=24, seed=0)
    counts = np.bincount(y, minlength=3)
    assert counts.min() > 420, counts
    # no class is recognisable from its mean intensity alone: areas are matched by design
    brightness = x.mean(axis=(1, 2, 3))
    means = [brightness[y == k].mean() for k in range(3)]
    assert max(means) - min(means) < 0.1 * brightness.std() + 0.01


def test_splits_never_share_an_image():
    s = pc.datasets.shapes_splits(n_train=500, n_val=200, n_test=300, image_size=16, seed=3)
    digests = {name: {img.tobytes() for img in x} for name, (x, _) in s.items()}
    assert len(digests["train"]) == 500 and len(digests["test"]) == 300
    assert not digests["train"] & digests["val"]
    assert not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]
    x_train, _ = pc.datasets.shapes(500, 16, 3, 3, split="train")
    np.testing.assert_array_equal(s["train"][0], x_train)


@pytest.mark.parametrize("kwargs, error", [
    (dict(n=0), ValueError), (dict(n=2.5), TypeError), (dict(image_size=8), ValueError),
    (dict(channels=0), ValueError), (dict(seed=-1), ValueError), (dict(split="dev"), ValueError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        pc.datasets.shapes(**kwargs)


def test_linear_classifier_on_raw_pixels_is_much_worse_than_a_cnn():
    """The data set is a real task: least squares on raw pixels vs a small CNN, same data."""
    s = pc.datasets.shapes_splits(n_train=2000, n_val=0, n_test=1000, image_size=16, seed=1)
    (x, y), (xt, yt) = s["train"], s["test"]
    design = np.c_[x.reshape(len(x), -1), np.ones(len(x))]
    w, *_ = np.linalg.lstsq(design, np.eye(3)[y], rcond=None)
    linear = float(((np.c_[xt.reshape(len(xt), -1), np.ones(len(xt))] @ w).argmax(1) == yt).mean())

    model = pc.Sequential(pc.Conv2d(3, 8, 3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
                          pc.Conv2d(8, 16, 3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
                          pc.Flatten(), pc.Linear(16 * 4 * 4, 3), backend="numpy", seed=0)
    pc.fit(model, (x, y), epochs=6, batch_size=32, optimizer=pc.Adam(model.parameters(), lr=3e-3), seed=0)
    cnn = pc.evaluate(model, (xt, yt))["accuracy"]
    assert linear < 0.6, f"linear classifier scores {linear:.1%}: the task is too easy"
    assert cnn >= linear + 0.15, f"CNN {cnn:.1%} vs linear {linear:.1%}"
