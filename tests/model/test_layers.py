"""Layers: float64 gradient checks on every backend, Dropout2d semantics, validation, repr, summary."""

from __future__ import annotations

import numpy as np
import pytest

import polycnn as pc
from polycnn.layers import Layer


def _directional_check(layer, x, where: str, eps: float = 1e-6, rtol: float = 1e-6):
    """Compare analytic and central-difference derivatives of sum(forward(x) * R) along a
    random direction, for x and each parameter separately (float64)."""
    be = layer.backend
    rng = np.random.default_rng(1)
    fixed_rng_seed = 7

    def run(xh):
        layer._rng = np.random.default_rng(fixed_rng_seed)   # the same dropout mask every time
        return be.to_numpy(layer.forward(be.asarray(xh)))

    y = run(x)
    R = rng.standard_normal(y.shape)
    dx = be.to_numpy(layer.backward(be.asarray(R)))
    grads = {p.name: be.to_numpy(p.grad) for p in layer.parameters()}
    targets = [("x", x, dx, None)] + [(p.name, be.to_numpy(p.data), grads[p.name], p)
                                      for p in layer.parameters()]
    for name, value, analytic, param in targets:
        d = rng.standard_normal(value.shape)

        def phi(v):
            if param is None:
                return float((run(v) * R).sum())
            param.data = be.asarray(v)
            return float((run(x) * R).sum())

        numeric = (phi(value + eps * d) - phi(value - eps * d)) / (2 * eps)
        if param is not None:
            param.data = be.asarray(value)
        exact = float((analytic * d).sum())
        assert abs(numeric - exact) <= rtol * max(1.0, abs(numeric)) + 1e-8, (
            f"{where}: d/d{name} along a random direction: numeric {numeric!r}, analytic {exact!r},"
            f" input shape {x.shape}"
        )


LAYER_CASES = [
    ("conv", lambda: pc.Conv2d(3, 4, kernel_size=3, padding=1), (2, 3, 7, 6)),
    ("conv-stride-nobias", lambda: pc.Conv2d(2, 3, kernel_size=(3, 2), stride=2, bias=False,
                                             init="glorot"), (2, 2, 7, 7)),
    ("conv-same-dilated", lambda: pc.Conv2d(2, 2, kernel_size=3, padding="same", dilation=2), (1, 2, 8, 8)),
    ("linear", lambda: pc.Linear(5, 4), (3, 5)),
    ("linear-glorot-nobias", lambda: pc.Linear(6, 2, bias=False, init="glorot"), (4, 6)),
    ("relu", lambda: pc.ReLU(), (2, 3, 4, 5)),
    ("leakyrelu", lambda: pc.LeakyReLU(0.1), (2, 3, 4, 5)),
    ("maxpool", lambda: pc.MaxPool2d(2), (2, 3, 6, 7)),
    ("maxpool-overlap-pad", lambda: pc.MaxPool2d(3, stride=2, padding=1), (1, 2, 7, 7)),
    ("avgpool", lambda: pc.AvgPool2d(2), (2, 3, 6, 6)),
    ("avgpool-pad", lambda: pc.AvgPool2d(3, stride=2, padding=1), (1, 2, 5, 6)),
    ("globalavgpool", lambda: pc.GlobalAvgPool2d(), (2, 3, 4, 5)),
    ("batchnorm", lambda: pc.BatchNorm2d(3), (4, 3, 3, 5)),
    ("dropout", lambda: pc.Dropout(0.3), (4, 7)),
    ("dropout2d", lambda: pc.Dropout2d(0.4), (3, 5, 4, 4)),
    ("flatten", lambda: pc.Flatten(), (2, 3, 4, 5)),
]


