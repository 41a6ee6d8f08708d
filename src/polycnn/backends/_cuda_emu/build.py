"""Compile a CUDA C source with g++ into a shared library the emulator can load.

The translation unit is ``cuda_emu.h`` + the source (``extern __shared__`` declarations rewritten
to the block's dynamic shared memory, the only C++-incompatible construct the kernels may use) +
a table of the ``extern "C" __global__`` entry points, which exports each kernel's parameter types
as the compiler saw them. Libraries are cached by a hash of all inputs in
``$POLYCNN_EMU_CACHE`` (default: ``$XDG_CACHE_HOME/polycnn/cuda-emu`` or ``~/.cache/...``), a
folder used only when :func:`polycnn._cache.private_dir` finds it private (else a private
temporary folder). Beside each library, ``<name>.sha256`` records the hash of its bytes at build
time; a library is returned for loading only when it was built by this call or still matches
that hash (else it is rebuilt).

``POLYCNN_EMU_SANITIZE=address`` builds the kernels with AddressSanitizer, so that a kernel that
reads or writes outside an array stops with a report instead of passing on what it found there;
Python is not built with it, so the process must preload the runtime:
``LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from ... import _cache
from ...errors import BackendUnavailable

CXX_FLAGS = ("-std=c++20", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread")
SANITIZE_FLAGS = {"address": ("-fsanitize=address", "-fno-omit-frame-pointer", "-g1")}


def cxx_flags() -> tuple:
    """CXX_FLAGS, plus the sanitizer's that ``POLYCNN_EMU_SANITIZE`` names."""
    name = os.environ.get("POLYCNN_EMU_SANITIZE", "")
    if not name:
        return CXX_FLAGS
    if name not in SANITIZE_FLAGS:
        raise ValueError(f"POLYCNN_EMU_SANITIZE={name!r}: known sanitizers are"
                         f" {', '.join(SANITIZE_FLAGS)} (or unset)")
    return CXX_FLAGS + SANITIZE_FLAGS[name]

_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_ENTRY = re.compile(
    r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')
_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:<>, ]*?)\s+(\w+)\s*\[\s*\]\s*;")


class CompileError(RuntimeError):
    """g++ rejected a kernel source; the message holds the compiler's output."""


def compiler() -> str:
    """The C++ compiler to use (``$CXX`` or g++); BackendUnavailable when there is none."""
    cxx = os.environ.get("CXX") or "g++"
    path = shutil.which(cxx)
    if path is None:
        raise BackendUnavailable(
            f"cupy-emu needs a C++20 compiler: CXX={cxx!r} is not on PATH (install g++ >= 10,"
            " e.g. `apt-get install g++`, or set CXX to a compiler's name or path)")
    if _version_line(path) is None:
        raise BackendUnavailable(
            f"cupy-emu needs a C++20 compiler: CXX={cxx!r} ({path}) does not answer --version"
            " as a compiler does (set CXX to g++ >= 10)")
    return path


@functools.lru_cache(maxsize=None)
def _version_line(cxx: str) -> str | None:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False,
                             timeout=60, stdin=subprocess.DEVNULL, errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0] if out.returncode == 0 and lines else None


def compiler_version(cxx: str) -> str:
    return _version_line(cxx) or cxx


def cache_dir() -> Path:
    """The folder libraries are kept in: ``$POLYCNN_EMU_CACHE`` or the user's cache folder,
    when private; else a private temporary folder (see :mod:`polycnn._cache`)."""
    root = os.environ.get("POLYCNN_EMU_CACHE")
    if root:
        wanted = Path(root)
    else:
        base = _cache.user_cache_root()
        wanted = None if base is None else base / "cuda-emu"
    return _cache.private_dir(wanted, "cupy-emu")


def _header() -> str:
    return (resources.files(__package__) / "cuda_emu.h").read_text()


def kernel_names(source: str) -> list[str]:
    """The ``extern "C" __global__`` entry points of ``source`` (comments ignored), those that
    macros make included (conv2d.cu makes its per-tile entry points from the tile table): read
    from the source as g++'s preprocessor leaves it, when it has a ``#define``."""
    if "#define" in source:
        source = _preprocessed(source)
    return _ENTRY.findall(_COMMENT.sub(" ", source))


