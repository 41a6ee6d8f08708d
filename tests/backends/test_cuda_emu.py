"""The CUDA emulator's safety nets, each shown to catch a deliberately seeded bug, and the
``cupy-emu`` backend in a full training step (forward, loss, backward, SGD) against NumPy.

The op-level parity of cupy-emu (every op, forward and backward, float32 and float64) comes from
the ``backend`` fixture of conftest.py, which runs every op test on every registered backend."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import polycnn as pc
from polycnn.backends import cupy_backend
from polycnn.backends.numpy_backend import NumpyBackend
from polycnn.errors import BackendUnavailable

KERNEL_DIR = Path(__file__).resolve().parents[2] / "kernels"

try:
    from polycnn.backends._cuda_emu import build, runtime, standin

    build.compiler()
except BackendUnavailable as exc:  # pragma: no cover - machines without g++
    pytest.skip(f"cupy-emu unavailable: {exc}", allow_module_level=True)


def seeded_copy(tmp_path, filename: str, old: str, new: str, count: int = 1) -> Path:
    """A copy of kernels/ in which ``old`` is replaced by ``new`` in ``filename``."""
    folder = tmp_path / "kernels"
    shutil.copytree(KERNEL_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    path = folder / filename
    text = path.read_text()
    assert text.count(old) >= count, f"{old!r} not found in {filename}"
    path.write_text(text.replace(old, new, count))
    return folder


def conv_case(dtype=np.float32, seed=0):
    """A conv whose reduction (C*R*S = 36) spans three shared-memory tiles of TILE_K = 16 and
    whose output spans two blocks of columns."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 4, 9, 8)).astype(dtype)
    w = rng.standard_normal((5, 4, 3, 3)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    return x, w, b


def run_conv(be, x, w, b):
    y, ctx = be.conv2d_forward(be.asarray(x), be.asarray(w), be.asarray(b), padding=1)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    dx, dw, db = be.conv2d_backward(be.asarray(dy), ctx)
    return [be.to_numpy(a) for a in (y, dx, dw, db)]


def test_reference_kernels_match_numpy_in_both_thread_orders(monkeypatch):
    """Sanity for the seeded-bug tests below: the real kernels agree with NumPy, and give the
    same bits whether threads run forwards or in reverse between barriers (no races)."""
    x, w, b = conv_case()
    expected = run_conv(NumpyBackend(), x, w, b)
    be = cupy_backend.create_emu()
    forward = run_conv(be, x, w, b)
    monkeypatch.setitem(runtime.options, "reverse", True)
    backward = run_conv(be, x, w, b)
    for name, e, f, r in zip(("y", "dx", "dw", "db"), expected, forward, backward):
        np.testing.assert_allclose(f, e, rtol=1e-4, atol=1e-4, err_msg=name)
        assert np.array_equal(f, r), f"{name} depends on the order threads run in"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_split_over_many_blocks_match_numpy(monkeypatch, dtype):
    """On a GPU the weight and bias gradients split their (n, p, q) sums over many blocks to
    fill the device; the emulator has few "multiprocessors", so this asks for many small splits,
    whose ranges straddle the sample planes, and checks both against NumPy."""
    from polycnn.geometry import conv_geometry

    monkeypatch.setattr(cupy_backend, "BIAS_MIN_CHUNK", 8)
    be = cupy_backend.create_emu()
    be.target_blocks = 200
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 5, 7)).astype(dtype)  # N*P*Q = 105 = 11 chunks of 9 and one of 6
    w = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    g = conv_geometry(x.shape, w.shape, 1, 1)
    assert be._bias_splits(g) == (12, 9)
    assert be._weight_splits(g, np.dtype(dtype).itemsize)[0] > 1
    expected = run_conv(NumpyBackend(), x, w, b)
    got = run_conv(be, x, w, b)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for name, e, f in zip(("y", "dx", "dw", "db"), expected, got):
        np.testing.assert_allclose(f, e, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("tile", list(cupy_backend.TILES), ids=lambda s: s.strip("_") or "square")
@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (2, 2)])
def test_every_tile_shape_matches_numpy_in_both_thread_orders(monkeypatch, tile, stride, dilation):
    """The host picks a GEMM tile shape by the padding it leaves, so small test layers would only
    ever use the narrow one: here each shape is forced on all three passes (several weight
    splits, partial tiles in both directions), in float64, with threads forwards and reversed."""
    monkeypatch.setattr(cupy_backend, "gemm_tile", lambda rows, cols: tile)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, 11, 10))
    w = rng.standard_normal((6, 5, 3, 2))
    b = rng.standard_normal(6)
    be = cupy_backend.create_emu()
    be.target_blocks = 64

    def run(backend):
        y, ctx = backend.conv2d_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b),
                                        stride=stride, padding=1, dilation=dilation)
        dy = np.random.default_rng(1).standard_normal(tuple(y.shape))
        return [backend.to_numpy(a) for a in (y, *backend.conv2d_backward(backend.asarray(dy), ctx))]

    expected = run(NumpyBackend())
    forward = run(be)
    monkeypatch.setitem(runtime.options, "reverse", True)
    backward = run(be)
    for name, e, f, r in zip(("y", "dx", "dw", "db"), expected, forward, backward):
        np.testing.assert_allclose(f, e, rtol=1e-12, atol=1e-12, err_msg=name)
        assert np.array_equal(f, r), f"{name} depends on the order threads run in"


