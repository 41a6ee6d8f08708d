"""Loading the kernels with Numba's on-disk cache in a private folder.

Compiled code is cached in the user's cache folder (``$XDG_CACHE_HOME/polycnn/numba`` or
``~/.cache/polycnn/numba``) unless ``NUMBA_CACHE_DIR`` is set, so it is reused across processes
even when the package folder is read-only. Numba unpickles its cache index, so either folder is
used only when :func:`polycnn._cache.private_dir` finds it private (else a private temporary
folder).

NOTE: Numba checks a cached function against its own file only, and the kernels inline
intrinsics from other modules of this package (:mod:`.tiles`, :mod:`.target`): the code is
cached in a subfolder named by a hash of every module of the package (:func:`kernel_folder`),
so a change to any of them compiles afresh.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import threading
from pathlib import Path

from ... import _cache

_kernels = None
_kernels_lock = threading.Lock()


def user_cache_dir() -> Path | None:
    """Where polycnn keeps compiled Numba code: ``$XDG_CACHE_HOME/polycnn/numba`` (or
    ``~/.cache/polycnn/numba``); None when there is no absolute location for it."""
    root = _cache.user_cache_root()
    return None if root is None else root / "numba"


def cache_dir() -> str | None:
    """The folder Numba caches polycnn's kernels in (None: not loaded yet, or no JIT)."""
    return _kernels._polycnn_cache if _kernels is not None else None


def kernel_folder(folder) -> str:
    """The subfolder of the cache folder ``folder`` that this version of the kernels' sources
    caches in (see the module NOTE)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return os.path.join(folder, "src-" + digest.hexdigest()[:16])


def load_kernels():
    """Import the kernels (:mod:`.kernels`) with Numba's cache pointed at a private folder.

    NOTE: Numba picks a function's cache folder when the ``@njit(cache=True)`` decorator runs,
    from ``numba.core.config.CACHE_DIR`` (read from ``NUMBA_CACHE_DIR`` when numba is
    imported), and unpickles the index it finds there on the first call. The folder, a user-set
    ``NUMBA_CACHE_DIR`` or ours, is checked first (``_cache.private_dir``: owned by this user,
    not writable by others; else a private temporary folder); the setting is changed only while
    the kernels are decorated, so other Numba code in the process is unaffected."""
    global _kernels
    with _kernels_lock:
        if _kernels is not None:
            return _kernels
        from numba.core import config

        folder = None
        if not config.DISABLE_JIT:
            wanted = Path(config.CACHE_DIR) if config.CACHE_DIR else user_cache_dir()
            folder = str(_cache.private_dir(wanted, "numba"))
        # NOTE: on a shared machine, OpenMP threads that spin while they wait for the next
        # parallel loop take CPU from the thread that is still working: with libgomp's default
        # spinning, a training step ran 2x slower on 2 busy cores than with passive waiting.
        # Unless the user chose a policy, wait passively (read when numba first starts its
        # OpenMP layer, so this changes nothing for a process that already ran one).
        if "GOMP_SPINCOUNT" not in os.environ:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        saved = config.CACHE_DIR
        try:
            if folder:
                config.CACHE_DIR = kernel_folder(folder)
            module = importlib.import_module(f"{__package__}.kernels")
        finally:
            config.CACHE_DIR = saved
        module._polycnn_cache = folder
        _kernels = module
        return module
