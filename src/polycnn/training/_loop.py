"""Training loop, evaluation and prediction, written once above the backend.

``fit`` shuffles each epoch, runs mini-batches (forward, softmax cross-entropy, backward,
optimiser step), evaluates the validation set, records a history and can save a checkpoint
after every epoch. Shuffling, augmentation and dropout-mask keys all draw from one host
``numpy.random.Generator``; its state is saved with the checkpoint, so a run resumed from epoch
k ends with exactly the weights of the uninterrupted run.

Ctrl-C (SIGINT) during ``fit`` stops it between two optimiser steps, never inside one: the first
SIGINT is noted and the current step finishes; the state after it (weights, optimiser, generator,
the position in the epoch) is saved to ``checkpoint`` and :class:`TrainingInterrupted` (a
``KeyboardInterrupt``) is raised. A run resumed from that file continues with the next step and
ends with exactly the weights of the uninterrupted run. A second Ctrl-C stops at once, saving
nothing new. (Only where ``fit`` runs in the main thread with Python's default SIGINT handler;
elsewhere a KeyboardInterrupt is not caught.)
"""

from __future__ import annotations

import math
import time

import numpy as np

from .. import checkpoint as _checkpoint
from ..losses import cross_entropy
from ..optim import Optimizer
from ._evaluation import _batches, evaluate
from ._parallel import (_buffers, _communicator, _distributed_step, _evaluate_shared, _same_run,
                        _synced_batchnorm)
from ._setup import _fit_setup
from ._state import HISTORY_KEYS, TrainingDiverged, TrainingInterrupted, _DeferredInterrupt


def fit(model, data, *, epochs: int = 1, batch_size: int = 64, optimizer: Optimizer | None = None,
        val=None, augment=None, seed: int | None = None, label_smoothing: float = 0.0,
        callback=None, checkpoint=None, resume: bool = False, metadata: dict | None = None,
        best_checkpoint=None, early_stopping: int | None = None, distributed=False,
        sync_bn: bool = False) -> History:
    """Train ``model`` on ``data = (x, y)`` (host arrays) until ``epochs`` epochs are done.

    - ``optimizer``: default ``SGD(lr=0.01, momentum=0.9)``;
    - ``val``: (x, y) evaluated after each epoch; ``augment``: a :class:`~polycnn.Augment`;
    - ``seed``: reseeds the generator for shuffling, augmentation and dropout (None: keep the
      model's generator);
    - ``callback(event)``: called with a dict after every batch (``event["kind"] == "batch"``,
      with ``eta_s``, the seconds this epoch still needs at its rate so far, and ``run_eta_s``,
      the same for the whole run) and every epoch (``"epoch"``, with the history entry, ``best``:
      whether its validation loss is the lowest so far, and ``stop``: whether early stopping
      ends the run after it);
    - ``checkpoint``: a path written after every epoch (with ``metadata``);
    - ``best_checkpoint``: a path written after every epoch whose validation loss is the lowest
      so far (needs ``val``);
    - ``early_stopping``: a patience: stop when the validation loss has not improved for that
      many epochs in a row (needs ``val``; None: run every epoch). ``history.stopped_early``
      then holds the last epoch;
    - ``resume``: continue the run stored in a model from :func:`polycnn.load` (optimiser,
      generator, epoch, history and, after a Ctrl-C, the position in the epoch come from the
      checkpoint);
    - ``distributed``: True (or a :class:`polycnn.distributed.Communicator`) under ``mpiexec``:
      data-parallel training, see below; ``sync_bn``: BatchNorm statistics over the whole
      global batch instead of each rank's shard.

    A NaN or infinite loss raises :class:`TrainingDiverged`; the checkpoint of the last finished
    epoch is left as it was. Ctrl-C raises :class:`TrainingInterrupted` after saving the state
    after the last finished step to ``checkpoint`` (see the module doc).

    Data parallel (``distributed=True`` with several ranks): every rank calls ``fit`` with the
    same arguments and data. Rank 0's parameters are broadcast first; each global batch of
    ``batch_size`` images (divisible by the number of ranks) is split in rank order, and each
    rank reads, augments and runs only its shard, with the randomness (shuffle, augmentation,
    dropout keys) of the one-process run, so the run follows the one-process run up to
    rounding. Gradients are averaged in one packed buffer per step (in rank order unless the
    communicator is not deterministic); loss and accuracy are summed over the ranks; the
    validation set is split between the ranks. BatchNorm normalises with each rank's shard
    statistics unless ``sync_bn`` (the running statistics are averaged over the ranks after
    every epoch, so all ranks hold the same model). Only rank 0 calls ``callback`` and writes
    ``checkpoint`` and ``best_checkpoint``. An exception on one rank stops every rank (the
    others raise :class:`polycnn.distributed.RankFailed`); a checkpoint resumes on any number
    of ranks.
    """
    comm = _communicator(distributed)
    setup = _setup_every_rank(comm, model, data, epochs, batch_size, optimizer, val, augment, seed,
                              label_smoothing, callback, checkpoint, resume, metadata,
                              best_checkpoint, early_stopping, sync_bn)
    loop = _Loop(model, setup, comm, val=val, augment=augment, callback=callback,
                 checkpoint=checkpoint, best_checkpoint=best_checkpoint, metadata=metadata,
                 resume=resume, sync_bn=sync_bn)
    return loop.run()


