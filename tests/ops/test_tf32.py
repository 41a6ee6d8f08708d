"""conv2d with ``precision="tf32"``: the tensor-core (WMMA) kernels of conv2d.cu, run on cupy-emu
through the emulator's WMMA fragments (cuda_emu.h), against a float64 oracle.

- every pass within the TF32 error bound of each output (2^-10 of the sum of |terms|), over
  shapes that reach several blocks, stride phases, dilation, split weight passes and the
  few-channel backward-data kernel (which stays fp32);
- the rounding is really applied, and is cvt.rna's (round to nearest, ties away from zero): an
  identity 1×1 conv returns TF32(x) exactly, where fp32 returns x;
- two runs and the reversed thread order give the same bits;
- the precision argument's errors (table of cases, in process and in a child process).

The NVRTC gate (test_cuda_compile.py) compiles the TF32 entry points for sm_80 and sm_90; the
same checks on a real device are in test_gpu_cupy.py (``pytest -m gpu``)."""

from __future__ import annotations

import numpy as np
import pytest

import polycnn as pc
from support.hostile import api_case, raises_naming, run_python, snapshot
from polycnn.backends import cupy_backend
from polycnn.backends.numpy_backend import NumpyBackend
from polycnn.errors import BackendUnavailable

try:
    from polycnn.backends._cuda_emu import build, runtime

    build.compiler()
except BackendUnavailable as exc:  # pragma: no cover - machines without g++
    pytest.skip(f"cupy-emu unavailable: {exc}", allow_module_level=True)


def tf32_rna(a) -> np.ndarray:
    """float32 values rounded to TF32 (10 stored mantissa bits) to nearest, ties away from zero,
    worked out in float64 from the definition (not from the bits, as the emulator does)."""
    a = np.asarray(a, dtype=np.float64)
    out = np.zeros_like(a)
    nz = a != 0
    exp = np.floor(np.log2(np.abs(a[nz])))
    ulp = np.exp2(exp - 10)
    out[nz] = np.sign(a[nz]) * np.floor(np.abs(a[nz]) / ulp + 0.5) * ulp
    return out.astype(np.float32)


def oracle(x, w, b, dy, params):
    """(y, dx, dw, db) in float64, and the same passes over |x|, |w|, |dy|: the sums of the
    terms' magnitudes, which bound the rounding error of each output."""
    ref = NumpyBackend()

    def run(x, w, b, dy):
        y, ctx = ref.conv2d_forward(x, w, b, **params)
        return (y, *ref.conv2d_backward(dy, ctx))

    f64 = [None if a is None else a.astype(np.float64) for a in (x, w, b, dy)]
    exact = run(*f64)
    mags = run(*[None if a is None else np.abs(a) for a in f64])
    return exact, mags


def run_emu(be, x, w, b, dy, params, precision):
    y, ctx = be.conv2d_forward(be.asarray(x), be.asarray(w), None if b is None else be.asarray(b),
                               precision=precision, **params)
    return [be.to_numpy(a) for a in (y, *be.conv2d_backward(be.asarray(dy), ctx))]


@pytest.fixture(scope="module")
def emu():
    return cupy_backend.create_emu()


