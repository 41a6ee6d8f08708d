"""Checkpoints: round trip across backends, no pickle, atomic writes, damaged files rejected."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import polycnn as pc
from polycnn import checkpoint


def _model(backend="numpy", seed=1):
    return pc.Sequential(pc.Conv2d(3, 4, 3, padding=1), pc.BatchNorm2d(4), pc.ReLU(), pc.MaxPool2d(2),
                         pc.Dropout2d(0.25), pc.Flatten(), pc.Linear(4 * 8 * 8, 3),
                         backend=backend, seed=seed)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained one epoch on numpy (so BatchNorm statistics and Adam state are non-trivial)."""
    x, y = pc.datasets.shapes(64, image_size=16, seed=0)
    model = _model()
    path = tmp_path_factory.mktemp("ckpt") / "model.npz"
    pc.fit(model, (x, y), epochs=1, batch_size=16, optimizer=pc.Adam(model.parameters(), lr=1e-2),
           seed=0, checkpoint=path, metadata={"note": "test"})
    return model, path, x


def test_saved_on_numpy_loads_on_every_backend_with_same_predictions(backend, trained):
    model, path, x = trained
    expected = pc.predict(model, x)
    loaded = pc.load(path, backend=backend)
    assert loaded.backend.name == backend.name
    assert [repr(a) for a in loaded] == [repr(b) for b in model]
    got = pc.predict(loaded, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5,
                               err_msg=f"predictions after loading on {backend.name}")
    state = loaded.training_state
    assert state["epoch"] == 1 and state["metadata"] == {"note": "test"}
    assert state["optimizer"]["type"] == "Adam" and state["optimizer"]["t"] == 4
    assert set(state["optimizer_arrays"]) == {f"{i}.{b}" for i in range(6) for b in ("m", "v")}


def test_saved_on_any_backend_loads_on_numpy(backend, tmp_path):
    model = _model(backend, seed=5)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    before = pc.predict(model, x)
    model.save(tmp_path / "m.npz")
    np.testing.assert_allclose(pc.predict(pc.load(tmp_path / "m.npz", backend="numpy"), x), before,
                               rtol=1e-4, atol=1e-5)


def test_file_is_plain_npz_without_pickle(trained):
    _, path, _ = trained
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert all(a.dtype != object for a in arrays.values())
    meta = json.loads(arrays["__meta__"].tobytes())
    assert meta["format"] == "polycnn-checkpoint" and meta["model"]["layers"][0]["type"] == "Conv2d"
    assert "model.1.running_mean" in arrays and meta["rng"]["bit_generator"] == "PCG64"


def test_truncated_file_gives_clear_error(trained, tmp_path):
    _, path, _ = trained
    data = open(path, "rb").read()
    for cut in (len(data) // 2, len(data) - 10, 30):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            pc.load(bad)


def test_altered_array_gives_clear_error(trained, tmp_path):
    _, path, _ = trained
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["model.0.weight"] = arrays["model.0.weight"] + 1e-3
    bad = tmp_path / "altered.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match="do not match its checksum"):
        pc.load(bad)
    # a flipped byte inside the archive is caught too (zip CRC or checksum)
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 3] ^= 0xFF
    flipped = tmp_path / "flipped.npz"
    flipped.write_bytes(bytes(raw))
    with pytest.raises(ValueError):
        pc.load(flipped)


def test_foreign_and_missing_files(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a polycnn checkpoint"):
        pc.load(other)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a polycnn checkpoint \\(not an .npz archive\\)"):
        pc.load(text)
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ValueError, match="not a polycnn checkpoint \\(not an .npz archive\\)"):
        pc.load(single)
    zipped = tmp_path / "cut.npz"  # a zip archive cut short: np.load itself fails
    _model().save(zipped)
    zipped.write_bytes(zipped.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        pc.load(zipped)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        pc.load(tmp_path / "missing.npz")


def test_write_is_atomic(tmp_path, monkeypatch):
    model = _model()
    path = tmp_path / "m.npz"
    model.save(path)
    good = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        _model(seed=9).save(path)
    assert path.read_bytes() == good, "a failed save must leave the old checkpoint intact"
    assert os.listdir(tmp_path) == ["m.npz"], "no temporary file may be left behind"
    assert zipfile.is_zipfile(path)


def test_load_rejects_wrong_shapes(trained, tmp_path):
    _, path, _ = trained
    meta, arrays = checkpoint.read(path)
    meta["model"]["layers"][6]["config"]["out_features"] = 4
    model = pc.Sequential.from_spec(meta["model"], backend="numpy")
    with pytest.raises(ValueError, match="does not match"):
        model.load_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