@pytest.mark.parametrize("case", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_layer_gradients_float64(backend, case):
    name, make, shape = case
    layer = make().build(backend, np.random.default_rng(0), np.float64)
    if name == "batchnorm":   # non-trivial scale and shift
        layer._params["weight"].data = backend.asarray(np.array([0.5, 1.5, -1.0]))
        layer._params["bias"].data = backend.asarray(np.array([0.1, -0.2, 0.3]))
    x = np.random.default_rng(2).standard_normal(shape)
    _directional_check(layer, x, f"{name}, backend={backend.name}")


def test_batchnorm_eval_gradients_float64(backend):
    layer = pc.BatchNorm2d(2).build(backend, np.random.default_rng(0), np.float64)
    layer.forward(backend.asarray(np.random.default_rng(3).standard_normal((4, 2, 3, 3))))
    layer.eval()
    _directional_check(layer, np.random.default_rng(4).standard_normal((2, 2, 3, 3)),
                       f"batchnorm eval, backend={backend.name}")


def test_whole_model_gradients_float64(backend):
    model = pc.Sequential(
        pc.Conv2d(2, 4, 3, padding=1), pc.BatchNorm2d(4), pc.ReLU(), pc.MaxPool2d(2),
        pc.Dropout2d(0.25), pc.Conv2d(4, 3, 3), pc.LeakyReLU(0.05), pc.AvgPool2d(2, stride=1),
        pc.Flatten(), pc.Dropout(0.2), pc.Linear(3 * 1 * 2, 5), pc.ReLU(), pc.Linear(5, 3),
        backend=backend, seed=3, dtype="float64")
    x = np.random.default_rng(5).standard_normal((3, 2, 8, 10))
    labels = np.array([0, 2, 1])
    rng = np.random.default_rng(6)

    def loss_and_grads():
        model.set_rng(np.random.default_rng(11))
        logits = model(x)
        loss, dlogits = pc.losses.cross_entropy(backend, logits, labels)
        model.backward(dlogits)
        return loss

    loss_and_grads()
    for p in model.parameters():
        analytic = backend.to_numpy(p.grad)
        value = backend.to_numpy(p.data).copy()
        d = rng.standard_normal(value.shape)
        losses = []
        for sign in (1, -1):
            p.data = backend.asarray(value + sign * 1e-6 * d)
            model.set_rng(np.random.default_rng(11))
            logits = model(x)
            losses.append(pc.losses.cross_entropy(backend, logits, labels)[0])
        p.data = backend.asarray(value)
        numeric = (losses[0] - losses[1]) / 2e-6
        exact = float((analytic * d).sum())
        assert abs(numeric - exact) <= 1e-6 * max(1.0, abs(numeric)), (
            f"whole model, backend={backend.name}, {p.name} {p.shape}: numeric {numeric}, analytic {exact}")


@pytest.mark.parametrize("first", ["conv", "linear"])
def test_backward_without_input_grad_skips_only_the_input(backend, first, monkeypatch):
    """Sequential.backward(dy, input_grad=False), as fit calls it: the same parameter
    gradients, no input gradient, and the first layer asks its backend for none."""
    if first == "conv":
        layers = [pc.Conv2d(2, 3, 3, padding=1), pc.ReLU(), pc.Flatten(), pc.Linear(3 * 4 * 4, 2)]
        x = np.random.default_rng(1).standard_normal((2, 2, 4, 4))
        op = "conv2d_backward"
    else:
        layers = [pc.Linear(6, 4), pc.ReLU(), pc.Linear(4, 2)]
        x = np.random.default_rng(1).standard_normal((2, 6))
        op = "linear_backward"
    model = pc.Sequential(*layers, backend=backend, seed=2, dtype="float64")
    dy = backend.asarray(np.random.default_rng(2).standard_normal((2, 2)))
    model(x)
    dx = model.backward(dy)
    assert tuple(dx.shape) == x.shape
    full = [backend.to_numpy(p.grad).copy() for p in model.parameters()]

    asked = []
    real = getattr(backend, op)
    monkeypatch.setattr(backend, op, lambda *a, **k: asked.append(k.get("input_grad", True)) or real(*a, **k))
    model(x)
    assert model.backward(dy, input_grad=False) is None
    assert asked[-1] is False and all(asked[:-1])  # only the first layer skips its input gradient
    for p, want in zip(model.parameters(), full):
        np.testing.assert_array_equal(backend.to_numpy(p.grad), want, err_msg=p.name)


def test_cross_entropy_gradient_and_large_logits(backend):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 3))
    labels = np.array([0, 1, 2, 1])
    loss, d = pc.losses.cross_entropy(backend, backend.asarray(logits), labels, label_smoothing=0.1)
    d = backend.to_numpy(d)
    direction = rng.standard_normal(logits.shape)
    up = pc.losses.cross_entropy(backend, backend.asarray(logits + 1e-6 * direction), labels, 0.1)[0]
    down = pc.losses.cross_entropy(backend, backend.asarray(logits - 1e-6 * direction), labels, 0.1)[0]
    assert abs((up - down) / 2e-6 - (d * direction).sum()) < 1e-7
    big = backend.asarray(np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32))
    loss, d = pc.losses.cross_entropy(backend, big, np.array([2]))
    assert np.isfinite(loss) and abs(loss - 2000.0) < 1e-2
    assert np.isfinite(backend.to_numpy(d)).all()


