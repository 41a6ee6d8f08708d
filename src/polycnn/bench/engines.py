"""Engines: what runs one case. A :class:`BackendEngine` per polycnn backend, a
:class:`TorchEngine` for PyTorch on a device of its choice (the CPU, or a CUDA GPU with cuDNN),
and :func:`measure_ops`, which times the conv and pool cases on all of them in turns."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .cases import PASSES, BenchConfig, case_data, scaled
from .timing import interleaved

#: the conv2d precisions an engine can be asked for
PRECISIONS = ("float32", "tf32")


def _import_torch():
    try:
        import torch
    except (ImportError, OSError):  # OSError: installed, but a shared library fails to load
        return None
    return torch


class BackendEngine:
    """Runs the benchmark cases on one polycnn backend; ``precision="tf32"`` computes every
    convolution on tensor cores (a backend whose ``precisions`` name it)."""

    is_torch = False

    def __init__(self, backend, precision: str = "float32"):
        self.backend = backend
        self.name = backend.name
        self.is_device = bool(getattr(backend, "is_device", False))
        # NOTE: only a non-default precision is passed on, so any backend runs float32
        self.conv_options = {} if precision == "float32" else {"precision": precision}

    def sync(self):
        self.backend.synchronize()

    def output(self, result):
        """A forward's output, as a numpy array (the ``(y, ctx)`` of a backend op)."""
        return self.backend.to_numpy(result[0])

    def op(self, layer, pass_: str, data: dict) -> Callable:
        be = self.backend
        x = be.asarray(data["x"])
        dy = be.asarray(data["dy"])
        if layer.kind == "conv":
            w = be.asarray(data["w"])
            options = dict(stride=layer.stride, padding=layer.padding, **self.conv_options)

            def forward():
                return be.conv2d_forward(x, w, None, **options)

            def forward_backward():
                _, ctx = be.conv2d_forward(x, w, None, **options)
                return be.conv2d_backward(dy, ctx)
        else:
            kernel = layer.kernel

            def forward():
                return be.maxpool2d_forward(x, kernel)

            def forward_backward():
                _, ctx = be.maxpool2d_forward(x, kernel)
                return be.maxpool2d_backward(dy, ctx)

        return forward if pass_ == "fwd" else forward_backward


class TorchEngine:
    """The same cases in PyTorch, on ``device`` ("cpu", or "cuda" for cuDNN). The forward runs
    without autograd (what inference costs); forward+backward asks autograd for the gradients
    of the input and the weight only. ``precision="tf32"`` lets cuDNN and cuBLAS use TF32
    tensor cores; "float32" forbids it (PyTorch allows it in cuDNN convolutions by default)."""

    is_torch = True
    name = "torch"

    def __init__(self, torch_module, threads: int, device: str = "cpu",
                 precision: str = "float32"):
        self.torch = torch_module
        self.device = torch_module.device(device)
        self.is_device = self.device.type != "cpu"
        torch_module.set_num_threads(threads)
        if self.is_device:
            tf32 = precision == "tf32"
            torch_module.backends.cudnn.allow_tf32 = tf32
            torch_module.backends.cuda.matmul.allow_tf32 = tf32
            torch_module.backends.cudnn.benchmark = True

    def sync(self):
        if self.is_device:
            self.torch.cuda.synchronize(self.device)

    def output(self, result):
        """A forward's output, as a numpy array."""
        return result.detach().cpu().numpy()

    def tensor(self, array):
        """A numpy array on this engine's device."""
        return self.torch.from_numpy(array).to(self.device)

    def op(self, layer, pass_: str, data: dict) -> Callable:
        torch = self.torch
        F = torch.nn.functional
        x, dy = self.tensor(data["x"]), self.tensor(data["dy"])
        if layer.kind == "conv":
            w = self.tensor(data["w"])
            stride, padding = layer.stride, layer.padding
            if pass_ == "fwd":
                return lambda: F.conv2d(x, w, None, stride, padding)
            xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()

            def forward_backward():
                y = F.conv2d(xg, wg, None, stride, padding)
                return torch.autograd.grad(y, (xg, wg), dy)
            return forward_backward
        kernel = layer.kernel
        if pass_ == "fwd":
            return lambda: F.max_pool2d(x, kernel)
        xg = x.clone().requires_grad_()

        def pool_forward_backward():
            y = F.max_pool2d(xg, kernel)
            return torch.autograd.grad(y, (xg,), dy)
        return pool_forward_backward


def _op_row(layer, pass_: str, engine, seconds: float, calls: int, torch_s, rounds: int) -> dict:
    flops = layer.flops(pass_)
    return {
        "layer": layer.name, "op": layer.kind, "shape": layer.describe(),
        "pass": pass_, "engine": engine.name, "ms": seconds * 1e3,
        "gflops": flops / seconds / 1e9 if flops else None,
        "peak_fraction": None, "fma_fraction": None, "device": engine.is_device,
        "time_vs_torch": seconds / torch_s if torch_s else None,
        "rounds": rounds, "calls_per_round": calls,
    }


def errors_vs_torch(engines: list, fns: dict) -> dict:
    """name -> max |y - y_torch| / max |y_torch| of each engine's forward (one more call each),
    so a table of times is a table of right answers too; empty without a PyTorch engine."""
    torch = next((e for e in engines if e.is_torch), None)
    if torch is None:
        return {}
    reference = torch.output(fns[torch.name]())
    scale = max(float(np.abs(reference).max()), 1e-30)
    return {e.name: float(np.abs(e.output(fns[e.name]()) - reference).max()) / scale
            for e in engines if not e.is_torch}


def measure_ops(engines: list, layers: list, config: BenchConfig,
                progress: Callable = lambda msg: None) -> list[dict]:
    """One row per layer, pass and engine; ``peak_fraction`` is filled in by
    :func:`add_peak_fractions` once the peak is known."""
    rows = []
    for index, base_layer in enumerate(layers):
        layer = scaled(base_layer, config.batch_divisor)
        data = case_data(layer, seed=index)
        for pass_ in PASSES:
            progress(f"layer {layer.name} {pass_}: {layer.describe()}")
            fns = {e.name: e.op(layer, pass_, data) for e in engines}
            syncs = {e.name: e.sync for e in engines}
            timed = interleaved(fns, syncs, config.rounds, config.min_round_s)
            torch_s = timed["torch"][0] if "torch" in timed else None
            errors = errors_vs_torch(engines, fns) if config.check and pass_ == "fwd" else {}
            for e in engines:
                seconds, calls = timed[e.name]
                rows.append(_op_row(layer, pass_, e, seconds, calls, torch_s, config.rounds))
                if e.name in errors:
                    rows[-1]["rel_err_vs_torch"] = errors[e.name]
            del fns
    return rows


def add_peak_fractions(rows: list[dict], peak_gflops: float) -> None:
    for row in rows:
        # NOTE: the peak is the host CPU's: no fraction for a device backend
        if row["gflops"] and peak_gflops and not row["device"]:
            row["peak_fraction"] = row["gflops"] / peak_gflops


def add_fma_fractions(rows: list[dict], fma_gflops: float | None) -> None:
    """``fma_fraction``: GFLOP/s over the FMA probe's all-thread peak (host engines only)."""
    for row in rows:
        row["fma_fraction"] = (row["gflops"] / fma_gflops
                               if row["gflops"] and fma_gflops and not row["device"] else None)
