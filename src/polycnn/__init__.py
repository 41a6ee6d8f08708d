"""polycnn: convolutional networks on interchangeable backends (NumPy, Numba, CUDA via CuPy).

    import polycnn as pc
    be = pc.get_backend("numpy")
    y, ctx = be.conv2d_forward(be.asarray(x), be.asarray(w), stride=1, padding=1)
"""

from .backends import Backend, available_backends, default_backend_name, get_backend
from .errors import BackendUnavailable

__version__ = "0.1.0"

__all__ = [
    "Backend", "BackendUnavailable", "available_backends", "default_backend_name", "get_backend",
    "__version__",
]