@pytest.mark.parametrize("reverse", [False, True], ids=["in-order", "reversed"])
def test_a_removed_syncthreads_is_caught(tmp_path, monkeypatch, reverse):
    """Without the barrier between storing a tile to shared memory and multiplying it out,
    threads read entries that others have not written yet (NaN fill) or already overwrote with
    the next tile: the result is wrong, visibly."""
    folder = seeded_copy(tmp_path, "gemm_tile.cuh",
                         "        __syncthreads();\n        if (more) fetch",
                         "        if (more) fetch")
    monkeypatch.setitem(runtime.options, "reverse", reverse)
    x, w, b = conv_case()
    expected = run_conv(NumpyBackend(), x, w, b)[0]
    got = run_conv(cupy_backend.create_emu(kernel_dir=folder), x, w, b)[0]
    assert not np.allclose(got, expected, rtol=1e-3, atol=1e-3, equal_nan=False), (
        "a conv forward without its first __syncthreads still matched NumPy")


def test_a_barrier_not_reached_by_every_thread_is_an_error(tmp_path):
    folder = seeded_copy(tmp_path, "conv2d.cu", "    const int k = blockIdx.x, t = threadIdx.x;\n",
                         "    const int k = blockIdx.x, t = threadIdx.x;\n    if (t == 7) return;\n")
    be = cupy_backend.create_emu(kernel_dir=folder)
    x, w, b = conv_case()
    with pytest.raises(RuntimeError, match=r"conv2d_bias_grad_float: __syncthreads\(\) not reached"
                                           r" by every thread of block \(0, 0, 0\): 1 of 256"):
        run_conv(be, x, w, b)


def test_a_wrong_scalar_type_is_caught(tmp_path):
    """The kernel takes `long long splits`, the backend passes numpy.int32: on a GPU the kernel
    would read 4 bytes of garbage; the emulator compares with the types g++ saw."""
    # the entry point's own parameter list (in the per-dtype macro), not the template's
    folder = seeded_copy(tmp_path, "conv2d.cu", "   int splits) {", "   long long splits) {")
    be = cupy_backend.create_emu(kernel_dir=folder)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 10, 10)).astype(np.float32)  # N*P*Q = 400: several splits
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    y, ctx = be.conv2d_forward(be.asarray(x), be.asarray(w), padding=1)
    with pytest.raises(TypeError, match=r"conv2d_reduce_float: argument 3 \(int64\) got int32"):
        be.conv2d_backward(be.asarray(np.ones(y.shape, np.float32)), ctx)