# x shape, w shape, conv parameters: > 64 output rows or columns (several blocks), stride
# phases, dilation, 'same' padding, C <= 4 (few-channel backward-data, fp32), odd sizes
CASES = [
    ((2, 5, 9, 8), (20, 5, 3, 3), {"padding": 1}),
    ((2, 9, 11, 10), (70, 9, 3, 3), {"padding": 1, "stride": 2}),
    ((1, 3, 13, 12), (6, 3, 5, 5), {"padding": 2}),
    ((3, 17, 7, 9), (11, 17, 3, 2), {"padding": "same", "dilation": (2, 1)}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-k{c[1][0]}")
def test_tf32_conv_is_within_the_tf32_bound_of_the_float64_oracle(emu, case):
    x_shape, w_shape, params = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    dy = rng.standard_normal(NumpyBackend().conv2d_forward(x, w, b, **params)[0].shape)
    dy = dy.astype(np.float32)
    exact, mags = oracle(x, w, b, dy, params)
    tf32 = run_emu(emu, x, w, b, dy, params, "tf32")
    fp32 = run_emu(emu, x, w, b, dy, params, "float32")
    few_channels = w_shape[1] <= cupy_backend.FEWC_MAX
    for name, got, got32, want, mag in zip(("y", "dx", "dw", "db"), tf32, fp32, exact, mags):
        where = f"conv2d {name}, precision=tf32, cupy-emu, x {x_shape}, w {w_shape}, {params}"
        assert got.dtype == np.float32, where
        err = np.abs(got - want)
        # two operands rounded by at most 2^-11 each, then fp32 sums: 2^-10 of the |terms|
        bound = 2.0**-10 * mag + 1e-6 * (1 + mag)
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        assert np.all(err <= bound), (f"{where}: error {err[worst]:.3g} above the TF32 bound"
                                      f" {bound[worst]:.3g} at {worst}")
        if name == "db" or (name == "dx" and few_channels):  # no GEMM: fp32 under tf32 too
            assert np.array_equal(got, got32), f"{where}: expected the fp32 kernel's bits"
        else:
            # the rounding shows: TF32 is measurably further from the oracle than fp32
            rel = float(err.max() / mag.max())
            rel32 = float(np.abs(got32 - want).max() / mag.max())
            assert rel > 20 * rel32 and rel > 1e-5, (f"{where}: TF32 error {rel:.3g} vs fp32"
                                                     f" {rel32:.3g}: are operands rounded?")


def test_tf32_rounds_to_nearest_with_ties_away_from_zero(emu):
    """An identity 1×1 conv over 8 channels: y = TF32(x), dx = TF32(dy) and dw[k, c] =
    TF32(dy[k]) * TF32(x[c]) exactly (one pixel; the products are exact in fp32), where the fp32
    kernels return x, dy and dy * x. The values sit below, at and above half a TF32 step
    (2^-11 at 1): truncation or ties-to-even would give other bits."""
    half = 2.0**-11
    values = np.array([1 + 1.5 * half, 1 + half, -(1 + half), 1 + 0.5 * half, 1 + 3 * half,
                       3 + 2 * half, -(1 + 1.5 * half), 0.75 + 0.75 * half], dtype=np.float32)
    assert np.all(values.astype(np.float64) == [1 + 1.5 * half, 1 + half, -(1 + half),
                                                1 + 0.5 * half, 1 + 3 * half, 3 + 2 * half,
                                                -(1 + 1.5 * half), 0.75 + 0.75 * half])
    rounded = tf32_rna(values)
    # by hand (a TF32 step is 2 * half in [1, 2), 4 * half in [2, 4), half in [0.5, 1)): up,
    # tie (away from 0), tie (away), down, tie (away), tie (away), up in magnitude, up
    assert rounded.tolist() == np.array(
        [1 + 2 * half, 1 + 2 * half, -(1 + 2 * half), 1, 1 + 4 * half, 3 + 4 * half,
         -(1 + 2 * half), 0.75 + half], dtype=np.float32).tolist()
    x = values.reshape(1, 8, 1, 1)
    dy = values[::-1].copy().reshape(1, 8, 1, 1)
    w = np.eye(8, dtype=np.float32).reshape(8, 8, 1, 1)
    y, dx, dw, _ = run_emu(emu, x, w, np.zeros(8, np.float32), dy, {}, "tf32")
    assert y.ravel().tolist() == rounded.tolist(), "forward: y is not TF32(x)"
    assert dx.ravel().tolist() == tf32_rna(dy.ravel()).tolist(), "backward-data: dx is not TF32(dy)"
    want_dw = np.outer(tf32_rna(dy.ravel()), rounded).astype(np.float32)
    assert dw.reshape(8, 8).tolist() == want_dw.tolist(), "backward-weight: dw"
    y32, dx32, dw32, _ = run_emu(emu, x, w, np.zeros(8, np.float32), dy, {}, "float32")
    assert y32.ravel().tolist() == values.tolist() and dx32.ravel().tolist() == dy.ravel().tolist()
    assert not np.array_equal(y32, y) and not np.array_equal(dw32, dw)


def test_tf32_results_repeat_bit_for_bit_in_both_thread_orders(emu, monkeypatch):
    """The staging tile and the fragments are shared memory and per-thread state: a missing
    barrier would show as different bits when the threads run in reverse."""
    x_shape, w_shape, params = CASES[1]
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    dy = rng.standard_normal((2, 70, 6, 5)).astype(np.float32)
    first = run_emu(emu, x, w, b, dy, params, "tf32")
    monkeypatch.setitem(runtime.options, "reverse", True)
    again = run_emu(emu, x, w, b, dy, params, "tf32")
    for name, a, r in zip(("y", "dx", "dw", "db"), first, again):
        assert np.array_equal(a, r), f"conv2d {name} (tf32) depends on the thread order"


def test_tf32_weight_pass_split_over_many_blocks(emu, monkeypatch):
    """The weight pass's (n, p, q) sum split over many blocks (as on a big GPU; the emulator
    has few "multiprocessors"), the partial sums added in order: within the TF32 bound."""
    monkeypatch.setattr(emu, "target_blocks", 64)
    x_shape, w_shape, params = CASES[0]
    rng = np.random.default_rng(2)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    dy = rng.standard_normal((2, 20, 9, 8)).astype(np.float32)
    from polycnn.geometry import conv_geometry

    g = conv_geometry(x_shape, w_shape, 1, 1, 1)
    assert emu._weight_splits(g, 4, tf32=True)[0] > 1
    exact, mags = oracle(x, w, None, dy, params)
    _, _, dw, _ = run_emu(emu, x, w, None, dy, params, "tf32")
    assert np.all(np.abs(dw - exact[2]) <= 2.0**-10 * mags[2] + 1e-6 * (1 + mags[2]))


# ---- the precision argument's errors ----------------------------------------------------------
SETUP = """\
x = np.ones((1, 2, 5, 5), np.float32)
w = np.ones((3, 2, 3, 3), np.float32)
"""

#: (id, statement after SETUP, exception type, words the message must name)
ERROR_CASES = [
    ("tf32-float64", 'be = pc.get_backend("cupy-emu")\n'
                     'be.conv2d_forward(be.asarray(x, np.float64), be.asarray(w, np.float64),'
                     ' precision="tf32")', ValueError, ["precision='tf32'", "float64"]),
    ("precision-unknown", 'be = pc.get_backend("cupy-emu")\n'
                          'be.conv2d_forward(be.asarray(x), be.asarray(w), precision="fp16")',
     ValueError, ["precision", "'float32' or 'tf32'", "'fp16'"]),
    ("precision-not-a-string", 'be = pc.get_backend("numpy")\n'
                               "be.conv2d_forward(x, w, precision=32)", ValueError,
     ["precision", "got 32"]),
    ("tf32-on-numpy", 'be = pc.get_backend("numpy")\nbe.conv2d_forward(x, w, precision="tf32")',
     ValueError, ["precision='tf32'", "'numpy'", "'float32' only"]),
]


@pytest.mark.parametrize("code, error, needles", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_precision_error_in_process(tmp_path, monkeypatch, code, error, needles):
    monkeypatch.chdir(tmp_path)
    raises_naming(error, SETUP + code, {"pc": pc, "np": np}, *needles)


@pytest.mark.parametrize("code, needles", [(c[1], c[3]) for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_precision_error_in_child(tmp_path, code, needles):
    before = snapshot(tmp_path)
    outcome = run_python(api_case(SETUP + code), cwd=tmp_path)
    outcome.assert_user_error(*needles)
    assert snapshot(tmp_path) == before, f"files changed:\n{outcome}"


def test_tf32_refused_below_compute_capability_8(emu, monkeypatch):
    """A device without TF32 tensor cores (7.5) is refused before any launch, naming it."""
    monkeypatch.setattr(emu.xp.cuda.Device, "compute_capability", "75")
    with pytest.raises(ValueError, match=r"compute capability 8\.0 or newer.*has 7\.5"):
        emu.conv2d_forward(emu.asarray(np.ones((1, 2, 5, 5), np.float32)),
                           emu.asarray(np.ones((3, 2, 3, 3), np.float32)), precision="tf32")
