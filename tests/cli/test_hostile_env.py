"""Hostile or careless environment variables: a value polycnn (or Numba, for it) cannot use
makes only the backend it concerns unavailable, with a reason naming the variable, its value and
what it takes; asking for that backend is one ``error:`` line and exit 2; a cache location that
cannot be used is replaced by a private temporary folder, said once. Never a traceback, never
more than ``PEAK_LIMIT`` of memory, and nothing created or damaged in the working folder.

Each case runs in a child process (``hostile.py``), with its caches in a temporary folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest

from support.hostile import run_cli, run_python, snapshot

#: a small kernel on the emulator: builds in about a second
EMU_TINY = """
import numpy as np
from polycnn.backends._cuda_emu import runtime, standin
src = ('extern "C" __global__ void fill_float(float* o, int n)'
       ' { if (threadIdx.x < n) o[threadIdx.x] = 2.0f; }')
out = standin.zeros(3, dtype=np.float32)
runtime.load(src).kernels["fill_float"]((1,), (4,), (out, np.int32(3)))
assert standin.asnumpy(out).tolist() == [2.0, 2.0, 2.0]
print("ok")
"""

#: one small Numba kernel (compiles in under a second)
NUMBA_RELU = """
import numpy as np
import polycnn as pc
from polycnn.backends import numba_backend
y, _ = pc.get_backend("numba").relu_forward(np.array([-1.0, 2.0], np.float32))
assert np.asarray(y).tolist() == [0.0, 2.0]
print("ok", numba_backend.cache_dir())
"""


@dataclasses.dataclass
class Case:
    env: dict
    #: ``listing``: ``polycnn backends --json`` lists every backend, ``broken`` (if any)
    #: unavailable with a reason naming every needle; ``asked``: ``polycnn demo --backend
    #: broken`` is one error line naming them; ``warned``: ``code`` runs (exit 0) after one
    #: warning line naming them
    kind: str
    needles: tuple
    broken: str | None = None
    code: str = ""


EMU_THREADS = ("POLYCNN_EMU_THREADS", "1 to 1024")

CASES = {
    "emu-threads-letters": Case({"POLYCNN_EMU_THREADS": "abc"}, "listing",
                                EMU_THREADS + ("'abc'",), "cupy-emu"),
    "emu-threads-letters-asked": Case({"POLYCNN_EMU_THREADS": "abc"}, "asked",
                                      EMU_THREADS + ("'abc'",), "cupy-emu"),
    "emu-threads-negative": Case({"POLYCNN_EMU_THREADS": "-4"}, "asked",
                                 EMU_THREADS + ("'-4'",), "cupy-emu"),
    "emu-threads-huge": Case({"POLYCNN_EMU_THREADS": "1" + "0" * 30}, "listing",
                             EMU_THREADS + ("1" + "0" * 30,), "cupy-emu"),
    "emu-threads-not-utf8": Case({"POLYCNN_EMU_THREADS": os.fsdecode(b"\xff\xfe4")}, "asked",
                                 EMU_THREADS + ("\\udcff",), "cupy-emu"),
    "emu-reverse-word": Case({"POLYCNN_EMU_REVERSE": "yes"}, "listing",
                             ("POLYCNN_EMU_REVERSE", "'yes'", "0 or 1"), "cupy-emu"),
    "emu-sanitize-unknown": Case({"POLYCNN_EMU_SANITIZE": "thread"}, "asked",
                                 ("POLYCNN_EMU_SANITIZE", "'thread'", "address"), "cupy-emu"),
    "cxx-not-a-compiler": Case({"CXX": shutil.which("false") or "/bin/false"}, "listing",
                               ("CXX=", "false", "--version"), "cupy-emu"),
    "numba-threads-zero": Case({"NUMBA_NUM_THREADS": "0"}, "listing",
                               ("NUMBA_NUM_THREADS", "'0'", "> 0"), "numba"),
    "numba-threads-zero-asked": Case({"NUMBA_NUM_THREADS": "0"}, "asked",
                                     ("NUMBA_NUM_THREADS", "'0'", "> 0"), "numba"),
    "keep-heap-word": Case({"POLYCNN_KEEP_HEAP": "maybe"}, "listing",
                           ("POLYCNN_KEEP_HEAP", "'maybe'", "0 or 1")),
    "emu-cache-is-a-file": Case({"POLYCNN_EMU_CACHE": "{work}/cache-file"}, "warned",
                                ("{work}/cache-file", "is not a folder"), code=EMU_TINY),
    "numba-cache-is-a-file": Case({"NUMBA_CACHE_DIR": "{work}/cache-file"}, "warned",
                                  ("{work}/cache-file", "is not a folder"), code=NUMBA_RELU),
    "numba-cache-world-writable": Case({"NUMBA_CACHE_DIR": "{tmp}/open"}, "warned",
                                       ("{tmp}/open", "writable by group or others"),
                                       code=NUMBA_RELU),
    "xdg-cache-relative": Case({"XDG_CACHE_HOME": "relative/cache"}, "warned", (),
                               code=NUMBA_RELU),
}


def _fill(value: str, tmp_path) -> str:
    return value.replace("{work}", str(tmp_path / "work")).replace("{tmp}", str(tmp_path))


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_environment(tmp_path, name):
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    (work / "cache-file").write_text("not a folder\n")
    (tmp_path / "open").mkdir(mode=0o777)
    (tmp_path / "open").chmod(0o777)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path / "home"),
           "NUMBA_CACHE_DIR": None, "POLYCNN_EMU_CACHE": None}
    env.update({k: _fill(v, tmp_path) for k, v in case.env.items()})
    needles = [_fill(n, tmp_path) for n in case.needles]
    before = snapshot(work)

    if case.kind == "listing":
        out = run_cli("backends", "--json", env=env, cwd=work)
        assert out.rc == 0 and "Traceback" not in out.stderr, str(out)
        rows = {row["backend"]: row for row in json.loads(out.stdout)["backends"]}
        assert set(rows) >= {"numpy", "numba", "cupy", "cupy-emu"}, str(out)
        for backend in ("numpy", "numba", "cupy-emu"):
            if backend != case.broken:
                assert rows[backend]["available"], f"{backend} should still be available:\n{out}"
        if case.broken:
            row = rows[case.broken]
            assert not row["available"], f"{case.broken} should be unavailable:\n{out}"
            for needle in needles:
                assert needle.lower() in row["reason"].lower(), f"reason misses {needle!r}:\n{out}"
        else:
            warnings = [line for line in out.stderr.splitlines() if "warning" in line]
            assert len(warnings) == 1, f"expected one warning line:\n{out}"
            for needle in needles:
                assert needle in warnings[0], f"the warning misses {needle!r}:\n{out}"
        out.assert_bounded()
    elif case.kind == "asked":
        out = run_cli("demo", "--backend", case.broken, env=env, cwd=work)
        out.assert_user_error(*needles)
    else:
        out = run_python(case.code, env=env, cwd=work)
        assert out.rc == 0 and "Traceback" not in out.stderr and "ok" in out.stdout, str(out)
        warnings = [line for line in out.stderr.splitlines() if "warning" in line]
        assert len(warnings) == (1 if needles else 0), f"expected {bool(needles):d} warning:\n{out}"
        for needle in needles:
            assert needle in warnings[0], f"the warning misses {needle!r}:\n{out}"
        assert "private temporary folder" in "".join(warnings) or not needles, str(out)
        out.assert_bounded()
        if name == "xdg-cache-relative":
            used = out.stdout.split("ok", 1)[1].strip()
            assert used == str(tmp_path / "home" / ".cache" / "polycnn" / "numba"), str(out)

    assert snapshot(work) == before, f"files in the working folder changed:\n{out}"
    assert sorted(os.listdir(work)) == ["cache-file"], f"something was created in {work}"
