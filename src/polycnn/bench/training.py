"""Training throughput: one epoch of SGD with momentum over random images, per engine and model.
A backend's model comes from :mod:`polycnn.models`; PyTorch's twin is built from that very
model's layer spec (:func:`torch_twin`), so both sides train one description."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import numpy as np

from .cases import BenchConfig, TrainModel, select_models
from .timing import interleaved

#: the shapes CNN of notes/perf-baseline.md, as a polycnn.models spec
SHAPES_LAYERS = [
    {"type": "Conv2d", "config": {"in_channels": 3, "out_channels": 16, "kernel_size": 3,
                                  "padding": 1}},
    {"type": "ReLU"}, {"type": "MaxPool2d", "config": {"kernel_size": 2}},
    {"type": "Conv2d", "config": {"in_channels": 16, "out_channels": 32, "kernel_size": 3,
                                  "padding": 1}},
    {"type": "ReLU"}, {"type": "MaxPool2d", "config": {"kernel_size": 2}},
    {"type": "Dropout2d", "config": {"p": 0.5}}, {"type": "Flatten"},
    {"type": "Linear", "config": {"in_features": 32 * 16 * 16, "out_features": 3}},
]


def polycnn_model(model: TrainModel, backend, seed: int = 0):
    """The polycnn network of a :data:`TRAIN_MODELS` entry: LeNet-5 is the ``lenet5`` preset,
    the shapes CNN the spec :data:`SHAPES_LAYERS`."""
    from .. import models

    if model.name == "lenet5":
        return models.lenet5(model.input_shape, model.classes, backend=backend, seed=seed)
    return models.from_spec(SHAPES_LAYERS, model.input_shape, model.classes, backend=backend,
                            seed=seed, what="the bench's shapes CNN")


def _torch_layer(nn, kind: str, c: dict):
    pairs = {k: tuple(v) if isinstance(v, list) else v for k, v in c.items()}
    builders = {
        "Conv2d": lambda: nn.Conv2d(c["in_channels"], c["out_channels"], pairs["kernel_size"],
                                    pairs["stride"], pairs["padding"], pairs["dilation"],
                                    bias=c["bias"]),
        "Linear": lambda: nn.Linear(c["in_features"], c["out_features"], bias=c["bias"]),
        "ReLU": nn.ReLU,
        "LeakyReLU": lambda: nn.LeakyReLU(c["negative_slope"]),
        "MaxPool2d": lambda: nn.MaxPool2d(pairs["kernel_size"], pairs["stride"], pairs["padding"]),
        "AvgPool2d": lambda: nn.AvgPool2d(pairs["kernel_size"], pairs["stride"], pairs["padding"]),
        "GlobalAvgPool2d": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        "BatchNorm2d": lambda: nn.BatchNorm2d(c["num_features"], c["eps"], c["momentum"]),
        "Dropout": lambda: nn.Dropout(c["p"]),
        "Dropout2d": lambda: nn.Dropout2d(c["p"]),
        "Flatten": nn.Flatten,
    }
    if kind not in builders:
        raise ValueError(f"no PyTorch twin for a {kind} layer")
    return builders[kind]()


def torch_twin(torch, net, device: str = "cpu"):
    """The PyTorch ``nn.Sequential`` with the layers of the polycnn model ``net`` (its
    :meth:`~polycnn.Sequential.spec`), PyTorch's own initialisation from seed 0."""
    torch.manual_seed(0)
    layers = [_torch_layer(torch.nn, s["type"], s.get("config", {})) for s in net.spec()["layers"]]
    return torch.nn.Sequential(*layers).to(device)


def _missing_model_api(pc) -> list[str]:
    needed = ("Sequential", "Conv2d", "ReLU", "MaxPool2d", "Dropout2d", "Flatten", "Linear", "SGD")
    return [name for name in needed if not hasattr(pc, name)]


def _quiet_kwargs(fit) -> dict:
    """``verbose=False`` (or the like) when :func:`polycnn.fit` takes it: a benchmark prints its
    own table."""
    try:
        params = inspect.signature(fit).parameters
    except (TypeError, ValueError):
        return {}
    for name in ("verbose", "progress"):
        if name in params:
            return {name: False}
    return {}


