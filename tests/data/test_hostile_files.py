"""Hostile files and sizes: every reader checks what a file or option claims before it allocates.

Each case of :data:`CASES` prepares files in its own folder and runs ``polycnn`` there in a child
process (``hostile.run_cli``): it must exit 2 with one ``error:`` line naming the file or option
and what it claims, stay under 1 GiB of peak memory, never hang (FIFOs), and leave the folder as
it was (no checkpoint, no data folder, nothing downloaded). The bombs are real: a few MB on disk
that would decompress to about 1 GiB or more if anything read them whole.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import zipfile

import numpy as np
import pytest

import polycnn as pc
from support.hostile import SHAPES_RUN, run_cli, save_shapes_checkpoint, snapshot
from support.hostile_files import (altered, idx_files, layers_json, npy_header, npz_with_member,
                                   png_of_one_colour)
from polycnn import checkpoint, limits

#: hostile.SHAPES_RUN's MNIST twin, trained from a folder that the case removes
MNIST_RUN = dict(SHAPES_RUN, image_size=28, channels=1, n_train=None, dataset="mnist",
                 model="lenet5", download=True, classes=[str(i) for i in range(10)],
                 normalize=[[0.1307], [0.3081]])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Valid checkpoints to alter, and the bombs (made once: each takes about a second)."""
    folder = tmp_path_factory.mktemp("hostile-base")
    save_shapes_checkpoint(folder / "shapes.npz")
    mnist = pc.models.lenet5((1, 28, 28), 10, backend="numpy")
    checkpoint.save(folder / "mnist.npz", mnist, epoch=1, run=MNIST_RUN, classes=MNIST_RUN["classes"])
    png_of_one_colour(folder / "bomb.png", 12000, 12000)
    with gzip.open(folder / "idx-bomb.gz", "wb", compresslevel=1) as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 28, 28))
        for _ in range(20):  # 320 MiB of zeros after a header that says 47 MB
            f.write(bytes(16 << 20))
    return folder


#: id -> function(folder, base) -> (arguments of polycnn, words the error names[, paths that
#: must not exist afterwards]); every case runs with --backend numpy in ``folder``
CASES = {}


def case(fn):
    CASES[fn.__name__.replace("_", "-")] = fn
    return fn


# ---- checkpoints ------------------------------------------------------------------------------
@case
def checkpoint_zip_bomb(d, base):
    # 4 MB on disk, 1 GiB of zeros where the architecture says (16, 3, 3, 3)
    npz_with_member(base / "shapes.npz", d / "ck.npz", "model.0.weight.npy",
                     {"descr": "<f4", "fortran_order": False, "shape": (16384, 16384)}, 1 << 30)
    return ["evaluate", "ck.npz"], ["ck.npz", "model.0.weight", "(16384, 16384)", "(16, 3, 3, 3)"]


@case
def checkpoint_metadata_bomb(d, base):
    npz_with_member(base / "shapes.npz", d / "ck.npz", "__meta__.npy",
                     {"descr": "|u1", "fortran_order": False, "shape": (200_000_000,)}, 200_000_000)
    return ["evaluate", "ck.npz"], ["ck.npz", "__meta__", "200,000,000 bytes"]


@case
def checkpoint_with_30000_members(d, base):
    shutil.copy(base / "shapes.npz", d / "ck.npz")
    with zipfile.ZipFile(d / "ck.npz", "a") as z:
        for i in range(30000):
            z.writestr(f"optim.{i}.velocity.npy", b"")
    return ["evaluate", "ck.npz"], ["ck.npz", "30,0", "members", "20,000"]


@case
def checkpoint_100000x100000_layer(d, base):
    def edit(meta):
        meta["model"]["layers"][-1]["config"].update(in_features=100000, out_features=100000)
    altered(base / "shapes.npz", d / "ck.npz", edit)
    return ["evaluate", "ck.npz"], ["ck.npz", "architecture", "parameters of 10,000,"]


