"""``polycnn train``, ``polycnn evaluate`` and ``polycnn predict``: the shapes classifier by default,
or any data set of :mod:`polycnn.datasets_real` (``--dataset``) with a preset or JSON model
(``--model``, :mod:`polycnn.models`)."""

from __future__ import annotations

import functools
import math
import os
import sys
import time

import click
import numpy as np

import polycnn as pc
from polycnn import datasets_real, limits, models
from polycnn.datasets import CLASSES
from polycnn.inputs import read_input

from ._common import backend_option, check_output_file, echo_json, fail, format_table, json_option

#: what `polycnn train` does with no options. Measured on the numpy backend, 2 cores: 99.95% test
#: accuracy in 48-59 s wall (~1,000 training images/s); the history is the same on every machine
DEFAULTS = {
    "epochs": 8, "batch_size": 64, "optimizer": "sgd", "seed": 0, "augment": True,
    "image_size": 32, "channels": 3, "n_train": 6000, "n_val": 1000, "n_test": 2000,
}
DEFAULT_OUT = "shapes.npz"
#: peak learning rate of each optimiser when --lr is not given
DEFAULT_LR = {"sgd": 0.05, "adam": 0.002, "adamw": 0.002}


#: per data set: default model and epochs (augmentation: default_augment). MNIST with lenet5:
#: 20 epochs of 55,000 images at about 5,200 augmented img/s (numba, 2 cores, measured on
#: MNIST-shaped data) take about 3.5 minutes
DATASET_DEFAULTS = {
    "shapes": {"model": "tutorial", "epochs": DEFAULTS["epochs"]},
    "digits": {"model": "shapes-cnn", "epochs": 30},
    "mnist": {"model": "lenet5", "epochs": 20},
    "fashion-mnist": {"model": "lenet5", "epochs": 20},
    "cifar10": {"model": "tutorial", "epochs": 20},
    "folder": {"model": "tutorial", "epochs": 10},
}
DATASET_CHOICES = ["shapes", *datasets_real.NAMES]


def tutorial_network(image_size: int, channels: int = 3, classes: int = 3, backend=None,
                     seed: int = 0) -> pc.Sequential:
    """Three blocks of 3x3 convolution (padding 1), ReLU and 2x2 max pooling, whole-map dropout,
    then two fully connected layers (:func:`polycnn.models.tutorial`)."""
    if image_size % 8:
        raise ValueError(f"--image-size must be a multiple of 8 (three 2x2 poolings), got {image_size}")
    return models.tutorial((channels, image_size, image_size), classes, backend=backend, seed=seed)


def default_augment(dataset: str = "shapes") -> pc.Augment:
    """Random changes that keep the class: digits must not be flipped, clothes and CIFAR-10's
    pictures only left-right."""
    if dataset in ("digits", "mnist"):
        return pc.Augment(hflip=0.0, vflip=0.0, rotate=10.0, translate=0.08)
    if dataset in ("fashion-mnist", "cifar10"):
        return pc.Augment(hflip=0.5, vflip=0.0, translate=0.08)
    if dataset == "folder":
        return pc.Augment(hflip=0.0, vflip=0.0, rotate=5.0, translate=0.05)
    return pc.Augment(hflip=0.5, vflip=0.5, shear=0.15, rotate=10.0, translate=0.05)


#: learning-rate schedules of --schedule
SCHEDULES = ("cosine", "step", "constant")


def make_schedule(kind: str, total_steps: int, warmup: int | None):
    """cosine: warm-up then a half cosine down to 1% of the peak; step: the rate divided by 10
    after each third of the run; constant: the peak rate after the warm-up. ``warmup`` in
    optimiser steps (None: a tenth of the run, at most 100 steps, for cosine; none otherwise)."""
    if warmup is not None and warmup >= total_steps:
        raise click.BadParameter(f"must be smaller than the {total_steps} steps of the run, got {warmup}",
                                 param_hint="--warmup")
    if kind == "cosine":
        warmup = min(100, total_steps // 10) if warmup is None else warmup
        return pc.optim.CosineLR(total_steps, warmup_steps=warmup, min_factor=0.01)
    if kind == "step":
        if warmup:
            raise click.BadParameter("works with --schedule cosine or constant, not step",
                                     param_hint="--warmup")
        return pc.optim.StepLR(max(1, math.ceil(total_steps / 3)), gamma=0.1)
    return pc.optim.WarmupLR(warmup) if warmup else None


def make_optimizer(name: str, params, lr: float, total_steps: int, schedule: str = "cosine",
                   warmup: int | None = None):
    schedule = make_schedule(schedule, total_steps, warmup)
    if name == "sgd":
        return pc.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4, schedule=schedule)
    if name == "adam":
        return pc.Adam(params, lr=lr, schedule=schedule)
    return pc.AdamW(params, lr=lr, weight_decay=1e-4, schedule=schedule)


