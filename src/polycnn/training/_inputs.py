"""Checks of what fit, evaluate and predict are given: data, images (dtype, pixels, finite
values), counts, fractions and the optimiser's parameters."""

from __future__ import annotations

import numpy as np

from ..losses import check_labels


def _check_data(model, data, name: str, pixels: bool = False):
    """``data = (x, y)`` checked against ``model``: images (N, C, H, W) of the model's float
    dtype with no NaN or infinity, y integer labels in range; ``pixels`` (evaluate): uint8 x is
    converted as the model's training images were scaled, when the model says how."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a pair (x, y) of arrays, got {type(data).__name__}")
    x, y = data
    x = np.asarray(x) if not hasattr(x, "shape") else x
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{name}: x must be images (N, C, H, W), got shape {tuple(x.shape)}")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: y must have shape ({x.shape[0]},) to match x {tuple(x.shape)},"
                         f" got {y.shape}")
    if y.dtype.kind == "b" or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name}: y must hold integer class labels, got {y.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    classes = model.output_shape(tuple(x.shape[1:]))
    if len(classes) != 1:
        raise ValueError(f"the model's output per sample has shape {classes}; a classifier must"
                         " end with (classes,)")
    x = _check_images(model, x, f"{name}: x", pixels)
    check_labels(y, y.shape[0], classes[0])
    return x, y


def _check_images(model, x, name: str, pixels: bool):
    """``x`` in the model's dtype, every value finite; see :func:`_input_dtype`."""
    x = _input_dtype(model, x, name, pixels)
    _check_finite(model, x, name)
    return x


def _input_dtype(model, x, name: str, pixels: bool):
    """Float input of the model's dtype passes unchanged. Complex, bool and other-float input
    raise. Integer input would be cast to the wrong scale (0..255 where the model learnt 0..1 or
    standardised values): with ``pixels`` (predict, evaluate), uint8 is converted as ``polycnn
    train`` scaled the model's training images (see :func:`_pixel_scaling`); anything else
    raises, saying how to convert it."""
    dt, want = np.dtype(x.dtype), model.dtype.name
    if dt.kind == "c":
        raise TypeError(f"{name} is complex ({dt.name}); the model takes real {want} images")
    if dt.kind == "b":
        raise TypeError(f"{name} is boolean; the model takes {want} images (a 0/1 mask meant as"
                        f" images: x.astype(np.{want}))")
    if dt.kind in "iu":
        scaling = _pixel_scaling(model) if pixels else None
        if scaling is not None and dt == np.uint8:
            return _from_pixels(model, x, name, scaling)
        if not pixels:
            how = ("fit trains on float images on the scale you choose: convert and scale them"
                   f" yourself, e.g. x.astype(np.{want}) / 255 for 8-bit pixels")
        elif scaling is None:
            how = ("this model does not say how its training images were scaled (only a checkpoint"
                   " written by `polycnn train` does): scale it as the training data was, e.g."
                   f" x.astype(np.{want}) / 255 for 8-bit pixels in 0..1")
        else:
            how = ("only uint8 (8-bit pixels 0..255) is converted with the model's stored"
                   f" scaling; pass uint8 pixels or {want} images scaled as the training data")
        raise TypeError(f"{name} is {dt.name} (integer pixels?) but the model takes {want}"
                        f" images; {how}")
    if dt.kind != "f":
        raise TypeError(f"{name} must hold {want} numbers, got {dt}")
    if dt != model.dtype:
        raise TypeError(f"{name} is {dt.name} but the model is {want};"
                        f" convert with x.astype(np.{want})")
    return x


def _pixel_scaling(model):
    """How the model's training images were made from 8-bit pixels, when the model knows: a
    checkpoint written by ``polycnn train`` (metadata ``run``) trained on pixels / 255, then
    standardised per channel with the run's ``normalize = (mean, std)`` when it has one.
    -> None (unknown) or (mean, std) (both None: pixels / 255 only)."""
    state = getattr(model, "training_state", None) or {}
    run = (state.get("metadata") or {}).get("run") if isinstance(state, dict) else None
    if not isinstance(run, dict) or "image_size" not in run:
        return None
    norm = run.get("normalize")
    if norm is None:
        return (None, None)
    try:
        mean, std = (np.asarray(v, dtype=np.float64) for v in norm)
    except (TypeError, ValueError):
        mean = std = None
    if mean is None or mean.ndim != 1 or mean.shape != std.shape or not np.isfinite(mean).all() \
            or not (np.isfinite(std) & (std > 0)).all():
        raise ValueError(f"{state.get('path', 'the model')}: the stored normalisation {norm!r:.80}"
                         " is not (mean, std) per channel with std > 0")
    return mean, std


