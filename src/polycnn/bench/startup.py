"""Start-up time: a fresh interpreter imports polycnn, gets a backend and runs a tiny conv and
pool forward+backward, first with every compile cache empty (cold), then with what that run
left (warm)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable

# ---- start-up time -------------------------------------------------------------------------

_STARTUP_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import polycnn as pc
t1 = time.perf_counter()
be = pc.get_backend(sys.argv[1])
t2 = time.perf_counter()

def step():
    rng = np.random.default_rng(0)
    x = be.asarray(rng.standard_normal((2, 3, 8, 8), dtype=np.float32))
    w = be.asarray(rng.standard_normal((4, 3, 3, 3), dtype=np.float32))
    b = be.asarray(np.zeros(4, dtype=np.float32))
    y, ctx = be.conv2d_forward(x, w, b, stride=1, padding=1)
    be.conv2d_backward(be.asarray(np.ones(tuple(y.shape), dtype=np.float32)), ctx)
    p, pctx = be.maxpool2d_forward(y, 2)
    be.maxpool2d_backward(be.asarray(np.ones(tuple(p.shape), dtype=np.float32)), pctx)
    be.synchronize()

step()
t3 = time.perf_counter()
step()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "get_backend_s": t2 - t1, "first_call_s": t3 - t2,
                  "second_call_s": t4 - t3}))
"""


def _startup_once(name: str, cache_dir: str, timeout: float) -> dict:
    env = dict(os.environ)
    # NOTE: every cache a backend may compile into: Numba's, CuPy's kernel cache and the user's
    # cache folder (where polycnn keeps its own when those are not set); the cold run starts
    # with all of them empty.
    for variable, folder in (("NUMBA_CACHE_DIR", "numba"), ("CUPY_CACHE_DIR", "cupy"),
                             ("XDG_CACHE_HOME", "xdg")):
        env[variable] = os.path.join(cache_dir, folder)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _STARTUP_SCRIPT, name], env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"start-up run of backend {name!r} failed: {last}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    return out


def measure_startup(names: list[str], timeout: float = 300.0,
                    progress: Callable = lambda msg: None) -> tuple[list[dict], list[str]]:
    """Per backend: a fresh interpreter imports polycnn, gets the backend and runs one tiny conv
    fwd+bwd and max pool fwd+bwd, first with an empty compile cache (cold), then again with the
    cache the first run left (warm)."""
    rows, notes = [], []
    for name in names:
        progress(f"start-up time of {name} (cold, then warm)")
        cache_dir = tempfile.mkdtemp(prefix="polycnn-bench-cache-")
        try:
            cold = _startup_once(name, cache_dir, timeout)
            warm = _startup_once(name, cache_dir, timeout)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            notes.append(f"start-up of {name} not measured: {' '.join(str(exc).split())}")
            continue
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
        rows.append({"backend": name, "cold": cold, "warm": warm,
                     "compile_s": cold["first_call_s"] - warm["first_call_s"]})
    return rows, notes


# ---- the whole run -------------------------------------------------------------------------
