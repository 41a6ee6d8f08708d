"""Lazy imports of the optional packages, with a one-line message naming the extra."""

from __future__ import annotations

import importlib

EXTRA_HINT = "pip install 'polycnn[onnx]'"


class MissingExtra(ImportError):
    """An optional package that this feature needs is not installed."""


def require(module: str, feature: str):
    """``importlib.import_module(module)``, or :class:`MissingExtra` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingExtra(f"{feature} needs the {top!r} package, which is not installed"
                           f" ({type(exc).__name__}: {exc}); install it with {EXTRA_HINT}"
                           ) from None
