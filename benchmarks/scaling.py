"""Data-parallel scaling on this machine: training images/s of the shapes classifier (the
tutorial network, 3x32x32, global batch 64, augmented) with 1 process x 1 thread, 1 process x
2 threads, and ``mpiexec -n 2`` x 1 thread each; for the MPI runs, the time per step spent
waiting for the other rank and reducing the gradients.

    python benchmarks/scaling.py [--backend numba] [--images 3072] [--epochs 2] [--ranks 2]

Each configuration runs in child processes of its own (threads fixed through NUMBA_NUM_THREADS
and OPENBLAS/OMP/MKL_NUM_THREADS before anything is imported); images/s is the median over the
epochs after the first (which compiles and warms up). Needs ``pip install 'polycnn[mpi]'`` for
the MPI rows. A shared machine makes every number noisy: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def child(args) -> None:
    import numpy as np

    import polycnn as pc
    from polycnn import models
    from polycnn.recipes import default_augment

    rank, size = pc.distributed.init()
    x, y = pc.datasets.shapes(n=args.images, image_size=32, seed=0)
    model = models.tutorial((3, 32, 32), 3, backend=args.backend, seed=0)
    opt = pc.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    comm = pc.distributed.world()
    marks = []

    def note(event):
        if event["kind"] == "epoch":
            marks.append((comm.wait_seconds, comm.reduce_seconds))

    history = pc.fit(model, (x, y), epochs=args.epochs, batch_size=args.batch_size, optimizer=opt,
                     augment=default_augment(), seed=0, callback=note, distributed=size > 1)
    if rank != 0:
        return
    steps = -(-args.images // args.batch_size)
    later = slice(1, None) if args.epochs > 1 else slice(None)
    wait = np.diff([0.0] + [m[0] for m in marks])[later]
    reduce = np.diff([0.0] + [m[1] for m in marks])[later]
    print(json.dumps({
        "images_per_s": float(np.median(history["images_per_s"][later])),
        "seconds_per_step": float(np.median(history["seconds"][later])) / steps,
        "wait_per_step": float(np.median(wait)) / steps if size > 1 else None,
        "reduce_per_step": float(np.median(reduce)) / steps if size > 1 else None,
        "threads": model.backend.info().get("threads"),
        "ranks": size}))


def measure(args, ranks: int, threads: int) -> dict:
    env = dict(os.environ)
    for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--backend", args.backend,
           "--images", str(args.images), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size)]
    if ranks > 1:
        mpiexec = Path(sys.executable).parent / "mpiexec"
        mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
        if mpiexec is None:
            return {"error": "no mpiexec (pip install 'polycnn[mpi]')"}
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="numba")
    parser.add_argument("--images", type=int, default=3072)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# data-parallel scaling: tutorial network, shapes 3x32x32, {args.images} images,"
          f" global batch {args.batch_size}, backend {args.backend}, {cores} usable cores;"
          f" median of epochs 2..{args.epochs}")
    rows = [("1 process x 1 thread", 1, 1), (f"1 process x {args.ranks} threads", 1, args.ranks),
            (f"{args.ranks} ranks x 1 thread (mpiexec)", args.ranks, 1)]
    base = None
    header = f"{'configuration':<32} {'images/s':>9} {'vs 1x1':>7} {'ms/step':>8} {'comm ms/step':>13}"
    print(header)
    print("-" * len(header))
    for label, ranks, threads in rows:
        r = measure(args, ranks, threads)
        if "error" in r:
            print(f"{label:<32} error: {r['error']}")
            continue
        base = base or r["images_per_s"]
        comm = "-" if r["wait_per_step"] is None else \
            f"{1e3 * r['wait_per_step']:.2f} ({1e3 * r['reduce_per_step']:.2f})"
        print(f"{label:<32} {r['images_per_s']:>9,.0f} {r['images_per_s'] / base:>6.2f}x"
              f" {1e3 * r['seconds_per_step']:>8.2f} {comm:>13}")
    print("comm ms/step: waiting in collectives (the other rank's compute included), in brackets"
          " the gradient reduction itself")


if __name__ == "__main__":
    main()
