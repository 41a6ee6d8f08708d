"""The ``cupy`` backend on a real GPU (``pytest -m gpu``; skipped with the reason elsewhere):
larger shapes than the op tests (many blocks, split weight passes), bit-identical repeats, a
full training step against NumPy, and device-resident arrays. The op-level parity runs on the
GPU too: conftest.py marks the ``cupy`` parametrization of every op test ``gpu``.

Without a GPU, ``cupy`` must say why it is unavailable and how to fix it (not marked ``gpu``)."""

from __future__ import annotations

import numpy as np
import pytest

import polycnn as pc
from polycnn.backends import cupy_backend
from polycnn.backends.numpy_backend import NumpyBackend


def test_cupy_says_why_it_is_unavailable():
    status = pc.available_backends()["cupy"]
    if status is True:
        pytest.skip("cupy is available here")
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert "pip install 'polycnn[cuda12]'" in status and "'polycnn[cuda13]'" in status, status
    else:
        assert "CUDA" in status, status


@pytest.fixture
def gpu():
    return pc.get_backend("cupy")


# N, C, H, W, K, R, S, params: shapes of perf-baseline.md scaled down, and odd ones
CONV_CASES = [
    ((16, 32, 32, 32), (64, 32, 3, 3), {"padding": 1}),
    ((8, 64, 28, 28), (64, 64, 3, 3), {"padding": 1}),
    ((16, 3, 64, 64), (16, 3, 5, 5), {"padding": 2}),
    ((16, 32, 32, 32), (64, 32, 3, 3), {"padding": 1, "stride": 2}),
    ((5, 7, 19, 23), (70, 7, 4, 3), {"padding": "same", "dilation": (2, 1)}),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[0])) + "-" + str(c[1][0]))
def test_large_conv_matches_numpy_and_repeats_bit_for_bit(gpu, case, dtype):
    x_shape, w_shape, params = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    ref = NumpyBackend()
    yr, ctxr = ref.conv2d_forward(x, w, b, **params)
    dy = rng.standard_normal(yr.shape).astype(dtype)
    expected = (yr, *ref.conv2d_backward(dy, ctxr))
    runs = []
    for _ in range(2):
        y, ctx = gpu.conv2d_forward(gpu.asarray(x), gpu.asarray(w), gpu.asarray(b), **params)
        runs.append([gpu.to_numpy(a) for a in (y, *gpu.conv2d_backward(gpu.asarray(dy), ctx))])
    tol = 2e-4 if dtype == np.float32 else 1e-10
    for name, got, again, want in zip(("y", "dx", "dw", "db"), runs[0], runs[1], expected):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale,
                                   err_msg=f"conv2d {name}, cupy, {x_shape} {w_shape} {params}")
        assert np.array_equal(got, again), f"conv2d {name} differs between two runs on the GPU"


@pytest.mark.gpu
def test_training_steps_on_the_gpu_match_numpy_and_stay_on_the_device(gpu):
    import cupy

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 3, 32)

    def train(backend):
        model = pc.Sequential(
            pc.Conv2d(3, 16, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
            pc.Conv2d(16, 32, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
            pc.Flatten(), pc.Linear(32 * 8 * 8, 3), backend=backend, seed=0)
        opt = pc.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for _ in range(3):
            opt.zero_grad()
            loss, dlogits = pc.losses.cross_entropy(model.backend, model(x), y)
            model.backward(dlogits)
            opt.step()
            losses.append(loss)
        return losses, model

    ref_losses, ref_model = train("numpy")
    losses, model = train(gpu)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    for p, r in zip(model.parameters(), ref_model.parameters()):
        assert isinstance(p.data, cupy.ndarray) and isinstance(p.grad, cupy.ndarray), p.name
        np.testing.assert_allclose(gpu.to_numpy(p.data), r.data, rtol=1e-3, atol=1e-4,
                                   err_msg=p.name)


@pytest.mark.gpu
@pytest.mark.parametrize("tile", list(cupy_backend.TILES), ids=lambda s: s.strip("_") or "square")
@pytest.mark.parametrize("stride", [1, 2])
def test_every_tile_shape_on_the_gpu(gpu, monkeypatch, tile, stride):
    """Each GEMM tile shape forced on all three passes on the real device (the host's choice
    would leave most shapes untested by any one layer), float32, two runs bit for bit."""
    monkeypatch.setattr(cupy_backend, "gemm_tile", lambda rows, cols: tile)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 9, 21, 19)).astype(np.float32)
    w = (rng.standard_normal((37, 9, 3, 3)) / 9).astype(np.float32)
    b = rng.standard_normal(37).astype(np.float32)
    ref = NumpyBackend()
    yr, ctxr = ref.conv2d_forward(x, w, b, stride=stride, padding=1)
    dy = rng.standard_normal(yr.shape).astype(np.float32)
    expected = (yr, *ref.conv2d_backward(dy, ctxr))
    runs = []
    for _ in range(2):
        y, ctx = gpu.conv2d_forward(gpu.asarray(x), gpu.asarray(w), gpu.asarray(b), stride=stride,
                                    padding=1)
        runs.append([gpu.to_numpy(a) for a in (y, *gpu.conv2d_backward(gpu.asarray(dy), ctx))])
    for name, got, again, want in zip(("y", "dx", "dw", "db"), runs[0], runs[1], expected):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * scale,
                                   err_msg=f"conv2d {name}, tile {tile or 'square'}, stride {stride}")
        assert np.array_equal(got, again), f"conv2d {name} differs between two runs (tile {tile!r})"