_ASAN_SCRIPT = r"""
import sys
import numpy as np
from polycnn.backends import cupy_backend
from polycnn.backends.numpy_backend import NumpyBackend

kernel_dir = sys.argv[1] if len(sys.argv) > 1 else None  # given: one conv, then stop
ref = NumpyBackend()
rng = np.random.default_rng(0)
cases = [((2, 3, 9, 8), (4, 3, 3, 3), 1, 1, 1), ((2, 5, 11, 10), (6, 5, 3, 2), 2, 1, 2),
         ((1, 2, 10, 9), (3, 2, 2, 3), (3, 2), 0, (2, 3)), ((2, 7, 8, 6), (9, 7, 3, 3), 2, 1, 1)]
if kernel_dir:
    cases = cases[:1]
for tile in [None] if kernel_dir else [None, *cupy_backend.TILES]:
    if tile is not None:
        cupy_backend.gemm_tile = lambda rows, cols, tile=tile: tile
    be = cupy_backend.create_emu(kernel_dir=kernel_dir)
    be.target_blocks = 64
    for xs, ws, stride, pad, dil in cases:
        x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
        out = []
        for bk in (ref, be):
            y, ctx = bk.conv2d_forward(bk.asarray(x), bk.asarray(w), bk.asarray(b), stride=stride,
                                       padding=pad, dilation=dil)
            dy = np.random.default_rng(1).standard_normal(tuple(y.shape))
            out.append([bk.to_numpy(a) for a in (y, *bk.conv2d_backward(bk.asarray(dy), ctx))])
        for e, g in zip(*out):
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10)
x = rng.standard_normal((3, 4, 9, 7))
for op in ("maxpool2d", "avgpool2d"):
    y, ctx = getattr(be, op + "_forward")(be.asarray(x), 3, 2, 1)
    getattr(be, op + "_backward")(be.asarray(np.ones(tuple(y.shape))), ctx)
y, ctx = be.relu_forward(be.asarray(x))
be.relu_backward(be.asarray(x), ctx)
keep = be.dropout_mask(x.shape, 0.5, 7)
be.dropout_apply(be.asarray(x), keep, 2.0)
be.cross_entropy(be.asarray(x.reshape(-1, 7)), np.arange(x.size // 7) % 7, 0.1)
p, g, v = (be.asarray(rng.standard_normal(37)) for _ in range(3))
be.sgd_step(p, g, v, 0.1, 0.9, 0.01, True)
print("ok")
"""


@pytest.fixture(scope="module")
def asan_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("asan-cache")


