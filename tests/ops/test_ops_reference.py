"""The reference itself, on examples worked out by hand (and against PyTorch when installed):
everything else is measured against it."""

import numpy as np
import pytest

from polycnn import parity, reference


def test_conv_by_hand_stride_padding_dilation():
    # x = 1..16 on a 4x4 grid; one 2x2 kernel picking the top-left and bottom-right taps
    x = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 0.0], [0.0, 2.0]]]])
    # dilation 2, padding 1, stride 2: taps at (p*2-1, q*2-1) and (p*2+1, q*2+1)
    y = reference.conv2d_forward(x, w, np.array([0.5]), stride=2, padding=1, dilation=2)
    # (p, q) = (0, 0): top-left tap in the padding, bottom-right tap x[1, 1] = 6
    # (0, 1): x[1, 3] = 8; (1, 0): x[3, 1] = 14; (1, 1): x[1, 1] = 6 and x[3, 3] = 16
    expected = np.array([[2 * 6, 2 * 8], [2 * 14, 6 + 2 * 16]]) + 0.5
    np.testing.assert_array_equal(y[0, 0], expected)


def test_conv_backward_by_hand():
    x = np.array([[[[1.0, 2.0, 3.0]]]])
    w = np.array([[[[10.0, 20.0]]]])
    dy = np.array([[[[1.0, -1.0]]]])  # y = [1*10 + 2*20, 2*10 + 3*20]
    dx, dw, db = reference.conv2d_backward(dy, x, w)
    np.testing.assert_array_equal(dx[0, 0, 0], [10.0, 20.0 - 10.0, -20.0])
    np.testing.assert_array_equal(dw[0, 0, 0], [1.0 - 2.0, 2.0 - 3.0])
    np.testing.assert_array_equal(db, [0.0])
    assert reference.conv2d_backward(dy, x, w, has_bias=False)[2] is None


def test_same_padding_keeps_size_odd_pixel_after():
    x = np.zeros((1, 1, 4, 5))
    x[0, 0, 0, 0] = 1.0
    w = np.ones((1, 1, 2, 2))
    y = reference.conv2d_forward(x, w, padding="same")
    assert y.shape == (1, 1, 4, 5)
    # total padding 1 per axis goes after: y[0, 0] sees x[0:2, 0:2]; nothing sees x[-1, -1]
    assert y[0, 0, 0, 0] == 1.0 and y[0, 0].sum() == 1.0


def test_maxpool_ties_and_nan_by_hand():
    x = np.array([[[[3.0, 3.0], [3.0, 1.0]]]])
    np.testing.assert_array_equal(reference.maxpool2d_backward(np.ones((1, 1, 1, 1)), x, 2)[0, 0],
                                  [[1.0, 0.0], [0.0, 0.0]])
    x = np.array([[[[1.0, np.nan], [np.nan, 5.0]]]])
    assert np.isnan(reference.maxpool2d_forward(x, 2)[0, 0, 0, 0])
    np.testing.assert_array_equal(reference.maxpool2d_backward(np.ones((1, 1, 1, 1)), x, 2)[0, 0],
                                  [[0.0, 1.0], [0.0, 0.0]])


def test_avgpool_by_hand():
    x = np.array([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]])
    y = reference.avgpool2d_forward(x, kernel_size=2, stride=1, padding=(0, 1))
    np.testing.assert_array_equal(y[0, 0], [[5 / 4, 12 / 4, 16 / 4, 9 / 4]])
    dx = reference.avgpool2d_backward(np.ones((1, 1, 1, 4)), x.shape, kernel_size=2, stride=1,
                                      padding=(0, 1))
    np.testing.assert_array_equal(dx[0, 0], np.full((2, 3), 2 / 4))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("op", parity.OPS)
def test_reference_matches_torch_float64(op):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # NOTE: tiny ops are ~100x slower on a busy pool
    try:
        _check_against_torch(op, torch)
    finally:
        torch.set_num_threads(threads)


def _check_against_torch(op, torch):
    F = torch.nn.functional
    for case in parity.random_cases(op, 10, seed=99):
        a = case.arrays(np.float64)
        tx = torch.tensor(a["x"], requires_grad=True)
        p = case.params
        if op == "conv2d":
            tw = torch.tensor(a["w"], requires_grad=True)
            tb = torch.tensor(a["b"], requires_grad=True) if case.has_bias else None
            ty = F.conv2d(tx, tw, tb, **p)
        else:
            fn = F.max_pool2d if op == "maxpool2d" else F.avg_pool2d
            ty = fn(tx, p["kernel_size"], p["stride"], p["padding"])
        ty.backward(torch.tensor(a["dy"]))
        want = {"forward": ty.detach(), "backward dx": tx.grad}
        if op == "conv2d":
            want["backward dw"] = tw.grad
            if case.has_bias:
                want["backward db"] = tb.grad
        got = parity.reference_results(case, np.float64)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value.numpy(), rtol=1e-12, atol=1e-12,
                                       err_msg=f"reference {op} {name}, {case.describe()}")