def _tf32_rna(a) -> np.ndarray:
    """float32 rounded to TF32 (10 mantissa bits), to nearest, ties away from zero (cvt.rna)."""
    a = np.asarray(a, dtype=np.float64)
    out = np.zeros_like(a)
    nz = a != 0
    ulp = np.exp2(np.floor(np.log2(np.abs(a[nz]))) - 10)
    out[nz] = np.sign(a[nz]) * np.floor(np.abs(a[nz]) / ulp + 0.5) * ulp
    return out.astype(np.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[0])) + "-" + str(c[1][0]))
def test_tf32_conv_on_the_tensor_cores_is_within_the_tf32_bound(gpu, case):
    """precision='tf32' on the real tensor cores: every pass within 2^-10 of the sum of the
    terms' magnitudes of the float64 result, measurably less exact than fp32 (the rounding is
    applied), and the same bits twice."""
    x_shape, w_shape, params = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    ref = NumpyBackend()

    def oracle(*arrays):
        y, ctx = ref.conv2d_forward(*arrays[:3], **params)
        return (y, *ref.conv2d_backward(arrays[3], ctx))

    dy = rng.standard_normal(ref.conv2d_forward(x, w, b, **params)[0].shape).astype(np.float32)
    exact = oracle(*(a.astype(np.float64) for a in (x, w, b, dy)))
    mags = oracle(*(np.abs(a.astype(np.float64)) for a in (x, w, b, dy)))
    runs = []
    for precision in ("tf32", "tf32", "float32"):
        y, ctx = gpu.conv2d_forward(gpu.asarray(x), gpu.asarray(w), gpu.asarray(b),
                                    precision=precision, **params)
        runs.append([gpu.to_numpy(a) for a in (y, *gpu.conv2d_backward(gpu.asarray(dy), ctx))])
    gemm = {"y", "dw"} | ({"dx"} if w_shape[1] > cupy_backend.FEWC_MAX else set())
    for i, name in enumerate(("y", "dx", "dw", "db")):
        got, again, fp32 = runs[0][i], runs[1][i], runs[2][i]
        where = f"conv2d {name}, tf32, cupy, {x_shape} {w_shape} {params}"
        err = np.abs(got - exact[i])
        assert np.all(err <= 2.0**-10 * mags[i] + 1e-6 * (1 + mags[i])), (
            f"{where}: max error {err.max():.3g}")
        assert np.array_equal(got, again), f"{where}: differs between two runs"
        if name in gemm:
            assert err.max() > 10 * np.abs(fp32 - exact[i]).max(), f"{where}: no TF32 rounding?"


