"""Hostile downloads and writes: mirrors that are not HTTPS, a bad ``POLYCNN_MIRRORS``, a mirror
that sends too many bytes or the wrong ones, archives that try to write outside their folder,
a checkpoint written under a path that cannot hold it.

Each case of :data:`CASES` prepares its folder, then runs ``polycnn`` (or the API, through
``hostile.api_case``) there in a child process: it must exit 2 with one ``error:`` line naming
the problem, stay under 1 GiB of peak memory, and leave every file under the folder as it was
(nothing downloaded, unpacked or saved, no temporary file left).
"""

from __future__ import annotations

import hashlib

import pytest

from support.hostile import api_case, run_cli, run_python, snapshot, tar_gz
from polycnn import datasets as dr

#: train MNIST from data/, fetching what is missing
TRAIN_MNIST = ["train", "--dataset", "mnist", "--data-dir", "data", "--download", "--epochs", "1",
               "--backend", "numpy", "--out", "out.npz"]


def _mirror(tmp_path, files: dict) -> str:
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name, body in files.items():
        (folder / name).write_bytes(body)
    return folder.as_uri() + "/"


def _batches(skip=()):
    size = dr.CIFAR_BATCH_RECORDS * (1 + 3 * 32 * 32)
    return [(f"{dr.CIFAR_SUBDIR}/{n}", bytes(size)) for n in dr.CIFAR_FILES if n not in skip]


def _cifar_case(tmp_path, members) -> dict:
    archive = tar_gz(members)
    url = _mirror(tmp_path, {dr.CIFAR_ARCHIVE: archive})
    sums = {dr.CIFAR_ARCHIVE: hashlib.sha256(archive).hexdigest()}
    return {"code": f"pc.datasets.download('cifar10', 'data', mirrors=[{url!r}], checksums={sums!r})"}


# ---- the cases: (id, prepare(tmp_path) -> {"args" | "code", "env"}, words the error must name) --
def _http_mirror(tmp_path):
    return {"args": TRAIN_MNIST, "env": {dr.MIRRORS_ENV: "http://mirror.example/mnist/"}}


def _ftp_mirror(tmp_path):
    return {"code": "pc.datasets.download('mnist', 'data', mirrors=['ftp://mirror.example/mnist/'])"}


def _env_without_url(tmp_path):
    return {"args": TRAIN_MNIST, "env": {dr.MIRRORS_ENV: " , ,"}}


def _env_not_a_url(tmp_path):
    return {"args": TRAIN_MNIST, "env": {dr.MIRRORS_ENV: "mirror.example/mnist"}}


def _too_many_bytes(tmp_path):
    # NOTE: 12 MB of zeros under a name whose published file has 9,912,422 bytes
    url = _mirror(tmp_path, {"train-images-idx3-ubyte.gz": bytes(12 << 20)})
    return {"args": TRAIN_MNIST, "env": {dr.MIRRORS_ENV: url}}


def _wrong_bytes(tmp_path):
    url = _mirror(tmp_path, {"train-images-idx3-ubyte.gz": b"\x1f\x8b not the MNIST images"})
    return {"args": TRAIN_MNIST, "env": {dr.MIRRORS_ENV: url}}


def _tar_dotdot(tmp_path):
    return _cifar_case(tmp_path, [*_batches(), ("../evil.bin", b"owned")])


def _tar_symlink(tmp_path):
    return _cifar_case(tmp_path, [(f"{dr.CIFAR_SUBDIR}/data_batch_1.bin", "->/etc/passwd"),
                                  *_batches(skip=("data_batch_1.bin",))])


def _save_under_a_file(tmp_path):
    (tmp_path / "afile").write_bytes(b"a file, not a folder")
    return {"code": "m = pc.Sequential(pc.Flatten(), pc.Linear(4, 2), backend='numpy')\n"
                    "pc.checkpoint.save('afile/out.npz', m)"}


CASES = [
    ("http-mirror", _http_mirror, ["POLYCNN_MIRRORS", "http://mirror.example/mnist/", "refused",
                                   "https://"]),
    ("ftp-mirror", _ftp_mirror, ["mirrors", "ftp://mirror.example/mnist/", "refused", "https://"]),
    ("mirrors-env-without-url", _env_without_url, ["POLYCNN_MIRRORS", "names no mirror"]),
    ("mirrors-env-not-a-url", _env_not_a_url, ["POLYCNN_MIRRORS", "'mirror.example/mnist'",
                                               "not a mirror URL"]),
    ("mirror-sends-too-many-bytes", _too_many_bytes, ["train-images-idx3-ubyte.gz",
                                                      "announces 12,582,912 bytes",
                                                      "the file has 9,912,422"]),
    ("mirror-sends-wrong-bytes", _wrong_bytes, ["train-images-idx3-ubyte.gz", "SHA-256",
                                                "does not match the expected 440fcabf"]),
    ("tar-member-dotdot", _tar_dotdot, ["cifar-10-binary.tar.gz", "member '../evil.bin' is unsafe"]),
    ("tar-member-symlink-out", _tar_symlink, ["member 'cifar-10-batches-bin/data_batch_1.bin'",
                                              "unsafe", "a link to an absolute path"]),
    ("save-under-a-file", _save_under_a_file, ["afile/out.npz", "not a directory",
                                               "cannot create a temporary file"]),
]


@pytest.mark.parametrize("prepare, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_download_or_write(tmp_path, prepare, needles):
    case = prepare(tmp_path)
    before = snapshot(tmp_path)
    if "args" in case:
        outcome = run_cli(*case["args"], env=case.get("env"), cwd=tmp_path)
    else:
        outcome = run_python(api_case(case["code"], "(ValueError, TypeError, OSError)"),
                             env=case.get("env"), cwd=tmp_path)
    outcome.assert_user_error(*needles)
    assert snapshot(tmp_path) == before, f"files changed:\n{outcome}"
    assert not (tmp_path.parent / "evil.bin").exists()