@case
def checkpoint_model_with_huge_activations(d, base):
    # 24 MB of weights, but 200,000 feature maps of 16x16 for each image evaluated
    wide = pc.Sequential(pc.Conv2d(3, 200_000, 3, padding=1), pc.GlobalAvgPool2d(),
                         pc.Linear(200_000, 3), backend="numpy")
    checkpoint.save(d / "ck.npz", wide, epoch=1, run=SHAPES_RUN, classes=["a", "b", "c"])
    return ["evaluate", "ck.npz"], ["ck.npz", "a batch of 9 inputs of shape (3, 16, 16)", "GiB"]


@case
def checkpoint_array_not_in_architecture(d, base):
    altered(base / "shapes.npz", d / "ck.npz",
             arrays_edit=lambda a: a.update({"model.99.weight": np.zeros(3, np.float32)}))
    return ["evaluate", "ck.npz"], ["ck.npz", "model.99.weight", "not part of"]


@case
def checkpoint_array_wrong_shape(d, base):
    altered(base / "shapes.npz", d / "ck.npz",
             arrays_edit=lambda a: a.update({"model.0.weight": np.zeros((16, 3, 5, 5), np.float32)}))
    return ["evaluate", "ck.npz"], ["ck.npz", "model.0.weight", "(16, 3, 5, 5)", "(16, 3, 3, 3)"]


def _nonfinite_weights(a):
    w = a["model.0.weight"].copy()
    w[0, 0, 0, :2] = np.nan
    w[3, 1, 2, 2] = -np.inf
    a["model.0.weight"] = w


@case
def checkpoint_nan_weights_evaluate(d, base):
    # printed an accuracy (and NaN probabilities from predict) with exit 0 before
    altered(base / "shapes.npz", d / "ck.npz", arrays_edit=_nonfinite_weights)
    return ["evaluate", "ck.npz"], ["ck.npz", "model.0.weight", "3 NaN or infinite value(s) of 432"]


@case
def checkpoint_nan_weights_predict(d, base):
    altered(base / "shapes.npz", d / "ck.npz", arrays_edit=_nonfinite_weights)
    np.save(d / "x.npy", np.zeros((3, 16, 16), np.float32))
    return ["predict", "ck.npz", "x.npy"], ["ck.npz", "model.0.weight", "NaN or infinite"]


@case
def checkpoint_inf_optimizer_state_resume(d, base):
    model = pc.load(base / "shapes.npz", backend="numpy")
    opt = pc.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()
    checkpoint.save(d / "ck.npz", model, optimizer=opt, epoch=1, run=SHAPES_RUN,
                    classes=["triangle", "square", "circle"])
    altered(d / "ck.npz", d / "ck.npz",
             arrays_edit=lambda a: a.update({"optim.0.velocity": np.full_like(a["optim.0.velocity"], np.inf)}))
    return ["train", "--resume", "--out", "ck.npz", "--epochs", "2"], \
        ["ck.npz", "optim.0.velocity", "432 NaN or infinite value(s) of 432"]


@case
def checkpoint_metadata_nested_too_deep(d, base):
    deep = []
    for _ in range(40):
        deep = [deep]
    altered(base / "shapes.npz", d / "ck.npz", lambda m: m.update(history=deep))
    return ["evaluate", "ck.npz"], ["ck.npz", "metadata", "nested more than 32"]


@case
def stored_n_test_1e8(d, base):
    altered(base / "shapes.npz", d / "ck.npz",
             lambda m: m["metadata"]["run"].update(n_test=100_000_000))
    return ["evaluate", "ck.npz"], ["ck.npz", "100,000,000 test images", "GiB"]


@case
def stored_n_test_float(d, base):
    altered(base / "shapes.npz", d / "ck.npz", lambda m: m["metadata"]["run"].update(n_test=1e8))
    return ["evaluate", "ck.npz"], ["ck.npz", "run setting n_test", "100000000.0", "expected an int"]


@case
def stored_batch_size_1e9(d, base):
    altered(base / "shapes.npz", d / "ck.npz",
             lambda m: m["metadata"]["run"].update(batch_size=10**9))
    return ["train", "--resume", "--out", "ck.npz", "--epochs", "2"], \
        ["ck.npz", "batch_size 1,000,000,000", "memory"]


