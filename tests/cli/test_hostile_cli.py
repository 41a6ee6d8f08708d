"""Hostile command lines: every bad option value, output path or option combination is one
``error:`` line and exit 2, found before any data is made, any training starts or any file is
written.

Each case of :data:`CASES` runs ``polycnn ARGS`` in a child process (``hostile.run_cli``) in a
folder of its own holding the files of :func:`_prepare`; it must exit 2 with one ``error:`` line
naming each needle, stay under 1 GiB of peak memory, never hang (a FIFO as --out), leave the
folder exactly as it was (no checkpoint, no best-epoch twin, no picture) and, for ``train``,
print no epoch line: the checks come before training.
"""

from __future__ import annotations

import os
import shutil

import pytest

from support.hostile import run_cli, save_shapes_checkpoint, snapshot

#: a tiny shapes run: every case that got past the checks would train in about a second
T = ["--backend", "numpy", "--epochs", "1", "--n-train", "32", "--image-size", "16"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-cli-base")
    save_shapes_checkpoint(folder / "run.npz")
    return folder


def _prepare(folder, base) -> None:
    """What every case finds in its folder: a checkpoint of a finished run, a text file, a
    PNG-less text "picture", a folder, a FIFO and a lone best-epoch twin."""
    shutil.copy(base / "run.npz", folder / "run.npz")
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "fake.npz").write_text("not a checkpoint\n")
    (folder / "adir").mkdir()
    (folder / "lone.best.npz").write_bytes(b"an earlier best epoch")
    os.mkfifo(folder / "fifo.npz")


