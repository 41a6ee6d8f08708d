"""Measuring polycnn: conv and pool op times, training throughput and start-up time, for every
backend side by side and PyTorch CPU beside them when it is installed.

Everything is a ratio measured in the same run: the machines are shared and noisy, so numbers
from different runs do not compare. Each measurement is the median of several rounds, and the
rounds are interleaved (backend A, backend B, torch, A, B, torch, ...) so a burst of load from
elsewhere hits every engine alike. A round times enough back-to-back calls to last at least
``min_round_s``, so sub-millisecond layers are not timer noise.

Nothing here asserts on a time: these are measurements to read, never tests.

    from polycnn import bench
    result = bench.run(bench.BenchConfig(backends=["numpy"], layers=["a", "pool"]))
    result["ops"]          # one row per layer, pass and engine: ms, GFLOP/s, ratio to torch

``polycnn bench`` prints it as tables (cli/bench.py).

Legend: N batch, C input channels, H×W input, K output channels, R×S kernel.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import available_backends, get_backend
from .backends import _heap
from .errors import BackendUnavailable
from .geometry import conv_geometry, pool_geometry

# ---- what is measured ----------------------------------------------------------------------


@dataclass(frozen=True)
class ConvLayer:
    name: str
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
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
        return conv_geometry((self.N, self.C, self.H, self.W), (self.K, self.C, self.R, self.S),
                             self.stride, self.padding)

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

    @classmethod
    def quick_defaults(cls, **overrides):
        base = dict(rounds=3, quick=True, min_round_s=0.01, batch_divisor=8, train_steps=2,
                    matmul_n=2048, matmul_repeats=2, startup=False)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


# ---- environment ---------------------------------------------------------------------------

BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def blas_info() -> list[dict] | None:
    """numpy's BLAS libraries as threadpoolctl sees them (which OpenBLAS kernel runs), or None
    when threadpoolctl is not installed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keep = ("internal_api", "architecture", "version", "num_threads", "threading_layer", "prefix")
    return [{k: info.get(k) for k in keep} for info in threadpool_info()
            if info.get("user_api") == "blas"]


def blas_kernel(blas: list[dict] | None) -> str:
    if blas is None:
        return "unknown (pip install threadpoolctl, or polycnn[bench], to see it)"
    if not blas:
        return "no BLAS library found by threadpoolctl"
    return ", ".join(f"{b['internal_api']} {b.get('version') or ''} {b.get('architecture') or ''}"
                     .replace("  ", " ").strip() for b in blas)


#: the ISA flags (as /proc/cpuinfo names them) that decide which kernels can run fast
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile")


