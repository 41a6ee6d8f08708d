"""A file planted in one of polycnn's cache folders runs no code.

Numba's cache index (``*.nbi``) is a pickle that Numba unpickles, and the emulator loads a
``kernels-<hash>.so`` found by name: whoever can write to either folder can run code as the
user. Each case plants such a file, with a payload that creates a marker file, in a folder that
someone else could write to (world-writable, or owned by another uid), runs the real loading
code in a child process, and checks that the marker was not created and that polycnn said once,
on stderr, that it used a private temporary folder instead.

NOTE: checked against the code before the folder check: the planted Numba index of
``test_planted_numba_index_runs_no_code[world-writable]`` did create its marker there.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
import subprocess
import sys

import pytest

from support.hostile import run_python

from polycnn import _cache

OTHER_UID = 65534  # nobody

def make_unsafe(folder, how: str) -> None:
    """A folder that someone else can write to (``world-writable``) or owns (``other-uid``)."""
    folder.mkdir(parents=True, exist_ok=True)
    if how == "world-writable":
        folder.chmod(0o777)
    elif how == "other-uid":
        if os.geteuid() != 0:
            pytest.skip("only root can give a folder to another uid (chown)")
        os.chown(folder, OTHER_UID, OTHER_UID)
        folder.chmod(0o755)


def clean_env(tmp_path, **extra) -> dict:
    """The child's cache variables: a temporary XDG_CACHE_HOME, never the user's caches."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "NUMBA_CACHE_DIR": None,
           "POLYCNN_EMU_CACHE": None, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env.update(extra)
    return env


def unsafe_cache(tmp_path, where: str, how: str, name: str):
    """(folder, the child's environment) for a case: polycnn's default cache folder ``name``
    under XDG_CACHE_HOME (``where="xdg"``), or a folder named by the variable ``where``; the
    folder made unsafe ``how`` (see :func:`make_unsafe`)."""
    if where == "xdg":
        folder = tmp_path / "xdg" / "polycnn" / name
        env = clean_env(tmp_path)
    else:
        folder = tmp_path / "mine"
        env = clean_env(tmp_path, **{where: str(folder)})
    make_unsafe(folder, how)
    return folder, env


def assert_private_fallback(out, folder) -> None:
    """Exit 0, one warning naming the folder and the private temporary folder, no traceback."""
    assert out.rc == 0 and "Traceback" not in out.stderr, str(out)
    lines = [line for line in out.stderr.splitlines() if str(folder) in line]
    assert len(lines) == 1, f"expected one warning naming {folder}:\n{out}"
    assert "private temporary folder" in lines[0], str(out)
    out.assert_bounded()


class _Payload:
    """Unpickling this creates ``path`` (``open(path, "w")``): code run from a pickle."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def planted_pickle(marker) -> bytes:
    data = pickle.dumps(_Payload(marker))
    assert b"open" in data
    return data


# ---- Numba ------------------------------------------------------------------------------------

_INDEX_PATHS = """
import json, sys
from numba.core import config
from numba.core.dispatcher import Dispatcher
from polycnn.backends.numba import loader
config.CACHE_DIR = loader.kernel_folder(sys.argv[1])  # where load_kernels points Numba
from polycnn.backends.numba import kernels as k
paths = [d._cache._cache_file._index_path for d in vars(k).values()
         if isinstance(d, Dispatcher) and hasattr(d._cache, "_cache_file")]