def _setup_every_rank(comm, *args):
    """_fit_setup on every rank: under a communicator a failure on any rank stops them all,
    and the ranks must agree on the run."""
    failure = setup = None
    try:
        setup = _fit_setup(*args, comm)
    except Exception as exc:
        if comm is None:
            raise
        failure = exc
    if comm is not None:
        with comm.guard("fit's set-up"):
            if failure is not None:
                raise failure
        _same_run(comm, setup)
    return setup


class _Epoch:
    """Where one epoch is: its generator state at the start and order, its learning rate, the
    first step to run, the sums so far and its start time."""

    def __init__(self, loop, epoch: int):
        position, rng = loop.position, loop.rng
        if position is not None:
            # NOTE: a run interrupted inside this epoch: its order from the generator's state
            # at the epoch's start, its sums so far; the generator itself is where it was
            self.rng_state = position["epoch_rng"]
            order = np.random.default_rng()
            order.bit_generator.state = self.rng_state
            self.order = order.permutation(loop.n)
            self.lr, self.first = position["lr"], int(position["step"])
            self.seen, self.loss_sum, self.correct = int(position["seen"]), \
                float(position["loss_sum"]), int(position["correct"])
            self.t0 = time.perf_counter() - float(position["seconds"])
            loop.position = None
        else:
            self.rng_state = rng.bit_generator.state
            self.order = rng.permutation(loop.n)
            self.lr, self.first = loop.optimizer.current_lr, 0
            self.seen, self.loss_sum, self.correct = 0, 0.0, 0
            self.t0 = time.perf_counter()
        self.epoch, self.step = epoch, self.first


