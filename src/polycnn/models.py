"""Model presets and JSON model specs.

Each preset is a function ``(input_shape, classes, backend=None, seed=0) -> pc.Sequential``, where
``input_shape`` is one sample's ``(channels, height, width)``:

- ``tutorial``: the tutorial's network (three 3x3 conv / ReLU / 2x2 max-pool blocks, whole-map
  dropout, two fully connected layers); what ``polycnn train`` uses by default;
- ``lenet5``: LeNet-5 with ReLU and max pooling (5x5 convs with 6 and 16 maps, then 120, 84
  units); a 28x28 input is padded by 2 so the first conv sees LeCun's 32x32;
- ``shapes-cnn``: a compact all-conv network with batch normalisation and global average
  pooling, so it takes any input size of at least 8x8.

``from_file(path, input_shape, classes)`` builds a model from a JSON list of layers in the
checkpoint's spec format, ``[{"type": "Conv2d", "config": {...}}, ...]`` (or
``{"layers": [...]}``); a bad entry raises ``ValueError`` naming its index. The file's size and
nesting, the number of layers, the parameters' bytes and a batch's activations are checked
(:mod:`polycnn.limits`) before anything is allocated, for presets too.
"""

from __future__ import annotations

import os

from . import limits
from .layers import (BatchNorm2d, Conv2d, Dropout2d, Flatten, GlobalAvgPool2d, Linear, MaxPool2d,
                     ReLU, Sequential, layer_from_spec)


def _shape(input_shape) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be (channels, height, width), got {input_shape!r}") from None
    if min(c, h, w) < 1:
        raise ValueError(f"input_shape must be positive, got {(c, h, w)}")
    return c, h, w


def _preset(name: str, input_shape, layers, backend, seed, min_size: int = 1) -> Sequential:
    """The preset ``name`` for one sample's ``input_shape``: ``layers(c, h, w)`` gives its
    layers (raising on a size it cannot take) once the shape is checked, here at least
    ``min_size`` high and wide."""
    c, h, w = _shape(input_shape)
    if min(h, w) < min_size:
        raise ValueError(f"{name} needs images of at least {min_size}x{min_size}, got {h}x{w}")
    return _sequential(layers(c, h, w), (c, h, w), f"the {name} network for {c}x{h}x{w} images",
                       backend=backend, seed=seed)


