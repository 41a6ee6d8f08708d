"""Every compiled kernel of the Numba backend, in one namespace: what
``numba_backend._load_kernels`` imports (with Numba's cache pointed at a private folder) and
the backend reaches as ``self._k``.

NOTE: importing this module, or any kernel module of this package, decorates the kernels:
only :func:`..loader.load_kernels` may import it first, or the kernels cache in Numba's
default folder (next to the package, or none when it is read-only).
"""

from __future__ import annotations

from .conv import (  # noqa: F401
    _bias_grad,
    _conv_grad_exact,
    _conv_weight_tiles,
    _direct_conv,
    _sum_partials,
)
from .gemm import TN_TILE, _gather_gemm, _matmul_nt, _matmul_tn, _mm_block, _mm_nt  # noqa: F401
from .glue import _cross_entropy, _dropout_mask, _relu_bwd, _relu_fwd  # noqa: F401
from .layout import _pad_nhwc, _pad_planes, _widen_rows  # noqa: F401
from .pool import (  # noqa: F401
    POOL_BLOCK,
    _avgpool_bwd,
    _avgpool_fwd,
    _maxpool2x2_bwd,
    _maxpool2x2_fwd,
    _maxpool_bwd,
    _maxpool_fwd,
)
from .target import FAST, SIMD_BYTES  # noqa: F401
from .tiles import DOT_TILE, FMA_ACCS, FMA_LANES, TILES, ZBLOCK, _fma_probe  # noqa: F401
