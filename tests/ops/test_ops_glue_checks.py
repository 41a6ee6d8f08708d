"""The shape of every glue op (linear, ReLU, dropout, SGD's step, cross-entropy): the public
method of base.Backend checks its arguments once, on every backend alike, and hands its ``_op``
C-contiguous arrays of the backend's type and one float dtype; a backend implements only the
``_op``s. What a backend's ``_op`` used to route elsewhere (host arrays, other dtypes, a bad
shape) is now refused with one message, whatever the backend."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

import polycnn
from polycnn import losses
from polycnn.backends import _checks
from polycnn.backends.base import Backend

GLUE_OPS = ("_linear_forward", "_linear_backward", "_relu_forward", "_relu_backward",
            "_dropout_mask", "_dropout_apply", "_sgd_step", "_cross_entropy")
#: the glue ops each backend runs with its own kernels (the others: the base's, on ``xp``)
OWN_KERNELS = {
    "numpy": set(),
    "numba": {"_linear_forward", "_linear_backward", "_relu_forward", "_relu_backward",
              "_dropout_mask", "_cross_entropy"},
    "cupy": {"_relu_forward", "_relu_backward", "_dropout_mask", "_dropout_apply", "_sgd_step",
             "_cross_entropy"},
}
OWN_KERNELS["cupy-emu"] = OWN_KERNELS["cupy"]


def _f32(backend, *shape, fill=1.0):
    return backend.asarray(np.full(shape, fill, np.float32))


def test_each_backend_runs_its_own_glue_kernels(backend):
    """The ``_op``s a backend overrides are the ones it has kernels for: a missing override
    would silently run the base's array functions instead."""
    own = {op for op in GLUE_OPS if getattr(type(backend), op) is not getattr(Backend, op)}
    assert own == OWN_KERNELS[backend.name]


def test_no_glue_op_falls_back_to_the_base():
    """A backend's ``_op`` assumes what the public check guarantees: no isinstance test, no
    call back into the base class."""
    from polycnn.backends import cupy_backend, numba_backend, numpy_backend

    classes = (numpy_backend.NumpyBackend, numba_backend.NumbaBackend,
               cupy_backend.CupyBackend)
    for cls in classes:
        for op in GLUE_OPS:
            fn = getattr(cls, op)
            if fn is getattr(Backend, op):
                continue
            source = inspect.getsource(fn)
            assert "super()" not in source and "isinstance" not in source, (cls.__name__, op)


@pytest.mark.parametrize("op", ["relu", "linear", "dropout_apply", "sgd_step", "cross_entropy"])
def test_the_public_op_hands_its_op_contiguous_arrays_once(backend, op, monkeypatch):
    """A transposed (non-contiguous) input reaches the ``_op`` once, C-contiguous, of the
    backend's array type, and the result equals that of a contiguous copy."""
    calls = []
    name = {"relu": "_relu_forward", "linear": "_linear_forward"}.get(op, "_" + op)
    inner = getattr(backend, name)

    def spy(*args, **kwargs):
        # the float arrays and the bool mask (cross_entropy's labels stay on the host)
        arrays = [a for a in args if hasattr(a, "flags") and a.dtype.kind in "fb"]
        calls.append(all(a.flags.c_contiguous and isinstance(a, backend.array_type)
                         for a in arrays))
        return inner(*args, **kwargs)

    monkeypatch.setattr(backend, name, spy)
    rng = np.random.default_rng(1)
    x = backend.asarray(rng.standard_normal((6, 4)).astype(np.float32)).T  # (4, 6), a view
    assert not x.flags.c_contiguous
    if op == "relu":
        got, want = backend.relu_forward(x)[0], np.maximum(backend.to_numpy(x), 0)
    elif op == "linear":
        w = backend.asarray(rng.standard_normal((3, 6)).astype(np.float32))
        got, want = backend.linear_forward(x, w)[0], backend.to_numpy(x) @ backend.to_numpy(w).T
    elif op == "dropout_apply":
        keep = backend.dropout_mask((4, 6), 0.5, 7)
        got = backend.dropout_apply(x, keep, 2.0)
        want = backend.to_numpy(x) * backend.to_numpy(keep) * np.float32(2.0)
    elif op == "sgd_step":
        p = backend.asarray(np.zeros((4, 6), np.float32))
        backend.sgd_step(p, x, None, 1.0, 0.0, 0.0, False)
        got, want = p, -backend.to_numpy(x)
    else:
        got = backend.cross_entropy(x, np.arange(4) % 6)[1]
        z = backend.to_numpy(x).astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        want = (e / e.sum(axis=1, keepdims=True) - np.eye(6)[np.arange(4) % 6]) / 4
    assert calls == [True]
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-5, atol=1e-6)