def _splits(run: dict, source: str = "the run settings", download: bool = False) -> dict:
    """The run's train / val / test splits (and, for real data sets, "classes"); generated
    images are counted against the memory limit first (``source`` says whose sizes they are).
    Missing files are downloaded only with ``download``, which only the command line's
    --download sets: never a checkpoint's stored settings."""
    dataset = run.get("dataset", "shapes")
    if dataset == "shapes":
        c, s = run["channels"], run["image_size"]
        n = run["n_train"] + run["n_val"] + run["n_test"]
        _check_images(source, f"{run['n_train']:,} training, {run['n_val']:,} validation and"
                      f" {run['n_test']:,} test images of {c}x{s}x{s}", n, c, s)
        return pc.datasets.shapes_splits(run["n_train"], run["n_val"], run["n_test"], run["image_size"],
                                         run["channels"], run["seed"])
    data = datasets_real.load_splits(dataset, run.get("data_dir"), seed=run["seed"],
                                     download=download, image_size=run["image_size"],
                                     channels=run["channels"])
    if run.get("n_train") is not None:
        data["train"] = tuple(a[:run["n_train"]] for a in data["train"])
    return data


def _normalize(x: np.ndarray, run: dict) -> np.ndarray:
    """Inputs in 0..1 scale as the data set's loader scales them."""
    if not run.get("normalize"):
        return x
    return datasets_real.standardize(x, *run["normalize"])


#: what a checkpoint's stored "run" may hold: key -> (accepted types, check of the value, what
#: is expected); read by _stored_run before any value is used
_RUN_FIELDS = {
    "dataset": (str, lambda v: v in DATASET_CHOICES, f"one of {', '.join(DATASET_CHOICES)}"),
    "model": (str, lambda v: True, "a model name"),
    "epochs": (int, lambda v: v >= 1, "an int >= 1"),
    "batch_size": (int, lambda v: v >= 1, "an int >= 1"),
    "lr": ((int, float), lambda v: math.isfinite(v) and v > 0, "a positive number"),
    "optimizer": (str, lambda v: v in DEFAULT_LR, f"one of {', '.join(DEFAULT_LR)}"),
    "seed": (int, lambda v: v >= 0, "an int >= 0"),
    "augment": (bool, lambda v: True, "true or false"),
    "image_size": (int, lambda v: v >= 1, "an int >= 1"),
    "channels": (int, lambda v: v in (1, 3), "1 or 3"),
    "n_train": ((int, type(None)), lambda v: v is None or v >= 1, "an int >= 1"),
    "n_val": (int, lambda v: v >= 0, "an int >= 0"),
    "n_test": (int, lambda v: v >= 1, "an int >= 1"),
    "schedule": (str, lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "warmup": ((int, type(None)), lambda v: v is None or v >= 0, "an int >= 0 or null"),
    "patience": ((int, type(None)), lambda v: v is None or v >= 1, "an int >= 1 or null"),
    "data_dir": ((str, type(None)), lambda v: True, "a folder name"),
    "download": (bool, lambda v: True, "true or false"),
    "classes": (list, lambda v: all(isinstance(c, str) for c in v), "a list of names"),
    "normalize": ((list, type(None)), lambda v: v is None or (
        len(v) == 2 and all(isinstance(p, list) and p and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
            for c in p) for p in v) and all(c > 0 for c in v[1])), "[means, stds] or null"),
}
_RUN_NEEDED = ("epochs", "batch_size", "lr", "optimizer", "seed", "augment", "image_size",
               "channels", "n_val", "n_test")


def _stored_run(run, path: str, model=None, data_dir=None, needs_data: bool = False) -> dict:
    """A checkpoint's stored run settings, checked (types, bounds, the classes against the
    model's output) before any is used. They are data, never instructions: ``download`` is
    dropped (only the command line's --download fetches files), and with ``needs_data`` the
    stored ``data_dir`` is only a default that must exist (``data_dir`` replaces it)."""
    if run is None:
        raise ValueError(f"{path} holds no run settings (not written by `polycnn train`)")
    if not isinstance(run, dict):
        raise ValueError(f"{path}: the checkpoint's run settings are not a JSON object")
    for key in _RUN_NEEDED:
        if key not in run:
            raise ValueError(f"{path}: the checkpoint's run settings lack {key!r}")
    for key, value in run.items():
        if key not in _RUN_FIELDS:
            continue
        types, ok, expected = _RUN_FIELDS[key]
        wrong_type = not isinstance(value, types) or (isinstance(value, bool) and types is not bool)
        if wrong_type or not ok(value):
            raise ValueError(f"{path}: the checkpoint's run setting {key} is {value!r:.80},"
                             f" expected {expected}")
    if run.get("dataset", "shapes") == "shapes" and run.get("n_train") is None:
        raise ValueError(f"{path}: the checkpoint's run settings lack n_train for shapes")
    run = dict(run, download=False)
    image = (run["channels"], run["image_size"], run["image_size"])
    if run.get("normalize") is not None and any(len(p) != run["channels"] for p in run["normalize"]):
        raise ValueError(f"{path}: the checkpoint's run setting normalize {run['normalize']!r:.80}"
                         f" does not have {run['channels']} channels")
    if model is not None and "classes" in run:
        try:
            out = tuple(model.output_shape(image))
        except ValueError as exc:
            raise ValueError(f"{path}: the checkpoint's model does not take its run's"
                             f" {'x'.join(map(str, image))} images: {exc}") from None
        if out != (len(run["classes"]),):
            raise ValueError(f"{path}: the checkpoint's run names {len(run['classes'])} classes but"
                             f" its model outputs {out}")
    limits.check_memory(path, f"its run's batch_size {run['batch_size']:,} of"
                        f" {'x'.join(map(str, image))} images",
                        _BATCH_FACTOR * limits.images_bytes(run["batch_size"], image))
    if needs_data and run.get("dataset", "shapes") not in ("shapes", "digits"):
        if data_dir is not None:
            run["data_dir"] = os.path.abspath(data_dir)
        elif run.get("data_dir") is None or not os.path.isdir(run["data_dir"]):
            raise ValueError(f"{path} was trained on {run['dataset']} files in {run.get('data_dir')},"
                             " which does not exist here; pass --data-dir with the folder that"
                             " holds them now")
    return run


