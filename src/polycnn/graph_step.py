"""A training step captured into a CUDA graph, replayed without host work (cupy, cupy-emu).

For a small network on a big GPU a step is bounded by launches and host work, not by FLOPs: a
step of the shapes CNN is some 60 kernel launches, each with its Python-side checks. A
:class:`CapturedStep` runs the whole step — forward, cross-entropy, backward, the optimiser's
update, the running loss and accuracy count — once eagerly for each new batch shape (which
compiles every kernel and fills a private memory pool), captures it into a CUDA graph the second
time, and from then on only copies the batch in and launches the graph::

    step = pc.CapturedStep(model, pc.SGD(model.parameters(), lr=0.05, momentum=0.9))
    for xb, yb in batches:          # host arrays
        step(xb, yb)
        if step.steps % 50 == 0:
            print(step.read())      # {"loss": ..., "accuracy": ..., "steps": 50, "samples": ...}

- Batches go through two pinned host buffers a shape, copied on the session's stream into static
  device buffers that the graph reads: the host fills one buffer while the other is copied.
- The loss and the count of correct predictions stay on the device, summed over steps;
  :meth:`CapturedStep.read` copies them back (one synchronisation) when asked, not every step.
- The result is the eager step's, bit for bit: the graph holds the same kernels with the same
  arguments (tests/test_graph_step.py shows it on cupy-emu, whose stand-in records and replays a
  capture; tests/test_gpu_cupy.py on a GPU).

What a graph cannot hold is refused when the step is made, with the reason: anything a step
computes on the host. So: SGD with a constant learning rate (no schedule; momentum, Nesterov and
weight decay are fine), no Dropout in training mode (each step draws a new mask key on the
host). Adam's bias correction and schedules change a kernel's scalar arguments every step; they
would need those scalars in device memory (not done).
"""

from __future__ import annotations

import numpy as np

from .layers import Dropout, Sequential
from .losses import check_labels
from .optim import SGD


class _ShapeState:
    """What one batch shape needs: static device buffers, pinned host buffers, the graph."""

    def __init__(self, session, backend, x_shape, dtype, n):
        self.x = backend.xp.empty(x_shape, dtype=dtype)
        self.y = backend.xp.empty((n,), dtype=np.int64)
        self.pinned = [(session.pinned(x_shape, dtype), session.pinned((n,), np.int64))
                       for _ in range(2)]
        self.events = [None, None]
        self.turn = 0
        self.graph = None
        self.runs = 0


