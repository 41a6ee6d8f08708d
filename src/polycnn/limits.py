"""Sizes checked before memory is allocated: every reader of a file, and every size a user or a
file can claim, goes through here first.

A claim (a file header, a model spec, a command-line size) is turned into an estimate of the
bytes it would need; over the limit, :func:`check_memory` raises ``ValueError`` naming the file
or option, what it claims, the estimate and the limit. The limit on one run's estimated memory
is :data:`DEFAULT_MEMORY_LIMIT` (2 GiB: MNIST, CIFAR-10 and the README's runs need well under
1 GiB), or ``POLYCNN_MEMORY_LIMIT`` (bytes, or a number with K, M, G or T) for bigger machines.
Structural caps (JSON nesting, layer count, image pixels, checkpoint metadata) are fixed.
"""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np

#: the estimated memory one run may need, unless POLYCNN_MEMORY_LIMIT says otherwise
DEFAULT_MEMORY_LIMIT = 2 << 30
MEMORY_LIMIT_ENV = "POLYCNN_MEMORY_LIMIT"
#: a model spec file (JSON) is read only up to this size
MAX_JSON_BYTES = 1 << 20
#: nesting depth of any JSON polycnn reads (a model spec is 4 deep, a checkpoint's metadata ~6)
MAX_JSON_DEPTH = 32
#: layers in one model
MAX_LAYERS = 1000
#: a checkpoint's JSON metadata record (architecture, history, run settings)
MAX_META_BYTES = 64 << 20
#: pixels of one PNG/JPEG, checked from its header before it is decoded (a 64-megapixel RGB
#: image decodes to 192 MiB)
MAX_IMAGE_PIXELS = 64_000_000
#: bytes read at a time from a compressed stream
CHUNK = 1 << 20

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def memory_limit() -> int:
    """Bytes: ``$POLYCNN_MEMORY_LIMIT`` ("8G", "512M", "1000000000") or the default."""
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_MEMORY_LIMIT
    t = text.lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    try:
        value = float(t[:len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 1 << 20):
        raise ValueError(f"{MEMORY_LIMIT_ENV}={text!r}: expected a size of at least 1M such as 8G"
                         " or 512M")
    return int(value)


def fmt_bytes(n: float) -> str:
    """1.5 GiB, 12.0 MiB, 300 bytes."""
    for unit, size in (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20),
                       ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n):,} bytes"


def check_memory(what: str, claim: str, need: int, limit: int | None = None) -> None:
    """Raise ``ValueError`` when ``need`` bytes exceed ``limit`` (default :func:`memory_limit`):
    "``what``: ``claim`` would need about N GiB of memory, over the limit of M GiB"."""
    hint = f" (set {MEMORY_LIMIT_ENV} to allow more)" if limit is None else ""
    limit = memory_limit() if limit is None else limit
    if need > limit:
        raise ValueError(f"{what}: {claim} would need about {fmt_bytes(need)} of memory, over the"
                         f" limit of {fmt_bytes(limit)}{hint}")


def images_bytes(n: int, sample_shape, itemsize: int = 4) -> int:
    """Bytes of ``n`` images of ``sample_shape`` (exact integers: no overflow)."""
    return int(n) * math.prod(int(d) for d in sample_shape) * int(itemsize)


