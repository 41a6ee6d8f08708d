"""A training step captured into a CUDA graph (polycnn.graph_step.CapturedStep) on cupy-emu, whose
stand-in for CuPy records a capture and replays it (cuda.Stream.begin_capture / end_capture,
Graph.launch), and refuses what CUDA refuses during a capture.

- N captured steps give the parameters, buffers, optimiser state and loss of N eager steps (the
  loop pc.fit runs) bit for bit, over two batch shapes (two graphs);
- after capture the step runs no Python layer code (the graph is really replayed);
- the stand-in: a launch is recorded, not run; a replay runs it; host copies, synchronisation and
  host reads during a capture are RuntimeErrors;
- what a graph cannot hold is refused when the step is made (table of cases, in process and in a
  child process).

The same comparison on a real GPU is in test_gpu_cupy.py (``pytest -m gpu``)."""

from __future__ import annotations

import numpy as np
import pytest

import polycnn as pc
from support.hostile import api_case, raises_naming, run_python, snapshot
from polycnn.errors import BackendUnavailable
from polycnn.graph_step import CapturedStep

try:
    from polycnn.backends._cuda_emu import build, standin

    build.compiler()
except BackendUnavailable as exc:  # pragma: no cover - machines without g++
    pytest.skip(f"cupy-emu unavailable: {exc}", allow_module_level=True)


@pytest.fixture(scope="module")
def emu():
    return pc.get_backend("cupy-emu")


OPTIMIZERS = {
    "sgd": lambda params: pc.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda params: pc.Adam(params, lr=0.01, weight_decay=1e-3),
    "adamw": lambda params: pc.AdamW(params, lr=0.01),
}


def small_model(backend, batchnorm=False, optimizer="sgd", dropout=False, sample_offset=0):
    """Conv, ReLU, max-pool, (Dropout2d,) conv (+ BatchNorm), ReLU, average pool, (Dropout,)
    linear: every kind of op a step launches (kernels and CuPy array functions)."""
    layers = [pc.Conv2d(3, 8, 3, padding=1), pc.ReLU(), pc.MaxPool2d(2)]
    layers += [pc.Dropout2d(0.25)] if dropout else []
    layers += [pc.Conv2d(8, 8, 3, padding=1)]
    layers += [pc.BatchNorm2d(8)] if batchnorm else []
    layers += [pc.ReLU(), pc.AvgPool2d(2), pc.Flatten()]
    layers += [pc.Dropout(0.5)] if dropout else []
    layers += [pc.Linear(8 * 2 * 2, 3)]
    model = pc.Sequential(*layers, backend=backend, seed=0)
    for layer in model.layers:
        if isinstance(layer, pc.Dropout):
            layer.sample_offset = sample_offset  # as a data-parallel shard's
    return model, OPTIMIZERS[optimizer](model.parameters())