class CapturedStep:
    """One training step of ``model`` with ``optimizer``, captured into a CUDA graph once per
    batch shape (see the module docstring). ``label_smoothing`` as in ``pc.losses``."""

    def __init__(self, model, optimizer, label_smoothing: float = 0.0):
        if not isinstance(model, Sequential):
            raise TypeError(f"CapturedStep: model must be a pc.Sequential, got"
                            f" {type(model).__name__}")
        backend = model.backend
        if not hasattr(backend, "capture_session") or not hasattr(backend, "cross_entropy_device"):
            raise ValueError(f"CapturedStep: capturing a step needs a CUDA backend ('cupy' or"
                             f" 'cupy-emu'); the model runs on {backend.name!r}")
        if not isinstance(optimizer, SGD):
            raise TypeError(f"CapturedStep: the optimiser must be pc.SGD (its update has no"
                            f" per-step scalar), got {type(optimizer).__name__}")
        if optimizer.schedule is not None:
            raise ValueError(f"CapturedStep: the optimiser's schedule ({optimizer.schedule!r})"
                             " changes the learning rate every step, which a graph would replay"
                             " unchanged; use a constant learning rate")
        params = model.parameters()
        if [id(p) for p in optimizer.params] != [id(p) for p in params]:
            raise ValueError("CapturedStep: the optimiser must update this model's parameters"
                             " (pc.SGD(model.parameters(), ...))")
        for i, layer in enumerate(model.layers):
            if isinstance(layer, Dropout) and layer.p > 0:
                raise ValueError(f"CapturedStep: layer {i} ({layer!r}) draws a new dropout mask"
                                 " key on the host every step, which a graph would replay"
                                 " unchanged; remove it or train without capture")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"CapturedStep: label_smoothing must be in [0, 1), got"
                             f" {label_smoothing!r}")
        self.model = model
        self.optimizer = optimizer
        self.label_smoothing = float(label_smoothing)
        self.backend = backend
        self.session = backend.capture_session()
        self._shapes: dict = {}
        self.steps = 0
        xp = backend.xp
        with self.session.running():
            self._loss_sum = xp.zeros((1,), dtype=np.float64)
            self._correct = xp.zeros((1,), dtype=np.int64)
        self._since = {"steps": 0, "samples": 0}

    # ---- one step -------------------------------------------------------------------------
    def _check_batch(self, x, y):
        model = self.model
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise TypeError(f"CapturedStep: x must be a 4-D numpy array (N, C, H, W) on the host,"
                            f" got {type(x).__name__} of shape {getattr(x, 'shape', None)}")
        if x.dtype != model.dtype:
            raise TypeError(f"CapturedStep: x is {x.dtype} but the model is {model.dtype.name}")
        if x.shape[0] == 0:
            raise ValueError("CapturedStep: the batch is empty (x has shape"
                             f" {tuple(x.shape)})")
        classes = model.output_shape(tuple(x.shape[1:]))[-1]
        return check_labels(y, x.shape[0], classes)

    def _body(self, state: _ShapeState) -> None:
        """The step itself: device work only, nothing read back (what the graph holds)."""
        be, model, opt = self.backend, self.model, self.optimizer
        opt.zero_grad()
        logits = model(state.x)
        loss, dlogits = be.cross_entropy_device(logits, state.y, self.label_smoothing)
        model.backward(dlogits, input_grad=False)
        opt.step()
        n = np.float64(state.y.shape[0])
        self._loss_sum += loss * n
        self._correct += (be.xp.argmax(logits, axis=1) == state.y).sum()

    def __call__(self, x, y) -> None:
        """One training step on the host batch ``x`` (N, C, H, W) with labels ``y`` (N,)."""
        labels = self._check_batch(x, y)
        self.model.train()
        key = tuple(x.shape)
        state = self._shapes.get(key)
        if state is None:
            state = self._shapes[key] = _ShapeState(self.session, self.backend, key, x.dtype,
                                                    x.shape[0])
        # double buffering: fill the pinned buffer whose last copy has ended
        slot = state.turn
        state.turn ^= 1
        if state.events[slot] is not None:
            state.events[slot].synchronize()
        px, py = state.pinned[slot]
        np.copyto(px, x)
        np.copyto(py, labels)
        with self.session.running():
            self.session.upload(state.x, px)
            state.events[slot] = self.session.upload(state.y, py)
        if state.runs == 0:
            with self.session.running():  # eager: compiles kernels, fills the pool
                self._body(state)
        else:
            if state.graph is None:
                t = self.optimizer.t
                state.graph = self.session.capture(lambda: self._body(state))
                self.optimizer.t = t  # nothing ran
            self.session.launch(state.graph)
            self.optimizer.t += 1
        state.runs += 1
        self.steps += 1
        self._since["steps"] += 1
        self._since["samples"] += int(x.shape[0])

    def read(self) -> dict:
        """The mean loss and the accuracy over the steps since the last read (one copy from
        the device, which waits for them), then start counting again."""
        self.session.synchronize()
        loss = float(self.backend.to_numpy(self._loss_sum)[0])
        correct = int(self.backend.to_numpy(self._correct)[0])
        samples, steps = self._since["samples"], self._since["steps"]
        with self.session.running():
            self._loss_sum.fill(0)
            self._correct.fill(0)
        self._since = {"steps": 0, "samples": 0}
        return {"loss": loss / samples if samples else float("nan"),
                "accuracy": correct / samples if samples else float("nan"),
                "steps": steps, "samples": samples}

    def graphs(self) -> int:
        """How many graphs are held (one per batch shape seen twice)."""
        return sum(s.graph is not None for s in self._shapes.values())


__all__ = ["CapturedStep"]