def isa_flags() -> list[str] | None:
    """Which of :data:`ISA_FLAGS` the CPU has (None where /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in ISA_FLAGS if flag in have]
    except OSError:
        pass
    return None


#: LLVM features of Numba's compile target worth printing
TARGET_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512fp16")


def numba_target() -> dict | None:
    """The CPU Numba compiles for in this process: its LLVM name (``NUMBA_CPU_NAME``, or the
    host's as LLVM names it), where name and features came from, the features of
    :data:`TARGET_FEATURES` it has and the vector width the kernels take from them. The name
    picks LLVM's cost model (which loops it vectorises, with which width); the features, the
    instructions it may use. None without numba."""
    try:
        import llvmlite.binding as ll
        from numba.core import config
        from numba.core.codegen import get_host_cpu_features
    except ImportError:
        return None
    host = ll.get_host_cpu_name()
    named = config.CPU_NAME is not None
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    on = {f[1:] for f in features.split(",") if f.startswith("+")}
    return {
        "cpu_name": (config.CPU_NAME or "generic") if named else host,
        "host_cpu_name": host,
        "name_from": "NUMBA_CPU_NAME" if named else "host",
        "features_from": "NUMBA_CPU_FEATURES" if config.CPU_FEATURES is not None else "host",
        "features": [f for f in TARGET_FEATURES if f in on],
        # NOTE: the rule of _numba_kernels._simd_bytes (not imported here: importing the kernel
        # module outside numba_backend._load_kernels would cache it in the wrong folder)
        "vector_bits": 512 if "avx512f" in on else 256,
    }


def describe_target(target: dict | None) -> str:
    if not target:
        return "-"
    source = ("the host's" if target["name_from"] == "host" else "NUMBA_CPU_NAME")
    features = " ".join(target["features"]) or "none of " + " ".join(TARGET_FEATURES)
    if target["features_from"] != "host":
        features += " (NUMBA_CPU_FEATURES)"
    return (f"{target['cpu_name']} ({source}; host {target['host_cpu_name']}), features"
            f" {features}, {target['vector_bits']}-bit kernel vectors")


def environment(threads: int, backend_infos: dict, torch_version) -> dict:
    return {
        "cpu": cpu_model(),
        "isa": isa_flags(),
        "numba_target": numba_target(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "threads": threads,
        "backend_threads": {name: info.get("threads") for name, info in backend_infos.items()},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": _version("numba"),
        "torch": torch_version,
        "blas": blas_info(),
        "blas_env": {name: os.environ.get(name) for name in BLAS_ENV},
        "load_average": load_average(),
        "heap": _heap.describe(),
    }


#: a 1-minute load average from this much on means other work was running before the bench
BUSY_LOAD = 1.0


def load_average():
    """The 1-minute load average: above the core count, other work shared the CPU and every
    ratio in the run is less certain."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# ---- timing --------------------------------------------------------------------------------


def matmul_peak(n: int, repeats: int) -> dict:
    """The machine's practical peak: float32 ``numpy.matmul`` of two n×n matrices, best of
    ``repeats`` (after one untimed call)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"n": n, "repeats": len(times), "best_ms": best * 1e3, "gflops": 2 * n**3 / best / 1e9}


def fma_peak(threads: int, seconds: float = 0.05, repeats: int = 3) -> dict | None:
    """The CPU's float32 FMA peak as a small LLVM-IR kernel measures it (vector FMAs on
    independent registers, see ``_numba_kernels._make_fma_loop``), on one thread and on
    ``threads``; best of ``repeats`` calls of about ``seconds`` each. None without numba or
    with the JIT disabled. The matmul peak is what a BLAS reaches, this is what the FMA units
    can do: ``% FMA`` columns are fractions of the all-thread value."""
    try:
        import numba

        from .backends.numba_backend import _load_kernels
    except ImportError:
        return None
    if numba.config.DISABLE_JIT:
        return None
    k = _load_kernels()
    saved = numba.get_num_threads()
    counts = sorted({1, max(1, min(threads, numba.config.NUMBA_NUM_THREADS))})
    per = {}
    try:
        for count in counts:
            numba.set_num_threads(count)
            out = np.zeros(count, dtype=np.float32)
            k._fma_probe(1000, out)  # compiles
            iters = 20_000
            t0 = time.perf_counter()
            k._fma_probe(iters, out)
            one = max(time.perf_counter() - t0, 1e-6)
            iters = max(1000, int(iters * seconds / one))
            best = math.inf
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                k._fma_probe(iters, out)
                best = min(best, time.perf_counter() - t0)
            per[count] = 2 * iters * k.FMA_ACCS * k.FMA_LANES * count / best / 1e9
    finally:
        numba.set_num_threads(saved)
    return {"lanes": k.FMA_LANES, "accumulators": k.FMA_ACCS, "threads": counts[-1],
            "gflops_1_thread": per[1], "gflops": per[counts[-1]]}


def best_fma(*peaks) -> dict | None:
    """The best of several FMA measurements (None ones skipped), keeping each all-thread value."""
    found = [p for p in peaks if p]
    if not found:
        return None
    best = dict(max(found, key=lambda p: p["gflops"]))
    best["gflops_1_thread"] = max(p["gflops_1_thread"] for p in found)
    best["gflops_each"] = [p["gflops"] for p in found]
    return best


#: the clock every op timing reads (a seam for tests)
_now = time.perf_counter


def _calls_for(fn: Callable, sync: Callable, min_round_s: float) -> int:
    """Run ``fn`` twice untimed (JIT compiles, caches warm), then pick how many calls make a
    round last ``min_round_s``."""
    fn()
    sync()
    t0 = _now()
    fn()
    sync()
    one = max(_now() - t0, 1e-7)
    return max(1, min(10_000, math.ceil(min_round_s / one)))


def _time_round(fn: Callable, sync: Callable, calls: int) -> float:
    t0 = _now()
    for _ in range(calls):
        fn()
    sync()
    return (_now() - t0) / calls


def interleaved(fns: dict, syncs: dict, rounds: int, min_round_s: float) -> dict:
    """name -> (median seconds per call, calls per round), timing the callables in turn
    (A, B, C, A, B, C, ...) for ``rounds`` rounds."""
    calls = {name: _calls_for(fn, syncs[name], min_round_s) for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            samples[name].append(_time_round(fn, syncs[name], calls[name]))
    return {name: (statistics.median(s), calls[name]) for name, s in samples.items()}


# ---- engines: one per backend, and PyTorch ---------------------------------------------------


class BackendEngine:
    """Runs the benchmark cases on one polycnn backend."""

    is_torch = False

    def __init__(self, backend):
        self.backend = backend
        self.name = backend.name
        self.is_device = bool(getattr(backend, "is_device", False))

    def sync(self):
        self.backend.synchronize()

    def op(self, layer, pass_: str, data: dict) -> Callable:
        be = self.backend
        x = be.asarray(data["x"])
        dy = be.asarray(data["dy"])
        if layer.kind == "conv":
            w = be.asarray(data["w"])
            stride, padding = layer.stride, layer.padding

            def forward():
                return be.conv2d_forward(x, w, None, stride=stride, padding=padding)

            def forward_backward():
                _, ctx = be.conv2d_forward(x, w, None, stride=stride, padding=padding)
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
    """The same cases in PyTorch CPU. The forward runs without autograd (what inference costs);
    forward+backward asks autograd for the gradients of the input and the weight only."""

    is_torch = True
    is_device = False
    name = "torch"

    def __init__(self, torch_module, threads: int):
        self.torch = torch_module
        torch_module.set_num_threads(threads)

    def sync(self):
        pass

    def op(self, layer, pass_: str, data: dict) -> Callable:
        torch = self.torch
        F = torch.nn.functional
        x = torch.from_numpy(data["x"])
        dy = torch.from_numpy(data["dy"])
        if layer.kind == "conv":
            w = torch.from_numpy(data["w"])
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


def _scaled(layer, divisor: int):
    if divisor <= 1:
        return layer
    return dataclasses.replace(layer, N=max(1, layer.N // divisor))


def _case_data(layer, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    g = layer.geometry()
    data = {"x": rng.standard_normal(g.x_shape, dtype=np.float32),
            "dy": rng.standard_normal(g.y_shape, dtype=np.float32)}
    if layer.kind == "conv":
        data["w"] = rng.standard_normal(g.w_shape, dtype=np.float32) / math.sqrt(
            layer.C * layer.R * layer.S)
    return data


def measure_ops(engines: list, layers: list, config: BenchConfig,
                progress: Callable = lambda msg: None) -> list[dict]:
    """One row per layer, pass and engine; ``peak_fraction`` is filled in by
    :func:`add_peak_fractions` once the peak is known."""
    rows = []
    for index, base_layer in enumerate(layers):
        layer = _scaled(base_layer, config.batch_divisor)
        data = _case_data(layer, seed=index)
        for pass_ in PASSES:
            progress(f"layer {layer.name} {pass_}: {layer.describe()}")
            fns = {e.name: e.op(layer, pass_, data) for e in engines}
            syncs = {e.name: e.sync for e in engines}
            timed = interleaved(fns, syncs, config.rounds, config.min_round_s)
            flops = layer.flops(pass_)
            torch_s = timed["torch"][0] if "torch" in timed else None
            for e in engines:
                seconds, calls = timed[e.name]
                gflops = flops / seconds / 1e9 if flops else None
                rows.append({
                    "layer": layer.name, "op": layer.kind, "shape": layer.describe(),
                    "pass": pass_, "engine": e.name, "ms": seconds * 1e3,
                    "gflops": gflops,
                    "peak_fraction": None, "fma_fraction": None, "device": e.is_device,
                    "time_vs_torch": seconds / torch_s if torch_s else None,
                    "rounds": config.rounds, "calls_per_round": calls,
                })
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


# ---- training throughput -------------------------------------------------------------------


def _missing_model_api(pc) -> list[str]:
    needed = ("Sequential", "Conv2d", "ReLU", "MaxPool2d", "Dropout2d", "Flatten", "Linear", "SGD")
    return [name for name in needed if not hasattr(pc, name)]


def _polycnn_model(pc, model: TrainModel, backend: str):
    if model.name == "lenet5":
        layers = [pc.Conv2d(1, 6, kernel_size=5, padding=2), pc.ReLU(), pc.MaxPool2d(2),
                  pc.Conv2d(6, 16, kernel_size=5), pc.ReLU(), pc.MaxPool2d(2), pc.Flatten(),
                  pc.Linear(400, 120), pc.ReLU(), pc.Linear(120, 84), pc.ReLU(),
                  pc.Linear(84, 10)]
    else:
        layers = [pc.Conv2d(3, 16, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
                  pc.Conv2d(16, 32, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
                  pc.Dropout2d(0.5), pc.Flatten(), pc.Linear(32 * 16 * 16, 3)]
    return pc.Sequential(*layers, backend=backend, seed=0)


def _torch_model(torch, model: TrainModel):
    nn = torch.nn
    torch.manual_seed(0)
    if model.name == "lenet5":
        return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                             nn.Linear(84, 10))
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Dropout2d(0.5), nn.Flatten(), nn.Linear(32 * 16 * 16, 3))


def _polycnn_trainer(pc, engine: BackendEngine, model: TrainModel, x, y):
    """One call = one epoch of :func:`polycnn.fit` over ``x``: ``len(x) / batch`` SGD steps."""
    net = _polycnn_model(pc, model, engine.name)
    net.train()
    opt = pc.SGD(net.parameters(), lr=0.01, momentum=0.9)
    state = {"epoch": 0}

    def train_steps():
        state["epoch"] += 1
        pc.fit(net, (x, y), epochs=1, batch_size=model.batch, optimizer=opt,
               seed=state["epoch"], **_quiet_kwargs(pc.fit))
    return train_steps


def _quiet_kwargs(fit) -> dict:
    """``verbose=False`` (or the like) when :func:`polycnn.fit` takes it: a benchmark prints its
    own table."""
    import inspect

    try:
        params = inspect.signature(fit).parameters
    except (TypeError, ValueError):
        return {}
    for name in ("verbose", "progress"):
        if name in params:
            return {name: False}
    return {}


def _torch_trainer(torch, model: TrainModel, x, y):
    """The same epoch in PyTorch: shuffle, forward, cross-entropy, backward, SGD step."""
    net = _torch_model(torch, model)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(0)
    batch = model.batch

    def train_steps():
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), batch):
            idx = order[start:start + batch]
            opt.zero_grad(set_to_none=True)
            logits = net(xt[idx])
            loss = loss_fn(logits, yt[idx])
            loss.backward()
            opt.step()
            # the per-batch bookkeeping polycnn.fit does too: the loss and the correct count
            loss.item()
            int((logits.argmax(dim=1) == yt[idx]).sum())
    return train_steps


def measure_training(engines: list, config: BenchConfig, torch_module,
                     progress: Callable = lambda msg: None) -> tuple[list[dict], list[str]]:
    """Images per second of one epoch over ``train_steps`` batches of random images, per engine
    and model; a backend's epoch is :func:`polycnn.fit`, PyTorch's the same loop written out."""
    import polycnn as pc

    missing = _missing_model_api(pc)
    if missing:
        return [], [f"training skipped: polycnn has no {', '.join(missing)} yet (the model stack)"]
    rows, notes = [], []
    for model in TRAIN_MODELS.values():
        if config.batch_divisor > 1:
            model = dataclasses.replace(model, batch=max(1, model.batch // config.batch_divisor))
        progress(f"training {model.name}: {model.describe}, batch {model.batch}")
        rng = np.random.default_rng(1)
        n = model.batch * config.train_steps
        x = rng.random((n, *model.input_shape), dtype=np.float32)  # pixels in [0, 1)
        y = rng.integers(0, model.classes, size=n).astype(np.int64)
        fns, syncs = {}, {}
        for e in engines:
            try:
                if e.is_torch:
                    fns[e.name] = _torch_trainer(torch_module, model, x, y)
                else:
                    fns[e.name] = _polycnn_trainer(pc, e, model, x, y)
            except (TypeError, ValueError, AttributeError, NotImplementedError) as exc:
                notes.append(f"training {model.name} on {e.name} failed to build: {exc}")
                continue
            syncs[e.name] = e.sync
        # two untimed epochs (compilation, warm caches), then one timed epoch per round
        timed = interleaved(fns, syncs, config.rounds, 0.0)
        torch_s = timed["torch"][0] if "torch" in timed else None
        for name, (seconds, _) in timed.items():
            rows.append({
                "model": model.name, "input": "x".join(map(str, model.input_shape)),
                "batch": model.batch, "engine": name, "steps": config.train_steps,
                "images_per_s": n / seconds, "ms_per_step": seconds / config.train_steps * 1e3,
                "speed_vs_torch": torch_s / seconds if torch_s else None,
                "rounds": config.rounds,
            })
    return rows, notes


# ---- start-up time -------------------------------------------------------------------------

_STARTUP_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import polycnn as pc
t1 = time.perf_counter()
be = pc.get_backend(sys.argv[1])
t2 = time.perf_counter()

def step():
    rng = np.random.default_rng(0)
    x = be.asarray(rng.standard_normal((2, 3, 8, 8), dtype=np.float32))
    w = be.asarray(rng.standard_normal((4, 3, 3, 3), dtype=np.float32))
    b = be.asarray(np.zeros(4, dtype=np.float32))
    y, ctx = be.conv2d_forward(x, w, b, stride=1, padding=1)
    be.conv2d_backward(be.asarray(np.ones(tuple(y.shape), dtype=np.float32)), ctx)
    p, pctx = be.maxpool2d_forward(y, 2)
    be.maxpool2d_backward(be.asarray(np.ones(tuple(p.shape), dtype=np.float32)), pctx)
    be.synchronize()

step()
t3 = time.perf_counter()
step()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "get_backend_s": t2 - t1, "first_call_s": t3 - t2,
                  "second_call_s": t4 - t3}))
"""


