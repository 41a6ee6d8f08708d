"""The Numba kernels one by one: every kernel of the numba backend on a benchmark-sized float32
case (:func:`kernel_cases`), for ``polycnn bench --targets`` (see :mod:`.targets`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..backends.numba.args import PoolWindow
from ..geometry import pool_geometry
from .cases import LAYERS, ConvLayer, PoolLayer, conv_arrays, scaled


@dataclass(frozen=True)
class KernelCase:
    """One Numba kernel (or a backend step that is one kernel and its set-up) on one shape:
    ``build(backend, rng)`` returns the call to time."""

    name: str
    shape: str
    build: Callable


def _case_pad(layer):
    def build(be, rng):
        g, x, _, _ = conv_arrays(layer, rng)
        return lambda: be._padded_input(x, g, slack=True)
    return build


def _case_direct_forward(layer):
    def build(be, rng):
        g, x, w, _ = conv_arrays(layer, rng)
        xp = be._padded_input(x, g, slack=True)
        tab = be._forward_table(g, xp)
        w2 = w.reshape(g.K, -1)
        y = np.empty(g.y_shape, dtype=np.float32)
        none = np.zeros(0, dtype=np.float32)
        phases = [(0, w2.shape[1], 0, 0, g.P, g.Q)]
        return lambda: be._direct(xp, g.N, w2, tab, phases, (1, 1), none, y)
    return build


def _case_data_grad(layer):
    def build(be, rng):
        g, _, w, dy = conv_arrays(layer, rng)
        return lambda: be._conv_data_grad(dy, w, g)
    return build


def _case_weight_grad(layer):
    def build(be, rng):
        g, x, _, dy = conv_arrays(layer, rng)
        xp = be._padded_input(x, g, slack=True)
        return lambda: be._conv_weight_grad(x, dy, g, xp)
    return build


def _case_gemm_forward(layer):
    def build(be, rng):
        g, x, w, _ = conv_arrays(layer, rng)
        assert not be._use_direct(g.K, g.C), "the gather-GEMM case must be a wide layer"
        return lambda: be._conv2d_forward(x, w, None, g)
    return build


def _case_bias_grad(layer):
    def build(be, rng):
        _, _, _, dy = conv_arrays(layer, rng)
        db = np.empty(layer.K, dtype=np.float32)
        return lambda: be._k._bias_grad(dy, db)
    return build


def _pool_arrays(layer, kernel, stride, padding, rng):
    g = pool_geometry((layer.N, layer.C, layer.H, layer.W), kernel, stride, padding)
    x = rng.standard_normal(g.x_shape, dtype=np.float32)
    dy = rng.standard_normal(g.y_shape, dtype=np.float32)
    geo = PoolWindow(R=g.R, S=g.S, sh=g.stride_h, sw=g.stride_w, ph=g.pad_h, pw=g.pad_w)
    return g, x, dy, geo


def _case_maxpool(layer, kernel, stride, padding, backward, two_by_two):
    def build(be, rng):
        g, x, dy, geo = _pool_arrays(layer, kernel, stride, padding, rng)
        y = np.empty(g.y_shape, dtype=np.float32)
        arg = np.empty(g.y_shape, dtype=np.int32)
        k = be._k
        if two_by_two:
            k._maxpool2x2_fwd(x, y, arg)
            if not backward:
                return lambda: k._maxpool2x2_fwd(x, y, arg)
            dx = np.empty(g.x_shape, dtype=np.float32)
            return lambda: k._maxpool2x2_bwd(dy, arg, dx)
        k._maxpool_fwd(x, geo, y, arg)
        if not backward:
            return lambda: k._maxpool_fwd(x, geo, y, arg)
        dx = np.zeros(g.x_shape, dtype=np.float32)  # accumulates over the calls: harmless
        return lambda: k._maxpool_bwd(dy, arg, dx)
    return build


def _case_avgpool(layer, backward):
    def build(be, rng):
        g, x, dy, geo = _pool_arrays(layer, 2, None, 0, rng)
        scale = np.array([0.25], dtype=np.float32)
        if not backward:
            y = np.empty(g.y_shape, dtype=np.float32)
            return lambda: be._k._avgpool_fwd(x, geo, scale, y)
        dx = np.zeros(g.x_shape, dtype=np.float32)
        return lambda: be._k._avgpool_bwd(dy, geo, scale, dx)
    return build


def _case_relu(size, backward):
    def build(be, rng):
        x = rng.standard_normal(size, dtype=np.float32)
        y = np.empty_like(x)
        if not backward:
            return lambda: be._k._relu_fwd(x, y)
        dy = rng.standard_normal(size, dtype=np.float32)
        return lambda: be._k._relu_bwd(dy, x, y)
    return build


def _case_dropout(size):
    def build(be, rng):
        keep = np.empty(size, dtype=np.bool_)
        u = np.uint64
        return lambda: be._k._dropout_mask(u(12345), u(1 << 23), u(0x9E3779B97F4A7C15),
                                           u(0xBF58476D1CE4E5B9), u(0x94D049BB133111EB), keep)
    return build


def _case_cross_entropy(n, classes):
    def build(be, rng):
        logits = rng.standard_normal((n, classes), dtype=np.float32)
        labels = rng.integers(0, classes, n).astype(np.int64)
        dlogits = np.empty_like(logits)
        return lambda: be._k._cross_entropy(logits, labels, 0.1, dlogits)
    return build


def _case_matmul(m, t, l, transposed):
    def build(be, rng):
        if not transposed:  # C (m, t) = A (m, l) · B (t, l)ᵀ
            a = rng.standard_normal((m, l), dtype=np.float32)
            b = rng.standard_normal((t, l), dtype=np.float32)
            c = np.empty((m, t), dtype=np.float32)
            return lambda: be._k._matmul_nt(a, b, c)
        a = rng.standard_normal((l, m), dtype=np.float32)  # C (m, t) = Aᵀ · B (l, t)
        b = rng.standard_normal((l, t), dtype=np.float32)
        c = np.empty((m, t), dtype=np.float32)
        return lambda: be._k._matmul_tn(a, b, c)
    return build


def kernel_cases(divisor: int = 1) -> list[KernelCase]:
    """Every Numba kernel of the backend on a benchmark-sized float32 case (batch sizes / by
    ``divisor``): the convolution passes on layers b and e of :data:`LAYERS` (and a wide
    layer for the gather GEMM), both max-pools and the average pool on the pool layer, and the
    training glue."""
    b, e, pool = (scaled(LAYERS[n], divisor) for n in ("b", "e", "pool"))
    wide = ConvLayer("wide", max(1, 16 // divisor), 512, 7, 7, 256, 3, 3, padding=1)
    general = scaled(PoolLayer("pool3", 64, 64, 32, 32, kernel=3), divisor)
    size = b.N * b.K * b.H * b.W
    rows = max(4, 256 // divisor // 4 * 4)
    return [
        KernelCase("_pad_planes", b.describe(), _case_pad(b)),
        KernelCase("_pad_planes (stride 2, pairs)", e.describe(), _case_pad(e)),
        KernelCase("_direct_conv forward", b.describe(), _case_direct_forward(b)),
        KernelCase("_direct_conv backward-data", b.describe(), _case_data_grad(b)),
        KernelCase("_direct_conv backward-data (4 phases)", e.describe(), _case_data_grad(e)),
        KernelCase("_conv_weight_tiles backward-weight", b.describe(), _case_weight_grad(b)),
        KernelCase("_conv_weight_tiles backward-weight", e.describe(), _case_weight_grad(e)),
        KernelCase("_pad_nhwc + _gather_gemm forward", wide.describe(), _case_gemm_forward(wide)),
        KernelCase("_bias_grad", b.describe(), _case_bias_grad(b)),
        KernelCase("_maxpool2x2_fwd", pool.describe(), _case_maxpool(pool, 2, 2, 0, False, True)),
        KernelCase("_maxpool2x2_bwd", pool.describe(), _case_maxpool(pool, 2, 2, 0, True, True)),
        KernelCase("_maxpool_fwd", general.describe() + " stride 2 pad 1",
                   _case_maxpool(general, 3, 2, 1, False, False)),
        KernelCase("_maxpool_bwd", general.describe() + " stride 2 pad 1",
                   _case_maxpool(general, 3, 2, 1, True, False)),
        KernelCase("_avgpool_fwd", pool.describe().replace("max", "avg"),
                   _case_avgpool(pool, False)),
        KernelCase("_avgpool_bwd", pool.describe().replace("max", "avg"),
                   _case_avgpool(pool, True)),
        KernelCase("_relu_fwd", f"{size} elements", _case_relu(size, False)),
        KernelCase("_relu_bwd", f"{size} elements", _case_relu(size, True)),
        KernelCase("_dropout_mask", f"{size} elements", _case_dropout(size)),
        KernelCase("_cross_entropy", "logits 4096x10", _case_cross_entropy(4096, 10)),
        KernelCase("_matmul_nt (linear forward)", f"{rows}x1024 . (512x1024)T",
                   _case_matmul(rows, 512, 1024, False)),
        KernelCase("_matmul_tn (linear backward)", f"({rows}x512)T . {rows}x1024",
                   _case_matmul(512, 1024, rows, True)),
    ]
