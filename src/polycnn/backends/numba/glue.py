"""The training glue's loops: ReLU, the dropout mask (splitmix64 hashes, see
:mod:`polycnn.hashing`) and the softmax cross-entropy.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _relu_fwd(x, y):
    """y = max(x, 0) elementwise on flat arrays (a NaN stays NaN, as in numpy.maximum)."""
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = v if (v > 0 or v != v) else 0


@njit(parallel=True, cache=True)
def _relu_bwd(dy, x, dx):
    """dx = dy · (x > 0), as a multiply so that NaN/inf in dy behave as in ``dy * mask``."""
    for i in prange(x.shape[0]):
        dx[i] = dy[i] * (1 if x[i] > 0 else 0)


@njit(parallel=True, cache=True)
def _dropout_mask(key, threshold, gamma, mix1, mix2, keep):
    """keep[i] = (splitmix64(key + (i + 1)·gamma) >> 40) >= threshold on a flat bool array; all
    arithmetic in uint64 (a plain int literal would turn it into float64), wrapping."""
    for i in prange(keep.shape[0]):
        z = key + np.uint64(i + 1) * gamma
        z = (z ^ (z >> np.uint64(30))) * mix1
        z = (z ^ (z >> np.uint64(27))) * mix2
        z = z ^ (z >> np.uint64(31))
        keep[i] = (z >> np.uint64(40)) >= threshold


@njit(cache=True)
def _cross_entropy(logits, labels, smoothing, dlogits):
    """Mean softmax cross-entropy with label smoothing; writes (softmax - target)/N to dlogits
    and returns the loss. Rows are independent; sums run in row-major order."""
    N, K = logits.shape
    off = smoothing / K
    on = 1.0 - smoothing
    total = 0.0
    for n in range(N):
        mx = logits[n, 0]
        for k in range(1, K):
            if logits[n, k] > mx:
                mx = logits[n, k]
        se = np.float32(0)
        for k in range(K):
            se += np.exp(logits[n, k] - mx)
        lse = np.log(se)
        for k in range(K):
            logp = logits[n, k] - mx - lse
            tgt = off + (on if k == labels[n] else 0.0)
            total -= tgt * logp
            dlogits[n, k] = (np.exp(logp) - tgt) / N
    return total / N