class _Loop:
    """One call of fit after its set-up: the epochs, their steps, the checkpoints, the callback
    and Ctrl-C."""

    def __init__(self, model, setup, comm, *, val, augment, callback, checkpoint,
                 best_checkpoint, metadata, resume, sync_bn):
        (self.x, self.y, self.optimizer, self.history, self.start, self.position, self.rng,
         self.n, self.n_batches, self.batch_size, self.epochs, self.label_smoothing,
         self.early_stopping, _) = setup
        self.model, self.be, self.comm = model, model.backend, comm
        self.rank0 = comm is None or comm.rank == 0
        self.val, self.augment, self.checkpoint = val, augment, checkpoint
        self.best_checkpoint, self.metadata, self.resume = best_checkpoint, metadata, resume
        self.sync_bn = sync_bn
        self.callback = callback if self.rank0 else None
        self.interrupt = None

    def run(self):
        history = self.history
        if self.early_stopping is not None and self.start > 0 and \
                history.epochs_without_improvement() >= self.early_stopping:
            # NOTE: a resumed run that had already stopped early stays stopped
            history.stopped_early = self.start
            return history
        if self.comm is not None:
            self.comm.broadcast_arrays(self.be, [p.data for p in self.model.parameters()]
                                       + _buffers(self.model), "the initial parameters")
        with _DeferredInterrupt() as self.interrupt, \
                _synced_batchnorm(self.model, self.comm if self.sync_bn else None):
            self.run_t0 = time.perf_counter()
            self.steps_before = self.start * self.n_batches + \
                (self.position["step"] if self.position else 0)
            self.model.train()
            for epoch in range(self.start, self.epochs):
                if self._epoch(epoch):
                    break
        return history

    def save(self, path, **kw):
        # NOTE: the loss is checked before each update, so the last update of an epoch can make
        # the weights non-finite with every loss finite: such a state never replaces a checkpoint
        bad = [p.name for p in self.model.parameters() if not bool(self.be.xp.isfinite(p.data).all())]
        if bad:
            raise TrainingDiverged(
                f"the parameters {', '.join(bad)} became NaN or infinite (learning rate"
                f" {self.optimizer.current_lr:g}); {path} was not overwritten: lower the learning"
                " rate")
        if self.comm is None:
            _checkpoint.save(path, self.model, **kw)
            return
        with self.comm.guard(f"saving {path}"):
            if self.rank0:
                _checkpoint.save(path, self.model, **kw)

    def stop_here(self, epoch: int, e: _Epoch | None):
        """Ctrl-C: save the state after step ``e`` of epoch ``epoch`` + 1 (none: the finished
        epoch ``epoch``, saved already) and raise TrainingInterrupted."""
        step = 0 if e is None else e.step
        if self.checkpoint is not None and step:
            pos = {"epoch": epoch + 1, "step": step, "steps": self.n_batches, "n": self.n,
                   "batch_size": self.batch_size, "epoch_rng": e.rng_state, "lr": e.lr,
                   "seen": e.seen, "loss_sum": e.loss_sum, "correct": e.correct,
                   "seconds": time.perf_counter() - e.t0}
            self.save(self.checkpoint, optimizer=self.optimizer, rng=self.rng, epoch=epoch,
                      history=self.history, metrics=self.history.last() or None, position=pos,
                      **(self.metadata or {}))
        raise TrainingInterrupted(self.checkpoint, epoch, step, self.n_batches)

    def _epoch(self, epoch: int) -> bool:
        """One epoch from where it stands; -> whether early stopping ends the run."""
        e = _Epoch(self, epoch)
        for bi, (a, b) in enumerate(_batches(self.n, self.batch_size)):
            if bi < e.first:
                continue
            stop_now = self._step(e, bi, e.order[a:b])
            e.step = bi + 1
            self._report_batch(e, bi)
            if (self.interrupt.requested if self.comm is None else stop_now):
                self.stop_here(epoch, e)
        self.be.synchronize()
        return self._end_epoch(e)

    def _step(self, e: _Epoch, bi: int, idx) -> bool:
        """One optimiser step on the rows ``idx``; -> whether another rank asks to stop."""
        be, y, stop_now = self.be, self.y, False
        if self.comm is None:
            xb = self.x[idx]
            if self.augment is not None:
                xb = self.augment(xb, self.rng)
            logits = self.model(xb)
            loss, dlogits = cross_entropy(be, logits, y[idx], self.label_smoothing)
        else:
            loss, step_correct, stop_now = _distributed_step(
                self.model, self.comm, self.x, y, idx, self.augment, self.rng,
                self.label_smoothing, self.interrupt.requested)
        if not math.isfinite(loss):
            saved = self.checkpoint is not None and (e.epoch > self.start or self.resume)
            kept = (f"; the last good checkpoint (epoch {e.epoch}) is kept at {self.checkpoint}"
                    if saved else "")
            raise TrainingDiverged(
                f"the loss became {loss} at epoch {e.epoch + 1}, batch {bi + 1}/{self.n_batches}"
                f" (learning rate {self.optimizer.current_lr:g}); lower the learning rate{kept}")
        if self.comm is None:
            # NOTE: counted before the backward pass: the loss has just waited for the device,
            # and a copy to the host after the backward would wait for all of it (on a GPU the
            # next batch's host work then overlaps this step's backward and update)
            e.correct += int((be.to_numpy(logits.argmax(axis=1)) == y[idx]).sum())
            self.model.backward(dlogits, input_grad=False)
        else:
            e.correct += step_correct
        self.optimizer.step()
        e.seen += idx.shape[0]
        e.loss_sum += loss * idx.shape[0]
        return stop_now

    def _report_batch(self, e: _Epoch, bi: int) -> None:
        """The callback's "batch" event (a Ctrl-C in it stops after this step)."""
        if self.callback is None:
            return
        now = time.perf_counter()
        elapsed = now - e.t0
        eta = (self.n_batches - bi - 1) * elapsed / (bi + 1)
        per_batch = (now - self.run_t0) / (e.epoch * self.n_batches + bi + 1 - self.steps_before)
        try:
            self.callback({"kind": "batch", "epoch": e.epoch + 1, "epochs": self.epochs,
                           "batch": bi + 1, "batches": self.n_batches,
                           "loss": e.loss_sum / e.seen, "accuracy": e.correct / e.seen,
                           "images_per_s": e.seen / elapsed if elapsed > 0 else float("nan"),
                           "eta_s": eta, "run_eta_s": eta + (self.epochs - e.epoch - 1)
                           * self.n_batches * per_batch})
        except KeyboardInterrupt:
            self.interrupt.defer()   # NOTE: the step is finished: stop as for SIGINT

    def _validate(self) -> dict:
        if self.comm is None:
            return evaluate(self.model, self.val, label_smoothing=self.label_smoothing)
        return _evaluate_shared(self.model, self.val, self.label_smoothing, self.comm)

    def _end_epoch(self, e: _Epoch) -> bool:
        """The epoch's history entry, validation, checkpoints and callback; Ctrl-C after it.
        -> whether early stopping ends the run."""
        epoch, history, comm = e.epoch, self.history, self.comm
        seconds = time.perf_counter() - e.t0
        entry = {"epoch": epoch + 1, "loss": e.loss_sum / e.seen, "accuracy": e.correct / e.seen,
                 "val_loss": float("nan"), "val_accuracy": float("nan"), "lr": e.lr,
                 "images_per_s": e.seen / seconds, "seconds": seconds}
        if comm is not None and not self.sync_bn:
            comm.allreduce_mean(self.be, _buffers(self.model), "BatchNorm statistics")
        if self.val is not None:
            v = self._validate()
            entry["val_loss"], entry["val_accuracy"] = v["loss"], v["accuracy"]
        for k in HISTORY_KEYS:
            history[k].append(entry[k])
        best = self.val is not None and history.best_epoch() == epoch + 1
        stop = self.early_stopping is not None and epoch + 1 < self.epochs and \
            history.epochs_without_improvement() >= self.early_stopping
        saved = dict(optimizer=self.optimizer, rng=self.rng, epoch=epoch + 1, history=history,
                     metrics=entry, **(self.metadata or {}))
        if self.checkpoint is not None:
            self.save(self.checkpoint, **saved)
        if best and self.best_checkpoint is not None:
            self.save(self.best_checkpoint, **saved)
        if self.callback is not None:
            try:
                self.callback({"kind": "epoch", "epochs": self.epochs, **entry, "best": best,
                               "stop": stop})
            except KeyboardInterrupt:
                self.interrupt.defer()
        if stop:
            history.stopped_early = epoch + 1
            return True
        requested = self.interrupt.requested if comm is None else \
            bool(comm.sum_host([float(self.interrupt.requested)], "Ctrl-C")[0])
        if requested and epoch + 1 < self.epochs:
            self.stop_here(epoch + 1, None)   # NOTE: saved above already
        return False