#: id -> (argv, needles that the one error line must name)
CASES = {
    # --out, checked before any data is generated (the issue: found only after an epoch)
    "train-out-in-missing-folder": (["train", *T, "--out", "nowhere/o.npz"], ["--out", "does not exist"]),
    "train-out-unicode-missing-folder": (["train", *T, "--out", "ñø/é.npz"], ["--out", "does not exist"]),
    "train-out-under-a-file": (["train", *T, "--out", "notes.txt/o.npz"], ["--out", "not a folder"]),
    "train-out-empty": (["train", *T, "--out", ""], ["--out", "empty"]),
    # NOTE: /proc takes no new files, even from root (a chmod 555 folder would not stop root)
    "train-out-in-unwritable-folder": (["train", *T, "--out", "/proc/polycnn-o.npz"],
                                       ["--out", "cannot write there"]),
    "train-out-is-a-folder": (["train", *T, "--out", "adir"], ["--out", "directory"]),
    "train-out-is-a-fifo": (["train", *T, "--out", "fifo.npz", "--force"], ["--out", "not a regular file"]),
    "train-out-name-too-long": (["train", *T, "--out", "x" * 300 + ".npz"], ["--out", "too long"]),
    # an existing file is replaced only with --force, continued only with --resume
    "train-out-holds-a-checkpoint": (["train", *T, "--out", "run.npz"],
                                     ["--out", "run.npz already exists", "--force", "--resume"]),
    "train-out-holds-another-file": (["train", *T, "--out", "notes.txt"], ["notes.txt already exists", "--force"]),
    "train-out-best-twin-exists": (["train", *T, "--out", "lone.npz"], ["lone.best.npz", "already exists", "--force"]),
    "train-force-and-resume": (["train", "--out", "run.npz", "--force", "--resume", "--backend", "numpy"],
                               ["--force", "--resume", "choose one"]),
    "train-resume-other-model": (["train", "--resume", "--out", "run.npz", "--model", "lenet5"],
                                 ["--resume", "drop --model ("]),
    "train-resume-other-dataset": (["train", "--resume", "--out", "run.npz", "--dataset", "digits"],
                                   ["--resume", "drop --dataset"]),
    "train-resume-missing-checkpoint": (["train", "--resume", "--out", "gone.npz", "--backend", "numpy"],
                                        ["checkpoint not found", "gone.npz"]),
    "train-resume-not-a-checkpoint": (["train", "--resume", "--out", "fake.npz", "--backend", "numpy"],
                                      ["fake.npz", "not a polycnn checkpoint"]),
    # values
    "train-epochs-huge": (["train", "--backend", "numpy", "--epochs", "99999999999999999999"],
                          ["--epochs", "at most 100,000"]),
    "train-epochs-float": (["train", "--backend", "numpy", "--epochs", "1.5"], ["--epochs", "1.5"]),
    "train-seed-negative": (["train", *T, "--seed", "-1", "--out", "o.npz"], ["--seed", "-1"]),
    "train-lr-nan": (["train", *T, "--lr", "nan", "--out", "o.npz"], ["--lr", "nan"]),
    "train-patience-zero": (["train", *T, "--patience", "0", "--out", "o.npz"], ["--patience", ">= 1"]),
    "train-backend-unknown": (["train", *T[2:], "--backend", "NumPy", "--out", "o.npz"],
                              ["--backend", "'NumPy'", "numpy"]),
    "train-backend-empty": (["train", *T[2:], "--backend", "", "--out", "o.npz"], ["--backend", "''"]),
    "train-json-and-json-lines": (["train", *T, "--json", "--json-lines", "--out", "o.npz"],
                                  ["--json", "--json-lines"]),
    "train-unknown-option": (["train", "--epoch", "2"], ["--epoch", "--epochs"]),
    "unknown-command": (["trian"], ["trian"]),
    # the other commands
    "evaluate-backend-unknown": (["evaluate", "run.npz", "--backend", "gpu"], ["--backend", "'gpu'"]),
    # an empty name said "checkpoint not found: " with nothing after it
    "evaluate-empty-checkpoint": (["evaluate", "", "--backend", "numpy"], ["checkpoint name is empty ('')"]),
    "predict-empty-input": (["predict", "run.npz", "", "--backend", "numpy"], ["input name is empty ('')"]),
    "visualize-empty-checkpoint": (["visualize", "", "--backend", "numpy"],
                                   ["checkpoint name is empty ('')"]),
    "demo-out-without-plot": (["demo", "--out", "w.png", "--backend", "numpy"], ["--out", "--plot"]),
    "demo-plot-out-under-a-file": (["demo", "--plot", "--out", "notes.txt/w.png", "--backend", "numpy"],
                                   ["--out", "not a folder"]),
    "demo-plot-out-not-a-png": (["demo", "--plot", "--out", "notes.txt", "--backend", "numpy"],
                                ["--out", "not a PNG"]),
    "parity-cases-huge": (["parity", "--backends", "numpy", "--cases", "100000000"], ["--cases", "100000000"]),
    "parity-seed-negative": (["parity", "--backends", "numpy", "--seed", "-1"], ["--seed", "-1"]),
    "bench-threads-over-cores": (["bench", "--threads", "100000", "--no-torch"], ["--threads", "cores"]),
    "bench-matmul-size-huge": (["bench", "--matmul-size", "100000000", "--no-torch"],
                               ["--matmul-size", "memory"]),
    "bench-rounds-huge": (["bench", "--rounds", "100000000", "--no-torch"], ["--rounds", "at most"]),
    "visualize-index-past-the-split": (["visualize", "run.npz", "--index", "100000", "--out", "pics",
                                        "--backend", "numpy"], ["--index", "100000", "9 images"]),
    "visualize-out-under-a-file": (["visualize", "run.npz", "--out", "notes.txt/pics", "--backend", "numpy"],
                                   ["--out", "not a folder"]),
    "visualize-data-dir-for-shapes": (["visualize", "run.npz", "--data-dir", "adir", "--out", "pics",
                                       "--backend", "numpy"], ["--data-dir", "needs no files"]),
}


@pytest.mark.parametrize("argv, needles", list(CASES.values()), ids=list(CASES))
def test_bad_command_line_is_one_line_exit_2(argv, needles, base, tmp_path):
    if "/proc/polycnn-o.npz" in argv and not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc")
    _prepare(tmp_path, base)
    before = snapshot(tmp_path)
    outcome = run_cli(*argv, cwd=tmp_path, timeout=60)
    outcome.assert_user_error(*needles)
    assert snapshot(tmp_path) == before, f"files created, changed or removed:\n{outcome}"
    assert "epoch" not in outcome.stdout, f"training started before the check:\n{outcome}"