def _check_images(what: str, claim: str, n: int, channels: int, size: int) -> None:
    """Generated images, as float32 with one working copy, against the memory limit."""
    limits.check_memory(what, claim, 2 * limits.images_bytes(n, (channels, size, size)))


def _clock(seconds: float) -> str:
    """1:05 or 1:02:05; "?" before a rate is known."""
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _Progress:
    """A per-epoch bar with ETA on stderr (only on a terminal), one line per finished epoch, and
    with ``json_lines`` one JSON object per epoch on stdout instead."""

    def __init__(self, quiet: bool, as_json: bool, json_lines: bool = False):
        self.bar = not quiet and not as_json and not json_lines and sys.stderr.isatty()
        self.lines = not quiet and not as_json and not json_lines
        self.json_lines = json_lines
        self.last_epoch = None
        self._width = 0

    def __call__(self, e: dict) -> None:
        if e["kind"] == "batch":
            if self.bar and (e["batch"] % 5 == 0 or e["batch"] == e["batches"]):
                done = e["batch"] / e["batches"]
                bar = "#" * int(24 * done) + "-" * (24 - int(24 * done))
                eta = f"  ETA {_clock(e['eta_s'])}" if "eta_s" in e else ""
                if e.get("run_eta_s") is not None and e["epoch"] < e["epochs"]:
                    eta += f" (run {_clock(e['run_eta_s'])})"
                text = (f"\repoch {e['epoch']}/{e['epochs']} [{bar}] {done:4.0%}  loss {e['loss']:.4f}"
                        f"  acc {e['accuracy']:6.2%}  {e['images_per_s']:,.0f} img/s{eta}")
                self._width = max(self._width, len(text))
                click.echo(text.ljust(self._width), err=True, nl=False)
            return
        self.last_epoch = e["epoch"]
        if self.bar:
            click.echo("\r" + " " * self._width + "\r", err=True, nl=False)
        if self.json_lines:
            echo_json({"event": "epoch", **{k: v for k, v in e.items() if k != "kind"}})
        if self.lines:
            val = "" if math.isnan(e["val_accuracy"]) else (
                f"  val_loss {e['val_loss']:.4f}{' (best)' if e.get('best') else ' ' * 7}"
                f"  val_acc {e['val_accuracy']:6.2%}")
            click.echo(f"epoch {e['epoch']:>2}/{e['epochs']}  loss {e['loss']:.4f}  acc {e['accuracy']:6.2%}"
                       f"{val}  {e['images_per_s']:,.0f} img/s  {e['seconds']:.1f} s")


def _check_choice_int(value, name, lo, hi=None):
    if value is not None and value < lo:
        raise click.BadParameter(f"must be >= {lo}, got {value}", param_hint=name)
    if value is not None and hi is not None and value > hi:
        raise click.BadParameter(f"must be at most {hi:,}, got {value:,}", param_hint=name)


#: --epochs above this is a typo, not a run (a day at 1 s an epoch)
MAX_EPOCHS = 100_000


def _check_out(out: str, resume: bool, force: bool) -> str:
    """--out and its .best twin, before any data is made or any training starts: writable file
    names (see check_output_file); an existing file is replaced only with --force (a new run)
    and continued only with --resume. "Another run" is any file already there: polycnn does not
    guess whether an existing checkpoint belongs to the run being started. Returns the twin."""
    if resume and force:
        raise click.UsageError("--force starts a new run over --out; --resume continues the run in"
                               " it: choose one")
    check_output_file(out, "--out")
    best_out = best_checkpoint_path(out)
    check_output_file(best_out, "--out (its best-epoch twin)")
    if resume or force:
        return best_out
    if os.path.lexists(out):
        raise click.BadParameter(f"{out} already exists; pass --force to replace it (and {best_out})"
                                 " with a new run, or --resume to continue the run saved in it",
                                 param_hint="--out")
    if os.path.lexists(best_out):
        raise click.BadParameter(f"{best_out}, where the best epoch of {out} goes, already exists;"
                                 " pass --force to replace it with a new run", param_hint="--out")
    return best_out


