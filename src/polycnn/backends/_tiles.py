"""The GEMM tile table of the CUDA kernels (conv2d.cu): the tile shapes, which one a GEMM of a
given output size runs, and the threads and shared memory a block of each needs. Kept apart from
cupy_backend so that one table serves the launches and the kernel sources alike.
"""

from __future__ import annotations

import functools

from ..geometry import ceil_div

# NOTE: mirrors the #define of conv2d.cu; the launch shapes depend on it.
TILE_K = 16
#: kernel-name suffix -> (BM, BN): the tile shapes of the GEMM kernels, in order of preference
#: (the bigger and squarer, the fewer loads per multiply; see gemm_tile)
TILES = {"": (64, 64), "_mid": (32, 128), "_narrow": (16, 256), "_small": (16, 64)}


def gemm_threads(tile: str) -> int:
    """Threads of a GEMM block: one 4×4 register tile each."""
    bm, bn = TILES[tile]
    return bm * bn // 16


def gemm_smem_bytes(tile: str, itemsize: int) -> int:
    """GEMM_SMEM_BYTES of conv2d.cu: the row table, then the A and B tiles."""
    bm, bn = TILES[tile]
    return 2 * TILE_K * 16 + TILE_K * (bm + 4 + bn + 4) * itemsize


#: the tile of the TF32 (tensor-core) GEMM kernels, ``<op>_tf32``: 64×64, float32 only
TF32_TILE = ""


def gemm_tc_smem_bytes() -> int:
    """GEMM_TC_SMEM_BYTES(64, 64) of conv2d.cu: the fp32 tile's, then the accumulators'
    64 × 68 staging tile."""
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