def _startup_once(name: str, cache_dir: str, timeout: float) -> dict:
    env = dict(os.environ)
    # NOTE: every cache a backend may compile into: Numba's, CuPy's kernel cache and the user's
    # cache folder (where polycnn keeps its own when those are not set); the cold run starts
    # with all of them empty.
    for variable, folder in (("NUMBA_CACHE_DIR", "numba"), ("CUPY_CACHE_DIR", "cupy"),
                             ("XDG_CACHE_HOME", "xdg")):
        env[variable] = os.path.join(cache_dir, folder)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _STARTUP_SCRIPT, name], env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"start-up run of backend {name!r} failed: {last}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    return out


def measure_startup(names: list[str], timeout: float = 300.0,
                    progress: Callable = lambda msg: None) -> tuple[list[dict], list[str]]:
    """Per backend: a fresh interpreter imports polycnn, gets the backend and runs one tiny conv
    fwd+bwd and max pool fwd+bwd, first with an empty compile cache (cold), then again with the
    cache the first run left (warm)."""
    rows, notes = [], []
    for name in names:
        progress(f"start-up time of {name} (cold, then warm)")
        cache_dir = tempfile.mkdtemp(prefix="polycnn-bench-cache-")
        try:
            cold = _startup_once(name, cache_dir, timeout)
            warm = _startup_once(name, cache_dir, timeout)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            notes.append(f"start-up of {name} not measured: {' '.join(str(exc).split())}")
            continue
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
        rows.append({"backend": name, "cold": cold, "warm": warm,
                     "compile_s": cold["first_call_s"] - warm["first_call_s"]})
    return rows, notes