print(json.dumps(paths))
"""

_NUMBA_CONV = """
import numpy as np
import polycnn as pc
from polycnn.backends import numba_backend
be = pc.get_backend("numba")
x = np.ones((1, 1, 5, 5), np.float32)
w = np.ones((1, 1, 3, 3), np.float32)
y, _ = be.conv2d_forward(x, w, None)
assert float(be.to_numpy(y)[0, 0, 0, 0]) == 9.0
print("cache:", numba_backend.cache_dir())
"""


def numba_index_paths(folder) -> list:
    """Where Numba looks for the index of each of polycnn's kernels when caching in ``folder``
    (asked of Numba itself, in a child process, with the cache folder set as the loader sets
    it but without the loader's folder check)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    proc = subprocess.run([sys.executable, "-c", _INDEX_PATHS, str(folder)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    paths = json.loads(proc.stdout)
    assert len(paths) > 5 and all(p.startswith(str(folder)) for p in paths), paths
    return paths


def plant_numba_indexes(folder, marker) -> None:
    data = planted_pickle(marker)
    for path in numba_index_paths(folder):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


@pytest.mark.parametrize("where, how", [
    pytest.param("xdg", "world-writable", id="world-writable"),
    pytest.param("NUMBA_CACHE_DIR", "other-uid", id="NUMBA_CACHE_DIR-other-uid"),
])
def test_planted_numba_index_runs_no_code(tmp_path, how, where):
    """A conv on the numba backend, with every kernel's index in the cache folder replaced by a
    pickle whose loading creates a marker: the marker is never created."""
    folder, env = unsafe_cache(tmp_path, where, how, "numba")
    marker = tmp_path / "marker"
    plant_numba_indexes(folder, marker)
    out = run_python(_NUMBA_CONV, env=env)
    assert not marker.exists(), f"the planted pickle ran:\n{out}"
    assert_private_fallback(out, folder)
    used = out.stdout.split("cache:")[-1].strip()
    assert used != str(folder) and os.path.basename(used).startswith("polycnn-numba-"), str(out)
    assert not os.path.exists(used), f"the temporary folder {used} was left behind"


# ---- the CUDA emulator ------------------------------------------------------------------------

#: a kernel small enough to compile in a second
_TINY_SOURCE = """
extern "C" __global__ void fill_float(float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = 7.0f;
}
"""

_EMU_RUN = f"""
import numpy as np
from polycnn.backends._cuda_emu import build, runtime, standin
source = {_TINY_SOURCE!r}
out = standin.zeros(5, dtype=np.float32)
runtime.load(source).kernels["fill_float"]((1,), (8,), (out, np.int32(5)))
assert standin.asnumpy(out).tolist() == [7.0] * 5
print("cache:", build.cache_dir())
"""

_MARKER_SO = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE* f = fopen(MARKER, "w");
    if (f) fclose(f);
}
extern "C" int emu_kernel_count() { return 0; }
"""


@pytest.fixture(scope="module")
def emu():
    from polycnn.backends._cuda_emu import build
    from polycnn.errors import BackendUnavailable

    try:
        return build.compiler()
    except BackendUnavailable as exc:
        pytest.skip(f"cupy-emu unavailable: {exc}")


def marker_library(cxx, tmp_path, marker) -> bytes:
    """A shared library whose loading (its constructor) creates ``marker``."""
    src = tmp_path / "planted.cpp"
    src.write_text(_MARKER_SO)
    lib = tmp_path / "planted.so"
    subprocess.run([cxx, "-shared", "-fPIC", f'-DMARKER="{marker}"', str(src), "-o", str(lib)],
                   check=True, capture_output=True)
    data = lib.read_bytes()
    lib.unlink()
    return data


def emu_library_name() -> str:
    """The name the emulator loads the tiny source's library by (it does not depend on the
    cache folder)."""
    from polycnn.backends._cuda_emu import build

    name = build.library_name(_TINY_SOURCE)
    assert name.startswith("kernels-") and name.endswith(".so"), name
    return name


def plant_library(folder, name, data) -> None:
    """``data`` under the library's name, with a matching hash beside it (whoever can write to
    the folder can write both)."""
    (folder / name).write_bytes(data)
    (folder / (name + ".sha256")).write_text(hashlib.sha256(data).hexdigest() + "\n")


@pytest.mark.parametrize("where, how", [
    pytest.param("xdg", "other-uid", id="other-uid"),
    pytest.param("POLYCNN_EMU_CACHE", "world-writable", id="POLYCNN_EMU_CACHE-world-writable"),
])
def test_planted_emulator_library_runs_no_code(tmp_path, emu, how, where):
    """A ``.so`` whose constructor creates a marker, under the exact name the emulator would
    load, with its hash recorded beside it, in a folder others can write to: never loaded."""
    folder, env = unsafe_cache(tmp_path, where, how, "cuda-emu")
    marker = tmp_path / "marker"
    plant_library(folder, emu_library_name(), marker_library(emu, tmp_path, marker))
    out = run_python(_EMU_RUN, env=env)
    assert not marker.exists(), f"the planted library was loaded:\n{out}"
    assert_private_fallback(out, folder)
    used = out.stdout.split("cache:")[-1].strip()
    assert os.path.basename(used).startswith("polycnn-cupy-emu-"), str(out)
    assert not os.path.exists(used), f"the temporary folder {used} was left behind"


def test_library_that_no_longer_matches_its_hash_is_rebuilt(tmp_path, emu):
    """In a good private folder, a library whose bytes changed after it was built (its hash
    recorded beside it no longer matches) is not loaded but rebuilt."""
    folder = tmp_path / "emu"
    env = clean_env(tmp_path, POLYCNN_EMU_CACHE=str(folder))
    marker = tmp_path / "marker"
    first = run_python(_EMU_RUN, env=env)
    assert first.rc == 0 and first.stderr == "", str(first)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    name = emu_library_name()
    assert (folder / name).is_file()
    built = (folder / name).read_bytes()
    recorded = (folder / (name + ".sha256")).read_text().strip()
    assert recorded == hashlib.sha256(built).hexdigest()
    planted = marker_library(emu, tmp_path, marker)
    (folder / name).write_bytes(planted)
    again = run_python(_EMU_RUN, env=env)
    assert not marker.exists(), f"the changed library was loaded:\n{again}"
    assert again.rc == 0 and again.stderr == "", str(again)
    rebuilt = (folder / name).read_bytes()
    assert rebuilt != planted
    assert (folder / (name + ".sha256")).read_text().strip() == hashlib.sha256(rebuilt).hexdigest()


# ---- the folder check itself --------------------------------------------------------------------

def test_cache_folder_is_created_private_whatever_the_umask(tmp_path):
    folder = tmp_path / "a" / "b" / "cache"
    old = os.umask(0)
    try:
        assert _cache.private_dir(folder, "test") == folder
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert folder.stat().st_uid == os.geteuid()


@pytest.mark.parametrize("setup, why", [
    pytest.param(lambda p: (p.mkdir(), p.chmod(0o777)), "writable by group or others",
                 id="world-writable"),
    pytest.param(lambda p: (p.mkdir(), p.chmod(0o770)), "writable by group or others",
                 id="group-writable"),
    pytest.param(lambda p: (p.with_name("real").mkdir(mode=0o700), p.symlink_to("real")),
                 "symbolic link", id="symlink"),
    pytest.param(lambda p: p.write_text("x"), "is not a folder", id="a-file"),
    pytest.param(lambda p: (p.parent.chmod(0o777), p.mkdir(mode=0o700)),
                 "without the sticky bit", id="parent-world-writable"),
])
def test_unsafe_folder_is_replaced_once_with_a_private_temporary_one(tmp_path, capsys, setup,
                                                                      why):
    folder = tmp_path / "cache"
    setup(folder)
    used = _cache.private_dir(folder, "test")
    assert used != folder and stat.S_IMODE(used.stat().st_mode) == 0o700
    assert _cache.private_dir(folder, "test") == used
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(folder) in err and why in err, err
    assert str(used) in err and "private temporary folder" in err, err
