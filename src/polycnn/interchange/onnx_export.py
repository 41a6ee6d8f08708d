"""A :class:`~polycnn.Sequential` as an ONNX graph, built with the ``onnx`` package's helpers.

The graph's input ``input`` is ``(batch, C, H, W)`` with a dynamic batch dimension; its output is
``logits`` (``(batch, classes)``), or ``probabilities`` with ``softmax=True``. Each layer becomes
the ONNX operator with PyTorch's (and polycnn's) semantics:

=================  ==========================================================================
Conv2d             Conv with explicit ``pads`` from :func:`polycnn.geometry.resolve_padding`
                   (``"same"``'s odd pixel at the bottom / right, never ``auto_pad``)
ReLU, LeakyReLU    Relu, LeakyRelu(alpha = negative_slope)
MaxPool2d          MaxPool (ONNX pads a max pool with -inf, as polycnn does)
AvgPool2d          AveragePool with ``count_include_pad=1`` (the padding counts as zeros)
GlobalAvgPool2d    GlobalAveragePool, then Flatten to (batch, C)
BatchNorm2d        BatchNormalization in inference form (the running statistics)
Dropout(2d)        nothing: the identity at inference
Flatten, Linear    Flatten(axis=1); Gemm(transB=1)
=================  ==========================================================================

Input normalisation: with ``normalize=(mean, std)`` (what ``polycnn train`` stores for MNIST,
Fashion-MNIST and CIFAR-10) the graph begins with ``(input - mean) / std`` per channel, so the
exported model takes the same 0..1 images as ``polycnn predict``; mean and std are also written
to the metadata (``polycnn.normalize``, with ``"in_graph": true``). Initialisers keep polycnn's
parameter names (``0.weight``, ``1.running_mean``), the names of :func:`save_weights`.

NOTE: onnxruntime's CPU provider has no float64 convolution; a float64 model exports as a valid
float64 graph, but onnxruntime runs only float32 ones.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from .._files import replaced_atomically
from ..geometry import resolve_padding
from ..layers import (AvgPool2d, BatchNorm2d, Conv2d, Dropout, Dropout2d, Flatten, GlobalAvgPool2d,
                      LeakyReLU, Linear, MaxPool2d, ReLU, Sequential)
from ._extras import require

#: the one ONNX opset written
OPSET = 17
#: the IR version that goes with opset 17 (onnx 1.12); older readers refuse newer IR versions
IR_VERSION = 8
INPUT = "input"


def export_onnx(model, path, input_shape, *, class_names=None, normalize=None,
                softmax: bool = False, opset: int = OPSET, metadata: dict | None = None) -> str:
    """Write ``model`` to ``path`` as ONNX (see the module doc); returns the path.

    ``input_shape``: one sample's ``(C, H, W)``; ``class_names``: one name per output (written to
    the metadata); ``normalize``: ``(mean, std)`` per channel, applied inside the graph;
    ``softmax``: end with a softmax (output ``probabilities``) instead of the logits;
    ``metadata``: more string key/value pairs for the model's ``metadata_props``. The graph
    passes ``onnx.checker`` (with shape inference) before the file is written, atomically."""
    onnx = require("onnx", "ONNX export")
    from onnx import TensorProto, helper

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a polycnn Sequential, got {type(model).__name__}")
    if isinstance(opset, bool) or opset != OPSET:
        raise ValueError(f"opset must be {OPSET} (the one opset polycnn writes), got {opset!r}")
    shape = _sample_shape(input_shape)
    try:
        out_shape = tuple(model.output_shape(shape))
    except ValueError as exc:  # NOTE: names the layer that does not fit
        raise ValueError(f"the model does not fit input_shape {shape}: {exc}") from None
    if softmax and len(out_shape) != 1:
        raise ValueError(f"softmax=True needs a model with flat outputs (classes,), this one gives"
                         f" {out_shape} for input {shape}")
    names = _class_names(class_names, out_shape)
    mean_std = None if normalize is None else _mean_std(normalize, shape[0])
    elem = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}[model.dtype.name]

    nodes, inits, output = _nodes(helper, model, mean_std, softmax)
    graph = helper.make_graph(
        nodes, "polycnn", [helper.make_tensor_value_info(INPUT, elem, ["batch", *shape])],
        [helper.make_tensor_value_info(output, elem, ["batch", *out_shape])], inits)
    from .. import __version__

    props = _metadata(model, shape, output, names, mean_std, metadata)
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="polycnn",
        producer_version=__version__,
        doc_string="exported by polycnn: input (batch, C, H, W) images"
                   + (", normalised inside the graph" if mean_std is not None else "")
                   + f"; output {output} (batch, {', '.join(map(str, out_shape))})")
    onnx_model.ir_version = IR_VERSION
    helper.set_model_props(onnx_model, props)
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ValueError(f"the exported graph fails onnx.checker:"
                         f" {' '.join(str(exc).split())}") from None
    data = onnx_model.SerializeToString()
    path = os.fspath(path)
    with replaced_atomically(path) as f:
        f.write(data)
    return path


def _nodes(helper, model, mean_std, softmax: bool) -> tuple[list, list, str]:
    """The graph's nodes, its initialisers and the name of its output: the normalisation
    (when ``mean_std`` is given), one converter per layer, then the softmax or the logits."""
    from onnx import numpy_helper

    to_numpy = model.backend.to_numpy
    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=model.dtype), name))
        return name

    cur = INPUT
    if mean_std is not None:
        mean, std = (np.asarray(v, model.dtype).reshape(1, -1, 1, 1) for v in mean_std)
        nodes.append(helper.make_node("Sub", [cur, init("input_mean", mean)], ["input_centred"],
                                      name="normalize.sub"))
        nodes.append(helper.make_node("Div", ["input_centred", init("input_std", std)],
                                      ["input_normalized"], name="normalize.div"))
        cur = "input_normalized"
    for i, layer in enumerate(model.layers):
        convert = _CONVERTERS.get(type(layer))
        if convert is None:
            raise ValueError(f"layer {i} {layer!r} cannot be exported to ONNX: polycnn exports"
                             f" {', '.join(c.__name__ for c in _CONVERTERS)}")
        params = {k: to_numpy(p.data) for k, p in layer._params.items()}
        params.update({k: to_numpy(b) for k, b in layer._buffers.items()})
        cur = convert(helper, layer, i, cur, {k: init(f"{i}.{k}", v) for k, v in params.items()},
                      nodes)
    output = "probabilities" if softmax else "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", [cur], [output], axis=1, name="softmax"))
    elif cur == INPUT or not nodes or nodes[-1].output[0] != cur:
        nodes.append(helper.make_node("Identity", [cur], [output], name="output"))
    else:
        nodes[-1].output[0] = output  # NOTE: the last node's result is read by nothing else
    return nodes, inits, output


def _metadata(model, shape, output: str, names, mean_std, metadata) -> dict:
    """The model's ``metadata_props``: polycnn's keys, then the caller's ``metadata``."""
    from .. import __version__

    props = {
        "polycnn.version": __version__,
        "polycnn.input_shape": json.dumps(list(shape)),
        "polycnn.output": output,
        "polycnn.classes": json.dumps(names),
        "polycnn.normalize": json.dumps(None if mean_std is None else
                                        {"mean": list(mean_std[0]), "std": list(mean_std[1]),
                                         "in_graph": True}),
        "polycnn.architecture": json.dumps(model.spec()),
    }
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map strings to strings, got {key!r}: {value!r:.60}")
        props[key] = value
    return props


