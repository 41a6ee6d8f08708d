"""`download` against a local HTTP server on 127.0.0.1 (never the internet): a good download
loads, a wrong checksum or a cut-off transfer raises a clear error and leaves no file behind."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import os
import re
import threading
import time

import numpy as np
import pytest

import polycnn as pc
from support.hostile import tar_gz
from polycnn import datasets as dr
from polycnn.datasets import catalog

from support.datafiles import idx_bytes


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


@contextlib.contextmanager
def _serving(handler):
    """``handler`` answering on 127.0.0.1 from a thread, while the block runs: its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server():
    handler = type("Handler", (_Handler,), {"files": _files(), "cut": set(), "requests": []})
    with _serving(handler) as url:
        yield handler, url + "mnist/"


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
    monkeypatch.setattr(catalog, "CIFAR_BATCH_RECORDS", 2)
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


# ---- mirrors: https only, local test mirrors only on purpose ------------------------------------
@pytest.mark.parametrize("url, message", [
    ("http://mirror.example/mnist/", "refused: mirrors must be https://"),
    ("ftp://mirror.example/mnist/", "refused: mirrors must be https://"),
    ("http://10.0.0.1:8000/", "refused: mirrors must be https://"),
    ("data:,hello", "refused: mirrors must be https://"),
    ("not a url", "is not a mirror URL; expected https://HOST/PATH/"),
    ("https:///no-host/", "is not a mirror URL"),
    ("https://[::1/", "is not a URL"),
])
def test_mirrors_other_than_https_are_refused(url, message, monkeypatch):
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        dr.mirrors_for("mnist", [url])
    assert repr(url) in str(e.value) and str(e.value).startswith("mirrors: ")
    monkeypatch.setenv(dr.MIRRORS_ENV, f"https://ok.example/, {url}")
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        dr.mirrors_for("mnist")
    assert str(e.value).startswith(f"{dr.MIRRORS_ENV}: ")


def test_local_test_mirrors_only_when_named_on_purpose(tmp_path, monkeypatch):
    local = [tmp_path.as_uri(), "http://127.0.0.1:8000/x", "http://localhost:1/", "http://[::1]:2/"]
    assert dr.mirrors_for("mnist", local) == [u.rstrip("/") + "/" for u in local]
    monkeypatch.setenv(dr.MIRRORS_ENV, ",".join(local))
    assert dr.mirrors_for("cifar10") == [u.rstrip("/") + "/" for u in local]
    monkeypatch.delenv(dr.MIRRORS_ENV)
    for name in dr.MIRRORS:       # the built-in table is https only, and stays so
        assert all(u.startswith("https://") for u in dr.mirrors_for(name)), dr.MIRRORS[name]
    monkeypatch.setitem(dr.MIRRORS, "mnist", [tmp_path.as_uri()])
    with pytest.raises(ValueError, match=r"MIRRORS\['mnist'\]: .* is refused"):
        dr.mirrors_for("mnist")


def test_bad_mirror_settings_are_named(monkeypatch):
    monkeypatch.setenv(dr.MIRRORS_ENV, " , ,")
    with pytest.raises(ValueError, match=r"POLYCNN_MIRRORS=' , ,' names no mirror"):
        dr.mirrors_for("mnist")
    monkeypatch.setenv(dr.MIRRORS_ENV, "   ")       # blank: as if unset
    assert dr.mirrors_for("mnist") == dr.MIRRORS["mnist"]
    with pytest.raises(TypeError, match="mirrors must be a URL or a list of URLs, got int"):
        dr.mirrors_for("mnist", 5)
    with pytest.raises(TypeError, match="a mirror must be a URL string, got bytes"):
        dr.mirrors_for("mnist", [b"https://x/"])


def test_every_known_file_has_a_size(tmp_path):
    assert {k: set(v) for k, v in dr.SIZES.items()} == {k: set(v) for k, v in dr.SHA256.items()}
    with pytest.raises(ValueError, match=r"no known size for t10k-images-idx3-ubyte.gz"):
        pc.datasets.download("mnist", tmp_path, mirrors=["https://x.example/"],
                             sizes={n: 1 for n in dr.SIZES["mnist"] if not n.startswith("t10k-i")})


