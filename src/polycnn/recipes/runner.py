""":func:`run` and :func:`resume`: what ``polycnn train`` does (data, model, optimiser, fit, test
evaluation, checkpoint and best-epoch twin), as functions that return their result and print
nothing (progress goes to ``callback``)."""

from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np

from .. import datasets, limits
from ..backends import get_backend
from ..checkpoint import load
from ..training import evaluate, fit
from .config import NO_FILES, OptionError, RunConfig, check_counts, stored_data
from .parts import BATCH_FACTOR, build_model, check_sizes, default_augment, make_optimizer, splits


def default_out(dataset: str) -> str:
    """Where a run's checkpoint goes by default: shapes.npz, or DATASET.npz."""
    return f"{dataset}.npz"


def best_checkpoint_path(out: str) -> str:
    """Where the epoch with the lowest validation loss is kept: shapes.npz -> shapes.best.npz."""
    stem, ext = os.path.splitext(out)
    return f"{stem}.best{ext or '.npz'}"


@dataclasses.dataclass
class RunResult:
    """What :func:`run` and :func:`resume` return. ``test`` is None on the ranks after the
    first of a distributed run (only rank 0 evaluates and writes)."""

    config: RunConfig
    model: object
    history: object
    test: dict | None
    classes: list
    checkpoint: str
    best_checkpoint: str
    backend: str
    data_seconds: float
    total_seconds: float
    stored: dict
    rank: int = 0

    def summary(self) -> dict:
        """The JSON-ready summary ``polycnn train --json`` prints."""
        h, test = self.history, self.test
        return {
            "checkpoint": os.path.abspath(self.checkpoint), "backend": self.backend,
            "epochs": self.config.epochs, "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "per_class_accuracy": dict(zip(self.classes, test["per_class_accuracy"])),
            "val_accuracy": h["val_accuracy"][-1], "train_accuracy": h["accuracy"][-1],
            "images_per_s": float(np.nanmean(h["images_per_s"][-max(1, len(h["epoch"]) - 1):])),
            "train_seconds": float(np.nansum(h["seconds"])), "data_seconds": self.data_seconds,
            "total_seconds": self.total_seconds,
            "parameters": sum(p.size for p in self.model.parameters()), "run": self.stored,
            "history": {k: list(v) for k, v in h.items()},
            "best_checkpoint": os.path.abspath(self.best_checkpoint),
            "best_epoch": h.best_epoch(), "stopped_early": h.stopped_early,
        }


def run(config: RunConfig, out=None, *, backend=None, download: bool = False, callback=None,
        distributed=False, force: bool = False) -> RunResult:
    """Train the run ``config`` describes, as ``polycnn train`` does: its data, model and
    optimiser, ``fit`` with the checkpoint ``out`` (default: DATASET.npz) written after every
    epoch and the best epoch in its ``.best.npz`` twin, then the test split's metrics.

    ``download`` fetches missing data files; ``callback(event)`` gets fit's events and first a
    ``"start"`` event; ``distributed`` as in :func:`polycnn.fit`. An existing ``out`` (or twin)
    is replaced only with ``force``."""
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    if download and config.dataset in NO_FILES:
        raise OptionError("data_dir/download", f"the {config.dataset} data set needs no files")
    out = os.fspath(default_out(config.dataset) if out is None else out)
    best_out = best_checkpoint_path(out)
    for path in (out, best_out) if not force else ():
        if os.path.lexists(path):
            raise FileExistsError(f"{path} already exists; pass force=True to replace it with a"
                                  " new run, or continue the run in it with polycnn.resume")
    check_sizes(config, "the run's sizes")
    be = get_backend(backend)
    t_start = time.perf_counter()
    data = splits(config, download=download)
    model = build_model(config, data, be)
    if not (config.dataset == "shapes" and config.model == "tutorial"):
        c, s = (int(v) for v in data["train"][0].shape[1:3])
        config = config.replace(channels=c, image_size=s)
    steps = config.epochs * math.ceil(data["train"][0].shape[0] / config.batch_size)
    opt = make_optimizer(config.optimizer, model.parameters(), config.lr, steps, config.schedule,
                         config.warmup)
    stored = {**config.to_json(), "classes": list(data.get("classes", datasets.CLASSES)),
              "normalize": data.get("normalize")}
    return _train(config, stored, model, opt, data, out, callback, distributed, t_start)


def resume(path, *, epochs: int | None = None, patience: int | None = None, data_dir=None,
           backend=None, callback=None, distributed=False, sync_bn: bool | None = None) -> RunResult:
    """Continue the run saved in ``path`` (by :func:`run` or ``polycnn train``, this release or
    the previous one) with its own settings, up to ``epochs`` in all (default: as planned);
    ``patience`` replaces its early-stopping patience, ``data_dir`` says where its data files
    are now, ``sync_bn`` (None: as stored) applies under ``distributed``."""
    path = os.fspath(path)
    check_counts({"epochs": epochs, "patience": patience})
    be = get_backend(backend)
    t_start = time.perf_counter()
    model = load(path, backend=be)
    raw = model.training_state["metadata"].get("run")
    if raw is None:
        raise ValueError(f"{path} was not written by `polycnn train`; cannot resume it")
    dataset = raw.get("dataset", "shapes") if isinstance(raw, dict) else None
    if data_dir is not None and dataset in NO_FILES:
        raise OptionError("data_dir", f"{path} was trained on {dataset}, which needs no files")
    config, data_fields = checked_run(raw, path, model, data_dir, needs_data=True)
    done = model.training_state["epoch"] or 0
    epochs = config.epochs if epochs is None else epochs
    if epochs <= done:
        raise ValueError(f"{path} already has {done} of {config.epochs} epochs; pass --epochs N"
                         f" with N > {done} to train further")
    changes = {"epochs": epochs}
    if patience is not None:
        changes["patience"] = patience
    if sync_bn is not None:
        changes["sync_bn"] = sync_bn
    config = config.replace(**changes)
    classes = data_fields.get("classes") or model.training_state["metadata"].get("classes")
    stored = {**config.to_json(), "classes": list(classes or datasets.CLASSES),
              "normalize": data_fields.get("normalize")}
    data = splits(config, path)
    return _train(config, stored, model, None, data, path, callback, distributed, t_start,
                  resuming=True)


