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
- A Conv2d that a ReLU follows runs as one kernel, the ReLU in the convolution's epilogue
  (``backend.conv2d_relu_forward``; ``fuse=False`` runs the two kernels); ``precision`` goes to
  every convolution (``"tf32"``: the tensor cores, see the backend contract).
- ``graph=False`` runs every step eagerly (the same work, for comparison).
- The result is the eager step's, bit for bit: the graph holds the same kernels with the same
  arguments, and the fused kernel gives the two kernels' bits (tests/backends/test_graph_step.py shows it
  on cupy-emu, whose stand-in records and replays a capture; tests/backends/test_gpu_cupy.py on a GPU).

What a graph cannot hold is refused when the step is made, with the reason: anything a step
computes on the host. So: SGD, Adam or AdamW with a constant learning rate (no schedule).
Values that change every step live in device memory and are copied in with the batch:
- Adam's two bias corrections: the step applies Adam's update (optim.Adam._update) with them in
  place of its host scalars;
- each dropout layer's mask key: drawn on the host from the model's generator as
  ``Dropout.forward`` draws it (same order, same sample offset), and read by the mask kernel
  from the device (``backend.dropout_keys``).
The tests hold both to the eager step's bits.
"""

from __future__ import annotations

import numpy as np

import math
from types import SimpleNamespace

from .hashing import GAMMA
from .layers import Conv2d, Dropout, ReLU, Sequential
from .losses import check_labels
from .optim import SGD, Adam


class _ShapeState:
    """What one batch shape needs: static device buffers, pinned host buffers, the graph."""

    def __init__(self, session, backend, x_shape, dtype, n):
        self.x = backend.xp.empty(x_shape, dtype=dtype)
        self.y = backend.xp.empty((n,), dtype=np.int64)
        self.pinned = [(session.pinned(x_shape, dtype), session.pinned((n,), np.int64))
                       for _ in range(2)]
        #: Adam's bias corrections, [lr / (1 - b1^t), 1 / sqrt(1 - b2^t)], per dtype and slot
        self.pinned_scalars = [{} for _ in range(2)]
        #: the dropout layers' mask keys, per slot
        self.pinned_keys = [None, None]
        #: the mask shape of each dropout layer at this batch shape
        self.mask_shapes = None
        self.events = [None, None]
        self.turn = 0
        self.graph = None
        self.runs = 0


class CapturedStep:
    """One training step of ``model`` with ``optimizer``, captured into a CUDA graph once per
    batch shape (see the module docstring). ``label_smoothing`` as in ``pc.losses``;
    ``precision`` of every convolution ("float32" or "tf32"); ``fuse``: a Conv2d and the ReLU
    after it as one kernel; ``graph=False``: no capture, every step eager."""

    def __init__(self, model, optimizer, label_smoothing: float = 0.0,
                 precision: str = "float32", fuse: bool = True, graph: bool = True):
        if not isinstance(model, Sequential):
            raise TypeError(f"CapturedStep: model must be a pc.Sequential, got"
                            f" {type(model).__name__}")
        backend = model.backend
        if not hasattr(backend, "capture_session") or not hasattr(backend, "cross_entropy_device"):
            raise ValueError(f"CapturedStep: capturing a step needs a CUDA backend ('cupy' or"
                             f" 'cupy-emu'); the model runs on {backend.name!r}")
        if not isinstance(optimizer, (SGD, Adam)):
            raise TypeError(f"CapturedStep: the optimiser must be pc.SGD, pc.Adam or pc.AdamW,"
                            f" got {type(optimizer).__name__}")
        if optimizer.schedule is not None:
            raise ValueError(f"CapturedStep: the optimiser's schedule ({optimizer.schedule!r})"
                             " changes the learning rate every step, which a graph would replay"
                             " unchanged; use a constant learning rate")
        params = model.parameters()
        if [id(p) for p in optimizer.params] != [id(p) for p in params]:
            raise ValueError("CapturedStep: the optimiser must update this model's parameters"
                             " (pc.SGD(model.parameters(), ...))")
        #: the layers that draw a mask key each step (in forward order)
        self._dropouts = [(i, layer) for i, layer in enumerate(model.layers)
                          if isinstance(layer, Dropout) and layer.p > 0]
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"CapturedStep: label_smoothing must be in [0, 1), got"
                             f" {label_smoothing!r}")
        for name, flag in (("fuse", fuse), ("graph", graph)):
            if not isinstance(flag, bool):
                raise TypeError(f"CapturedStep: {name} must be True or False, got {flag!r}")
        try:
            backend._check_precision(precision, model.dtype)
        except ValueError as exc:
            raise ValueError(f"CapturedStep: {exc}") from None
        self.precision = precision
        self.fuse = fuse
        self.graph = graph
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
            # Adam's per-step scalars on the device, one pair per parameter dtype
            self._scalars = {np.dtype(p.data.dtype): xp.zeros((2,), dtype=p.data.dtype)
                             for p in params} if isinstance(optimizer, Adam) else {}
            self._keys = xp.zeros((max(1, len(self._dropouts)),), dtype=np.uint64)
        self._key_slots = [self._keys[j:j + 1] for j in range(len(self._dropouts))]
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
        logits = self._forward(state.x)
        loss, dlogits = be.cross_entropy_device(logits, state.y, self.label_smoothing)
        model.backward(dlogits, input_grad=False)
        if self._scalars:
            self._adam_step()
        else:
            opt.step()
        n = np.float64(state.y.shape[0])
        self._loss_sum += loss * n
        self._correct += (be.xp.argmax(logits, axis=1) == state.y).sum()

    def _forward(self, x):
        """model(x), the convolutions at ``precision``, each Conv2d that a ReLU follows fused
        with it; every layer keeps the context its backward pass reads."""
        be, layers = self.backend, self.model.layers
        i = 0
        while i < len(layers):
            layer = layers[i]
            if not isinstance(layer, Conv2d):
                x = layer.forward(x)
                i += 1
                continue
            w = layer._params["weight"].data
            b = layer._params["bias"].data if layer.bias else None
            args = (x, w, b, layer.stride, layer.padding, layer.dilation, self.precision)
            if self.fuse and i + 1 < len(layers) and type(layers[i + 1]) is ReLU:
                x, layer._ctx, layers[i + 1]._ctx = be.conv2d_relu_forward(*args)
                i += 2
            else:
                x, layer._ctx = be.conv2d_forward(*args)
                i += 1
        return x

    def _adam_step(self) -> None:
        """optim.Adam's step with its two per-step scalars read from the device."""
        opt = self.optimizer
        lr = opt.current_lr
        opt.t += 1
        b1, b2 = opt.betas
        for i, p in enumerate(opt.params):
            if p.grad is None:
                continue
            xp_t = p.data.dtype.type
            scalars = self._scalars[np.dtype(p.data.dtype)]
            step, denom_scale = scalars[0:1], scalars[1:2]
            g = p.grad
            if opt.weight_decay and not opt._decoupled:
                g = g + xp_t(opt.weight_decay) * p.data
            m = opt._buffer(opt.state[i], "m", p)
            v = opt._buffer(opt.state[i], "v", p)
            m *= xp_t(b1)
            m += xp_t(1 - b1) * g
            v *= xp_t(b2)
            v += xp_t(1 - b2) * (g * g)
            if opt.weight_decay and opt._decoupled:
                p.data *= xp_t(1 - lr * opt.weight_decay)
            denom = (v ** xp_t(0.5)) * denom_scale
            denom += xp_t(opt.eps)
            p.data -= step * (m / denom)

    def _upload_scalars(self, state: _ShapeState, slot: int) -> None:
        """Adam's bias corrections for the coming step (t = optimizer.t + 1), as Adam computes
        them in float64 then rounds them to each parameter dtype."""
        if not self._scalars:
            return
        opt = self.optimizer
        t = opt.t + 1
        b1, b2 = opt.betas
        values = (opt.current_lr / (1 - b1 ** t), 1.0 / math.sqrt(1 - b2 ** t))
        for dtype, device in self._scalars.items():
            pinned = state.pinned_scalars[slot].get(dtype)
            if pinned is None:
                pinned = state.pinned_scalars[slot][dtype] = self.session.pinned((2,), dtype)
            pinned[0], pinned[1] = dtype.type(values[0]), dtype.type(values[1])
            self.session.upload(device, pinned)

    def _mask_shapes(self, x_shape) -> list:
        """Each dropout layer's mask shape for a batch of ``x_shape``."""
        shapes, sample, done = [], tuple(x_shape[1:]), 0
        for i, layer in self._dropouts:
            for inner in self.model.layers[done:i]:  # one sample's shape at layer i's input
                sample = inner.output_shape(sample)
            done = i
            shapes.append(layer._mask_shape(SimpleNamespace(shape=(x_shape[0],) + tuple(sample))))
        return shapes

    def _upload_keys(self, state: _ShapeState, slot: int):
        """Draw each dropout layer's key for the coming step as Dropout.forward does, and copy
        them to the device; the upload's event, or None without dropout."""
        if not self._dropouts:
            return None
        if state.mask_shapes is None:
            state.mask_shapes = self._mask_shapes(state.x.shape)
        pinned = state.pinned_keys[slot]
        if pinned is None:
            pinned = state.pinned_keys[slot] = self.session.pinned((len(self._dropouts),),
                                                                    np.uint64)
        for j, ((_, layer), shape) in enumerate(zip(self._dropouts, state.mask_shapes)):
            key = int(layer._rng.integers(0, 1 << 64, dtype=np.uint64))
            if layer.sample_offset:
                key = (key + layer.sample_offset * math.prod(shape[1:]) * GAMMA) % (1 << 64)
            pinned[j] = key
        return self.session.upload(self._keys[:len(self._dropouts)], pinned)

    def _capture(self, state: _ShapeState):
        """The graph of one step; nothing runs, and the host state the capture touched (the
        optimiser's step count, the generators the dropout layers drew from) is put back."""
        t = self.optimizer.t
        rngs = {id(layer._rng): layer._rng for _, layer in self._dropouts}
        saved = {k: r.bit_generator.state for k, r in rngs.items()}
        try:
            with self.backend.dropout_keys(self._key_slots, write=False):
                return self.session.capture(lambda: self._body(state))
        finally:
            self.optimizer.t = t
            for k, r in rngs.items():
                r.bit_generator.state = saved[k]

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
            self._upload_scalars(state, slot)
            self.session.upload(state.x, px)
            state.events[slot] = self.session.upload(state.y, py)
        if state.runs == 0 or not self.graph:
            # eager: compiles kernels, fills the pool; the layers draw their own keys
            with self.session.running(), self.backend.dropout_keys(self._key_slots, write=True):
                self._body(state)
        else:
            if state.graph is None:
                state.graph = self._capture(state)
            with self.session.running():
                event = self._upload_keys(state, slot)
            if event is not None:
                state.events[slot] = event
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