# ---- the whole run -------------------------------------------------------------------------


def select_backends(names: list[str] | None) -> tuple[list[str], list[str]]:
    """The backends to run and notes on the ones skipped. Unknown names raise
    ``BackendUnavailable`` listing the known ones."""
    status = available_backends()
    notes = []
    if names is None:
        chosen = []
        for name, ok in status.items():
            if name in EXCLUDED_BY_DEFAULT:
                notes.append(f"{name} not run: {EXCLUDED_BY_DEFAULT[name]}")
            elif ok is True:
                chosen.append(name)
            else:
                notes.append(f"{name} skipped: {' '.join(str(ok).split())}")
        return chosen, notes
    unknown = [n for n in names if n not in status]
    if unknown:
        raise BackendUnavailable(
            f"--backends: unknown backend {', '.join(map(repr, unknown))}; known backends:"
            f" {', '.join(status)}")
    chosen = []
    for name in dict.fromkeys(names):
        if status[name] is True:
            chosen.append(name)
        else:
            notes.append(f"{name} skipped: {' '.join(str(status[name]).split())}")
    return chosen, notes


def select_layers(names: list[str] | None) -> list:
    if names is None:
        return list(LAYERS.values())
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        raise ValueError(f"--layers: unknown layer {', '.join(map(repr, unknown))}; known layers:"
                         f" {', '.join(LAYERS)}")
    return [LAYERS[n] for n in dict.fromkeys(names)]


def _import_torch():
    try:
        import torch
    except (ImportError, OSError):  # OSError: installed, but a shared library fails to load
        return None
    return torch


def run(config: BenchConfig, progress: Callable = lambda msg: None) -> dict:
    """Measure everything ``config`` asks for; returns the JSON-able dict that ``polycnn bench``
    prints as tables (or as is, with ``--json``)."""
    layers = select_layers(config.layers)
    # NOTE: an empty list (not None) measures PyTorch alone: the child of --isolate that does so
    names, notes = select_backends(config.backends) if config.backends != [] else ([], [])
    if not names and not (config.backends == [] and config.torch):
        raise BackendUnavailable("no backend to benchmark: " + "; ".join(notes))
    threads = config.threads or usable_cores()
    # NOTE: every engine, PyTorch included, runs with the heap setting the CPU backends choose
    # (in --isolate's PyTorch child too), so the comparison is between kernels, not allocators
    _heap.keep_freed_blocks()
    engines = [BackendEngine(get_backend(n)) for n in names]
    torch_module = None
    if config.torch:
        torch_module = _import_torch()
        if torch_module is None:
            notes.append(f"PyTorch is not installed: {TORCH_HINT}")
        else:
            engines.append(TorchEngine(torch_module, threads))
    infos = {e.name: e.backend.info() for e in engines if not e.is_torch}
    env = environment(threads, infos,
                      torch_module.__version__ if torch_module else _version("torch"))
    if torch_module is not None:
        env["backend_threads"]["torch"] = torch_module.get_num_threads()

    peak, fma, ops = None, None, []
    if config.ops:
        # NOTE: measured before and after the ops and the best counts, so a burst of load from
        # elsewhere during one of them does not lower the peak (and inflate every fraction)
        progress(f"numpy.matmul {config.matmul_n}^3 float32 (the machine's peak)"
                 " and the FMA probe")
        before = matmul_peak(config.matmul_n, config.matmul_repeats)
        fma_before = fma_peak(threads, 0.02 if config.quick else 0.05)
        ops = measure_ops(engines, layers, config, progress)
        progress(f"numpy.matmul {config.matmul_n}^3 float32 and the FMA probe again")
        after = matmul_peak(config.matmul_n, config.matmul_repeats)
        fma = best_fma(fma_before, fma_peak(threads, 0.02 if config.quick else 0.05))
        peak = dict(max(before, after, key=lambda m: m["gflops"]),
                    gflops_before=before["gflops"], gflops_after=after["gflops"])
        add_peak_fractions(ops, peak["gflops"])
        add_fma_fractions(ops, fma["gflops"] if fma else None)
    result = {
        "config": {"rounds": config.rounds, "quick": config.quick,
                   "batch_divisor": config.batch_divisor, "min_round_s": config.min_round_s,
                   "train_steps": config.train_steps},
        "environment": env,
        "engines": [e.name for e in engines],
        "matmul": peak,
        "fma": fma,
        "ops": ops,
        "training": [],
        "startup": [],
        "notes": notes,
    }
    if config.training:
        rows, train_notes = measure_training(engines, config, torch_module, progress)
        result["training"] = rows
        notes.extend(train_notes)
    if config.startup:
        rows, start_notes = measure_startup(names, progress=progress)
        result["startup"] = rows
        notes.extend(start_notes)
    env["load_average_end"] = load_average()
    if env["load_average"] is not None and env["load_average"] >= BUSY_LOAD:
        notes.append(
            f"{BUSY_NOTE} {env['load_average']:.1f} on {env['usable_cores']} cores before"
            " the run: other processes shared the CPU, which slows multi-threaded code most;"
            " rerun when the machine is idle, or compare with --threads 1")
    return result


