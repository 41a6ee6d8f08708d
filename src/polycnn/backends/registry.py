"""Backends by name. A backend joins by calling :func:`register` with a factory; the factory
imports what it needs and raises :class:`~polycnn.errors.BackendUnavailable` (with the reason and
the fix) when it cannot run here. Factories run lazily, once, and their outcome is cached."""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass

from ..errors import BackendUnavailable


@dataclass
class _Entry:
    name: str
    target: str          # "module:attr" of a factory returning a Backend
    summary: str
    instance: object = None
    error: BackendUnavailable | None = None
    tried: bool = False


_REGISTRY: dict[str, _Entry] = {}
_LOCK = threading.Lock()

#: CPU backends in order of preference for the default
_DEFAULT_ORDER = ("numba", "numpy")


def register(name: str, target: str, summary: str) -> None:
    """Register ``name`` -> factory ``"package.module:function"`` (imported only when needed)."""
    _REGISTRY[name] = _Entry(name, target, summary)


def _load(entry: _Entry):
    with _LOCK:
        if not entry.tried:
            module_name, attr = entry.target.split(":")
            try:
                entry.instance = getattr(importlib.import_module(module_name), attr)()
            except BackendUnavailable as exc:
                entry.error = exc
            except ImportError as exc:
                entry.error = BackendUnavailable(f"backend {entry.name!r} failed to import: {exc}")
            # NOTE: set only now: any other exception is a bug that must surface on every call
            entry.tried = True
    if entry.error is not None:
        raise entry.error
    return entry.instance


def backend_names() -> list[str]:
    return list(_REGISTRY)


def summary(name: str) -> str:
    return _REGISTRY[name].summary


def get_backend(name: str | object = None):
    """The backend called ``name`` (``None``: the default). A backend object passes through.

    Unknown names and backends that cannot run here raise ``BackendUnavailable``."""
    if name is None:
        name = default_backend_name()
    if not isinstance(name, str):
        if hasattr(name, "conv2d_forward"):
            return name
        raise TypeError(f"backend must be a name or a backend, got {type(name).__name__}")
    entry = _REGISTRY.get(name)
    if entry is None:
        raise BackendUnavailable(
            f"unknown backend {name!r}; known backends: {', '.join(_REGISTRY)}"
        )
    return _load(entry)


def available_backends() -> dict:
    """name -> True, or the reason (a string) the backend cannot run here."""
    out = {}
    for name, entry in _REGISTRY.items():
        try:
            _load(entry)
            out[name] = True
        except BackendUnavailable as exc:
            out[name] = str(exc)
    return out


def default_backend_name() -> str:
    """The fastest CPU backend that runs here."""
    for name in _DEFAULT_ORDER:
        try:
            get_backend(name)
            return name
        except BackendUnavailable:
            continue
    return "numpy"
