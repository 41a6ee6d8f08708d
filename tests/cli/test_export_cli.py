"""`polycnn export` (ONNX and safetensors) and `polycnn predict` on what it wrote; bad files and
arguments as one-line errors (a child process each: exit 2, bounded, nothing written)."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from support.hostile import Outcome, api_case, run_cli, run_python, snapshot
from support.interchange import assert_close, ort_run, ort_session, randomize

import polycnn as pc
from polycnn import models
from polycnn.datasets import standardize

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'polycnn[onnx]')")
ort = pytest.importorskip("onnxruntime",
                          reason="onnxruntime is not installed (pip install 'polycnn[onnx]')")
st_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed")


# ---- the command line ----------------------------------------------------------------------

def _checkpoint(folder, normalize=None, **bad):
    """A checkpoint with the metadata `polycnn train` writes (run and classes); ``bad``
    replaces run settings."""
    model = randomize(models.shapes_cnn((1, 8, 8), 10, backend="numpy"))
    run = {"dataset": "digits", "channels": 1, "image_size": 8, "normalize": normalize, **bad}
    classes = [str(i) for i in range(10)]
    path = os.path.join(folder, "digits.npz")
    model.save(path, run=run, classes=classes)
    return path, model


def test_cli_export_onnx_and_safetensors(tmp_path):
    ckpt, model = _checkpoint(tmp_path, normalize=[[0.4], [0.3]])
    out = run_cli("export", ckpt, tmp_path / "d.onnx", cwd=tmp_path)
    assert out.rc == 0, out
    assert "input (batch, 1, 8, 8) normalised in the graph" in out.stdout
    x = np.random.default_rng(3).uniform(0, 1, (6, 1, 8, 8)).astype(np.float32)
    got = ort_run(ort_session(tmp_path / "d.onnx"), x)
    assert_close(got, model.backend.to_numpy(model.eval()(standardize(x, [0.4], [0.3]))), "CLI onnx")
    props = {p.key: p.value for p in onnx.load(tmp_path / "d.onnx").metadata_props}
    assert json.loads(props["polycnn.classes"]) == [str(i) for i in range(10)]
    out = run_cli("export", ckpt, tmp_path / "d.safetensors", cwd=tmp_path)
    assert out.rc == 0, out
    fresh = models.shapes_cnn((1, 8, 8), 10, backend="numpy", seed=4)
    pc.load_weights(fresh, tmp_path / "d.safetensors")
    assert all(fresh.named_arrays()[k].tobytes() == v.tobytes() for k, v in model.named_arrays().items())
    out = run_cli("export", ckpt, tmp_path / "d.onnx", "--force", "--softmax", cwd=tmp_path)
    assert out.rc == 0, out
    assert_close(ort_run(ort_session(tmp_path / "d.onnx"), x),
                 pc.predict(model, standardize(x, [0.4], [0.3])), "CLI onnx --softmax")


def test_cli_train_export_predict_agree(tmp_path):
    """The done-means path in small: `polycnn train`, `polycnn export`, onnxruntime's classes
    equal `polycnn predict`'s."""
    out = run_cli("train", "--dataset", "digits", "--epochs", "1", "--n-train", "200",
                  "--backend", "numpy", "--quiet", "--out", "d.npz", cwd=tmp_path)
    assert out.rc == 0, out
    assert run_cli("export", "d.npz", "d.onnx", cwd=tmp_path).rc == 0
    x = np.random.default_rng(4).uniform(0, 1, (40, 1, 8, 8))
    np.save(tmp_path / "x.npy", x)
    pred = run_cli("predict", "d.npz", "x.npy", "--backend", "numpy", "--json", cwd=tmp_path)
    assert pred.rc == 0, pred
    rows = json.loads(pred.stdout)["predictions"]
    session = ort_session(tmp_path / "d.onnx")
    props = {p.key: p.value for p in onnx.load(tmp_path / "d.onnx").metadata_props}
    classes = json.loads(props["polycnn.classes"])
    got = ort_run(session, x.astype(np.float32))
    assert [classes[i] for i in got.argmax(1)] == [r["class"] for r in rows]
    probs = np.array([list(r["probabilities"].values()) for r in rows])
    e = np.exp(got - got.max(1, keepdims=True))
    assert_close(e / e.sum(1, keepdims=True), probs, "onnx softmax vs polycnn predict")


