"""The memory limit: generous for the README's real runs, set by POLYCNN_MEMORY_LIMIT, documented."""

from __future__ import annotations

import os

import pytest

import polycnn as pc
from polycnn import limits


def test_limits_are_generous_for_real_runs():
    """The README's runs fit: MNIST and CIFAR-10 as loaded, the default shapes run, lenet5."""
    need = 2 * limits.images_bytes(60000 + 10000, (3, 32, 32))
    assert need < limits.memory_limit()
    assert 60000 * 784 * 9 < limits.memory_limit()
    layers = pc.models.layers_from_spec(pc.models.lenet5((1, 28, 28), 10).spec()["layers"])
    assert limits.check_model(layers, "lenet5", (1, 28, 28)) < 1 << 20


def test_memory_limit_variable(monkeypatch):
    monkeypatch.setenv(limits.MEMORY_LIMIT_ENV, "8G")
    assert limits.memory_limit() == 8 << 30
    monkeypatch.setenv(limits.MEMORY_LIMIT_ENV, "512m")
    assert limits.memory_limit() == 512 << 20
    monkeypatch.setenv(limits.MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match="POLYCNN_MEMORY_LIMIT='lots'"):
        limits.memory_limit()
    monkeypatch.setenv(limits.MEMORY_LIMIT_ENV, "10M")
    limits.check_memory("x", "1,000 images", 10 << 20)
    with pytest.raises(ValueError, match=r"x: 1,000 images would need about 11.4 MiB of memory, over"
                       r" the limit of 10.0 MiB \(set POLYCNN_MEMORY_LIMIT"):
        limits.check_memory("x", "1,000 images", 12_000_000)


def test_readme_documents_the_memory_limit():
    """The limit and how to raise it are where the README talks about errors."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "README.md")
    with open(path, encoding="utf-8") as f:
        readme = f.read()
    assert f"`{limits.MEMORY_LIMIT_ENV}`" in readme
    assert f"over {limits.DEFAULT_MEMORY_LIMIT >> 30} GiB" in readme