# ---- Dropout2d ---------------------------------------------------------------------------

def test_dropout2d_zeroes_whole_maps_and_scales_survivors(backend):
    layer = pc.Dropout2d(0.5).build(backend, np.random.default_rng(0), np.float32)
    x = np.random.default_rng(1).uniform(1.0, 2.0, (16, 8, 5, 5)).astype(np.float32)
    y = backend.to_numpy(layer.forward(backend.asarray(x)))
    dropped = (y == 0).all(axis=(2, 3))
    kept = np.isclose(y, 2 * x, rtol=1e-6).all(axis=(2, 3))
    assert (dropped | kept).all(), "every (sample, channel) map must be either all zero or x / (1 - p)"
    assert 0 < dropped.sum() < dropped.size
    dy = np.ones_like(x)
    dx = backend.to_numpy(layer.backward(backend.asarray(dy)))
    np.testing.assert_array_equal(dx == 0, y == 0)


def test_dropout2d_preserves_expected_value(backend):
    p = 0.3
    layer = pc.Dropout2d(p).build(backend, np.random.default_rng(0), np.float64)
    x = np.full((400, 50, 2, 2), 3.0)
    y = backend.to_numpy(layer.forward(backend.asarray(x)))
    maps = y[:, :, 0, 0]
    # 20,000 independent maps: the mean is 3 with a standard error of 3*sqrt(p/(1-p))/sqrt(20000)
    assert abs(maps.mean() - 3.0) < 5 * 3.0 * np.sqrt(p / (1 - p)) / np.sqrt(maps.size)
    assert abs((maps == 0).mean() - p) < 0.02


def test_dropout_identity_in_eval_mode(backend):
    layer = pc.Dropout2d(0.9).build(backend, np.random.default_rng(0), np.float32)
    layer.eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(backend.to_numpy(layer.forward(backend.asarray(x))), x)
    flat = pc.Dropout(0.9).build(backend, np.random.default_rng(0), np.float32).eval()
    np.testing.assert_array_equal(backend.to_numpy(flat.forward(backend.asarray(x[:, :, 0, 0]))),
                                  x[:, :, 0, 0])


def test_dropout2d_rejects_non_4d(backend):
    layer = pc.Dropout2d(0.5).build(backend, np.random.default_rng(0), np.float32)
    with pytest.raises(ValueError, match="4-D"):
        layer.forward(backend.asarray(np.ones((4, 6), np.float32)))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pc.Dropout2d(1.0)


# ---- validation, repr, summary ----------------------------------------------------------

def test_channel_mismatch_names_both_numbers():
    with pytest.raises(ValueError, match="expects 8 input channels but layer 0 produces 16"):
        pc.Sequential(pc.Conv2d(3, 16), pc.ReLU(), pc.Conv2d(8, 4))
    model = pc.Sequential(pc.Conv2d(3, 4, 3), backend="numpy")
    with pytest.raises(ValueError, match="input has 1 channels but the layer expects 3"):
        model(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="4096 features but the layer expects 2048"):
        pc.Sequential(pc.Conv2d(3, 16, 3, padding=1), pc.Flatten(), pc.Linear(2048, 3)).summary((3, 4, 64))


@pytest.mark.parametrize("make, error", [
    (lambda: pc.Conv2d(0, 3), ValueError),
    (lambda: pc.Conv2d(3, 3, kernel_size=0), ValueError),
    (lambda: pc.Conv2d(3, 3, padding="half"), ValueError),
    (lambda: pc.Conv2d(3, 3, stride=2, padding="same"), ValueError),
    (lambda: pc.Conv2d(3.0, 3), TypeError),
    (lambda: pc.Conv2d(3, 3, init="lecun"), ValueError),
    (lambda: pc.Linear(3, -1), ValueError),
    (lambda: pc.MaxPool2d(2, padding=2), ValueError),
    (lambda: pc.Dropout(-0.1), ValueError),
    (lambda: pc.LeakyReLU("x"), TypeError),
    (lambda: pc.BatchNorm2d(4, eps=0), ValueError),
    (lambda: pc.Sequential(), ValueError),
    (lambda: pc.Sequential(pc.ReLU(), "relu"), TypeError),
    (lambda: pc.Sequential(pc.ReLU(), dtype="float16"), TypeError),
])
def test_bad_construction_is_rejected(make, error):
    with pytest.raises(error):
        make()


