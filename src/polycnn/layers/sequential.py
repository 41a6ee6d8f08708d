"""The Sequential model, its Summary table, and layers from architecture specs
(``LAYER_TYPES``, ``layer_from_spec``)."""

from __future__ import annotations

import inspect

import numpy as np

from .._args import flag
from ..backends import get_backend
from .base import Layer, Parameter, _dtype
from .conv import AvgPool2d, Conv2d, GlobalAvgPool2d, MaxPool2d
from .dense import Flatten, LeakyReLU, Linear, ReLU
from .dropout import Dropout, Dropout2d
from .norm import BatchNorm2d


#: every layer type by name, for checkpoints' architecture specs
LAYER_TYPES = {cls.__name__: cls for cls in (
    Conv2d, Linear, ReLU, LeakyReLU, MaxPool2d, AvgPool2d, GlobalAvgPool2d, BatchNorm2d,
    Dropout, Dropout2d, Flatten)}


def layer_from_spec(spec: dict) -> Layer:
    """A layer from ``{"type": name, "config": {argument: value}}`` (a model JSON entry or a
    checkpoint's spec): the same checks as the constructor; unknown keys and arguments raise.
    JSON lists become tuples (``"kernel_size": [3, 3]``); nothing else is converted."""
    if not isinstance(spec, dict) or spec.get("type") not in LAYER_TYPES:
        raise ValueError(f"unknown layer in architecture spec: {spec!r:.120}"
                         f" (known types: {', '.join(LAYER_TYPES)})")
    name = spec["type"]
    extra = sorted(set(spec) - {"type", "config"}, key=str)
    if extra:
        raise ValueError(f"{name}: unknown key(s) {', '.join(map(repr, extra))} in the layer spec;"
                         ' a layer is {"type": ..., "config": {...}}')
    config = spec.get("config", {})
    if not isinstance(config, dict):
        raise TypeError(f"{name}: config must be an object of arguments, got {config!r:.80}")
    accepted = [p for p in inspect.signature(LAYER_TYPES[name].__init__).parameters if p != "self"]
    unknown = sorted(set(config) - set(accepted), key=str)
    if unknown:
        raise ValueError(f"{name}: unknown argument(s) {', '.join(map(repr, unknown))};"
                         f" {name} takes {', '.join(accepted) or 'no arguments'}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()}
    return LAYER_TYPES[name](**kwargs)


class Summary:
    """What ``Sequential.summary`` returns: ``rows`` (dicts) and totals; prints as a table."""

    def __init__(self, input_shape, rows, dtype):
        self.input_shape = tuple(input_shape)
        self.rows = rows
        self.total_params = sum(r["params"] for r in rows)
        self.total_flops = sum(r["flops"] for r in rows)
        self.dtype = dtype

    def __str__(self):
        headers = ["#", "layer", "output shape", "params", "FLOPs"]
        cells = [[str(i), r["layer"], str(r["output_shape"]), f"{r['params']:,}", f"{r['flops']:,}"]
                 for i, r in enumerate(self.rows)]
        cells.insert(0, ["", "input", str(self.input_shape), "", ""])
        cells.append(["", "total", "", f"{self.total_params:,}", f"{self.total_flops:,}"])
        widths = [max(len(c[i]) for c in cells + [headers]) for i in range(len(headers))]
        right = {0, 3, 4}

        def line(row):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(row, widths))).rstrip()

        rule = "  ".join("-" * w for w in widths)
        body = [line(headers), rule] + [line(c) for c in cells[:-1]] + [rule, line(cells[-1])]
        size = self.total_params * np.dtype(self.dtype).itemsize
        body.append(f"FLOPs are per sample, forward pass; parameters take {size / 1024:,.1f} KiB"
                    f" ({np.dtype(self.dtype).name})")
        return "\n".join(body)

    __repr__ = __str__