@case
def stored_image_size_string(d, base):
    altered(base / "shapes.npz", d / "ck.npz",
             lambda m: m["metadata"]["run"].update(image_size="4096"))
    np.save(d / "x.npy", np.zeros((3, 16, 16), np.float32))
    return ["predict", "ck.npz", "x.npy"], ["ck.npz", "image_size", "'4096'"]


@case
def stored_data_dir_missing_evaluate(d, base):
    gone = d / "gone"
    altered(base / "mnist.npz", d / "ck.npz",
             lambda m: m["metadata"]["run"].update(data_dir=str(gone), download=True))
    return ["evaluate", "ck.npz"], ["ck.npz", str(gone), "does not exist"], [gone]


@case
def stored_data_dir_missing_resume(d, base):
    gone = d / "gone"
    altered(base / "mnist.npz", d / "ck.npz",
             lambda m: m["metadata"]["run"].update(data_dir=str(gone), download=True))
    return ["train", "--resume", "--out", "ck.npz", "--epochs", "3"], \
        ["ck.npz", str(gone), "does not exist"], [gone]


@case
def stored_download_evaluate(d, base):
    (d / "empty").mkdir()
    altered(base / "mnist.npz", d / "ck.npz",
             lambda m: m["metadata"]["run"].update(data_dir=str(d / "empty"), download=True))
    return ["evaluate", "ck.npz"], ["missing 4 file(s)", str(d / "empty")]


@case
def stored_download_visualize(d, base):
    pytest.importorskip("matplotlib")
    (d / "empty").mkdir()
    altered(base / "mnist.npz", d / "ck.npz",
             lambda m: m["metadata"]["run"].update(data_dir=str(d / "empty"), download=True))
    return ["visualize", "ck.npz", "--out", "viz"], ["missing 4 file(s)", str(d / "empty")], \
        [d / "viz"]


@case
def evaluate_n_test_1e9(d, base):
    shutil.copy(base / "shapes.npz", d / "ck.npz")
    return ["evaluate", "ck.npz", "--n-test", str(10**9)], ["--n-test 1000000000",
                                                            "1,000,000,000 test images"]


# ---- data files -------------------------------------------------------------------------------
@case
def idx_gzip_bomb(d, base):
    idx_files(d / "mnist", (base / "idx-bomb.gz").read_bytes())
    return ["train", "--dataset", "mnist", "--data-dir", "mnist"], \
        ["train-images-idx3-ubyte.gz", "(60000, 28, 28)", "trailing data"]


@case
def idx_header_claims_4e9_images(d, base):
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 4_000_000_000, 28, 28)
    idx_files(d / "mnist", gzip.compress(header + bytes(1000)))
    return ["train", "--dataset", "mnist", "--data-dir", "mnist"], \
        ["train-images-idx3-ubyte.gz", "(4000000000, 28, 28)", "memory"]


@case
def idx_header_claims_more_than_the_file(d, base):
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 28, 28)
    idx_files(d / "mnist", header + bytes(1000), raw=True)
    return ["train", "--dataset", "mnist", "--data-dir", "mnist"], \
        ["train-images-idx3-ubyte", "1,000 data bytes", "47,040,000", "truncated"]


@case
def idx_truncated_gzip(d, base):
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 100, 28, 28)
    pixels = np.random.default_rng(0).integers(0, 256, 100 * 784, dtype=np.uint8).tobytes()
    idx_files(d / "mnist", gzip.compress(header + pixels)[:-200])
    return ["train", "--dataset", "mnist", "--data-dir", "mnist"], \
        ["train-images-idx3-ubyte.gz", "not a complete gzip file"]


@case
def cifar_batch_wrong_size(d, base):
    folder = d / "cifar"
    folder.mkdir()
    for name in ("data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
                 "data_batch_5.bin", "test_batch.bin"):
        with open(folder / name, "wb") as f:
            f.truncate(30_730_000 if name != "data_batch_1.bin" else 30_730_001)  # sparse
    return ["train", "--dataset", "cifar10", "--data-dir", "cifar"], \
        ["data_batch_1.bin", "30,730,001 bytes", "30,730,000"]