#: one training sample of each data set with a fixed image size: (channels, height, width)
_FIXED_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28),
                 "cifar10": (3, 32, 32)}
#: a batch's input, activations and gradients, roughly, in multiples of its input's bytes
_BATCH_FACTOR = 16


def _check_train_sizes(p: dict) -> None:
    """--batch-size, --n-train and --image-size against the memory limit, before anything is
    generated or read: the message names the options given, what they ask for and the estimate."""
    if p["resume"]:
        return   # NOTE: the checkpoint's own sizes are checked by _stored_run and _splits
    dataset = p["dataset"]
    size = p["image_size"] if (p["image_size"] or 0) > 0 else DEFAULTS["image_size"]
    channels = int(p["channels"] or DEFAULTS["channels"])
    shape = _FIXED_SHAPES.get(dataset, (channels, size, size))
    given = " ".join(f"--{k.replace('_', '-')} {p[k]}" for k in ("n_train", "image_size")
                     if p[k] is not None)
    if dataset == "shapes":
        n = p["n_train"] if p["n_train"] is not None and p["n_train"] > 0 else DEFAULTS["n_train"]
        total = n + DEFAULTS["n_val"] + DEFAULTS["n_test"]
        _check_images(given or "--dataset shapes", f"{n:,} training, {DEFAULTS['n_val']:,} validation"
                      f" and {DEFAULTS['n_test']:,} test images of {'x'.join(map(str, shape))}",
                      total, *shape[:2])
    batch = p["batch_size"]
    if batch is not None and batch > 0:
        need = _BATCH_FACTOR * limits.images_bytes(batch, shape)
        limits.check_memory(f"--batch-size {batch}", f"a batch of {batch:,} images of"
                            f" {'x'.join(map(str, shape))} (input, activations and gradients)", need)


def _bounded_sizes(command):
    """Run :func:`_check_train_sizes` on the parsed options before ``command``."""
    @functools.wraps(command)
    def checked(**params):
        _check_train_sizes(params)
        return command(**params)
    return checked


def _join_mpi():
    """(rank, communicator): (0, None) for one process; see polycnn.distributed.init."""
    try:
        rank, size = pc.distributed.init()
    except RuntimeError as exc:   # NOTE: started by mpiexec without mpi4py
        fail(str(exc))
    return rank, (pc.distributed.world() if size > 1 else None)


def _distributed_errors(command):
    """Under mpiexec: another rank's failure, or a rank that died, as one error line here."""
    @functools.wraps(command)
    def checked(**params):
        try:
            return command(**params)
        except pc.distributed.RankFailed as exc:
            fail(str(exc), 2 if exc.user_error else 1)
        except pc.distributed.PeerLost as exc:
            out = params.get("out") or DEFAULT_OUT
            fail(f"{exc}; stopping: {out} holds the last finished epoch", 1)
    return checked


@click.command()
@backend_option
@click.option("--epochs", type=int, default=None,
              help=f"epochs to train (default {DEFAULTS['epochs']} for shapes, 20 for mnist, see"
                   " DATASET_DEFAULTS; with --resume: the planned total)")
@click.option("--batch-size", type=int, default=DEFAULTS["batch_size"], show_default=True)
@click.option("--lr", type=float, default=None,
              help="peak learning rate of the schedule (default 0.05 for sgd,"
                   " 0.002 for adam and adamw)")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default=DEFAULTS["optimizer"],
              help="sgd: Nesterov momentum 0.9, weight decay 1e-4; adamw: weight decay 1e-4",
              show_default=True)
@click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True,
              help="seed for the data set, initial weights, shuffling, dropout and augmentation")
@click.option("--augment/--no-augment", default=DEFAULTS["augment"], show_default=True,
              help="random changes of each batch that keep the class: flips, skew, small rotations"
                   " and shifts for shapes; no flips for digits and mnist; left-right flips and"
                   " shifts for fashion-mnist and cifar10")
@click.option("--dataset", type=click.Choice(DATASET_CHOICES), default="shapes", show_default=True,
              help="shapes: generated, no files; digits: the UCI 8x8 digits shipped with polycnn;"
                   " mnist, fashion-mnist (IDX files), cifar10 (binary batches), folder (one"
                   " sub-folder of PNG/JPEG per class): files in --data-dir")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="folder holding the data set's files (with --resume: where they are now, when"
                   " they moved)")
@click.option("--download", is_flag=True,
              help="fetch missing mnist / fashion-mnist / cifar10 files into --data-dir (checksummed)")
@click.option("--model", "model_name", default=None, metavar="NAME|FILE.json",
              help=f"a preset ({', '.join(models.PRESETS)}) or a JSON list of layers"
                   " (default: tutorial for shapes, cifar10 and folder; lenet5 for mnist and"
                   " fashion-mnist; shapes-cnn for digits)")