def _train(config, stored, model, opt, data, out, callback, distributed, t_start,
           resuming=False) -> RunResult:
    """fit, then the test metrics (rank 0), for run and resume."""
    from .. import distributed as dist

    comm = dist.world() if distributed is True else (distributed or None)
    t_data = time.perf_counter() - t_start
    classes = stored["classes"]
    best_out = best_checkpoint_path(out)
    rank = 0 if comm is None else comm.rank
    if callback is not None and rank == 0:
        callback({"kind": "start", "resume": resuming, "config": config, "classes": classes,
                  "n_train": data["train"][0].shape[0], "n_val": data["val"][0].shape[0],
                  "n_test": data["test"][0].shape[0], "backend": model.backend.name,
                  "processes": None if comm is None else comm.size})
    history = fit(model, data["train"], epochs=config.epochs, batch_size=config.batch_size,
                  optimizer=opt, val=data["val"],
                  augment=default_augment(config.dataset) if config.augment else None,
                  seed=None if resuming else config.seed, callback=callback, checkpoint=out,
                  resume=resuming, metadata={"run": stored, "classes": classes},
                  best_checkpoint=best_out, early_stopping=config.patience,
                  distributed=comm if comm is not None else False, sync_bn=config.sync_bn)
    test = evaluate(model, data["test"]) if rank == 0 else None
    return RunResult(config, model, history, test, classes, out, best_out, model.backend.name,
                     t_data, time.perf_counter() - t_start, stored, rank)


def checked_run(raw, path: str, model=None, data_dir=None, needs_data: bool = False):
    """A checkpoint's stored run, checked before any of it is used -> (RunConfig, data fields
    "classes" / "normalize"): types and bounds, the classes against the model's output, one
    batch against the memory limit. It is data, never instructions: it never downloads, and
    with ``needs_data`` its ``data_dir`` is only a default that must exist (``data_dir``
    replaces it)."""
    config = RunConfig.from_json(raw, path)
    data = stored_data(raw)
    image = (config.channels, config.image_size, config.image_size)
    if data.get("normalize") is not None and any(len(p) != config.channels for p in data["normalize"]):
        raise ValueError(f"{path}: the checkpoint's run setting normalize {data['normalize']!r:.80}"
                         f" does not have {config.channels} channels")
    if model is not None and "classes" in data:
        try:
            out = tuple(model.output_shape(image))
        except ValueError as exc:
            raise ValueError(f"{path}: the checkpoint's model does not take its run's"
                             f" {'x'.join(map(str, image))} images: {exc}") from None
        if out != (len(data["classes"]),):
            raise ValueError(f"{path}: the checkpoint's run names {len(data['classes'])} classes"
                             f" but its model outputs {out}")
    limits.check_memory(path, f"its run's batch_size {config.batch_size:,} of"
                        f" {'x'.join(map(str, image))} images",
                        BATCH_FACTOR * limits.images_bytes(config.batch_size, image))
    if needs_data and config.dataset not in NO_FILES:
        if data_dir is not None:
            config = config.replace(data_dir=os.path.abspath(data_dir))
        elif config.data_dir is None or not os.path.isdir(config.data_dir):
            raise ValueError(f"{path} was trained on {config.dataset} files in {config.data_dir},"
                             " which does not exist here; pass --data-dir with the folder that"
                             " holds them now")
    return config, data


@dataclasses.dataclass(frozen=True)
class Trained:
    """A checkpoint ready for use: its model, its run (None when it holds none), the class
    names and the inputs' scaling (``normalize``: [means, stds] or None)."""

    model: object
    config: RunConfig | None
    classes: list
    normalize: list | None = None


def load_trained(checkpoint, backend=None, data_dir=None, needs_data: bool = False,
                 run_optional: bool = False) -> Trained:
    """A checkpoint of ``polycnn train`` with its checked run; with ``run_optional``, any
    checkpoint (config None when it holds no run settings)."""
    model = load(checkpoint, backend=backend)
    meta = model.training_state["metadata"]
    config, data = None, {}
    if not run_optional or meta.get("run") is not None:
        config, data = checked_run(meta.get("run"), checkpoint, model, data_dir, needs_data)
    classes = meta.get("classes") or data.get("classes")
    n_out = model.layers[-1].out_features
    if classes is None:
        classes = [str(i) for i in range(n_out)]
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)
            and len(classes) == n_out):
        raise ValueError(f"{checkpoint}: the checkpoint's class names {classes!r:.80} are not"
                         f" {n_out} names")
    return Trained(model, config, classes, data.get("normalize"))
