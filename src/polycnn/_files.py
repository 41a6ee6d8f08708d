"""Files written whole or not at all, and the temporary files of killed writers cleared.

:func:`replaced_atomically` writes through a temporary file in the destination's folder, named
``.polycnn-<host>-<pid>-<random>.tmp`` (``host``: 8 hex digits of a hash of the host name and
process-id namespace), that reaches the disk and then takes the destination's name in one
rename; the folder is synced after the rename so the new name survives a power cut. A writer killed with SIGKILL cannot remove its
temporary file; the next write into the same folder does (:func:`remove_stale_temps`): a file of
that pattern whose process is gone, or one untouched for :data:`STALE_AFTER_S` (another host's,
or a process id reused since). Files of the older ``mkstemp`` names polycnn used
(``.tmp-XXXXXXXX.npz``, ``.download-XXXXXXXX.part``, ``.extract-XXXXXXXX``) carry no process id
and are removed once untouched for :data:`LEGACY_STALE_AFTER_S`. Nothing else is ever removed.

Modes: a replaced file keeps its permission bits; a new file gets ``0o666`` less the umask, as
``open(path, "w")`` gives, not ``mkstemp``'s ``0o600``: a checkpoint or a data file is a file
like any other the user writes, and a user who wants them private sets the umask. The temporary
file of a replaced file is created ``0o600`` and given the old mode just before the rename, so
it is never readable by more users than the file it replaces.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
import time

#: a temporary file whose writer may still live (another host's, a reused process id) is
#: removed once it has not been written for this long
STALE_AFTER_S = 24 * 3600
#: the same for the older names, which carry no process id
LEGACY_STALE_AFTER_S = 3600

_TEMP = re.compile(r"\.polycnn-([0-9a-f]{8})-([1-9][0-9]{0,9})-[0-9a-f]{8}\.tmp")
_LEGACY = re.compile(r"\.(?:tmp-[a-z0-9_]{8}\.npz|download-[a-z0-9_]{8}\.part"
                     r"|extract-[a-z0-9_]{8})")
_HOST = None


def _host() -> str:
    """8 hex digits naming this host and process-id namespace: a process id is only checked
    where it means the same process (two containers may share a host name and a folder)."""
    global _HOST
    if _HOST is None:
        try:
            namespace = os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            namespace = 0
        key = f"{socket.gethostname()}:{namespace}".encode("utf-8", "replace")
        _HOST = hashlib.sha256(key).hexdigest()[:8]
    return _HOST


def is_temp_name(name: str) -> bool:
    """Whether ``name`` (a file name, no folder) is one of polycnn's temporary files."""
    return bool(_TEMP.fullmatch(name) or _LEGACY.fullmatch(name))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":
        return True   # NOTE: os.kill(pid, 0) terminates the process on Windows: go by age only
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # another user's live process
    except (OverflowError, ValueError, OSError):
        return False  # no process can have that id
    return True


def _stale(name: str, st: os.stat_result, now: float) -> bool:
    age = now - st.st_mtime
    m = _TEMP.fullmatch(name)
    if m is None:
        return age > LEGACY_STALE_AFTER_S
    if m.group(1) == _host() and not _alive(int(m.group(2))):
        return True
    return age > STALE_AFTER_S


def remove_stale_temps(folder) -> list[str]:
    """Remove the temporary files in ``folder`` left by polycnn writers that died (see the module
    doc); returns their paths. Only regular files named as polycnn names its temporary files
    are considered; one that cannot be removed is left."""
    removed, now = [], time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not is_temp_name(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and _stale(entry.name, st, now):
                os.unlink(entry.path)
                removed.append(entry.path)
        except OSError:
            continue   # NOTE: gone already (another writer cleared it) or not ours to remove
    return removed


def _create_temp(folder: str, mode: int) -> tuple[int, str]:
    # NOTE: O_EXCL never opens an existing name, a symbolic link included; O_NOFOLLOW says so twice
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    for _ in range(100):
        path = os.path.join(folder, f".polycnn-{_host()}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            return os.open(path, flags, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free name for a temporary file after 100 tries")


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return   # NOTE: Windows cannot open a folder; its rename is durable by itself
    try:
        os.fsync(fd)
    except OSError as exc:
        # NOTE: some file systems (and platforms) cannot sync a folder
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def replaced_atomically(dest):
    """Yield a binary file in ``dest``'s folder; when the block ends cleanly its bytes reach the
    disk, it gets ``dest``'s mode (if ``dest`` exists; else the umask's default), takes ``dest``'s
    name in one rename (``os.replace``) and the folder is synced. When the block raises it is
    removed: ``dest`` is never half-written. Stale temporary files of dead writers in the folder
    are removed first (:func:`remove_stale_temps`). A ``dest`` that is a symbolic link is replaced
    by the new file; the link's target is not written. An existing ``dest`` that is neither a
    regular file nor a link (a folder, FIFO, device or socket: as root, ``/dev/null`` would be
    replaced) raises ``ValueError`` before anything is written."""
    dest = os.fspath(dest)
    folder = os.path.dirname(os.path.abspath(dest))
    try:
        st = os.lstat(dest)
    except (FileNotFoundError, NotADirectoryError):
        st = None   # NOTE: a folder that is not one is named by the temporary file's error below
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        from .limits import file_kind

        raise ValueError(f"{dest} is {file_kind(st.st_mode)}, not a regular file: polycnn"
                         " replaces only a regular file (or a symbolic link); choose another name")
    keep = stat.S_IMODE(st.st_mode) & 0o777 if st is not None and stat.S_ISREG(st.st_mode) else None
    remove_stale_temps(folder)
    try:
        fd, tmp = _create_temp(folder, 0o600 if keep is not None else 0o666)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} (cannot create a temporary file in {folder})",
                      dest) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if keep is not None:
                with contextlib.suppress(OSError, AttributeError):   # NOTE: then it stays 0o600
                    os.fchmod(f.fileno(), keep)
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        tmp = None
        _fsync_folder(folder)
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


__all__ = ["replaced_atomically", "remove_stale_temps", "is_temp_name", "STALE_AFTER_S",
           "LEGACY_STALE_AFTER_S"]