#: set in a child process that runs the benchmark for a parent, so it does not spawn another
CHILD_MARKER = "POLYCNN_BENCH_CHILD"

#: what every thread pool here reads: OpenBLAS, OpenMP (PyTorch, Numba's omp layer), MKL, Numba
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


BUSY_NOTE = "the load average was"


def combine_repeats(parts: list[dict]) -> list[dict]:
    """``--isolate --repeat N``: the results of N children per engine (run alternately) as one
    result per engine, in first-seen order: each case's time (and a training model's images/s)
    is the median over that engine's children, GFLOP/s follows from it; the best matmul peak
    and every note are kept. An engine measured once passes through unchanged."""
    groups: dict[str, list[dict]] = {}
    for part in parts:
        groups.setdefault(part["engines"][0], []).append(part)
    combined = []
    for group in groups.values():
        if len(group) == 1:
            combined.append(group[0])
            continue
        out = copy.deepcopy(group[-1])
        for i, row in enumerate(out["ops"]):
            times = [g["ops"][i]["ms"] for g in group]
            ms = statistics.median(times)
            if row["gflops"]:
                row["gflops"] *= row["ms"] / ms
            row["ms"] = ms
            row["repeats"] = len(group)
        for i, row in enumerate(out["training"]):
            for key in ("images_per_s", "ms_per_step"):
                if key in row:
                    row[key] = statistics.median(g["training"][i][key] for g in group)
            row["repeats"] = len(group)
        peaks = [g["matmul"] for g in group if g["matmul"]]
        out["matmul"] = max(peaks, key=lambda m: m["gflops"]) if peaks else None
        out["fma"] = best_fma(*(g.get("fma") for g in group))
        notes = list(dict.fromkeys(n for g in group for n in g["notes"]))
        busy = [n for n in notes if n.startswith(BUSY_NOTE)]
        out["notes"] = [n for n in notes if not n.startswith(BUSY_NOTE) or n == busy[0]]
        out["config"]["repeats"] = len(group)
        combined.append(out)
    return combined


def merge_isolated(parts: list[dict]) -> dict:
    """One result from the results of ``--isolate``'s children, one engine each (PyTorch's child
    last, when there is one; repeated children combined first, see :func:`combine_repeats`):
    rows side by side, ratios to the PyTorch child's times, peak fractions against the best
    matmul peak any child measured."""
    parts = combine_repeats(parts)
    merged = copy.deepcopy(parts[0])
    merged.pop("child", None)  # each part ran in a child; none of them is "the" child
    for part in parts[1:]:
        merged["ops"] += part["ops"]
        merged["training"] += part["training"]
        merged["engines"] += part["engines"]
        # NOTE: one busy-machine note is enough (each child writes its own, with its own load)
        busy = any(n.startswith(BUSY_NOTE) for n in merged["notes"])
        merged["notes"] += [n for n in part["notes"] if n not in merged["notes"]
                            and not (busy and n.startswith(BUSY_NOTE))]
        merged["environment"]["backend_threads"].update(part["environment"]["backend_threads"])
        for key in ("torch", "load_average_end"):
            merged["environment"][key] = part["environment"].get(key) or merged["environment"][key]
    peaks = [p["matmul"] for p in parts if p["matmul"]]
    merged["matmul"] = max(peaks, key=lambda m: m["gflops"]) if peaks else None
    if merged["matmul"]:
        add_peak_fractions(merged["ops"], merged["matmul"]["gflops"])
    merged["fma"] = best_fma(*(p.get("fma") for p in parts))
    add_fma_fractions(merged["ops"], merged["fma"]["gflops"] if merged["fma"] else None)
    torch_ops = {(r["layer"], r["pass"]): r["ms"] for r in merged["ops"] if r["engine"] == "torch"}
    torch_train = {r["model"]: r["images_per_s"] for r in merged["training"]
                   if r["engine"] == "torch"}
    for r in merged["ops"]:
        torch_ms = torch_ops.get((r["layer"], r["pass"]))
        r["time_vs_torch"] = r["ms"] / torch_ms if torch_ms else None
    for r in merged["training"]:
        torch_ips = torch_train.get(r["model"])
        r["speed_vs_torch"] = r["images_per_s"] / torch_ips if torch_ips else None
    order = {name: i for i, name in enumerate(merged["engines"])}
    layer_order = list(LAYERS)
    merged["ops"].sort(key=lambda r: (layer_order.index(r["layer"]), PASSES.index(r["pass"]),
                                      order[r["engine"]]))
    merged["training"].sort(key=lambda r: (list(TRAIN_MODELS).index(r["model"]),
                                           order[r["engine"]]))
    merged["config"]["isolated"] = True
    return merged


def in_child() -> bool:
    return os.environ.get(CHILD_MARKER) == "1"