@case
def png_bomb_predict(d, base):
    shutil.copy(base / "shapes.npz", d / "ck.npz")
    shutil.copy(base / "bomb.png", d / "bomb.png")
    return ["predict", "ck.npz", "bomb.png"], ["bomb.png", "144,000,000 pixels"]


@case
def png_bomb_in_image_folder(d, base):
    for cls in ("a", "b"):
        (d / "pics" / cls).mkdir(parents=True)
        png_of_one_colour(d / "pics" / cls / "ok.png", 8, 8)
    shutil.copy(base / "bomb.png", d / "pics" / "a" / "bomb.png")
    return ["train", "--dataset", "folder", "--data-dir", "pics", "--image-size", "16"], \
        ["bomb.png", "144,000,000 pixels"]


# ---- predict's inputs -------------------------------------------------------------------------
@case
def npy_header_claims_1e9_images(d, base):
    shutil.copy(base / "shapes.npz", d / "ck.npz")
    npy_header(d / "x.npy", (10**9, 3, 16, 16), data=bytes(4096))
    return ["predict", "ck.npz", "x.npy"], ["x.npy", "(1000000000, 3, 16, 16)", "memory"]


@case
def npy_empty_file(d, base):
    shutil.copy(base / "shapes.npz", d / "ck.npz")
    (d / "x.npy").write_bytes(b"")
    return ["predict", "ck.npz", "x.npy"], ["x.npy", "not a readable .npy array"]


@case
def npy_truncated(d, base):
    shutil.copy(base / "shapes.npz", d / "ck.npz")
    npy_header(d / "x.npy", (5, 3, 16, 16), data=bytes(100))
    return ["predict", "ck.npz", "x.npy"], ["x.npy", "100 of 15,360 bytes", "truncated"]


@case
def npy_object_array(d, base):
    shutil.copy(base / "shapes.npz", d / "ck.npz")
    npy_header(d / "x.npy", (3, 16, 16), descr="|O")
    return ["predict", "ck.npz", "x.npy"], ["x.npy", "Python objects"]


@case
def npy_int64_pixels(d, base):
    # only uint8 is converted with the stored scaling; int64 0..255 was cast to float silently
    shutil.copy(base / "mnist.npz", d / "ck.npz")
    np.save(d / "x.npy", np.full((2, 1, 28, 28), 200, np.int64))
    return ["predict", "ck.npz", "x.npy"], ["x.npy", "int64", "only uint8"]


@case
def npy_bool_images(d, base):
    shutil.copy(base / "shapes.npz", d / "ck.npz")
    np.save(d / "x.npy", np.ones((3, 16, 16), bool))
    return ["predict", "ck.npz", "x.npy"], ["x.npy", "boolean", "float32 images"]


@case
def npy_complex_images(d, base):
    shutil.copy(base / "shapes.npz", d / "ck.npz")
    np.save(d / "x.npy", np.ones((3, 16, 16), np.complex64))
    return ["predict", "ck.npz", "x.npy"], ["x.npy", "complex"]


@case
def fifo_input(d, base):
    shutil.copy(base / "shapes.npz", d / "ck.npz")
    os.mkfifo(d / "x.npy")
    return ["predict", "ck.npz", "x.npy"], ["x.npy", "FIFO", "not a regular file"]


@case
def fifo_checkpoint(d, base):
    os.mkfifo(d / "ck.npz")
    return ["evaluate", "ck.npz"], ["ck.npz", "FIFO", "not a regular file"]


@case
def fifo_model_json(d, base):
    os.mkfifo(d / "m.json")
    return ["train", "--dataset", "digits", "--model", "m.json"], ["m.json", "FIFO"]


@case
def directory_input(d, base):
    shutil.copy(base / "shapes.npz", d / "ck.npz")
    (d / "x.npy").mkdir()
    return ["predict", "ck.npz", "x.npy"], ["x.npy", "a directory", "not a regular file"]


@case
def directory_checkpoint(d, base):
    (d / "ck.npz").mkdir()
    return ["evaluate", "ck.npz"], ["ck.npz", "a directory", "not a regular file"]


