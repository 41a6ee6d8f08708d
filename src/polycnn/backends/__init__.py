"""Backends: the contract (:mod:`.base`), the registry, and one module per backend."""

from .base import Backend, OpContext
from .registry import available_backends, backend_names, default_backend_name, get_backend, register

register("numpy", "polycnn.backends.numpy_backend:create",
         "vectorised NumPy: strided views, im2col and BLAS")
register("numba", "polycnn.backends.numba_backend:create",
         "Numba-compiled CPU loops: tiled gather-GEMM convolutions, parallel and deterministic")
register("cupy", "polycnn.backends.cupy_backend:create",
         "CUDA C kernels (kernels/*.cu) launched through CuPy on an NVIDIA GPU")
register("cupy-emu", "polycnn.backends.cupy_backend:create_emu",
         "the cupy backend's kernels on a slow CPU emulator of CUDA (g++): for testing only")

__all__ = [
    "Backend", "OpContext", "available_backends", "backend_names", "default_backend_name",
    "get_backend", "register",
]
