"""The Python API used carelessly: wrong argument types and values, NaN / complex / integer
images, an optimiser for another model. Each case must end in one clear TypeError or ValueError
naming the argument, never in a silently wrong result.

Each case of :data:`CASES` runs twice: in a child process through ``hostile.api_case`` (exit 2,
one ``error:`` line naming the argument, peak memory under 1 GiB, no file created or changed in
its folder) and, faster, in this process under ``pytest.raises`` (the exception's type too).
:data:`MODEL_JSON` runs ``polycnn train --model bad.json``, which must stop before training.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import textwrap

import numpy as np
import pytest

import polycnn as pc
from support.hostile import api_case, raises_naming, run_cli, run_python, snapshot

#: a small model, images and labels for the cases that need them (numpy backend: no JIT wait);
#: ``ck`` is the checkpoint a fit case would write: its folder must stay as it was
SETUP = textwrap.dedent("""\
    m = pc.Sequential(pc.Conv2d(1, 2, 3), pc.Flatten(), pc.Linear(18, 3), backend="numpy", seed=0)
    x = np.random.default_rng(0).random((6, 1, 5, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    ck = "out.npz"
    """)

#: (id, statement after SETUP, exception type, words the message must name)
CASES = [
    # ---- layers: wrong types are never coerced, values are checked ---------------------------
    ("conv-bias-string", 'pc.Conv2d(1, 2, 3, bias="no")', TypeError, ["Conv2d", "bias", "'no'"]),
    ("linear-bias-int", "pc.Linear(4, 2, bias=1)", TypeError, ["Linear", "bias", "got 1"]),
    ("conv-float-channels", "pc.Conv2d(3.0, 4)", TypeError, ["Conv2d", "in_channels", "3.0"]),
    ("conv-bool-kernel", "pc.Conv2d(1, 2, kernel_size=True)", TypeError, ["Conv2d", "kernel_size"]),
    ("conv-init-list", 'pc.Conv2d(1, 2, init=["he"])', TypeError, ["Conv2d", "init"]),
    ("batchnorm-eps-inf", 'pc.BatchNorm2d(4, eps=float("inf"))', ValueError,
     ["BatchNorm2d", "eps", "inf"]),
    ("batchnorm-eps-nan", 'pc.BatchNorm2d(4, eps=float("nan"))', ValueError, ["BatchNorm2d", "eps", "nan"]),
    ("batchnorm-momentum-bool", "pc.BatchNorm2d(4, momentum=True)", TypeError,
     ["BatchNorm2d", "momentum", "True"]),
    ("dropout-p-one", "pc.Dropout(1.0)", ValueError, ["Dropout", "p must", "1.0"]),
    ("dropout2d-p-string", 'pc.Dropout2d("0.5")', TypeError, ["Dropout2d", "p must", "'0.5'"]),
    ("leakyrelu-slope-nan", 'pc.LeakyReLU(float("nan"))', ValueError, ["LeakyReLU", "negative_slope"]),
    ("maxpool-stride-float", "pc.MaxPool2d(2, stride=1.5)", TypeError, ["MaxPool2d", "stride", "1.5"]),
    ("avgpool-padding-negative", "pc.AvgPool2d(2, padding=-1)", ValueError, ["AvgPool2d", "padding"]),
    ("sequential-seed-float", "pc.Sequential(pc.ReLU(), seed=1.5)", TypeError, ["Sequential", "seed", "1.5"]),
    ("sequential-dtype-none", "pc.Sequential(pc.ReLU(), dtype=None)", TypeError, ["dtype", "None"]),
    ("train-mode-string", 'm.train("no")', TypeError, ["train(mode)", "'no'"]),
    ("spec-bias-no", 'pc.Sequential.from_spec({"layers": [{"type": "Linear", "config":'
     ' {"in_features": 4, "out_features": 2, "bias": "no"}}]})', TypeError, ["Linear", "bias", "'no'"]),
    ("spec-unknown-argument", 'pc.Sequential.from_spec({"layers": [{"type": "ReLU",'
     ' "config": {"inplace": True}}]})', ValueError, ["ReLU", "unknown argument", "inplace"]),
    ("spec-unknown-key", 'pc.Sequential.from_spec({"layers": [{"type": "ReLU"}], "optimizer": "sgd"})',
     ValueError, ["unknown key", "optimizer"]),
    # ---- optimisers and augmentation ---------------------------------------------------------
    ("sgd-momentum-one", "pc.SGD(m.parameters(), lr=0.1, momentum=1.0)", ValueError,
     ["SGD", "momentum", "1.0"]),
    ("sgd-nesterov-string", 'pc.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov="yes")', TypeError,
     ["SGD", "nesterov", "'yes'"]),
    ("sgd-lr-inf", 'pc.SGD(m.parameters(), lr=float("inf"))', ValueError, ["SGD", "lr", "inf"]),
    ("adam-eps-zero", "pc.Adam(m.parameters(), eps=0)", ValueError, ["Adam", "eps"]),
    ("adam-betas-string", 'pc.Adam(m.parameters(), betas=("0.9", 0.999))', TypeError, ["Adam", "betas[0]"]),
    ("optimizer-duplicate", "pc.SGD(m.parameters() + m.parameters()[:1], lr=0.1)", ValueError,
     ["SGD", "parameter 4", "same object"]),
    ("augment-hflip-bool", "pc.Augment(hflip=True)", TypeError, ["Augment", "hflip"]),
    # ---- fit ----------------------------------------------------------------------------------
    ("fit-other-models-optimizer",
     'other = pc.Sequential(pc.Conv2d(1, 2, 3), pc.Flatten(), pc.Linear(18, 3), backend="numpy")\n'
     "pc.fit(m, (x, y), optimizer=pc.SGD(other.parameters(), lr=0.1), checkpoint=ck)",
     ValueError, ["optimizer", "not exactly this model's", "4 of them"]),
    ("fit-optimizer-subset", "pc.fit(m, (x, y), optimizer=pc.SGD(m.parameters()[:2], lr=0.1), checkpoint=ck)",
     ValueError, ["optimizer", "does not update 2", "layer 2 (Linear(18, 3)) weight"]),
    ("fit-epochs-float", "pc.fit(m, (x, y), epochs=2.0, checkpoint=ck)", TypeError, ["epochs", "2.0"]),
    ("fit-batch-size-bool", "pc.fit(m, (x, y), batch_size=True, checkpoint=ck)", TypeError,
     ["batch_size", "True"]),
    ("fit-labels-out-of-range", "pc.fit(m, (x, y + 1), checkpoint=ck)", ValueError, ["labels", "[0, 3)"]),
    ("fit-xy-length", "pc.fit(m, (x, y[:4]), checkpoint=ck)", ValueError, ["y must have shape (6,)"]),
    ("fit-nan-image", "x[2, 0, 1, 3] = np.nan\npc.fit(m, (x, y), checkpoint=ck)", ValueError,
     ["data: x", "1 NaN", "(2, 0, 1, 3)"]),
    ("fit-uint8-images", "pc.fit(m, ((x * 255).astype(np.uint8), y), checkpoint=ck)", TypeError,
     ["data: x", "uint8", "/ 255"]),
    ("fit-label-smoothing-string", 'pc.fit(m, (x, y), label_smoothing="0.1", checkpoint=ck)', TypeError,
     ["label_smoothing"]),
    ("fit-seed-negative", "pc.fit(m, (x, y), seed=-1, checkpoint=ck)", ValueError, ["seed", "-1"]),
    ("fit-checkpoint-number", "pc.fit(m, (x, y), checkpoint=123)", TypeError, ["checkpoint", "123"]),
    # ---- predict / evaluate -------------------------------------------------------------------
    ("predict-inf", 'x[1:3, 0, 0, 0] = np.inf\npc.predict(m, x)', ValueError, ["x holds 2 NaN or infinite", "(1, 0, 0, 0)"]),
    ("predict-complex", "pc.predict(m, x.astype(np.complex64))", TypeError, ["x is complex"]),
    ("predict-bool", "pc.predict(m, x > 0.5)", TypeError, ["x is boolean"]),
    ("predict-uint8-unknown-scale", "pc.predict(m, (x * 255).astype(np.uint8))", TypeError,
     ["x is uint8", "does not say how", "/ 255"]),
    ("evaluate-nan", "x[0, 0, 0, 0] = np.nan\npc.evaluate(m, (x, y))", ValueError, ["data: x", "NaN"]),
    ("evaluate-float-labels", "pc.evaluate(m, (x, y.astype(float)))", TypeError, ["y must hold integer"]),
]


def _statement(code: str) -> str:
    return SETUP + code


@pytest.mark.parametrize("code, error, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_api_case_in_process(tmp_path, monkeypatch, code, error, needles):
    monkeypatch.chdir(tmp_path)
    raises_naming(error, _statement(code), {"pc": pc, "np": np}, *needles)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code, needles", [(c[1], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_api_case_in_child(tmp_path, code, needles):
    before = snapshot(tmp_path)
    outcome = run_python(api_case(_statement(code)), cwd=tmp_path)
    outcome.assert_user_error(*needles)
    assert snapshot(tmp_path) == before, f"files changed:\n{outcome}"


# ---- polycnn train --model bad.json -------------------------------------------------------------
def _layers(**changes):
    """A model for shapes 3x16x16 with three classes; ``changes`` edits layer 0's spec."""
    layers = [{"type": "Conv2d", "config": {"in_channels": 3, "out_channels": 4, "kernel_size": 3}},
              {"type": "ReLU", "config": {}}, {"type": "GlobalAvgPool2d", "config": {}},
              {"type": "Linear", "config": {"in_features": 4, "out_features": 3}}]
    for key, value in changes.items():
        if key == "spec":
            layers[0].update(value)
        else:
            layers[0]["config"][key] = value
    return layers


MODEL_JSON = [
    ("bias-no", _layers(bias="no"), ["bad.json", "layer 0", "bias", "'no'"]),
    ("unknown-argument", _layers(kernal_size=3), ["bad.json", "layer 0", "kernal_size"]),
    ("unknown-key", _layers(spec={"activation": "relu"}), ["bad.json", "layer 0", "activation"]),
    ("float-channels", _layers(out_channels=4.0), ["bad.json", "layer 0", "out_channels", "4.0"]),
    ("batchnorm-eps-string", [*_layers()[:1], {"type": "BatchNorm2d", "config": {"num_features": 4, "eps": "1e-5"}},
                         *_layers()[1:]], ["bad.json", "layer 1", "BatchNorm2d", "eps"]),
]


@pytest.mark.parametrize("layers, needles", [c[1:] for c in MODEL_JSON], ids=[c[0] for c in MODEL_JSON])
def test_train_refuses_bad_model_json(tmp_path, layers, needles):
    (tmp_path / "bad.json").write_text(json.dumps(layers))
    before = snapshot(tmp_path)
    outcome = run_cli("train", "--model", "bad.json", "--epochs", "1", "--n-train", "10",
                      "--image-size", "16", "--out", "out.npz", "--backend", "numpy", cwd=tmp_path)
    outcome.assert_user_error(*needles)
    assert "epoch" not in outcome.stdout.lower(), f"training started:\n{outcome}"
    assert snapshot(tmp_path) == before, f"files changed:\n{outcome}"


def test_the_base_model_json_is_valid(tmp_path):
    """The spec the bad ones are made from is valid: each bad case fails for its one change."""
    model = pc.models.from_spec(_layers(), (3, 16, 16), 3, backend="numpy")
    assert model.output_shape((3, 16, 16)) == (3,)


# ---- a destination that is not a regular file ---------------------------------------------------
def _fifo(path):
    os.mkfifo(path)


def _socket(path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()   # NOTE: the socket file stays


#: (id, make the destination, the write (SETUP's names; ``dest`` is its path), words the error
#: names); every writer replaces its destination through polycnn._files.replaced_atomically
DESTINATIONS = [
    ("save-to-fifo", _fifo, "m.save(dest)", ["out.npz", "a FIFO", "not a regular file"]),
    ("save-to-folder", os.mkdir, "m.save(dest)", ["out.npz", "a directory", "not a regular file"]),
    ("save-to-socket", _socket, "m.save(dest)", ["out.npz", "a socket", "not a regular file"]),
    ("save-weights-to-fifo", _fifo, "pc.save_weights(m, dest)", ["out.npz", "a FIFO"]),
    ("fit-checkpoint-to-fifo", _fifo, "pc.fit(m, (x, y), epochs=1, batch_size=3, checkpoint=dest)",
     ["out.npz", "a FIFO"]),
]


@pytest.mark.parametrize("make, code, needles", [c[1:] for c in DESTINATIONS],
                         ids=[c[0] for c in DESTINATIONS])
def test_a_destination_that_is_not_a_regular_file_is_refused(tmp_path, make, code, needles):
    """It was replaced by the new file (as root, ``model.save("/dev/null")`` replaced
    /dev/null); now one error line, and it is left as it was."""
    make(tmp_path / "out.npz")
    kind = stat.S_IFMT(os.lstat(tmp_path / "out.npz").st_mode)
    before = snapshot(tmp_path)
    outcome = run_python(api_case(_statement(f"dest = 'out.npz'\n{code}")), cwd=tmp_path)
    outcome.assert_user_error(*needles)
    assert snapshot(tmp_path) == before, f"files changed:\n{outcome}"
    assert stat.S_IFMT(os.lstat(tmp_path / "out.npz").st_mode) == kind, outcome