def batches(count=7):
    """Batches of 4 images, then a last shorter one repeated (a second shape, a second graph)."""
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((4, 3, 8, 8)).astype(np.float32) for _ in range(count - 3)]
    xs += [rng.standard_normal((3, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    return [(x, rng.integers(0, 3, len(x))) for x in xs]


def state(model, opt, backend):
    out = {f"{i}.{p.name}": backend.to_numpy(p.data) for i, p in enumerate(model.parameters())}
    for i, layer in enumerate(model.layers):
        out.update({f"{i}.{k}": backend.to_numpy(v) for k, v in layer.buffers().items()})
    out.update({f"opt.{k}": backend.to_numpy(v) for k, v in opt.state_arrays().items()})
    return out


@pytest.mark.parametrize("batchnorm, optimizer, dropout, offset", [
    (False, "sgd", False, 0), (True, "sgd", False, 0), (True, "adam", False, 0),
    (False, "adamw", True, 0), (False, "sgd", True, 5)],
    ids=["sgd", "batchnorm-sgd", "batchnorm-adam", "adamw-dropout", "sgd-dropout-offset"])
def test_captured_steps_equal_eager_steps_bit_for_bit(emu, batchnorm, optimizer, dropout, offset):
    """Adam's bias corrections and the dropout keys (with a data-parallel shard's sample offset)
    change every step: the graph reads them from the device."""
    data = batches()
    model, opt = small_model(emu, batchnorm, optimizer, dropout, offset)
    losses = []
    for x, y in data:  # the eager step, as pc.fit runs it
        opt.zero_grad()
        loss, dlogits = pc.losses.cross_entropy(emu, model(x), y)
        model.backward(dlogits, input_grad=False)
        opt.step()
        losses.append(loss)
    expected = state(model, opt, emu)

    model2, opt2 = small_model(emu, batchnorm, optimizer, dropout, offset)
    step = CapturedStep(model2, opt2)
    for x, y in data:
        step(x, y)
    assert step.graphs() == 2, "one graph per batch shape"
    got = state(model2, opt2, emu)
    assert got.keys() == expected.keys()
    for name in expected:
        assert np.array_equal(got[name], expected[name]), (
            f"{name} differs after {len(data)} captured steps (batchnorm={batchnorm}): max"
            f" difference {np.abs(got[name] - expected[name]).max():.3g}")
    assert opt2.t == opt.t == len(data)
    assert model2.rng.bit_generator.state == model.rng.bit_generator.state, "keys drawn"
    metrics = step.read()
    sizes = [len(y) for _, y in data]
    assert metrics["steps"] == len(data) and metrics["samples"] == sum(sizes)
    assert metrics["loss"] == pytest.approx(np.dot(losses, sizes) / sum(sizes), rel=1e-12)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert step.read()["steps"] == 0, "read() starts counting again"


def _run(emu, data, **options):
    model, opt = small_model(emu, dropout=True)
    step = CapturedStep(model, opt, **options)
    for x, y in data:
        step(x, y)
    return step, state(model, opt, emu)


def test_fused_and_tf32_steps_equal_their_eager_runs(emu):
    """A Conv2d and its ReLU as one kernel give the two kernels' bits, in fp32 and TF32; the
    graphs give the eager runs' bits; TF32 really changes the training; fusing saves a
    launch per pair (two here)."""
    data = batches(5)
    runs = {(fuse, precision, graph): _run(emu, data, fuse=fuse, precision=precision, graph=graph)
            for fuse in (True, False) for precision in ("float32", "tf32")
            for graph in (True, False)}
    for precision in ("float32", "tf32"):
        reference = runs[(False, precision, False)][1]
        for fuse, graph in ((True, True), (True, False), (False, True)):
            got = runs[(fuse, precision, graph)][1]
            for name in reference:
                assert np.array_equal(got[name], reference[name]), (
                    f"{name}: fuse={fuse} graph={graph} {precision} differs from the unfused"
                    " eager run")
    fp32, tf32 = runs[(True, "float32", True)][1], runs[(True, "tf32", True)][1]
    assert any(not np.array_equal(fp32[k], tf32[k]) for k in fp32), "tf32 changed nothing"
    fused = runs[(True, "float32", True)][0]._shapes[(4, 3, 8, 8)].graph
    unfused = runs[(False, "float32", True)][0]._shapes[(4, 3, 8, 8)].graph
    assert len(fused) == len(unfused) - 2, (len(fused), len(unfused))
    assert runs[(True, "float32", False)][0].graphs() == 0


def test_conv2d_relu_forward_gives_the_two_kernels_bits(emu):
    """NaN passes the fused ReLU as it passes relu_forward, -0 and negatives become +0, and the
    ReLU context from the fused op gives relu_backward's result."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 7, 6)).astype(np.float32)
    x[0, 0, 3, 3] = np.nan
    w = rng.standard_normal((9, 5, 3, 3)).astype(np.float32)
    b = np.zeros(9, np.float32)
    b[0] = -0.0
    args = (emu.asarray(x), emu.asarray(w), emu.asarray(b), 1, 1)
    y, _ = emu.conv2d_forward(*args)
    want, relu_ctx = emu.relu_forward(y)
    got, ctx, fused_ctx = emu.conv2d_relu_forward(*args)
    want, got = emu.to_numpy(want), emu.to_numpy(got)
    assert np.isnan(got).any() and np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(want))
    dy = emu.asarray(rng.standard_normal(got.shape).astype(np.float32))
    assert np.array_equal(emu.to_numpy(emu.relu_backward(dy, fused_ctx)),
                          emu.to_numpy(emu.relu_backward(dy, relu_ctx)), equal_nan=True)
    assert ctx.op == "conv2d" and ctx.inputs["precision"] == "float32"


def test_accuracy_count_is_read_from_the_device(emu):
    """The accuracy over the steps since the last read: the eager model's predictions before
    each update, counted on the host, give the same number."""
    data = batches(6)
    model, opt = small_model(emu)
    correct = 0
    for x, y in data:
        opt.zero_grad()
        logits = model(x)
        correct += int((emu.to_numpy(logits).argmax(axis=1) == y).sum())
        _, dlogits = pc.losses.cross_entropy(emu, logits, y)
        model.backward(dlogits, input_grad=False)
        opt.step()
    model2, opt2 = small_model(emu)
    step = CapturedStep(model2, opt2)
    for x, y in data[:3]:
        step(x, y)
    first = step.read()
    for x, y in data[3:]:
        step(x, y)
    second = step.read()
    total = first["accuracy"] * first["samples"] + second["accuracy"] * second["samples"]
    assert round(total) == correct and first["steps"] == 3 and second["steps"] == 3


def test_after_capture_no_layer_code_runs(emu, monkeypatch):
    """Once a shape's graph exists, a step is a copy and a graph launch: the layers' Python
    forward and backward are not called (they would raise here)."""
    model, opt = small_model(emu)
    step = CapturedStep(model, opt)
    (x, y), (x2, y2) = batches(2)[:2]
    step(x, y)   # eager
    step(x2, y2)  # captured, launched
    before = state(model, opt, emu)

    def forbidden(*args, **kwargs):
        raise AssertionError("layer code ran after capture")

    for layer in model.layers:
        monkeypatch.setattr(layer, "forward", forbidden)
        monkeypatch.setattr(layer, "backward", forbidden)
    step(x, y)
    after = state(model, opt, emu)
    assert any(not np.array_equal(before[k], after[k]) for k in before), "the graph did nothing"


# ---- the stand-in's capture ---------------------------------------------------------------------
def test_standin_records_a_launch_and_replays_it(emu):
    x = emu.asarray(np.arange(6, dtype=np.float32) - 2)
    y = emu.xp.zeros((6,), dtype=np.float32)
    stream = standin.cuda.Stream(non_blocking=True)
    stream.begin_capture()
    emu._launch_flat("relu_fwd", np.float32, 6, [x, y, np.int64(6)], [(6,), (6,), None])
    y2 = y * 2          # a new array, written at replay
    y2 += 1             # in place, recorded
    graph = stream.end_capture()
    assert np.isnan(y.view(np.ndarray)).sum() == 0 and not y.view(np.ndarray).any(), (
        "the kernel ran during capture")
    assert len(graph) == 3
    graph.launch()
    assert emu.to_numpy(y).tolist() == [0, 0, 0, 1, 2, 3]
    assert emu.to_numpy(y2).tolist() == [1, 1, 1, 3, 5, 7]
    x[...] = 5           # replays read the arrays as they are then
    graph.launch()
    assert emu.to_numpy(y2).tolist() == [11] * 6


@pytest.mark.parametrize("what, call", [
    ("asarray of a host array", lambda be: be.asarray(np.ones(3, np.float32))),
    ("asnumpy", lambda be: be.to_numpy(be.xp.zeros(3))),
    ("float()", lambda be: float(be.xp.zeros(1).sum())),
    ("bool()", lambda be: bool((be.xp.zeros(1) > 0).any())),
    ("device synchronisation", lambda be: be.synchronize()),
    ("host-side cross_entropy", lambda be: be.cross_entropy(be.xp.zeros((2, 3), np.float32),
                                                            np.array([0, 1]))),
], ids=lambda v: v if isinstance(v, str) else "")
def test_standin_refuses_host_work_during_capture(emu, what, call):
    """What CUDA refuses while a stream captures (cudaErrorStreamCaptureUnsupported); the same
    calls outside a capture work."""
    stream = standin.cuda.Stream()
    stream.begin_capture()
    try:
        with pytest.raises(RuntimeError, match="not permitted while a stream is capturing"):
            call(emu)
    finally:
        stream.end_capture()
    call(emu)


# ---- what cannot be captured: refused when the step is made --------------------------------------
SETUP = """\
m = pc.Sequential(pc.Conv2d(1, 2, 3), pc.Flatten(), pc.Linear(18, 3), backend="cupy-emu", seed=0)
"""

#: (id, statement after SETUP, exception type, words the message must name)
CASES = [
    ("numpy-backend", 'm = pc.Sequential(pc.Flatten(), pc.Linear(25, 3), backend="numpy")\n'
                      "pc.CapturedStep(m, pc.SGD(m.parameters()))", ValueError,
     ["CapturedStep", "CUDA backend", "'numpy'"]),
    ("optimizer-not-one", "pc.CapturedStep(m, m.parameters())", TypeError,
     ["pc.SGD, pc.Adam or pc.AdamW", "list"]),
    ("schedule", "pc.CapturedStep(m, pc.SGD(m.parameters(), schedule=pc.optim.StepLR(5)))",
     ValueError, ["schedule", "StepLR"]),
    ("adam-schedule", "pc.CapturedStep(m, pc.Adam(m.parameters(),"
                      " schedule=pc.optim.WarmupLR(5)))", ValueError, ["schedule", "WarmupLR"]),
    ("other-params", "m2 = pc.Sequential(pc.Flatten(), pc.Linear(25, 3), backend='cupy-emu')\n"
                     "pc.CapturedStep(m, pc.SGD(m2.parameters()))", ValueError,
     ["this model's parameters"]),
    ("precision-unknown", "pc.CapturedStep(m, pc.SGD(m.parameters()), precision='half')",
     ValueError, ["CapturedStep", "precision", "'half'"]),
    ("fuse-not-bool", "pc.CapturedStep(m, pc.SGD(m.parameters()), fuse='yes')", TypeError,
     ["CapturedStep", "fuse", "'yes'"]),
    ("float64-batch", "s = pc.CapturedStep(m, pc.SGD(m.parameters()))\n"
                      "s(np.zeros((2, 1, 5, 5)), np.array([0, 1]))", TypeError,
     ["float64", "float32"]),
    ("label-out-of-range", "s = pc.CapturedStep(m, pc.SGD(m.parameters()))\n"
                           "s(np.zeros((2, 1, 5, 5), np.float32), np.array([0, 3]))", ValueError,
     ["labels", "[0, 3)"]),
]


@pytest.mark.parametrize("code, error, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_process(tmp_path, monkeypatch, code, error, needles):
    monkeypatch.chdir(tmp_path)
    raises_naming(error, SETUP + code, {"pc": pc, "np": np}, *needles)


@pytest.mark.parametrize("code, needles", [(c[1], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_child(tmp_path, code, needles):
    before = snapshot(tmp_path)
    outcome = run_python(api_case(SETUP + code), cwd=tmp_path)
    outcome.assert_user_error(*needles)
    assert snapshot(tmp_path) == before, f"files changed:\n{outcome}"
