"""``polycnn train``, ``polycnn evaluate`` and ``polycnn predict``: option parsing and printing
around :mod:`polycnn.recipes` (the runs, their defaults and checkpoints' run settings)."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time

import click

import polycnn as pc
from polycnn import limits, models, recipes
from polycnn.inputs import read_input

from ._common import backend_option, check_output_file, echo_json, fail, format_table, json_option

DEFAULTS = recipes.DEFAULTS


@contextlib.contextmanager
def _as_options():
    """A bad run setting (:class:`polycnn.recipes.OptionError`) as the option that gave it."""
    try:
        yield
    except recipes.OptionError as exc:
        flags = "/".join("--" + name.replace("_", "-") for name in exc.option.split("/"))
        raise click.BadParameter(exc.reason, param_hint=flags) from None


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
        self.started = False   # NOTE: set when the data is ready and training begins
        self._width = 0

    def __call__(self, e: dict) -> None:
        if e["kind"] == "start":
            self.started = True
            if self.lines:
                click.echo(_announcement(e))
            return
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


def _announcement(e: dict) -> str:
    """The line printed when training begins (fit's "start" event)."""
    c, classes = e["config"], e["classes"]
    names = ", ".join(classes) if len(classes) <= 5 else f"{len(classes)} classes"
    return (f"{'resuming' if e['resume'] else 'training'} {c.model} on the {c.dataset} data set"
            f" ({names}): {e['n_train']:,} training, {e['n_val']:,} validation, {e['n_test']:,} test"
            f" images of {c.channels}x{c.image_size}x{c.image_size}, backend {e['backend']},"
            f" {c.optimizer} lr {c.lr:g}, batch {c.batch_size}, {c.epochs} epochs"
            f"{', augmented' if c.augment else ''}"
            + (f"; {e['processes']} processes (mpiexec), {c.batch_size // e['processes']} images"
               f" each per step" if e["processes"] else ""))


def _check_out(out: str, resume: bool, force: bool) -> str:
    """--out and its .best twin, before any data is made or any training starts: writable file
    names (see check_output_file); an existing file is replaced only with --force (a new run)
    and continued only with --resume. "Another run" is any file already there: polycnn does not
    guess whether an existing checkpoint belongs to the run being started. Returns the twin."""
    if resume and force:
        raise click.UsageError("--force starts a new run over --out; --resume continues the run in"
                               " it: choose one")
    check_output_file(out, "--out")
    best_out = recipes.best_checkpoint_path(out)
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


def _checked_out(out: str, resume: bool, force: bool, comm, batch_size: int) -> None:
    """--out (see _check_out); under mpiexec rank 0 alone probes it, and --batch-size must split
    evenly between the processes."""
    if comm is None:
        _check_out(out, resume, force)
        return
    if batch_size % comm.size:
        raise click.BadParameter(f"must be a multiple of the {comm.size} processes started by"
                                 f" mpiexec (each takes an equal share), got {batch_size}",
                                 param_hint="--batch-size")
    with comm.guard("checking --out"):   # NOTE: rank 0 alone writes: it alone probes --out
        if comm.rank == 0:
            _check_out(out, resume, force)


#: options that define a run: --resume continues the stored one and refuses them
_FIXED = ("batch_size", "lr", "optimizer", "seed", "augment", "image_size", "n_train", "dataset",
          "download", "model_name", "channels", "schedule", "warmup")


def _config(params: dict):
    """The RunConfig of a new run from the options (checked), with its sizes checked against the
    memory limit before anything is generated or read. With --resume: None (the options that
    define a run are refused, as it continues with the stored ones)."""
    if params["resume"]:
        recipes.check_counts({k: params[k] for k in ("epochs", "seed", "batch_size", "n_train",
                                                     "warmup", "patience")})
        ctx = click.get_current_context()
        flags = {param.name: param.opts[0] for param in ctx.command.params}
        fixed = [flags[name] for name in _FIXED
                 if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        if fixed:
            raise ValueError(f"--resume continues the run saved in {params['out']} with its own"
                             f" settings; drop {', '.join(fixed)} (only --epochs, --patience,"
                             " --backend and the output options can change, and --data-dir"
                             " names where a data set's files are now)")
        return None
    names = ("epochs", "batch_size", "lr", "optimizer", "seed", "augment", "data_dir",
             "image_size", "channels", "n_train", "schedule", "warmup", "patience", "sync_bn")
    given = {k: params[k] for k in names}
    config = recipes.RunConfig.for_dataset(params["dataset"], model=params["model_name"], **given)
    recipes.check_sizes(config, " ".join(f"--{k.replace('_', '-')} {params[k]}"
                                          for k in ("n_train", "image_size") if params[k] is not None))
    return config


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
            out = params.get("out") or recipes.default_out(params.get("dataset") or "shapes")
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
@click.option("--dataset", type=click.Choice(recipes.DATASETS), default="shapes", show_default=True,
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
              help=f"checkpoint written after every epoch (default {recipes.default_out('shapes')},"
                   " or DATASET.npz for --dataset DATASET), the best epoch beside it in"
                   " OUT.best.npz; any file"
                   " already at either name needs --force or --resume")
@click.option("--resume", is_flag=True, help="continue the run saved in --out")
@click.option("--force", is_flag=True,
              help="replace --out and its .best twin if they exist (without it, train refuses to"
                   " overwrite any existing file there; --resume continues it instead)")
@click.option("--schedule", type=click.Choice(recipes.SCHEDULES), default="cosine", show_default=True,
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
    params = dict(locals())
    rank, comm = _join_mpi()
    if as_json and json_lines:
        raise click.UsageError("choose --json (one summary) or --json-lines (one line per epoch, then"
                               " the summary), not both")
    out = params["out"] = recipes.default_out(dataset) if out is None else out
    with _as_options():
        config = _config(params)
        _checked_out(out, resume, force, comm, batch_size)
        progress = _Progress(quiet, as_json, json_lines) if rank == 0 else _Progress(True, False, False)
        before, parallel = _file_stamp(out), comm if comm is not None else False
        try:
            if resume:
                result = pc.resume(out, epochs=epochs, patience=patience, data_dir=data_dir,
                                   backend=backend, callback=progress, distributed=parallel,
                                   sync_bn=sync_bn or None)
            else:
                result = pc.run(config, out, backend=backend, download=download, callback=progress,
                                distributed=parallel, force=True)
        except KeyboardInterrupt as exc:
            _interrupted(exc, rank, progress, out, resume, before)
    if rank == 0:
        _report(result, as_json or json_lines)


def _interrupted(exc, rank: int, progress, out: str, resume: bool, before) -> None:
    """Ctrl-C: where the run stopped and how to continue it, exit 130."""
    if rank > 0:
        sys.exit(130)   # NOTE: rank 0 says where the run stopped
    if not progress.started:
        raise exc   # NOTE: before training began: nothing of this run was saved
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


def _report(result, as_json: bool) -> None:
    """The summary (or its JSON), then exit 1 when the run's losses were not finite."""
    summary = result.summary()
    history, test, config = result.history, result.test, result.config
    if as_json:
        echo_json(summary)
    else:
        best = history.best_epoch()
        if history.stopped_early is not None:
            click.echo(f"stopped early after epoch {history.stopped_early}: the validation loss has"
                       f" not improved for {config.patience} epochs (best: epoch {best})")
        per_class = ", ".join(f"{c} {a:.1%}" for c, a in summary["per_class_accuracy"].items())
        click.echo(f"test accuracy {test['accuracy']:.2%} on {test['n']:,} held-out images"
                   f" ({per_class}); test loss {test['loss']:.4f}")
        click.echo(f"trained {config.epochs} epochs in {summary['train_seconds']:.1f} s"
                   f" ({summary['images_per_s']:,.0f} img/s on {result.backend});"
                   f" {summary['total_seconds']:.1f} s in all")
        kept = (f"the epoch with the lowest validation loss ({best}) is in"
                f" {result.best_checkpoint}" if best is not None
                else "no epoch had a finite validation loss")
        click.echo(f"checkpoint saved to {result.checkpoint}  (try: polycnn evaluate"
                   f" {result.checkpoint}); {kept}")
    problem = _non_finite_losses(history, test, result.best_checkpoint)
    if problem:
        fail(problem, 1)


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
    with _as_options():
        recipes.check_counts({"n_test": n_test})
    trained = recipes.load_trained(checkpoint, backend, data_dir, needs_data=True)
    model, config, classes = trained.model, trained.config, trained.classes
    if data_dir is not None and config.dataset in ("shapes", "digits"):
        raise click.BadParameter(f"{checkpoint} was trained on {config.dataset}, which needs no"
                                 " files", param_hint="--data-dir")
    source = checkpoint if n_test is None else f"--n-test {n_test}"
    x, y = recipes.splits(config, source, n_test=n_test, n_train=None)["test"]
    recipes.check_eval_batch(model, config, len(y), checkpoint)
    t0 = time.perf_counter()
    r = pc.evaluate(model, (x, y), batch_size=recipes.EVAL_BATCH)
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
    trained = recipes.load_trained(checkpoint, backend)
    model, config, classes = trained.model, trained.config, trained.classes
    rows = []
    for path in inputs:
        x = read_input(path, config.channels, config.image_size)
        if x.dtype.kind == "f":
            x = recipes.normalize(x, trained.normalize).astype(model.dtype)
        # else a .npy of integers, bools or complex numbers: pc.predict converts uint8 pixels
        # as the training images were scaled and refuses the rest
        recipes.check_eval_batch(model, config, len(x), checkpoint)
        try:
            probs = pc.predict(model, x, batch_size=recipes.EVAL_BATCH)
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
