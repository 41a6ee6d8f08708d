"""The run configuration of ``polycnn train`` and :func:`polycnn.run`: every default, every
check, and the versioned JSON form a checkpoint stores (``{"run_version": 1, ...}``)."""

from __future__ import annotations

import dataclasses
import math
import os

#: what `polycnn train` does with no options. Measured on the numpy backend, 2 cores: 99.95% test
#: accuracy in 48-59 s wall (~1,000 training images/s); the history is the same on every machine
DEFAULTS = {
    "epochs": 8, "batch_size": 64, "optimizer": "sgd", "seed": 0, "augment": True,
    "image_size": 32, "channels": 3, "n_train": 6000, "n_val": 1000, "n_test": 2000,
}
#: peak learning rate of each optimiser when no lr is given
DEFAULT_LR = {"sgd": 0.05, "adam": 0.002, "adamw": 0.002}
#: learning-rate schedules (see make_schedule)
SCHEDULES = ("cosine", "step", "constant")
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
DATASETS = tuple(DATASET_DEFAULTS)
#: one training sample of each data set with a fixed image size: (channels, height, width)
FIXED_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28),
                "cifar10": (3, 32, 32)}
#: epochs above this are a typo, not a run (a day at 1 s an epoch)
MAX_EPOCHS = 100_000
#: the version of the JSON a checkpoint stores its run in
RUN_VERSION = 1
#: data sets whose files are shipped or generated (no data folder)
NO_FILES = ("shapes", "digits")


class OptionError(ValueError):
    """A bad value of one run setting: ``option`` is its name (``"warmup"``), ``reason`` what is
    wrong with it. The command line shows it as its option (``--warmup``)."""

    def __init__(self, option: str, reason: str):
        super().__init__(f"{option}: {reason}")
        self.option, self.reason = option, reason


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _normalize_ok(v) -> bool:
    return v is None or (isinstance(v, list) and len(v) == 2 and all(
        isinstance(p, list) and p and all(_number(c) and math.isfinite(c) for c in p)
        for p in v) and all(c > 0 for c in v[1]))


#: every field a stored run may hold: name -> (check of the value, what is expected); read by
#: RunConfig.from_json before any value is used. "classes" and "normalize" describe the data the
#: run was trained on; the others are RunConfig's fields
STORED_FIELDS = {
    "dataset": (lambda v: v in DATASETS, f"one of {', '.join(DATASETS)}"),
    "model": (lambda v: isinstance(v, str), "a model name"),
    "epochs": (lambda v: _int(v) and v >= 1, "an int >= 1"),
    "batch_size": (lambda v: _int(v) and v >= 1, "an int >= 1"),
    "lr": (lambda v: _number(v) and math.isfinite(v) and v > 0, "a positive number"),
    "optimizer": (lambda v: v in DEFAULT_LR, f"one of {', '.join(DEFAULT_LR)}"),
    "seed": (lambda v: _int(v) and v >= 0, "an int >= 0"),
    "augment": (lambda v: isinstance(v, bool), "true or false"),
    "image_size": (lambda v: _int(v) and v >= 1, "an int >= 1"),
    "channels": (lambda v: _int(v) and v in (1, 3), "1 or 3"),
    "n_train": (lambda v: v is None or (_int(v) and v >= 1), "an int >= 1"),
    "n_val": (lambda v: _int(v) and v >= 0, "an int >= 0"),
    "n_test": (lambda v: _int(v) and v >= 1, "an int >= 1"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "warmup": (lambda v: v is None or (_int(v) and v >= 0), "an int >= 0 or null"),
    "patience": (lambda v: v is None or (_int(v) and v >= 1), "an int >= 1 or null"),
    "data_dir": (lambda v: v is None or isinstance(v, str), "a folder name"),
    "sync_bn": (lambda v: isinstance(v, bool), "true or false"),
    "classes": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
                "a list of names"),
    "normalize": (_normalize_ok, "[means, stds] or null"),
}
#: what a stored run of the previous release (no "run_version") must hold
_LEGACY_NEEDED = ("epochs", "batch_size", "lr", "optimizer", "seed", "augment", "image_size",
                  "channels", "n_val", "n_test")
