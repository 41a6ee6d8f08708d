"""What a training run reports and keeps: its history, its errors (divergence, Ctrl-C) and the
deferred handling of Ctrl-C between two steps."""

from __future__ import annotations

import signal
import threading

import numpy as np

#: history keys; every one is a list with one entry per epoch
HISTORY_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s",
                "seconds")


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`fit` between two steps. ``path``: the checkpoint holding the state
    after the last finished step (None when ``fit`` had no checkpoint path); ``epoch``: the
    finished epochs; ``step``, ``steps``: the steps done of the next epoch, and its number of
    steps."""

    def __init__(self, path, epoch: int, step: int, steps: int):
        self.path, self.epoch, self.step, self.steps = path, epoch, step, steps
        where = (f"in epoch {epoch + 1} after step {step} of {steps}" if step
                 else f"after epoch {epoch}")
        saved = (f"the state after that {'step' if step else 'epoch'} is saved in {path}"
                 if path is not None else "nothing was saved (no checkpoint path)")
        super().__init__(f"interrupted {where}: {saved}")


class _DeferredInterrupt:
    """While active (main thread, Python's default SIGINT handler only), the first SIGINT sets
    ``requested``, read by ``fit`` between steps; a second raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = self.forced = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True

    def defer(self):
        """A KeyboardInterrupt caught between steps (from a callback): stop at the next check,
        unless it was the second Ctrl-C's."""
        if self.forced:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _position_from(state: dict, n: int, batch_size: int, n_batches: int) -> dict | None:
    """The checked position inside an unfinished epoch of a resumed checkpoint, or None."""
    pos = state.get("position")
    if not pos:
        return None
    if (pos.get("n"), pos.get("batch_size"), pos.get("steps")) != (n, batch_size, n_batches):
        raise ValueError(f"{state.get('path')}: the run was interrupted at step {pos.get('step')}"
                         f" of {pos.get('steps')} in epoch {pos.get('epoch')}, training on"
                         f" {pos.get('n')} images in batches of {pos.get('batch_size')}; resume it"
                         f" with the same data and batch size (got {n} images in batches of"
                         f" {batch_size})")
    return pos


class History(dict):
    """Per-epoch lists: epoch, loss, accuracy, val_loss, val_accuracy, lr, images_per_s, seconds
    (val_* are NaN without validation data; images_per_s and seconds are timings, the rest is
    determined by the seed). ``stopped_early`` is the epoch after which early stopping ended the
    run (None when it ran to the end)."""

    def __init__(self, data=None):
        super().__init__({k: [] for k in HISTORY_KEYS})
        self.stopped_early = None
        if data:
            for k in HISTORY_KEYS:
                self[k] = [float("nan") if v is None else v for v in data.get(k, [])]

    def last(self) -> dict:
        return {k: v[-1] for k, v in self.items() if v}

    def best_epoch(self):
        """The epoch with the lowest validation loss (the first of equals), or None."""
        losses = np.asarray(self["val_loss"], dtype=float)
        if not np.isfinite(losses).any():
            return None
        return int(self["epoch"][int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))])

    def epochs_without_improvement(self) -> int:
        """Epochs recorded after the best validation loss (0 when the last one is the best). A
        NaN or infinite validation loss is never an improvement: with no finite one yet, every
        recorded epoch counts."""
        if not self["epoch"]:
            return 0
        best = self.best_epoch()
        first = int(self["epoch"][0]) - 1
        return int(self["epoch"][-1]) - (first if best is None else best)
