"""The CPU backends keep freed blocks in the heap (glibc), unless the user says otherwise."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# Five touched 8 MiB arrays, freed, three times over: glibc's default trims the 40 MiB at the
# top of the heap after each round, so every round page-faults it in again.
SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    import polycnn as pc

    info = pc.get_backend(sys.argv[1]).info()
    faults = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        arrays = [np.ones(2 << 20, np.float32) for _ in range(5)]
        del arrays
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"heap": info["heap"], "faults": faults}))
""")


def run(backend: str, **env) -> dict:
    import json

    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "POLYCNN_KEEP_HEAP")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, backend], env={**clean, **env},
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


@glibc
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_freed_arrays_are_reused_without_page_faults(backend):
    kept, off = run(backend), run(backend, POLYCNN_KEEP_HEAP="0")
    assert kept["heap"].startswith("freed blocks kept"), kept
    assert off["heap"] == "glibc defaults (POLYCNN_KEEP_HEAP=0)", off
    # the first round faults the memory in either way; later rounds reuse it only when kept
    # (counts, not sizes: transparent huge pages would shrink both sides alike)
    assert min(off["faults"][1:]) > 0, off
    assert max(kept["faults"][1:]) * 10 <= min(off["faults"][1:]), (kept, off)


@glibc
def test_user_malloc_settings_are_left_alone():
    user = run("numpy", MALLOC_TRIM_THRESHOLD_="131072")
    assert user["heap"] == "left as the environment sets it (MALLOC_TRIM_THRESHOLD_)", user
    off = run("numpy", POLYCNN_KEEP_HEAP="0")
    assert min(user["faults"][1:]) * 10 > max(off["faults"][1:]), (user, off)