#: settings a checkpoint keeps beside the RunConfig: what the data set turned out to be
DATA_FIELDS = ("classes", "normalize")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run of ``polycnn train`` / :func:`polycnn.run`.

    Build one with :meth:`for_dataset`, which fills in the data set's defaults; the fields are
    checked on creation (a bad one raises :class:`OptionError` naming it). ``lr`` is the peak
    of ``schedule`` (cosine: warm-up then a half cosine to 1% of it; step: divided by 10 after
    each third; constant); ``warmup`` in optimiser steps (None: a tenth of the run, at most
    100 steps, for cosine; none otherwise); ``n_train`` None uses every training image;
    ``n_val`` and ``n_test`` count the generated shapes' validation and test images;
    ``patience`` stops early after that many epochs without a better validation loss."""

    dataset: str = "shapes"
    model: str = "tutorial"
    epochs: int = DEFAULTS["epochs"]
    batch_size: int = DEFAULTS["batch_size"]
    optimizer: str = DEFAULTS["optimizer"]
    lr: float = DEFAULT_LR["sgd"]
    schedule: str = "cosine"
    warmup: int | None = None
    augment: bool = DEFAULTS["augment"]
    seed: int = DEFAULTS["seed"]
    image_size: int = DEFAULTS["image_size"]
    channels: int = DEFAULTS["channels"]
    n_train: int | None = DEFAULTS["n_train"]
    n_val: int = DEFAULTS["n_val"]
    n_test: int = DEFAULTS["n_test"]
    patience: int | None = None
    data_dir: str | None = None
    sync_bn: bool = False

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "lr" and _int(value):
                object.__setattr__(self, "lr", float(value))
                continue
            ok, expected = STORED_FIELDS[f.name]
            if not ok(value):
                raise OptionError(f.name, f"must be {expected}, got {value!r:.80}")
        if self.dataset == "shapes" and self.n_train is None:
            raise OptionError("n_train", "must be given for the shapes data set")

    @classmethod
    def for_dataset(cls, name: str = "shapes", **overrides) -> "RunConfig":
        """The run ``polycnn train --dataset NAME`` makes, with ``overrides`` (field names of
        RunConfig; ``lr`` None: the optimiser's default) in place of its defaults. Raises
        :class:`OptionError` for an unknown name or a bad value."""
        if name not in DATASET_DEFAULTS:
            raise OptionError("dataset", f"unknown data set {name!r}; choose one of"
                              f" {', '.join(DATASETS)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"dataset"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise OptionError(unknown[0], f"is not a run setting; RunConfig takes"
                              f" {', '.join(sorted(known))}")
        _check_given(name, overrides)
        return cls(**_filled(name, overrides))

    def replace(self, **changes) -> "RunConfig":
        """A copy with ``changes`` (checked as on creation)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        """The JSON-ready form a checkpoint stores: ``{"run_version": 1, <every field>}``."""
        return {"run_version": RUN_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, obj, source: str = "the run settings") -> "RunConfig":
        """The RunConfig of a stored run: version 1, or the untyped "run" dict of the previous
        release (converted). Every field is checked before any is used; a bad one raises
        ``ValueError`` naming ``source`` and the field. Extra data fields ("classes",
        "normalize") are checked and left out; read them with :func:`stored_data`."""
        return cls(**_stored_fields(obj, source))


#: the bounds of the command line's counts: name -> (lowest, highest or None)
_COUNTS = {"epochs": (1, MAX_EPOCHS), "seed": (0, None), "batch_size": (1, None),
           "n_train": (10, None), "n_test": (1, None), "warmup": (0, None), "patience": (1, None)}


def check_counts(given: dict) -> None:
    """The bounds of the command line's counts (--epochs, --seed, --batch-size, --n-train,
    --n-test, --warmup, --patience) on the values ``given`` (None: not given)."""
    for key, value in given.items():
        lo, hi = _COUNTS[key]
        if value is not None and not _int(value):
            raise OptionError(key, f"must be an int, got {value!r:.80}")
        if value is not None and value < lo:
            raise OptionError(key, f"must be >= {lo}, got {value}")
        if value is not None and hi is not None and value > hi:
            raise OptionError(key, f"must be at most {hi:,}, got {value:,}")


def _check_given(name: str, given: dict) -> None:
    """The rules of the command line's options on the values given for data set ``name``."""
    check_counts({k: v for k, v in given.items() if k in _COUNTS})
    size = given.get("image_size")
    if name == "shapes" and _int(size):
        if size < 16:
            raise OptionError("image_size", f"must be >= 16, got {size}")
        if size % 8:
            raise OptionError("image_size", f"must be a multiple of 8 (three 2x2 poolings), got {size}")
    elif name == "folder" and _int(size) and size < 4:
        raise OptionError("image_size", f"must be >= 4, got {size}")
    elif name in FIXED_SHAPES and size is not None:
        raise OptionError("image_size", f"{name} images have a fixed size; --image-size applies"
                          " to --dataset shapes or folder")
    if given.get("channels") is not None and name != "folder":
        raise OptionError("channels", "applies to --dataset folder only")
    if name not in NO_FILES and given.get("data_dir") is None:
        raise OptionError("data_dir", f"--dataset {name} needs the folder of its files")
    if name in NO_FILES and given.get("data_dir") is not None:
        raise OptionError("data_dir/download", f"the {name} data set needs no files")
    lr = given.get("lr")
    if lr is not None and not (_number(lr) and lr > 0 and math.isfinite(lr)):
        raise OptionError("lr", f"must be a positive number, got {lr}")


def _filled(name: str, given: dict) -> dict:
    """Every field for data set ``name``: ``given`` (None: the default) over the defaults."""
    given = {k: v for k, v in given.items() if v is not None}
    fields = {**{k: DEFAULTS[k] for k in ("batch_size", "optimizer", "seed", "augment",
                                           "image_size", "n_train", "n_val", "n_test")},
              "dataset": name, "model": DATASET_DEFAULTS[name]["model"],
              "epochs": DATASET_DEFAULTS[name]["epochs"], **given}
    fields.setdefault("lr", DEFAULT_LR.get(fields.get("optimizer", DEFAULTS["optimizer"]),
                                           DEFAULT_LR["sgd"]))
    if name in FIXED_SHAPES:
        fields["channels"], fields["image_size"] = FIXED_SHAPES[name][:2]
    else:
        fields["channels"] = int(fields.get("channels", DEFAULTS["channels"]))
    if name != "shapes" and "n_train" not in given:
        fields["n_train"] = None
    if fields.get("data_dir") is not None:
        fields["data_dir"] = os.path.abspath(fields["data_dir"])
    return fields


def _stored_fields(obj, source: str) -> dict:
    """RunConfig's fields from a stored run (version 1 or the previous release's dict)."""
    if obj is None:
        raise ValueError(f"{source} holds no run settings (not written by `polycnn train`)")
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: the checkpoint's run settings are not a JSON object")
    version = obj.get("run_version")
    if version is None:
        obj = _from_legacy(obj, source)
    elif not _int(version) or version != RUN_VERSION:
        raise ValueError(f"{source}: the checkpoint's run settings have run_version {version!r:.40};"
                         f" this polycnn reads version {RUN_VERSION} (and the previous release's)")
    names = {f.name for f in dataclasses.fields(RunConfig)}
    for key, value in obj.items():
        if key == "run_version":
            continue
        if key not in STORED_FIELDS:
            raise ValueError(f"{source}: the checkpoint's run settings hold an unknown field"
                             f" {key!r:.80}")
        ok, expected = STORED_FIELDS[key]
        if not ok(value):
            raise ValueError(f"{source}: the checkpoint's run setting {key} is {value!r:.80},"
                             f" expected {expected}")
    missing = [k for k in names if k not in obj]
    if missing:
        raise ValueError(f"{source}: the checkpoint's run settings lack {missing[0]!r}")
    return {k: obj[k] for k in names}


def _from_legacy(run: dict, source: str) -> dict:
    """The previous release's "run" dict as version 1: its missing fields get the defaults that
    release used (shapes, the tutorial network, cosine, no warm-up, no patience), and its
    ``download`` is dropped (a stored setting never downloads)."""
    for key in _LEGACY_NEEDED:
        if key not in run:
            raise ValueError(f"{source}: the checkpoint's run settings lack {key!r}")
    run = {k: v for k, v in run.items() if k != "download"}
    if run.get("dataset", "shapes") == "shapes" and run.get("n_train") is None:
        raise ValueError(f"{source}: the checkpoint's run settings lack n_train for shapes")
    defaults = {"dataset": "shapes", "model": "tutorial", "n_train": None, "schedule": "cosine",
                "warmup": None, "patience": None, "data_dir": None, "sync_bn": False}
    return {**defaults, **run, "run_version": RUN_VERSION}


def stored_data(obj) -> dict:
    """The data fields a stored run keeps beside its RunConfig ("classes", "normalize"; checked
    by :meth:`RunConfig.from_json` first)."""
    return {k: obj[k] for k in DATA_FIELDS if k in obj}
