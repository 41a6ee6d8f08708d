"""`polycnn train / evaluate / predict` through click's CliRunner: a tiny run end to end, and
one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import polycnn as pc
from polycnn.cli.main import main

TINY = ["--backend", "numpy", "--epochs", "2", "--n-train", "64", "--image-size", "16",
        "--batch-size", "32", "--seed", "1"]


@pytest.fixture(autouse=True)
def _small_splits(monkeypatch):
    """Keep the validation and test splits small so the CLI runs in a second."""
    from polycnn.cli import train as train_cli

    monkeypatch.setitem(train_cli.DEFAULTS, "n_val", 32)
    monkeypatch.setitem(train_cli.DEFAULTS, "n_test", 48)


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


def test_train_evaluate_predict_end_to_end(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    r = _run(["train", *TINY])
    assert r.exit_code == 0, r.output
    assert "epoch  1/2" in r.output and "epoch  2/2" in r.output and "img/s" in r.output
    assert "test accuracy" in r.output and "checkpoint saved to shapes.npz" in r.output
    assert (workdir / "shapes.npz").exists()

    r = _run(["evaluate", "shapes.npz", "--json", "--backend", "numpy"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["n"] == 48 and 0.0 <= report["accuracy"] <= 1.0
    assert np.array(report["confusion_matrix"]).sum() == 48
    assert report["classes"] == ["triangle", "square", "circle"]

    r = _run(["evaluate", "shapes.npz", "--backend", "numpy"])
    assert r.exit_code == 0 and "confusion matrix" in r.output and "circle" in r.output

    x, y = pc.datasets.shapes(3, image_size=16, seed=9)
    np.save(workdir / "one.npy", x[0])
    np.save(workdir / "batch.npy", x)
    r = _run(["predict", "shapes.npz", "one.npy", "batch.npy", "--json", "--backend", "numpy"])
    assert r.exit_code == 0, r.output
    preds = json.loads(r.output)["predictions"]
    assert [p["input"] for p in preds] == ["one.npy", "batch.npy[0]", "batch.npy[1]", "batch.npy[2]"]
    assert preds[0]["probabilities"] == pytest.approx(preds[1]["probabilities"], rel=1e-5)
    assert abs(sum(preds[0]["probabilities"].values()) - 1) < 1e-5
    r = _run(["predict", "shapes.npz", "one.npy", "--backend", "numpy"])
    assert r.exit_code == 0 and preds[0]["class"] in r.output


def test_train_json_quiet_and_resume_after_ctrl_c(tmp_path, monkeypatch):
    from polycnn.cli import train as train_cli

    full = str(tmp_path / "full.npz")
    r = _run(["train", *TINY, "--epochs", "3", "--out", full, "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["epochs"] == 3 and len(summary["history"]["loss"]) == 3
    assert summary["checkpoint"].endswith("full.npz")

    r = _run(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "q.npz"), "--quiet"])
    assert r.exit_code == 0 and "epoch" not in r.output.splitlines()[0] and "test accuracy" in r.output

    # Ctrl-C during epoch 3: the checkpoint of epoch 2 stays; --resume finishes the run
    real_progress = train_cli._Progress.__call__

    def interrupt_in_epoch_3(self, event):
        if event["kind"] == "batch" and event["epoch"] == 3:
            raise KeyboardInterrupt
        real_progress(self, event)

    part = str(tmp_path / "part.npz")
    monkeypatch.setattr(train_cli._Progress, "__call__", interrupt_in_epoch_3)
    r = CliRunner().invoke(main, ["train", *TINY, "--epochs", "3", "--out", part])
    assert r.exit_code == 130 and pc.load(part).training_state["epoch"] == 2
    assert f"continue with `polycnn train --resume --out {part}`" in r.output
    monkeypatch.setattr(train_cli._Progress, "__call__", real_progress)
    r = _run(["train", "--resume", "--out", part, "--backend", "numpy"])
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output and "epoch  3/3" in r.output and "epoch  2/3" not in r.output
    a, b = pc.load(full), pc.load(part)
    for (k, va), (_, vb) in zip(a.named_arrays().items(), b.named_arrays().items()):
        np.testing.assert_array_equal(va, vb, err_msg=f"{k}: resumed CLI run differs from the full run")

    r = _run(["train", "--resume", "--out", part, "--backend", "numpy"])
    assert r.exit_code == 2 and "already has 3 of 3 epochs" in r.output
    r = _run(["train", "--resume", "--out", part, "--epochs", "4", "--json", "--backend", "numpy"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["history"]["epoch"] == [1, 2, 3, 4]


@pytest.mark.parametrize("args, message", [
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--optimizer", "rmsprop"], "rmsprop"),
    (["train", "--image-size", "20", "--backend", "numpy"], "multiple of 8"),
    (["train", "--bogus"], "no such option"),
    (["train", "--backend", "nope"], "unknown backend 'nope'"),
    (["train", "--resume", "--out", "missing.npz", "--backend", "numpy"], "checkpoint not found"),
    (["train", "--resume", "--lr", "0.1", "--backend", "numpy"], "drop --lr"),
    (["evaluate", "missing.npz"], "checkpoint not found"),
    (["evaluate"], "missing argument"),
    (["predict", "shapes.npz"], "missing argument"),
])
def test_bad_input_is_one_line_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert message.lower() in r.output.lower()
    assert "Traceback" not in r.output


def test_predict_bad_files(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    if not (workdir / "shapes.npz").exists():
        assert _run(["train", *TINY, "--epochs", "1"]).exit_code == 0
    np.save(workdir / "wrong.npy", np.zeros((3, 8, 8), np.float32))
    (workdir / "image.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (workdir / "notes.txt").write_text("hi")
    (workdir / "damaged.npz").write_bytes((workdir / "shapes.npz").read_bytes()[:100])
    cases = [
        (["predict", "shapes.npz", "wrong.npy"], "expected (3, 16, 16)"),
        (["predict", "shapes.npz", "nothere.npy"], "input not found"),
        (["predict", "shapes.npz", "notes.txt"], "unsupported input type .txt"),
        (["predict", "damaged.npz", "wrong.npy"], "truncated or corrupt"),
    ]
    try:
        import PIL  # noqa: F401
        cases.append((["predict", "shapes.npz", "image.png"], "not a readable image"))
    except ImportError:
        cases.append((["predict", "shapes.npz", "image.png"], "pip install polycnn[images]"))
    for args, message in cases:
        r = CliRunner().invoke(main, [*args, "--backend", "numpy"])
        assert r.exit_code == 2, (args, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, r.output)


def _checkpoint_epoch(path):
    return pc.load(str(path)).training_state["epoch"]


def test_existing_out_needs_force_or_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", *TINY, "--epochs", "1", "--out", "run.npz", "-q"]
    assert _run(args).exit_code == 0
    first = (tmp_path / "run.npz").read_bytes(), (tmp_path / "run.best.npz").read_bytes()

    r = CliRunner().invoke(main, args)   # the same command again: refused, nothing touched
    assert r.exit_code == 2 and "run.npz already exists; pass --force" in r.output, r.output
    assert ((tmp_path / "run.npz").read_bytes(), (tmp_path / "run.best.npz").read_bytes()) == first

    r = _run(["train", "--resume", "--out", "run.npz", "--epochs", "2", "--backend", "numpy", "-q"])
    assert r.exit_code == 0, r.output
    assert _checkpoint_epoch(tmp_path / "run.npz") == 2

    r = _run([*args, "--seed", "5", "--force"])   # a new run replaces both files
    assert r.exit_code == 0, r.output
    assert _checkpoint_epoch(tmp_path / "run.npz") == 1
    replaced = pc.load(str(tmp_path / "run.npz")).training_state["metadata"]["run"]
    assert replaced["seed"] == 5 and _checkpoint_epoch(tmp_path / "run.best.npz") == 1

    # a lone best-epoch twin is protected too
    (tmp_path / "other.best.npz").write_bytes(b"keep me")
    r = CliRunner().invoke(main, ["train", *TINY, "--out", "other.npz"])
    assert r.exit_code == 2 and "other.best.npz" in r.output and "--force" in r.output, r.output
    assert (tmp_path / "other.best.npz").read_bytes() == b"keep me"
    assert not (tmp_path / "other.npz").exists()


def _nan_validation(monkeypatch, losses):
    """The validation loss of each epoch, in turn, instead of the real one."""
    import polycnn.training._loop as training   # NOTE: where fit evaluates the validation set

    real = training.evaluate
    it = iter(losses)
    monkeypatch.setattr(training, "evaluate", lambda model, data, **kw: dict(real(model, data, **kw),
                                                                          loss=next(it)))


def test_nan_validation_loss_ends_with_exit_1(tmp_path, monkeypatch):
    _nan_validation(monkeypatch, [2.0, float("nan"), 1.5])
    out = tmp_path / "v.npz"
    r = CliRunner().invoke(main, ["train", *TINY, "--epochs", "3", "--out", str(out), "--json"])
    assert r.exit_code == 1, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "validation loss was not finite in epoch 2 (nan)" in errors[0], r.stderr
    assert "(3) is in" in errors[0] and "Traceback" not in r.output

    def refuse(name):
        raise AssertionError(f"{name} in --json output")
    summary = json.loads(r.stdout, parse_constant=refuse)   # strict JSON: NaN is null
    assert summary["history"]["val_loss"][1] is None and summary["best_epoch"] == 3
    assert _checkpoint_epoch(out) == 3 and _checkpoint_epoch(tmp_path / "v.best.npz") == 3


def test_nan_validation_loss_is_not_better_for_patience(tmp_path, monkeypatch):
    _nan_validation(monkeypatch, [float("nan")] * 4)
    out = tmp_path / "p.npz"
    r = CliRunner().invoke(main, ["train", *TINY, "--epochs", "4", "--patience", "2", "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert "stopped early after epoch 2" in r.stdout and "(best)" not in r.stdout, r.stdout
    assert "epochs 1 (nan), 2 (nan)" in r.stderr and "no epoch had a finite validation loss" in r.stderr
    assert _checkpoint_epoch(out) == 2 and not (tmp_path / "p.best.npz").exists()


def test_infinite_test_loss_ends_with_exit_1(tmp_path, monkeypatch):
    from polycnn.recipes import runner

    real = pc.evaluate
    # NOTE: pc.run evaluates the test split (polycnn.recipes.runner)
    monkeypatch.setattr(runner, "evaluate", lambda model, data, **kw: dict(real(model, data, **kw),
                                                                           loss=float("inf")))
    r = CliRunner().invoke(main, ["train", *TINY, "--out", str(tmp_path / "t.npz")])
    assert r.exit_code == 1, r.output
    assert r.stderr.count("error: ") == 1 and "the test loss is inf" in r.stderr, r.stderr
    assert "validation loss was not finite" not in r.stderr


def test_evaluate_with_nan_loss_ends_with_exit_1(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    if not (workdir / "shapes.npz").exists():
        assert _run(["train", *TINY, "--epochs", "1"]).exit_code == 0
    real = pc.evaluate
    monkeypatch.setattr(pc, "evaluate", lambda model, data, **kw: dict(real(model, data, **kw),
                                                                       loss=float("nan")))
    r = CliRunner().invoke(main, ["evaluate", "shapes.npz", "--backend", "numpy", "--json"])
    assert r.exit_code == 1 and r.stdout == "", r.output
    assert r.stderr.startswith("error: shapes.npz: the test loss is nan") and r.stderr.count("\n") == 1
