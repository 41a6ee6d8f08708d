"""The kernels' shape arguments, by name: small tuples of ints that Numba passes by value (a
struct, as the CUDA kernels' ``ConvShape``/``PoolShape``) and reads as ``args.Ws``.

NOTE: every field must be a Python or NumPy int: a float or a bool makes another Numba type,
hence another compilation: build them with :func:`named`, which converts every value. No Numba
import here: the backend builds these without loading the kernels.
"""

from __future__ import annotations

from typing import NamedTuple


def named(cls, **fields):
    """``cls(**fields)`` with every value converted to a Python int."""
    return cls(**{name: int(value) for name, value in fields.items()})


class DirectRun(NamedTuple):
    """How ``conv._direct_conv`` walks its source and output."""

    ss: int  # source elements per sample
    Ws: int  # source row width (padded)
    osh: int  # output row step between a phase's pixels (the stride of backward-data)
    osw: int  # output column step
    M: int  # output channels
    TB: int  # source rows per task
    chunks: int  # parallel chunks of tasks
    N: int  # samples
    To_max: int  # output rows of the tallest phase
    tile: int  # which register tile (an index into ``tiles.TILES``)


class GemmRun(NamedTuple):
    """How ``gemm._gather_gemm`` gathers its rows and places its outputs."""

    ish: int  # source rows between two output rows
    isw: int  # source pixels between two output columns
    To: int  # output rows
    Uo: int  # output columns
    M: int  # output channels
    oh0: int  # the first output's row in ``out``
    ow0: int  # its column
    osh: int  # output row step
    osw: int  # output column step
    TP: int  # pixels per tile of gathered rows
    chunks: int  # parallel chunks of tiles
    rs: int  # source row stride (elements)
    cs: int  # source pixel stride (elements)
    plen: int  # elements per gathered segment


class WeightTiles(NamedTuple):
    """How ``conv._conv_weight_tiles`` reads its operands."""

    ss: int  # padded source elements per sample
    Pz: int  # elements per widened dy plane (a multiple of one SIMD vector)
    spc: int  # samples a tile sums before its lanes


class ConvSteps(NamedTuple):
    """Stride, dilation and padding of a convolution (the exact backward loops)."""

    sh: int
    sw: int
    dh: int
    dw: int
    ph: int
    pw: int


class PoolWindow(NamedTuple):
    """A pooling window: R×S, stride (sh, sw), padding (ph, pw)."""

    R: int
    S: int
    sh: int
    sw: int
    ph: int
    pw: int
