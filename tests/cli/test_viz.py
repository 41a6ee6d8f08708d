"""`polycnn visualize` and `polycnn demo --plot`: every picture is written, is a PNG of the
documented size and is not blank; a missing matplotlib is a one-line error."""

from __future__ import annotations

import os
import shutil
import struct
import sys

import matplotlib  # noqa: F401  NOTE: in the test extra, with Pillow: missing fails, never skips
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import polycnn as pc
from polycnn import viz
from polycnn.cli.main import main

CLASSES = ["triangle", "square", "circle"]


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def _check_picture(path, kind):
    assert os.path.exists(path), path
    assert _png_size(path) == viz.SIZES[kind], (path, _png_size(path))
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10, f"{path} looks blank (pixel std {pixels.std():.1f})"
    colours = np.unique(pixels.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 20, f"{path} has only {len(colours)} distinct colours"


def _tiny_model(channels, seed=0):
    return pc.Sequential(
        pc.Conv2d(channels, 4, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
        pc.Conv2d(4, 6, kernel_size=3, padding=1), pc.ReLU(), pc.AvgPool2d(2),
        pc.Flatten(), pc.Linear(6 * 4 * 4, 3), backend="numpy", seed=seed)


@pytest.fixture(scope="module")
def grey_checkpoint(tmp_path_factory):
    """A greyscale shapes model trained 2 epochs through the API, with the run record that
    `polycnn train` writes (so visualize can rebuild the test split)."""
    run = {"epochs": 2, "batch_size": 16, "lr": 0.05, "optimizer": "sgd", "seed": 3,
           "augment": False, "image_size": 16, "channels": 1, "n_train": 48, "n_val": 16,
           "n_test": 24}
    splits = pc.datasets.shapes_splits(48, 16, 24, 16, 1, 3)
    model = _tiny_model(1)
    path = tmp_path_factory.mktemp("viz") / "grey.npz"
    pc.fit(model, splits["train"], epochs=2, batch_size=16, val=splits["val"], seed=3,
           checkpoint=str(path), metadata={"run": run, "classes": CLASSES})
    return path


def test_visualize_writes_every_picture(grey_checkpoint, tmp_path):
    out = tmp_path / "pics"
    r = CliRunner().invoke(main, ["visualize", str(grey_checkpoint), "--out", str(out),
                                  "--index", "5", "--backend", "numpy"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    paths = r.output.split()
    names = [os.path.basename(p) for p in paths]
    assert names == ["filters.png",
                     "feature_maps_01_layer0_conv2d.png", "feature_maps_02_layer1_relu.png",
                     "feature_maps_03_layer2_maxpool2d.png", "feature_maps_04_layer3_conv2d.png",
                     "feature_maps_05_layer4_relu.png", "feature_maps_06_layer5_avgpool2d.png",
                     "training_curves.png", "confusion_matrix.png"], names
    kinds = ["filters"] + ["feature_maps"] * 6 + ["history", "confusion"]
    for path, kind in zip(paths, kinds):
        assert os.path.dirname(os.path.abspath(path)) == str(out)
        _check_picture(path, kind)


def test_visualize_rgb_input_file_without_run_record(tmp_path):
    x, y = pc.datasets.shapes(24, image_size=16, channels=3, seed=1)
    model = _tiny_model(3, seed=1)
    ckpt = tmp_path / "rgb.npz"
    pc.fit(model, (x, y), epochs=1, batch_size=12, seed=1, checkpoint=str(ckpt))
    np.save(tmp_path / "one.npy", x[2])
    r = CliRunner().invoke(main, ["visualize", str(ckpt), "--input", str(tmp_path / "one.npy"),
                                  "--backend", "numpy"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    paths = [line for line in r.output.splitlines() if line.endswith(".png")]
    assert all(os.path.dirname(p) == str(tmp_path / "rgb_viz") for p in paths), paths
    assert "no confusion matrix" in r.output       # no test split without the run record
    assert len(paths) == 1 + 6 + 1
    _check_picture(paths[0], "filters")
    _check_picture(paths[-1], "history")

    r = CliRunner().invoke(main, ["visualize", str(ckpt), "--backend", "numpy"])
    assert r.exit_code == 2 and "pass --input FILE.npy" in r.output


def test_visualize_a_shipped_real_data_set(tmp_path, monkeypatch):
    """The UCI digits (shipped with polycnn): ten classes, 8x8 greyscale, a preset model."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["train", "--dataset", "digits", "--epochs", "1", "--backend",
                                  "numpy", "--out", "digits.npz", "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["visualize", "digits.npz", "--index", "2", "--backend", "numpy"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    paths = r.output.split()
    assert paths[0] == os.path.join("digits_viz", "filters.png")
    assert paths[-1].endswith("confusion_matrix.png") and len(paths) >= 5
    _check_picture(paths[0], "filters")
    _check_picture(paths[1], "feature_maps")
    _check_picture(paths[-1], "confusion")


def test_feature_maps_are_the_layer_outputs(grey_checkpoint):
    model = pc.load(grey_checkpoint, backend="numpy")
    x = pc.datasets.shapes(1, image_size=16, channels=1, seed=4)[0]
    maps = viz.feature_maps(model, x[0])
    assert [i for i, _, _ in maps] == [0, 1, 2, 3, 4, 5]
    model.eval()
    y = model.to_backend(x)
    for i, layer in enumerate(model.layers[:6]):
        y = layer.forward(y)
        np.testing.assert_allclose(maps[i][2], model.backend.to_numpy(y)[0], rtol=1e-6,
                                   err_msg=f"layer {i}")


def test_visualize_bad_input(grey_checkpoint, tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((3, 16, 16), np.float32))
    cases = [
        (["--index", "999"], "the test split has 24 images"),
        (["--input", str(tmp_path / "wrong.npy")], "expected (1, 16, 16)"),
        (["--input", str(tmp_path / "missing.npy")], "--input not found"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(main, ["visualize", str(grey_checkpoint), "--out", str(tmp_path / "o"),
                                      "--backend", "numpy", *args])
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output and "Traceback" not in r.output, (args, r.output)


def test_missing_matplotlib_is_one_line_exit_2(grey_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # `import matplotlib` raises ImportError
    for args in (["visualize", str(grey_checkpoint), "--out", str(tmp_path / "o")],
                 ["demo", "--plot", "--out", str(tmp_path / "demo.png")]):
        r = CliRunner().invoke(main, [*args, "--backend", "numpy"])
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and "pip install 'polycnn[viz]'" in lines[0], r.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "demo.png").exists()


def test_demo_plot_draws_the_worked_example(tmp_path):
    out = tmp_path / "sub" / "example.png"
    r = CliRunner().invoke(main, ["demo", "--plot", "--out", str(out), "--backend", "numpy"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert " 155 -155  155 -155" in r.output            # the text is still printed
    assert f"saved to {out}" in r.output
    _check_picture(out, "worked_example")
    r = CliRunner().invoke(main, ["demo", "--plot", "--out", str(tmp_path / "j.png"), "--json",
                                  "--backend", "numpy"], catch_exceptions=False)
    assert r.exit_code == 0 and '"plot": ' in r.output
    _check_picture(tmp_path / "j.png", "worked_example")


def test_a_failed_picture_write_leaves_the_old_picture(tmp_path, monkeypatch):
    """Pictures are written through a temporary file and renamed: a write that fails half-way
    leaves the old file whole and no temporary file (savefig wrote the file in place before)."""
    from matplotlib.figure import Figure

    from polycnn._files import is_temp_name

    path = tmp_path / "history.png"
    path.write_bytes(b"the old picture")
    real = Figure.savefig

    def half_then_fail(self, fname, **kw):
        real(self, fname, **kw)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)
    history = {"epoch": [1, 2], "loss": [1.0, 0.5], "accuracy": [0.4, 0.7],
               "val_loss": [1.1, 0.6], "val_accuracy": [0.3, 0.6]}
    with pytest.raises(OSError, match="No space left"):
        viz.plot_history(history, path)
    assert path.read_bytes() == b"the old picture"
    assert not [f for f in os.listdir(tmp_path) if is_temp_name(f)]
    monkeypatch.undo()
    viz.plot_history(history, path)
    _check_picture(path, "history")


# ---- visualize --input and the stored run, as hostile input ------------------------------------
def _npy_header(path, shape, descr="<f4"):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False,
                                                 "shape": shape})
        f.write(bytes(4096))


def _stored_run_edit(src, dest, **changes):
    """A copy of checkpoint ``src`` whose stored run has ``changes`` (checksum updated)."""
    import json

    from polycnn import checkpoint

    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    meta["metadata"]["run"].update(changes)
    meta["sha256"] = checkpoint._digest(arrays)
    np.savez(dest, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


#: id -> (make x.npy (and ck.npz) in the folder, words the one error line names); the grey
#: checkpoint takes (1, 16, 16) images
VISUALIZE_CASES = {
    "input-fifo": (lambda d: os.mkfifo(d / "x.npy"), ["x.npy", "FIFO", "not a regular file"]),
    "input-header-claims-1e9-images": (lambda d: _npy_header(d / "x.npy", (10**9, 1, 16, 16)),
                                       ["x.npy", "(1000000000, 1, 16, 16)", "memory"]),
    "input-wrong-shape": (lambda d: np.save(d / "x.npy", np.zeros((3, 16, 16), np.float32)),
                          ["x.npy", "(3, 16, 16)", "expected (1, 16, 16)"]),
    "input-two-images": (lambda d: np.save(d / "x.npy", np.zeros((2, 1, 16, 16), np.float32)),
                         ["x.npy", "2 images", "expected one"]),
    "input-int64-pixels": (lambda d: np.save(d / "x.npy", np.full((1, 16, 16), 200, np.int64)),
                           ["x.npy", "int64", "only uint8"]),
    "input-nan": (lambda d: np.save(d / "x.npy", np.full((1, 16, 16), np.nan, np.float32)),
                  ["x.npy", "256 NaN or infinite"]),
    "stored-image-size-string": (lambda d: _stored_run_edit(d / "ck.npz", d / "ck.npz",
                                                            image_size="16"),
                                 ["ck.npz", "run setting image_size", "'16'"]),
    "stored-normalize-wrong-channels": (lambda d: _stored_run_edit(
        d / "ck.npz", d / "ck.npz", normalize=[[0.5, 0.5, 0.5], [0.2, 0.2, 0.2]]),
        ["ck.npz", "normalize", "1 channels"]),
}


@pytest.mark.parametrize("name", list(VISUALIZE_CASES))
def test_visualize_hostile_input(name, grey_checkpoint, tmp_path):
    """The --input file is read as `polycnn predict` reads its inputs (a regular file, the
    header checked first, uint8 converted, other integers and NaN refused) and the stored run
    is checked (`_stored_run`), all before the first picture is written."""
    from support.hostile import run_cli, snapshot

    shutil.copy(grey_checkpoint, tmp_path / "ck.npz")
    if not (tmp_path / "x.npy").exists():
        np.save(tmp_path / "x.npy", np.zeros((1, 16, 16), np.float32))
    make, needles = VISUALIZE_CASES[name]
    if name.startswith("input-"):
        (tmp_path / "x.npy").unlink()
    make(tmp_path)
    before = snapshot(tmp_path)
    out = run_cli("visualize", "ck.npz", "--input", "x.npy", "--out", "pics", "--backend", "numpy",
                  cwd=tmp_path, timeout=60)
    out.assert_user_error(*needles)
    assert snapshot(tmp_path) == before and not (tmp_path / "pics").exists(), out


def test_visualize_input_uint8_is_scaled_like_the_training_images(grey_checkpoint, tmp_path):
    from polycnn.cli import visualize as viz_cli
    from polycnn.recipes import load_trained

    trained = load_trained(str(grey_checkpoint), "numpy")
    model = trained.model
    pixels = np.random.default_rng(0).integers(0, 256, (1, 16, 16)).astype(np.uint8)
    np.save(tmp_path / "u8.npy", pixels)
    got = viz_cli._input_image(str(tmp_path / "u8.npy"), model, trained)
    assert got.dtype == model.dtype and got.shape == (1, 16, 16)
    np.testing.assert_allclose(got, pixels / 255, rtol=1e-6)
