"""Where the numba backend caches its compiled kernels: the user's cache folder, or
NUMBA_CACHE_DIR when set, under a subfolder named by the kernel modules' sources. (Planted or
unsafe cache folders: test_cache_security.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

numba = pytest.importorskip("numba")


_CACHE_SCRIPT = textwrap.dedent(
    """
    import json, os
    import numpy as np
    from polycnn.backends import numba_backend
    be = numba_backend.NumbaBackend()
    be.relu_forward(np.ones(3, np.float32))  # compiles one small kernel, which writes its cache
    kernel = numba_backend._load_kernels()._relu_fwd
    print(json.dumps({"locator": kernel._cache._cache_path, "reported": numba_backend.cache_dir()}))
    """
)


def _cache_probe(tmp_path, env_extra):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", _CACHE_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kernels_cache_in_the_user_cache_folder(tmp_path):
    out = _cache_probe(tmp_path, {"XDG_CACHE_HOME": str(tmp_path)})
    folder = tmp_path / "polycnn" / "numba"
    assert out["locator"].startswith(str(folder)), out
    assert out["reported"] == str(folder)
    written = [p for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc")]
    assert any(p.name.startswith("glue._relu_fwd") for p in written), written
    # under a folder named by the kernels' sources: a change to any of them compiles afresh
    assert all(p.relative_to(folder).parts[0].startswith("src-") for p in written), written


def test_user_set_numba_cache_dir_wins(tmp_path):
    mine = tmp_path / "mine"
    out = _cache_probe(tmp_path, {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "NUMBA_CACHE_DIR": str(mine)})
    assert out["locator"].startswith(str(mine)), out
    assert not (tmp_path / "xdg" / "polycnn").exists()


def test_a_change_to_any_kernel_module_gives_another_cache_subfolder(tmp_path, monkeypatch):
    """Numba checks a cached kernel against its own file only, and the conv kernels inline the
    tiles of tiles.py: the subfolder the kernels cache in is named by every module's text."""
    import shutil
    from pathlib import Path

    from polycnn.backends.numba import loader

    copy = tmp_path / "numba"
    shutil.copytree(Path(loader.__file__).parent, copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(loader, "__file__", str(copy / "loader.py"))
    first = loader.kernel_folder("/cache")
    assert first == loader.kernel_folder("/cache")
    assert os.path.dirname(first) == "/cache" and os.path.basename(first).startswith("src-")
    tiles = copy / "tiles.py"
    text = tiles.read_text()
    assert "DOT_TILE = (4, 6)" in text
    tiles.write_text(text.replace("DOT_TILE = (4, 6)", "DOT_TILE = (4, 5)"))
    assert loader.kernel_folder("/cache") != first
