"""Data-parallel training over MPI (host arrays) and NCCL (CuPy arrays): ``pc.distributed``.

One process per core group or per GPU, started by ``mpiexec -n R``; the same model on each,
a different shard of every batch, gradients averaged before each update (ChainerMN's design).
polycnn writes no communication layer of its own: host arrays go through ``mpi4py``
(``pip install 'polycnn[mpi]'`` brings it and the MPICH runtime), CuPy arrays through NCCL
(``cupy.cuda.nccl.NcclCommunicator``, its unique id broadcast from rank 0 over MPI), never
through host memory. On ``cupy-emu`` a stand-in with NCCL's interface runs the same packing
and unpacking code on the emulator's (host) memory.

    rank, size = pc.distributed.init()      # (0, 1) without mpiexec or without mpi4py
    pc.fit(model, (x, y), batch_size=64, distributed=True)   # 64 images per step in all

Reductions: ``deterministic`` (the default) gathers every rank's packed buffer and sums it in
rank order, so a run gives the same bytes every time whatever the MPI library's reduction
order; ``deterministic=False`` uses one plain Allreduce (faster on many ranks).

Failures: a rank that raises inside a guarded region (set-up, a training step, a checkpoint)
tells the others at the next exchange; each rank then raises, the others
:class:`RankFailed` with the failing rank's message. A rank that dies (killed, crashed) is
noticed by the ranks waiting for it: MPICH's ``mpiexec`` ends the whole job at once
(printing which process died); under a launcher that does not, the waiting ranks see a local
peer's process gone (or wait ``POLYCNN_MPI_TIMEOUT`` seconds, when set) and raise
:class:`PeerLost`.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import signal
import socket
import sys
import threading
import time

import numpy as np

from ._distributed_engines import (_alive, _allgather_json, _EmulatedNcclEngine, _HostEngine,
                                   _NcclEngine)

#: environment variables that MPI launchers (MPICH/Hydra, Intel MPI, Open MPI, PMIx)
#: set in each process they start, with the job's size where the variable holds it
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")

INSTALL_HINT = "pip install 'polycnn[mpi]'"


class RankFailed(RuntimeError):
    """Another rank raised; ``rank``, ``kind`` (its exception's class name), ``user_error``
    (a ValueError / TypeError / OSError: bad input rather than a bug) and its ``message``."""

    def __init__(self, rank: int, size: int, kind: str, message: str, user_error: bool):
        self.rank, self.size, self.kind, self.user_error = rank, size, kind, user_error
        self.message = message
        super().__init__(f"rank {rank} of {size} stopped the run ({kind}): {message}")


class PeerLost(BaseException):
    """A rank this one waited for has died (killed or crashed) or did not answer in time. A
    BaseException, as SystemExit is: the job cannot go on, and ``except Exception`` (fit's own
    failure handling included) must not swallow it."""


def launched_size() -> int:
    """The job size an MPI launcher announced in the environment (1 when none did)."""
    for var in _SIZE_VARS:
        value = os.environ.get(var, "")
        if value.strip().isdigit():
            return int(value)
    return 2 if any(v in os.environ for v in _RANK_VARS) else 1


def mpi_status() -> str | bool:
    """True when mpi4py imports and has an MPI library, else the reason (for ``polycnn
    backends``); imports nothing when mpi4py is not installed."""
    if importlib.util.find_spec("mpi4py") is None:
        return f"mpi4py is not installed ({INSTALL_HINT})"
    try:
        import mpi4py
        from mpi4py import MPI
        library = " ".join(MPI.Get_library_version().splitlines()[0].split())
        return f"yes: mpi4py {mpi4py.__version__}, {library}"
    except Exception as exc:  # NOTE: mpi4py raises RuntimeError when libmpi cannot be loaded
        return f"mpi4py cannot load an MPI library: {type(exc).__name__}: {exc}"


def nccl_status() -> str:
    """Whether CuPy's NCCL binding is usable here (for ``polycnn backends``)."""
    if importlib.util.find_spec("cupy") is None:
        return "no: CuPy is not installed (NCCL is used for the cupy backend only)"
    try:
        from cupy.cuda import nccl
        return f"yes: NCCL {nccl.get_version()}"
    except Exception as exc:
        return f"no: {type(exc).__name__}: {exc}"


_STATE = {"comm": None, "rank": 0, "size": 1, "broken": False, "threads": None}


def _mpi():
    """The mpi4py.MPI module, or None: without a launcher's job of several processes (MPI is
    then not even started), or without mpi4py (an error under such a launcher: each process
    would otherwise train alone and write the same files)."""
    if launched_size() <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError as exc:
        n = launched_size()
        if n > 1:
            raise RuntimeError(f"started by mpiexec as one of {n} processes, but mpi4py is not"
                               f" installed ({exc}); install it with {INSTALL_HINT}, or run"
                               " without mpiexec") from None
        return None
    return MPI


def init(threads: int | None = None) -> tuple[int, int]:
    """Join the MPI job this process belongs to; returns ``(rank, size)``.

    Without mpiexec (or with one process, or without mpi4py) it is the single-process no-op
    ``(0, 1)``. With several processes on one machine, each uses ``cores / local ranks``
    threads for Numba and BLAS unless ``threads`` or ``NUMBA_NUM_THREADS`` / ``OMP_NUM_THREADS``
    / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` say otherwise (Numba's count can only be
    set before Numba is first imported: call ``init`` first)."""
    if _STATE["comm"] is not None:
        return _STATE["rank"], _STATE["size"]
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    MPI = _mpi()
    if MPI is None or MPI.COMM_WORLD.Get_size() == 1:
        _STATE.update(comm=Communicator(None), rank=0, size=1)
        return 0, 1
    world = MPI.COMM_WORLD
    comm = Communicator(world)
    _STATE.update(comm=comm, rank=comm.rank, size=comm.size)
    _share_cores(comm.local_size, threads)
    _pick_gpu(comm.local_rank)
    atexit.register(_exit_if_broken)   # NOTE: after mpi4py's MPI_Finalize hook, so runs before it
    _watch_launcher()
    return comm.rank, comm.size


def _share_cores(local_size: int, threads: int | None) -> None:
    """Numba and BLAS threads: the machine's cores split between the ranks on it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = threads or max(1, (cores or 1) // max(1, local_size))
    _STATE["threads"] = n
    if (threads or "NUMBA_NUM_THREADS" not in os.environ) and "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(n)
    blas = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    if threads or not any(v in os.environ for v in blas):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(n)


def _pick_gpu(local_rank: int) -> None:
    """With CuPy and several GPUs: rank ``local_rank`` uses GPU ``local_rank % count``."""
    if importlib.util.find_spec("cupy") is None:
        return
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
        if count > 1:
            cupy.cuda.Device(local_rank % count).use()
    except Exception:  # NOTE: no driver or device: the cupy backend says so when asked for
        pass


def _watch_launcher() -> None:
    """MPICH's mpiexec with ``-disable-auto-cleanup`` tells the surviving processes that one
    died with SIGUSR1 (whose default action ends a process silently), then kills them soon
    after: say so at once and leave. (Without that option it kills them straight away, printing
    which process died; launchers that do neither are caught by the peer watch of _wait.)"""
    if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL \
            and threading.current_thread() is threading.main_thread():
        def lost(signum, frame):
            message = (f"error: rank {_STATE['rank']} of {_STATE['size']}: another process of the"
                       " job has died (mpiexec signalled SIGUSR1); stopping (a checkpoint on disk"
                       " holds the last finished epoch)\n")
            os.write(2, message.encode())
            os._exit(1)
        signal.signal(signal.SIGUSR1, lost)


def _exit_if_broken():
    # NOTE: MPI_Finalize waits for every rank: with one gone it would hang, so leave at once
    if _STATE["broken"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def world() -> "Communicator":
    """The communicator of :func:`init` (calling it when needed)."""
    init()
    return _STATE["comm"]


def rank() -> int:
    return world().rank


def size() -> int:
    return world().size


def _host_dtype(a) -> np.dtype:
    return np.dtype(a.dtype)


class Communicator:
    """Collectives for data-parallel training over an ``mpi4py`` communicator (None: one
    process, every operation the identity)."""

    def __init__(self, comm=None, deterministic: bool = True):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self.deterministic = deterministic
        self._nccl = None
        self._buffers = {}
        #: seconds spent waiting for collectives, and in gradient reductions (benchmarks read them)
        self.wait_seconds = self.reduce_seconds = 0.0
        me = (socket.gethostname(), os.getpid())
        # NOTE: mpi4py's lowercase allgather would pickle: JSON, waited for plainly (the
        # peer watch of _wait needs this very list)
        self.peers = [me] if comm is None else [
            tuple(p) for p in _allgather_json(comm, me, lambda request, what: request.Wait(),
                                             "start-up")]
        self.local_size = sum(1 for host, _ in self.peers if host == me[0])
        self.local_rank = sum(1 for host, _ in self.peers[:self.rank] if host == me[0])
        try:
            self.timeout = float(os.environ.get("POLYCNN_MPI_TIMEOUT", "0") or 0)
        except ValueError:
            raise ValueError("POLYCNN_MPI_TIMEOUT must be a number of seconds (0: no limit), got"
                             f" {os.environ['POLYCNN_MPI_TIMEOUT']!r}") from None

    # ---- waiting, with an eye on the peers -------------------------------------------------
    def _wait(self, request, what: str) -> None:
        """Wait for a nonblocking MPI request; a local peer that died (or ``timeout``) raises
        :class:`PeerLost` instead of waiting for ever. Polls with short sleeps, so a rank that
        waits leaves the cores to the ranks still computing."""
        t0 = time.monotonic()
        nap, next_check = 0.0, t0 + 0.5
        while not request.Test():
            if nap:
                time.sleep(nap)
            nap = min(0.002, nap + 0.00005)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 0.5
                self._check_peers(what, now - t0)
        self.wait_seconds += time.monotonic() - t0

    def _check_peers(self, what: str, waited: float) -> None:
        host = socket.gethostname()
        for r, (h, pid) in enumerate(self.peers):
            if h == host and r != self.rank and not _alive(pid):
                self._lost(f"rank {r} of {self.size} (pid {pid}) has stopped (killed or crashed)"
                           f" while rank {self.rank} waited for it ({what})")
        if os.getppid() == 1:
            self._lost(f"the launcher (mpiexec) has gone while rank {self.rank} waited ({what})")
        if self.timeout and waited > self.timeout:
            self._lost(f"rank {self.rank} waited {waited:.0f} s for the other ranks ({what}),"
                       f" more than POLYCNN_MPI_TIMEOUT={self.timeout:g}")

    def _lost(self, message: str):
        _STATE["broken"] = True
        raise PeerLost(message)

    # ---- host collectives ---------------------------------------------------------------------
    def allgather_objects(self, obj, what: str = "exchange") -> list:
        """Every rank's JSON-ready ``obj``, in rank order (tuples come back as lists)."""
        if self.comm is None:
            return [obj]
        return _allgather_json(self.comm, obj, self._wait, what)

    def bcast_object(self, obj, what: str = "broadcast"):
        """Rank 0's ``obj`` on every rank."""
        return obj if self.comm is None else self.allgather_objects(
            obj if self.rank == 0 else None, what)[0]

    def gather_host(self, values, what: str = "metrics") -> np.ndarray:
        """(size, n) float64: every rank's ``values`` in rank order (sums over axis 0 taken in
        that order are the same on every rank and in every run)."""
        v = np.ascontiguousarray(values, dtype=np.float64).ravel()
        if self.comm is None:
            return v[None]
        out = np.empty((self.size, v.size), dtype=np.float64)
        self._wait(self.comm.Iallgather(v, out), what)
        return out

    def sum_host(self, values, what: str = "metrics") -> np.ndarray:
        """The rank-order sum of every rank's float64 ``values``."""
        g = self.gather_host(values, what)
        out = g[0].copy()
        for r in range(1, g.shape[0]):
            out += g[r]
        return out

    # ---- failures ---------------------------------------------------------------------------
    def agree(self, failure: BaseException | None, what: str) -> None:
        """Every rank says whether it failed (``failure``); when any did, the others raise
        :class:`RankFailed` with the first failing rank's message (the failing rank returns, to
        re-raise its own exception)."""
        if self.comm is None:
            return
        flag = self.sum_host([0.0 if failure is None else 1.0], what)[0]
        if flag:
            self.raise_failure(failure, what)

    def raise_failure(self, failure: BaseException | None, what: str) -> None:
        """After an exchange showed that some rank failed: gather the messages and raise."""
        mine = None
        if failure is not None:
            mine = (type(failure).__name__, " ".join(str(failure).split()) or type(failure).__name__,
                    isinstance(failure, (ValueError, TypeError, OSError, KeyError))
                    or type(failure).__name__ == "BackendUnavailable"
                    or getattr(failure, "exit_code", None) == 2)   # NOTE: click's usage errors
        reports = self.allgather_objects(mine, what)
        if failure is not None:
            return
        r, (kind, message, user) = next((r, m) for r, m in enumerate(reports) if m is not None)
        raise RankFailed(r, self.size, kind, message, user)

    @contextlib.contextmanager
    def guard(self, what: str):
        """Run the block on every rank; when it raises on any, every rank raises (see
        :meth:`agree`). KeyboardInterrupt is not caught."""
        failure = None
        try:
            yield
        except Exception as exc:
            failure = exc
        self.agree(failure, what)
        if failure is not None:
            raise failure

    # ---- arrays -----------------------------------------------------------------------------
    def _engine(self, backend):
        """How arrays of ``backend`` travel: MPI on host memory, NCCL on a CUDA device, the
        NCCL stand-in on cupy-emu's (host) memory."""
        if self.comm is None or not getattr(backend, "is_device", False):
            return _HostEngine(self)
        if self._nccl is None:
            self._nccl = _NcclEngine(self) if backend.name == "cupy" else _EmulatedNcclEngine(self)
        return self._nccl

    def _buffer(self, key, backend, shape, dtype):
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._buffers[key] = backend.xp.empty(shape, dtype=dtype)
        return buf

    def pack(self, backend, arrays, key="grad"):
        """One contiguous buffer holding ``arrays`` one after the other (flattened)."""
        n = sum(int(a.size) for a in arrays)
        buf = self._buffer(key, backend, (n,), _host_dtype(arrays[0]))
        at = 0
        for a in arrays:
            buf[at:at + a.size] = a.reshape(-1)
            at += a.size
        return buf

    @staticmethod
    def unpack(buf, arrays) -> None:
        """Copy ``buf`` back into ``arrays`` (in place), in :meth:`pack`'s layout."""
        at = 0
        for a in arrays:
            a[...] = buf[at:at + a.size].reshape(a.shape)
            at += a.size

    def broadcast_arrays(self, backend, arrays, what: str = "parameters") -> None:
        """Rank 0's values of ``arrays`` (the same shapes on every rank), in place."""
        if self.comm is None or not arrays:
            return
        buf = self.pack(backend, arrays, "bcast")
        self._engine(backend).bcast(buf, what)
        self.unpack(buf, arrays)

    def allreduce_mean(self, backend, arrays, what: str = "gradients", key: str = "mean") -> None:
        """Replace each of ``arrays`` (in place) by its mean over the ranks: one packed buffer,
        one collective (see :meth:`reduce_packed`)."""
        if self.comm is None or not arrays:
            return
        buf = self.pack(backend, arrays, key)
        self.reduce_packed(backend, buf, what)
        self.unpack(buf, arrays)

    def reduce_packed(self, backend, buf, what: str = "gradients") -> None:
        """The mean over the ranks of the contiguous buffer ``buf``, in place. Deterministic
        mode: gather every rank's buffer, then sum in rank order; else one Allreduce."""
        if self.comm is None:
            return
        t0 = time.perf_counter()
        engine = self._engine(backend)
        if self.deterministic:
            rows = self._buffer("gathered", backend, (self.size, buf.size), buf.dtype)
            engine.allgather(buf, rows, what)
            buf[...] = rows[0]
            for r in range(1, self.size):
                buf += rows[r]
        else:
            engine.allreduce_sum(buf, what)
        buf /= buf.dtype.type(self.size)
        self.reduce_seconds += time.perf_counter() - t0


def sync_batchnorm(layer, comm: Communicator | None) -> None:
    """Make a BatchNorm2d ``layer`` normalise, in training mode, with the mean and variance of
    the whole global batch (every rank's shard), its gradient taken through them; ``comm``
    None restores the per-rank layer. fit(..., sync_bn=True) does this for the run."""
    if comm is None:
        layer.__dict__.pop("forward", None)
        layer.__dict__.pop("backward", None)
        return
    cls = type(layer)

    def forward(x):
        if not layer.training:
            return cls.forward(layer, x)
        layer._check_input(x, 4, "(N, C, H, W)")
        layer._check_channels(x.shape[1], x.shape)
        be, t = layer.backend, x.dtype.type
        m = int(comm.sum_host([x.shape[0] * x.shape[2] * x.shape[3]], "BatchNorm count")[0])
        if m < 2:
            raise ValueError(f"{layer!r} in training mode needs more than one value per channel,"
                             f" got input shape {tuple(x.shape)} on every rank together")
        total = x.sum(axis=(0, 2, 3))
        comm.allreduce_mean(be, [total], "BatchNorm mean", key="bn")
        mean = total * t(comm.size / m)
        centred = x - mean[None, :, None, None]
        squares = (centred * centred).sum(axis=(0, 2, 3))
        comm.allreduce_mean(be, [squares], "BatchNorm variance", key="bn")
        var = squares * t(comm.size / m)
        layer._update_running(mean, var, m)
        return layer._scale_shift(centred, var, m)

    def backward(dy):
        xhat, inv_std, m = layer._saved()
        if m is False or m is True:   # NOTE: a context of the per-rank forward (eval mode)
            return cls.backward(layer, dy)
        gamma = layer._params["weight"].data[None, :, None, None]
        layer._params["weight"].grad = (dy * xhat).sum(axis=(0, 2, 3))
        layer._params["bias"].grad = dy.sum(axis=(0, 2, 3))
        dxhat = dy * gamma
        # NOTE: each rank's dy is its shard loss's gradient, i.e. of the sum of the ranks'
        # losses: the means below are over every rank's values
        s1 = dxhat.sum(axis=(0, 2, 3))
        s2 = (dxhat * xhat).sum(axis=(0, 2, 3))
        comm.allreduce_mean(layer.backend, [s1, s2], "BatchNorm gradient", key="bn")
        t = dy.dtype.type
        scale = t(comm.size / m)
        return (dxhat - (s1 * scale)[None, :, None, None]
                - xhat * (s2 * scale)[None, :, None, None]) * inv_std

    layer.forward, layer.backward = forward, backward


__all__ = ["init", "world", "rank", "size", "Communicator", "sync_batchnorm", "RankFailed", "PeerLost",
           "launched_size", "mpi_status", "nccl_status", "INSTALL_HINT"]
