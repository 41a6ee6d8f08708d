"""Compile a CUDA C source with g++ into a shared library the emulator can load.

The translation unit is ``cuda_emu.h`` + the source (``extern __shared__`` declarations rewritten
to the block's dynamic shared memory, the only C++-incompatible construct the kernels may use) +
a table of the ``extern "C" __global__`` entry points, which exports each kernel's parameter types
as the compiler saw them. Libraries are cached by a hash of all inputs in
``$POLYCNN_EMU_CACHE`` (default: ``$XDG_CACHE_HOME/polycnn/cuda-emu`` or ``~/.cache/...``).

``POLYCNN_EMU_SANITIZE=address`` builds the kernels with AddressSanitizer, so that a kernel that
reads or writes outside an array stops with a report instead of passing on what it found there;
Python is not built with it, so the process must preload the runtime:
``LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

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
    cxx = os.environ.get("CXX", "g++")
    path = shutil.which(cxx)
    if path is None:
        raise BackendUnavailable(
            f"cupy-emu needs a C++20 compiler: {cxx!r} is not on PATH (install g++ >= 10,"
            " e.g. `apt-get install g++`, or set CXX)")
    return path


@functools.lru_cache(maxsize=None)
def compiler_version(cxx: str) -> str:
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else cxx


def cache_dir() -> Path:
    root = os.environ.get("POLYCNN_EMU_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "polycnn" / "cuda-emu"


def _header() -> str:
    return (resources.files(__package__) / "cuda_emu.h").read_text()


def kernel_names(source: str) -> list[str]:
    """The ``extern "C" __global__`` entry points of ``source`` (comments ignored)."""
    return _ENTRY.findall(_COMMENT.sub(" ", source))


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


def build(source: str) -> Path:
    """The path of the shared library compiled from ``source`` (built once, then cached)."""
    cxx = compiler()
    flags = cxx_flags()
    unit = translation_unit(source)
    header = _header()
    key = hashlib.sha256("\0".join(
        [unit, header, compiler_version(cxx), " ".join(flags)]).encode()).hexdigest()[:24]
    folder = cache_dir()
    target = folder / f"kernels-{key}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="polycnn-emu-") as tmp:
        (Path(tmp) / "cuda_emu.h").write_text(header)
        cpp = Path(tmp) / "unit.cpp"
        cpp.write_text(unit)
        out = Path(tmp) / "unit.so"
        proc = subprocess.run([cxx, *flags, "-I", tmp, str(cpp), "-o", str(out)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise CompileError(f"g++ failed to compile the kernels:\n{proc.stderr.strip()}")
        # NOTE: copy then rename, so that a concurrent process never loads a half-written file
        staged = folder / f".{key}.{os.getpid()}.tmp"
        shutil.copyfile(out, staged)
        os.replace(staged, target)
    return target
