"""The tutorial's worked example: a 6×6 image, one 3×3 filter, ReLU, zero padding, max pooling.

Used by ``polycnn demo`` and the tests, on every backend, so the numbers a reader checks by hand
are the numbers each backend computes.
"""

from __future__ import annotations

import numpy as np

IMAGE = np.array(
    [
        [255, 255, 255, 255, 255, 255],
        [255, 255, 100, 255, 255, 255],
        [255, 100, 100, 100, 255, 255],
        [100, 100, 100, 100, 100, 255],
        [255, 255, 255, 255, 255, 255],
        [255, 255, 255, 255, 255, 255],
    ],
    dtype=np.float32,
)

KERNEL = np.array([[1, -1, 1], [-1, 0, -1], [1, -1, 1]], dtype=np.float32)


def worked_example(backend) -> dict:
    """Run every step on ``backend``; returns the host matrices by step name."""
    be = backend
    x = be.asarray(IMAGE[None, None])
    w = be.asarray(KERNEL[None, None])
    conv, _ = be.conv2d_forward(x, w, None, stride=1, padding="valid")
    relu, _ = be.relu_forward(conv)
    # the tutorial pads the 4×4 map back to 6×6 with a border of zeros: a 1×1 identity
    # convolution with padding 1 does exactly that, on the backend
    padded, _ = be.conv2d_forward(relu, be.asarray(np.ones((1, 1, 1, 1), np.float32)), None,
                                  padding=1)
    pooled, _ = be.maxpool2d_forward(padded, kernel_size=2)
    host = {
        "image": IMAGE,
        "kernel": KERNEL,
        "convolution": conv,
        "relu": relu,
        "padded": padded,
        "maxpool": pooled,
    }
    return {k: be.to_numpy(v).reshape(v.shape[-2:]) for k, v in host.items()}


def format_matrix(m: np.ndarray) -> list[str]:
    """Rows of right-aligned numbers; integers print without a decimal point."""
    m = np.asarray(m)
    as_int = np.all(np.isfinite(m)) and np.all(m == np.round(m))
    cells = [[f"{int(v)}" if as_int else f"{v:.4g}" for v in row] for row in m]
    width = max(len(c) for row in cells for c in row)
    return [" ".join(c.rjust(width) for c in row) for row in cells]


def side_by_side(blocks: list[tuple[str, np.ndarray]], gap: int = 6) -> str:
    """Titled matrices next to each other, top-aligned."""
    rendered = []
    for title, m in blocks:
        rows = format_matrix(m)
        width = max(len(title), *(len(r) for r in rows))
        rendered.append([title.ljust(width), "-" * width] + [r.ljust(width) for r in rows])
    height = max(len(r) for r in rendered)
    lines = []
    for i in range(height):
        parts = [r[i] if i < len(r) else " " * len(r[0]) for r in rendered]
        lines.append((" " * gap).join(parts).rstrip())
    return "\n".join(lines)