# ---- size cap, redirects -----------------------------------------------------------------------
class _Hostile(http.server.BaseHTTPRequestHandler):
    mode = "endless"
    sent = 0
    target = ""

    def do_GET(self):
        if self.mode == "redirect":
            self.send_response(302)
            self.send_header("Location", self.target)
            self.end_headers()
            return
        self.send_response(200)
        if self.mode == "announce":
            self.send_header("Content-Length", str(10 ** 9))
        self.end_headers()
        if self.mode == "endless":       # no Content-Length: a body that never ends
            type(self).sent = 0
            try:
                while type(self).sent < 64 << 20:
                    self.wfile.write(b"\0" * (1 << 16))
                    type(self).sent += 1 << 16
            except (BrokenPipeError, ConnectionResetError):
                pass
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def hostile_server():
    handler = type("H", (_Hostile,), {})
    with _serving(handler) as url:
        yield handler, url


def test_transfer_stops_as_soon_as_it_passes_the_size(hostile_server, tmp_path):
    handler, url = hostile_server
    sums = {n: "0" * 64 for n in dr.SHA256["mnist"]}
    caps = {n: 100_000 for n in dr.SHA256["mnist"]}
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: more than the expected"
                                         r" 100,000 bytes arrived; transfer stopped"):
        pc.datasets.download("mnist", tmp_path, mirrors=[url], checksums=sums, sizes=caps)
    assert os.listdir(tmp_path) == []
    # the server was cut off long before its 64 MiB (socket buffers hold a few MiB at most)
    time.sleep(0.2)
    assert handler.sent < 32 << 20, handler.sent

    handler.mode = "announce"
    with pytest.raises(ValueError, match=r"the mirror announces 1,000,000,000 bytes but the file"
                                         r" has 9,912,422"):
        pc.datasets.download("mnist", tmp_path, mirrors=[url], checksums=sums)
    assert os.listdir(tmp_path) == []


def test_redirect_to_plain_http_is_refused(hostile_server, tmp_path):
    handler, url = hostile_server
    handler.mode, handler.target = "redirect", url + "elsewhere/file.gz"
    with pytest.raises(ValueError, match=r"redirected to 'http://127.0.0.1:\d+/elsewhere/file.gz',"
                                         r" which is not https://"):
        pc.datasets.download("mnist", tmp_path, mirrors=[url])
    assert os.listdir(tmp_path) == []


def test_file_mirror_downloads(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    files = _files()
    for name, body in files.items():
        (mirror / name).write_bytes(body)
    written = pc.datasets.download("mnist", tmp_path / "d", mirrors=[mirror.as_uri()],
                                   checksums=_sums(files))
    assert sorted(os.path.basename(p) for p in written) == sorted(files)
    assert sorted(os.listdir(tmp_path / "d")) == sorted(files)


# ---- the CIFAR-10 archive is checked before anything is unpacked ---------------------------------
def _batches(records=2, skip=()):
    return [(f"{dr.CIFAR_SUBDIR}/{n}", bytes(records * 3073)) for n in dr.CIFAR_FILES if n not in skip]


@pytest.mark.parametrize("members, message", [
    ([("../evil.bin", b"x"), *_batches()], "member '../evil.bin' is unsafe"),
    ([("/tmp/evil.bin", b"x"), *_batches()], "member '/tmp/evil.bin' is unsafe"),
    ([(f"{dr.CIFAR_SUBDIR}/data_batch_1.bin", "->/etc/passwd"), *_batches(skip=("data_batch_1.bin",))],
     "member 'cifar-10-batches-bin/data_batch_1.bin' is unsafe"),
    ([(f"{dr.CIFAR_SUBDIR}/data_batch_1.bin", "->test_batch.bin"), *_batches(skip=("data_batch_1.bin",))],
     "cifar-10-batches-bin/data_batch_1.bin is missing or not a regular file"),
    (_batches(records=3), "data_batch_1.bin has 9,219 bytes, a batch has 6,146"),
    (_batches(skip=("test_batch.bin",)), "test_batch.bin is missing"),
    ([(f"junk{i}", b"") for i in range(70)], "more than 64 members"),
], ids=["dotdot", "absolute", "symlink-out", "symlink-in", "batch-size", "missing", "members"])
def test_unsafe_or_wrong_archive_unpacks_nothing(members, message, server, tmp_path, monkeypatch):
    handler, url = server
    monkeypatch.setattr(catalog, "CIFAR_BATCH_RECORDS", 2)
    archive = tar_gz(members)
    monkeypatch.setitem(handler.files, dr.CIFAR_ARCHIVE, archive)
    data = tmp_path / "data"
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        pc.datasets.download("cifar10", data, mirrors=[url],
                             checksums={dr.CIFAR_ARCHIVE: hashlib.sha256(archive).hexdigest()})
    assert "not the CIFAR-10 binary archive" in str(e.value)
    assert os.listdir(data) == [], "something was unpacked (or the archive kept)"
    assert sorted(os.listdir(tmp_path)) == ["data"]
