"""The numba backend's own promises: bit-identical results for any thread count and run to run,
the ``threads=`` option, named kernel arguments and ``NUMBA_DISABLE_JIT=1`` (its cache folder:
test_numba_cache.py).

Op-by-op parity with the reference lives in the shared op tests (tests/ops/), which run
on every registered backend."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from polycnn.backends.numba_backend import NumbaBackend  # noqa: E402
from polycnn.backends.numpy_backend import NumpyBackend  # noqa: E402

# A training-step's worth of ops on shapes that reach the hard paths: several weight-gradient
# chunks (N > 16), pixel tiles with a remainder, stride 2 (four backward phases), asymmetric
# 'same' padding, max-pool ties and average pooling. Prints one digest per output.
_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import numpy as np
    from polycnn.backends import numba_backend

    be = numba_backend.NumbaBackend(**json.loads(sys.argv[1]))
    rng = np.random.default_rng(7)
    out = {}
    for dt in (np.float32, np.float64):
        x = rng.standard_normal((19, 5, 13, 11)).astype(dt)
        for name, w_shape, kw in [
            ("s1", (7, 5, 3, 3), dict(stride=1, padding=1)),
            ("s2", (6, 5, 3, 3), dict(stride=2, padding=1)),
            ("same", (4, 5, 4, 2), dict(padding="same", dilation=(1, 2))),
        ]:
            w = rng.standard_normal(w_shape).astype(dt)
            b = rng.standard_normal(w_shape[0]).astype(dt)
            dy = None
            for kernel, work in (("direct", 1 << 30), ("gemm", 0)):
                numba_backend.DIRECT_MAX_WORK = work
                y, ctx = be.conv2d_forward(x, w, b, **kw)
                if dy is None:
                    dy = rng.standard_normal(y.shape).astype(dt)
                for part, arr in zip(("y", "dx", "dw", "db"), (y,) + be.conv2d_backward(dy, ctx)):
                    key = f"{dt.__name__}/{name}/{kernel}/{part}"
                    out[key] = hashlib.sha256(arr.tobytes()).hexdigest()
        xr = np.round(x * 2) / 2  # ties in the pooling windows
        for op in ("maxpool2d", "avgpool2d"):
            y, ctx = getattr(be, op + "_forward")(xr, 3, 2, 1)
            dx = getattr(be, op + "_backward")(np.ones_like(y), ctx)
            out[f"{dt.__name__}/{op}"] = hashlib.sha256(y.tobytes() + dx.tobytes()).hexdigest()
    print(json.dumps(out))
    """
)


def _run(env_extra: dict, options: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(options or {})],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"numba determinism script failed with {env_extra}:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _differences(a: dict, b: dict) -> list[str]:
    return sorted(k for k in a if a[k] != b.get(k))


def test_bit_identical_across_thread_counts_and_runs():
    one = _run({"NUMBA_NUM_THREADS": "1"})
    two = _run({"NUMBA_NUM_THREADS": "2"})
    again = _run({"NUMBA_NUM_THREADS": "2"})
    assert len(one) == 2 * (3 * 2 * 4 + 2)
    assert not _differences(one, two), f"outputs differ between 1 and 2 threads: {_differences(one, two)}"
    assert not _differences(two, again), f"outputs differ run to run: {_differences(two, again)}"


