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
import textwrap

import pytest

from hostile import run_python

from polycnn import _cache

OTHER_UID = 65534  # nobody

#: ways to make a cache folder that someone else could write to
UNSAFE = [
    pytest.param("world-writable", id="world-writable"),
    pytest.param("other-uid", id="other-uid"),
]


def make_unsafe(folder, how: str) -> None:
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
import json
from numba.core.dispatcher import Dispatcher
import polycnn.backends._numba_kernels as k
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
    (asked of Numba itself, in a child process with ``NUMBA_CACHE_DIR=folder``)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["NUMBA_CACHE_DIR"] = str(folder)
    proc = subprocess.run([os.sys.executable, "-c", _INDEX_PATHS], env=env, capture_output=True,
                          text=True, timeout=120)
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


@pytest.mark.parametrize("how", UNSAFE)
@pytest.mark.parametrize("where", ["xdg", "NUMBA_CACHE_DIR"])
def test_planted_numba_index_runs_no_code(tmp_path, how, where):
    """A conv on the numba backend, with every kernel's index in the cache folder replaced by a
    pickle whose loading creates a marker: the marker is never created."""
    if where == "xdg":
        folder = tmp_path / "xdg" / "polycnn" / "numba"
        env = clean_env(tmp_path)
    else:
        folder = tmp_path / "mine"
        env = clean_env(tmp_path, NUMBA_CACHE_DIR=str(folder))
    marker = tmp_path / "marker"
    make_unsafe(folder, how)
    plant_numba_indexes(folder, marker)
    out = run_python(_NUMBA_CONV, env=env)
    assert not marker.exists(), f"the planted pickle ran:\n{out}"
    assert_private_fallback(out, folder)
    used = out.stdout.split("cache:")[-1].strip()
    assert used != str(folder) and os.path.basename(used).startswith("polycnn-numba-"), str(out)
    assert not os.path.exists(used), f"the temporary folder {used} was left behind"
