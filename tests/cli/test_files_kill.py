"""Files survive kills: a checkpoint save or a download SIGKILLed at 20 random moments leaves the
real file old or new, never partial, and the next write into the folder clears the temporary
file; replaced files keep their mode; Ctrl-C during training saves the state after the last
finished step and ``--resume`` continues it to the weights of the uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import polycnn as pc
from polycnn import _files
from polycnn import checkpoint as ckpt
from polycnn import datasets as dr

posix_only = pytest.mark.skipif(os.name != "posix", reason="fork, SIGKILL and file modes are POSIX")


def _temps(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if _files.is_temp_name(n))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- replaced_atomically: names, stale files, modes, links ------------------------------------
@posix_only
def test_stale_temps_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    host, now = _files._host(), time.time()
    dead = f".polycnn-{host}-{_dead_pid()}-0123abcd.tmp"
    live = f".polycnn-{host}-{os.getppid()}-0123abcd.tmp"           # our parent: alive
    other_host_young = ".polycnn-00000000-1-0123abcd.tmp"
    other_host_old = ".polycnn-00000000-2-0123abcd.tmp"
    legacy_young, legacy_old = ".tmp-abcd_123.npz", ".download-abcd1234.part"
    foreign = [".tmp-abc.npz", "notes.tmp", ".polycnn-zz.tmp", f".polycnn-{host}-1-0123abcd.tmpx",
               "model.npz"]
    for name in [dead, live, other_host_young, other_host_old, legacy_young, legacy_old, *foreign]:
        (tmp_path / name).write_bytes(b"x" * 10)
    old = now - _files.STALE_AFTER_S - 60
    for name in (other_host_old, legacy_old, *foreign):
        os.utime(tmp_path / name, (old, old))
    os.symlink(tmp_path / "model.npz", tmp_path / f".polycnn-{host}-{_dead_pid()}-feedf00d.tmp")

    with _files.replaced_atomically(tmp_path / "out.bin") as f:
        f.write(b"new")

    left = set(os.listdir(tmp_path))
    for gone in (dead, other_host_old, legacy_old):
        assert gone not in left, f"{gone} (stale) was not removed"
    for kept in (live, other_host_young, legacy_young, *foreign):
        assert kept in left, f"{kept} was removed but is not a stale polycnn temporary file"
    assert any(n.endswith("feedf00d.tmp") for n in left), "a symbolic link was removed"
    assert (tmp_path / "model.npz").read_bytes() == b"x" * 10
    assert (tmp_path / "out.bin").read_bytes() == b"new"


@posix_only
def test_modes_kept_new_files_get_the_umask_default_and_the_temp_is_never_wider(tmp_path):
    old_umask = os.umask(0o027)
    try:
        with _files.replaced_atomically(tmp_path / "new.bin") as f:
            f.write(b"1")
        assert stat.S_IMODE(os.stat(tmp_path / "new.bin").st_mode) == 0o640   # 0o666 & ~0o027

        target = tmp_path / "kept.bin"
        target.write_bytes(b"old")
        for mode in (0o600, 0o644, 0o664, 0o400):
            os.chmod(target, mode)
            with _files.replaced_atomically(target) as f:
                during = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
                f.write(b"new")
            assert during == 0o600, f"the temporary file was {oct(during)} while writing"
            assert stat.S_IMODE(os.stat(target).st_mode) == mode, f"mode {oct(mode)} not kept"
            assert target.read_bytes() == b"new"
    finally:
        os.umask(old_umask)


@posix_only
def test_a_symlink_at_the_temp_name_is_never_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    tokens = iter(["0badc0de", "600dc0de"])
    monkeypatch.setattr(_files.secrets, "token_hex", lambda n: next(tokens))
    trap = tmp_path / f".polycnn-{_files._host()}-{os.getpid()}-0badc0de.tmp"
    os.symlink(victim, trap)
    with _files.replaced_atomically(tmp_path / "out.bin") as f:
        f.write(b"payload")
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "out.bin").read_bytes() == b"payload"
    assert sorted(os.listdir(tmp_path)) == sorted(["victim.txt", "out.bin", trap.name])
    assert os.path.islink(trap)     # our own live pid: not stale, left alone


@posix_only
def test_failure_leaves_old_file_and_no_temp_rename_is_followed_by_folder_fsync(tmp_path,
                                                                                monkeypatch):
    dest = tmp_path / "d.bin"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with _files.replaced_atomically(dest) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert dest.read_bytes() == b"old" and _temps(tmp_path) == []

    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(
        "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    with _files.replaced_atomically(dest) as f:
        f.write(b"new")
    assert events == ["file", "replace", "dir"], events

    link = tmp_path / "link.bin"
    os.symlink(dest, link)
    with _files.replaced_atomically(link) as f:
        f.write(b"via link")
    assert not os.path.islink(link) and link.read_bytes() == b"via link"
    assert dest.read_bytes() == b"new", "the link's target was written"


def test_a_folder_that_is_a_file_is_named(tmp_path):
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=r"cannot create a temporary file in .*afile"):
        with _files.replaced_atomically(tmp_path / "afile" / "x.npz") as f:
            f.write(b"")


# ---- SIGKILL at random moments -----------------------------------------------------------------
def _fork(body) -> int:
    pid = os.fork()
    if pid == 0:   # the child: never return into pytest
        try:
            body()
        finally:
            os._exit(0)
    return pid


def _kill_at(pid: int, delay: float) -> None:
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), f"the child ended before its kill (status {status})"


def _big_model(seed: int):
    # NOTE: 1,000 x 1,000 float32 weights: a 4 MB checkpoint, some milliseconds to write
    return pc.Sequential(pc.Flatten(), pc.Linear(1000, 1000), backend="numpy", seed=seed)


@posix_only
def test_checkpoint_save_killed_at_20_random_moments(tmp_path):
    dest = tmp_path / "model.npz"
    models = [_big_model(0), _big_model(1)]
    weights = [m.backend.to_numpy(m.named_arrays()["1.weight"]).copy() for m in models]
    ckpt.save(dest, models[0], tag=0)
    rng = np.random.default_rng(2024)
    mid_save = 0
    for i in range(20):
        def loop():
            k = 1
            while True:
                ckpt.save(dest, models[k % 2], tag=k % 2)
                k += 1

        _kill_at(_fork(loop), float(rng.uniform(0.0, 0.15)))
        mid_save += bool(_temps(tmp_path))
        meta, arrays = ckpt.read(dest)   # raises if partial or damaged
        tag = meta["metadata"]["tag"]
        np.testing.assert_array_equal(arrays["model.1.weight"], weights[tag],
                                      err_msg=f"kill {i}: the file is neither the old nor the new")
        ckpt.save(dest, models[0], tag=0)     # the next save in the folder
        assert sorted(os.listdir(tmp_path)) == ["model.npz"], f"kill {i}: left {os.listdir(tmp_path)}"
    assert mid_save >= 5, f"only {mid_save} of 20 kills landed inside a save: the test is too coarse"


@posix_only
def test_download_killed_at_20_random_moments(tmp_path):
    mirror, data = tmp_path / "mirror", tmp_path / "data"
    mirror.mkdir()
    rng = np.random.default_rng(7)
    files = {name + ".gz": rng.integers(0, 256, size, dtype=np.uint8).tobytes()
             for name, size in zip(dr.IDX_FILES.values(), (3 << 20, 1000, 1 << 20, 500))}
    for name, body in files.items():
        (mirror / name).write_bytes(body)
    sums = {name: hashlib.sha256(body).hexdigest() for name, body in files.items()}
    url = mirror.as_uri() + "/"

    def get():
        return dr.download("mnist", data, mirrors=[url], checksums=sums)

    mid_transfer = 0
    for i in range(20):
        def loop():
            while True:
                get()
                for name in files:
                    os.unlink(data / name)

        _kill_at(_fork(loop), float(rng.uniform(0.0, 0.1)))
        mid_transfer += bool(os.path.isdir(data) and _temps(data))
        for name in os.listdir(data) if os.path.isdir(data) else []:
            if not _files.is_temp_name(name):
                assert (data / name).read_bytes() == files[name], f"kill {i}: {name} is partial"
        get()       # the next download into the folder
        assert sorted(os.listdir(data)) == sorted(files), f"kill {i}: left {os.listdir(data)}"
        assert all((data / n).read_bytes() == b for n, b in files.items())
    assert mid_transfer >= 5, f"only {mid_transfer} of 20 kills landed inside a transfer"


# ---- Ctrl-C (SIGINT) during training -----------------------------------------------------------
def _small(seed=0):
    return pc.Sequential(pc.Conv2d(3, 4, 3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
                         pc.Dropout2d(0.2), pc.Flatten(), pc.Linear(4 * 8 * 8, 3),
                         backend="numpy", seed=seed)


def _arrays(model):
    return {k: model.backend.to_numpy(v).copy() for k, v in model.named_arrays().items()}


def test_sigint_in_fit_saves_the_last_step_and_resume_matches(tmp_path):
    s = pc.datasets.shapes_splits(n_train=60, n_val=20, n_test=20, image_size=16, seed=1)
    aug = pc.Augment(hflip=0.5, vflip=0.5, rotate=10)
    kw = dict(epochs=3, batch_size=8, val=s["val"], augment=aug)

    full = _small()
    pc.fit(full, s["train"], optimizer=pc.SGD(full.parameters(), lr=0.05, momentum=0.9), seed=5,
           **kw)

    def ctrl_c_at_step_3_of_epoch_2(e):
        if e["kind"] == "batch" and e["epoch"] == 2 and e["batch"] == 3:
            os.kill(os.getpid(), signal.SIGINT)     # a real signal, handled between steps

    part = _small()
    out = tmp_path / "part.npz"
    with pytest.raises(pc.TrainingInterrupted) as e:
        pc.fit(part, s["train"], optimizer=pc.SGD(part.parameters(), lr=0.05, momentum=0.9),
               seed=5, checkpoint=out, callback=ctrl_c_at_step_3_of_epoch_2, **kw)
    assert (e.value.path, e.value.epoch, e.value.step, e.value.steps) == (out, 1, 3, 8)
    assert str(e.value) == f"interrupted in epoch 2 after step 3 of 8: the state after that step is saved in {out}"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handler not restored"

    resumed = pc.load(out, backend="numpy")
    state = resumed.training_state
    assert state["epoch"] == 1 and state["position"]["step"] == 3 and state["position"]["epoch"] == 2
    h = pc.fit(resumed, s["train"], resume=True, checkpoint=out, **kw)
    assert h["epoch"] == [1, 2, 3]
    for k, v in _arrays(full).items():
        np.testing.assert_array_equal(_arrays(resumed)[k], v, err_msg=f"{k}: resumed mid-epoch run"
                                      " differs from the uninterrupted run")
    assert ckpt.read(out)[0]["position"] is None, "the finished run still holds a position"

    # the same data in other batches cannot continue that position
    again = pc.load(tmp_path / "part.npz", backend="numpy")
    again.training_state["position"] = dict(state["position"])
    with pytest.raises(ValueError, match=r"interrupted at step 3 of 8 in epoch 2.*same data and batch"):
        pc.fit(again, s["train"], resume=True, **dict(kw, batch_size=4, epochs=4))


TRAIN = ["train", "--backend", "numpy", "--n-train", "600", "--image-size", "16", "--batch-size",
         "6", "--epochs", "2", "--no-augment"]


def test_ctrl_c_during_polycnn_train_saves_and_resume_continues(tmp_path):
    from click.testing import CliRunner

    from polycnn.cli.main import main

    full = tmp_path / "full.npz"
    r = CliRunner().invoke(main, [*TRAIN, "--out", str(full), "--quiet"])
    assert r.exit_code == 0, r.output

    out = tmp_path / "run.npz"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "polycnn.cli.main", *TRAIN, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=env, start_new_session=True)
    try:
        lines = []
        for line in proc.stdout:          # wait for the first epoch's line, then Ctrl-C
            lines.append(line)
            if line.startswith("epoch  1/2"):
                proc.send_signal(signal.SIGINT)
                break
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (lines, stdout, stderr)
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    # NOTE: a signal that arrives before the check right after epoch 1 stops at its end
    m = re.fullmatch(r"interrupted (?:in epoch 2 after step (\d+) of 100|after epoch 1): the state"
                     r" after that (?:step|epoch) is saved in (.*); continue with `polycnn train"
                     r" --resume --out (.*)`", stderr.strip())
    assert m and m.group(2) == m.group(3) == str(out), stderr
    step = int(m.group(1) or 0)
    assert 0 <= step < 100
    meta = ckpt.read(out)[0]
    assert meta["epoch"] == 1, meta
    assert (meta["position"] or {}).get("step", 0) == step, meta["position"]
    assert _temps(tmp_path) == []

    r = CliRunner().invoke(main, ["train", "--resume", "--out", str(out), "--backend", "numpy",
                                  "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[-1])["history"]["epoch"] == [1, 2]
    a, b = ckpt.read(full)[1], ckpt.read(out)[1]
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=f"{k}: the run resumed after Ctrl-C"
                                      " differs from the uninterrupted run")
