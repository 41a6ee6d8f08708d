"""fit / evaluate / predict: reproducibility, resume == uninterrupted, divergence, validation."""

from __future__ import annotations

import numpy as np
import pytest

import polycnn as pc


@pytest.fixture(scope="module")
def data():
    s = pc.datasets.shapes_splits(n_train=96, n_val=32, n_test=40, image_size=16, seed=2)
    return s["train"], s["val"], s["test"]


def _model(backend, seed=0):
    return pc.Sequential(pc.Conv2d(3, 4, 3, padding=1), pc.BatchNorm2d(4), pc.ReLU(), pc.MaxPool2d(2),
                         pc.Dropout2d(0.2), pc.Conv2d(4, 6, 3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
                         pc.Flatten(), pc.Dropout(0.1), pc.Linear(6 * 4 * 4, 3),
                         backend=backend, seed=seed)


def _opt(model):
    return pc.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4,
                  schedule=pc.optim.CosineLR(total_steps=4 * 3, warmup_steps=2))


AUG = pc.Augment(hflip=0.5, vflip=0.5, shear=0.2, rotate=10, translate=0.1)
DETERMINED = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")


def _weights(model):
    return {k: model.backend.to_numpy(v).copy() for k, v in model.named_arrays().items()}


def test_same_seed_gives_identical_history_and_weights(backend, data):
    train, val, _ = data
    runs = []
    for _ in range(2):
        model = _model(backend)
        h = pc.fit(model, train, epochs=2, batch_size=32, optimizer=_opt(model), val=val,
                   augment=AUG, seed=7)
        runs.append((h, _weights(model)))
    (h1, w1), (h2, w2) = runs
    for key in DETERMINED:
        assert h1[key] == h2[key], f"history[{key!r}] differs between two runs, backend={backend.name}"
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k], err_msg=f"{k}, backend={backend.name}")
    assert len(h1["loss"]) == 2 and np.isfinite(h1["val_loss"]).all()
    other = _model(backend)
    h3 = pc.fit(other, train, epochs=2, batch_size=32, optimizer=_opt(other), val=val, augment=AUG, seed=8)
    assert h3["loss"] != h1["loss"]


def test_resumed_run_equals_uninterrupted_run(backend, data, tmp_path):
    train, val, _ = data
    model = _model(backend)
    full = pc.fit(model, train, epochs=4, batch_size=32, optimizer=_opt(model), val=val, augment=AUG,
                  seed=3, checkpoint=tmp_path / "full.npz")
    expected = _weights(model)

    class Interrupt(Exception):
        pass

    def stop_after_two(event):
        if event["kind"] == "epoch" and event["epoch"] == 2:
            raise Interrupt

    path = tmp_path / "run.npz"
    model = _model(backend)
    with pytest.raises(Interrupt):
        pc.fit(model, train, epochs=4, batch_size=32, optimizer=_opt(model), val=val, augment=AUG,
               seed=3, checkpoint=path, callback=stop_after_two)
    resumed = pc.load(path, backend=backend)
    assert resumed.training_state["epoch"] == 2
    history = pc.fit(resumed, train, epochs=4, batch_size=32, val=val, augment=AUG, checkpoint=path,
                     resume=True)
    got = _weights(resumed)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=f"{k} after resume, backend={backend.name}")
    for key in DETERMINED:
        assert history[key] == full[key], f"history[{key!r}] after resume"
    with pytest.raises(ValueError, match="already has 4 epochs"):
        pc.fit(pc.load(path, backend=backend), train, epochs=4, resume=True)


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(data, tmp_path):
    train, _, _ = data
    model = _model("numpy")
    path = tmp_path / "run.npz"

    def poison(event):
        if event["kind"] == "epoch" and event["epoch"] == 1:
            model.parameters()[0].data[...] = np.nan

    with pytest.raises(pc.TrainingDiverged, match=r"loss became nan at epoch 2, batch 1/3.*epoch 1\) is kept"):
        pc.fit(model, train, epochs=3, batch_size=32, optimizer=_opt(model), checkpoint=path,
               callback=poison, seed=0)
    kept = pc.load(path)
    assert kept.training_state["epoch"] == 1
    assert all(np.isfinite(p.data).all() for p in kept.parameters())
    assert isinstance(pc.TrainingDiverged("x"), ValueError)   # the CLI reports it in one line


def test_non_finite_weights_after_the_last_step_never_replace_the_checkpoint(data, tmp_path):
    """Every loss of epoch 2 is finite but its last update makes a weight infinite: the epoch-1
    checkpoint stays, and the run stops with TrainingDiverged naming the parameter."""
    train, _, _ = data
    model = _model("numpy")
    opt = _opt(model)
    path = tmp_path / "run.npz"
    step, steps = opt.step, []

    def poisoned_step():
        step()
        steps.append(1)
        if len(steps) == 6:  # 3 batches an epoch: epoch 2's last update
            model.parameters()[0].data[0] = np.inf

    opt.step = poisoned_step
    name = model.parameters()[0].name
    with pytest.raises(pc.TrainingDiverged, match=rf"parameters {name} became NaN or infinite"):
        pc.fit(model, train, epochs=3, batch_size=32, optimizer=opt, checkpoint=path, seed=0)
    kept = pc.load(path)
    assert kept.training_state["epoch"] == 1


def test_evaluate_and_predict(backend, data):
    train, _, test = data
    model = _model(backend)
    pc.fit(model, train, epochs=1, batch_size=32, optimizer=_opt(model), seed=0)
    model.train()
    probs = pc.predict(model, test[0], batch_size=16)
    assert isinstance(probs, np.ndarray) and probs.shape == (len(test[1]), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert model.training, "predict must restore the training mode"
    r = pc.evaluate(model, test, batch_size=7)
    assert r["accuracy"] == pytest.approx(float((probs.argmax(1) == test[1]).mean()))
    conf = np.array(r["confusion_matrix"])
    assert conf.sum() == len(test[1]) and np.trace(conf) == round(r["accuracy"] * len(test[1]))
    assert r["loss"] > 0 and len(r["per_class_accuracy"]) == 3


def test_fit_rejects_bad_input(data):
    (x, y), _, _ = data
    model = _model("numpy")
    with pytest.raises(TypeError, match="float64 but the model is float32"):
        pc.fit(model, (x.astype(np.float64), y))
    with pytest.raises(ValueError, match="labels must be in"):
        pc.fit(model, (x, y + 3))
    with pytest.raises(ValueError, match=r"y must have shape \(96,\)"):
        pc.fit(model, (x, y[:5]))
    with pytest.raises(ValueError, match="channels"):
        pc.fit(model, (x[:, :1], y))
    with pytest.raises(ValueError, match="epochs"):
        pc.fit(model, (x, y), epochs=0)
    with pytest.raises(TypeError, match="pair"):
        pc.fit(model, x)
    with pytest.raises(ValueError, match="resume=True needs a model loaded"):
        pc.fit(model, (x, y), resume=True)