def test_threads_option_gives_identical_bytes():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("NUMBA_NUM_THREADS is 1 here: nothing to compare")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((18, 3, 9, 10)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    results = []
    for threads in (1, 2):
        be = NumbaBackend(threads=threads)
        y, ctx = be.conv2d_forward(x, w, None, stride=2, padding=1)
        dx, dw, db = be.conv2d_backward(np.ones_like(y), ctx)
        assert db is None
        results.append((y.tobytes(), dx.tobytes(), dw.tobytes()))
    for part, a, b in zip(("y", "dx", "dw"), *results):
        assert a == b, f"conv2d {part} differs between threads=1 and threads=2"


@pytest.mark.parametrize("bad, error", [(0, ValueError), (10**6, ValueError), ("2", TypeError),
                                        (True, TypeError), (1.5, TypeError)])
def test_threads_option_is_validated(bad, error):
    with pytest.raises(error, match="threads"):
        NumbaBackend(threads=bad)


def test_info_names_version_threads_and_layer():
    info = NumbaBackend(threads=1).info()
    assert info["version"] == f"numba {numba.__version__}"
    assert info["threads"] == 1
    assert isinstance(info["threading_layer"], str) and info["threading_layer"]
    assert info["device"] == "cpu"


def test_kernel_arguments_are_named_tuples_of_python_ints():
    """A float or a NumPy scalar type in a kernel's argument tuple would make Numba compile the
    kernel again: ``named`` converts every field, and a missing field is an error."""
    from polycnn.backends.numba.args import PoolWindow, named

    win = named(PoolWindow, R=np.int64(2), S=np.int32(3), sh=2, sw=np.uint8(1), ph=0, pw=0)
    assert win == (2, 3, 2, 1, 0, 0) and win.S == 3
    assert all(type(v) is int for v in win), [type(v) for v in win]
    with pytest.raises(TypeError):
        named(PoolWindow, R=2, S=2)


_NOJIT_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from polycnn.backends.numba_backend import NumbaBackend
    from polycnn.backends.numpy_backend import NumpyBackend
    nb, ref = NumbaBackend(), NumpyBackend()
    assert nb.info()["jit"] is False
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 5, 6))
    w = rng.standard_normal((3, 2, 3, 2))
    b = rng.standard_normal(3)
    for kw in (dict(stride=1, padding="same"), dict(stride=2, padding=1, dilation=(1, 2))):
        (y1, c1), (y2, c2) = nb.conv2d_forward(x, w, b, **kw), ref.conv2d_forward(x, w, b, **kw)
        dy = rng.standard_normal(y1.shape)
        for a, e in zip((y1,) + nb.conv2d_backward(dy, c1), (y2,) + ref.conv2d_backward(dy, c2)):
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    for op in ("maxpool2d", "avgpool2d"):
        (y1, c1), (y2, c2) = [getattr(be, op + "_forward")(x, 2, 1, 1) for be in (nb, ref)]
        np.testing.assert_array_equal(y1, y2)
        # NOTE: overlapping windows add up in another order than NumPy's, so allclose
        np.testing.assert_allclose(getattr(nb, op + "_backward")(y1, c1),
                                   getattr(ref, op + "_backward")(y2, c2), rtol=1e-14)
    print("ok")
    """
)


def test_runs_with_the_jit_disabled():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, "-c", _NOJIT_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


def test_glue_matches_the_base_defaults():
    nb, ref = NumbaBackend(), NumpyBackend()
    for dt in (np.float32, np.float64):
        x = np.array([-1.5, 0.0, -0.0, 2.0, np.nan, np.inf, -np.inf, 3e-39], dtype=dt)
        dy = np.array([1.0, 2.0, 3.0, -4.0, 5.0, np.nan, np.inf, 1.0], dtype=dt)
        (y1, c1), (y2, c2) = nb.relu_forward(x), ref.relu_forward(x)
        assert y1.tobytes() == y2.tobytes(), f"relu forward {dt.__name__}: {y1} vs {y2}"
        with np.errstate(invalid="ignore"):
            expected = ref.relu_backward(dy, c2)
        assert nb.relu_backward(dy, c1).tobytes() == expected.tobytes(), f"relu backward {dt.__name__}"

        rng = np.random.default_rng(1)
        logits = (rng.standard_normal((6, 4)) * 3).astype(dt)
        labels = rng.integers(0, 4, 6)
        for smoothing in (0.0, 0.2):
            loss1, d1 = nb.cross_entropy(logits, labels, smoothing)
            loss2, d2 = ref.cross_entropy(logits, labels, smoothing)
            tol = 1e-12 if dt == np.float64 else 1e-6
            assert isinstance(loss1, float) and d1.dtype == dt
            assert abs(loss1 - loss2) <= tol * max(1.0, abs(loss2)), (dt, smoothing, loss1, loss2)
            np.testing.assert_allclose(d1, d2, rtol=tol, atol=tol)


@pytest.mark.parametrize("n, f, o, bias", [(64, 400, 120, True), (5, 7, 3, False), (1, 1, 1, True)])
def test_linear_matches_the_base_default(n, f, o, bias):
    nb, ref = NumbaBackend(), NumpyBackend()
    rng = np.random.default_rng(2)
    for dt, tol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        x, w = rng.standard_normal((n, f)).astype(dt), rng.standard_normal((o, f)).astype(dt)
        b = rng.standard_normal(o).astype(dt) if bias else None
        (y1, c1), (y2, c2) = nb.linear_forward(x, w, b), ref.linear_forward(x, w, b)
        dy = rng.standard_normal(y1.shape).astype(dt)
        got, want = (y1,) + nb.linear_backward(dy, c1), (y2,) + ref.linear_backward(dy, c2)
        for part, a, e in zip(("y", "dx", "dw", "db"), got, want):
            if e is None:
                assert a is None, f"linear {part}: expected None without a bias"
                continue
            assert a.dtype == dt and a.shape == e.shape, (part, a.dtype, a.shape, e.shape)
            np.testing.assert_allclose(a, e, rtol=tol, atol=tol * np.sqrt(f),
                                       err_msg=f"linear {part}, backend=numba, {dt.__name__}")


def test_cross_entropy_rejects_labels_out_of_range():
    nb = NumbaBackend()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        nb.cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels must be 2 integer classes"):
        nb.cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 1, 2]))


def test_digest_helper_sees_a_change():
    # guards the determinism test itself: a one-ulp change must change the digest
    a = np.ones(4, np.float32)
    b = a.copy()
    b[2] = np.nextafter(b[2], np.float32(2))
    assert hashlib.sha256(a.tobytes()).hexdigest() != hashlib.sha256(b.tobytes()).hexdigest()


_GEOMETRIES = [
    # (x shape, w shape, stride, padding, dilation)
    ((2, 3, 7, 8), (5, 3, 3, 3), 1, 1, 1),
    ((3, 4, 9, 7), (6, 4, 3, 2), (2, 3), (1, 2), 1),
    ((2, 3, 10, 11), (4, 3, 3, 3), 1, "same", 2),
    ((2, 3, 8, 8), (4, 3, 4, 4), 1, "same", 1),  # asymmetric 'same' padding
    ((2, 2, 9, 9), (3, 2, 3, 3), 2, 3, (2, 1)),
    ((2, 2, 9, 9), (3, 2, 1, 1), 2, 0, 1),  # stride > kernel: phases no tap reaches
    ((1, 2, 5, 5), (9, 2, 3, 3), 3, 4, 1),  # padding wider than the kernel
    ((5, 1, 6, 5), (2, 1, 2, 3), (1, 2), 0, 1),
]


@pytest.mark.parametrize("path", ["direct", "direct-short-runs", "gemm"])
@pytest.mark.parametrize("geometry", _GEOMETRIES, ids=lambda g: "x{}w{}s{}p{}d{}".format(*g))
def test_both_conv_kernels_match_numpy(monkeypatch, path, geometry):
    """The row-direct kernel (runs of all of a sample's rows, and of one or two rows) and the
    gather-GEMM kernel each run every pass of every geometry (the op tests reach only the one
    the size heuristics pick for small layers)."""
    from polycnn.backends import numba_backend

    monkeypatch.setattr(numba_backend, "DIRECT_MAX_WORK", 0 if path == "gemm" else 1 << 30)
    if path == "direct-short-runs":  # row blocks of a sample, a short last one
        monkeypatch.setattr(numba_backend, "DIRECT_ROW_ELEMENTS", 20)
    x_shape, w_shape, stride, padding, dilation = geometry
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    nb, ref = NumbaBackend(), NumpyBackend()
    (y1, c1), (y2, c2) = nb.conv2d_forward(x, w, b, **kw), ref.conv2d_forward(x, w, b, **kw)
    dy = rng.standard_normal(y1.shape)
    got = (y1,) + nb.conv2d_backward(dy, c1)
    want = (y2,) + ref.conv2d_backward(dy, c2)
    for part, a, e in zip(("y", "dx", "dw", "db"), got, want):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12,
                                   err_msg=f"conv2d {part}, backend=numba ({path}), {geometry}")


@pytest.mark.parametrize("chunks", [16, 2, 1])
def test_weight_gradient_chunks_match_numpy(monkeypatch, chunks):
    """The weight gradient summed per chunk of samples (one sample a chunk, chunks of 2 and 3,
    one chunk of all 5) gives numpy's gradient, the same bytes on 1 and 2 threads, for stride 1
    and 2 and channel counts that pad the dot tiles."""
    from polycnn.backends import numba_backend

    monkeypatch.setattr(numba_backend, "WEIGHT_GRAD_CHUNKS", chunks)
    rng = np.random.default_rng(11)
    for stride in (1, 2):
        x, w = rng.standard_normal((5, 3, 9, 8)), rng.standard_normal((5, 3, 3, 3))
        (y, ctx) = NumpyBackend().conv2d_forward(x, w, None, stride=stride, padding=1)
        dy = rng.standard_normal(y.shape)
        want = NumpyBackend().conv2d_backward(dy, ctx)[1]
        got = []
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            be = NumbaBackend(threads=threads)
            _, c = be.conv2d_forward(x, w, None, stride=stride, padding=1)
            got.append(be.conv2d_backward(dy, c)[1])
            np.testing.assert_allclose(
                got[-1], want, rtol=1e-12, atol=1e-12,
                err_msg=f"dw, {chunks} chunks, stride {stride}, threads={threads}")
        assert got[0].tobytes() == got[1].tobytes(), "dw differs between 1 and 2 threads"


def _pad_planes_oracle(x, top, left, stride, Hd, Wd):
    """The padded, phase-split copy by slicing a zero-padded array in NumPy."""
    sh, sw = stride
    N, C, H, W = x.shape
    big = 16
    canvas = np.zeros((N, C, H + 2 * big, W + 2 * big), x.dtype)
    canvas[:, :, big:big + H, big:big + W] = x
    out = np.empty((N, C * sh * sw, Hd, Wd), x.dtype)
    for c in range(C):
        for a in range(sh):
            for b in range(sw):
                rows = big - top + a + sh * np.arange(Hd)
                cols = big - left + b + sw * np.arange(Wd)
                out[:, (c * sh + a) * sw + b] = canvas[:, c][:, rows][:, :, cols]
    return out


_PAD_CASES = [(0, 0, (1, 1)), (2, 1, (1, 1)), (1, 1, (2, 2)), (2, 0, (3, 2)), (-1, -2, (1, 2)),
              (1, 3, (2, 3)), (0, 2, (2, 2)), (1, -1, (1, 2))]


@pytest.mark.parametrize("top, left, stride", _PAD_CASES)
def test_pad_planes_matches_a_numpy_construction(top, left, stride):
    """The padding / space-to-depth copy, every destination element written
    (NaN-filled first), against slicing a zero-padded copy in NumPy; for stride 2 in columns
    also reading 4-byte elements in pairs (even W)."""
    rng = np.random.default_rng(4)
    sh, sw = stride
    k = NumbaBackend()._k
    for W in (9, 8):
        x = rng.standard_normal((2, 3, 7, W)).astype(np.float32)
        Hd, Wd = 5, 6
        want = _pad_planes_oracle(x, top, left, stride, Hd, Wd)
        dst = np.full((2, 3 * sh * sw, Hd, Wd), np.nan, np.float32)
        k._pad_planes(x.view(np.uint32), dst.view(np.uint32), top, left, sh, sw, False)
        np.testing.assert_array_equal(dst, want, err_msg=f"_pad_planes, W={W}")
        if sw == 2 and W % 2 == 0:
            dst = np.full((2, 3 * sh * sw, Hd, Wd), np.nan, np.float32)
            k._pad_planes(x.view(np.uint64), dst.view(np.uint32), top, left, sh, sw, True)
            np.testing.assert_array_equal(dst, want, err_msg=f"_pad_planes pairs, W={W}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 1])
def test_padded_picks_a_kernel_that_fits(dtype, offset):
    """The host's choice: pairs only for 4-byte elements, an even width and an 8-byte aligned
    source; a float32 source that starts 4 bytes into a buffer takes the general kernel."""
    rng = np.random.default_rng(6)
    whole = rng.standard_normal(2 * 3 * 6 * 8 + offset).astype(dtype)
    x = whole[offset:].reshape(2, 3, 6, 8)
    src = NumbaBackend()._padded(x, 1, 1, 4, 5, slack=True, stride=(2, 2))
    size = 12 * 2 * 4 * 5
    np.testing.assert_array_equal(src.flat[:size].reshape(2, 12, 4, 5),
                                  _pad_planes_oracle(x, 1, 1, (2, 2), 4, 5))
    assert not src.flat[size:].any(), "the slack after the data is not zero"


@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (2, 2, 7, 5), (1, 1, 3, 2)])
def test_maxpool2x2_backward_writes_every_element(shape):
    """The 2×2 backward fills dx without zeroing it first: on a NaN-filled dx it must still
    give the general kernel's answer (zeros outside the argmax and in an odd last row or
    column)."""
    rng = np.random.default_rng(2)
    be = NumbaBackend()
    x = rng.standard_normal(shape).astype(np.float32)
    y, ctx = be.maxpool2d_forward(x, 2)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dy.flat[0] = -0.0
    want = np.zeros(shape, np.float32)
    be._k._maxpool_bwd(dy, ctx.saved, want)
    got = np.full(shape, np.nan, np.float32)
    be._k._maxpool2x2_bwd(dy, ctx.saved, got)
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("l, m, t", [(1, 1, 1), (32, 3, 8192), (5, 7, 300), (64, 120, 400)])
def test_matmul_tn_matches_numpy(l, m, t):
    """The linear layers' backward GEMM, C = Aᵀ·B, against numpy's in float64, and the same
    bytes on 1 and 2 threads."""
    rng = np.random.default_rng(l + m + t)
    a, b = rng.standard_normal((l, m)), rng.standard_normal((l, t))
    got = []
    for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        be = NumbaBackend(threads=threads)
        be._set_threads()
        c = np.full((m, t), np.nan)
        be._k._matmul_tn(a, b, c)
        np.testing.assert_allclose(c, a.T @ b, rtol=1e-12, atol=1e-12)
        got.append(c.tobytes())
    assert got[0] == got[1]


BOUNDS_SCRIPT = textwrap.dedent("""
    import numpy as np
    from polycnn.backends import numba_backend as nb
    from polycnn.backends.numpy_backend import NumpyBackend

    geometries = [
        ((2, 3, 7, 8), (5, 3, 3, 3), 1, 1, 1),
        ((3, 4, 9, 7), (6, 4, 3, 2), (2, 3), (1, 2), 1),
        ((2, 3, 10, 11), (4, 3, 3, 3), 1, "same", 2),
        ((2, 2, 9, 9), (3, 2, 1, 1), 2, 0, 1),
        ((2, 1, 5, 4), (2, 1, 5, 4), 1, 0, 1),
        ((2, 8, 7, 9), (13, 8, 3, 3), 2, 1, 1),  # several register tiles of channels
    ]
    rng = np.random.default_rng(0)
    # the row-direct kernel (runs of whole samples, then of a row or two), then the gather GEMM
    for limit, rows in ((1 << 30, 2048), (1 << 30, 20), (0, 2048)):
        nb.DIRECT_MAX_WORK = limit
        nb.DIRECT_ROW_ELEMENTS = rows
        be = nb.NumbaBackend()
        for xs, ws, stride, padding, dilation in geometries:
            x, w = rng.standard_normal(xs), rng.standard_normal(ws)
            y, ctx = be.conv2d_forward(x, w, rng.standard_normal(ws[0]), stride, padding, dilation)
            be.conv2d_backward(rng.standard_normal(y.shape), ctx)
        # float32 with an even width: the stride-2 padding reads column pairs
        x = rng.standard_normal((2, 3, 8, 8), np.float32)
        w = rng.standard_normal((4, 3, 3, 3), np.float32)
        y, ctx = be.conv2d_forward(x, w, None, 2, 1)
        be.conv2d_backward(np.ones(y.shape, np.float32), ctx)
    for xs in ((2, 3, 7, 5), (1, 2, 6, 8)):
        for k, s, p in ((2, None, 0), (3, 2, 1)):
            x = rng.standard_normal(xs)
            y, ctx = be.maxpool2d_forward(x, k, s, p)
            be.maxpool2d_backward(np.ones(y.shape), ctx)
            y, ctx = be.avgpool2d_forward(x, k, s, p)
            be.avgpool2d_backward(np.ones(y.shape), ctx)
    y, ctx = be.linear_forward(rng.standard_normal((5, 7)), rng.standard_normal((3, 7)))
    be.linear_backward(rng.standard_normal((5, 3)), ctx)
    print("in bounds")