def _from_pixels(model, x, name: str, scaling):
    """uint8 pixels -> the model's dtype as the training images: / 255, then (x - mean) / std
    (in the model's dtype, as the data loaders compute it)."""
    mean, std = scaling
    t = model.dtype.type
    if mean is not None and len(mean) != x.shape[1]:
        raise ValueError(f"{name} has {x.shape[1]} channels but the model's stored normalisation"
                         f" has {len(mean)} (shape {tuple(x.shape)})")
    host = x if isinstance(x, np.ndarray) else model.backend.to_numpy(x)
    out = host.astype(model.dtype) / t(255)
    if mean is not None:
        out = (out - mean.astype(model.dtype)[None, :, None, None]) / \
            std.astype(model.dtype)[None, :, None, None]
    return out


def _check_finite(model, x, name: str) -> None:
    """NaN or infinity anywhere in ``x`` (host or backend array) raises, saying how many and
    where the first is."""
    xp = np if isinstance(x, np.ndarray) else model.backend.xp
    # NOTE: in slices of about 4M values, so the mask stays small for a large data set
    step = max(1, (1 << 22) // max(1, int(np.prod(x.shape[1:]))))
    bad, first = 0, None
    for a in range(0, x.shape[0], step):
        ok = xp.isfinite(x[a:a + step])
        if bool(ok.all()):
            continue
        wrong = ~ok
        bad += int(wrong.sum())
        if first is None:
            at = [int(v) for v in xp.argwhere(wrong)[0]]
            first = (at[0] + a, *at[1:])
    if bad:
        value = x[first]
        raise ValueError(f"{name} holds {bad:,} NaN or infinite value(s) of {x.size:,}; the first"
                         f" is {float(value)} at index {first} (image {first[0]}); fix or drop"
                         " those images")


def _positive(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _fraction(value, name):
    """A finite number in [0, 1) (label smoothing); bools and strings are TypeErrors."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_optimizer(model, optimizer) -> None:
    """The optimiser must update exactly the model's parameters, each once, in the model's order
    (checkpoints store its state by that position): one made for another model, for a part of
    this one or with a parameter twice would train silently wrong."""
    mine, theirs = model.parameters(), list(optimizer.params)
    if len(theirs) == len(mine) and all(p is q for p, q in zip(theirs, mine)):
        return
    where = {}
    for i, layer in enumerate(model.layers):
        for pname, p in layer._params.items():
            where[id(p)] = f"layer {i} ({layer!r}) {pname}"
    counts = {}
    for p in theirs:
        counts[id(p)] = counts.get(id(p), 0) + 1
    foreign = [j for j, p in enumerate(theirs) if id(p) not in where]
    twice = [p for p in mine if counts.get(id(p), 0) > 1]
    missing = [p for p in mine if id(p) not in counts]
    if foreign:
        p = theirs[foreign[0]]
        what = (f"{len(foreign)} of them are not this model's (the first: optimiser parameter"
                f" {foreign[0]}, {p.name} of shape {tuple(p.data.shape)}; an optimiser made for"
                " another model or before the model was rebuilt?)")
    elif twice:
        what = f"it holds {where[id(twice[0])]} {counts[id(twice[0])]} times"
    elif missing:
        what = (f"it does not update {len(missing)} of them, the first {where[id(missing[0])]}"
                " (only what it holds is trained)")
    else:
        first = next(i for i, (p, q) in enumerate(zip(theirs, mine)) if p is not q)
        what = (f"it holds them in another order (at position {first}: {where[id(theirs[first])]},"
                f" where the model has {where[id(mine[first])]})")
    raise ValueError(f"optimizer: its parameters are not exactly this model's: {what}; it has"
                     f" {len(theirs)} parameters, the model {len(mine)}; create it with"
                     f" pc.{type(optimizer).__name__}(model.parameters(), ...)")