@pytest.mark.gpu
def test_tf32_rounding_on_the_gpu_is_round_to_nearest_ties_away(gpu):
    """The identity 1×1 conv of test_tf32.py on the hardware: y = TF32(x) and dx = TF32(dy)
    bit for bit, so the emulator's rounding is the tensor cores'."""
    half = 2.0**-11
    values = np.array([1 + 1.5 * half, 1 + half, -(1 + half), 1 + 0.5 * half, 1 + 3 * half,
                       3 + 2 * half, -(1 + 1.5 * half), 0.75 + 0.75 * half], dtype=np.float32)
    x = values.reshape(1, 8, 1, 1)
    dy = values[::-1].copy().reshape(1, 8, 1, 1)
    w = np.eye(8, dtype=np.float32).reshape(8, 8, 1, 1)
    y, ctx = gpu.conv2d_forward(gpu.asarray(x), gpu.asarray(w), None, precision="tf32")
    dx, dw, _ = gpu.conv2d_backward(gpu.asarray(dy), ctx)
    assert gpu.to_numpy(y).ravel().tolist() == _tf32_rna(values).tolist()
    assert gpu.to_numpy(dx).ravel().tolist() == _tf32_rna(dy.ravel()).tolist()
    assert gpu.to_numpy(dw).reshape(8, 8).tolist() == np.outer(
        _tf32_rna(dy.ravel()), _tf32_rna(values)).astype(np.float32).tolist()


@pytest.mark.gpu
def test_captured_training_steps_on_the_gpu_equal_eager_steps(gpu):
    """pc.CapturedStep on the real device: CUDA graphs (one per batch shape; BatchNorm, dropout
    keys read from the device) give the parameters, optimiser state and mean loss of the eager
    loop bit for bit."""
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((32, 3, 32, 32)).astype(np.float32), rng.integers(0, 3, 32))
            for _ in range(5)]
    data += [(rng.standard_normal((8, 3, 32, 32)).astype(np.float32), rng.integers(0, 3, 8))] * 3

    def make():
        model = pc.Sequential(
            pc.Conv2d(3, 16, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
            pc.Conv2d(16, 32, kernel_size=3, padding=1), pc.BatchNorm2d(32), pc.ReLU(),
            pc.MaxPool2d(2), pc.Flatten(), pc.Dropout(0.25), pc.Linear(32 * 8 * 8, 3),
            backend=gpu, seed=0)
        return model, pc.SGD(model.parameters(), lr=0.05, momentum=0.9)

    model, opt = make()
    losses = []
    for x, y in data:
        opt.zero_grad()
        loss, dlogits = pc.losses.cross_entropy(gpu, model(x), y)
        model.backward(dlogits, input_grad=False)
        opt.step()
        losses.append(loss)
    model2, opt2 = make()
    step = pc.CapturedStep(model2, opt2)
    for x, y in data:
        step(x, y)
    assert step.graphs() == 2
    for p, q in zip(model.parameters(), model2.parameters()):
        assert np.array_equal(gpu.to_numpy(p.data), gpu.to_numpy(q.data)), p.name
    for (k, a), (_, b) in zip(sorted(opt.state_arrays().items()), sorted(opt2.state_arrays().items())):
        assert np.array_equal(gpu.to_numpy(a), gpu.to_numpy(b)), k
    sizes = [len(y) for _, y in data]
    assert step.read()["loss"] == pytest.approx(np.dot(losses, sizes) / sum(sizes), rel=1e-12)


@pytest.mark.gpu
def test_fused_and_tf32_captured_steps_on_the_gpu_equal_their_eager_runs(gpu):
    """On the device: conv + bias + ReLU as one kernel gives the two kernels' bits, in fp32 and
    on the tensor cores, and each graph gives its eager run's bits."""
    rng = np.random.default_rng(1)
    data = [(rng.standard_normal((32, 3, 32, 32)).astype(np.float32), rng.integers(0, 3, 32))
            for _ in range(4)]

    def run(**options):
        model = pc.Sequential(
            pc.Conv2d(3, 16, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
            pc.Conv2d(16, 32, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
            pc.Flatten(), pc.Dropout(0.25), pc.Linear(32 * 8 * 8, 3), backend=gpu, seed=0)
        opt = pc.Adam(model.parameters(), lr=1e-3)
        step = pc.CapturedStep(model, opt, **options)
        for x, y in data:
            step(x, y)
        return [gpu.to_numpy(p.data) for p in model.parameters()]

    for precision in ("float32", "tf32"):
        reference = run(precision=precision, fuse=False, graph=False)
        for fuse, graph in ((True, True), (True, False), (False, True)):
            got = run(precision=precision, fuse=fuse, graph=graph)
            for i, (a, b) in enumerate(zip(got, reference)):
                assert np.array_equal(a, b), f"parameter {i}: {precision} fuse={fuse} graph={graph}"
