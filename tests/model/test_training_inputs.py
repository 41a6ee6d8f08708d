"""fit / predict / evaluate refuse input that would give a silently wrong result: an optimiser
that does not hold exactly the model's parameters, NaN or infinite images, integer images on
another scale than the training data (converted when the model knows that scale)."""

from __future__ import annotations

import numpy as np
import pytest

import polycnn as pc
from polycnn.training import _check_finite


def _model(seed=0):
    return pc.Sequential(pc.Conv2d(1, 2, 3), pc.ReLU(), pc.Flatten(), pc.Linear(18, 3),
                         backend="numpy", seed=seed)


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    return rng.random((12, 1, 5, 5)).astype(np.float32), rng.integers(0, 3, 12)


# ---- the optimiser must hold exactly the model's parameters ------------------------------------
def test_fit_with_the_models_own_parameters_trains(data):
    model = _model()
    before = model[0].parameters()[0].data.copy()
    pc.fit(model, data, epochs=1, batch_size=4, optimizer=pc.SGD(model.parameters(), lr=0.1))
    assert not np.array_equal(before, model[0].parameters()[0].data)


@pytest.mark.parametrize("make, message", [
    (lambda m: pc.SGD(_model(1).parameters(), lr=0.1),
     r"4 of them are not this model's \(the first: optimiser parameter 0, weight of shape \(2, 1, 3, 3\)"),
    (lambda m: pc.SGD(m.parameters()[2:], lr=0.1),
     r"it does not update 2 of them, the first layer 0 \(Conv2d\(1, 2, kernel_size=3\)\) weight.*it has 2"
     r" parameters, the model 4"),
    (lambda m: pc.Adam(m.parameters()[::-1]),
     r"it holds them in another order \(at position 0: layer 3 \(Linear\(18, 3\)\) bias, where the model has layer 0"),
    (lambda m: pc.SGD(m.parameters() + _model(2).parameters()[:1], lr=0.1), r"1 of them are not"),
])
def test_fit_refuses_an_optimiser_for_other_parameters(data, make, message):
    model = _model()
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"optimizer: its parameters are not exactly this model's: " + message):
        pc.fit(model, data, epochs=1, optimizer=make(model))
    assert all(np.array_equal(a, p.data) for a, p in zip(before, model.parameters())), "it trained"


def test_fit_refuses_a_parameter_held_twice(data):
    model = _model()
    opt = pc.SGD(model.parameters(), lr=0.1)
    opt.params[1] = opt.params[0]   # changed after construction, which refuses it
    with pytest.raises(ValueError, match=r"holds layer 0 \(Conv2d\(1, 2, kernel_size=3\)\) weight 2 times"):
        pc.fit(model, data, optimizer=opt)


def test_an_optimiser_made_before_the_model_was_rebuilt_is_refused(data):
    model = _model()
    opt = pc.SGD(model.parameters(), lr=0.1)
    model.build("numpy", np.random.default_rng(0), "float32")   # new parameter objects
    with pytest.raises(ValueError, match="not this model's"):
        pc.fit(model, data, optimizer=opt)


def test_a_resumed_run_passes_the_check(tmp_path, data):
    model = _model()
    pc.fit(model, data, epochs=1, batch_size=6, checkpoint=tmp_path / "c.npz", seed=0)
    again = pc.load(tmp_path / "c.npz", backend="numpy")
    history = pc.fit(again, data, epochs=2, batch_size=6, resume=True)
    assert history["epoch"] == [1, 2]


# ---- NaN / infinity ----------------------------------------------------------------------------
def test_nan_and_inf_are_counted_and_located_across_slices():
    model = _model()
    # NOTE: 1100 images of 64x64 span two of the check's slices (about 4M values each)
    x = np.zeros((1100, 1, 64, 64), np.float32)
    x[1050, 0, 5, 6] = -np.inf
    x[1099, 0, 63, 63] = np.nan
    with pytest.raises(ValueError, match=r"x holds 2 NaN or infinite value\(s\) of 4,505,600; the first is"
                                         r" -inf at index \(1050, 0, 5, 6\) \(image 1050\)"):
        _check_finite(model, x, "x")
    x[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"holds 3 .* first is nan at index \(3, 0, 0, 0\)"):
        _check_finite(model, x, "x")


