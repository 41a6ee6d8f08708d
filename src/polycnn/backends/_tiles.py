"""The GEMM tile table of the CUDA kernels: the tile shapes, which one a GEMM of a given output
size runs, and the threads and shared memory a block of each needs. Kept apart from
cupy_backend so that one table serves the launches and the kernel sources alike.

The table itself is written once, in kernels/gemm_tile.cuh (``GEMM_TILES`` and ``GEMM_TF32_TILE``,
X-macros from which conv2d.cu makes its per-tile entry points, and ``TILE_K``); this module reads
it from there, so a tile added, removed or reshaped there is one the host launches.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from ..geometry import ceil_div

#: the kernel source that holds the table
TABLE_SOURCE = "gemm_tile.cuh"
_DEFINE = r"^[ \t]*#define[ \t]+{}[ \t]+(.*)$"
_ROW = re.compile(r"X\(\s*(\w*)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)")


def parse_table(source: str) -> tuple[int, dict[str, tuple[int, int]], str, tuple[int, int]]:
    """(TILE_K, {suffix: (BM, BN)} of ``GEMM_TILES`` in order, the TF32 kernels' name suffix,
    their (BM, BN)) from the ``#define`` lines of a kernel source; ValueError when one is
    missing or malformed."""
    def define(name: str) -> str:
        m = re.search(_DEFINE.format(re.escape(name)), source, re.M)
        if m is None:
            raise ValueError(f"kernels/{TABLE_SOURCE}: no #define {name}")
        return m[1].strip()

    def rows(name: str) -> list[tuple[str, int, int]]:
        text = define(name + "(X)")
        found = [(m[1], int(m[2]), int(m[3])) for m in _ROW.finditer(text)]
        if not found or _ROW.sub("", text).strip():
            raise ValueError(f"kernels/{TABLE_SOURCE}: {name} must be a list of"
                             f" X(suffix, BM, BN, HOLD), got {text!r}")
        return found

    tile_k = int(define("TILE_K"))
    tiles = {suffix: (bm, bn) for suffix, bm, bn in rows("GEMM_TILES")}
    ((tf32_suffix, tf32_bm, tf32_bn),) = rows("GEMM_TF32_TILE")
    return tile_k, tiles, tf32_suffix, (tf32_bm, tf32_bn)


def _read_table():
    text = (resources.files("polycnn.kernels") / TABLE_SOURCE).read_text()
    tile_k, tiles, tf32_suffix, tf32_shape = parse_table(text)
    same_shape = [suffix for suffix, shape in tiles.items() if shape == tf32_shape]
    if not same_shape:
        raise ValueError(f"kernels/{TABLE_SOURCE}: the TF32 tile {tf32_shape} must also be a"
                         " shape of GEMM_TILES (the host sizes its launches from that row)")
    return tile_k, tiles, tf32_suffix, same_shape[0]


#: the reduction depth of one shared-memory tile (gemm_tile.cuh's TILE_K)
#: TILES: kernel-name suffix -> (BM, BN): the tile shapes of the GEMM kernels, in order of
#: preference (the bigger and squarer, the fewer loads per multiply; see gemm_tile)
#: TF32_SUFFIX: the name suffix of the TF32 (tensor-core) GEMM kernels, ``<op>_tf32``
#: TF32_TILE: the key of TILES with the TF32 kernels' shape (64×64, float32 only)
TILE_K, TILES, TF32_SUFFIX, TF32_TILE = _read_table()


def gemm_threads(tile: str) -> int:
    """Threads of a GEMM block: one 4×4 register tile each."""
    bm, bn = TILES[tile]
    return bm * bn // 16


def gemm_smem_bytes(tile: str, itemsize: int) -> int:
    """GEMM_SMEM_BYTES of gemm_tile.cuh: the row table, then the A and B tiles (their rows padded by
    4); tests/backends/test_cuda_emu.py holds the two to the same numbers."""
    bm, bn = TILES[tile]
    return 2 * TILE_K * 16 + TILE_K * (bm + 4 + bn + 4) * itemsize


def gemm_tc_smem_bytes() -> int:
    """GEMM_TC_SMEM_BYTES of gemm_tile.cuh for the TF32 tile: the fp32 tile's, then the
    accumulators' BM × (BN + 4) staging tile."""
    bm, bn = TILES[TF32_TILE]
    return gemm_smem_bytes(TF32_TILE, 4) + bm * (bn + 4) * 4


@functools.lru_cache(maxsize=4096)
def gemm_tile(rows: int, cols: int) -> str:
    """The first tile shape of TILES (squarest first) that pads a rows × cols output at most 5%
    more than the one that pads it least: a smaller tile only where it saves real work."""
    def padded(tile):
        bm, bn = TILES[tile]
        return ceil_div(rows, bm) * bm * ceil_div(cols, bn) * bn
    least = min(padded(tile) for tile in TILES)
    return next(tile for tile in TILES if padded(tile) <= 1.05 * least)