def tutorial(input_shape, classes: int, backend=None, seed: int = 0) -> Sequential:
    """See the module doc; height and width must be multiples of 8."""
    def layers(c, h, w):
        if h % 8 or w % 8:
            raise ValueError(f"the tutorial network needs a height and width that are multiples"
                             f" of 8 (three 2x2 poolings), got {h}x{w}")
        return [Conv2d(c, 16, kernel_size=3, padding=1), ReLU(), MaxPool2d(2),
                Conv2d(16, 32, kernel_size=3, padding=1), ReLU(), MaxPool2d(2),
                Conv2d(32, 64, kernel_size=3, padding=1), ReLU(), MaxPool2d(2),
                Dropout2d(0.1), Flatten(),
                Linear(64 * (h // 8) * (w // 8), 64), ReLU(), Linear(64, classes)]
    return _preset("tutorial", input_shape, layers, backend, seed)


def lenet5(input_shape, classes: int, backend=None, seed: int = 0) -> Sequential:
    """See the module doc; needs at least 28x28 input (a 28x28 input is padded by 2). The one
    LeNet-5 of polycnn: ``polycnn train``, the benchmarks and the tests build it here."""
    def layers(c, h, w):
        pad = 2 if min(h, w) < 32 else 0
        fh, fw = ((h + 2 * pad - 4) // 2 - 4) // 2, ((w + 2 * pad - 4) // 2 - 4) // 2
        return [Conv2d(c, 6, kernel_size=5, padding=pad), ReLU(), MaxPool2d(2),
                Conv2d(6, 16, kernel_size=5), ReLU(), MaxPool2d(2), Flatten(),
                Linear(16 * fh * fw, 120), ReLU(), Linear(120, 84), ReLU(), Linear(84, classes)]
    return _preset("lenet5", input_shape, layers, backend, seed, min_size=28)


def shapes_cnn(input_shape, classes: int, backend=None, seed: int = 0) -> Sequential:
    """See the module doc; any input of at least 8x8."""
    def layers(c, h, w):
        return [Conv2d(c, 16, kernel_size=3, padding=1), BatchNorm2d(16), ReLU(), MaxPool2d(2),
                Conv2d(16, 32, kernel_size=3, padding=1), BatchNorm2d(32), ReLU(), MaxPool2d(2),
                Conv2d(32, 64, kernel_size=3, padding=1), BatchNorm2d(64), ReLU(),
                GlobalAvgPool2d(), Linear(64, classes)]
    return _preset("shapes-cnn", input_shape, layers, backend, seed, min_size=8)


#: preset name -> builder
PRESETS = {"tutorial": tutorial, "lenet5": lenet5, "shapes-cnn": shapes_cnn}


def _check_output(model: Sequential, input_shape, classes: int, what: str) -> Sequential:
    try:
        out = model.output_shape(input_shape)
    except ValueError as exc:
        raise ValueError(f"{what} does not fit input {tuple(input_shape)}: {exc}") from None
    if tuple(out) != (classes,):
        raise ValueError(f"{what} outputs shape {tuple(out)} for input {tuple(input_shape)}, but the"
                         f" data set has {classes} classes (the last layer must give ({classes},))")
    return model


def layers_from_spec(layers, what: str = "model spec") -> list:
    """The (unbuilt) layers of a list of ``{"type": ..., "config": {...}}`` (or
    ``{"layers": [...]}``), each checked, at most :data:`limits.MAX_LAYERS` of them, and their
    parameters' size checked before anything is allocated."""
    if isinstance(layers, dict):
        layers = layers.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"{what}: expected a non-empty JSON list of layers"
                         ' like [{"type": "Conv2d", "config": {...}}, ...]')
    if len(layers) > limits.MAX_LAYERS:
        raise ValueError(f"{what}: {len(layers):,} layers, over the limit of {limits.MAX_LAYERS:,}")
    built = []
    for i, spec in enumerate(layers):
        if not isinstance(spec, dict) or not isinstance(spec.get("config", {}), dict):
            raise ValueError(f"{what}: layer {i} must be an object with \"type\" and \"config\","
                             f" got {spec!r:.80}")
        try:
            built.append(layer_from_spec(spec))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: layer {i} ({spec.get('type')!r}): {exc}") from None
    limits.check_model(built, what)
    return built


def _sequential(layers, input_shape, what: str, batch_size: int = 1, **kwargs) -> Sequential:
    """``Sequential(*layers)`` after checking what its parameters and a batch of inputs of
    ``input_shape`` would take (nothing is allocated before)."""
    limits.check_model(layers, what, input_shape, batch_size)
    try:
        return Sequential(*layers, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: {exc}") from None


def from_spec(layers, input_shape, classes: int, backend=None, seed: int = 0,
              what: str = "model spec", batch_size: int = 1) -> Sequential:
    """A model from a list of ``{"type": ..., "config": {...}}`` (or ``{"layers": [...]}``);
    ``batch_size``: the inputs of one step, whose activations must fit the memory limit."""
    built = layers_from_spec(layers, what)
    model = _sequential(built, input_shape, what, batch_size, backend=backend, seed=seed,
                        dtype="float32")
    return _check_output(model, input_shape, classes, what)


def from_file(path, input_shape, classes: int, backend=None, seed: int = 0,
              batch_size: int = 1) -> Sequential:
    """A model from a JSON file (see :func:`from_spec`), at most :data:`limits.MAX_JSON_BYTES`
    long and :data:`limits.MAX_JSON_DEPTH` deep."""
    path = os.fspath(path)
    layers = limits.read_json_file(path, "model spec file")
    return from_spec(layers, input_shape, classes, backend, seed, what=path, batch_size=batch_size)


def build(name_or_path: str, input_shape, classes: int, backend=None, seed: int = 0,
          batch_size: int = 1) -> Sequential:
    """A preset by name, or a model from a ``.json`` file (checked for ``batch_size`` inputs a
    step)."""
    if name_or_path in PRESETS:
        model = PRESETS[name_or_path](input_shape, classes, backend=backend, seed=seed)
        return _check_output(model, input_shape, classes, f"model {name_or_path}")
    if name_or_path.lower().endswith(".json"):
        return from_file(name_or_path, input_shape, classes, backend, seed, batch_size)
    raise ValueError(f"unknown model {name_or_path!r}; choose a preset ({', '.join(PRESETS)})"
                     " or a .json file with a list of layers")


__all__ = ["PRESETS", "tutorial", "lenet5", "shapes_cnn", "layers_from_spec", "from_spec",
           "from_file", "build"]
