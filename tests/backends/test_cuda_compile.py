"""Compile gate: every kernels/*.cu compiles with NVRTC (the compiler CuPy uses at run time) for
sm_80 and sm_90 with the backend's options, with no error, no warning and no register spill.
Needs no GPU: NVRTC comes from the ``nvidia-cuda-nvrtc`` and ``cuda-bindings`` wheels (the
``test`` extra). Run with ``-s`` to see the register table.

Only a missing NVRTC wheel (an ImportError) or a missing g++ skips, and only where the CUDA
backends are not required: CI names ``cupy-emu`` in ``POLYCNN_REQUIRE_BACKENDS`` (.ci/run), and
then they fail. A compile error, or any other exception, always fails."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from support.oracle import required_backends
from polycnn.backends import cupy_backend
from polycnn.backends.cupy_backend import COMPILE_OPTIONS, KERNELS, kernel_source
from polycnn.errors import BackendUnavailable

KERNEL_DIR = Path(__file__).resolve().parents[2] / "kernels"
SOURCES = sorted(p.name for p in KERNEL_DIR.glob("*.cu"))
ARCHS = ["sm_80", "sm_90"]

_FUNCTION = re.compile(r"Function properties for (\w+)\s*\n.*?(\d+) bytes stack frame, (\d+) bytes"
                       r" spill stores, (\d+) bytes spill loads\s*\n.*?Used (\d+) registers", re.S)


def cuda_required() -> bool:
    """Whether this run requires the CUDA backends' tools (NVRTC, g++): it names ``cupy`` or
    ``cupy-emu`` (or ``nvrtc``) in ``POLYCNN_REQUIRE_BACKENDS``."""
    return bool({"cupy", "cupy-emu", "nvrtc"} & required_backends())


def skip_unless_optional(what: str, exc: Exception) -> None:
    """A missing tool: a failure where the CUDA backends are required, else a skip."""
    if cuda_required():
        pytest.fail(f"{what} is required here (POLYCNN_REQUIRE_BACKENDS) but missing: {exc}")
    pytest.skip(f"{what} missing: {exc}")


def nvrtc_module():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:  # NOTE: only a missing wheel; anything else is a failure
        skip_unless_optional("NVRTC (pip install 'polycnn[test]': nvidia-cuda-nvrtc,"
                             " cuda-bindings)", exc)
    return nvrtc


def nvrtc_compile(filename: str, arch: str) -> tuple[str, list[dict]]:
    """(log, per-entry-point facts) of compiling ``kernels/<filename>`` to a cubin for ``arch``."""
    nvrtc = nvrtc_module()
    source = kernel_source(filename).encode()
    err, prog = nvrtc.nvrtcCreateProgram(source, filename.encode(), 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, f"nvrtcCreateProgram: {err}"
    options = [f"-arch={arch}".encode(), b"-Xptxas=-v",
               *(o.encode() for o in COMPILE_OPTIONS)]
    try:
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        log = log.decode(errors="replace").rstrip("\x00 \n")
        assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS, (
            f"NVRTC failed on kernels/{filename} for {arch}:\n{log}")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    facts = [{"kernel": m[1], "stack": int(m[2]), "spill_stores": int(m[3]),
              "spill_loads": int(m[4]), "registers": int(m[5])} for m in _FUNCTION.finditer(log)]
    return log, facts


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("filename", SOURCES)
def test_kernels_compile_with_nvrtc_without_warnings_or_spills(filename, arch):
    log, facts = nvrtc_compile(filename, arch)
    warnings = [line for line in log.splitlines() if "warning" in line.lower()]
    assert not warnings, f"kernels/{filename} ({arch}) compiles with warnings:\n" + "\n".join(warnings)
    assert facts, f"no ptxas report in the NVRTC log of kernels/{filename}:\n{log}"
    print(f"\nkernels/{filename} {arch}:")
    for f in sorted(facts, key=lambda f: f["kernel"]):
        print(f"  {f['kernel']:<28} {f['registers']:>3} registers  {f['spill_stores']} B spill"
              f" stores  {f['spill_loads']} B spill loads  {f['stack']} B stack")
    spilled = [f for f in facts if f["spill_stores"] or f["spill_loads"]]
    assert not spilled, f"register spills in kernels/{filename} ({arch}): {spilled}"
    expected = {entry for name, (src, _) in KERNELS.items() if src == filename
                for entry, _ in cupy_backend.entry_points(name)}
    assert expected <= {f["kernel"] for f in facts}, (
        f"entry points the backend launches are missing from kernels/{filename}:"
        f" {sorted(expected - {f['kernel'] for f in facts})}")


@pytest.mark.parametrize("filename", SOURCES)
def test_kernels_compile_with_nvcc_without_spills(filename, tmp_path):
    """An extra check with nvcc's own ptxas report, where nvcc is installed."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed (the NVRTC gate above is the one that matters)")
    src = tmp_path / filename
    src.write_text(kernel_source(filename))
    proc = subprocess.run([nvcc, "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-std=c++17",
                           "-o", str(tmp_path / "out.cubin"), str(src)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, f"nvcc failed on kernels/{filename}:\n{proc.stderr}"
    assert "warning" not in proc.stderr.lower(), proc.stderr
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", proc.stderr)
    assert spills and all(s == ("0", "0") for s in spills), proc.stderr


def test_kernels_use_no_atomics():
    """Deterministic backward passes: no atomics at all in the kernels and their headers."""
    for path in [*KERNEL_DIR.glob("*.cu"), *KERNEL_DIR.glob("*.cuh")]:
        code = re.sub(r"//[^\n]*|/\*.*?\*/", "", path.read_text(), flags=re.S)
        assert "atomic" not in code, f"{path.name} uses an atomic operation"


def test_kernel_source_inlines_each_header_once_under_its_own_file_name(tmp_path):
    (tmp_path / "a.cuh").write_text('#include "b.cuh"\nint a;\n')
    (tmp_path / "b.cuh").write_text('#include "a.cuh"\nint b;\n')
    (tmp_path / "k.cu").write_text('#include "a.cuh"\n  #  include "b.cuh"\nint k;\n')
    assert kernel_source("k.cu", tmp_path).splitlines() == [
        '#line 1 "kernels/k.cu"', '#line 1 "kernels/a.cuh"', '#line 1 "kernels/b.cuh"', "",
        "int b;", '#line 2 "kernels/a.cuh"', "int a;", '#line 2 "kernels/k.cu"', "", "int k;"]


@pytest.mark.parametrize("name", ["../k.cuh", "/etc/hostname", "sub/a.cuh", "a.h", ""])
def test_kernel_source_includes_only_a_header_of_the_kernel_folder(tmp_path, name):
    (tmp_path / "k.cu").write_text(f'int k;\n#include "{name}"\n')
    with pytest.raises(ValueError, match=rf'kernels/k.cu, line 2: #include "{re.escape(name)}":'
                                         r" a kernel source may include only a header"):
        kernel_source("k.cu", tmp_path)


def test_every_header_is_part_of_a_kernel_source():
    """A header no .cu includes would be shipped and never compiled or tested."""
    inlined = "".join(kernel_source(name) for name in SOURCES)
    for path in KERNEL_DIR.glob("*.cuh"):
        assert f'#line 1 "kernels/{path.name}"' in inlined, f"no kernel includes {path.name}"


def _c_type(param: str, dtype: str) -> str:
    """The emulator's name for a parameter of KERNELS, e.g. 'x: const T*' -> 'const float32*'."""
    kind = param.split(":")[1].strip().rstrip("?").replace("T", dtype)
    struct = {"ConvShape": cupy_backend.CONV_SHAPE, "PoolShape": cupy_backend.POOL_SHAPE}
    if kind in struct:
        return f"struct {kind}:{struct[kind].itemsize}"
    return kind


@pytest.mark.parametrize("filename", SOURCES)
def test_backend_parameter_lists_match_what_the_compiler_saw(filename):
    """The typed launcher's parameter lists (KERNELS) agree with the kernels' real signatures,
    as g++ saw them in the emulator build; struct sizes agree with the NumPy dtypes."""
    from polycnn.backends._cuda_emu import build, runtime

    try:
        build.compiler()
    except BackendUnavailable as exc:  # no g++: nothing else may pass as a skip
        skip_unless_optional("g++ (for cupy-emu)", exc)
    library = runtime.load(kernel_source(filename))
    for name, (src, params) in KERNELS.items():
        if src != filename:
            continue
        for entry, dtype in cupy_backend.entry_points(name):
            kernel = library.kernels[entry]
            assert kernel.params == tuple(_c_type(p, dtype.name) for p in params), (
                f"{entry}: kernel takes {kernel.params}, backend passes {params}")
    assert np.dtype(cupy_backend.CONV_SHAPE).itemsize == 16 * 4