# ---- model JSON -------------------------------------------------------------------------------
@case
def model_json_too_deep(d, base):
    (d / "m.json").write_text("[" * 100_000 + "]" * 100_000)
    return ["train", "--dataset", "digits", "--model", "m.json"], ["m.json", "nested more than 32"]


@case
def model_json_too_big(d, base):
    (d / "m.json").write_text(" " * (2 << 20) + "[]")
    return ["train", "--dataset", "digits", "--model", "m.json"], \
        ["m.json", "2,097,154 bytes", "1,048,576"]


@case
def model_json_too_many_layers(d, base):
    layers_json(d / "m.json", [{"type": "ReLU"}] * 5000)
    return ["train", "--dataset", "digits", "--model", "m.json"], ["m.json", "5,000 layers", "1,000"]


@case
def model_json_a_million_channels(d, base):
    layers_json(d / "m.json", [
        {"type": "Conv2d", "config": {"in_channels": 1, "out_channels": 10**6, "kernel_size": 3,
                                      "padding": 1}},
        {"type": "GlobalAvgPool2d"}, {"type": "Linear", "config": {"in_features": 10**6,
                                                                     "out_features": 10}}])
    return ["train", "--dataset", "digits", "--model", "m.json"], \
        ["m.json", "a batch of 64 inputs of shape (1, 8, 8)", "memory"]


@case
def model_json_100000x100000_linear(d, base):
    layers_json(d / "m.json", [
        {"type": "Flatten"}, {"type": "Linear", "config": {"in_features": 64, "out_features": 10**5}},
        {"type": "Linear", "config": {"in_features": 10**5, "out_features": 10**5}},
        {"type": "Linear", "config": {"in_features": 10**5, "out_features": 10}}])
    return ["train", "--dataset", "digits", "--model", "m.json"], ["m.json", "parameters of 10,00"]


# ---- command-line sizes -----------------------------------------------------------------------
@case
def image_size_4096(d, base):
    return ["train", "--image-size", "4096"], ["--image-size 4096", "3x4096x4096", "TiB"]


@case
def n_train_1e9(d, base):
    return ["train", "--n-train", str(10**9)], ["--n-train 1000000000", "1,000,000,000 training"]


@case
def batch_size_1e9(d, base):
    return ["train", "--batch-size", str(10**9)], ["--batch-size 1000000000",
                                                   "a batch of 1,000,000,000 images"]


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file(name, base, tmp_path):
    args, needles, *rest = CASES[name](tmp_path, base)
    before = snapshot(tmp_path)
    out = run_cli(*args, "--backend", "numpy", cwd=tmp_path, timeout=60,
                  env={"POLYCNN_MIRRORS": "http://127.0.0.1:9/", limits.MEMORY_LIMIT_ENV: None})
    out.assert_user_error(*needles)
    assert snapshot(tmp_path) == before, f"files under {tmp_path} changed:\n{out}"
    for path in (rest[0] if rest else []):
        assert not os.path.exists(path), f"{path} was created:\n{out}"


def test_predict_converts_uint8_pixels_as_the_training_images(base, tmp_path):
    """`polycnn predict` with uint8 pixels 0..255 gives what the same images as floats in 0..1
    give (an MNIST checkpoint: / 255, then its stored normalisation); they were cast to float
    without / 255 before."""
    from click.testing import CliRunner

    from polycnn.cli.main import main

    pixels = np.random.default_rng(3).integers(0, 256, (4, 1, 28, 28)).astype(np.uint8)
    np.save(tmp_path / "u8.npy", pixels)
    np.save(tmp_path / "f.npy", pixels.astype(np.float32) / 255)
    probs = {}
    for name in ("u8.npy", "f.npy"):
        r = CliRunner().invoke(main, ["predict", str(base / "mnist.npz"), str(tmp_path / name),
                                      "--json", "--backend", "numpy"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        probs[name] = [list(p["probabilities"].values()) for p in json.loads(r.output)["predictions"]]
    np.testing.assert_allclose(probs["u8.npy"], probs["f.npy"], rtol=1e-4, atol=1e-6)
