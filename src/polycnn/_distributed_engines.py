"""How :mod:`polycnn.distributed` moves bytes: JSON messages over MPI, and the three engines
of a :class:`~polycnn.distributed.Communicator`'s arrays (host arrays over MPI, CuPy arrays over
NCCL, cupy-emu's arrays over MPI through the NCCL stand-in); plus the check that a local peer's
process is alive. Private: the public names are in :mod:`polycnn.distributed`."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .distributed import Communicator


def _allgather_json(comm, obj, wait, what: str) -> list:
    """Every rank's JSON-ready ``obj``, in rank order: sizes, then the bytes. JSON, not pickle:
    what another process sends is data, never code to run."""
    data = np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)
    sizes = np.zeros(comm.Get_size(), dtype=np.int64)
    wait(comm.Iallgather(np.array([data.size], dtype=np.int64), sizes), what)
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    wait(comm.Iallgatherv(data, (out, sizes)), what)
    ends = np.cumsum(sizes)
    return [json.loads(out[e - n:e].tobytes().decode("utf-8")) for n, e in zip(sizes, ends)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # NOTE: a killed process stays a zombie until its launcher reaps it
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class _HostEngine:
    """NumPy arrays over MPI."""

    def __init__(self, comm: Communicator):
        self.c = comm

    def bcast(self, buf, what):
        self.c._wait(self.c.comm.Ibcast(buf, root=0), what)

    def allgather(self, buf, rows, what):
        self.c._wait(self.c.comm.Iallgather(buf, rows), what)

    def allreduce_sum(self, buf, what):
        from mpi4py import MPI
        self.c._wait(self.c.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), what)


class _NcclEngine:
    """CuPy arrays over NCCL, in device memory on the current stream; the unique id comes from
    rank 0 over MPI. Each rank uses the GPU ``local rank % devices`` (set by fit)."""

    def __init__(self, comm: Communicator):
        from cupy.cuda import nccl

        self.c, self.nccl = comm, nccl
        uid = tuple(comm.bcast_object(nccl.get_unique_id() if comm.rank == 0 else None, "NCCL id"))
        self.nc = nccl.NcclCommunicator(comm.size, uid, comm.rank)

    def _type(self, a):
        return {np.dtype(np.float32): self.nccl.NCCL_FLOAT32,
                np.dtype(np.float64): self.nccl.NCCL_FLOAT64}[np.dtype(a.dtype)]

    @staticmethod
    def _stream():
        import cupy
        return cupy.cuda.get_current_stream().ptr

    def bcast(self, buf, what):
        self.nc.bcast(buf.data.ptr, buf.size, self._type(buf), 0, self._stream())

    def allgather(self, buf, rows, what):
        self.nc.allGather(buf.data.ptr, rows.data.ptr, buf.size, self._type(buf), self._stream())

    def allreduce_sum(self, buf, what):
        self.nc.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._type(buf), self.nccl.NCCL_SUM,
                          self._stream())


class _EmulatedNcclEngine:
    """cupy-emu's stand-in for :class:`_NcclEngine`: the same three operations on the
    emulator's device arrays (host memory underneath), carried by MPI. The packing, the
    rank-order sum and the unpacking around it are the code the cupy backend runs."""

    def __init__(self, comm: Communicator):
        self.c = comm
        self.host = _HostEngine(comm)

    @staticmethod
    def _host(a):
        # NOTE: a view of the stand-in's memory, as NCCL works on device pointers in place
        return a.view(np.ndarray)

    def bcast(self, buf, what):
        self.host.bcast(self._host(buf), what)

    def allgather(self, buf, rows, what):
        self.host.allgather(self._host(buf), self._host(rows), what)

    def allreduce_sum(self, buf, what):
        self.host.allreduce_sum(self._host(buf), what)