def test_bad_call_input_is_rejected():
    model = pc.Sequential(pc.Conv2d(1, 2, 3), pc.Flatten(), pc.Linear(2 * 6 * 6, 3), backend="numpy")
    with pytest.raises(ValueError, match="4-D"):
        model(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(TypeError, match="float64 but the model is float32"):
        model(np.zeros((1, 1, 8, 8)))
    with pytest.raises(ValueError, match="kernel larger"):
        model(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="expects 2-D input"):
        pc.Sequential(pc.Linear(4, 2), backend="numpy")(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        pc.Sequential(pc.ReLU(), backend="numpy").backward(np.zeros((1, 2), np.float32))


def test_init_schemes_and_zero_biases():
    he = pc.Sequential(pc.Conv2d(16, 64, 3), backend="numpy", seed=0, dtype="float64")
    w = he[0]._params["weight"].data
    assert abs(w.std() - np.sqrt(2 / (16 * 9))) < 0.05 * np.sqrt(2 / (16 * 9))
    assert (he[0]._params["bias"].data == 0).all()
    gl = pc.Sequential(pc.Linear(300, 200, init="glorot"), backend="numpy", seed=0)
    limit = np.sqrt(6 / 500)
    wg = gl[0]._params["weight"].data
    assert wg.max() <= limit and wg.min() >= -limit and wg.max() > 0.95 * limit


def test_same_seed_same_weights_and_repr():
    a = pc.Sequential(pc.Conv2d(3, 4, 3, padding=1), pc.ReLU(), pc.Linear(5, 2), backend="numpy", seed=4)
    b = pc.Sequential(pc.Conv2d(3, 4, 3, padding=1), pc.ReLU(), pc.Linear(5, 2), backend="numpy", seed=4)
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    assert repr(a[0]) == "Conv2d(3, 4, kernel_size=3, padding=1)"
    assert repr(pc.MaxPool2d(2)) == "MaxPool2d(2)"
    assert repr(pc.Dropout2d(0.25)) == "Dropout2d(p=0.25)"
    assert "(2) Linear(5, 2)" in repr(a)


def test_summary_counts_params_and_flops():
    model = pc.Sequential(pc.Conv2d(3, 16, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
                          pc.Dropout2d(0.25), pc.Flatten(), pc.Linear(16 * 16 * 16, 3), backend="numpy")
    s = model.summary((3, 32, 32))
    assert [r["output_shape"] for r in s.rows] == [(16, 32, 32), (16, 32, 32), (16, 16, 16),
                                                    (16, 16, 16), (4096,), (3,)]
    assert s.rows[0]["params"] == 16 * 3 * 9 + 16 and s.rows[5]["params"] == 4096 * 3 + 3
    assert s.total_params == sum(p.size for p in model.parameters())
    assert s.rows[0]["flops"] == 2 * 16 * 32 * 32 * 3 * 9
    assert s.rows[5]["flops"] == 2 * 4096 * 3
    text = str(s)
    assert "total" in text and f"{s.total_params:,}" in text


def test_train_eval_modes_propagate():
    model = pc.Sequential(pc.Dropout(0.5), pc.Linear(3, 2), backend="numpy")
    assert model.eval() is model and not model[0].training
    assert model.train() is model and model[0].training


def test_standalone_layer_builds_on_first_call():
    layer = pc.Conv2d(1, 2, 3)
    y = layer(np.ones((1, 1, 5, 5), np.float32))
    assert y.shape == (1, 2, 3, 3) and isinstance(layer, Layer)


def test_every_layer_name_is_where_it_was():
    """The layers live in submodules; each public name still comes from polycnn.layers (and
    from polycnn, for those it exported), as the same object."""
    import polycnn.layers as layers

    assert set(layers.__all__) >= {"Parameter", "Layer", "Sequential", "Summary", "LAYER_TYPES",
                                   "layer_from_spec", *layers.LAYER_TYPES}
    for name in layers.__all__:
        assert hasattr(layers, name), f"polycnn.layers.{name} is missing"
        if hasattr(pc, name):
            assert getattr(pc, name) is getattr(layers, name), f"pc.{name} is not polycnn.layers.{name}"
    for name, cls in layers.LAYER_TYPES.items():
        assert issubclass(cls, Layer) and cls.__name__ == name
        assert type(layers.layer_from_spec({"type": name, "config": _SPEC_ARGS.get(name, {})})) is cls


#: the arguments a layer needs to be built from a spec
_SPEC_ARGS = {"Conv2d": {"in_channels": 1, "out_channels": 2},
              "Linear": {"in_features": 3, "out_features": 2}, "BatchNorm2d": {"num_features": 2}}
