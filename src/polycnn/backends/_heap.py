"""Keep freed arrays in the process heap between training steps (glibc only).

A training step allocates its activations and gradients afresh: for the shapes CNN at batch 32,
about 40 MB a step in arrays of 1-8 MB. glibc serves a block above its mmap threshold with new
pages from the kernel and hands it back on ``free``, so every step page-faults and zero-fills
that memory again: about 2,000 page faults a step, measured here to cost 15-30% of the step
time on the numba backend. glibc raises the threshold by itself as blocks are freed, but trims
the top of the heap as soon as 128 KiB or more of it is free.

:func:`keep_freed_blocks` fixes both thresholds once per process, when a CPU backend is first
created: blocks below ``MMAP_THRESHOLD`` come from the heap, and up to ``TRIM_THRESHOLD`` of
free memory stays there for the next step. The price is memory: a process may keep up to
``TRIM_THRESHOLD`` more than it uses. Nothing changes when the user has tuned malloc already
(any of ``USER_SETTINGS`` set), when ``POLYCNN_KEEP_HEAP=0``, or on a C library other than
glibc; :func:`describe` says which happened. ``POLYCNN_KEEP_HEAP`` takes 1 (the default) or 0;
any other value changes nothing either, and is said once on stderr.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading

#: glibc's mallopt() parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: blocks under this come from the heap (glibc accepts at most 32 MiB on 64-bit machines)
MMAP_THRESHOLD = 32 * 1024 * 1024

#: free memory at the top of the heap kept for reuse, at most
TRIM_THRESHOLD = 256 * 1024 * 1024

#: environment variables through which a user tunes glibc's malloc: any of them set, we leave it
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES")

_lock = threading.Lock()
_state: str | None = None


def _decide() -> str:
    keep = os.environ.get("POLYCNN_KEEP_HEAP", "").strip()
    if keep == "0":
        return "glibc defaults (POLYCNN_KEEP_HEAP=0)"
    if keep not in ("", "1"):
        # NOTE: a warning, not an error: this tunes every CPU backend, numpy included
        print(f"polycnn: warning: POLYCNN_KEEP_HEAP={keep!r} is not 0 or 1 (1 or unset: keep"
              " freed blocks in the heap; 0: glibc's defaults); glibc's defaults are kept",
              file=sys.stderr, flush=True)
        return f"glibc defaults (POLYCNN_KEEP_HEAP={keep!r} is not 0 or 1)"
    tuned = [name for name in USER_SETTINGS if name in os.environ]
    if tuned:
        return f"left as the environment sets it ({', '.join(tuned)})"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "the C library's defaults (not glibc)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    except (OSError, AttributeError) as exc:
        return f"glibc defaults (mallopt unavailable: {exc})"
    if not ok:
        return "glibc defaults (mallopt refused the thresholds)"
    return (f"freed blocks kept: glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB,"
            f" trim threshold {TRIM_THRESHOLD >> 20} MiB (POLYCNN_KEEP_HEAP=0 keeps the defaults)")


def keep_freed_blocks() -> str:
    """Apply the thresholds once per process (see the module docstring); returns
    :func:`describe`."""
    global _state
    with _lock:
        if _state is None:
            _state = _decide()
        return _state


def describe() -> str:
    """What :func:`keep_freed_blocks` did, or that it has not run."""
    return _state or "glibc defaults (no CPU backend created yet)"
