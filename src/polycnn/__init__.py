"""polycnn: convolutional networks on interchangeable backends (NumPy, Numba, CUDA via CuPy).

    import polycnn as pc
    be = pc.get_backend("numpy")
    y, ctx = be.conv2d_forward(be.asarray(x), be.asarray(w), stride=1, padding=1)
"""

from .backends import Backend, available_backends, default_backend_name, get_backend
from .errors import BackendUnavailable

# the model stack (layers, optimisers, data, training, checkpoints)
from . import datasets, distributed, metrics, models, optim  # noqa: E402  (pc.datasets.shapes, pc.optim.CosineLR, pc.models.lenet5)
from .augment import Augment
from .checkpoint import load
from .layers import (AvgPool2d, BatchNorm2d, Conv2d, Dropout, Dropout2d, Flatten, GlobalAvgPool2d,
                     LeakyReLU, Linear, MaxPool2d, ReLU, Sequential)
from .optim import SGD, Adam, AdamW
from .training import TrainingDiverged, TrainingInterrupted, evaluate, fit, predict
from .graph_step import CapturedStep
from .interchange import export_onnx, from_torch_state_dict, load_weights, save_weights
from . import recipes  # noqa: E402  (pc.recipes.RunConfig)
from .recipes import resume, run  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Backend", "BackendUnavailable", "available_backends", "default_backend_name", "get_backend",
    "__version__",
    "Sequential", "Conv2d", "ReLU", "LeakyReLU", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
    "BatchNorm2d", "Dropout", "Dropout2d", "Flatten", "Linear", "SGD", "Adam", "AdamW", "Augment",
    "fit", "evaluate", "predict", "load", "TrainingDiverged", "TrainingInterrupted", "datasets",
    "distributed",
    "metrics", "models", "optim",
    "export_onnx", "save_weights", "load_weights", "from_torch_state_dict",
    "CapturedStep",
    "recipes", "run", "resume",
]
