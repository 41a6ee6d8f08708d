"""Planning the Numba convolution passes in NumPy: the padded operands' layout, tap tables and
register-tile choice (no kernels here; the backend's methods run them).

Legend: N batch, C input channels, H×W input, K output channels, R×S kernel, P×Q output, L
reduction length (C·R·S); ``Hs``×``Ws`` a padded, stride-phase-split source.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...geometry import ConvGeometry, ceil_div


class Source(NamedTuple):
    """A convolution pass's source as the kernels read it: ``flat`` (1-D; with slack, zeros
    after the data), a sample every ``ss`` elements, a plane (channel) every ``ps``, ``Hs``
    rows of ``Ws``."""

    flat: np.ndarray
    ss: int
    ps: int
    Hs: int
    Ws: int


def round_up(value: int, multiple: int) -> int:
    return ceil_div(value, multiple) * multiple


def padded_matrix(m, rows: int, cols: int):
    """``m`` (a 2-D array) copied into the top-left corner of a zero (rows, cols) array."""
    out = np.zeros((rows, cols), dtype=m.dtype)
    out[: m.shape[0], : m.shape[1]] = m
    return out


def pick_tile(M: int, tiles) -> tuple[int, int]:
    """(M rounded up to the tile's channels, the tile's index in ``tiles``) for the register
    tile that pads M output channels least; the last (narrowest) tile only for M up to its
    channels."""
    options = [(round_up(M, tm), i) for i, (tm, _) in enumerate(tiles)
               if i < len(tiles) - 1 or M <= tm]
    return min(options)


def forward_table(g: ConvGeometry, src: Source):
    """Flat offset of tap (c, r, s) from a pixel's corner in the space-to-depth input (see
    ``layout._pad_planes``), in (c, r, s) order: the weight matrix's column order."""
    c, r, s = np.meshgrid(np.arange(g.C), np.arange(g.R), np.arange(g.S), indexing="ij")
    rr, ss = r * g.dil_h, s * g.dil_w
    plane = (c * g.stride_h + rr % g.stride_h) * g.stride_w + ss % g.stride_w
    return (plane * src.ps + (rr // g.stride_h) * src.Ws + ss // g.stride_w).ravel()


def input_extent(g: ConvGeometry) -> tuple[int, int]:
    """Rows and columns of the padded, stride-phase-split input that the output grid reads
    with unit stride: P + (R-1)*dh//sh rows of Q + (S-1)*dw//sw."""
    return (g.P + (g.R - 1) * g.dil_h // g.stride_h, g.Q + (g.S - 1) * g.dil_w // g.stride_w)


def phase_taps(a: int, size: int, pad: int, taps: int, dil: int, stride: int):
    """Backward-data, for outputs a, a+stride, ... of one dimension: (count, taps r that reach
    them, offsets p - t into dy)."""
    count = max(0, ceil_div(size - a, stride))
    rs, offs = [], []
    for r in range(taps):
        num = a + pad - r * dil
        if num % stride == 0:
            rs.append(r)
            offs.append(num // stride)
    return count, rs, offs


def source_extent(phases):
    """Padding before dy and the padded length so every (t + off) of every phase fits."""
    lo, hi = 0, 0
    for count, _, offs in phases:
        if count and offs:
            lo = min(lo, min(offs))
            hi = max(hi, count - 1 + max(offs))
    return -lo, hi - lo + 1
