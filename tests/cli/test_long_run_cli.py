"""Long runs from the command line: the ETA bar, --json-lines, --patience and the best-epoch
checkpoint, --schedule / --warmup, and a real Ctrl-C (SIGINT) followed by --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import polycnn as pc
from polycnn._files import is_temp_name
from polycnn.checkpoint import read
from polycnn.cli import train as train_cli
from polycnn.cli.main import main

TINY = ["--backend", "numpy", "--n-train", "48", "--image-size", "16", "--batch-size", "16",
        "--seed", "2"]


@pytest.fixture(autouse=True)
def _small_splits(monkeypatch):
    monkeypatch.setitem(train_cli.DEFAULTS, "n_val", 24)
    monkeypatch.setitem(train_cli.DEFAULTS, "n_test", 24)


class Frozen(pc.SGD):
    """An optimiser that never changes the weights: the validation loss stays exactly the same."""

    def _update(self, p, state, lr):
        pass


def test_progress_bar_shows_eta(capsys):
    p = train_cli._Progress(quiet=False, as_json=False)
    p.bar = True
    p({"kind": "batch", "epoch": 1, "epochs": 3, "batch": 5, "batches": 10, "loss": 1.0,
       "accuracy": 0.5, "images_per_s": 100.0, "eta_s": 75.0, "run_eta_s": 3725.0})
    err = capsys.readouterr().err
    assert "ETA 1:15 (run 1:02:05)" in err and "[############------------]  50%" in err


def test_json_lines_patience_and_best_file(tmp_path, monkeypatch):
    def frozen_optimizer(name, params, lr, steps, schedule="cosine", warmup=None):
        return Frozen(params, lr=lr, schedule=pc.recipes.make_schedule(schedule, steps, warmup))

    # NOTE: pc.run makes the optimiser (polycnn.recipes.runner)
    monkeypatch.setattr(pc.recipes.runner, "make_optimizer", frozen_optimizer)
    out = tmp_path / "run.npz"
    r = CliRunner().invoke(main, ["train", *TINY, "--epochs", "6", "--patience", "1", "--out",
                                  str(out), "--json-lines"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.output.splitlines()]
    assert [x.get("event") for x in lines] == ["epoch", "epoch", None]
    assert [x["epoch"] for x in lines[:2]] == [1, 2] and lines[1]["stop"] is True
    summary = lines[-1]
    assert summary["stopped_early"] == 2 and summary["best_epoch"] == 1
    assert summary["history"]["epoch"] == [1, 2] and "test_accuracy" in summary
    assert summary["best_checkpoint"] == str(tmp_path / "run.best.npz")
    assert read(tmp_path / "run.best.npz")[0]["epoch"] == 1 and read(out)[0]["epoch"] == 2

    r = CliRunner().invoke(main, ["train", *TINY, "--epochs", "6", "--patience", "1", "--out",
                                  str(tmp_path / "t.npz")], catch_exceptions=False)
    assert "stopped early after epoch 2" in r.output and "t.best.npz" in r.output


@pytest.mark.parametrize("args, kind, checks", [
    (["--schedule", "cosine", "--warmup", "3"], "CosineLR", {"warmup_steps": 3, "total_steps": 6}),
    (["--schedule", "step"], "StepLR", {"step_size": 2, "gamma": 0.1}),
    (["--schedule", "constant", "--warmup", "2"], "WarmupLR", {"warmup_steps": 2}),
    (["--schedule", "constant"], None, {}),
])
def test_schedule_options(args, kind, checks, tmp_path):
    out = tmp_path / "s.npz"
    r = CliRunner().invoke(main, ["train", *TINY, "--epochs", "2", "--out", str(out), "-q", *args],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    spec = read(out)[0]["optimizer"]["schedule"]
    if kind is None:
        assert spec is None
    else:
        assert spec["type"] == kind and all(spec[k] == v for k, v in checks.items()), spec


@pytest.mark.parametrize("args, message", [
    (["--schedule", "step", "--warmup", "2"], "not step"),
    (["--warmup", "6"], "smaller than the 6 steps"),
    (["--patience", "0"], "--patience"),
    (["--schedule", "linear"], "linear"),
    (["--json", "--json-lines"], "not both"),
])
def test_long_run_bad_options(args, message, tmp_path):
    r = CliRunner().invoke(main, ["train", *TINY, "--epochs", "2", "--out", str(tmp_path / "x.npz"),
                                  *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def test_sigint_saves_and_resume_continues(tmp_path):
    """A real Ctrl-C: SIGINT to a `polycnn train` process once its first epoch is saved."""
    out = tmp_path / "run.npz"
    cmd = [sys.executable, "-m", "polycnn.cli.main", "train", "--backend", "numpy", "--n-train",
           "32", "--image-size", "16", "--batch-size", "16", "--epochs", "500", "--out", str(out),
           "--no-augment"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.exists(), "no checkpoint appeared: " + (proc.stderr.read() if proc.poll() else "")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (stdout, stderr)
    assert f"continue with `polycnn train --resume --out {out}`" in stderr
    assert "Traceback" not in stderr
    done = read(out)[0]["epoch"]
    assert 1 <= done < 500
    left = [f for f in os.listdir(tmp_path) if is_temp_name(f)]
    assert not left, f"temporary files were left: {left}"

    r = CliRunner().invoke(main, ["train", "--resume", "--out", str(out), "--backend", "numpy",
                                  "--epochs", str(done + 1), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["history"]["epoch"] == list(range(1, done + 2))
    assert not [f for f in os.listdir(tmp_path) if is_temp_name(f)]
