"""The cupy backend's training glue: one kernel (glue.cu) where CuPy's array functions take
several. Each is the ``_op`` of a public op of base.Backend, which has checked its arguments:
C-contiguous device arrays of one float dtype (the dropout mask at x's shape, labels int64 in
range on the host). The linear layers keep the base's ``_op`` (CuPy's matmul).

Also the two pieces a CUDA graph needs (graph_step.CapturedStep): ``dropout_keys`` (each mask's
key read from device memory) and ``cross_entropy_device`` (labels and loss stay on the device).
"""

from __future__ import annotations

import contextlib

import numpy as np

from ._cupy_kernels import GLUE_THREADS


class CupyGlue:
    """Mixed into CupyBackend (before Backend): its ``_launch`` and ``_launch_flat`` run the
    kernels."""

    _key_slots = None  # see dropout_keys

    def _relu_forward(self, x):
        """See base; one kernel."""
        y = self.xp.empty(x.shape, dtype=x.dtype)
        self._launch_flat("relu_fwd", x.dtype, x.size, [x, y, np.int64(x.size)],
                          [x.shape, x.shape, None])
        return y

    def _relu_backward(self, dy, ctx):
        x = ctx.inputs["x"]
        dx = self.xp.empty(x.shape, dtype=x.dtype)
        self._launch_flat("relu_bwd", x.dtype, x.size, [dy, x, dx, np.int64(x.size)],
                          [x.shape, x.shape, x.shape, None])
        return dx

    @contextlib.contextmanager
    def dropout_keys(self, slots, write: bool):
        """Inside, each dropout mask takes its key from the next of ``slots`` ((1,) uint64 device
        arrays, one a mask, in the order the masks are made), so that a CUDA graph reads a new
        key each step (graph_step.CapturedStep). ``write``: first copy the key the layer drew
        into its slot (an eager run); else the slot already holds it (a capture: the host fills
        the slots before each launch)."""
        self._key_slots = (iter(slots), bool(write))
        try:
            yield
        finally:
            self._key_slots = None

    def _dropout_mask(self, shape: tuple, threshold: int, key: int):
        """See base; one kernel (with its key from device memory inside dropout_keys)."""
        keep = self.xp.empty(shape, dtype=np.bool_)
        if self._key_slots is not None:
            slots, write = self._key_slots
            slot = next(slots, None)
            if slot is None:
                raise RuntimeError("dropout_keys: more dropout masks than key slots")
            if write:
                slot.set(np.array([key], dtype=np.uint64))
            if keep.size:
                self._launch_flat("dropout_mask_keyed", np.bool_, keep.size,
                                  [keep, np.int64(keep.size), slot, np.uint64(threshold)],
                                  [shape, None, (1,), None])
            return keep
        if keep.size:
            self._launch_flat("dropout_mask", np.bool_, keep.size,
                              [keep, np.int64(keep.size), np.uint64(key), np.uint64(threshold)],
                              [shape, None, None, None])
        return keep

    def _dropout_apply(self, x, keep, scale: float):
        """See base; one kernel."""
        y = self.xp.empty(x.shape, dtype=x.dtype)
        self._launch_flat("dropout_apply", x.dtype, x.size,
                          [x, keep, y, np.int64(x.size), x.dtype.type(scale)],
                          [x.shape, x.shape, x.shape, None, None])
        return y

    def _sgd_step(self, p, grad, velocity, lr, momentum, weight_decay, nesterov) -> None:
        """See base; one kernel a parameter (without momentum, p stands in for velocity)."""
        dtype = np.dtype(p.dtype)
        t = dtype.type
        self._launch_flat("sgd_step", dtype, p.size,
                          [p, grad, velocity if momentum else p, np.int64(p.size), t(lr),
                           t(momentum), t(weight_decay), np.int32(bool(nesterov))],
                          [p.shape, p.shape, p.shape, None, None, None, None, None])

    def _cross_entropy(self, logits, labels, label_smoothing: float):
        """See base; one kernel (one block: rows in a fixed order, a fixed tree), then one
        copy of the loss to the host."""
        loss, dlogits = self.cross_entropy_device(logits, self.xp.asarray(labels),
                                                  label_smoothing)
        return float(self.to_numpy(loss)[0]), dlogits

    def cross_entropy_device(self, logits, labels, label_smoothing: float = 0.0):
        """cross_entropy with the labels already on the device (int64, (N,), each in [0, K):
        the caller checks them on the host, with check_labels) and the loss left there, a (1,)
        float64 array: no copy either way, so a CUDA graph can hold it
        (graph_step.CapturedStep)."""
        n, k = logits.shape
        dtype = np.dtype(logits.dtype)
        dlogits = self.xp.empty((n, k), dtype=dtype)
        loss = self.xp.empty((1,), dtype=np.float64)
        self._launch("cross_entropy", dtype, (1,), (GLUE_THREADS,),
                     [logits, labels, dlogits, loss, np.int32(n), np.int32(k),
                      dtype.type(label_smoothing)],
                     [(n, k), (n,), (n, k), (1,), None, None, None],
                     shared_mem=GLUE_THREADS * 8)
        return loss, dlogits
