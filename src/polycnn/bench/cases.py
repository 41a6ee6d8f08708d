"""What is measured: the conv and pool layers of notes/perf-baseline.md (a)-(e), the training
models, and :class:`BenchConfig`, the options of one run.

Legend: N batch, C input channels, H×W input, K output channels, R×S kernel.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..geometry import conv_geometry, pool_geometry


def _conv_layer_geometry(layer):
    return conv_geometry((layer.N, layer.C, layer.H, layer.W), (layer.K, layer.C, layer.R, layer.S),
                         layer.stride, layer.padding)


@dataclass(frozen=True)
class ConvLayer:
    """A convolution case; its sizes are those of :func:`polycnn.geometry.conv_geometry`
    (:meth:`geometry`)."""

    name: str
    N: int; C: int; H: int; W: int  # noqa: E702 (the input, N×C×H×W)
    K: int; R: int; S: int  # noqa: E702 (the weight, K×C×R×S)
    stride: int = 1
    padding: int = 0

    kind = "conv"

    def describe(self) -> str:
        text = f"N{self.N} C{self.C} {self.H}x{self.W} K{self.K} {self.R}x{self.S}"
        if self.padding:
            text += f" pad {self.padding}"
        if self.stride != 1:
            text += f" stride {self.stride}"
        return text

    def geometry(self):
        return _conv_layer_geometry(self)

    def flops(self, pass_: str) -> int:
        """Forward: 2·N·K·P·Q·C·R·S. Forward+backward adds dx and dw, each as many again."""
        forward = self.geometry().flops
        return forward if pass_ == "fwd" else 3 * forward


@dataclass(frozen=True)
class PoolLayer:
    name: str
    N: int
    C: int
    H: int
    W: int
    kernel: int = 2

    kind = "maxpool"

    def describe(self) -> str:
        return f"N{self.N} C{self.C} {self.H}x{self.W} max {self.kernel}x{self.kernel}"

    def geometry(self):
        return pool_geometry((self.N, self.C, self.H, self.W), self.kernel)

    def flops(self, pass_: str):
        return None  # comparisons, not FLOPs: no GFLOP/s for pools


#: the layers of notes/perf-baseline.md
LAYERS = {
    "a": ConvLayer("a", 64, 1, 28, 28, 6, 3, 3, stride=1, padding=1),
    "b": ConvLayer("b", 64, 32, 32, 32, 64, 3, 3, stride=1, padding=1),
    "c": ConvLayer("c", 32, 64, 56, 56, 64, 3, 3, stride=1, padding=1),
    "d": ConvLayer("d", 64, 3, 64, 64, 16, 5, 5, stride=1, padding=2),
    "e": ConvLayer("e", 64, 32, 32, 32, 64, 3, 3, stride=2, padding=1),
    "pool": PoolLayer("pool", 64, 64, 32, 32, kernel=2),
}

PASSES = ("fwd", "fwd+bwd")

#: backends that are never picked by default: slow emulators, run only when named
EXCLUDED_BY_DEFAULT = {"cupy-emu": "a slow CPU emulator of CUDA; name it with --backends to run it"}

TORCH_HINT = "pip install torch to compare with PyTorch CPU"


@dataclass(frozen=True)
class TrainModel:
    name: str
    input_shape: tuple   # (C, H, W)
    batch: int
    classes: int
    describe: str


TRAIN_MODELS = {
    "lenet5": TrainModel("lenet5", (1, 28, 28), 64, 10,
                         "conv 1-6 5x5 pad 2, pool, conv 6-16 5x5, pool, fc 400-120-84-10"),
    "shapes": TrainModel("shapes", (3, 64, 64), 32, 3,
                         "conv 3-16 3x3, pool, conv 16-32 3x3, pool, dropout 0.5, fc 8192-3"),
}


@dataclass
class BenchConfig:
    """What :func:`run` measures. ``backends=None`` means every available backend except those
    in :data:`EXCLUDED_BY_DEFAULT`; naming a backend explicitly always includes it."""

    backends: list | None = None
    layers: list | None = None
    rounds: int = 7
    ops: bool = True
    torch: bool = True
    training: bool = True
    startup: bool = True
    quick: bool = False
    #: each round times back-to-back calls for at least this long
    min_round_s: float = 0.05
    #: conv, pool and training batch sizes are divided by this (``--quick`` uses 8)
    batch_divisor: int = 1
    #: SGD steps (batches) in each timed training epoch
    train_steps: int = 8
    #: numpy.matmul size for the machine's peak, and how many timed repeats (best counts)
    matmul_n: int = 4096
    matmul_repeats: int = 3
    #: torch.set_num_threads for the comparison (default: the usable cores, which is what the
    #: CPU backends use unless told otherwise). NOTE: the backends' thread pools read their
    #: environment variables once, when they load: ``polycnn bench --threads N`` therefore runs
    #: in a child process with them set (:func:`child_env`) and passes N here.
    threads: int | None = None
    #: where PyTorch runs: "cpu", or "cuda" to compare a GPU backend with cuDNN
    device: str = "cpu"
    #: the convolutions' precision, on every engine: "float32", or "tf32" (tensor cores; CUDA
    #: backends, and PyTorch with cuDNN's allow_tf32)
    precision: str = "float32"
    #: training models to run (default: every one of :data:`TRAIN_MODELS`)
    models: list | None = None
    #: the training batch, instead of each model's own (before ``batch_divisor``)
    train_batch: int | None = None
    #: also train each CUDA backend's model as a captured CUDA graph (pc.CapturedStep)
    graph: bool = False
    #: compare each engine's forward with PyTorch's on the inputs timed (``rel err`` column)
    check: bool = False

    @classmethod
    def quick_defaults(cls, **overrides):
        base = dict(rounds=3, quick=True, min_round_s=0.01, batch_divisor=8, train_steps=2,
                    matmul_n=2048, matmul_repeats=2, startup=False)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def _select(names: list[str] | None, table: dict, option: str, what: str) -> list:
    """The entries of ``table`` named (all without names), in the order named, without
    repeats; an unknown name raises ValueError listing the known ones."""
    if names is None:
        return list(table.values())
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"{option}: unknown {what} {', '.join(map(repr, unknown))}; known"
                         f" {what}s: {', '.join(table)}")
    return [table[n] for n in dict.fromkeys(names)]


def select_layers(names: list[str] | None) -> list:
    return _select(names, LAYERS, "--layers", "layer")


def select_models(names: list[str] | None) -> list:
    return _select(names, TRAIN_MODELS, "--models", "model")


def scaled(layer, divisor: int):
    """``layer`` with its batch divided by ``divisor`` (at least 1)."""
    if divisor <= 1:
        return layer
    return dataclasses.replace(layer, N=max(1, layer.N // divisor))


def conv_arrays(layer, rng):
    """Random float32 input, weight (scaled by 1/sqrt(fan-in)) and output gradient of a conv
    case, with its geometry."""
    g = layer.geometry()
    x = rng.standard_normal(g.x_shape, dtype=np.float32)
    w = (rng.standard_normal(g.w_shape, dtype=np.float32) / math.sqrt(layer.C * layer.R * layer.S))
    dy = rng.standard_normal(g.y_shape, dtype=np.float32)
    return g, x, w, dy


def case_data(layer, seed: int) -> dict:
    """The arrays of one op case: x and dy, and w for a convolution."""
    rng = np.random.default_rng(seed)
    g = layer.geometry()
    data = {"x": rng.standard_normal(g.x_shape, dtype=np.float32),
            "dy": rng.standard_normal(g.y_shape, dtype=np.float32)}
    if layer.kind == "conv":
        data["w"] = rng.standard_normal(g.w_shape, dtype=np.float32) / math.sqrt(
            layer.C * layer.R * layer.S)
    return data