@click.option("--image-size", type=int, default=None,
              help=f"side of the images for shapes (default {DEFAULTS['image_size']}, a multiple of 8)"
                   " and folder (resized to it)")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None,
              help="folder: 1 reads greyscale, 3 RGB (default 3)")
@click.option("--n-train", type=int, default=None,
              help=f"shapes: training images to generate (default {DEFAULTS['n_train']}; validation"
                   " 1000, test 2000); other data sets: use only the first N training images")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help=f"checkpoint written after every epoch (default {DEFAULT_OUT}, or DATASET.npz"
                   " for --dataset DATASET), the best epoch beside it in OUT.best.npz; any file"
                   " already at either name needs --force or --resume")
@click.option("--resume", is_flag=True, help="continue the run saved in --out")
@click.option("--force", is_flag=True,
              help="replace --out and its .best twin if they exist (without it, train refuses to"
                   " overwrite any existing file there; --resume continues it instead)")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True,
              help="learning rate over the run: cosine decay to 1% of --lr, step (divided by 10 after"
                   " each third), or constant")
@click.option("--warmup", type=int, default=None, metavar="STEPS",
              help="optimiser steps of linear warm-up (default: a tenth of the run, at most 100, for"
                   " cosine; none for step and constant)")
@click.option("--patience", type=int, default=None, metavar="N",
              help="stop early when the validation loss has not improved for N epochs (default: off);"
                   " the best epoch is kept in OUT's .best.npz twin in any case")
@json_option
@click.option("--json-lines", is_flag=True,
              help="print one JSON object per epoch on stdout as it finishes, then the --json summary")
@click.option("--quiet", "-q", is_flag=True, help="print only the final summary")
@click.option("--sync-bn", is_flag=True,
              help="under mpiexec: BatchNorm statistics over the whole global batch (default: each"
                   " rank normalises with its own shard's)")