""")


def test_kernels_stay_in_bounds():
    """Every kernel, both conv paths, run as Python (NUMBA_DISABLE_JIT=1), where NumPy raises
    on an index past an array's end: the row-direct kernel reads past each row on purpose, into
    slack that its buffers must have. (NUMBA_BOUNDSCHECK does not check inside prange loops.)"""
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    out = subprocess.run([sys.executable, "-c", BOUNDS_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and "in bounds" in out.stdout, out.stderr[-3000:]


AVX2_SCRIPT = textwrap.dedent("""
    import numpy as np
    from polycnn.backends import numba_backend as nb
    from polycnn.backends.numpy_backend import NumpyBackend

    be, ref = nb.NumbaBackend(), NumpyBackend()
    assert be._k.SIMD_BYTES == 32, be._k.SIMD_BYTES
    rng = np.random.default_rng(1)
    for dt, tol in ((np.float64, 1e-12), (np.float32, 1e-4)):
        for xs, ws, stride, padding in (((3, 5, 9, 8), (13, 5, 3, 3), 1, 1),
                                        ((2, 3, 10, 7), (3, 3, 3, 3), 2, 1)):
            x, w = rng.standard_normal(xs).astype(dt), rng.standard_normal(ws).astype(dt)
            (y1, c1), (y2, c2) = be.conv2d_forward(x, w, None, stride, padding), \\
                ref.conv2d_forward(x, w, None, stride, padding)
            dy = rng.standard_normal(y1.shape).astype(dt)
            for a, e in zip((y1,) + be.conv2d_backward(dy, c1)[:2],
                            (y2,) + ref.conv2d_backward(dy, c2)[:2]):
                np.testing.assert_allclose(a, e, rtol=tol, atol=tol)
    print("avx2 ok")
""")


def test_avx2_register_tiles_match_numpy(tmp_path):
    """Compiled for a CPU without AVX-512 (NUMBA_CPU_NAME=haswell), the kernels take 8-float
    vectors and the 16-register tile shapes: conv forward, dx and dw still match numpy."""
    from numba.core.codegen import get_host_cpu_features

    if "+avx2" not in get_host_cpu_features().split(","):
        pytest.skip("this CPU has no AVX2 to run haswell code on")
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CACHE_DIR": str(tmp_path),
           "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+sse4.2,+popcnt,+f16c,+bmi,+bmi2"}
    out = subprocess.run([sys.executable, "-c", AVX2_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and "avx2 ok" in out.stdout, out.stderr[-3000:]
