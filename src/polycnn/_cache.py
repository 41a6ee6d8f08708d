"""Private cache folders: where polycnn keeps files that it later loads as code.

Numba's cache index is a pickle that Numba unpickles, and the CUDA emulator loads a ``.so``
found by a predictable name: anyone who can write to either folder can run code as the user.
So :func:`private_dir` uses a cache folder only when it is a real folder (not a symbolic link),
owned by the current user, not writable by group or others, writable by us, and below folders
that only this user or root can rename entries in (a folder writable by others is accepted only
with its sticky bit, like ``/tmp``). A missing folder is created with mode 0700. Otherwise the
process uses a fresh private temporary folder (``tempfile.mkdtemp``, removed at exit) and says so
once on stderr, naming the folder and why.

Caches live in ``$XDG_CACHE_HOME/polycnn`` (``~/.cache/polycnn`` when it is unset or relative,
as the XDG specification says): ``numba/`` and ``cuda-emu/``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import sys
import tempfile
import threading
from pathlib import Path

_lock = threading.Lock()
#: folder asked for -> folder used, once per process
_decided: dict[str, Path] = {}


def user_cache_root() -> Path | None:
    """``$XDG_CACHE_HOME/polycnn`` or ``~/.cache/polycnn``; None when neither is an absolute
    path (a relative one would put the cache wherever the process happens to run)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "polycnn"
    home = os.path.expanduser("~")
    if os.path.isabs(home):
        return Path(home) / ".cache" / "polycnn"
    return None


def problem(path: Path) -> str | None:
    """Why ``path`` (an existing folder) must not hold code polycnn loads, or None."""
    me = os.geteuid()
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot be examined ({exc.strerror or exc})"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if st.st_uid != me:
        return f"is owned by uid {st.st_uid}, not by this user (uid {me})"
    if st.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    # NOTE: whoever can write to a parent can rename this folder away and put their own in its
    # place between our check and Numba's (or ctypes') use of it
    parent = Path(os.path.realpath(path)).parent
    for folder in (parent, *parent.parents):
        try:
            pst = os.stat(folder)
        except OSError as exc:
            return f"has a parent {folder} that cannot be examined ({exc.strerror or exc})"
        if pst.st_uid not in (me, 0):
            return f"is inside {folder}, owned by uid {pst.st_uid} (neither this user nor root)"
        if pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
            return (f"is inside {folder}, writable by group or others without the sticky bit"
                    f" (mode {stat.S_IMODE(pst.st_mode):04o})")
    try:
        probe = tempfile.TemporaryFile(dir=path)
        probe.close()
    except OSError as exc:
        return f"is not writable ({exc.strerror or exc})"
    return None


def _create(path: Path) -> str | None:
    """Create ``path`` and its missing parents with mode 0700 (as the XDG specification asks);
    why that failed, or None."""
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    try:
        for folder in reversed(missing):
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:  # created meanwhile by another process: checked later
                continue
            os.chmod(folder, 0o700)  # NOTE: the umask can only narrow mkdir's mode; be exact
    except OSError as exc:
        return f"cannot be created ({exc.strerror or exc})"
    return None


def private_dir(path, what: str) -> Path:
    """``path`` when it is safe to keep code in (see the module docstring; created with mode
    0700 when missing); otherwise a private temporary folder for the rest of the process, said
    once on stderr. ``path`` None: no usable location (the temporary folder). ``what`` names the
    cache in the message (``numba``, ``cupy-emu``)."""
    key = f"{what}\0{path}"
    with _lock:
        found = _decided.get(key)
        if found is not None:
            return found
        if path is None:
            why, shown = "has no absolute location (XDG_CACHE_HOME and HOME unset or relative)", ""
        else:
            path = Path(os.path.abspath(path))
            why, shown = _create(path) or problem(path), f" {str(path)!r}"
        if why is None:
            found = path
        else:
            found = Path(tempfile.mkdtemp(prefix=f"polycnn-{what}-"))
            atexit.register(shutil.rmtree, found, ignore_errors=True)
            # NOTE: repr: a path from the environment may hold anything, escapes included
            print(f"polycnn: warning: the {what} cache folder{shown} {why}; using a private"
                  f" temporary folder {str(found)!r} for this process (compiled code is kept"
                  " between runs only in a folder that this user alone can write to)",
                  file=sys.stderr, flush=True)
        _decided[key] = found
        return found
