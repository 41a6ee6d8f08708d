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


def environment(threads: int, backend_infos: dict, torch_version) -> dict:
    return {
        "cpu": cpu_model(),
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
                    "peak_fraction": None, "device": e.is_device,
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

    peak, ops = None, []
    if config.ops:
        # NOTE: measured before and after the ops and the best counts, so a burst of load from
        # elsewhere during one of them does not lower the peak (and inflate every fraction)
        progress(f"numpy.matmul {config.matmul_n}^3 float32 (the machine's peak)")
        before = matmul_peak(config.matmul_n, config.matmul_repeats)
        ops = measure_ops(engines, layers, config, progress)
        progress(f"numpy.matmul {config.matmul_n}^3 float32 again")
        after = matmul_peak(config.matmul_n, config.matmul_repeats)
        peak = dict(max(before, after, key=lambda m: m["gflops"]),
                    gflops_before=before["gflops"], gflops_after=after["gflops"])
        add_peak_fractions(ops, peak["gflops"])
    result = {
        "config": {"rounds": config.rounds, "quick": config.quick,
                   "batch_divisor": config.batch_divisor, "min_round_s": config.min_round_s,
                   "train_steps": config.train_steps},
        "environment": env,
        "engines": [e.name for e in engines],
        "matmul": peak,
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


def child_env(unset=(), threads: int | None = None) -> tuple[dict, dict]:
    """The environment for a child run: ``unset`` removed, and with ``threads`` every thread
    pool's variable set to it; also what changed, for the report."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    changed = {name: None for name in unset}
    if threads is not None:
        for name in THREAD_ENV:
            env[name] = changed[name] = str(threads)
    env[CHILD_MARKER] = "1"
    return env, changed


def run_in_child(argv: list[str], unset=(), threads: int | None = None) -> dict:
    """Run ``polycnn <argv> --json`` in a child process whose environment differs from this one
    as :func:`child_env` says (thread counts and BLAS kernel choice are read once, when the
    libraries load, so only a fresh process can change them), and return its result with what
    was changed and which BLAS kernel ran here and there. The child's progress passes through
    on stderr."""
    env, changed = child_env(unset, threads)
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
