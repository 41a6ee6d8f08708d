"""Helpers of the interchange tests (ONNX, safetensors, PyTorch weights): outputs compared
relative to the largest one, onnxruntime on one thread, models with random arrays."""

from __future__ import annotations

import os

import numpy as np

RTOL = 1e-5


def assert_close(got, want, what: str, rtol: float = RTOL):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    err = float(np.max(np.abs(got.astype(np.float64) - want)) / max(np.max(np.abs(want)), 1e-30))
    assert err <= rtol, (f"{what}: relative error {err:.3g} > {rtol:g}\n got {got.ravel()[:6]}"
                         f"\nwant {want.ravel()[:6]}")


def ort_session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])


def ort_run(session, x):
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def randomize(model, seed: int = 1):
    """Every parameter and buffer drawn at random (BatchNorm's running statistics too, so that
    the inference form is exercised; variances positive)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, a in model.named_arrays().items():
        shape = tuple(a.shape)
        if name.endswith("running_var"):
            arrays[name] = rng.uniform(0.3, 2.0, shape)
        else:
            arrays[name] = rng.normal(0.0, 0.5, shape)
    model.load_arrays(arrays)
    return model
