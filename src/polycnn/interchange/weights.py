"""Parameters and buffers as ``.safetensors`` files, and PyTorch weights in.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype,
shape and byte range; ``__metadata__``: strings) and the raw bytes. :func:`read_safetensors_header`
checks the header before anything is read (its length against a cap and the file's size, the
JSON, each byte range inside the file and of the size its dtype and shape need), so a truncated
or hostile file is a one-line ``ValueError``, never a crash or a large allocation; the
``safetensors`` package then reads the tensors that are used.

Names: polycnn's own are ``"<layer index>.<name>"`` (``0.weight``, ``1.running_mean``), as in
:meth:`polycnn.Sequential.named_arrays` and checkpoints. PyTorch's ``nn.Sequential`` names its
tensors by module (``0.weight``, ``3.bias``, ``features.2.running_var``); ``names="torch"`` and
:func:`from_torch_state_dict` match them by position: the n-th module with weights in PyTorch goes
to the n-th layer with weights in polycnn, whatever the layers without weights in between.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping

import numpy as np

from .._files import replaced_atomically
from ..layers import Sequential
from ._extras import require

#: the longest JSON header read (safetensors' own reader refuses 100 MB); a polycnn model's is
#: a few kB and a large language model's shard about 100 kB
MAX_HEADER = 16 << 20

#: safetensors dtype -> (numpy-style name, bytes per element)
DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3", 1), "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
    "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2), "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}

#: PyTorch bookkeeping that has no counterpart in polycnn (BatchNorm's step count)
TORCH_IGNORED = ("num_batches_tracked",)


# ---- reading and checking a file ------------------------------------------------------------

def read_safetensors_header(path) -> tuple[dict, dict]:
    """-> (``{name: (shape, dtype name)}`` in the header's order, ``__metadata__``), after
    checking the whole header against the file's size; ``ValueError`` naming the problem."""
    path = os.fspath(path)
    size = os.path.getsize(path)  # NOTE: FileNotFoundError / IsADirectoryError as they are
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder, not a .safetensors file")
    bad = f"{path} is not a readable safetensors file"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{bad}: {size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER:
            raise ValueError(f"{bad}: its header claims {n:,} bytes, more than the {MAX_HEADER:,}"
                             " read (truncated, corrupt or not safetensors)")
        if 8 + n > size:
            raise ValueError(f"{bad}: truncated: the header claims {n:,} bytes but the file has"
                             f" {size - 8:,} after the length")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{bad}: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{bad}: the header is a JSON {type(header).__name__}, not an object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{bad}: __metadata__ must map names to strings")
    data_size = size - 8 - n
    entries = {}
    for name, info in header.items():
        where = f"{bad}: tensor {name!r:.80}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{where} must have exactly dtype, shape and data_offsets, got"
                             f" {info!r:.100}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise ValueError(f"{where}: unknown dtype {dtype!r:.20} (known: {', '.join(DTYPES)})")
        if not isinstance(shape, list) or not all(_index(v) for v in shape):
            raise ValueError(f"{where}: shape must be a list of ints >= 0, got {shape!r:.100}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_index(v) for v in offsets)
                and offsets[0] <= offsets[1] <= data_size):
            raise ValueError(f"{where}: data_offsets {offsets!r:.60} are not a byte range inside"
                             f" the {data_size:,} bytes of data (truncated file?)")
        need = math.prod(shape) * DTYPES[dtype][1]
        if offsets[1] - offsets[0] != need:
            raise ValueError(f"{where}: {dtype} {tuple(shape)} needs {need:,} bytes but its"
                             f" data_offsets {offsets} hold {offsets[1] - offsets[0]:,}")
        entries[name] = (tuple(shape), DTYPES[dtype][0])
    return entries, meta


def _index(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _read_tensors(path: str, names) -> dict:
    st = require("safetensors", "reading .safetensors files")
    try:
        with st.safe_open(path, framework="numpy") as f:
            return {name: f.get_tensor(name) for name in names}
    except Exception as exc:  # NOTE: safetensors_rust.SafetensorError and numpy's own errors
        raise ValueError(f"{path} is not a readable safetensors file: {type(exc).__name__}:"
                         f" {' '.join(str(exc).split())}") from None


# ---- matching names, shapes and dtypes ------------------------------------------------------

def _plan(model: Sequential, entries: dict, mapping: Callable, source: str) -> dict:
    """-> ``{model name: source name}`` for every array of the model, or ``ValueError`` listing
    every problem at once: unexpected and missing names, shapes and dtypes that differ."""
    expected = {k: (tuple(v.shape), model.dtype.name) for k, v in model.named_arrays().items()}
    plan, problems = {}, []
    for name, (shape, dtype) in entries.items():
        target = mapping(name)
        if target is None:
            continue
        label = name if target == name else f"{name} (as {target})"
        if target not in expected:
            problems.append(f"unexpected {label} {dtype} {shape}")
        elif target in plan:
            problems.append(f"{label} and {plan[target]} both go to {target}")
        else:
            plan[target] = name
            want_shape, want_dtype = expected[target]
            if shape != want_shape:
                problems.append(f"{label}: shape {shape}, the model has {want_shape}")
            if dtype != want_dtype:
                problems.append(f"{label}: {dtype}, the model is {want_dtype}")
    for target, (shape, dtype) in expected.items():
        if target not in plan:
            problems.append(f"missing {target} {dtype} {shape}")
    if problems:
        raise ValueError(f"{source}: the weights do not match the model ({len(problems)}"
                         f" problem{'s' if len(problems) > 1 else ''}): {'; '.join(problems)}")
    return plan


def _name_mapping(names) -> Callable:
    if names is None:
        return lambda name: name
    if isinstance(names, Mapping):
        if not all(isinstance(k, str) and (v is None or isinstance(v, str))
                   for k, v in names.items()):
            raise TypeError("names must map names in the file to the model's names (strings, or"
                            " None to skip a tensor)")
        return lambda name: names.get(name, name)
    if callable(names):
        return names
    raise TypeError(f"names must be None, 'torch', a dict or a function, got {names!r:.80}")


def _natural_key(name: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def _torch_mapping(model: Sequential, keys, ordered: bool, source: str) -> Callable:
    """PyTorch names -> polycnn names by position (see the module doc). ``ordered``: ``keys``
    come in registration order (a state dict); otherwise (a file's header) modules are sorted by
    name with numbers compared as numbers, which is the order of an ``nn.Sequential``."""
    groups: dict[str, list] = {}
    for key in keys:
        prefix, _, leaf = key.rpartition(".")
        if leaf not in TORCH_IGNORED:
            groups.setdefault(prefix, []).append(leaf)
    prefixes = list(groups) if ordered else sorted(groups, key=_natural_key)
    layers = [i for i, layer in enumerate(model.layers) if layer._params]
    if len(prefixes) != len(layers):
        ours = ", ".join(f"{i} {type(model.layers[i]).__name__}" for i in layers)
        raise ValueError(f"{source}: the state dict has {len(prefixes)} modules with weights"
                         f" ({', '.join(p or '(top)' for p in prefixes)}) but the model has"
                         f" {len(layers)} layers with weights ({ours}); names by position need"
                         " an equivalent torch.nn.Sequential")
    to_layer = dict(zip(prefixes, layers))

    def mapping(key: str):
        prefix, _, leaf = key.rpartition(".")
        if leaf in TORCH_IGNORED:
            return None
        return f"{to_layer[prefix]}.{leaf}"

    return mapping


# ---- public ---------------------------------------------------------------------------------

def save_weights(model: Sequential, path) -> str:
    """Write every parameter and buffer of ``model`` to ``path`` (``.safetensors``) under
    polycnn's names, atomically; the header's ``__metadata__`` holds one key, ``polycnn``: JSON
    with the version and the architecture. Returns the path. The same weights give the same
    bytes."""
    st_numpy = require("safetensors.numpy", "writing .safetensors files")
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a polycnn Sequential, got {type(model).__name__}")
    from .. import __version__

    # NOTE: one key: safetensors writes __metadata__ from a hash map, in an order that changes
    # from one run to the next when it has several keys
    meta = {"polycnn": json.dumps({"version": __version__, "architecture": model.spec()},
                                  sort_keys=True)}
    arrays = {k: np.ascontiguousarray(model.backend.to_numpy(v))
              for k, v in model.named_arrays().items()}
    data = st_numpy.save(arrays, metadata=meta)
    path = os.fspath(path)
    with replaced_atomically(path) as f:
        f.write(data)
    return path


def load_weights(model: Sequential, path, names=None) -> Sequential:
    """Replace ``model``'s parameters and buffers by the tensors of a ``.safetensors`` file.

    ``names``: None (the file uses polycnn's names, as :func:`save_weights` writes them),
    ``"torch"`` (a PyTorch ``nn.Sequential``'s, matched by position), a dict from names in the
    file to the model's (others kept; a value None skips that tensor) or a function doing the
    same. Every name, shape and dtype is checked before anything changes, and all mismatches are
    reported in one ``ValueError``. Returns ``model``."""
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a polycnn Sequential, got {type(model).__name__}")
    path = os.fspath(path)
    entries, _ = read_safetensors_header(path)
    if isinstance(names, str):
        if names != "torch":
            raise ValueError(f"names must be None, 'torch', a dict or a function,"
                             f" got {names!r:.80}")
        mapping = _torch_mapping(model, entries, ordered=False, source=path)
    else:
        mapping = _name_mapping(names)
    plan = _plan(model, entries, mapping, path)
    tensors = _read_tensors(path, sorted(set(plan.values())))
    model.load_arrays({target: tensors[name] for target, name in plan.items()})
    return model


def from_torch_state_dict(model: Sequential, state_dict) -> Sequential:
    """Copy the weights of an equivalent ``torch.nn.Sequential`` into ``model``: its
    ``state_dict()`` (tensors or NumPy arrays, in PyTorch's order), or the path of a
    ``.safetensors`` file PyTorch wrote (``safetensors.torch.save_file``; no pickle is read).

    Modules are matched by position (see the module doc): conv and linear weights and biases,
    BatchNorm's weight, bias and running statistics (its ``num_batches_tracked`` is ignored).
    Names, shapes and dtypes are all checked first; returns ``model``."""
    if isinstance(state_dict, (str, os.PathLike)):
        return load_weights(model, state_dict, names="torch")
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a polycnn Sequential, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors (model.state_dict()) or"
                        f" the path of a .safetensors file, got {type(state_dict).__name__}")
    entries = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise TypeError(f"state_dict: {key!r:.80} must name a tensor or an array, got"
                            f" {type(value).__name__}")
        entries[key] = (tuple(int(v) for v in value.shape), _dtype_name(value.dtype))
    plan = _plan(model, entries, _torch_mapping(model, entries, ordered=True, source="state_dict"),
                 "state_dict")
    model.load_arrays({target: _to_numpy(state_dict[name]) for target, name in plan.items()})
    return model


def _dtype_name(dtype) -> str:
    text = str(dtype)
    return text[len("torch."):] if text.startswith("torch.") else np.dtype(dtype).name


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # NOTE: a torch.Tensor, maybe on a GPU or requiring grad
        return value.detach().cpu().numpy()
    return np.asarray(value)


__all__ = ["save_weights", "load_weights", "from_torch_state_dict", "read_safetensors_header",
           "MAX_HEADER", "DTYPES"]
