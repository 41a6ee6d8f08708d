"""Layers and the Sequential model, written once above the backend contract.

A layer holds state, not algorithms: its parameters, their initialisation, the validation of its
arguments and input, and a forward / backward pair that is one call into the backend (or a few
lines of ``backend.xp`` glue). Nothing here knows which backend runs underneath.

Shapes: images are NCHW, features are (N, F). ``output_shape`` works on one sample's shape
(without N), so ``model.summary((3, 32, 32))`` can check a whole network before any data exists.

Randomness: initial weights are drawn on the host from the model's ``numpy.random.Generator``
and copied to the backend; a dropout mask is made on the backend from one key drawn from that
generator (a counter-based hash, see ``dropout_mask`` in the backend contract), so one seed
gives one run on every backend.
"""

# NOTE: the layers live in submodules (base, conv, dense, dropout, norm, sequential); every
# public name is imported here, where it has always been: ``polycnn.layers.Conv2d``
from .base import Layer, Parameter
from .conv import AvgPool2d, Conv2d, GlobalAvgPool2d, MaxPool2d
from .dense import Flatten, LeakyReLU, Linear, ReLU
from .dropout import Dropout, Dropout2d
from .norm import BatchNorm2d
from .sequential import LAYER_TYPES, Sequential, Summary, layer_from_spec

__all__ = [
    "Parameter", "Layer", "Conv2d", "Linear", "ReLU", "LeakyReLU", "MaxPool2d", "AvgPool2d",
    "GlobalAvgPool2d", "BatchNorm2d", "Dropout", "Dropout2d", "Flatten", "Sequential", "Summary",
    "LAYER_TYPES", "layer_from_spec",
]
