"""Data-parallel training (see fit and polycnn.distributed): the communicator, the check that
every rank trains the same run, one rank's shard of a step, the shared validation and
synchronised BatchNorm."""

from __future__ import annotations

import contextlib
import hashlib
import math

import numpy as np

from ..augment import Augment
from ..losses import cross_entropy
from ._evaluation import evaluate


def _communicator(distributed):
    """None for a one-process run; the communicator of a data-parallel run of several ranks."""
    if distributed is False or distributed is None:
        return None
    from .. import distributed as _dist

    if distributed is True:
        comm = _dist.world()
    elif isinstance(distributed, _dist.Communicator):
        comm = distributed
    else:
        raise TypeError(f"distributed must be True, False or a pc.distributed.Communicator, got"
                        f" {distributed!r:.60}")
    return comm if comm.size > 1 else None


def _same_run(comm, setup) -> None:
    """Every rank must train the same run: same data size, batch, epochs, starting point and
    generator state; else each raises, naming what differs."""
    x, y, optimizer, history, start, position, rng, n, n_batches, batch_size, epochs = setup[:11]
    # NOTE: plain ints: the ranks exchange this as JSON
    mine = {"images": int(n), "image shape": [int(d) for d in x.shape[1:]],
            "batch_size": int(batch_size), "epochs": int(epochs), "first epoch": int(start),
            "step": int(position["step"]) if position else 0,
            "generator": hashlib.sha256(str(rng.bit_generator.state).encode()).hexdigest()[:16],
            "parameters": [[int(d) for d in p.shape] for p in optimizer.params]}
    every = comm.allgather_objects(mine, "comparing the ranks' runs")
    for key in mine:
        values = [m[key] for m in every]
        if any(v != values[0] for v in values):
            raise ValueError(f"the {comm.size} ranks were given different runs: {key} is "
                             + ", ".join(f"{v!r:.40} on rank {r}" for r, v in enumerate(values))
                             + "; start every rank with the same arguments and data")


def _buffers(model) -> list:
    """Non-trained state (BatchNorm running statistics), updated in place."""
    return [a for layer in model.layers for a in getattr(layer, "_buffers", {}).values()]


def _dropout_layers(model) -> list:
    from ..layers import Dropout

    return [layer for layer in model.layers if isinstance(layer, Dropout)]


def _distributed_step(model, comm, x, y, idx, augment, rng, label_smoothing, interrupted):
    """This rank's shard of one global batch: forward and backward on its rows, with the
    augmentation and dropout draws the whole batch gets in a one-process run; then one
    exchange of (failed, loss, correct, Ctrl-C) and the mean of the gradients.
    -> (the global batch's mean loss, its correct predictions, whether to stop here)."""
    be = model.backend
    m = idx.shape[0]
    lo, hi = m * comm.rank // comm.size, m * (comm.rank + 1) // comm.size
    params = model.parameters()
    failure, loss, correct = None, 0.0, 0
    try:
        sidx = idx[lo:hi]
        xb = x[sidx]
        if augment is None:
            pass
        elif isinstance(augment, Augment):
            xb = augment(xb, rng, rows=slice(lo, hi), batch=m)
        else:   # NOTE: a callable of its own: the whole batch, so its draws are the same
            xb = augment(x[idx], rng)[lo:hi]
        dropouts = _dropout_layers(model)
        if hi > lo:
            for layer in dropouts:
                layer.sample_offset = lo
            try:
                logits = model(xb)
            finally:
                for layer in dropouts:
                    layer.sample_offset = 0
            loss, dlogits = cross_entropy(be, logits, y[sidx], label_smoothing)
            correct = int((be.to_numpy(logits.argmax(axis=1)) == y[sidx]).sum())
            if m % comm.size:
                # NOTE: unequal shards (the last batch): each rank's mean loss weighted by its
                # share, before the backward pass, so synchronised BatchNorm sees it too
                dlogits = dlogits * dlogits.dtype.type((hi - lo) * comm.size / m)
            model.backward(dlogits, input_grad=False)
        else:
            # NOTE: an empty shard (a last batch smaller than the ranks): the draws of the
            # dropout keys the forward pass would make, and no gradient
            for layer in dropouts:
                if layer.p:
                    rng.integers(0, 1 << 64, dtype=np.uint64)
            for p in params:
                p.grad = be.xp.zeros(p.data.shape, dtype=p.data.dtype)
    except Exception as exc:
        failure = exc
    rows = comm.gather_host([failure is not None, loss * (hi - lo), correct, bool(interrupted)],
                            "a training step")
    if rows[:, 0].any():
        comm.raise_failure(failure, "a training step")
        raise failure
    total = rows[0].copy()
    for r in range(1, rows.shape[0]):
        total += rows[r]
    mean_loss = float(total[1]) / m
    if not math.isfinite(mean_loss):
        return mean_loss, int(total[2]), False
    buf = comm.pack(be, [p.grad for p in params])
    comm.reduce_packed(be, buf)
    at = 0
    for p in params:
        p.grad = buf[at:at + p.data.size].reshape(p.data.shape)
        at += p.data.size
    return mean_loss, int(total[2]), bool(total[3])


def _evaluate_shared(model, val, label_smoothing, comm) -> dict:
    """Validation loss and accuracy with the set split between the ranks."""
    xv, yv = val
    n = len(yv)
    lo, hi = n * comm.rank // comm.size, n * (comm.rank + 1) // comm.size
    with comm.guard("evaluating the validation set"):
        part = [0.0, 0.0]
        if hi > lo:
            v = evaluate(model, (xv[lo:hi], yv[lo:hi]), label_smoothing=label_smoothing)
            part = [v["loss"] * (hi - lo), round(v["accuracy"] * (hi - lo))]
    total = comm.sum_host(part, "validation metrics")
    return {"loss": float(total[0]) / n, "accuracy": float(total[1]) / n}


@contextlib.contextmanager
def _synced_batchnorm(model, comm):
    """With a communicator: the model's BatchNorm2d layers normalise with the statistics of the
    whole global batch while the block runs (see polycnn.distributed.sync_batchnorm)."""
    if comm is None:
        yield
        return
    from .. import distributed as _dist
    from ..layers import BatchNorm2d

    layers = [layer for layer in model.layers if isinstance(layer, BatchNorm2d)]
    for layer in layers:
        _dist.sync_batchnorm(layer, comm)
    try:
        yield
    finally:
        for layer in layers:
            _dist.sync_batchnorm(layer, None)
