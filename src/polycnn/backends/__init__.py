"""Backends: the contract (:mod:`.base`), the registry, and one module per backend."""

from .base import Backend, OpContext
from .registry import available_backends, backend_names, default_backend_name, get_backend, register

register("numpy", "polycnn.backends.numpy_backend:create",
         "vectorised NumPy: strided views, im2col and BLAS")

__all__ = [
    "Backend", "OpContext", "available_backends", "backend_names", "default_backend_name",
    "get_backend", "register",
]
