"""Pictures of what a network learned, written as PNG files with matplotlib (Agg, no display).

- :func:`plot_filters`: the first convolution's filters, one tile per filter (RGB when the
  layer reads three channels, else one tile per filter and input channel);
- :func:`plot_feature_maps`: the maps after every convolution, ReLU and pooling layer for one
  input, one figure per layer, with the input beside them (the tutorial's pictures);
- :func:`plot_history`: loss and accuracy per epoch, training and validation;
- :func:`plot_confusion`: a confusion matrix with the counts in the cells;
- :func:`plot_worked_example`: the tutorial's 6x6 example as annotated heat maps.

Every figure has a fixed size in pixels (``SIZES``), whatever it shows, so a caller knows what
it gets. matplotlib is an optional dependency (``pip install 'polycnn[viz]'``); without it every
function raises :class:`VizUnavailable`.
"""

from __future__ import annotations

import math
import os

import numpy as np

DPI = 100
#: (width, height) in pixels of each kind of figure
SIZES = {
    "filters": (900, 900),
    "feature_maps": (1200, 800),
    "history": (1200, 500),
    "confusion": (800, 700),
    "worked_example": (1500, 900),
}
#: at most this many maps are drawn per layer (the first ones)
MAX_MAPS = 32


class VizUnavailable(ValueError):
    """matplotlib is not installed."""


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise VizUnavailable("pictures need matplotlib: pip install 'polycnn[viz]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _figure(kind: str):
    plt = pyplot()
    w, h = SIZES[kind]
    return plt, plt.figure(figsize=(w / DPI, h / DPI), dpi=DPI)


def _save(plt, fig, path) -> str:
    """``fig`` as a PNG at ``path``, written whole or not at all (``replaced_atomically``: a
    failed or killed write leaves the old picture); the figure is closed either way."""
    from ._files import replaced_atomically

    try:
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with replaced_atomically(path) as f:
            # NOTE: no bbox_inches="tight": it would change the pixel size from figure to figure
            fig.savefig(f, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return path


def _grid(n: int, aspect: float = 1.0) -> tuple[int, int]:
    """Rows and columns for ``n`` tiles in a frame of width/height ``aspect``."""
    cols = max(1, math.ceil(math.sqrt(n * aspect)))
    return math.ceil(n / cols), cols


def _first_conv(model):
    from .layers import Conv2d

    for i, layer in enumerate(model.layers):
        if isinstance(layer, Conv2d):
            return i, layer
    raise ValueError("the model has no Conv2d layer, so there are no filters to draw")


def _host(model, array) -> np.ndarray:
    return np.asarray(model.backend.to_numpy(array), dtype=np.float64)


def plot_filters(model, path) -> str:
    """The first Conv2d's weights. Three input channels: one RGB tile per filter, each scaled
    to 0..1 on its own (grey = 0 after scaling shows the sign pattern). Otherwise one tile per
    filter and input channel on a shared blue-white-red scale centred on 0."""
    index, conv = _first_conv(model)
    w = _host(model, conv._params["weight"].data)            # (K, C, R, S)
    K, C, R, S = w.shape
    plt, fig = _figure("filters")
    if C == 3:
        rows, cols = _grid(K)
        fig.suptitle(f"layer {index}: {K} filters of {conv!r} (RGB, each scaled to its own range)",
                     fontsize=12)
        for k in range(K):
            ax = fig.add_subplot(rows, cols, k + 1)
            tile = w[k].transpose(1, 2, 0)
            span = np.abs(tile).max() or 1.0
            ax.imshow(0.5 + 0.5 * tile / span, interpolation="nearest")
            ax.set_title(f"filter {k}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    else:
        shown = min(C, 8)
        tiles = [(k, c) for k in range(K) for c in range(shown)]
        rows, cols = (_grid(K) if C == 1 else (K, shown))
        limit = np.abs(w).max() or 1.0
        what = "" if C == 1 else f", input channels 0-{shown - 1} of {C} across"
        fig.suptitle(f"layer {index}: {K} filters of {conv!r}{what}", fontsize=12)
        image = None
        for t, (k, c) in enumerate(tiles):
            ax = fig.add_subplot(rows, cols, t + 1)
            image = ax.imshow(w[k, c], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            ax.set_title(f"filter {k}" if C == 1 else f"f{k} ch{c}", fontsize=7)
            ax.set_xticks([]), ax.set_yticks([])
        fig.colorbar(image, ax=fig.axes, shrink=0.6, label="weight")
    return _save(plt, fig, path)


def _show_input(ax, x: np.ndarray, title: str):
    """One input image (C, H, W) on ``ax``: RGB for three channels, grey otherwise."""
    lo, hi = float(x.min()), float(x.max())
    scaled = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if x.shape[0] == 3:
        ax.imshow(scaled.transpose(1, 2, 0), interpolation="nearest")
    else:
        ax.imshow(scaled[0], cmap="gray", interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])


def feature_maps(model, x) -> list[tuple[int, object, np.ndarray]]:
    """Run one input ``x`` (C, H, W) through ``model`` in eval mode; returns
    ``(layer index, layer, host maps (C', H', W'))`` after every convolution, ReLU and pooling
    layer that still produces images."""
    from .layers import AvgPool2d, Conv2d, LeakyReLU, MaxPool2d, ReLU

    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"the input must be one image (C, H, W), got shape {x.shape}")
    model.output_shape(x.shape)  # raises naming the layer if the image does not fit
    was_training = model.training
    model.eval()
    out = []
    try:
        y = model.to_backend(np.ascontiguousarray(x[None], dtype=model.dtype))
        for i, layer in enumerate(model.layers):
            y = layer.forward(y)
            if isinstance(layer, (Conv2d, ReLU, LeakyReLU, MaxPool2d, AvgPool2d)) and y.ndim == 4:
                out.append((i, layer, _host(model, y)[0]))
    finally:
        model.train(was_training)
    return out


def plot_feature_maps(model, x, out_dir, label: str | None = None,
                      prefix: str = "feature_maps") -> list[str]:
    """One PNG per convolution / ReLU / pooling layer: the input image on the left, then the
    layer's maps (the first ``MAX_MAPS``) on one colour scale per layer. ``label`` (e.g. the
    true class and the prediction) goes into each title. Returns the paths."""
    x = np.asarray(x)
    maps = feature_maps(model, x)
    paths = []
    for step, (i, layer, m) in enumerate(maps, 1):
        n = min(m.shape[0], MAX_MAPS)
        plt, fig = _figure("feature_maps")
        rows, cols = _grid(n, aspect=1.2)
        outer = fig.add_gridspec(1, 2, width_ratios=[1, 3.2], left=0.02, right=0.9, top=0.86,
                                 bottom=0.03, wspace=0.08)
        _show_input(fig.add_subplot(outer[0]), x, f"input {x.shape[0]}x{x.shape[1]}x{x.shape[2]}")
        inner = outer[1].subgridspec(rows, cols, wspace=0.08, hspace=0.3)
        lo, hi = float(m[:n].min()), float(m[:n].max())
        if hi <= lo:
            hi = lo + 1.0
        image = None
        for c in range(n):
            ax = fig.add_subplot(inner[c // cols, c % cols])
            image = ax.imshow(m[c], cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(f"map {c}", fontsize=7, pad=2)
            ax.set_xticks([]), ax.set_yticks([])
        cax = fig.add_axes([0.92, 0.1, 0.015, 0.7])
        fig.colorbar(image, cax=cax, label="activation")
        shown = "" if n == m.shape[0] else f" (first {n} of {m.shape[0]} maps)"
        fig.suptitle(f"after layer {i}: {layer!r} -> {m.shape[0]}x{m.shape[1]}x{m.shape[2]}{shown}"
                     + (f"\n{label}" if label else ""), fontsize=12)
        name = f"{prefix}_{step:02d}_layer{i}_{type(layer).__name__.lower()}.png"
        paths.append(_save(plt, fig, os.path.join(os.fspath(out_dir), name)))
    return paths


def plot_history(history: dict, path, title: str = "training curves") -> str:
    """Loss and accuracy per epoch, training and (when recorded) validation, with a dotted line
    at the epoch of the lowest validation loss (the one ``polycnn train`` keeps in .best.npz)."""
    epochs = np.asarray(history.get("epoch") or [], dtype=float)
    if epochs.size == 0:
        raise ValueError("the history is empty: no finished epoch to draw")
    val_loss = np.asarray([np.nan if v is None else v for v in history.get("val_loss", [])], float)
    best = None
    if val_loss.size == epochs.size and np.isfinite(val_loss).any():
        best = int(epochs[int(np.nanargmin(val_loss))])
    plt, fig = _figure("history")
    fig.suptitle(title, fontsize=13)
    for j, (key, name) in enumerate((("loss", "loss (cross-entropy)"), ("accuracy", "accuracy"))):
        ax = fig.add_subplot(1, 2, j + 1)
        for prefix, label, style in (("", "training", "o-"), ("val_", "validation", "s--")):
            values = np.asarray([np.nan if v is None else v for v in history.get(prefix + key, [])],
                                dtype=float)
            if values.size == epochs.size and np.isfinite(values).any():
                ax.plot(epochs, values * (100 if key == "accuracy" else 1), style, label=label,
                        linewidth=2, markersize=5)
        if best is not None:
            ax.axvline(best, color="gray", linestyle=":", linewidth=1.5,
                       label=f"lowest validation loss (epoch {best})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name + (" (%)" if key == "accuracy" else ""))
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if epochs.size == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        ax.legend()
    fig.subplots_adjust(left=0.07, right=0.98, wspace=0.25, top=0.86, bottom=0.12)
    return _save(plt, fig, path)


def plot_confusion(confusion, classes, path, title: str = "confusion matrix") -> str:
    """Counts with true classes as rows and predictions as columns; the colour is the share of
    each true class, so rare classes are as readable as common ones."""
    m = np.asarray(confusion, dtype=np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(classes):
        raise ValueError(f"confusion matrix of shape {m.shape} does not match {len(classes)} classes")
    totals = m.sum(axis=1, keepdims=True)
    share = np.divide(m, totals, out=np.zeros(m.shape), where=totals > 0)
    plt, fig = _figure("confusion")
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    n = len(classes)
    size = 12 if n <= 5 else 9 if n <= 10 else 6
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{m[i, j]}", ha="center", va="center", fontsize=size,
                    color="white" if share[i, j] > 0.5 else "black")
    tilt = n > 5 and max(len(str(c)) for c in classes) > 3
    ax.set_xticks(range(n), [str(c) for c in classes], rotation=45 if tilt else 0,
                  ha="right" if tilt else "center")
    ax.set_yticks(range(n), [str(c) for c in classes])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    acc = np.trace(m) / max(1, m.sum())
    ax.set_title(f"{title}: accuracy {acc:.1%} on {m.sum():,} images")
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.subplots_adjust(left=0.16, right=0.95, top=0.92, bottom=0.14)
    return _save(plt, fig, path)


def plot_worked_example(steps: dict, path, backend_name: str = "") -> str:
    """The tutorial's worked example (``polycnn.tutorial.worked_example``): every matrix as a
    heat map with its numbers in the cells."""
    panels = [("image", "6x6 input image (255 = white)", "gray"),
              ("kernel", "3x3 filter", "RdBu_r"),
              ("convolution", "valid convolution (4x4)", "RdBu_r"),
              ("relu", "after ReLU", "viridis"),
              ("padded", "zero-padded back to 6x6", "viridis"),
              ("maxpool", "2x2 max pooling, stride 2 (3x3)", "viridis")]
    plt, fig = _figure("worked_example")
    for k, (key, title, cmap) in enumerate(panels):
        m = np.asarray(steps[key], dtype=np.float64)
        ax = fig.add_subplot(2, 3, k + 1)
        if cmap == "RdBu_r":
            limit = np.abs(m).max() or 1.0
            vmin, vmax = -limit, limit
        else:
            vmin, vmax = (0.0, 255.0) if key == "image" else (0.0, max(1.0, m.max()))
        ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax)
        for (i, j), v in np.ndenumerate(m):
            frac = (v - vmin) / (vmax - vmin)
            dark = frac < 0.5 if cmap in ("gray", "viridis") else abs(frac - 0.5) > 0.3
            ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=11 if m.shape[0] <= 4 else 10,
                    color="white" if dark else "black")
        ax.set_xticks(range(m.shape[1])), ax.set_yticks(range(m.shape[0]))
        ax.set_title(title, fontsize=12)
    if "padded" in steps:
        # the window whose maximum the tutorial works out by hand: [[0, 0], [0, 155]] -> 155
        from matplotlib.patches import Rectangle

        fig.axes[4].add_patch(Rectangle((-0.5, -0.5), 2, 2, fill=False, edgecolor="red", linewidth=3))
        fig.axes[5].add_patch(Rectangle((-0.5, -0.5), 1, 1, fill=False, edgecolor="red", linewidth=3))
    on = f" (computed by the {backend_name!r} backend)" if backend_name else ""
    fig.suptitle(f"The tutorial's worked example{on}: convolution, ReLU, padding, max pooling",
                 fontsize=14)
    fig.subplots_adjust(left=0.04, right=0.98, top=0.9, bottom=0.05, wspace=0.2, hspace=0.3)
    return _save(plt, fig, path)


__all__ = ["plot_filters", "plot_feature_maps", "feature_maps", "plot_history", "plot_confusion",
           "plot_worked_example", "VizUnavailable", "SIZES", "pyplot"]