def _run_under_asan(cache, *args):
    """Run _ASAN_SCRIPT with the kernels built with AddressSanitizer (skip where g++ has none)."""
    import os
    import subprocess
    import sys

    lib = subprocess.run([build.compiler(), "-print-file-name=libasan.so"], capture_output=True,
                         text=True).stdout.strip()
    if not os.path.isabs(lib) or not os.path.exists(lib):
        pytest.skip("g++ has no AddressSanitizer runtime (libasan.so)")
    env = dict(os.environ, POLYCNN_EMU_SANITIZE="address", LD_PRELOAD=lib,
               ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0",
               POLYCNN_EMU_CACHE=str(cache))
    return subprocess.run([sys.executable, "-c", _ASAN_SCRIPT, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


def test_every_kernel_stays_in_bounds_under_addresssanitizer(asan_cache):
    """Out-of-bounds reads of a GPU kernel return garbage silently (or nothing: padding often
    sits next to valid data). Built with AddressSanitizer, the emulator stops at the first one:
    every conv pass in every tile shape, strided and dilated, the pools and the glue run clean."""
    proc = _run_under_asan(asan_cache)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_addresssanitizer_catches_an_out_of_bounds_read(tmp_path, asan_cache):
    """The net above works: a backward-data that reads one weight plane too far is stopped."""
    folder = seeded_copy(tmp_path, "conv2d.cu", "acc[c] += wk[(k * s.C + c) * rs] * v;",
                         "acc[c] += wk[(k * s.C + c + 1) * rs] * v;")
    proc = _run_under_asan(asan_cache, folder)
    assert proc.returncode != 0 and "heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]


def test_python_scalars_are_refused_where_cupy_would_pass_the_wrong_width():
    module = standin.RawModule(code=cupy_backend.kernel_source("conv2d.cu"))
    reduce = module.get_function("conv2d_reduce_float")
    partial, out = standin.zeros((2, 3), np.float32), standin.empty((3,), np.float32)
    with pytest.raises(TypeError, match=r"argument 3 \(int32\) got int 2, which CuPy passes as int64"):
        reduce((1,), (32,), (partial, out, np.int64(3), 2))
    with pytest.raises(TypeError, match=r"takes 4 arguments"):
        reduce((1,), (32,), (partial, out, np.int64(3)))
    reduce((1,), (32,), (partial, out, np.int64(3), np.int32(2)))
    assert np.array_equal(standin.asnumpy(out), np.zeros(3, np.float32))


def test_non_contiguous_and_host_arrays_are_refused():
    module = standin.RawModule(code=cupy_backend.kernel_source("pool2d.cu"))
    avgpool = module.get_function("avgpool2d_fwd_float")
    x = standin.asarray(np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8))
    y = standin.empty((2, 3, 4, 4), np.float32)
    shape = np.array([(2, 3, 4, 4, 2, 2, 2, 2, 2, 2, 0, 0)], dtype=cupy_backend.POOL_SHAPE)
    with pytest.raises(ValueError, match=r"argument 0 \(const float32\*\) is not C-contiguous"):
        avgpool((1,), (64,), (x[:, :, ::2, ::2], y, shape))
    with pytest.raises(TypeError, match=r"argument 0 \(const float32\*\) must be a device array"):
        avgpool((1,), (64,), (standin.asnumpy(x), y, shape))
    with pytest.raises(TypeError, match=r"must hold float32, got float64"):
        avgpool((1,), (64,), (x.astype(np.float64), y, shape))
    conv_shape = np.zeros(1, dtype=cupy_backend.CONV_SHAPE)
    with pytest.raises(TypeError, match=r"48-byte struct passed by value"):
        avgpool((1,), (64,), (x[:, :, :4, :4].copy(), y, conv_shape))


def test_the_backend_launcher_refuses_a_non_contiguous_array():
    be = cupy_backend.create_emu()
    x = be.xp.zeros((1, 1, 4, 8), np.float32)[..., ::2]
    with pytest.raises(ValueError, match=r"avgpool2d_fwd_float: argument 'x' .* must be C-contiguous"):
        be._avgpool2d_forward(x, pc.geometry.pool_geometry(x.shape, 2))


def test_device_and_host_arrays_do_not_mix():
    a = standin.zeros((3,), np.float32)
    with pytest.raises(TypeError, match=r"mixes a device array with a host numpy.ndarray"):
        a + np.ones(3, np.float32)
    assert isinstance(a + np.float32(1), standin.ndarray)
    assert np.isnan(standin.empty((4,), np.float32)).all()


def test_static_shared_memory_is_rejected_with_a_clear_message():
    source = ('extern "C" __global__ void k(float* y) {\n'
              '    __shared__ float tile[32];\n    tile[threadIdx.x] = 1.0f;\n}\n')
    with pytest.raises(build.CompileError, match=r"emulates only dynamic shared memory"):
        runtime.load(source)


# ---- the GEMM tile table: written once, in conv2d.cu -------------------------------------------

_TABLE_PROBE = r"""
extern "C" __global__ void tile_table_probe(long long* out) {
    int i = 0;
#define PROBE(SUFFIX, BM, BN, HOLD) \
    out[i++] = BM; out[i++] = BN; out[i++] = GEMM_SMEM_BYTES(BM, BN, 4); \
    out[i++] = GEMM_SMEM_BYTES(BM, BN, 8);
    GEMM_TILES(PROBE)
#define PROBE_TC(SUFFIX, BM, BN, HOLD) out[i++] = BM; out[i++] = BN; out[i++] = GEMM_TC_SMEM_BYTES(BM, BN);
    GEMM_TF32_TILE(PROBE_TC)
    out[i++] = TILE_K;
}
"""


def test_the_host_launches_the_tiles_and_shared_memory_that_the_kernels_define():
    """The host's tile table (_tiles: read from gemm_tile.cuh) and its shared-memory sizes are what
    the compiler sees in conv2d.cu (gemm_tile.cuh inlined): GEMM_TILES, GEMM_TF32_TILE,
    GEMM_SMEM_BYTES and TILE_K."""
    from polycnn.backends import _tiles

    module = standin.RawModule(code=cupy_backend.kernel_source("conv2d.cu") + _TABLE_PROBE)
    out = standin.zeros((64,), np.int64)
    module.get_function("tile_table_probe")((1,), (1,), (out,))
    expected = []
    for tile, (bm, bn) in _tiles.TILES.items():
        expected += [bm, bn, _tiles.gemm_smem_bytes(tile, 4), _tiles.gemm_smem_bytes(tile, 8)]
    expected += [*_tiles.TILES[_tiles.TF32_TILE], _tiles.gemm_tc_smem_bytes(), _tiles.TILE_K]
    assert standin.asnumpy(out)[:len(expected)].tolist() == expected
    assert not standin.asnumpy(out)[len(expected):].any()


def test_a_tile_added_to_the_table_is_a_kernel_and_a_host_tile(tmp_path):
    """One line of gemm_tile.cuh makes a tile: its entry points (every GEMM op, float and double,
    with the parameters the backend passes) and the host's entry in its table."""
    from polycnn.backends import _tiles

    folder = seeded_copy(tmp_path, "gemm_tile.cuh", "X(_small, 16, 64, 0)",
                         "X(_small, 16, 64, 0) X(_wide, 16, 128, 0)")
    source = cupy_backend.kernel_source("conv2d.cu", folder)
    assert _tiles.parse_table(source)[1]["_wide"] == (16, 128)
    library = runtime.load(source)
    for op in ("conv2d_fwd", "conv2d_fwd_relu", "conv2d_bwd_data", "conv2d_bwd_weight"):
        for dtype in ("float", "double"):
            wide = library.kernels[f"{op}_wide_{dtype}"]
            assert wide.params == library.kernels[f"{op}_{dtype}"].params, (op, dtype)
    assert "conv2d_fwd_wide_tf32_float" not in library.kernels


@pytest.mark.parametrize("table", [
    "#define GEMM_TILES(X) X(, 64, 64, 3) X(_mid, 32)\n#define GEMM_TF32_TILE(X) X(_tf32, 64, 64, 2)",
    "#define GEMM_TILES(X) X(, 64, 64, 3) junk\n#define GEMM_TF32_TILE(X) X(_tf32, 64, 64, 2)",
    "#define GEMM_TILES(X) X(, 64, 64, 3)",
], ids=["short-row", "junk", "no-tf32-tile"])
def test_a_malformed_tile_table_is_refused(table):
    from polycnn.backends import _tiles

    with pytest.raises(ValueError, match=r"kernels/gemm_tile\.cuh"):
        _tiles.parse_table("#define TILE_K 16\n" + table + "\n")


# ---- a full training step ----------------------------------------------------------------------

def _train(backend, dtype, steps=2):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 12, 12)).astype(dtype)
    y = rng.integers(0, 3, 8)
    model = pc.Sequential(
        pc.Conv2d(3, 6, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
        pc.Conv2d(6, 8, kernel_size=3, stride=2, padding="valid"), pc.ReLU(),
        pc.AvgPool2d(2), pc.Flatten(), pc.Linear(8, 3), backend=backend, seed=0, dtype=dtype)
    opt = pc.SGD(model.parameters(), lr=0.1, momentum=0.9)
    be = model.backend
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        logits = model(x)
        loss, dlogits = pc.losses.cross_entropy(be, logits, y)
        model.backward(dlogits)
        opt.step()
        losses.append(loss)
    return losses, [be.to_numpy(p.data) for p in model.parameters()], model


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_training_steps_on_cupy_emu_match_numpy(dtype):
    ref_losses, ref_params, _ = _train("numpy", dtype)
    losses, params, model = _train("cupy-emu", dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(losses, ref_losses, rtol=tol)
    for i, (p, r) in enumerate(zip(params, ref_params)):
        np.testing.assert_allclose(p, r, rtol=tol, atol=tol, err_msg=f"parameter {i} after 2 steps")
    # the parameters and gradients stayed on the "device" the whole time
    for p in model.parameters():
        assert isinstance(p.data, standin.ndarray) and isinstance(p.grad, standin.ndarray), p.name


def test_training_on_cupy_emu_is_bit_identical_between_runs():
    first = _train("cupy-emu", np.float32)
    second = _train("cupy-emu", np.float32)
    assert first[0] == second[0]
    for p, q in zip(first[1], second[1]):
        assert np.array_equal(p, q)
