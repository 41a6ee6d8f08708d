"""Data-parallel training (pc.distributed, fit(distributed=True), `mpiexec -n 2 polycnn train`).

Every multi-rank case runs ``mpiexec -n 2`` (the MPICH runtime of the ``mpi`` extra) in a child
process group killed after a timeout, so a hang fails instead of stalling the suite. Without
mpi4py or mpiexec the cases skip, unless POLYCNN_REQUIRE_MPI=1 (CI): then they fail.

- equivalence: 2 ranks x shards of B/2 against 1 process x batch B after 10 steps (augmentation
  and both dropouts on, a last batch split 5/6), numpy and numba, float64 and float32, the
  fast (Allreduce) mode, per-rank and synchronised BatchNorm, and cupy-emu through the NCCL
  stand-in; the deterministic runs repeated for their bytes;
- failures: bad data on one rank, an exception inside one rank's step, one rank killed;
- the CLI: printed once, one checkpoint (and its .best twin) written by rank 0 and loadable
  without MPI, resumed on 1 and on 2 ranks;
- hostile command lines under mpiexec and without mpi4py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import polycnn as pc
from support.hostile import api_case, run, run_cli, run_python, snapshot

import distributed_child as child

HERE = Path(__file__).parent
CHILD = HERE / "distributed_child.py"
REQUIRED = os.environ.get("POLYCNN_REQUIRE_MPI") == "1"


def _mpiexec():
    found = Path(sys.executable).parent / "mpiexec"
    return str(found) if found.exists() else shutil.which("mpiexec")


def _why_not() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'polycnn[mpi]')"
    if _mpiexec() is None:
        return "no mpiexec on PATH or beside the interpreter"
    return None


@pytest.fixture(scope="module")
def mpiexec():
    reason = _why_not()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"POLYCNN_REQUIRE_MPI=1 but {reason}")
        pytest.skip(reason)
    return _mpiexec()


def mpi_run(mpiexec, *args, n=2, flags=(), timeout=90.0, cwd=None, env=None):
    """``mpiexec -n N python ARGS...`` to its end; the Outcome has ``seconds``."""
    t0 = time.monotonic()
    out = run([mpiexec, *flags, "-n", str(n), sys.executable, *args], timeout=timeout, cwd=cwd,
              env={"PYTHONPATH": str(HERE), **(env or {})})
    out.seconds = time.monotonic() - t0
    return out


def error_lines(outcome) -> list[str]:
    return [line for line in outcome.stderr.splitlines() if "error: " in line]


# ---- equivalence ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_ranks(mpiexec, tmp_path_factory):
    """Every run of distributed_child.RUNS on 2 ranks: [rank 0's arrays, rank 1's arrays]."""
    out = tmp_path_factory.mktemp("equivalence") / "eq"
    outcome = mpi_run(mpiexec, str(CHILD), "equivalence", str(out), timeout=240)
    assert outcome.rc == 0 and not outcome.timed_out, str(outcome)
    return [dict(np.load(f"{out}.rank{r}.npz")) for r in range(2)]


def _arrays(found, name, again=False):
    prefix = f"{name}/again/" if again else f"{name}/"
    keys = sorted((k for k in found if k.startswith(prefix) and k[len(prefix):].isdigit()),
                  key=lambda k: int(k[len(prefix):]))
    return [found[k] for k in keys]


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


#: largest difference allowed between 2 ranks and 1 process after the run (the sums over a
#: batch are taken in another order: rounding only)
TOLERANCE = {"float64": 1e-12, "float32": 1e-6}


@pytest.mark.parametrize("name", [n for n in child.RUNS if n != "numpy-float64-batchnorm"])
def test_two_ranks_match_one_process(two_ranks, name):
    backend, dtype, _, _, _ = child.RUNS[name]
    if pc.available_backends()[backend] is not True:
        pytest.skip(f"{backend}: {pc.available_backends()[backend]}")
    one = child.train(name)
    for rank, found in enumerate(two_ranks):
        two = _arrays(found, name)
        assert len(two) == len(one), f"{name}, rank {rank}: {len(two)} arrays, expected {len(one)}"
        for i, (a, b) in enumerate(zip(one, two)):
            assert a.dtype == b.dtype == np.dtype(dtype), f"{name}, array {i}: {a.dtype} {b.dtype}"
            diff = float(np.abs(a.astype(np.float64) - b).max())
            assert diff <= TOLERANCE[dtype], (
                f"{name}, rank {rank}, array {i} of shape {a.shape}: differs from the one-process"
                f" run by {diff:.3g} (tolerance {TOLERANCE[dtype]:g})")
    # NOTE: the one-process run moved its parameters by far more than the tolerance
    start = child.model_for(backend, dtype, child.RUNS[name][2], 12 if backend == "cupy-emu" else 16)
    assert float(np.abs(one[0] - backend_numpy(start, 0)).max()) > 100 * TOLERANCE[dtype]


def backend_numpy(model, i):
    return model.backend.to_numpy(list(model.named_arrays().values())[i])


@pytest.mark.parametrize("name", [n for n, r in child.RUNS.items() if r[4]
                                  and (n.endswith("float64") or n.endswith("float32"))])
def test_deterministic_runs_give_the_same_bytes(two_ranks, name):
    for rank, found in enumerate(two_ranks):
        first, again = _arrays(found, name), _arrays(found, name, again=True)
        assert first and _digest(first) == _digest(again), f"{name}, rank {rank}: a second run differs"
    assert _digest(_arrays(two_ranks[0], name)) == _digest(_arrays(two_ranks[1], name)), \
        f"{name}: ranks 0 and 1 hold different models"


def test_per_rank_batchnorm_keeps_the_ranks_in_step(two_ranks):
    """BatchNorm with each rank's shard statistics is not the one-process run, but the ranks
    hold one model (running statistics averaged after each epoch)."""
    name = "numpy-float64-batchnorm"
    r0, r1 = (_arrays(found, name) for found in two_ranks)
    assert _digest(r0) == _digest(r1), "the ranks' models differ"
    one = child.train(name)
    assert max(float(np.abs(a - b).max()) for a, b in zip(one, r0)) > 1e-9, \
        "per-rank statistics gave the one-process run exactly"


# ---- failures ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, needle", [
    ("bad-data", "NaN or infinite"),
    ("bad-step", "a corrupt image at batch 3"),
], ids=["bad-data-on-rank-1", "exception-in-rank-1s-step"])
def test_a_rank_that_raises_stops_every_rank(mpiexec, tmp_path, mode, needle):
    outcome = mpi_run(mpiexec, str(CHILD), mode, str(tmp_path / "unused.npz"), timeout=60)
    assert not outcome.timed_out, f"hung:\n{outcome}"
    assert outcome.rc == 2, str(outcome)
    lines = error_lines(outcome)
    assert sorted(line.split(":")[0] for line in lines) == ["rank 0", "rank 1"], str(outcome)
    for line in lines:
        assert needle in line, f"{line!r} does not carry the failing rank's message"
    assert any(line.startswith("rank 0: error: rank 1 of 2 stopped the run") for line in lines)
    assert "finished" not in outcome.stdout


@pytest.mark.parametrize("launcher", ["mpiexec", "mpiexec.gforker"],
                         ids=["mpiexec-ends-the-job", "a-launcher-that-does-not-each-survivor-says-so"])
def test_killing_one_rank_stops_the_run(mpiexec, tmp_path, launcher):
    """MPICH's mpiexec (Hydra) kills the other ranks at once and names the dead process; under
    a launcher that leaves them running (MPICH's gforker), each survivor sees its peer gone,
    says so and exits."""
    path = Path(mpiexec).with_name(launcher)
    if not path.exists():
        pytest.skip(f"no {launcher} beside {mpiexec}")
    ckpt = tmp_path / "run.npz"
    outcome = mpi_run(str(path), str(CHILD), "kill", str(ckpt), timeout=60)
    assert not outcome.timed_out and outcome.seconds < 30, f"did not stop in 30 s:\n{outcome}"
    assert outcome.rc != 0, str(outcome)
    assert "finished" not in outcome.stdout, str(outcome)
    if launcher == "mpiexec":
        assert "Killed (signal 9)" in outcome.stdout + outcome.stderr, str(outcome)
    else:
        lines = error_lines(outcome)
        assert len(lines) == 1 and lines[0].startswith("rank 0: error: rank 1 of 2") \
            and "has stopped (killed or crashed)" in lines[0], str(outcome)
    # the checkpoint is the last good one: epoch 1 (rank 1 died in epoch 2), whole, no leftovers
    model = pc.load(str(ckpt))
    assert model.training_state["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]


# ---- the command line -----------------------------------------------------------------------
TRAIN = ("-m", "polycnn.cli.main", "train", "--backend", "numpy", "--n-train", "64",
         "--image-size", "16", "--batch-size", "16")


def test_cli_under_mpiexec_prints_once_writes_one_checkpoint_and_resumes(mpiexec, tmp_path):
    out = tmp_path / "run.npz"
    first = mpi_run(mpiexec, *TRAIN, "--epochs", "1", "--out", str(out), cwd=tmp_path)
    assert first.rc == 0, str(first)
    assert first.stdout.count("epoch  1/1") == 1 and first.stdout.count("test accuracy") == 1, \
        str(first)
    assert first.stdout.count("training tutorial") == 1 and not first.stderr.strip(), str(first)
    assert "2 processes (mpiexec), 8 images each" in first.stdout
    assert sorted(os.listdir(tmp_path)) == ["run.best.npz", "run.npz"]
    model = pc.load(str(out))   # NOTE: this process has never started MPI
    assert model.training_state["epoch"] == 1
    # resumed on one process, then on two again
    second = run_cli("train", "--resume", "--epochs", "2", "--out", str(out), cwd=tmp_path)
    assert second.rc == 0 and "epoch  2/2" in second.stdout, str(second)
    third = mpi_run(mpiexec, "-m", "polycnn.cli.main", "train", "--resume", "--epochs", "3",
                    "--out", str(out), cwd=tmp_path)
    assert third.rc == 0 and third.stdout.count("epoch  3/3") == 1, str(third)
    assert pc.load(str(out)).training_state["epoch"] == 3
    assert sorted(os.listdir(tmp_path)) == ["run.best.npz", "run.npz"]


def test_backends_reports_mpi():
    outcome = run_cli("backends")
    assert outcome.rc == 0, str(outcome)
    line = [ln for ln in outcome.stdout.splitlines() if ln.startswith("data parallel")]
    assert len(line) == 1 and "MPI" in line[0] and "NCCL" in line[0], str(outcome)
    if _why_not() is None:
        assert "MPI yes: mpi4py" in line[0]


def test_train_help_mentions_mpiexec():
    outcome = run_cli("train", "--help")
    assert outcome.rc == 0 and "mpiexec" in outcome.stdout and "--sync-bn" in outcome.stdout


# ---- hostile input --------------------------------------------------------------------------
def _exists(folder):
    (folder / "taken.npz").write_bytes(b"someone else's file")


#: id -> (mpiexec ranks (0: no mpiexec), extra environment, setup, arguments, needles)
HOSTILE = {
    "batch-not-a-multiple-of-the-ranks": (2, {}, None, ["--batch-size", "33"],
                                          ["--batch-size", "multiple of the 2"]),
    "out-exists-rank-0-refuses-for-all": (2, {}, _exists, ["--out", "taken.npz"],
                                          ["taken.npz already exists"]),
    "bad-POLYCNN_MPI_TIMEOUT": (2, {"POLYCNN_MPI_TIMEOUT": "soon"}, None, [],
                                ["POLYCNN_MPI_TIMEOUT", "'soon'"]),
    "mpiexec-without-mpi4py": (0, {"PMI_SIZE": "2", "PMI_RANK": "0"}, None, [],
                               ["mpi4py", "polycnn[mpi]"]),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_command_lines(case, tmp_path, request):
    ranks, env, setup, args, needles = HOSTILE[case]
    if setup is not None:
        setup(tmp_path)
    before = snapshot(tmp_path)
    argv = [*TRAIN[2:], *args]
    if ranks:
        outcome = mpi_run(request.getfixturevalue("mpiexec"), *TRAIN[:2], *argv, n=ranks,
                          env=env, cwd=tmp_path, timeout=60)
        assert not outcome.timed_out and outcome.rc == 2, str(outcome)
        assert "Traceback" not in outcome.stderr, str(outcome)
        lines = error_lines(outcome)
        assert len(lines) == ranks, f"expected one error line per rank:\n{outcome}"
        for line in lines:
            for needle in needles:
                assert needle.lower() in line.lower(), f"{line!r} does not name {needle!r}"
        outcome.assert_bounded()
    else:
        blocker = tmp_path.parent / f"{tmp_path.name}-no-mpi4py" / "mpi4py"
        blocker.mkdir(parents=True)
        (blocker / "__init__.py").write_text("raise ImportError('mpi4py hidden by the test')\n")
        outcome = run_cli(*argv, cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(blocker.parent)})
        outcome.assert_user_error(*needles)
    assert snapshot(tmp_path) == before, f"files changed:\n{outcome}"


@pytest.mark.parametrize("statement, needles", [
    ("pc.fit(pc.models.tutorial((3, 16, 16), 3), pc.datasets.shapes(n=8, image_size=16),"
     " distributed='yes')", ["distributed", "'yes'"]),
    ("pc.fit(pc.models.tutorial((3, 16, 16), 3), pc.datasets.shapes(n=8, image_size=16),"
     " sync_bn=1)", ["sync_bn", "True or False"]),
], ids=["fit-distributed-not-a-bool", "fit-sync-bn-not-a-bool"])
def test_hostile_fit_arguments(statement, needles):
    run_python(api_case(statement)).assert_user_error(*needles)


def test_single_process_init_is_a_no_op():
    """Without mpiexec, init is (0, 1) without starting MPI, and fit(distributed=True) is the
    one-process run."""
    code = """
        import numpy as np, polycnn as pc, sys
        assert pc.distributed.init() == (0, 1)
        x, y = pc.datasets.shapes(n=24, image_size=16, seed=0)
        out = []
        for d in (False, True):
            m = pc.models.tutorial((3, 16, 16), 3, seed=0)
            pc.fit(m, (x, y), batch_size=8, seed=1, distributed=d)
            out.append(np.concatenate([m.backend.to_numpy(p.data).ravel() for p in m.parameters()]))
        assert (out[0] == out[1]).all()
        assert "mpi4py.MPI" not in sys.modules, "MPI was started without a launcher"
        print("ok")
    """
    outcome = run_python(code)
    assert outcome.rc == 0 and "ok" in outcome.stdout, str(outcome)


# ---- NCCL on a real GPU (pytest -m gpu) -------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("deterministic", [True, False], ids=["allgather", "allreduce"])
def test_nccl_engine_on_the_gpu_stays_on_the_device(deterministic):
    """The NCCL calls themselves (one GPU, a communicator of one rank over MPI.COMM_SELF):
    broadcast and mean of CuPy arrays, packed on the device; values unchanged by a mean over one
    rank, every array still a CuPy array."""
    reason = _why_not()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"POLYCNN_REQUIRE_MPI=1 but {reason}")
        pytest.skip(reason)
    from mpi4py import MPI

    be = pc.get_backend("cupy")
    comm = pc.distributed.Communicator(MPI.COMM_SELF, deterministic=deterministic)
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (5,), (2, 2, 2)]]
    arrays = [be.asarray(a) for a in host]
    comm.allreduce_mean(be, arrays)
    comm.broadcast_arrays(be, arrays)
    assert type(comm._nccl).__name__ == "_NcclEngine"
    for a, h in zip(arrays, host):
        assert isinstance(a, be.array_type) and isinstance(comm._buffers["mean"], be.array_type)
        np.testing.assert_array_equal(be.to_numpy(a), h)
