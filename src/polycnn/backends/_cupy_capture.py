"""CaptureSession: the stream and private memory pool of the CUDA graphs of a captured
training step (graph_step.CapturedStep), made by ``CupyBackend.capture_session``."""

from __future__ import annotations

import contextlib

import numpy as np


class CaptureSession:
    """One stream and one private memory pool, for the CUDA graphs of one captured training
    step (graph_step.CapturedStep): work runs on the stream, allocating from the pool, so the
    memory a graph's kernels use is never handed to other arrays while the graph lives; host
    batches reach static device buffers through pinned memory, copied on the stream.

    NOTE: cudaMalloc is not allowed while a stream captures: run the step once eagerly in
    ``session.running()`` first (the pool then holds every block the capture asks for again)."""

    def __init__(self, xp):
        self.xp = xp
        # NOTE: a blocking stream, so the legacy default stream (where the rest of the backend's
        # work and CuPy's copies to the host run) waits for it and it for them: a parameter read
        # after a step sees the step's result without an explicit synchronisation
        self.stream = xp.cuda.Stream(non_blocking=False)
        self.pool = xp.cuda.MemoryPool()

    @contextlib.contextmanager
    def running(self):
        """Work on the session's stream, allocating from its pool."""
        with self.xp.cuda.using_allocator(self.pool.malloc), self.stream:
            yield

    def capture(self, fn):
        """The CUDA graph of ``fn()``'s work (nothing runs now), captured in relaxed mode where
        CuPy names it (the pool may still call cudaMalloc for a block the eager run did not
        leave in its cache)."""
        mode = getattr(self.xp.cuda.runtime, "streamCaptureModeRelaxed", None)
        with self.running():
            if mode is None:
                self.stream.begin_capture()
            else:
                self.stream.begin_capture(mode)
            try:
                fn()
            finally:
                graph = self.stream.end_capture()
        return graph

    def launch(self, graph) -> None:
        graph.launch(self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def pinned(self, shape, dtype) -> np.ndarray:
        """A host array in page-locked memory (copies from it to the device are asynchronous)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        memory = self.xp.cuda.alloc_pinned_memory(max(1, count * dtype.itemsize))
        return np.frombuffer(memory, dtype=dtype, count=count).reshape(shape)

    def upload(self, device_array, host_array):
        """Copy a (pinned) host array into ``device_array`` on the stream; an event marks its
        end (wait on it before writing the host array again)."""
        device_array.set(host_array, stream=self.stream)
        event = self.xp.cuda.Event(disable_timing=True)
        event.record(self.stream)
        return event
