"""Cross-check with PyTorch, an independent implementation of the same semantics: conv2d,
max_pool2d and avg_pool2d, forward and both gradients, every backend in float32 against torch
in float64 on the same (float32-rounded) inputs."""

import itertools

import numpy as np
import pytest
from support.oracle import assert_matches

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install polycnn[torch])")
F = torch.nn.functional


@pytest.fixture(autouse=True, scope="module")
def _torch_one_thread():
    # NOTE: on a small shared machine torch's thread pool makes each tiny op ~100x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# padding='same' needs stride 1 (PyTorch's rule too)
CONV_GRID = [p for p in itertools.product([1, 2, 3], [0, 1, 2, "same"], [1, 2], [True, False])
             if p[1] != "same" or p[0] == 1]


def _conv_id(p):
    stride, padding, dilation, bias = p
    return f"s{stride}-p{padding}-d{dilation}-{'bias' if bias else 'nobias'}"


def torch_conv2d(x, w, b, dy, **kw):
    """(y, dx, dw, db) by torch in float64; db None without a bias."""
    tx, tw = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w))
    tb = None if b is None else torch.tensor(b, dtype=torch.float64, requires_grad=True)
    ty = F.conv2d(tx, tw, tb, **kw)
    ty.backward(torch.tensor(dy, dtype=torch.float64))
    return ty.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), None if b is None else tb.grad.numpy()


def check_conv2d_against_torch(be, x, w, b, rng, **kw):
    y_shape = tuple(F.conv2d(torch.tensor(x), torch.tensor(w), None, **kw).shape)
    dy = rng.standard_normal(y_shape).astype(np.float32)
    want = torch_conv2d(x, w, b, dy, **kw)
    # the same op on absolute values: the magnitude of the terms each result sums
    mags = torch_conv2d(np.abs(x), np.abs(w), None if b is None else np.abs(b), np.abs(dy), **kw)
    y, ctx = be.conv2d_forward(be.asarray(x), be.asarray(w), None if b is None else be.asarray(b), **kw)
    got = (y, *be.conv2d_backward(be.asarray(dy), ctx))
    for name, g, e, m in zip(["forward", "backward dx", "backward dw", "backward db"], got, want, mags):
        if e is None:
            assert g is None, f"conv2d without bias returned a db, backend={be.name}"
            continue
        assert_matches(be.to_numpy(g), e, np.float32,
                       f"conv2d {name} vs torch, backend={be.name}, dtype=float32, {kw}", m)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("stride, padding, dilation, bias", CONV_GRID,
                         ids=[_conv_id(p) for p in CONV_GRID])
def test_conv2d_matches_torch(backend, stride, padding, dilation, bias):
    rng = np.random.default_rng(stride * 100 + dilation * 10 + bias)
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32) if bias else None
    check_conv2d_against_torch(backend, x, w, b, rng, stride=stride, padding=padding,
                               dilation=dilation)


def test_conv2d_non_square_everything_matches_torch(backend):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 11, 8)).astype(np.float32)
    w = rng.standard_normal((3, 2, 4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    check_conv2d_against_torch(backend, x, w, b, rng, stride=(3, 2), padding=(2, 1),
                               dilation=(1, 2))


POOL_GRID = list(itertools.product([2, 3, (3, 2)], [None, 1, (2, 3)], [0, 1]))


def _pool_id(p):
    return "k{}-s{}-p{}".format(*p).replace(" ", "")


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("kernel, stride, padding", POOL_GRID, ids=[_pool_id(p) for p in POOL_GRID])
@pytest.mark.parametrize("values", ["normal", "integers"])
def test_pool_matches_torch(backend, op, kernel, stride, padding, values):
    rng = np.random.default_rng(7)
    shape = (2, 2, 7, 6)
    if values == "integers":  # ties: both must pick the first maximum in row-major order
        x = rng.integers(-2, 3, size=shape).astype(np.float32)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ty = getattr(F, op)(tx, kernel, stride, padding)
    dy = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.tensor(dy, dtype=torch.float64))

    be = backend
    name = op.replace("_", "")
    y, ctx = getattr(be, f"{name}_forward")(be.asarray(x), kernel_size=kernel, stride=stride,
                                             padding=padding)
    dx = getattr(be, f"{name}_backward")(be.asarray(dy), ctx)
    where = f"backend={be.name}, dtype=float32, kernel={kernel}, stride={stride}, padding={padding}, {values}"
    assert_matches(be.to_numpy(y), ty.detach().numpy(), np.float32, f"{name} forward vs torch, {where}")
    assert_matches(be.to_numpy(dx), tx.grad.numpy(), np.float32, f"{name} backward, dx vs torch, {where}")