def _polycnn_trainer(pc, engine, model: TrainModel, x, y):
    """One call = one epoch of :func:`polycnn.fit` over ``x``: ``len(x) / batch`` SGD steps."""
    net = polycnn_model(model, engine.name)
    net.train()
    opt = pc.SGD(net.parameters(), lr=0.01, momentum=0.9)
    state = {"epoch": 0}

    def train_steps():
        state["epoch"] += 1
        pc.fit(net, (x, y), epochs=1, batch_size=model.batch, optimizer=opt,
               seed=state["epoch"], **_quiet_kwargs(pc.fit))
    return train_steps


def _graph_trainer(pc, engine, model: TrainModel, x, y, precision: str):
    """One epoch as a captured CUDA graph (:class:`polycnn.CapturedStep`): host batches through
    pinned buffers, the loss read back once an epoch."""
    net = polycnn_model(model, engine.backend)
    net.train()
    step = pc.CapturedStep(net, pc.SGD(net.parameters(), lr=0.01, momentum=0.9),
                           precision=precision)
    batch = model.batch

    def train_steps():
        for start in range(0, len(x) - batch + 1, batch):
            step(x[start:start + batch], y[start:start + batch])
        return step.read()
    return train_steps


def _torch_trainer(torch, model: TrainModel, x, y, device: str = "cpu"):
    """The same epoch in PyTorch: shuffle, forward, cross-entropy, backward, SGD step; on a
    device, each batch is copied from the host as the backends' batches are."""
    net = torch_twin(torch, polycnn_model(model, "numpy"), device)
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
            xb, yb = xt[idx].to(device), yt[idx].to(device)
            opt.zero_grad(set_to_none=True)
            logits = net(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            # the per-batch bookkeeping polycnn.fit does too: the loss and the correct count
            loss.item()
            int((logits.argmax(dim=1) == yb).sum())
    return train_steps


def _trainers(pc, engines: list, model: TrainModel, x, y, config: BenchConfig, torch_module
              ) -> tuple[dict, dict, list[str]]:
    """name -> one-epoch callable and name -> sync, for every engine (and, with
    ``config.graph``, ``<backend>+graph`` for each backend that captures CUDA graphs)."""
    fns, syncs, notes = {}, {}, []
    for e in engines:
        builds = [(e.name, lambda: (_torch_trainer(torch_module, model, x, y, config.device)
                                    if e.is_torch else _polycnn_trainer(pc, e, model, x, y)))]
        if config.graph and not e.is_torch and hasattr(e.backend, "capture_session"):
            builds.append((e.name + "+graph",
                           lambda: _graph_trainer(pc, e, model, x, y, config.precision)))
        for name, build in builds:
            try:
                fns[name] = build()
            except (TypeError, ValueError, AttributeError, NotImplementedError) as exc:
                notes.append(f"training {model.name} on {name} failed to build: {exc}")
                continue
            syncs[name] = e.sync
    return fns, syncs, notes


def _sized(model: TrainModel, config: BenchConfig) -> TrainModel:
    batch = config.train_batch or model.batch
    return dataclasses.replace(model, batch=max(1, batch // max(1, config.batch_divisor)))


def measure_training(engines: list, config: BenchConfig, torch_module,
                     progress: Callable = lambda msg: None) -> tuple[list[dict], list[str]]:
    """Images per second of one epoch over ``train_steps`` batches of random images, per engine
    and model; a backend's epoch is :func:`polycnn.fit`, PyTorch's the same loop written out."""
    import polycnn as pc

    missing = _missing_model_api(pc)
    if missing:
        return [], [f"training skipped: polycnn has no {', '.join(missing)} yet (the model stack)"]
    rows, notes = [], []
    for model in select_models(config.models):
        model = _sized(model, config)
        progress(f"training {model.name}: {model.describe}, batch {model.batch}")
        rng = np.random.default_rng(1)
        n = model.batch * config.train_steps
        x = rng.random((n, *model.input_shape), dtype=np.float32)  # pixels in [0, 1)
        y = rng.integers(0, model.classes, size=n).astype(np.int64)
        fns, syncs, build_notes = _trainers(pc, engines, model, x, y, config, torch_module)
        notes += build_notes
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