def _sample_shape(input_shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in input_shape)
        ok = len(shape) == 3 and all(float(v) == s for v, s in zip(input_shape, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok or min(shape) < 1:
        raise ValueError(f"input_shape must be one sample's (channels, height, width) of positive"
                         f" ints, got {input_shape!r}")
    return shape


def _class_names(class_names, out_shape) -> list | None:
    if class_names is None:
        return None
    names = list(class_names)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"class_names must be strings, got {names!r:.120}")
    if len(out_shape) != 1 or len(names) != out_shape[0]:
        raise ValueError(f"class_names has {len(names)} names but the model outputs {out_shape}"
                         " per sample")
    return names


def _mean_std(normalize, channels: int):
    try:
        mean, std = normalize
        mean = [float(v) for v in mean]
        std = [float(v) for v in std]
    except (TypeError, ValueError):
        raise ValueError(f"normalize must be (mean, std), one value per channel, got"
                         f" {normalize!r:.120}") from None
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise ValueError(f"normalize: mean {mean} and std {std} must have one value per channel"
                         f" ({channels}) or one in all")
    if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(s) and s > 0 for s in std):
        raise ValueError(f"normalize: mean must be finite and std positive, got {mean}, {std}")
    return mean, std


# ---- one converter per layer type: (helper, layer, index, input name, initialiser names by
# parameter name, node list) -> the name of the layer's output --------------------------------

