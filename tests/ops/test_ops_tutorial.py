"""The tutorial's worked example (DESIGN.md), exactly, on every backend and in both dtypes."""

import numpy as np

from polycnn import reference

# typed in from DESIGN.md, not computed
IMAGE = [[255, 255, 255, 255, 255, 255],
         [255, 255, 100, 255, 255, 255],
         [255, 100, 100, 100, 255, 255],
         [100, 100, 100, 100, 100, 255],
         [255, 255, 255, 255, 255, 255],
         [255, 255, 255, 255, 255, 255]]
KERNEL = [[1, -1, 1],
          [-1, 0, -1],
          [1, -1, 1]]
CONV = [[155, -155, 155, -155],
        [-155, 310, -155, 155],
        [310, 155, 310, 0],
        [-155, -155, -155, 0]]
RELU = [[155, 0, 155, 0],
        [0, 310, 0, 155],
        [310, 155, 310, 0],
        [0, 0, 0, 0]]
# 2x2 max pooling of RELU zero-padded back to 6x6 (worked out by hand: its first window is
# [[0, 0], [0, 155]])
POOLED = [[155, 155, 0],
          [310, 310, 155],
          [0, 0, 0]]


def as4d(rows, dtype):
    return np.array(rows, dtype=dtype)[None, None]


def test_tutorial_worked_example(backend, dtype):
    where = f"backend={backend.name}, dtype={dtype}"
    x = backend.asarray(as4d(IMAGE, dtype))
    w = backend.asarray(as4d(KERNEL, dtype))
    y, _ = backend.conv2d_forward(x, w, None, padding="valid")
    conv = backend.to_numpy(y)
    assert conv.dtype == dtype
    np.testing.assert_array_equal(conv, as4d(CONV, dtype), err_msg=f"valid conv, {where}")

    r, _ = backend.relu_forward(y)
    relu = backend.to_numpy(r)
    np.testing.assert_array_equal(relu, as4d(RELU, dtype), err_msg=f"ReLU, {where}")

    padded = np.pad(relu, ((0, 0), (0, 0), (1, 1), (1, 1)))
    assert padded.shape == (1, 1, 6, 6)
    np.testing.assert_array_equal(padded[0, 0, :2, :2], [[0, 0], [0, 155]])
    p, ctx = backend.maxpool2d_forward(backend.asarray(padded), kernel_size=2)
    pooled = backend.to_numpy(p)
    assert pooled[0, 0, 0, 0] == 155, where
    np.testing.assert_array_equal(pooled, as4d(POOLED, dtype), err_msg=f"2x2 max pool, {where}")

    # the gradient of the pooled sum reaches each window's maximum: the 155 at padded (1, 1) ...
    dx = backend.to_numpy(backend.maxpool2d_backward(backend.asarray(np.ones_like(pooled)), ctx))
    assert dx[0, 0, 1, 1] == 1 and dx[0, 0, 0, 0] == 0
    # ... and, in the all-zero windows, the first entry of the tie
    assert dx[0, 0, 0, 4] == 1 and dx[0, 0, 4, 0] == 1
    assert dx.sum() == 9


def test_tutorial_with_same_padding_conv(backend, dtype):
    """Padding inside the conv ('same') gives the valid result in the middle of a 6x6 map."""
    x = backend.asarray(as4d(IMAGE, dtype))
    w = backend.asarray(as4d(KERNEL, dtype))
    y, _ = backend.conv2d_forward(x, w, None, padding="same")
    same = backend.to_numpy(y)
    assert same.shape == (1, 1, 6, 6)
    np.testing.assert_array_equal(same[0, 0, 1:5, 1:5], CONV)
    np.testing.assert_array_equal(same, reference.conv2d_forward(as4d(IMAGE, dtype),
                                                                 as4d(KERNEL, dtype), None,
                                                                 padding=1))


def test_reference_reproduces_the_tutorial():
    np.testing.assert_array_equal(
        reference.conv2d_forward(as4d(IMAGE, float), as4d(KERNEL, float)), as4d(CONV, float))
    padded = np.pad(as4d(RELU, float), ((0, 0), (0, 0), (1, 1), (1, 1)))
    np.testing.assert_array_equal(reference.maxpool2d_forward(padded, 2), as4d(POOLED, float))
