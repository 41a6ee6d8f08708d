"""polycnn.recipes: RunConfig's defaults and checks, its versioned JSON in checkpoints (and the
previous release's run settings, converted), pc.run against `polycnn train` bit for bit, and
checkpoints written by the previous release (tests/model/fixtures) loaded, evaluated,
predicted from and resumed."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import polycnn as pc
from polycnn import checkpoint, recipes
from polycnn.cli.main import main
from polycnn.recipes import OptionError, RunConfig

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
OLD = ["shapes_old.npz", "digits_old.npz"]
#: timings: the only part of a checkpoint that differs between two runs of the same config
TIMING = ("seconds", "images_per_s")


@pytest.fixture
def small_splits(monkeypatch):
    """Small validation and test splits (the defaults every run takes)."""
    monkeypatch.setitem(recipes.DEFAULTS, "n_val", 32)
    monkeypatch.setitem(recipes.DEFAULTS, "n_test", 48)


# ---- RunConfig ---------------------------------------------------------------------------------

def test_for_dataset_holds_the_command_lines_defaults():
    c = RunConfig.for_dataset("shapes")
    assert (c.model, c.epochs, c.batch_size, c.optimizer, c.lr, c.schedule, c.warmup) == \
        ("tutorial", 8, 64, "sgd", 0.05, "cosine", None)
    assert (c.image_size, c.channels, c.n_train, c.n_val, c.n_test, c.augment, c.seed) == \
        (32, 3, 6000, 1000, 2000, True, 0)
    d = RunConfig.for_dataset("digits")
    assert (d.model, d.epochs, d.image_size, d.channels, d.n_train) == ("shapes-cnn", 30, 8, 1, None)
    m = RunConfig.for_dataset("mnist", data_dir="somewhere", optimizer="adam")
    assert (m.model, m.epochs, m.lr, m.image_size, m.channels) == ("lenet5", 20, 0.002, 28, 1)
    assert m.data_dir.endswith("somewhere") and m.data_dir.startswith("/")
    f = RunConfig.for_dataset("folder", data_dir=".", channels=1, image_size=12)
    assert (f.model, f.epochs, f.channels, f.image_size) == ("tutorial", 10, 1, 12)


def test_config_is_frozen_and_replace_checks():
    c = RunConfig.for_dataset("shapes", epochs=2)
    with pytest.raises(Exception):
        c.epochs = 3
    assert c.replace(epochs=3).epochs == 3 and c.epochs == 2
    with pytest.raises(OptionError, match="batch_size"):
        c.replace(batch_size=0)


@pytest.mark.parametrize("name, overrides, words", [
    ("shapes", {"epochs": 0}, ["epochs", "must be >= 1"]),
    ("shapes", {"epochs": 10**6}, ["epochs", "at most 100,000"]),
    ("shapes", {"n_train": 5}, ["n_train", ">= 10"]),
    ("shapes", {"image_size": 20}, ["image_size", "multiple of 8"]),
    ("shapes", {"lr": -1.0}, ["lr", "positive number"]),
    ("shapes", {"lr": float("nan")}, ["lr", "positive number"]),
    ("shapes", {"optimizer": "rmsprop"}, ["optimizer", "sgd, adam, adamw"]),
    ("shapes", {"schedule": "linear"}, ["schedule", "cosine, step, constant"]),
    ("shapes", {"augment": "yes"}, ["augment", "true or false"]),
    ("shapes", {"epochs": 2.5}, ["epochs", "int"]),
    ("shapes", {"seed": True}, ["seed"]),
    ("shapes", {"learning_rate": 0.1}, ["learning_rate", "not a run setting"]),
    ("shapes", {"channels": 1}, ["channels", "folder only"]),
    ("shapes", {"data_dir": "x"}, ["data_dir", "needs no files"]),
    ("digits", {"image_size": 16}, ["image_size", "fixed size"]),
    ("mnist", {}, ["data_dir", "needs the folder"]),
    ("imagenet", {}, ["dataset", "unknown data set"]),
])
def test_bad_overrides_name_the_argument(name, overrides, words):
    with pytest.raises(OptionError) as info:
        RunConfig.for_dataset(name, **overrides)
    assert info.value.option.split("/")[0] == words[0] and all(w in str(info.value) for w in words), str(info.value)


def test_json_round_trip_is_versioned():
    c = RunConfig.for_dataset("shapes", epochs=3, warmup=5, patience=2, optimizer="adamw")
    stored = json.loads(json.dumps(c.to_json()))
    assert stored["run_version"] == recipes.RUN_VERSION == 1
    assert RunConfig.from_json(stored) == c


def test_previous_releases_run_settings_are_converted():
    old = {"epochs": 1, "batch_size": 32, "lr": 0.05, "optimizer": "sgd", "seed": 0,
           "augment": True, "image_size": 16, "channels": 3, "n_train": 100, "n_val": 1000,
           "n_test": 2000, "schedule": "cosine", "warmup": None, "patience": None}
    c = RunConfig.from_json(old, "old.npz")
    assert (c.dataset, c.model, c.epochs, c.n_train, c.sync_bn) == ("shapes", "tutorial", 1, 100, False)
    older = {k: v for k, v in old.items() if k not in ("schedule", "warmup", "patience")}
    assert RunConfig.from_json(older, "old.npz") == c
    digits = dict(old, dataset="digits", model="shapes-cnn", download=True, data_dir=None,
                  classes=[str(i) for i in range(10)], normalize=None, n_train=None,
                  image_size=8, channels=1)
    d = RunConfig.from_json(digits, "d.npz")
    assert (d.dataset, d.model, d.n_train) == ("digits", "shapes-cnn", None)
    assert recipes.stored_data(digits)["classes"][9] == "9"


@pytest.mark.parametrize("change, words", [
    ({"epochs": "8"}, ["x.npz", "run setting epochs", "an int >= 1"]),
    ({"lr": float("inf")}, ["x.npz", "lr", "positive number"]),
    ({"dataset": "imagenet"}, ["x.npz", "dataset", "one of shapes"]),
    ({"channels": 2}, ["x.npz", "channels", "1 or 3"]),
    ({"normalize": [[0.5], [0.0]]}, ["x.npz", "normalize"]),
    ({"classes": [1, 2, 3]}, ["x.npz", "classes", "list of names"]),
    ({"command": "rm -rf /"}, ["x.npz", "unknown field", "command"]),
    ({"run_version": 99}, ["x.npz", "run_version 99"]),
    ({"run_version": True}, ["x.npz", "run_version True"]),
])
def test_hostile_stored_runs_name_the_file_and_field(change, words):
    stored = dict(RunConfig.for_dataset("shapes").to_json(), **change)
    with pytest.raises(ValueError) as info:
        RunConfig.from_json(stored, "x.npz")
    assert all(w in str(info.value) for w in words), str(info.value)


def test_an_old_run_without_a_needed_field_is_refused():
    old = {k: v for k, v in RunConfig.for_dataset("shapes").to_json().items()
           if k not in ("run_version", "epochs")}
    with pytest.raises(ValueError, match="x.npz: the checkpoint's run settings lack 'epochs'"):
        RunConfig.from_json(old, "x.npz")


def test_a_stored_run_that_is_not_an_object_is_refused():
    for bad in (None, [], "run", 3):
        with pytest.raises(ValueError, match="x.npz"):
            RunConfig.from_json(bad, "x.npz")


def test_run_refuses_an_existing_checkpoint_and_a_non_config(tmp_path):
    out = tmp_path / "taken.npz"
    out.write_bytes(b"")
    with pytest.raises(FileExistsError, match="taken.npz already exists"):
        pc.run(RunConfig.for_dataset("shapes", epochs=1), out)
    with pytest.raises(TypeError, match="RunConfig"):
        pc.run({"epochs": 1}, tmp_path / "a.npz")


# ---- pc.run is polycnn train -------------------------------------------------------------------

def _contents(path):
    """(metadata without timings, arrays) of a checkpoint."""
    meta, arrays = checkpoint.read(path)
    for key in TIMING:
        meta["history"].pop(key)
        meta["metrics"].pop(key)
    meta.pop("sha256")   # NOTE: over the arrays, compared one by one below
    return meta, arrays


def test_run_writes_what_train_writes(tmp_path, small_splits):
    settings = {"epochs": 2, "n_train": 64, "image_size": 16, "batch_size": 32, "seed": 1}
    result = pc.run(RunConfig.for_dataset("shapes", **settings), tmp_path / "api.npz",
                    backend="numpy")
    args = [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    r = CliRunner().invoke(main, ["train", *args, "--backend", "numpy", "--out",
                                  str(tmp_path / "cli.npz"), "-q"])
    assert r.exit_code == 0, r.output
    for name in ("", ".best"):
        meta_api, arrays_api = _contents(tmp_path / f"api{name}.npz")
        meta_cli, arrays_cli = _contents(tmp_path / f"cli{name}.npz")
        assert meta_api == meta_cli
        assert arrays_api.keys() == arrays_cli.keys()
        for key in arrays_api:
            assert arrays_api[key].dtype == arrays_cli[key].dtype, key
            assert arrays_api[key].tobytes() == arrays_cli[key].tobytes(), key
    assert meta_api["metadata"]["run"]["run_version"] == 1
    assert RunConfig.from_json(meta_api["metadata"]["run"]) == result.config
    assert result.test["n"] == 48 and len(result.history["epoch"]) == 2
    assert pathlib.Path(result.best_checkpoint).name == "api.best.npz"


def test_resume_continues_a_run(tmp_path, small_splits):
    config = RunConfig.for_dataset("shapes", epochs=1, n_train=64, image_size=16, batch_size=32)
    out = tmp_path / "r.npz"
    pc.run(config, out, backend="numpy")
    events = []
    result = pc.resume(out, epochs=2, backend="numpy", callback=events.append)
    assert events[0]["kind"] == "start" and events[0]["resume"]
    assert result.config == config.replace(epochs=2) and list(result.history["epoch"]) == [1, 2]
    with pytest.raises(ValueError, match="already has 2 of 2 epochs"):
        pc.resume(out, backend="numpy")
    with pytest.raises(OptionError, match="data_dir"):
        pc.resume(out, epochs=3, data_dir=tmp_path, backend="numpy")


# ---- checkpoints of the previous release ---------------------------------------------------------

@pytest.mark.parametrize("name", OLD)
def test_old_checkpoint_loads(name):
    model = pc.load(FIXTURES / name, backend="numpy")
    run = model.training_state["metadata"]["run"]
    assert "run_version" not in run   # NOTE: written before the run had a version
    trained = recipes.load_trained(str(FIXTURES / name), "numpy")
    assert trained.config.epochs == 1 and trained.classes == model.training_state["metadata"]["classes"]


@pytest.mark.parametrize("name", OLD)
def test_old_checkpoint_evaluates_and_predicts(name, tmp_path):
    path = str(FIXTURES / name)
    r = CliRunner().invoke(main, ["evaluate", path, "--backend", "numpy", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["n"] > 0 and 0.0 <= report["accuracy"] <= 1.0
    config = recipes.load_trained(path, "numpy").config
    x = np.random.default_rng(0).random((2, config.channels, config.image_size, config.image_size))
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    r = CliRunner().invoke(main, ["predict", path, str(tmp_path / "x.npy"), "--backend", "numpy",
                                  "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["predictions"]) == 2


@pytest.mark.parametrize("name", OLD)
def test_old_checkpoint_resumes(name, tmp_path):
    out = tmp_path / name
    shutil.copy(FIXTURES / name, out)
    r = CliRunner().invoke(main, ["train", "--resume", "--out", str(out), "--epochs", "2",
                                  "--backend", "numpy", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["history"]["epoch"] == [1, 2] and summary["run"]["run_version"] == 1
    meta, _ = checkpoint.read(out)
    assert meta["epoch"] == 2 and meta["metadata"]["run"]["run_version"] == 1
    again = shutil.copy(FIXTURES / name, tmp_path / f"api_{name}")
    assert pc.resume(again, epochs=2, backend="numpy").config.epochs == 2


@pytest.mark.parametrize("field, value, words", [
    ("batch_size", -4, ["run setting batch_size is -4", "an int >= 1"]),
    ("optimizer", "__import__('os')", ["run setting optimizer", "one of sgd"]),
    ("run_version", "1", ["run_version '1'"]),
    ("epochs", [1], ["run setting epochs is [1]"]),
])
def test_a_tampered_stored_run_is_one_line_naming_file_and_field(field, value, words, tmp_path,
                                                                small_splits):
    config = RunConfig.for_dataset("shapes", epochs=1, n_train=16, image_size=16, batch_size=16)
    out = tmp_path / "t.npz"
    pc.run(config, out, backend="numpy")
    model = pc.load(out, backend="numpy")
    meta = model.training_state["metadata"]
    checkpoint.save(out, model, epoch=1, run=dict(meta["run"], **{field: value}),
                    classes=meta["classes"])
    for args in (["evaluate", str(out)], ["train", "--resume", "--out", str(out), "--epochs", "2"]):
        r = CliRunner().invoke(main, [*args, "--backend", "numpy"])
        assert r.exit_code == 2, r.output
        assert r.stderr.count("\n") == 1 and str(out) in r.stderr, r.stderr
        assert all(w in r.stderr for w in words), r.stderr