class Sequential(Layer):
    """Layers applied in order. ``backend`` (name or object, None = default), ``seed`` for the
    host generator that draws initial weights and dropout masks, ``dtype`` float32 or float64.

    ``model(x)`` takes a host (NumPy) or backend array of the model's dtype and returns the
    backend's array; ``backward(dy)`` runs the layers in reverse and sets every ``grad``."""

    def __init__(self, *layers: Layer, backend=None, seed: int | None = 0, dtype="float32"):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer) or isinstance(layer, Sequential):
                raise TypeError(f"Sequential: item {i} must be a layer (e.g. pc.Conv2d), got {layer!r:.80}")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("Sequential: the same layer object appears twice; create a new one")
        self.layers = list(layers)
        _check_channels_chain(self.layers)
        if seed is not None and (isinstance(seed, (bool, np.bool_))
                                 or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"Sequential: seed must be an int >= 0 or None, got {seed!r}")
        if seed is not None and seed < 0:
            raise ValueError(f"Sequential: seed must be an int >= 0 or None, got {seed!r}")
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.build(backend, self.rng, dtype)

    def build(self, backend, rng, dtype):
        self.backend = get_backend(backend)
        self.dtype = _dtype(dtype)
        for layer in self.layers:
            layer.build(self.backend, rng, self.dtype)
        self.set_rng(rng)
        return self

    def set_rng(self, rng: np.random.Generator) -> None:
        """Use ``rng`` (a host ``numpy.random.Generator``) for dropout masks from now on."""
        self.rng = self._rng = rng
        for layer in self.layers:
            layer._rng = rng

    # ---- containers ---------------------------------------------------------------------
    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def named_arrays(self) -> dict:
        """Every parameter and buffer by a stable name, e.g. ``"0.weight"``: what checkpoints hold."""
        out = {}
        for i, layer in enumerate(self.layers):
            for name, p in layer._params.items():
                out[f"{i}.{name}"] = p.data
            for name, b in layer._buffers.items():
                out[f"{i}.{name}"] = b
        return out

    def load_arrays(self, arrays: dict) -> None:
        """Replace parameters and buffers by host arrays named as in ``named_arrays``."""
        expected = self.named_arrays()
        missing = sorted(set(expected) - set(arrays))
        extra = sorted(set(arrays) - set(expected))
        if missing or extra:
            raise ValueError(f"arrays do not match the model: missing {missing}, unexpected {extra}")
        for i, layer in enumerate(self.layers):
            for table in (layer._params, layer._buffers):
                for name in list(table):
                    key = f"{i}.{name}"
                    new = np.asarray(arrays[key])
                    old = table[name].data if isinstance(table[name], Parameter) else table[name]
                    if tuple(new.shape) != tuple(old.shape):
                        raise ValueError(f"{key}: shape {tuple(new.shape)} does not match the model's"
                                         f" {tuple(old.shape)}")
                    # NOTE: a copy the model owns: the caller's array may be read-only (a
                    # checkpoint's buffer) or theirs to change; training writes in place
                    arr = self.backend.asarray(new.astype(self.dtype, copy=True), dtype=self.dtype)
                    if isinstance(table[name], Parameter):
                        table[name].data = arr
                        table[name].grad = None
                    else:
                        table[name] = arr

    def train(self, mode: bool = True):
        self.training = flag(mode, "Sequential.train(mode)")
        for layer in self.layers:
            layer.train(mode)
        return self

    # ---- computing -----------------------------------------------------------------------
    def to_backend(self, x):
        """A host or backend array as this model's backend array, checking dtype and rank."""
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"input must be an array, got {type(x).__name__}")
        if np.dtype(x.dtype) != self.dtype:
            raise TypeError(f"input is {np.dtype(x.dtype).name} but the model is {self.dtype.name};"
                            f" convert it with x.astype(np.{self.dtype.name})")
        if isinstance(x, self.backend.array_type):
            return self.backend.xp.ascontiguousarray(x)
        return self.backend.asarray(x)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        x = self.to_backend(x)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy, input_grad: bool = True):
        """Gradients of every parameter from ``dy``, the gradient of the output; returns the
        gradient with respect to the input, or None with ``input_grad=False`` (what
        :func:`polycnn.fit` asks: then the first layer skips that work)."""
        for layer in reversed(self.layers[1:]):
            dy = layer.backward(dy)
        if not self.layers:
            return dy if input_grad else None
        if input_grad:
            return self.layers[0].backward(dy)
        self.layers[0].backward_params(dy)
        return None

    def backward_params(self, dy) -> None:
        self.backward(dy, input_grad=False)

    # ---- description ---------------------------------------------------------------------
    def output_shape(self, in_shape):
        shape = tuple(in_shape)
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except ValueError as exc:
                raise _at_layer(i, layer, exc) from None
        return shape

    def flops(self, in_shape):
        return self.summary(in_shape).total_flops

    def summary(self, input_shape) -> Summary:
        """Per layer: output shape, parameters and forward FLOPs for one sample of ``input_shape``
        (e.g. ``(3, 32, 32)``); raises naming the layer if the shapes do not fit."""
        shape = tuple(int(v) for v in input_shape)
        rows = []
        for i, layer in enumerate(self.layers):
            try:
                flops = layer.flops(shape)
                out = layer.output_shape(shape)
            except ValueError as exc:
                raise _at_layer(i, layer, exc) from None
            rows.append({"layer": repr(layer), "output_shape": out,
                         "params": sum(p.size for p in layer.parameters()), "flops": int(flops)})
            shape = out
        return Summary(input_shape, rows, self.dtype)

    def spec(self) -> dict:
        """The architecture as JSON-ready data (checkpoints store it)."""
        return {"layers": [{"type": type(layer).__name__, "config": layer.config()}
                           for layer in self.layers],
                "dtype": self.dtype.name}

    @classmethod
    def from_spec(cls, spec: dict, backend=None, seed=0) -> "Sequential":
        if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list):
            raise ValueError("architecture spec must be a dict with a 'layers' list")
        extra = sorted(set(spec) - {"layers", "dtype"}, key=str)
        if extra:
            raise ValueError(f"architecture spec: unknown key(s) {', '.join(map(repr, extra))};"
                             " expected 'layers' and 'dtype'")
        return cls(*[layer_from_spec(s) for s in spec["layers"]], backend=backend, seed=seed,
                   dtype=spec.get("dtype", "float32"))

    def save(self, path, **extra):
        """Write a checkpoint (see :mod:`polycnn.checkpoint`); ``extra`` is stored as metadata."""
        from ..checkpoint import save

        return save(path, self, **extra)

    def __repr__(self):
        inner = "".join(f"\n  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(backend={self.backend.name!r}, dtype={self.dtype.name}){inner}\n"


def _at_layer(i: int, layer: Layer, exc: Exception) -> ValueError:
    text = str(exc)
    return ValueError(f"layer {i} {text}" if text.startswith(repr(layer)) else f"layer {i} ({layer!r}): {text}")


def _check_channels_chain(layers) -> None:
    """At construction: consecutive channel counts must agree (Conv2d -> BatchNorm2d -> Conv2d),
    and features must agree between Linear layers."""
    channels, features = None, None
    for i, layer in enumerate(layers):
        if isinstance(layer, Conv2d):
            if channels is not None and channels[0] != layer.in_channels:
                raise ValueError(f"layer {i} {layer!r} expects {layer.in_channels} input channels but"
                                 f" layer {channels[1]} produces {channels[0]}")
            channels, features = (layer.out_channels, i), None
        elif isinstance(layer, BatchNorm2d):
            if channels is not None and channels[0] != layer.num_features:
                raise ValueError(f"layer {i} {layer!r} expects {layer.num_features} channels but"
                                 f" layer {channels[1]} produces {channels[0]}")
        elif isinstance(layer, Linear):
            if features is not None and features[0] != layer.in_features:
                raise ValueError(f"layer {i} {layer!r} expects {layer.in_features} input features but"
                                 f" layer {features[1]} produces {features[0]}")
            features, channels = (layer.out_features, i), None
        elif isinstance(layer, GlobalAvgPool2d) and channels is not None:
            features, channels = (channels[0], i), None
        elif isinstance(layer, Flatten):
            channels, features = None, None
