"""One source of truth for sizes: int-or-pair arguments, output sizes, padding, validation.

Every backend and every layer goes through these helpers, so an argument is checked and a size
is computed in exactly one place.

Legend used here and in every backend:
    N batch, C input channels, H×W input, K output channels, R×S kernel, P×Q output.
"""

from __future__ import annotations

from dataclasses import dataclass, make_dataclass
from numbers import Integral

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def pair(value, name: str, *, minimum: int = 0) -> tuple[int, int]:
    """``3 -> (3, 3)``, ``(2, 3) -> (2, 3)``; anything else is a ``TypeError``/``ValueError``
    naming ``name``. Values below ``minimum`` are rejected."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, Integral):
        out = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, Integral) and not isinstance(v, (bool, np.bool_)) for v in value
    ):
        out = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def conv_out_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                  dilation: int = 1) -> int:
    """Output length along one axis; rounds down (PyTorch's rule). May be <= 0 (caller checks)."""
    span = dilation * (kernel - 1) + 1
    return (size + pad_before + pad_after - span) // stride + 1


def resolve_padding(padding, kernel: tuple[int, int], stride: tuple[int, int],
                    dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """Padding as ``(top, bottom, left, right)``.

    ``"valid"`` is no padding. ``"same"`` (stride 1 only) pads ``dilation*(k-1)`` in total per
    axis, the odd pixel at the bottom/right, as PyTorch does, so the output keeps the input size.
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
            th = dilation[0] * (kernel[0] - 1)
            tw = dilation[1] * (kernel[1] - 1)
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    ph, pw = pair(padding, "padding", minimum=0)
    return (ph, ph, pw, pw)


def check_array(x, name: str, ndim: int, array_type=None) -> None:
    """Rank, dtype and array-type checks shared by every op."""
    if array_type is not None and not isinstance(x, array_type):
        raise TypeError(
            f"{name} must be a {_type_name(array_type)}, got {type(x).__module__}.{type(x).__name__}"
            " (convert with backend.asarray)"
        )
    if getattr(x, "ndim", None) != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(getattr(x, 'shape', ()))}")
    if np.dtype(x.dtype) not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype} (shape {tuple(x.shape)})")


def check_same_dtype(**arrays) -> np.dtype:
    """All named arrays share one dtype (mixing is an error, never a silent cast)."""
    items = [(k, v) for k, v in arrays.items() if v is not None]
    dtypes = {np.dtype(v.dtype) for _, v in items}
    if len(dtypes) > 1:
        desc = ", ".join(f"{k} {v.dtype} (shape {tuple(v.shape)})" for k, v in items)
        raise TypeError(f"dtypes must match, got {desc}")
    return np.dtype(items[0][1].dtype)


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(u) for u in t)
    return f"{t.__module__}.{t.__name__}"


class _Input:
    """What both geometries share: an input x of N×C maps of H×W."""

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)


@dataclass(frozen=True)
class ConvGeometry(_Input):
    """Every size of one 2-D convolution. Padding is ``pad_h``/``pad_w`` before (top/left);
    what lies after is implied by ``P``/``Q`` (kernels treat any out-of-range pixel as zero)."""

    N: int
    C: int
    H: int
    W: int
    #: K filters of C×R×S
    K: int
    R: int
    S: int
    #: the output's P×Q
    P: int
    Q: int
    #: stride, padding before (top, left)
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    #: dilation, and the padding after (bottom, right) that P×Q implies
    dil_h: int
    dil_w: int
    pad_bottom: int
    pad_right: int

    @property
    def w_shape(self):
        return (self.K, self.C, self.R, self.S)

    @property
    def y_shape(self):
        return (self.N, self.K, self.P, self.Q)

    @property
    def flops(self) -> int:
        """Multiply-adds counted as 2 FLOPs, forward pass only."""
        return 2 * self.N * self.K * self.P * self.Q * self.C * self.R * self.S


def conv_geometry(x_shape, w_shape, stride=1, padding=0, dilation=1, *, has_bias=None,
                  b_shape=None) -> ConvGeometry:
    """Validate a convolution's arguments and compute its sizes (the one place that does)."""
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"w must be 4-D (K, C, R, S), got shape {tuple(w_shape)}")
    N, C, H, W = (int(v) for v in x_shape)
    K, Cw, R, S = (int(v) for v in w_shape)
    if Cw != C:
        raise ValueError(
            f"channel mismatch: x has {C} channels (shape {tuple(x_shape)}) but w expects {Cw}"
            f" (shape {tuple(w_shape)})"
        )
    if min(N, C, H, W) < 1 or min(K, R, S) < 1:
        raise ValueError(f"empty conv input: x shape {tuple(x_shape)}, w shape {tuple(w_shape)}")
    if b_shape is not None and tuple(b_shape) != (K,):
        raise ValueError(f"b must have shape ({K},) to match w {tuple(w_shape)}, got {tuple(b_shape)}")
    sh, sw = pair(stride, "stride", minimum=1)
    dh, dw = pair(dilation, "dilation", minimum=1)
    pt, pb, pl, pr = resolve_padding(padding, (R, S), (sh, sw), (dh, dw))
    P = conv_out_size(H, R, sh, pt, pb, dh)
    Q = conv_out_size(W, S, sw, pl, pr, dw)
    if P < 1 or Q < 1:
        raise ValueError(
            f"kernel larger than the padded input: x spatial {H}x{W} padded to"
            f" {H + pt + pb}x{W + pl + pr}, kernel {R}x{S} with dilation ({dh}, {dw}) spans"
            f" {dh * (R - 1) + 1}x{dw * (S - 1) + 1}"
        )
    return ConvGeometry(N, C, H, W, K, R, S, P, Q, sh, sw, pt, pl, dh, dw, pb, pr)


class _PoolSizes(_Input):
    """PoolGeometry's properties; its fields are a convolution's less those of the filters."""

    @property
    def y_shape(self):
        return (self.N, self.C, self.P, self.Q)


#: Every size of one 2-D pooling: ConvGeometry's fields without K (a pool keeps the C maps),
#: the dilation (none) and the padding after (the same as before).
PoolGeometry = make_dataclass(
    "PoolGeometry",
    [(name, int) for name in ConvGeometry.__dataclass_fields__
     if name not in ("K", "dil_h", "dil_w", "pad_bottom", "pad_right")],
    bases=(_PoolSizes,), frozen=True,
    namespace={"__module__": __name__, "__doc__": "Every size of one 2-D pooling (N, C, H, W,"
               " R, S, P, Q, stride_h, stride_w, pad_h, pad_w): the same padding before and"
               " after, no dilation."})


def pool_geometry(x_shape, kernel_size=2, stride=None, padding=0) -> PoolGeometry:
    """Validate a pooling's arguments and compute its sizes. ``stride=None`` means the kernel
    size; padding may be at most half the kernel (PyTorch's rule), so no window is all padding."""
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    N, C, H, W = (int(v) for v in x_shape)
    if min(N, C, H, W) < 1:
        raise ValueError(f"empty pool input: x shape {tuple(x_shape)}")
    R, S = pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = pair(kernel_size if stride is None else stride, "stride", minimum=1)
    if isinstance(padding, str):
        raise TypeError(f"pool padding must be an int or a pair of ints, got {padding!r}")
    ph, pw = pair(padding, "padding", minimum=0)
    if ph > R // 2 or pw > S // 2:
        raise ValueError(
            f"pool padding ({ph}, {pw}) must be at most half the kernel size ({R}, {S})"
        )
    P = conv_out_size(H, R, sh, ph, ph)
    Q = conv_out_size(W, S, sw, pw, pw)
    if P < 1 or Q < 1:
        raise ValueError(
            f"kernel larger than the padded input: x spatial {H}x{W} padded to"
            f" {H + 2 * ph}x{W + 2 * pw}, pool kernel {R}x{S}"
        )
    return PoolGeometry(N, C, H, W, R, S, P, Q, sh, sw, ph, pw)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = [
    "pair", "conv_out_size", "resolve_padding", "check_array", "check_same_dtype",
    "ConvGeometry", "conv_geometry", "PoolGeometry", "pool_geometry", "ceil_div",
    "SUPPORTED_DTYPES",
]
