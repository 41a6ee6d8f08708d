"""What `pip install polycnn` (a wheel, not the editable checkout) ships: every package folder of
the source tree is named in pyproject's package list, with its data files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def _setuptools() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _package_folders() -> dict:
    """dotted name -> folder, for every folder holding Python or kernel sources under the
    package-dir mapping."""
    found = {}
    for name, rel in _setuptools()["package-dir"].items():
        top = ROOT / rel
        for init in top.rglob("*"):
            if init.is_dir() and "__pycache__" not in init.parts and (
                    any(init.glob("*.py")) or any(init.glob("*.cu"))):
                found[".".join([name, *init.relative_to(top).parts])] = init
        found[name] = top
    return found


def test_every_package_folder_is_shipped():
    listed = set(_setuptools()["packages"])
    missing = {name for name in _package_folders() if name not in listed}
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}"


def test_data_and_kernel_files_are_declared():
    data = _setuptools()["package-data"]
    assert {"*.cu", "*.cuh"} <= set(data["polycnn.kernels"])
    assert "*.csv.gz" in data["polycnn.data"]
