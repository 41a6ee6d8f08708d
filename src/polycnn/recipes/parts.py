"""What a :class:`~polycnn.recipes.RunConfig` turns into: the data splits, the model, the
optimiser with its schedule, and the augmentation of each data set."""

from __future__ import annotations

import math

import numpy as np

from .. import datasets, limits, models, optim
from ..augment import Augment
from .config import DEFAULTS, OptionError, RunConfig

try:   # NOTE: the real data sets' module, while polycnn.datasets becomes one package
    from .. import datasets_real as _real
except ImportError:   # pragma: no cover
    _real = datasets

#: a batch's input, activations and gradients, roughly, in multiples of its input's bytes
BATCH_FACTOR = 16


def default_augment(dataset: str = "shapes") -> Augment:
    """Random changes that keep the class: digits must not be flipped, clothes and CIFAR-10's
    pictures only left-right."""
    if dataset in ("digits", "mnist"):
        return Augment(hflip=0.0, vflip=0.0, rotate=10.0, translate=0.08)
    if dataset in ("fashion-mnist", "cifar10"):
        return Augment(hflip=0.5, vflip=0.0, translate=0.08)
    if dataset == "folder":
        return Augment(hflip=0.0, vflip=0.0, rotate=5.0, translate=0.05)
    return Augment(hflip=0.5, vflip=0.5, shear=0.15, rotate=10.0, translate=0.05)


def make_schedule(kind: str, total_steps: int, warmup: int | None):
    """cosine: warm-up then a half cosine down to 1% of the peak; step: the rate divided by 10
    after each third of the run; constant: the peak rate after the warm-up. ``warmup`` in
    optimiser steps (None: a tenth of the run, at most 100 steps, for cosine; none otherwise)."""
    if warmup is not None and warmup >= total_steps:
        raise OptionError("warmup", f"must be smaller than the {total_steps} steps of the run,"
                          f" got {warmup}")
    if kind == "cosine":
        warmup = min(100, total_steps // 10) if warmup is None else warmup
        return optim.CosineLR(total_steps, warmup_steps=warmup, min_factor=0.01)
    if kind == "step":
        if warmup:
            raise OptionError("warmup", "works with --schedule cosine or constant, not step")
        return optim.StepLR(max(1, math.ceil(total_steps / 3)), gamma=0.1)
    return optim.WarmupLR(warmup) if warmup else None


def make_optimizer(name: str, params, lr: float, total_steps: int, schedule: str = "cosine",
                   warmup: int | None = None):
    """sgd: Nesterov momentum 0.9, weight decay 1e-4; adam; adamw: weight decay 1e-4."""
    schedule = make_schedule(schedule, total_steps, warmup)
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4,
                         schedule=schedule)
    if name == "adam":
        return optim.Adam(params, lr=lr, schedule=schedule)
    return optim.AdamW(params, lr=lr, weight_decay=1e-4, schedule=schedule)


def check_images(what: str, claim: str, n: int, channels: int, size: int) -> None:
    """Generated images, as float32 with one working copy, against the memory limit."""
    limits.check_memory(what, claim, 2 * limits.images_bytes(n, (channels, size, size)))


def splits(config: RunConfig, source: str = "the run settings", download: bool = False,
           n_test: int | None = None, n_train=...) -> dict:
    """The run's train / val / test splits (and, for files, "classes" and "normalize");
    generated images are counted against the memory limit first (``source`` says whose sizes
    they are). ``n_test`` and, for data files, ``n_train`` (None: all) replace the config's
    (the generated shapes' test images depend on their training count). Missing files are
    downloaded only with ``download``: never because of a checkpoint's stored settings."""
    if n_train is ... or config.dataset == "shapes":
        n_train = config.n_train
    if config.dataset == "shapes":
        c, s = config.channels, config.image_size
        n_test = config.n_test if n_test is None else n_test
        check_images(source, f"{n_train:,} training, {config.n_val:,} validation and"
                     f" {n_test:,} test images of {c}x{s}x{s}", n_train + config.n_val + n_test, c, s)
        return datasets.shapes_splits(n_train, config.n_val, n_test, s, c, config.seed)
    data = _real.load_splits(config.dataset, config.data_dir, seed=config.seed,
                                download=download, image_size=config.image_size,
                                channels=config.channels)
    if n_train is not None:
        data["train"] = tuple(a[:n_train] for a in data["train"])
    if n_test is not None:
        data["test"] = tuple(a[:n_test] for a in data["test"])
    return data


def normalize(x: np.ndarray, scaling) -> np.ndarray:
    """Inputs in 0..1 scaled as the data set's loader scales them (``scaling``: the stored
    [means, stds] per channel, or None: unchanged)."""
    if not scaling:
        return x
    return _real.standardize(x, *scaling)


#: inputs a step of evaluation and prediction
EVAL_BATCH = 256


def check_eval_batch(model, config: RunConfig, n: int, source) -> None:
    """The activations of one evaluation step of ``n`` inputs (at most :data:`EVAL_BATCH`)
    against the memory limit: a checkpoint's model may be huge for its small weights."""
    image = (config.channels, config.image_size, config.image_size)
    limits.check_model(model.layers, source, image, max(1, min(n, EVAL_BATCH)))


def tutorial_network(image_size: int, channels: int = 3, classes: int = 3, backend=None,
                     seed: int = 0):
    """Three blocks of 3x3 convolution (padding 1), ReLU and 2x2 max pooling, whole-map dropout,
    then two fully connected layers (:func:`polycnn.models.tutorial`)."""
    if image_size % 8:
        raise ValueError(f"--image-size must be a multiple of 8 (three 2x2 poolings), got {image_size}")
    return models.tutorial((channels, image_size, image_size), classes, backend=backend, seed=seed)


def build_model(config: RunConfig, data: dict, backend):
    """The config's model for ``data``'s images and classes (the generated shapes' tutorial
    network keeps its own builder, so its initial weights are those of every release)."""
    classes = data.get("classes", list(datasets.CLASSES))
    if config.dataset == "shapes" and config.model == "tutorial":
        return tutorial_network(config.image_size, config.channels, len(classes),
                                backend=backend, seed=config.seed)
    sample = data["train"][0].shape[1:]
    return models.build(config.model, sample, len(classes), backend=backend, seed=config.seed,
                        batch_size=config.batch_size)


def check_sizes(config: RunConfig, given: str) -> None:
    """The run's generated images and one batch against the memory limit, before anything is
    generated or read (``given`` names the settings that set the sizes, for the message)."""
    shape = (config.channels, config.image_size, config.image_size)
    if config.dataset == "shapes":
        n = config.n_train
        check_images(given or "--dataset shapes", f"{n:,} training, {config.n_val:,} validation"
                     f" and {config.n_test:,} test images of {'x'.join(map(str, shape))}",
                     n + config.n_val + config.n_test, *shape[:2])
    need = BATCH_FACTOR * limits.images_bytes(config.batch_size, shape)
    limits.check_memory(f"--batch-size {config.batch_size}", f"a batch of {config.batch_size:,}"
                        f" images of {'x'.join(map(str, shape))} (input, activations and"
                        " gradients)", need)


__all__ = ["default_augment", "make_schedule", "make_optimizer", "splits", "normalize",
           "tutorial_network", "build_model", "check_sizes", "check_eval_batch", "DEFAULTS",
           "BATCH_FACTOR", "EVAL_BATCH"]