def _conv(helper, layer, i, x, p, nodes):
    top, bottom, left, right = resolve_padding(layer.padding, layer.kernel_size, layer.stride,
                                               layer.dilation)
    inputs = [x, p["weight"]] + ([p["bias"]] if layer.bias else [])
    nodes.append(helper.make_node(
        "Conv", inputs, [f"{i}.out"], name=f"{i}.Conv2d", kernel_shape=list(layer.kernel_size),
        strides=list(layer.stride), dilations=list(layer.dilation), pads=[top, left, bottom, right],
        group=1))
    return f"{i}.out"


def _pool(op, **extra):
    def convert(helper, layer, i, x, p, nodes):
        ph, pw = layer.padding
        nodes.append(helper.make_node(op, [x], [f"{i}.out"], name=f"{i}.{type(layer).__name__}",
                                      kernel_shape=list(layer.kernel_size),
                                      strides=list(layer.stride), pads=[ph, pw, ph, pw],
                                      ceil_mode=0, **extra))
        return f"{i}.out"
    return convert


def _relu(helper, layer, i, x, p, nodes):
    nodes.append(helper.make_node("Relu", [x], [f"{i}.out"], name=f"{i}.ReLU"))
    return f"{i}.out"


def _leaky_relu(helper, layer, i, x, p, nodes):
    nodes.append(helper.make_node("LeakyRelu", [x], [f"{i}.out"], name=f"{i}.LeakyReLU",
                                  alpha=layer.negative_slope))
    return f"{i}.out"


def _global_avg_pool(helper, layer, i, x, p, nodes):
    nodes.append(helper.make_node("GlobalAveragePool", [x], [f"{i}.pooled"],
                                  name=f"{i}.GlobalAvgPool2d"))
    nodes.append(helper.make_node("Flatten", [f"{i}.pooled"], [f"{i}.out"], axis=1,
                                  name=f"{i}.GlobalAvgPool2d.flatten"))
    return f"{i}.out"


def _batch_norm(helper, layer, i, x, p, nodes):
    nodes.append(helper.make_node(
        "BatchNormalization", [x, p["weight"], p["bias"], p["running_mean"], p["running_var"]],
        [f"{i}.out"], name=f"{i}.BatchNorm2d", epsilon=layer.eps, training_mode=0))
    return f"{i}.out"


def _identity(helper, layer, i, x, p, nodes):
    return x


def _flatten(helper, layer, i, x, p, nodes):
    nodes.append(helper.make_node("Flatten", [x], [f"{i}.out"], axis=1, name=f"{i}.Flatten"))
    return f"{i}.out"


def _linear(helper, layer, i, x, p, nodes):
    inputs = [x, p["weight"]] + ([p["bias"]] if layer.bias else [])
    nodes.append(helper.make_node("Gemm", inputs, [f"{i}.out"], name=f"{i}.Linear", transB=1))
    return f"{i}.out"


#: exact layer type -> converter (a subclass may compute something else: it is refused)
_CONVERTERS = {
    Conv2d: _conv, ReLU: _relu, LeakyReLU: _leaky_relu,
    MaxPool2d: _pool("MaxPool"), AvgPool2d: _pool("AveragePool", count_include_pad=1),
    GlobalAvgPool2d: _global_avg_pool, BatchNorm2d: _batch_norm,
    Dropout: _identity, Dropout2d: _identity, Flatten: _flatten, Linear: _linear,
}

__all__ = ["export_onnx", "OPSET"]