@functools.lru_cache(maxsize=32)
def _preprocessed(source: str) -> str:
    """``source`` with its macros expanded (``__launch_bounds__`` dropped, as cuda_emu.h does)."""
    proc = subprocess.run([compiler(), "-E", "-P", "-x", "c++", "-std=c++20",
                           "-D__launch_bounds__(...)=", "-"], input=source, capture_output=True,
                          text=True, check=False, errors="replace")
    if proc.returncode != 0:
        raise CompileError(f"g++ failed to preprocess the kernels:\n{proc.stderr.strip()}")
    return proc.stdout


def translation_unit(source: str) -> str:
    names = kernel_names(source)
    if not names:
        raise CompileError('no `extern "C" __global__ void name(...)` entry point in the source')
    body = _EXTERN_SHARED.sub(
        lambda m: f"{m[1]}* const {m[2]} = reinterpret_cast<{m[1]}*>(::emu::dynamic_shared());",
        source)
    table = ",\n    ".join(f'::emu::kernel_info("{n}", &{n})' for n in names)
    trailer = f"""
static const ::emu::KernelInfo emu_kernel_table[] = {{
    {table}
}};
#define EMU_EXPORT extern "C" __attribute__((visibility("default")))
EMU_EXPORT int emu_kernel_count() {{ return {len(names)}; }}
EMU_EXPORT const char* emu_kernel_name(int i) {{ return emu_kernel_table[i].name; }}
EMU_EXPORT const char* emu_kernel_signature(int i) {{ return emu_kernel_table[i].signature.c_str(); }}
EMU_EXPORT const char* emu_last_error() {{ return ::emu::error_message.c_str(); }}
EMU_EXPORT int emu_launch(int i, const unsigned int* grid, const unsigned int* block,
                          unsigned long long shared_bytes, void** args, int flags, int workers) {{
    return ::emu::launch(emu_kernel_table[i].invoke, emu_kernel_table[i].fn, grid, block,
                         shared_bytes, args, flags, workers);
}}
"""
    return '#include "cuda_emu.h"\n' + body + "\n" + trailer


def _library_name(unit: str, header: str, cxx: str, flags: tuple) -> str:
    key = hashlib.sha256("\0".join(
        [unit, header, compiler_version(cxx), " ".join(flags)]).encode()).hexdigest()[:24]
    return f"kernels-{key}.so"


def library_name(source: str) -> str:
    """The file name the library compiled from ``source`` is cached under: a hash of every
    input (the translation unit, the header, the compiler's version and the flags)."""
    return _library_name(translation_unit(source), _header(), compiler(), cxx_flags())


def _digest(path: Path) -> str | None:
    """SHA-256 of the bytes of a regular file (not a symbolic link), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        digest = hashlib.sha256()
        while chunk := f.read(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()


def _recorded(path: Path) -> str | None:
    """The hash recorded beside ``path`` at build time (``<name>.sha256``), or None."""
    try:
        with open(path.with_name(path.name + ".sha256"), "rb") as f:
            text = f.read(200).decode("ascii", "replace").strip()
    except OSError:
        return None
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None


def _write_atomically(folder: Path, name: str, data: bytes) -> None:
    # NOTE: write then rename, so that a concurrent process never reads a half-written file
    fd, staged = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(staged, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        raise


def build(source: str) -> Path:
    """The path of the shared library compiled from ``source``: built once, then cached, and
    returned from the cache only while its bytes match the hash recorded when it was built."""
    cxx = compiler()
    flags = cxx_flags()
    unit = translation_unit(source)
    header = _header()
    name = _library_name(unit, header, cxx, flags)
    folder = cache_dir()
    target = folder / name
    recorded = _recorded(target)
    if recorded is not None and _digest(target) == recorded:
        return target
    with tempfile.TemporaryDirectory(prefix="polycnn-emu-") as tmp:
        (Path(tmp) / "cuda_emu.h").write_text(header)
        cpp = Path(tmp) / "unit.cpp"
        cpp.write_text(unit)
        out = Path(tmp) / "unit.so"
        proc = subprocess.run([cxx, *flags, "-I", tmp, str(cpp), "-o", str(out)],
                              capture_output=True, text=True, check=False, errors="replace")
        if proc.returncode != 0:
            raise CompileError(f"g++ failed to compile the kernels:\n{proc.stderr.strip()}")
        if not out.is_file():
            raise CompileError(f"{cxx} reported success but wrote no library (is CXX a compiler?)")
        data = out.read_bytes()
    # NOTE: the library first, then its hash: a reader that sees the new library with the old
    # hash rebuilds, and one that sees both loads the bytes that were hashed
    _write_atomically(folder, name, data)
    _write_atomically(folder, name + ".sha256",
                      (hashlib.sha256(data).hexdigest() + "\n").encode())
    return target
