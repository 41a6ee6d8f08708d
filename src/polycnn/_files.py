"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def replaced_atomically(dest, prefix: str = ".tmp-", suffix: str = ""):
    """Yield a binary file in ``dest``'s folder; when the block ends cleanly its bytes reach the
    disk and it takes ``dest``'s name in one rename (``os.replace``), and when the block raises it
    is removed: ``dest`` is never half-written, and no temporary file stays behind."""
    folder = os.path.dirname(os.path.abspath(dest))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
