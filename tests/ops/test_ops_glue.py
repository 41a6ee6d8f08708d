"""The training glue that backends may replace with their own kernels (ReLU, dropout,
cross-entropy, SGD's step; dropout masks in test_dropout_mask.py) against the float64 formulas
of polycnn.reference, on every backend: bit for bit where the result is one rounding of an exact
product, within float rounding where it is a sum. The SGD step is also compared bit for bit with
the base class's default (the same roundings in the same order) on every other CPU backend."""

from __future__ import annotations

import numpy as np
import pytest

from polycnn import reference
from polycnn.backends.numpy_backend import NumpyBackend

SPECIAL = [-1.5, 0.0, -0.0, 2.0, np.nan, np.inf, -np.inf, 3e-39]
SPECIAL_DY = [1.0, 2.0, 3.0, -4.0, 5.0, np.nan, np.inf, 1.0]


def test_relu_matches_the_oracle_bit_for_bit(backend, dtype):
    x = np.array(SPECIAL * 40, dtype=dtype).reshape(4, 5, 16)  # several blocks' worth
    dy = np.array(SPECIAL_DY * 40, dtype=dtype).reshape(x.shape)
    y, ctx = backend.relu_forward(backend.asarray(x))
    y = backend.to_numpy(y)
    assert y.dtype == dtype and y.tobytes() == reference.relu_forward(x).astype(dtype).tobytes()
    with np.errstate(invalid="ignore"):  # inf * 0 in NumPy
        dx = backend.to_numpy(backend.relu_backward(backend.asarray(dy), ctx))
    want = reference.relu_backward(dy, x).astype(dtype)
    assert dx.dtype == dtype and dx.tobytes() == want.tobytes(), (dx.ravel()[:8], want.ravel()[:8])


def test_relu_backward_checks_dy(backend):
    y, ctx = backend.relu_forward(backend.asarray(np.ones((2, 3), np.float32)))
    with pytest.raises(ValueError, match=r"relu backward: dy has shape \(3, 2\), expected \(2, 3\)"):
        backend.relu_backward(backend.asarray(np.ones((3, 2), np.float32)), ctx)


@pytest.mark.parametrize("n, k", [(6, 4), (300, 3), (1, 1)])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_the_oracle(backend, dtype, n, k, smoothing):
    rng = np.random.default_rng(n + k)
    logits = (rng.standard_normal((n, k)) * 3).astype(dtype)
    labels = rng.integers(0, k, n)
    loss, d = backend.cross_entropy(backend.asarray(logits), labels, smoothing)
    loss_ref, d_ref = reference.cross_entropy(logits, labels, smoothing)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    assert isinstance(loss, float)
    assert abs(loss - loss_ref) <= tol * max(1.0, abs(loss_ref)), (loss, loss_ref)
    d = backend.to_numpy(d)
    assert d.dtype == dtype
    np.testing.assert_allclose(d, d_ref, rtol=tol, atol=tol / n)


def test_cross_entropy_rejects_labels_out_of_range(backend):
    logits = backend.asarray(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"labels must be"):
        backend.cross_entropy(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels must"):
        backend.cross_entropy(logits, np.array([0, 1, 2]))


@pytest.mark.parametrize("momentum, weight_decay, nesterov", [(0.0, 0.0, False), (0.9, 0.01, False),
                                                                 (0.8, 0.0, True)])
def test_sgd_step_matches_the_oracle(backend, dtype, momentum, weight_decay, nesterov):
    """Within a few roundings of the float64 formula; and, one rounding per operation in the
    same order, the same bits as the base class's default on the other CPU backends (on a GPU,
    a fused multiply-add may round once where NumPy rounds twice)."""
    rng = np.random.default_rng(3)
    p, g, v = (rng.standard_normal(1000).astype(dtype) for _ in range(3))
    p_want, v_want = reference.sgd_step(p, g, v, 0.05, momentum, weight_decay, nesterov)
    pd, vd = backend.asarray(p.copy()), backend.asarray(v.copy())  # NOTE: asarray may not copy
    backend.sgd_step(pd, backend.asarray(g), vd if momentum else None, 0.05, momentum,
                     weight_decay, nesterov)
    got_p, got_v = backend.to_numpy(pd), backend.to_numpy(vd)
    assert got_p.dtype == dtype and got_v.dtype == dtype
    scale = np.abs(p) + np.abs(g) + np.abs(v)  # every term is at most about this large
    tol = 8 * np.finfo(dtype).eps * scale
    assert (np.abs(got_p - p_want) <= tol).all(), np.max(np.abs(got_p - p_want) / scale)
    if momentum:
        assert (np.abs(got_v - v_want) <= tol).all(), np.max(np.abs(got_v - v_want) / scale)
    else:
        assert got_v.tobytes() == v.tobytes()  # no momentum: velocity untouched
    if backend.name not in ("numpy", "cupy"):
        p_ref, v_ref = p.copy(), v.copy()
        NumpyBackend().sgd_step(p_ref, g, v_ref if momentum else None, 0.05, momentum,
                                weight_decay, nesterov)
        assert got_p.tobytes() == p_ref.tobytes() and got_v.tobytes() == v_ref.tobytes()


@pytest.mark.parametrize("mask_shape", [(3, 4, 5, 6), (3, 4, 1, 1)], ids=["dropout", "dropout2d"])
def test_dropout_apply_matches_the_oracle_bit_for_bit(backend, dtype, mask_shape):
    """(x * keep) * scale with the scale in x's dtype: one rounding of an exact product."""
    x = np.array(SPECIAL * 45, dtype=dtype).reshape(3, 4, 5, 6)
    keep = reference.dropout_mask(mask_shape, 0.3, 99)
    assert 0 < keep.sum() < keep.size
    want = reference.dropout_apply(x, keep, dtype.type(1 / 0.7)).astype(dtype)
    with np.errstate(invalid="ignore"):  # inf * 0
        got = backend.to_numpy(backend.dropout_apply(backend.asarray(x), backend.asarray(keep),
                                                     1 / 0.7))
    assert got.dtype == dtype and got.tobytes() == want.tobytes()
