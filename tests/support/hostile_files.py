"""Hostile data files the tests write: checkpoints altered after saving (checksum kept right),
archives with huge members, bomb PNGs, bad .npy headers, IDX folders, model JSON."""

from __future__ import annotations

import copy
import json
import struct
import zipfile
import zlib

import numpy as np

from polycnn import checkpoint


def png_of_one_colour(path, width, height):
    """A greyscale PNG of one colour, written row block by row block (never whole in memory)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row, parts = zlib.compressobj(1), b"\0" * (width + 1), []
    for _ in range(0, height, 1000):
        parts.append(z.compress(row * min(1000, height)))
    parts.append(z.flush())
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def altered(src, dest, meta_edit=None, arrays_edit=None, resum=True):
    """A copy of checkpoint ``src`` with its metadata and arrays changed (checksum updated)."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    meta = copy.deepcopy(meta)
    if meta_edit:
        meta_edit(meta)
    if arrays_edit:
        arrays_edit(arrays)
    if resum:
        meta["sha256"] = checkpoint._digest(arrays)
    np.savez(dest, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def npz_with_member(src, dest, name, header: dict, zeros: int):
    """Checkpoint ``src`` with member ``name`` replaced by an .npy ``header`` and ``zeros``
    bytes of data, streamed into the archive."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED,
                                                      compresslevel=1) as zout:
        for info in zin.infolist():
            if info.filename != name:
                zout.writestr(info.filename, zin.read(info))
        with zout.open(name, "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            block = bytes(16 << 20)
            for start in range(0, zeros, len(block)):
                f.write(block[:min(len(block), zeros - start)])


def npy_header(path, shape, descr="<f4", data=b""):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False,
                                                 "shape": shape})
        f.write(data)


def idx_files(folder, images=None, raw=False):
    """The four MNIST names in ``folder``: train images from ``images`` (bytes), others empty."""
    folder.mkdir(exist_ok=True)
    ext = "" if raw else ".gz"
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / (name + ext)).write_bytes(b"")
    if images is not None:
        (folder / ("train-images-idx3-ubyte" + ext)).write_bytes(images)


def layers_json(path, layers):
    path.write_text(json.dumps(layers))
