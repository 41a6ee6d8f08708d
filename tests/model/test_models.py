"""Model presets and JSON model specs (polycnn.models), and `polycnn train --model`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import polycnn as pc
from polycnn import models
from polycnn.cli.main import main


@pytest.mark.parametrize("name, shape, classes", [
    ("tutorial", (3, 32, 32), 3), ("tutorial", (1, 16, 24), 5),
    ("lenet5", (1, 28, 28), 10), ("lenet5", (3, 32, 32), 10), ("lenet5", (1, 36, 30), 4),
    ("shapes-cnn", (1, 8, 8), 10), ("shapes-cnn", (3, 20, 13), 2),
])
def test_presets_fit_their_input(name, shape, classes):
    model = models.build(name, shape, classes, backend="numpy", seed=0)
    assert model.output_shape(shape) == (classes,)
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    assert pc.predict(model, x).shape == (2, classes)


def test_lenet5_is_lecuns_layout():
    model = models.lenet5((1, 28, 28), 10, backend="numpy")
    convs = [layer for layer in model if isinstance(layer, pc.Conv2d)]
    linears = [layer for layer in model if isinstance(layer, pc.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(6, (5, 5)), (16, (5, 5))]
    assert [(f.in_features, f.out_features) for f in linears] == [(400, 120), (120, 84), (84, 10)]
    assert sum(p.size for p in model.parameters()) == 61706


def test_lenet5_is_the_layer_list_the_benchmarks_wrote_out():
    """The preset is the one LeNet-5: for 1x28x28 and seed 0 it is, weight for weight, the
    model the benchmarks used to spell out layer by layer."""
    written = pc.Sequential(
        pc.Conv2d(1, 6, kernel_size=5, padding=2), pc.ReLU(), pc.MaxPool2d(2),
        pc.Conv2d(6, 16, kernel_size=5), pc.ReLU(), pc.MaxPool2d(2), pc.Flatten(),
        pc.Linear(400, 120), pc.ReLU(), pc.Linear(120, 84), pc.ReLU(), pc.Linear(84, 10),
        backend="numpy", seed=0)
    preset = models.lenet5((1, 28, 28), 10, backend="numpy", seed=0)
    assert preset.spec() == written.spec()
    want, got = written.named_arrays(), preset.named_arrays()
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"lenet5 preset, {name}")


def test_presets_refuse_inputs_they_cannot_take():
    with pytest.raises(ValueError, match="multiples of 8"):
        models.build("tutorial", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="at least 28x28"):
        models.build("lenet5", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="shapes-cnn needs images of at least 8x8, got 7x9"):
        models.build("shapes-cnn", (1, 7, 9), 10)
    with pytest.raises(ValueError, match="unknown model 'resnet'.*lenet5"):
        models.build("resnet", (1, 8, 8), 10)


SPEC = [
    {"type": "Conv2d", "config": {"in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1}},
    {"type": "ReLU", "config": {}},
    {"type": "MaxPool2d", "config": {"kernel_size": 2}},
    {"type": "Flatten"},
    {"type": "Linear", "config": {"in_features": 64, "out_features": 10}},
]


def test_spec_builds_and_matches_the_checkpoint_format(tmp_path):
    model = models.from_spec(SPEC, (1, 8, 8), 10, backend="numpy")
    assert [type(layer).__name__ for layer in model] == [s["type"] for s in SPEC]
    # the checkpoint's own spec ({"layers": [...]}) is accepted as a file too
    path = tmp_path / "m.json"
    path.write_text(json.dumps(model.spec()))
    again = models.build(str(path), (1, 8, 8), 10, backend="numpy")
    assert again.spec() == model.spec()


@pytest.mark.parametrize("change, message", [
    (lambda s: s.__setitem__(2, {"type": "MaxPool3d", "config": {}}), r"m.json: layer 2 \('MaxPool3d'\)"),
    (lambda s: s[0]["config"].update(kernal_size=3), r"m.json: layer 0 \('Conv2d'\):.*kernal_size"),
    (lambda s: s[4]["config"].update(in_features=65), r"m.json.*65.*64|64.*65"),
    (lambda s: s[4]["config"].update(out_features=7), r"outputs shape \(7,\).*10 classes"),
    (lambda s: s.__setitem__(1, "ReLU"), r"m.json: layer 1 must be an object"),
])
def test_bad_spec_names_the_layer(tmp_path, change, message):
    spec = json.loads(json.dumps(SPEC))
    change(spec)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=message):
        models.build(str(path), (1, 8, 8), 10)


def test_not_json(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("[{'type': 'ReLU'}]")
    with pytest.raises(ValueError, match="m.json: not valid JSON"):
        models.build(str(path), (1, 8, 8), 10)


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_cli_trains_a_json_model_and_the_checkpoint_evaluates_and_predicts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.json").write_text(json.dumps(SPEC))
    r = _run(["train", "--dataset", "digits", "--model", "m.json", "--epochs", "2", "--backend",
              "numpy", "--out", "m.npz", "--quiet"])
    assert r.exit_code == 0, r.output
    ckpt = pc.load("m.npz", backend="numpy")
    assert ckpt.spec()["layers"][0]["config"]["out_channels"] == 4
    assert ckpt.training_state["metadata"]["run"]["model"] == "m.json"
    r = _run(["evaluate", "m.npz", "--json", "--backend", "numpy"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["n"] == 359
    x, _ = pc.datasets.digits()
    np.save(tmp_path / "d.npy", x[:3])
    r = _run(["predict", "m.npz", "d.npy", "--json", "--backend", "numpy"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["predictions"]) == 3


def test_cli_bad_model_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = json.loads(json.dumps(SPEC))
    spec[3] = {"type": "Flaten"}
    (tmp_path / "m.json").write_text(json.dumps(spec))
    r = CliRunner().invoke(main, ["train", "--dataset", "digits", "--model", "m.json"])
    assert r.exit_code == 2
    assert r.output.startswith("error: m.json: layer 3 ('Flaten')") and r.output.count("\n") == 1
    r = CliRunner().invoke(main, ["train", "--dataset", "digits", "--model", "lenet5"])
    assert r.exit_code == 2 and "lenet5 needs images of at least 28x28" in r.output