@_bounded_sizes
@_distributed_errors
def train(backend, epochs, batch_size, lr, optimizer, seed, augment, dataset, data_dir, download,
          model_name, image_size, channels, n_train, out, resume, force, schedule, warmup, patience,
          as_json, json_lines, quiet, sync_bn):
    """Train a CNN; by default the tutorial's network on triangles, squares and circles.

    The shapes images are generated from --seed (no download); --dataset picks a real data set.
    The checkpoint in --out is updated after every epoch; `polycnn evaluate` and `polycnn
    predict` use it.

    Data parallel: `mpiexec -n 2 polycnn train ...` (needs `pip install 'polycnn[mpi]'`) runs
    2 processes, each training on its half of every --batch-size batch (a multiple of the
    number of processes); only the first prints and writes --out."""
    rank, comm = _join_mpi()
    _check_choice_int(epochs, "--epochs", 1, MAX_EPOCHS)
    _check_choice_int(seed, "--seed", 0)
    if out is None:
        out = DEFAULT_OUT if dataset == "shapes" else f"{dataset}.npz"
    _check_choice_int(batch_size, "--batch-size", 1)
    _check_choice_int(n_train, "--n-train", 10)
    _check_choice_int(warmup, "--warmup", 0)
    _check_choice_int(patience, "--patience", 1)
    if as_json and json_lines:
        raise click.UsageError("choose --json (one summary) or --json-lines (one line per epoch, then"
                               " the summary), not both")
    if dataset == "shapes":
        image_size = DEFAULTS["image_size"] if image_size is None else image_size
        n_train = DEFAULTS["n_train"] if n_train is None else n_train
        _check_choice_int(image_size, "--image-size", 16)
        if image_size % 8:
            raise click.BadParameter(f"must be a multiple of 8 (three 2x2 poolings), got {image_size}",
                                     param_hint="--image-size")
    elif dataset == "folder":
        image_size = DEFAULTS["image_size"] if image_size is None else image_size
        _check_choice_int(image_size, "--image-size", 4)
    elif image_size is not None:
        raise click.BadParameter(f"{dataset} images have a fixed size; --image-size applies to"
                                 " --dataset shapes or folder", param_hint="--image-size")
    if channels is not None and dataset != "folder":
        raise click.BadParameter("applies to --dataset folder only", param_hint="--channels")
    if dataset not in ("shapes", "digits") and data_dir is None and not resume:
        raise click.BadParameter(f"--dataset {dataset} needs the folder of its files",
                                 param_hint="--data-dir")
    if not resume and dataset in ("shapes", "digits") and (data_dir is not None or download):
        raise click.BadParameter(f"the {dataset} data set needs no files", param_hint="--data-dir/--download")
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        raise click.BadParameter(f"must be a positive number, got {lr}", param_hint="--lr")
    if comm is None:
        best_out = _check_out(out, resume, force)
    else:
        if batch_size % comm.size:
            raise click.BadParameter(f"must be a multiple of the {comm.size} processes started by"
                                     f" mpiexec (each takes an equal share), got {batch_size}",
                                     param_hint="--batch-size")
        best_out = best_checkpoint_path(out)
        with comm.guard("checking --out"):   # NOTE: rank 0 alone writes: it alone probes --out
            if rank == 0:
                _check_out(out, resume, force)
    be = pc.get_backend(backend)
    t_start = time.perf_counter()
    if resume:
        ctx = click.get_current_context()
        flags = {param.name: param.opts[0] for param in ctx.command.params}
        fixed = [flags[name] for name in
                 ("batch_size", "lr", "optimizer", "seed", "augment", "image_size", "n_train",
                  "dataset", "download", "model_name", "channels", "schedule", "warmup")
                 if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        if fixed:
            raise ValueError(f"--resume continues the run saved in {out} with its own settings;"
                             f" drop {', '.join(fixed)} (only --epochs, --patience, --backend and"
                             " the output options can change, and --data-dir names where a"
                             " data set's files are now)")
        model = pc.load(out, backend=be)
        run = model.training_state["metadata"].get("run")
        if run is None:
            raise ValueError(f"{out} was not written by `polycnn train`; cannot resume it")
        if data_dir is not None and run.get("dataset", "shapes") in ("shapes", "digits"):
            raise click.BadParameter(f"{out} was trained on {run.get('dataset', 'shapes')}, which"
                                     " needs no files", param_hint="--data-dir")
        run = _stored_run(run, out, model, data_dir, needs_data=True)
        done = model.training_state["epoch"] or 0
        epochs = run["epochs"] if epochs is None else epochs
        if epochs <= done:
            raise ValueError(f"{out} already has {done} of {run['epochs']} epochs; pass --epochs N"
                             f" with N > {done} to train further")
        run["epochs"] = epochs
        if patience is not None:
            run["patience"] = patience
        data = _splits(run, out)
        opt = None
    else:
        epochs = DATASET_DEFAULTS[dataset]["epochs"] if epochs is None else epochs
        lr = DEFAULT_LR[optimizer] if lr is None else lr
        model_name = DATASET_DEFAULTS[dataset]["model"] if model_name is None else model_name
        run = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
               "seed": seed, "augment": augment, "image_size": image_size,
               "channels": int(channels or DEFAULTS["channels"]), "n_train": n_train,
               "n_val": DEFAULTS["n_val"], "n_test": DEFAULTS["n_test"]}
        if dataset != "shapes":
            run.update(dataset=dataset, model=model_name, download=download,
                       data_dir=None if data_dir is None else os.path.abspath(data_dir))
        data = _splits(run, download=download)
        if dataset == "shapes" and model_name == "tutorial":
            model = tutorial_network(image_size, run["channels"], len(CLASSES), backend=be, seed=seed)
        else:
            sample = data["train"][0].shape[1:]
            classes = data.get("classes", CLASSES)
            model = models.build(model_name, sample, len(classes), backend=be, seed=seed,
                                 batch_size=batch_size)
            run.update(dataset=dataset, model=model_name, channels=int(sample[0]),
                       image_size=int(sample[1]), classes=list(classes),
                       normalize=data.get("normalize"))
        run.update(schedule=schedule, warmup=warmup, patience=patience)
        steps = epochs * math.ceil(data["train"][0].shape[0] / batch_size)
        opt = make_optimizer(optimizer, model.parameters(), lr, steps, schedule, warmup)
    t_data = time.perf_counter() - t_start

    classes = run.get("classes", list(CLASSES))
    dataset = run.get("dataset", "shapes")
    progress = _Progress(quiet, as_json, json_lines) if rank == 0 else _Progress(True, False, False)
    if progress.lines:
        what = "resuming" if resume else "training"
        names = ", ".join(classes) if len(classes) <= 5 else f"{len(classes)} classes"
        click.echo(f"{what} {run.get('model', 'tutorial')} on the {dataset} data set ({names}):"
                   f" {data['train'][0].shape[0]:,}"
                   f" training, {data['val'][0].shape[0]:,} validation, {data['test'][0].shape[0]:,} test"
                   f" images of {run['channels']}x{run['image_size']}x{run['image_size']}, backend"
                   f" {be.name}, {run['optimizer']} lr {run['lr']:g}, batch {run['batch_size']},"
                   f" {run['epochs']} epochs{', augmented' if run['augment'] else ''}"
                   + (f"; {comm.size} processes (mpiexec), {run['batch_size'] // comm.size} images"
                      f" each per step" if comm is not None else ""))
    before = _file_stamp(out)
    try:
        history = pc.fit(model, data["train"], epochs=run["epochs"], batch_size=run["batch_size"],
                         optimizer=opt, val=data["val"],
                         augment=default_augment(dataset) if run["augment"] else None,
                         seed=None if resume else run["seed"], callback=progress, checkpoint=out,
                         resume=resume, metadata={"run": run, "classes": classes},
                         best_checkpoint=best_out, early_stopping=run.get("patience"),
                         distributed=comm is not None, sync_bn=sync_bn)
    except KeyboardInterrupt as exc:
        if rank > 0:
            sys.exit(130)   # NOTE: rank 0 says where the run stopped
        if progress.bar:
            click.echo("", err=True)
        resume_hint = f"continue with `polycnn train --resume --out {out}`"
        if isinstance(exc, pc.TrainingInterrupted) and (exc.step or exc.epoch > 0):
            # NOTE: fit stopped between two steps and saved the state after the last one
            click.echo(f"{exc}; {resume_hint}", err=True)
        else:
            # NOTE: a second Ctrl-C (or one before training began): the file, if any, holds the
            # last finished epoch, possibly written just before the epoch's callback: ask it
            saved = resume or _file_stamp(out) != before
            hint = (f"; the last finished epoch is saved in {out}: {resume_hint}" if saved
                    else "; nothing was saved")
            click.echo(f"interrupted{hint}", err=True)
        sys.exit(130)
    if rank > 0:
        return
    test = pc.evaluate(model, data["test"])
    total = time.perf_counter() - t_start
    train_seconds = float(np.nansum(history["seconds"]))
    summary = {
        "checkpoint": os.path.abspath(out), "backend": be.name, "epochs": run["epochs"],
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "per_class_accuracy": dict(zip(classes, test["per_class_accuracy"])),
        "val_accuracy": history["val_accuracy"][-1], "train_accuracy": history["accuracy"][-1],
        "images_per_s": float(np.nanmean(history["images_per_s"][-max(1, len(history["epoch"]) - 1):])),
        "train_seconds": train_seconds, "data_seconds": t_data, "total_seconds": total,
        "parameters": sum(p.size for p in model.parameters()), "run": run,
        "history": {k: list(v) for k, v in history.items()},
        "best_checkpoint": os.path.abspath(best_out), "best_epoch": history.best_epoch(),
        "stopped_early": history.stopped_early,
    }
    if as_json or json_lines:
        echo_json(summary)
    else:
        _print_summary(summary, history, test, run, be, out, best_out)
    problem = _non_finite_losses(history, test, best_out)
    if problem:
        fail(problem, 1)