def test_predict_and_evaluate_refuse_nan(data):
    x, y = data
    x = x.copy()
    x[5, 0, 2, 2] = np.nan
    model = _model()
    with pytest.raises(ValueError, match=r"^x holds 1 NaN .* index \(5, 0, 2, 2\)"):
        pc.predict(model, x)
    with pytest.raises(ValueError, match=r"^data: x holds 1 NaN"):
        pc.evaluate(model, (x, y))
    with pytest.raises(ValueError, match=r"^val: x holds 1 NaN"):
        pc.fit(model, data, val=(x, y))


# ---- dtypes: float unchanged, integers converted only on a known scale -------------------------
def test_float_input_is_used_as_it_is(data):
    x, _ = data
    model = _model()
    logits = model(x)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_array_equal(pc.predict(model, x), e / e.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("dtype, message", [
    (np.uint8, r"x is uint8 \(integer pixels\?\) .* does not say how its training images were scaled"),
    (np.int64, r"x is int64 .* does not say how"),
    (np.bool_, r"x is boolean"),
    (np.complex128, r"x is complex \(complex128\)"),
    (np.float64, r"x is float64 but the model is float32"),
    (np.float16, r"x is float16 but the model is float32"),
])
def test_predict_refuses_other_dtypes_without_a_known_scale(data, dtype, message):
    x = (data[0] * 255).astype(dtype)
    with pytest.raises(TypeError, match=message):
        pc.predict(_model(), x)


def _trained_like_the_cli(tmp_path, normalize):
    """A checkpoint whose metadata says, as ``polycnn train`` writes it, how its images were
    scaled from 8-bit pixels."""
    run = {"image_size": 5, "channels": 1, "normalize": normalize}
    path = _model().save(tmp_path / "m.npz", run=run)
    return pc.load(path, backend="numpy")


@pytest.mark.parametrize("normalize", [None, [[0.25], [0.5]]])
def test_uint8_pixels_are_scaled_as_the_training_images(tmp_path, data, normalize):
    model = _trained_like_the_cli(tmp_path, normalize)
    pixels = (data[0] * 255).astype(np.uint8)
    scaled = pixels.astype(np.float32) / np.float32(255)
    if normalize is not None:
        scaled = (scaled - np.float32(0.25)) / np.float32(0.5)
    np.testing.assert_array_equal(pc.predict(model, pixels), pc.predict(model, scaled))
    assert pc.evaluate(model, (pixels, data[1])) == pc.evaluate(model, (scaled, data[1]))
    with pytest.raises(TypeError, match=r"data: x is uint8 .* fit trains on float images"):
        pc.fit(model, (pixels, data[1]))


def test_other_integers_and_a_bad_stored_scale_are_refused(tmp_path, data):
    model = _trained_like_the_cli(tmp_path, [[0.25], [0.5]])
    with pytest.raises(TypeError, match=r"x is int16 .* only uint8 \(8-bit pixels 0..255\) is converted"):
        pc.predict(model, (data[0] * 255).astype(np.int16))
    wrong = _trained_like_the_cli(tmp_path, [[0.25, 0.25, 0.25], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=r"x has 1 channels but the model's stored normalisation has 3"):
        pc.predict(wrong, (data[0] * 255).astype(np.uint8))
    broken = _trained_like_the_cli(tmp_path, [[0.25], [0.0]])
    with pytest.raises(ValueError, match=r"m.npz: the stored normalisation .* std > 0"):
        pc.predict(broken, (data[0] * 255).astype(np.uint8))
