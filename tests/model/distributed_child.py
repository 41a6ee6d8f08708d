"""The program each rank runs in tests/model/test_distributed.py (``mpiexec -n 2 python
distributed_child.py MODE OUT``), and the runs the tests repeat in one process to compare.

Modes: ``equivalence`` (every run of :data:`RUNS`, parameters of each rank saved to
OUT.rankR.npz), ``bad-data`` (rank 1's images hold a NaN), ``bad-step`` (rank 1's augmentation
raises at its 3rd batch), ``kill`` (rank 1 kills itself with SIGKILL in the 2nd epoch; rank 0
writes the checkpoint OUT after every epoch). A failure prints ``rank R: error: <message>`` and
exits 2 (exit 3 for PeerLost).
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

import polycnn as pc

#: name -> (backend, dtype, BatchNorm, sync_bn, deterministic)
RUNS = {
    "numpy-float64": ("numpy", "float64", False, False, True),
    "numba-float64": ("numba", "float64", False, False, True),
    "numpy-float32": ("numpy", "float32", False, False, True),
    "numba-float32": ("numba", "float32", False, False, True),
    "numpy-float64-fast": ("numpy", "float64", False, False, False),
    "cupy-emu-float32": ("cupy-emu", "float32", False, False, True),
    "numpy-float64-batchnorm": ("numpy", "float64", True, False, True),
    "numpy-float64-sync-bn": ("numpy", "float64", True, True, True),
}
#: 75 training images in global batches of 16: four full batches and one of 11 (shards of 5
#: and 6 on two ranks); 21 validation images (10 and 11)
N_TRAIN, N_VAL, BATCH, EPOCHS = 75, 21, 16, 2


def say_error(rank: int, exc: BaseException) -> None:
    """One write of the whole line: print() writes the text and its newline separately to the
    unbuffered stderr, and the other rank's line could land between them in mpiexec's stream."""
    os.write(2, f"rank {rank}: error: {exc}\n".encode())


def data(dtype, size=16):
    x, y = pc.datasets.shapes(n=N_TRAIN + N_VAL, image_size=size, seed=0)
    x = x.astype(dtype)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def model_for(backend, dtype, batchnorm, size=16):
    conv = [pc.Conv2d(3, 4, 3, padding=1)] + ([pc.BatchNorm2d(4)] if batchnorm else [])
    return pc.Sequential(*conv, pc.ReLU(), pc.MaxPool2d(2), pc.Dropout2d(0.25), pc.Flatten(),
                         pc.Dropout(0.3), pc.Linear(4 * (size // 2) ** 2, 3),
                         backend=backend, seed=1, dtype=dtype)


def train(name, distributed=False):
    """One run of RUNS; -> the model's arrays (parameters, then BatchNorm buffers) on the host."""
    backend, dtype, batchnorm, sync_bn, deterministic = RUNS[name]
    if backend == "cupy-emu":   # NOTE: the emulator is slow: smaller images, one epoch
        train_set, val = data(dtype, 12)
        model, epochs = model_for(backend, dtype, batchnorm, 12), 1
    else:
        train_set, val = data(dtype)
        model, epochs = model_for(backend, dtype, batchnorm), EPOCHS
    if distributed:
        world = pc.distributed.world()
        distributed = pc.distributed.Communicator(world.comm, deterministic=deterministic)
    opt = pc.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pc.fit(model, train_set, epochs=epochs, batch_size=BATCH, optimizer=opt, val=val, seed=3,
           augment=pc.Augment(hflip=0.5, vflip=0.5, shear=0.2, rotate=10, translate=0.1),
           distributed=distributed, sync_bn=sync_bn)
    arrays = [model.backend.to_numpy(a) for a in model.named_arrays().values()]
    if distributed and backend == "cupy-emu":
        assert type(distributed._nccl).__name__ == "_EmulatedNcclEngine", distributed._nccl
    return arrays


def main(mode, out):
    rank, size = pc.distributed.init()
    assert size == 2, size
    if mode == "equivalence":
        found = {}
        for name in RUNS:
            arrays = train(name, distributed=True)
            for i, a in enumerate(arrays):
                found[f"{name}/{i}"] = a
            if name.endswith("float64") or name.endswith("float32"):
                again = train(name, distributed=True)   # NOTE: a second run, for its bytes
                for i, a in enumerate(again):
                    found[f"{name}/again/{i}"] = a
        np.savez(f"{out}.rank{rank}.npz", **found)
        return
    train_set, val = data("float32")
    model = model_for("numpy", "float32", False)
    calls = [0]

    def augment(x, rng):
        calls[0] += 1
        if rank == 1 and mode == "bad-step" and calls[0] == 3:
            raise ValueError("augment: a corrupt image at batch 3")
        if rank == 1 and mode == "kill" and calls[0] == 7:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    if mode == "bad-data" and rank == 1:
        x, y = train_set
        x = x.copy()
        x[5, 1, 2, 3] = np.nan
        train_set = (x, y)
    try:
        pc.fit(model, train_set, epochs=3, batch_size=BATCH, val=val, seed=0, augment=augment,
               checkpoint=out if mode == "kill" else None, distributed=True)
    except pc.distributed.PeerLost as exc:
        say_error(rank, exc)
        sys.exit(3)
    except (ValueError, RuntimeError) as exc:
        say_error(rank, exc)
        sys.exit(2)
    print(f"rank {rank}: finished", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