def _print_summary(summary, history, test, run, be, out, best_out) -> None:
    best = history.best_epoch()
    if history.stopped_early is not None:
        click.echo(f"stopped early after epoch {history.stopped_early}: the validation loss has not"
                   f" improved for {run['patience']} epochs (best: epoch {best})")
    per_class = ", ".join(f"{c} {a:.1%}" for c, a in summary["per_class_accuracy"].items())
    click.echo(f"test accuracy {test['accuracy']:.2%} on {test['n']:,} held-out images ({per_class});"
               f" test loss {test['loss']:.4f}")
    click.echo(f"trained {run['epochs']} epochs in {summary['train_seconds']:.1f} s"
               f" ({summary['images_per_s']:,.0f} img/s on {be.name});"
               f" {summary['total_seconds']:.1f} s in all")
    kept = (f"the epoch with the lowest validation loss ({best}) is in {best_out}" if best is not None
            else "no epoch had a finite validation loss")
    click.echo(f"checkpoint saved to {out}  (try: polycnn evaluate {out}); {kept}")


def _non_finite_losses(history, test: dict, best_out: str) -> str | None:
    """What makes the run's results untrustworthy (exit 1): a NaN or infinite validation loss
    in any epoch (such an epoch is never the best and counts against --patience), or test loss.
    The training loss is checked by fit itself (TrainingDiverged)."""
    bad = [(int(e), v) for e, v in zip(history["epoch"], history["val_loss"]) if not math.isfinite(v)]
    parts = []
    if bad:
        shown = ", ".join(f"{e} ({v})" for e, v in bad[:5]) + (
            f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        parts.append(f"the validation loss was not finite in epoch{'s' if len(bad) > 1 else ''}"
                     f" {shown}")
    if not math.isfinite(test["loss"]):
        parts.append(f"the test loss is {test['loss']}")
    if not parts:
        return None
    best = history.best_epoch()
    kept = (f"the best epoch with a finite validation loss ({best}) is in {best_out}"
            if best is not None else "no epoch had a finite validation loss")
    return (f"{' and '.join(parts)}: the model's outputs hold NaN or inf, so this run's results"
            f" cannot be trusted; {kept}")


def _file_stamp(path: str):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def best_checkpoint_path(out: str) -> str:
    """Where the epoch with the lowest validation loss is kept: shapes.npz -> shapes.best.npz."""
    stem, ext = os.path.splitext(out)
    return f"{stem}.best{ext or '.npz'}"


def _load_for_use(checkpoint, backend, data_dir=None, needs_data=False, run_optional=False):
    """(model, its checked run settings, class names) from a checkpoint of `polycnn train`;
    with ``run_optional``, from any checkpoint (run None when it holds no run settings)."""
    model = pc.load(checkpoint, backend=backend)
    meta = model.training_state["metadata"]
    run = None
    if not run_optional or meta.get("run") is not None:
        run = _stored_run(meta.get("run"), checkpoint, model, data_dir, needs_data)
    classes = meta.get("classes") or (run or {}).get("classes")
    if classes is None:
        classes = [str(i) for i in range(model.layers[-1].out_features)]
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)
            and len(classes) == model.layers[-1].out_features):
        raise ValueError(f"{checkpoint}: the checkpoint's class names {classes!r:.80} are not"
                         f" {model.layers[-1].out_features} names")
    return model, run, classes