def child_env(unset=(), threads: int | None = None, extra: dict | None = None
              ) -> tuple[dict, dict]:
    """The environment for a child run: ``unset`` removed, with ``threads`` every thread
    pool's variable set to it, and ``extra`` set; also what changed, for the report."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    changed = {name: None for name in unset}
    if threads is not None:
        for name in THREAD_ENV:
            env[name] = changed[name] = str(threads)
    for name, value in (extra or {}).items():
        env[name] = changed[name] = value
    env[CHILD_MARKER] = "1"
    return env, changed


def run_in_child(argv: list[str], unset=(), threads: int | None = None,
                 extra: dict | None = None) -> dict:
    """Run ``polycnn <argv> --json`` in a child process whose environment differs from this one
    as :func:`child_env` says (thread counts and BLAS kernel choice are read once, when the
    libraries load, so only a fresh process can change them), and return its result with what
    was changed and which BLAS kernel ran here and there. The child's progress passes through
    on stderr."""
    env, changed = child_env(unset, threads, extra)
    proc = subprocess.run([sys.executable, "-m", "polycnn.cli.main", *argv, "--json"], env=env,
                          stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the benchmark's child process failed with exit code {proc.returncode}")
    result = json.loads(lines[-1])
    result["child"] = {
        "changed": changed,
        "was": {name: os.environ.get(name) for name in changed},
        "kernel_here": blas_kernel(blas_info()),
        "kernel_in_child": blas_kernel(result["environment"]["blas"]),
    }
    return result


# ---- compile targets: every Numba kernel compiled for several CPUs -----------------------------
#
# LLVM picks what to vectorise, and how wide, from the compile target's cost model, so a kernel
# tuned on one CPU family can lose 10x on another with the same instructions (the 2x2 max-pool
# took 8-11 ms compiled for Intel targets, 0.5-1 ms for AMD or generic ones, on one Intel Xeon).
# Each target runs in a child process of its own (Numba fixes the target when it loads) with
# the host's features, so only the cost model differs and every target runs on this CPU.

#: the targets ``polycnn bench --targets`` compares with the host's when none are named: a
#: generic AVX-512 target and AMD's Zen 4 (the kernels were first tuned on AMD machines)
DEFAULT_TARGETS = ("x86-64-v4", "znver4")

#: the host's own target: NUMBA_CPU_NAME unset
HOST_TARGET = "host"

#: a kernel whose time under one target is more than this times its time under another is
#: flagged
TARGET_RATIO = 2.0

#: set in the child process of a target (names the target, for its report)
TARGET_MARKER = "POLYCNN_BENCH_TARGET"


def unknown_cpus(names: list[str]) -> list[str]:
    """The names LLVM does not know as an x86 CPU. LLVM says so only on stderr (and then
    compiles for a generic CPU), so stderr is caught while a target machine is made."""
    import llvmlite.binding as ll

    ll.initialize_native_target()
    target = ll.Target.from_default_triple()
    unknown = []
    for name in names:
        with tempfile.TemporaryFile() as caught:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(caught.fileno(), 2)
            try:
                target.create_target_machine(cpu=name, features="")
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            caught.seek(0)
            if b"not a recognized processor" in caught.read():
                unknown.append(name)
    return unknown


def select_targets(names: list[str] | None) -> list[str]:
    """The targets to compare: ``host`` first, then ``names`` (default
    :data:`DEFAULT_TARGETS`) without repeats. A name that is not an LLVM x86 CPU raises
    ValueError naming it."""
    names = list(DEFAULT_TARGETS) if names is None else names
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", n)]
    if bad:
        raise ValueError(f"--targets: {bad[0]!r} is not a CPU name (letters, digits, '.', '_',"
                         " '-'; e.g. x86-64-v4, znver4, sapphirerapids, host)")
    chosen = list(dict.fromkeys([HOST_TARGET, *names]))
    unknown = unknown_cpus([n for n in chosen if n != HOST_TARGET])
    if unknown:
        raise ValueError(f"--targets: LLVM does not know the CPU {', '.join(map(repr, unknown))}"
                         " (known are e.g. x86-64-v3, x86-64-v4, znver3, znver4, skylake-avx512,"
                         " icelake-server, sapphirerapids; 'host' is this machine's)")
    return chosen


@dataclass(frozen=True)
class KernelCase:
    """One Numba kernel (or a backend step that is one kernel and its set-up) on one shape:
    ``build(backend, rng)`` returns the call to time."""

    name: str
    shape: str
    build: Callable


def _conv_arrays(layer, rng):
    g = layer.geometry()
    x = rng.standard_normal(g.x_shape, dtype=np.float32)
    w = (rng.standard_normal(g.w_shape, dtype=np.float32) / math.sqrt(layer.C * layer.R * layer.S))
    dy = rng.standard_normal(g.y_shape, dtype=np.float32)
    return g, x, w, dy


def _case_pad(layer):
    def build(be, rng):
        g, x, _, _ = _conv_arrays(layer, rng)
        return lambda: be._padded_input(x, g, slack=True)
    return build


def _case_direct_forward(layer):
    def build(be, rng):
        g, x, w, _ = _conv_arrays(layer, rng)
        xp = be._padded_input(x, g, slack=True)
        tab = be._forward_table(g, xp)
        w2 = w.reshape(g.K, -1)
        y = np.empty(g.y_shape, dtype=np.float32)
        none = np.zeros(0, dtype=np.float32)
        phases = [(0, w2.shape[1], 0, 0, g.P, g.Q)]
        return lambda: be._direct(xp, g.N, w2, tab, phases, (1, 1), none, y)
    return build


def _case_data_grad(layer):
    def build(be, rng):
        g, _, w, dy = _conv_arrays(layer, rng)
        return lambda: be._conv_data_grad(dy, w, g)
    return build


def _case_weight_grad(layer):
    def build(be, rng):
        g, x, _, dy = _conv_arrays(layer, rng)
        xp = be._padded_input(x, g, slack=True)
        return lambda: be._conv_weight_grad(x, dy, g, xp)
    return build


def _case_gemm_forward(layer):
    def build(be, rng):
        g, x, w, _ = _conv_arrays(layer, rng)
        assert not be._use_direct(g.K, g.C), "the gather-GEMM case must be a wide layer"
        return lambda: be._conv2d_forward(x, w, None, g)
    return build


def _case_bias_grad(layer):
    def build(be, rng):
        _, _, _, dy = _conv_arrays(layer, rng)
        db = np.empty(layer.K, dtype=np.float32)
        return lambda: be._k._bias_grad(dy, db)
    return build


def _pool_arrays(layer, kernel, stride, padding, rng):
    g = pool_geometry((layer.N, layer.C, layer.H, layer.W), kernel, stride, padding)
    x = rng.standard_normal(g.x_shape, dtype=np.float32)
    dy = rng.standard_normal(g.y_shape, dtype=np.float32)
    geo = np.array([g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w], dtype=np.int64)
    return g, x, dy, geo


def _case_maxpool(layer, kernel, stride, padding, backward, two_by_two):
    def build(be, rng):
        g, x, dy, geo = _pool_arrays(layer, kernel, stride, padding, rng)
        y = np.empty(g.y_shape, dtype=np.float32)
        arg = np.empty(g.y_shape, dtype=np.int32)
        k = be._k
        if two_by_two:
            k._maxpool2x2_fwd(x, y, arg)
            if not backward:
                return lambda: k._maxpool2x2_fwd(x, y, arg)
            dx = np.empty(g.x_shape, dtype=np.float32)
            return lambda: k._maxpool2x2_bwd(dy, arg, dx)
        k._maxpool_fwd(x, geo, y, arg)
        if not backward:
            return lambda: k._maxpool_fwd(x, geo, y, arg)
        dx = np.zeros(g.x_shape, dtype=np.float32)  # accumulates over the calls: harmless
        return lambda: k._maxpool_bwd(dy, arg, dx)
    return build


def _case_avgpool(layer, backward):
    def build(be, rng):
        g, x, dy, geo = _pool_arrays(layer, 2, None, 0, rng)
        scale = np.array([0.25], dtype=np.float32)
        if not backward:
            y = np.empty(g.y_shape, dtype=np.float32)
            return lambda: be._k._avgpool_fwd(x, geo, scale, y)
        dx = np.zeros(g.x_shape, dtype=np.float32)
        return lambda: be._k._avgpool_bwd(dy, geo, scale, dx)
    return build


def _case_relu(size, backward):
    def build(be, rng):
        x = rng.standard_normal(size, dtype=np.float32)
        y = np.empty_like(x)
        if not backward:
            return lambda: be._k._relu_fwd(x, y)
        dy = rng.standard_normal(size, dtype=np.float32)
        return lambda: be._k._relu_bwd(dy, x, y)
    return build


def _case_dropout(size):
    def build(be, rng):
        keep = np.empty(size, dtype=np.bool_)
        u = np.uint64
        return lambda: be._k._dropout_mask(u(12345), u(1 << 23), u(0x9E3779B97F4A7C15),
                                           u(0xBF58476D1CE4E5B9), u(0x94D049BB133111EB), keep)
    return build


def _case_cross_entropy(n, classes):
    def build(be, rng):
        logits = rng.standard_normal((n, classes), dtype=np.float32)
        labels = rng.integers(0, classes, n).astype(np.int64)
        dlogits = np.empty_like(logits)
        return lambda: be._k._cross_entropy(logits, labels, 0.1, dlogits)
    return build


def _case_matmul(m, t, l, transposed):
    def build(be, rng):
        if not transposed:  # C (m, t) = A (m, l) · B (t, l)ᵀ
            a = rng.standard_normal((m, l), dtype=np.float32)
            b = rng.standard_normal((t, l), dtype=np.float32)
            c = np.empty((m, t), dtype=np.float32)
            return lambda: be._k._matmul_nt(a, b, c)
        a = rng.standard_normal((l, m), dtype=np.float32)  # C (m, t) = Aᵀ · B (l, t)
        b = rng.standard_normal((l, t), dtype=np.float32)
        c = np.empty((m, t), dtype=np.float32)
        return lambda: be._k._matmul_tn(a, b, c)
    return build


def kernel_cases(divisor: int = 1) -> list[KernelCase]:
    """Every Numba kernel of the backend on a benchmark-sized float32 case (batch sizes / by
    ``divisor``): the convolution passes on layers b and e of :data:`LAYERS` (and a wide
    layer for the gather GEMM), both max-pools and the average pool on the pool layer, and the
    training glue."""
    b, e, pool = (_scaled(LAYERS[n], divisor) for n in ("b", "e", "pool"))
    wide = ConvLayer("wide", max(1, 16 // divisor), 512, 7, 7, 256, 3, 3, padding=1)
    general = _scaled(PoolLayer("pool3", 64, 64, 32, 32, kernel=3), divisor)
    size = b.N * b.K * b.H * b.W
    rows = max(4, 256 // divisor // 4 * 4)
    return [
        KernelCase("_pad_planes", b.describe(), _case_pad(b)),
        KernelCase("_pad_planes (stride 2, pairs)", e.describe(), _case_pad(e)),
        KernelCase("_direct_conv forward", b.describe(), _case_direct_forward(b)),
        KernelCase("_direct_conv backward-data", b.describe(), _case_data_grad(b)),
        KernelCase("_direct_conv backward-data (4 phases)", e.describe(), _case_data_grad(e)),
        KernelCase("_conv_weight_tiles backward-weight", b.describe(), _case_weight_grad(b)),
        KernelCase("_conv_weight_tiles backward-weight", e.describe(), _case_weight_grad(e)),
        KernelCase("_pad_nhwc + _gather_gemm forward", wide.describe(), _case_gemm_forward(wide)),
        KernelCase("_bias_grad", b.describe(), _case_bias_grad(b)),
        KernelCase("_maxpool2x2_fwd", pool.describe(), _case_maxpool(pool, 2, 2, 0, False, True)),
        KernelCase("_maxpool2x2_bwd", pool.describe(), _case_maxpool(pool, 2, 2, 0, True, True)),
        KernelCase("_maxpool_fwd", general.describe() + " stride 2 pad 1",
                   _case_maxpool(general, 3, 2, 1, False, False)),
        KernelCase("_maxpool_bwd", general.describe() + " stride 2 pad 1",
                   _case_maxpool(general, 3, 2, 1, True, False)),
        KernelCase("_avgpool_fwd", pool.describe().replace("max", "avg"),
                   _case_avgpool(pool, False)),
        KernelCase("_avgpool_bwd", pool.describe().replace("max", "avg"),
                   _case_avgpool(pool, True)),
        KernelCase("_relu_fwd", f"{size} elements", _case_relu(size, False)),
        KernelCase("_relu_bwd", f"{size} elements", _case_relu(size, True)),
        KernelCase("_dropout_mask", f"{size} elements", _case_dropout(size)),
        KernelCase("_cross_entropy", "logits 4096x10", _case_cross_entropy(4096, 10)),
        KernelCase("_matmul_nt (linear forward)", f"{rows}x1024 . (512x1024)T",
                   _case_matmul(rows, 512, 1024, False)),
        KernelCase("_matmul_tn (linear backward)", f"({rows}x512)T . {rows}x1024",
                   _case_matmul(512, 1024, rows, True)),
    ]


class KernelTimer:
    """Every :func:`kernel_cases` case on the numba backend in this process (compiled for this
    process's target), ready to time: built, called once (compilation or a cache load, timed
    apart) and calibrated so that a round of each lasts at least ``min_round_s``."""

    def __init__(self, divisor: int, min_round_s: float, progress: Callable = lambda msg: None):
        be = get_backend("numba")
        self.target = numba_target()
        progress(f"compiling every kernel for {self.target['cpu_name']}")
        rng = np.random.default_rng(0)
        self.cases = kernel_cases(divisor)
        self.fns, self.first, self.calls = [], [], []
        for case in self.cases:
            fn = case.build(be, rng)
            t0 = time.perf_counter()
            fn()
            self.first.append(time.perf_counter() - t0)
            self.calls.append(_calls_for(fn, lambda: None, min_round_s))
            self.fns.append(fn)
        self.header = {
            "target": self.target,
            "target_label": os.environ.get(TARGET_MARKER, HOST_TARGET),
            "environment": {"cpu": cpu_model(), "isa": isa_flags(), "blas": blas_info(),
                            "threads": be.threads, "load_average": load_average()},
            "kernels": [{"kernel": c.name, "shape": c.shape, "calls_per_round": n,
                         "first_call_s": f} for c, n, f in zip(self.cases, self.calls, self.first)],
            "compile_s": sum(self.first),
            "config": {"divisor": divisor, "min_round_s": min_round_s},
        }

    def round(self) -> list[float]:
        """Seconds per call of every case, one round each, in order."""
        return [_time_round(fn, lambda: None, calls) for fn, calls in zip(self.fns, self.calls)]


def serve_kernels(divisor: int, min_round_s: float, lines, write: Callable,
                  progress: Callable = lambda msg: None) -> None:
    """The child process of one target (``polycnn bench --kernels-only``): a JSON line with
    :class:`KernelTimer`'s header once the kernels are compiled, then for each ``round`` line
    read from ``lines`` one JSON line ``{"seconds": [...]}``; it ends at the end of input."""
    timer = KernelTimer(divisor, min_round_s, progress)
    write(json.dumps(timer.header))
    for line in lines:
        if line.strip() == "round":
            write(json.dumps({"seconds": timer.round()}))


def target_env(name: str, cache_dir: str, threads: int | None = None) -> dict:
    """The environment of target ``name``'s child: NUMBA_CPU_NAME = ``name`` (unset for the
    host's), always the host's features (so the code runs here and only LLVM's cost model
    changes), a compile cache of its own and, with ``threads``, every thread pool limited."""
    extra = {"NUMBA_CACHE_DIR": cache_dir, TARGET_MARKER: name}
    if name != HOST_TARGET:
        extra["NUMBA_CPU_NAME"] = name
    unset = ("NUMBA_CPU_FEATURES",) + (("NUMBA_CPU_NAME",) if name == HOST_TARGET else ())
    return child_env(unset, threads, extra)[0]


class _TargetChild:
    """One target's child process, driven a round at a time through its stdin."""

    def __init__(self, name: str, argv: list[str], env: dict):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-m", "polycnn.cli.main", *argv], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.header = self._read()

    def _read(self) -> dict:
        """The child's next JSON line (anything else a library printed is skipped)."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                raise RuntimeError(f"the child process of target {self.name!r} ended (exit"
                                   f" code {code}) before its kernels were timed")
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    pass

    def round(self) -> list[float]:
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return self._read()["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def compare_targets(headers: list[dict], samples: dict) -> dict:
    """One result from each target's header and its per-round samples (target label -> list of
    rounds, each a list of seconds per case): per kernel its median time under every target,
    the ratio of the slowest to the fastest, and whether that exceeds :data:`TARGET_RATIO`."""
    first = headers[0]
    kernels = []
    for i, row in enumerate(first["kernels"]):
        ms = {h["target_label"]: statistics.median(r[i] for r in samples[h["target_label"]]) * 1e3
              for h in headers}
        slow = max(ms, key=ms.get)
        fast = min(ms, key=ms.get)
        ratio = ms[slow] / ms[fast] if ms[fast] > 0 else math.inf
        kernels.append({"kernel": row["kernel"], "shape": row["shape"], "ms": ms,
                        "ratio": ratio, "slowest": slow, "fastest": fast,
                        "flagged": ratio > TARGET_RATIO})
    rounds = min(len(v) for v in samples.values())
    return {
        "targets": {h["target_label"]: {**h["target"], "compile_s": h["compile_s"]}
                    for h in headers},
        "environment": first["environment"],
        "config": {**first["config"], "rounds": rounds, "ratio_limit": TARGET_RATIO},
        "kernels": kernels,
        "flagged": [k["kernel"] + " " + k["shape"] for k in kernels if k["flagged"]],
        "notes": [],
    }


def run_targets(names: list[str] | None, argv: list[str], rounds: int,
                threads: int | None = None, progress: Callable = lambda msg: None) -> dict:
    """``polycnn bench --targets``: one child process per target (the host's first), each
    running ``polycnn <argv>`` (:func:`serve_kernels`) with NUMBA_CPU_NAME set and an empty
    compile cache of its own. The children compile one after the other, then time their
    kernels in turns, a round each (host, target 1, target 2, host, ...), so load from
    elsewhere hits every target alike; each kernel's median round counts."""
    chosen = select_targets(names)
    status = available_backends().get("numba")
    if status is not True:
        raise BackendUnavailable(f"--targets times the numba backend's kernels: {status}")
    root = tempfile.mkdtemp(prefix="polycnn-targets-")
    children = []
    try:
        for name in chosen:
            progress(f"target {name}: a child process compiles every kernel")
            children.append(_TargetChild(name, argv, target_env(
                name, os.path.join(root, name), threads)))
        samples = {child.header["target_label"]: [] for child in children}
        for index in range(max(1, rounds)):
            progress(f"round {index + 1} of {rounds}: every kernel on every target in turn")
            for child in children:
                samples[child.header["target_label"]].append(child.round())
    finally:
        for child in children:
            child.close()
        shutil.rmtree(root, ignore_errors=True)
    result = compare_targets([c.header for c in children], samples)
    loads = [c.header["environment"].get("load_average") for c in children]
    busy = [load for load in loads if load is not None and load >= BUSY_LOAD]
    if busy:
        result["notes"].append(f"{BUSY_NOTE} {max(busy):.1f} while the targets compiled: other"
                               " work shared the CPU; a flag may be noise, rerun when it is"
                               " quiet or with more --rounds")
    return result
