"""Dropout masks from a counter-based hash: every backend makes the reference's mask."""

import numpy as np
import pytest

import polycnn as pc
from polycnn import hashing, reference

CASES = [((3, 4, 5), 0.3, 12345), ((7,), 0.0, 0), ((2, 3, 2, 2), 0.99, 2**64 - 1),
         ((0, 3), 0.5, 5), ((4, 9), 0.5, 2**63 + 17), ((1, 1, 1), 0.75, 1),
         ((130, 130), 0.4, 99)]  # over numba's SMALL_MASK: its compiled kernel


@pytest.mark.parametrize("shape, p, key", CASES)
def test_mask_matches_reference(backend, shape, p, key):
    got = backend.to_numpy(backend.dropout_mask(shape, p, key))
    want = reference.dropout_mask(shape, p, key)
    assert got.dtype == np.bool_ and got.shape == want.shape
    np.testing.assert_array_equal(got, want, err_msg=f"backend={backend.name} {shape} p={p} key={key}")


def test_reference_hash_is_splitmix64():
    """The first outputs of SplitMix64 from seed 0, as published with the algorithm (Vigna's
    splitmix64.c): the oracle's hash is the real one, not merely self-consistent."""
    assert reference.splitmix64(hashing.GAMMA) == 0xE220A8397B1DCDAF  # state after one step from 0


def test_keep_share_and_independence(backend):
    p = 0.3
    a = backend.to_numpy(backend.dropout_mask((200_000,), p, 1))
    b = backend.to_numpy(backend.dropout_mask((200_000,), p, 2))
    assert abs(a.mean() - (1 - p)) < 0.005 and abs(b.mean() - (1 - p)) < 0.005
    # different keys give unrelated masks: agreement as for independent draws, p² + (1-p)²
    assert abs((a == b).mean() - (p * p + (1 - p) ** 2)) < 0.005
    # neighbours are uncorrelated too
    assert abs((a[1:] == a[:-1]).mean() - (p * p + (1 - p) ** 2)) < 0.005


@pytest.mark.parametrize("args, error", [
    (((2, 2), 1.0, 0), "p must be a probability in \\[0, 1\\)"),
    (((2, 2), -0.1, 0), "p must be a probability"),
    (((2, 2), 0.5, -1), "key must be an integer in \\[0, 2\\*\\*64\\)"),
    (((2, 2), 0.5, 1 << 64), "key must be an integer"),
    (((2, 2), 0.5, 1.5), "key must be an integer"),
    (((2, -1), 0.5, 0), "negative sizes"),
])
def test_bad_arguments_are_named(backend, args, error):
    with pytest.raises(ValueError, match=error):
        backend.dropout_mask(*args)


def test_dropout_layer_is_the_same_on_every_backend():
    """Same seed, same masks: Dropout and Dropout2d give the same output on numpy and numba."""
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)
    outs = []
    for name in ("numpy", "numba"):
        model = pc.Sequential(pc.Dropout2d(0.5), pc.Dropout(0.25), backend=name, seed=3)
        model.train()
        outs.append(pc.get_backend(name).to_numpy(model(x)))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert (outs[0] == 0).any() and (outs[0] != 0).any()
