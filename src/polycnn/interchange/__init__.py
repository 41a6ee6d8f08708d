"""Interchange with other tools: ONNX export, weights as safetensors, PyTorch weights in.

- :func:`export_onnx` writes a model as an ONNX graph (opset 17, dynamic batch dimension, class
  names and input normalisation in the metadata) that onnxruntime runs;
- :func:`save_weights` / :func:`load_weights` write and read parameters and buffers as a
  ``.safetensors`` file, every name, shape and dtype checked on load;
- :func:`from_torch_state_dict` copies the weights of an equivalent ``torch.nn.Sequential``
  (its ``state_dict()``, or a ``.safetensors`` file PyTorch wrote) into a model.

``onnx``, ``onnxruntime`` and ``safetensors`` are an optional extra, imported only when used:
``pip install 'polycnn[onnx]'``. No pickle is read anywhere (``torch.load`` is never called).
"""

from ._extras import EXTRA_HINT, MissingExtra
from .onnx_export import OPSET, export_onnx
from .weights import from_torch_state_dict, load_weights, read_safetensors_header, save_weights

__all__ = ["export_onnx", "save_weights", "load_weights", "from_torch_state_dict",
           "read_safetensors_header", "MissingExtra", "EXTRA_HINT", "OPSET"]
