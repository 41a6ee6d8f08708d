"""Augmentation: exact flips, reproducibility, identity when off, affine sanity."""

from __future__ import annotations

import numpy as np
import pytest

import polycnn as pc


def _batch(n=8, c=2, h=6, w=5):
    return np.random.default_rng(0).standard_normal((n, c, h, w)).astype(np.float32)


def test_flips_are_exact_mirrors():
    x = _batch()
    always_h = pc.Augment(hflip=1.0, vflip=0.0)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(always_h, x[..., ::-1])
    always_v = pc.Augment(hflip=0.0, vflip=1.0)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(always_v, x[..., ::-1, :])
    some = pc.Augment(hflip=0.5, vflip=0.0)(x, np.random.default_rng(1))
    flipped = [np.array_equal(a, b[..., ::-1]) for a, b in zip(some, x)]
    kept = [np.array_equal(a, b) for a, b in zip(some, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_off_is_identity_and_input_untouched():
    x = _batch()
    before = x.copy()
    out = pc.Augment(hflip=0, vflip=0, shear=0.3, rotate=20, translate=0.1, shear_p=0, rotate_p=0,
                     translate_p=0)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(out, x)
    assert out is not x
    pc.Augment(hflip=1, shear=0.3, shear_p=1)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(x, before)


def test_same_seed_same_result_and_dtype_kept():
    x = _batch(16, 3, 12, 12)
    aug = pc.Augment(hflip=0.5, vflip=0.5, shear=0.2, rotate=15, translate=0.1)
    a = aug(x, np.random.default_rng(3))
    b = aug(x, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == x.shape
    assert not np.array_equal(a, aug(x, np.random.default_rng(4)))


def test_translation_moves_a_dot_and_keeps_its_mass():
    x = np.zeros((1, 1, 9, 9), np.float32)
    x[0, 0, 4, 4] = 1.0
    out = pc.Augment(hflip=0, vflip=0, translate=0.2, translate_p=1.0)(x, np.random.default_rng(0))
    assert abs(out.sum() - 1.0) < 1e-5      # bilinear weights sum to one away from the border
    assert out[0, 0, 4, 4] < 1.0


def test_shear_moves_rows_in_opposite_directions():
    x = np.zeros((1, 1, 11, 11), np.float32)
    x[0, 0, :, 5] = 1.0                      # a vertical line through the centre
    out = pc.Augment(hflip=0, vflip=0, shear=0.4, shear_p=1.0)(x, np.random.default_rng(2))[0, 0]
    top, bottom = out[0].argmax(), out[-1].argmax()
    assert top != 5 and bottom != 5 and (top - 5) * (bottom - 5) < 0   # skewed, not shifted
    assert out[5].argmax() == 5                                           # centre row stays


@pytest.mark.parametrize("kwargs, error", [
    (dict(hflip=1.5), ValueError), (dict(vflip=-0.1), ValueError), (dict(shear=2.0), ValueError),
    (dict(rotate=200), ValueError), (dict(translate=0.9), ValueError),
    (dict(rotate=float("nan")), ValueError), (dict(shear_p="x"), TypeError),
    (dict(hflip=True), TypeError)])
def test_bad_arguments(kwargs, error):
    name = next(iter(kwargs))
    with pytest.raises(error, match=f"Augment: {name}"):
        pc.Augment(**kwargs)


def test_bad_input():
    with pytest.raises(ValueError, match="N, C, H, W"):
        pc.Augment()(np.zeros((3, 4, 4)), np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        pc.Augment()(np.zeros((1, 1, 4, 4)), 0)