#: inputs a step of `polycnn evaluate` and `polycnn predict`
_EVAL_BATCH = 256


def _check_batch(model, run: dict, n: int, checkpoint) -> None:
    """The activations of one evaluation step of ``n`` inputs (at most :data:`_EVAL_BATCH`)
    against the memory limit: a checkpoint's model may be huge for its small weights."""
    image = (run["channels"], run["image_size"], run["image_size"])
    limits.check_model(model.layers, checkpoint, image, max(1, min(n, _EVAL_BATCH)))


@click.command()
@click.argument("checkpoint", type=click.Path())
@backend_option
@click.option("--n-test", type=int, default=None,
              help="shapes: test images to generate (default: as trained); other data sets: use"
                   " only the first N test images")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="where the data set's files are now (default: the folder it was trained from)")
@json_option
def evaluate(checkpoint, backend, n_test, data_dir, as_json):
    """Accuracy, per-class accuracy and confusion matrix on the held-out test split of the data
    set the checkpoint was trained on."""
    _check_choice_int(n_test, "--n-test", 1)
    model, run, classes = _load_for_use(checkpoint, backend, data_dir, needs_data=True)
    dataset = run.get("dataset", "shapes")
    if data_dir is not None and dataset in ("shapes", "digits"):
        raise click.BadParameter(f"{checkpoint} was trained on {dataset}, which needs no files",
                                 param_hint="--data-dir")
    if dataset == "shapes":
        run = dict(run, n_test=n_test or run["n_test"])
        x, y = _splits(run, checkpoint if n_test is None else f"--n-test {n_test}")["test"]
    else:
        x, y = _splits(dict(run, n_train=None))["test"]
        x, y = x[:n_test], y[:n_test]
    _check_batch(model, run, len(y), checkpoint)
    t0 = time.perf_counter()
    r = pc.evaluate(model, (x, y), batch_size=_EVAL_BATCH)
    r.update({"checkpoint": checkpoint, "backend": model.backend.name, "classes": classes,
              "seconds": time.perf_counter() - t0})
    if not math.isfinite(r["loss"]):
        fail(f"{checkpoint}: the test loss is {r['loss']}: the model's outputs hold NaN or inf, so"
             f" its accuracy ({r['accuracy']:.2%}) means nothing", 1)
    if as_json:
        echo_json(r)
        return
    click.echo(f"{checkpoint}: accuracy {r['accuracy']:.2%} on {r['n']:,} held-out test images"
               f" (loss {r['loss']:.4f}, backend {model.backend.name})\n")
    click.echo(format_table(["class", "accuracy", "images"],
                            [[c, f"{a:.2%}", sum(row)] for c, a, row in
                             zip(classes, r["per_class_accuracy"], r["confusion_matrix"])]))
    click.echo("\nconfusion matrix (rows: true class, columns: predicted)")
    click.echo(format_table(["true \\ predicted", *classes],
                            [[c, *row] for c, row in zip(classes, r["confusion_matrix"])]))


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@backend_option
@json_option
def predict(checkpoint, inputs, backend, as_json):
    """Classify images: .npy arrays shaped like the training images ((C, H, W) or (N, C, H, W),
    floats about 0..1, or uint8 pixels 0..255) or PNG/JPEG files (needs Pillow; resized to the
    trained size)."""
    for path in inputs:
        limits.regular_file(path, "input")
    model, run, classes = _load_for_use(checkpoint, backend)
    rows = []
    for path in inputs:
        x = read_input(path, run["channels"], run["image_size"])
        if x.dtype.kind == "f":
            x = _normalize(x, run).astype(model.dtype)
        # else a .npy of integers, bools or complex numbers: pc.predict converts uint8 pixels
        # as the training images were scaled and refuses the rest
        _check_batch(model, run, len(x), checkpoint)
        try:
            probs = pc.predict(model, x, batch_size=_EVAL_BATCH)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{path}: {exc}") from None
        for i, p in enumerate(probs):
            name = path if len(probs) == 1 else f"{path}[{i}]"
            rows.append({"input": name, "class": classes[int(p.argmax())],
                         "probabilities": dict(zip(classes, map(float, p)))})
    if as_json:
        echo_json({"checkpoint": checkpoint, "predictions": rows})
        return
    click.echo(format_table(["input", "class", *classes],
                            [[r["input"], r["class"], *(f"{v:.3f}" for v in r["probabilities"].values())]
                             for r in rows]))


COMMANDS = [train, evaluate, predict]
