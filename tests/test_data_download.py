"""`download` against a local HTTP server on 127.0.0.1 (never the internet): a good download
loads, a wrong checksum or a cut-off transfer raises a clear error and leaves no file behind."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest

import polycnn as pc
from polycnn import datasets_real as dr

from test_data_real import idx_bytes


def _files(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 30),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 10)}
    return {name + ".gz": gzip.compress(idx_bytes(a), mtime=0) for name, a in arrays.items()}


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    cut: set = set()       # names sent with a Content-Length larger than the body
    requests: list = []

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        self.requests.append(self.path)
        body = self.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + (1000 if name in self.cut else 0)))
        self.end_headers()
        self.wfile.write(body)
        if name in self.cut:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("Handler", (_Handler,), {"files": _files(), "cut": set(), "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/mnist/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _sums(files):
    return {name: hashlib.sha256(body).hexdigest() for name, body in files.items()}


def test_good_download_loads(server, tmp_path):
    handler, url = server
    folder = tmp_path / "data"
    written = pc.datasets.download("mnist", folder, mirrors=[url], checksums=_sums(handler.files))
    assert sorted(os.path.basename(p) for p in written) == sorted(handler.files)
    assert sorted(os.listdir(folder)) == sorted(handler.files)     # no temporary files left
    x, y = pc.datasets.mnist(folder, "test")
    assert x.shape == (10, 1, 28, 28)
    # a second call finds everything and fetches nothing
    n = len(handler.requests)
    assert pc.datasets.download("mnist", folder, mirrors=[url], checksums=_sums(handler.files)) == []
    assert len(handler.requests) == n


def test_wrong_checksum_leaves_no_file(server, tmp_path):
    handler, url = server
    sums = _sums(handler.files)
    sums["t10k-images-idx3-ubyte.gz"] = "0" * 64
    with pytest.raises(ValueError) as e:
        pc.datasets.download("mnist", tmp_path, mirrors=[url], checksums=sums)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "does not match the expected 0000" in msg
    assert "t10k-images-idx3-ubyte.gz" not in os.listdir(tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]


def test_cut_off_transfer_leaves_no_file(server, tmp_path):
    handler, url = server
    handler.cut.add("train-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match=r"could not download train-labels-idx1-ubyte.gz.*cut short"):
        pc.datasets.download("mnist", tmp_path, mirrors=[url], checksums=_sums(handler.files))
    assert "train-labels-idx1-ubyte.gz" not in os.listdir(tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]


def test_next_mirror_is_tried_and_env_overrides(server, tmp_path, monkeypatch):
    handler, url = server
    bad = url.replace("/mnist/", "/nothing-here/")
    monkeypatch.setitem(handler.files, "nothing-here", b"")
    monkeypatch.setenv(dr.MIRRORS_ENV, f"{bad}, {url}")
    assert dr.mirrors_for("mnist") == [bad, url]
    monkeypatch.setitem(dr.SHA256, "mnist", _sums(handler.files))
    # through the loader's download flag, with the mirrors from the environment
    x, y = pc.datasets.mnist(tmp_path, "train", download=True)
    assert x.shape == (30, 1, 28, 28)
    assert any("/nothing-here/" in r for r in handler.requests)


def test_unknown_checksum_refuses(tmp_path, monkeypatch):
    monkeypatch.setitem(dr.SHA256["fashion-mnist"], "train-images-idx3-ubyte.gz", None)
    with pytest.raises(ValueError, match=r"no known SHA-256 for train-images-idx3-ubyte.gz"):
        pc.datasets.download("fashion-mnist", tmp_path, mirrors=["http://127.0.0.1:9/"])
    assert os.listdir(tmp_path) == []


def test_cifar10_archive_is_verified_and_unpacked(server, tmp_path, monkeypatch):
    import io
    import tarfile

    handler, url = server
    monkeypatch.setattr(dr, "CIFAR_BATCH_RECORDS", 2)
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in dr.CIFAR_FILES + ("readme.html",):
            rec = rng.integers(0, 10, (2, 3073)).astype(np.uint8).tobytes()
            info = tarfile.TarInfo(f"{dr.CIFAR_SUBDIR}/{name}")
            info.size = len(rec)
            tar.addfile(info, io.BytesIO(rec))
    archive = buf.getvalue()
    monkeypatch.setitem(handler.files, dr.CIFAR_ARCHIVE, archive)
    sums = {dr.CIFAR_ARCHIVE: hashlib.sha256(archive).hexdigest()}
    written = pc.datasets.download("cifar10", tmp_path, mirrors=[url], checksums=sums)
    assert sorted(os.path.basename(p) for p in written) == sorted(dr.CIFAR_FILES)
    assert os.listdir(tmp_path) == [dr.CIFAR_SUBDIR]            # the archive is gone
    assert sorted(os.listdir(tmp_path / dr.CIFAR_SUBDIR)) == sorted(dr.CIFAR_FILES)
    x, y = pc.datasets.cifar10(tmp_path, "test")
    assert x.shape == (2, 3, 32, 32)


def test_cli_download_flag(server, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from polycnn.cli.main import main

    handler, url = server
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(dr.MIRRORS_ENV, url)
    monkeypatch.setitem(dr.SHA256, "mnist", _sums(handler.files))
    r = CliRunner().invoke(main, ["train", "--dataset", "mnist", "--data-dir", "got", "--download",
                                  "--epochs", "1", "--backend", "numpy", "--quiet"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path / "got")) == sorted(handler.files)
