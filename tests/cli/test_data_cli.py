"""`polycnn train --dataset ...` end to end on generated files (IDX, an image folder of PNGs)
and on the shipped digits; evaluate finds the checkpoint's own test split."""

from __future__ import annotations

import json
import shutil

import numpy as np
from click.testing import CliRunner
from PIL import Image  # NOTE: in the test extra: a missing Pillow fails the run, never skips it

import polycnn as pc
from polycnn.cli.main import main

from support.datafiles import write_mnist, write_png_folder


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _fail(args):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and ("error: " in r.output or "Error: " in r.output), r.output
    return r.output


def test_mnist_through_the_cli_and_evaluate_with_a_moved_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mnist(tmp_path / "mnist", n_train=80, n_test=30)
    r = _run(["train", "--dataset", "mnist", "--data-dir", "mnist", "--model", "lenet5", "--epochs",
              "1", "--backend", "numpy", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["run"]["dataset"] == "mnist" and summary["run"]["image_size"] == 28
    assert summary["run"]["data_dir"] == str(tmp_path / "mnist")
    assert len(summary["per_class_accuracy"]) == 10
    r = _run(["evaluate", "mnist.npz", "--json", "--backend", "numpy"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["n"] == 30
    # predict normalises a PNG or a 0..1 array as the loader normalised the training images
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    Image.fromarray(digit).save(tmp_path / "one.png")
    np.save(tmp_path / "one.npy", digit[None].astype(np.float32) / 255)
    r = _run(["predict", "mnist.npz", "one.png", "one.npy", "--json", "--backend", "numpy"])
    assert r.exit_code == 0, r.output
    a, b = (p["probabilities"] for p in json.loads(r.output)["predictions"])
    np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=1e-4, atol=1e-6)
    model = pc.load("mnist.npz", backend="numpy")
    direct = pc.predict(model, ((digit / 255.0 - 0.1307) / 0.3081).astype(np.float32)[None, None])
    np.testing.assert_allclose(list(a.values()), direct[0], rtol=1e-4, atol=1e-6)
    shutil.move(tmp_path / "mnist", tmp_path / "moved")
    msg = _fail(["evaluate", "mnist.npz", "--backend", "numpy"])
    assert "mnist files in" in msg and "does not exist here" in msg and "--data-dir" in msg
    assert not (tmp_path / "mnist").exists(), "evaluate must not create the stored data folder"
    r = _run(["evaluate", "mnist.npz", "--json", "--backend", "numpy", "--data-dir", "moved", "--n-test", "12"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["n"] == 12
    # --resume says to pass --data-dir, and takes it (it refused it before)
    msg = _fail(["train", "--resume", "--out", "mnist.npz", "--epochs", "2", "--backend", "numpy"])
    assert "does not exist here" in msg and "pass --data-dir" in msg, msg
    r = _run(["train", "--resume", "--out", "mnist.npz", "--epochs", "2", "--backend", "numpy",
              "--data-dir", "moved", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["history"]["epoch"] == [1, 2] and summary["run"]["data_dir"] == str(tmp_path / "moved")
    assert pc.load("mnist.npz").training_state["metadata"]["run"]["data_dir"] == str(tmp_path / "moved")
    assert not (tmp_path / "mnist").exists()


def test_cli_errors_for_data_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--data-dir" in _fail(["train", "--dataset", "mnist"])
    msg = _fail(["train", "--dataset", "fashion-mnist", "--data-dir", "empty"])
    assert "t10k-labels-idx1-ubyte.gz" in msg and str(tmp_path / "empty") in msg
    assert "fixed size" in _fail(["train", "--dataset", "digits", "--image-size", "16"])
    assert "needs no files" in _fail(["train", "--dataset", "digits", "--data-dir", "x"])
    assert "--channels" in _fail(["train", "--channels", "1"])
    r = _run(["train", "--dataset", "digits", "--epochs", "1", "--backend", "numpy", "--out", "d.npz", "-q"])
    assert r.exit_code == 0, r.output
    msg = _fail(["train", "--resume", "--out", "d.npz", "--epochs", "2", "--data-dir", "x"])
    assert "--data-dir" in msg and "trained on digits, which needs no files" in msg, msg


def test_image_folder_trains_and_predicts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_png_folder(tmp_path / "pics")
    r = _run(["train", "--dataset", "folder", "--data-dir", "pics", "--image-size", "16",
              "--channels", "1", "--epochs", "2", "--backend", "numpy", "--out", "f.npz", "--quiet"])
    assert r.exit_code == 0, r.output
    run = pc.load("f.npz").training_state["metadata"]["run"]
    assert (run["channels"], run["image_size"], run["classes"]) == (1, 16, ["left", "right"])
    r = _run(["predict", "f.npz", "pics/left/0.png", "pics/right/1.png", "--json", "--backend", "numpy"])
    assert r.exit_code == 0, r.output
    preds = json.loads(r.output)["predictions"]
    assert [set(p["probabilities"]) for p in preds] == [{"left", "right"}] * 2
    r = _run(["evaluate", "f.npz", "--json", "--backend", "numpy"])
    assert r.exit_code == 0 and json.loads(r.output)["n"] == 2


def test_digits_cnn_beats_chance_by_far(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = _run(["train", "--dataset", "digits", "--epochs", "6", "--backend", "numpy", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["test_accuracy"] > 0.8          # chance is 0.1
    assert set(summary["per_class_accuracy"]) == {str(i) for i in range(10)}


def test_models_are_on_the_package():
    assert pc.models.build("lenet5", (1, 28, 28), 10, backend="numpy").output_shape((1, 28, 28)) == (10,)