BAD_CALLS = [
    # (id, call, exception, message)
    ("relu-list", lambda be: be.relu_forward([[1.0, -1.0]]), TypeError, "x must be a"),
    ("relu-int", lambda be: be.relu_forward(be.asarray(np.ones(3, np.int32))), TypeError,
     "x must be float32 or float64"),
    ("relu-dy-dtype", lambda be: be.relu_backward(
        be.asarray(np.ones((2, 3))), be.relu_forward(_f32(be, 2, 3))[1]), TypeError,
     "relu backward: dy is float64 but the forward ran in float32"),
    ("relu-ctx", lambda be: be.relu_backward(
        _f32(be, 2, 3), be.linear_forward(_f32(be, 2, 3), _f32(be, 3, 3))[1]), TypeError,
     "ctx must be the context returned by relu_forward"),
    ("linear-features", lambda be: be.linear_forward(_f32(be, 2, 3), _f32(be, 4, 5)),
     ValueError, "linear: x has 3 features (shape (2, 3)) but w takes 5"),
    ("linear-bias", lambda be: be.linear_forward(_f32(be, 2, 3), _f32(be, 4, 3), _f32(be, 3)),
     ValueError, "linear: b has shape (3,), expected (4,)"),
    ("linear-dtypes", lambda be: be.linear_forward(_f32(be, 2, 3), be.asarray(np.ones((4, 3)))),
     TypeError, "dtypes must match"),
    ("linear-1d", lambda be: be.linear_forward(_f32(be, 3), _f32(be, 4, 3)), ValueError,
     "x must be 2-D"),
    ("linear-dy-shape", lambda be: be.linear_backward(
        _f32(be, 2, 5), be.linear_forward(_f32(be, 2, 3), _f32(be, 4, 3))[1]), ValueError,
     "linear backward: dy has shape (2, 5), expected (2, 4)"),
    ("dropout-float-mask", lambda be: be.dropout_apply(_f32(be, 2, 3), _f32(be, 2, 3), 2.0),
     TypeError, "dropout_apply: keep must be a bool mask"),
    ("dropout-mask-shape", lambda be: be.dropout_apply(
        _f32(be, 2, 3), be.dropout_mask((3, 2), 0.5, 1), 2.0), ValueError,
     "keep has shape (3, 2), which does not broadcast to x's (2, 3)"),
    ("dropout-host-mask", lambda be: be.dropout_apply(_f32(be, 2, 3), [[True] * 3] * 2, 2.0),
     TypeError, "keep must be a"),
    ("sgd-no-velocity", lambda be: be.sgd_step(_f32(be, 3), _f32(be, 3), None, 0.1, 0.9, 0.0,
                                               False), TypeError, "velocity must be a"),
    ("sgd-grad-shape", lambda be: be.sgd_step(_f32(be, 3), _f32(be, 4), None, 0.1, 0.0, 0.0,
                                              False), ValueError,
     "sgd_step: grad has shape (4,), expected (3,)"),
    ("sgd-grad-dtype", lambda be: be.sgd_step(_f32(be, 3), be.asarray(np.ones(3)), None, 0.1,
                                              0.0, 0.0, False), TypeError,
     "sgd_step: grad is float64, expected float32"),
    ("sgd-p-view", lambda be: be.sgd_step(_f32(be, 3, 2).T, _f32(be, 2, 3), None, 0.1, 0.0, 0.0,
                                          False), ValueError,
     "sgd_step: p is updated in place and must be C-contiguous"),
    ("ce-1d", lambda be: be.cross_entropy(_f32(be, 3), np.zeros(3, int)), ValueError,
     "logits must be 2-D (N, classes)"),
    ("ce-int", lambda be: be.cross_entropy(be.asarray(np.ones((2, 3), np.int64)), [0, 1]),
     TypeError, "logits must be float32 or float64"),
    ("ce-empty", lambda be: be.cross_entropy(_f32(be, 0, 3), np.zeros(0, int)), ValueError,
     "logits (0, 3) are empty"),
    ("ce-smoothing", lambda be: be.cross_entropy(_f32(be, 2, 3), [0, 1], 1.0), ValueError,
     "label_smoothing must be in [0, 1)"),
    ("ce-label-shape", lambda be: be.cross_entropy(_f32(be, 2, 3), np.array([0, 1, 2])),
     ValueError, "labels must be 2 integer classes, shape (2,)"),
    ("ce-label-float", lambda be: be.cross_entropy(_f32(be, 2, 3), np.array([0.0, 1.0])),
     TypeError, "labels must be integers"),
    ("ce-label-range", lambda be: be.cross_entropy(_f32(be, 2, 3), np.array([0, -1])),
     ValueError, "labels must be in [0, 3), got values from -1 to 0"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_public_glue_ops_refuse_bad_input_alike(backend, call, error, message):
    with pytest.raises(error) as info:
        call(backend)
    assert message in str(info.value), str(info.value)


def test_labels_are_checked_in_the_backends_layer():
    """One check_labels, in the backends layer; the model layer (losses) re-exports it."""
    assert losses.check_labels is _checks.check_labels
    assert _checks.check_labels([0, 2], 2, 3).dtype == np.int64


MODEL_LAYER = {"layers", "losses", "training", "models", "optim", "metrics", "recipes",
               "datasets", "graph_step", "checkpoint", "cli", "bench", "data"}


def test_backends_import_nothing_from_the_model_layer():
    root = Path(polycnn.__file__).parent / "backends"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        depth = len(path.relative_to(root).parts)  # 1: backends/x.py, 2: backends/pkg/x.py
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > depth:
                top = (node.module or "").split(".")[0]
                names = [top] if top else [a.name for a in node.names]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = node.module if isinstance(node, ast.ImportFrom) else None
                full = [mod] if mod else [a.name for a in node.names]
                names = [m.split(".")[1] for m in full if m and m.startswith("polycnn.")]
            else:
                continue
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n in MODEL_LAYER]
    assert not offenders, offenders
