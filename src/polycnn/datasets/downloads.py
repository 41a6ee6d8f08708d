"""Downloads of MNIST, Fashion-MNIST and CIFAR-10: mirrors, checksums, size caps, and the safe
unpacking of the CIFAR-10 archive.

``download(name, data_dir)`` fetches the files from the mirrors in :data:`.catalog.MIRRORS` (or
the ``POLYCNN_MIRRORS`` environment variable: base URLs separated by commas), checks each against
its SHA-256 in :data:`.catalog.SHA256`, and writes through a temporary file in the same folder
that is renamed only after the checksum matched: a failed download leaves no file behind. A file
whose checksum is not in the table is refused rather than trusted. Mirrors are ``https://`` only
(redirects included); a mirror given on purpose (the ``mirrors`` argument or
``POLYCNN_MIRRORS``, never the built-in table) may also be a local test mirror: ``file:///FOLDER/``
or ``http://`` on the loopback address (``127.0.0.1``, ``[::1]``, ``localhost``), where no
network is crossed. A transfer is stopped as soon as more bytes arrive than the file's size in
:data:`.catalog.SIZES`. The CIFAR-10 archive is unpacked member by member after checking every
member (tarfile's ``data`` filter: no absolute or ``..`` paths, no links, no devices) and each
batch's size.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib

from .._files import replaced_atomically
from . import catalog
from .catalog import (CIFAR_ARCHIVE, CIFAR_FILES, CIFAR_RECORD, CIFAR_SUBDIR, IDX_FILES, MIRRORS,
                      MIRRORS_ENV, SHA256, SIZES, cifar_dir, find_files)

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_MIRROR_FORMS = ("https://HOST/PATH/ (or, given on purpose for a test, file:///FOLDER/ or"
                 " http://127.0.0.1:PORT/PATH/)")


def _check_mirror(url: str, explicit: bool, where: str) -> str:
    """``url`` with a final slash, or ValueError: https always; file:// and loopback http:// only
    when the caller named the mirror (``explicit``)."""
    if not isinstance(url, str):
        raise TypeError(f"{where}: a mirror must be a URL string, got {type(url).__name__}")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(f"{where}: {url!r} is not a URL ({exc}); expected"
                         f" {_MIRROR_FORMS}") from None
    scheme = parts.scheme.lower()
    if scheme == "https" and host:
        pass
    elif explicit and scheme == "file" and parts.path and host in (None, "", "localhost"):
        pass
    elif explicit and scheme == "http" and host in _LOOPBACK:
        pass
    elif scheme in ("http", "ftp", "ftps", "file", "data"):
        raise ValueError(f"{where}: {url!r} is refused: mirrors must be https:// (file:// and"
                         " http://127.0.0.1 only as a local test mirror passed in mirrors= or"
                         f" {MIRRORS_ENV})")
    else:
        raise ValueError(f"{where}: {url!r} is not a mirror URL; expected {_MIRROR_FORMS}")
    return url if url.endswith("/") else url + "/"


def mirrors_for(name: str, mirrors=None) -> list[str]:
    """Base URLs for ``name``: ``mirrors`` if given, else ``$POLYCNN_MIRRORS`` (comma-separated),
    else :data:`MIRRORS`; each checked (see the module doc), with a final slash."""
    if mirrors is not None:
        where = "mirrors"
        if isinstance(mirrors, str):
            mirrors = [mirrors]
        elif not isinstance(mirrors, (list, tuple)):
            raise TypeError(f"mirrors must be a URL or a list of URLs, got"
                            f" {type(mirrors).__name__}")
        return [_check_mirror(m, True, where) for m in mirrors]
    env = os.environ.get(MIRRORS_ENV, "")
    if env.strip():
        urls = [m.strip() for m in env.split(",") if m.strip()]
        if not urls:
            raise ValueError(f"{MIRRORS_ENV}={env!r} names no mirror; expected base URLs separated"
                             f" by commas: {_MIRROR_FORMS}")
        return [_check_mirror(m, True, MIRRORS_ENV) for m in urls]
    return [_check_mirror(m, False, f"MIRRORS[{name!r}]") for m in MIRRORS.get(name, [])]


class _HttpsRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an https:// URL (an https mirror must not hand over to http)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() != "https":
            raise ValueError(f"redirected to {newurl!r}, which is not https://")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, dest: str, sha256: str, size: int, timeout: float) -> None:
    """Stream ``url`` to a temporary file next to ``dest``, stopping as soon as more than ``size``
    bytes arrive; check length and SHA-256, rename."""
    opener = urllib.request.build_opener(_HttpsRedirects)
    try:
        with replaced_atomically(dest) as out, opener.open(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            length = int(length) if length is not None and length.strip().isdigit() else None
            if length is not None and length > size:
                raise ValueError(f"the mirror announces {length:,} bytes but the file has {size:,}")
            h, got = hashlib.sha256(), 0
            while True:
                # NOTE: never more than one byte past the cap, so an endless body stops at once
                chunk = resp.read(min(1 << 16, size + 1 - got))
                if not chunk:
                    break
                got += len(chunk)
                if got > size:
                    raise ValueError(f"more than the expected {size:,} bytes arrived; transfer"
                                     " stopped")
                h.update(chunk)
                out.write(chunk)
            if length is not None and got != length:
                raise ValueError(f"transfer cut short: {got:,} of {length:,} bytes")
            if h.hexdigest() != sha256:
                raise ValueError(f"SHA-256 {h.hexdigest()} does not match the expected {sha256}")
    except http.client.IncompleteRead as exc:
        raise ValueError(f"transfer cut short: {len(exc.partial):,} bytes, {exc.expected} more"
                         " expected") from None


def download(name: str, data_dir, mirrors=None, checksums=None, timeout: float = 60.0,
             sizes=None) -> list[str]:
    """Fetch the files of ``name`` (mnist, fashion-mnist, cifar10) missing from ``data_dir``;
    returns the paths written. Each mirror is tried in turn; a file is kept only when its SHA-256
    matches ``checksums`` (default :data:`SHA256`); more bytes than ``sizes`` (default
    :data:`SIZES`) stop its transfer. Raises ``ValueError`` naming the file and what each mirror
    did when none gave a good copy; never leaves a partial file. See the module doc for the
    mirrors allowed."""
    if name not in SHA256:
        raise ValueError(f"cannot download {name!r}; downloadable: {', '.join(SHA256)}")
    data_dir = os.fspath(data_dir)
    table = SHA256[name] if checksums is None else checksums
    caps = SIZES[name] if sizes is None else sizes
    urls = mirrors_for(name, mirrors)
    if not urls:
        raise ValueError(f"no mirror for {name}: pass mirrors or set {MIRRORS_ENV}")
    if name == "cifar10":
        if cifar_dir(data_dir) is not None:
            return []
        wanted = [CIFAR_ARCHIVE]
    else:
        _, missing = find_files(data_dir, IDX_FILES.values())
        wanted = [m + ".gz" for m in missing]
    for fname in wanted:
        if not table.get(fname):
            raise ValueError(f"{name}: no known SHA-256 for {fname}, so polycnn will not download"
                             f" it unchecked; fetch it yourself into {os.path.abspath(data_dir)}")
        if not caps.get(fname):
            raise ValueError(f"{name}: no known size for {fname}, so polycnn will not download it"
                             f" unbounded; fetch it yourself into {os.path.abspath(data_dir)}")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ValueError(f"data folder {os.path.abspath(data_dir)} is a file, not a folder")
    os.makedirs(data_dir, exist_ok=True)
    written = []
    for fname in wanted:
        dest = os.path.join(data_dir, fname)
        errors = []
        for base in urls:
            try:
                _fetch(base + fname, dest, table[fname], int(caps[fname]), timeout)
                break
            except (ValueError, OSError, urllib.error.URLError, http.client.HTTPException) as exc:
                errors.append(f"{base + fname}: {exc}")
        else:
            raise ValueError(f"{name}: could not download {fname} ({'; '.join(errors)});"
                             f" nothing was written to {os.path.abspath(data_dir)}")
        written.append(dest)
    if name == "cifar10":
        written = _extract_cifar(os.path.join(data_dir, CIFAR_ARCHIVE), data_dir)
    return written


#: an archive with more members than this is not the CIFAR-10 one (it has 9)
_CIFAR_MAX_MEMBERS = 64


def _unsafe_member(member: tarfile.TarInfo, target: str) -> str | None:
    """Why extracting ``member`` under ``target`` would be unsafe, or None."""
    if member.name.startswith(("/", "\\")) or os.path.isabs(member.name):
        return "an absolute path"   # NOTE: the data filter would only strip the slash
    if hasattr(tarfile, "data_filter"):
        try:
            tarfile.data_filter(member, target)
        except tarfile.FilterError as exc:
            return str(exc)
        return None
    # NOTE: Pythons without extraction filters: the same rules, by hand
    path = os.path.normpath(os.path.join(target, member.name))
    if os.path.isabs(member.name) or os.path.commonpath([target, path]) != target:
        return "a path outside the folder"
    if not (member.isfile() or member.isdir()):
        return "a link or special file"
    return None


def _extract_cifar(archive: str, data_dir: str) -> list[str]:
    """Unpack only the six batch files of a verified archive into ``data_dir/cifar-10-batches-bin``,
    after checking every member (no path out of the folder, no links or devices, at most
    :data:`_CIFAR_MAX_MEMBERS`) and that each batch has the size of one. The archive is removed
    whether or not it unpacks."""
    target = os.path.abspath(os.path.join(data_dir, CIFAR_SUBDIR))
    expected = catalog.CIFAR_BATCH_RECORDS * CIFAR_RECORD
    out = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {}
            for i, member in enumerate(tar):
                if i >= _CIFAR_MAX_MEMBERS:
                    raise ValueError(f"more than {_CIFAR_MAX_MEMBERS} members")
                why = _unsafe_member(member, os.path.dirname(target))
                if why is not None:
                    raise ValueError(f"member {member.name!r} is unsafe ({why})")
                members[member.name] = member
            for fname in CIFAR_FILES:
                member = members.get(f"{CIFAR_SUBDIR}/{fname}")
                if member is None or not member.isfile():
                    raise ValueError(f"{CIFAR_SUBDIR}/{fname} is missing or not a regular file")
                if member.size != expected:
                    raise ValueError(f"{CIFAR_SUBDIR}/{fname} has {member.size:,} bytes, a batch"
                                     f" has {expected:,}")
            os.makedirs(target, exist_ok=True)
            for fname in CIFAR_FILES:
                src = tar.extractfile(members[f"{CIFAR_SUBDIR}/{fname}"])
                with replaced_atomically(os.path.join(target, fname)) as f:
                    f.write(src.read(expected))
                out.append(os.path.join(target, fname))
    except (ValueError, EOFError, OSError, tarfile.TarError, zlib.error) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise   # NOTE: the disk's error (full, read-only), not the archive's
        raise ValueError(f"{archive}: not the CIFAR-10 binary archive ({exc}); it was"
                         " removed") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(archive)
    return out