# ---- files ----------------------------------------------------------------------------------
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, from its ``st_mode``: "a directory", "a FIFO
    (named pipe)", ..."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def regular_file(path, what: str = "file") -> int:
    """The size of ``path``, after checking that it is a regular file: a missing path raises
    ``FileNotFoundError``; a directory, FIFO, device or socket ``ValueError`` (opening a FIFO
    would wait forever for a writer)."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"the {what} name is empty (''): give the path of a file")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: the {what} is {file_kind(st.st_mode)}, not a regular file")
    return st.st_size


def read_exact(f, n: int, path: str, what: str = "data") -> bytes:
    """Exactly ``n`` bytes from the binary stream ``f`` (a gzip or zip stream included), read in
    chunks of at most :data:`CHUNK`: a stream that ends early raises ``ValueError``; nothing
    beyond ``n`` bytes is ever decompressed."""
    parts, got = [], 0
    while got < n:
        chunk = f.read(min(CHUNK, n - got))
        if not chunk:
            raise ValueError(f"{path}: {what} ends after {got:,} of {n:,} bytes (truncated)")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


# ---- JSON -----------------------------------------------------------------------------------
def _depth(obj) -> int:
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                break
            stack.extend((v, d + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(text, what: str, max_bytes: int = MAX_JSON_BYTES):
    """JSON from ``text`` (str or bytes) at most ``max_bytes`` long and :data:`MAX_JSON_DEPTH`
    deep; ``ValueError`` naming ``what`` otherwise."""
    if len(text) > max_bytes:
        raise ValueError(f"{what}: {len(text):,} bytes of JSON, over the limit of {max_bytes:,}")
    try:
        obj = json.loads(text)
    except RecursionError:
        raise ValueError(f"{what}: JSON nested more than {MAX_JSON_DEPTH} deep") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what}: not valid JSON ({exc})") from None
    if _depth(obj) > MAX_JSON_DEPTH:
        raise ValueError(f"{what}: JSON nested more than {MAX_JSON_DEPTH} deep")
    return obj


def read_json_file(path, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES):
    """A JSON file, its size checked (:func:`regular_file`) before it is read."""
    path = os.fspath(path)
    size = regular_file(path, what)
    if size > max_bytes:
        raise ValueError(f"{path}: {size:,} bytes, over the limit of {max_bytes:,} for a {what}")
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    return parse_json(raw, path, max_bytes)


# ---- models ---------------------------------------------------------------------------------
def layer_arrays(layer) -> list[tuple[str, tuple, bool]]:
    """(name, shape, trainable) of the parameters then buffers ``layer`` will allocate when
    built, in the order ``Sequential.named_arrays`` lists them; from its configuration alone."""
    from .layers import BatchNorm2d, Conv2d, Linear

    if isinstance(layer, Conv2d):
        out = [("weight", (layer.out_channels, layer.in_channels, *layer.kernel_size), True)]
        return out + ([("bias", (layer.out_channels,), True)] if layer.bias else [])
    if isinstance(layer, Linear):
        out = [("weight", (layer.out_features, layer.in_features), True)]
        return out + ([("bias", (layer.out_features,), True)] if layer.bias else [])
    if isinstance(layer, BatchNorm2d):
        c = (layer.num_features,)
        return [("weight", c, True), ("bias", c, True), ("running_mean", c, False),
                ("running_var", c, False)]
    return []


def model_arrays(layers) -> dict:
    """``"<layer>.<name>"`` -> shape of every array a model of ``layers`` (unbuilt) holds."""
    return {f"{i}.{name}": shape for i, layer in enumerate(layers)
            for name, shape, _ in layer_arrays(layer)}


def parameter_shapes(layers) -> list[tuple]:
    """Shapes of the trainable parameters in ``Sequential.parameters()`` order (the index an
    optimiser's state is saved under)."""
    return [shape for layer in layers for _, shape, trainable in layer_arrays(layer) if trainable]


def sample_bytes(layers, input_shape, itemsize: int = 4) -> int:
    """Estimated bytes one sample takes in a forward and backward pass: every layer's output
    and its gradient, and a convolution's unfolded input (im2col)."""
    from .layers import Conv2d

    shape, total = tuple(int(v) for v in input_shape), 0
    for layer in layers:
        out = tuple(layer.output_shape(shape))
        total += 2 * math.prod(out)
        if isinstance(layer, Conv2d):
            total += math.prod(out[1:]) * layer.in_channels * math.prod(layer.kernel_size)
        shape = out
    return total * itemsize


def check_model(layers, what: str, input_shape=None, batch: int = 1, itemsize: int = 4) -> int:
    """Check the layer count and the bytes the parameters (with their gradients and two
    optimiser buffers each) and, given ``input_shape``, a ``batch`` of inputs' activations would
    take; returns the parameters' bytes."""
    if len(layers) > MAX_LAYERS:
        raise ValueError(f"{what}: {len(layers):,} layers, over the limit of {MAX_LAYERS:,}")
    params = sum(math.prod(s) for s in model_arrays(layers).values()) * itemsize
    check_memory(what, f"parameters of {params // itemsize:,} numbers", params * 4)
    if input_shape is not None:
        try:
            per_sample = sample_bytes(layers, input_shape, itemsize)
        except ValueError:  # NOTE: the layers do not fit the input; the caller says so better
            return params
        inputs = "one input" if batch == 1 else f"a batch of {batch:,} inputs"
        check_memory(what, f"{inputs} of shape {tuple(input_shape)}",
                     batch * per_sample + params * 4)
    return params


def npy_header(f, path: str, what: str) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran_order, dtype) from the ``.npy`` header at the start of ``f``; refuses
    object arrays (they would need pickle) and headers that are not ``.npy``."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ValueError(f"{path}: {what} is not a readable .npy array ({exc})") from None
    if dtype.hasobject:
        raise ValueError(f"{path}: {what} holds Python objects ({dtype}), which polycnn never"
                         " reads (no pickle)")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def read_npy_data(f, shape, fortran: bool, dtype, path: str, what: str) -> np.ndarray:
    """The array after :func:`npy_header`: exactly its bytes, read in bounded chunks."""
    raw = read_exact(f, math.prod(shape) * dtype.itemsize, path, what)
    a = np.frombuffer(raw, dtype)
    return a.reshape(shape[::-1]).T if fortran else a.reshape(shape)


__all__ = ["DEFAULT_MEMORY_LIMIT", "MEMORY_LIMIT_ENV", "MAX_JSON_BYTES", "MAX_JSON_DEPTH",
           "MAX_LAYERS", "MAX_META_BYTES", "MAX_IMAGE_PIXELS", "memory_limit", "fmt_bytes",
           "check_memory", "images_bytes", "regular_file", "read_exact", "parse_json",
           "read_json_file", "layer_arrays", "model_arrays", "parameter_shapes", "sample_bytes",
           "check_model", "npy_header", "read_npy_data"]