# ---- hostile cases: one child process each, one line, exit 2, bounded, nothing written -------

def _valid_file(folder):
    model = pc.Sequential(pc.Conv2d(1, 2, 3), pc.Flatten(), pc.Linear(8, 2), backend="numpy")
    return pc.save_weights(model, os.path.join(folder, "w.safetensors"))


def _header_file(folder, header, data=b"", length=None):
    raw = json.dumps(header).encode()
    path = os.path.join(folder, "w.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _write(folder, name, data: bytes):
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _truncated_data(folder):
    path = _valid_file(folder)
    data = open(path, "rb").read()
    return _write(folder, "w.safetensors", data[:-10])


def _renamed(folder):
    model = pc.Sequential(pc.Conv2d(1, 2, 3), pc.Flatten(), pc.Linear(8, 2), backend="numpy")
    arrays = {k: np.asarray(v) for k, v in model.named_arrays().items()}
    arrays["0.kernel"] = arrays.pop("0.weight")
    arrays["2.weight"] = np.zeros((2, 9), np.float32)
    arrays["2.bias"] = arrays["2.bias"].astype(np.float64)
    st_numpy.save_file(arrays, os.path.join(folder, "w.safetensors"))
    return os.path.join(folder, "w.safetensors")


_F32 = {"dtype": "F32", "shape": [2, 1, 3, 3], "data_offsets": [0, 72]}

#: id -> (make the file in a folder -> path, needles the one error line must name)
BAD_FILES = {
    "five-bytes": (lambda d: _write(d, "w.safetensors", b"\x05\x00\x00\x00\x00"),
                   ["shorter than the 8-byte header"]),
    "empty": (lambda d: _write(d, "w.safetensors", b""), ["0 bytes"]),
    "huge-header-length": (lambda d: _header_file(d, {}, length=1 << 62), ["header claims", "bytes"]),
    "header-past-the-end": (lambda d: _header_file(d, {"0.weight": _F32}, length=5000),
                            ["truncated", "5,000"]),
    "header-not-json": (lambda d: _write(d, "w.safetensors", struct.pack("<Q", 4) + b"{{{{"),
                        ["not JSON"]),
    "header-a-list": (lambda d: _header_file(d, [1, 2]), ["not an object"]),
    "offsets-past-the-data": (lambda d: _header_file(d, {"0.weight": _F32}, b"\0" * 8),
                              ["0.weight", "data_offsets", "truncated"]),
    "huge-shape": (lambda d: _header_file(d, {"0.weight": dict(_F32, shape=[1 << 30, 1 << 30, 3, 3])},
                                          b"\0" * 72), ["0.weight", "needs", "bytes"]),
    "unknown-dtype": (lambda d: _header_file(d, {"0.weight": dict(_F32, dtype="Q7")}, b"\0" * 72),
                      ["unknown dtype", "Q7"]),
    "negative-offset": (lambda d: _header_file(d, {"0.weight": dict(_F32, data_offsets=[-8, 64])},
                                               b"\0" * 72), ["data_offsets"]),
    "truncated-data": (_truncated_data, ["data_offsets", "truncated"]),
    "wrong-names-shapes-dtypes": (_renamed, ["unexpected 0.kernel", "missing 0.weight",
                                             "2.weight: shape (2, 9), the model has (2, 8)",
                                             "2.bias: float64, the model is float32"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_safetensors_file(case, tmp_path):
    make, needles = BAD_FILES[case]
    path = make(str(tmp_path))
    before = snapshot(tmp_path)
    out = run_python(api_case(f"model = pc.Sequential(pc.Conv2d(1, 2, 3), pc.Flatten(),"
                              f" pc.Linear(8, 2), backend='numpy'); pc.load_weights(model, {path!r})"),
                     cwd=tmp_path)
    out.assert_user_error(*needles)
    assert snapshot(tmp_path) == before


def _fake_onnx(folder) -> dict:
    """An environment whose ``import onnx`` fails, as without the extra."""
    stub = os.path.join(folder, "stub")
    os.makedirs(stub)
    with open(os.path.join(stub, "onnx.py"), "w") as f:
        f.write("raise ImportError('No module named onnx (stub)')\n")
    return {"PYTHONPATH": stub}


#: id -> (arguments after the checkpoint's path, make an env in the folder or None, needles)
CLI_CASES = {
    "unknown-extension": (["out.txt"], None, ["out.txt", "unknown output type", ".onnx"]),
    "no-extension": (["out"], None, ["(no extension)", ".safetensors"]),
    "existing-output": (["keep.onnx"], None, ["keep.onnx exists", "--force"]),
    "output-is-a-folder": (["sub.onnx"], None, ["sub.onnx is a folder"]),
    "opset-13": (["m.onnx", "--opset", "13"], None, ["--opset 13", "17"]),
    "bad-input-shape": (["m.onnx", "--input-shape", "3,x"], None, ["--input-shape", "C,H,W"]),
    "input-shape-not-fitting": (["m.onnx", "--input-shape", "1,1,1"], None, ["layer 3", "(1, 1, 1)"]),
    "softmax-for-weights": (["w.safetensors", "--softmax"], None, ["--softmax", ".onnx output only"]),
    "missing-onnx-extra": (["m.onnx"], _fake_onnx, ["onnx", "pip install 'polycnn[onnx]'"]),
    "checkpoint-not-npz": (["m.onnx"], None, ["garbage.npz", "not a polycnn checkpoint"]),
    "checkpoint-missing": (["m.onnx"], None, ["nothere.npz", "not found"]),
    "output-folder-missing": (["no/such/m.onnx"], None, ["no/such/m.onnx", "does not exist"]),
    "stored-size-not-an-int": (["m.onnx"], None, ["image_size '8'", "--input-shape"]),
    "stored-normalize-wrong": (["m.onnx"], None, ["normalize", "one value per channel"]),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_export_bad_input(case, tmp_path):
    args, make_env, needles = CLI_CASES[case]
    bad = {"stored-size-not-an-int": {"image_size": "8"},
           "stored-normalize-wrong": {"normalize": [[0.1, 0.2], [0.3, 0.4]]}}.get(case, {})
    ckpt, _ = _checkpoint(tmp_path, **bad)
    if case == "checkpoint-not-npz":
        ckpt = _write(tmp_path, "garbage.npz", b"not a zip at all" * 10)
    if case == "checkpoint-missing":
        ckpt = "nothere.npz"
    _write(tmp_path, "keep.onnx", b"precious")
    os.mkdir(tmp_path / "sub.onnx")
    env = make_env(str(tmp_path)) if make_env else None
    before = snapshot(tmp_path)
    out = run_cli("export", os.path.basename(ckpt), *args, cwd=tmp_path, env=env)
    out.assert_user_error(*needles)
    assert snapshot(tmp_path) == before, "a file was created or changed"


def test_missing_extra_is_one_line_for_the_api(tmp_path):
    env = _fake_onnx(str(tmp_path))
    out: Outcome = run_python(api_case(
        "pc.export_onnx(pc.Sequential(pc.Flatten(), pc.Linear(4, 2), backend='numpy'), 'm.onnx',"
        " (1, 2, 2))", exception="ImportError"), cwd=tmp_path, env=env)
    out.assert_user_error("ONNX export needs the 'onnx' package", "pip install 'polycnn[onnx]'")
    assert not (tmp_path / "m.onnx").exists()
