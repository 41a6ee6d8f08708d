"""Where a LeNet-5 training step spends its time: the share outside the backend's conv and pool
ops (layers, loss, optimiser, Python), per backend, measured in one run.

    python benchmarks/step_share.py [--backends numpy,numba] [--steps 40] [--rounds 5]

The conv and pool methods of each backend are wrapped with a timer (synchronised, so a GPU's
queued work is counted where it runs); the rest of the step is everything else.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import polycnn as pc
from polycnn import models


def lenet5(backend):
    """LeNet-5 for 1x28x28 digits and 10 classes (:func:`polycnn.models.lenet5`)."""
    return models.lenet5((1, 28, 28), 10, backend=backend, seed=0)


class OpTimer:
    """Wraps the conv/pool methods of one backend object and adds up their time."""

    OPS = ("conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
           "avgpool2d_forward", "avgpool2d_backward")

    def __init__(self, be):
        self.be, self.seconds = be, 0.0
        for op in self.OPS:
            setattr(be, op, self._timed(getattr(be, op)))

    def _timed(self, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.be.synchronize()
            self.seconds += time.perf_counter() - t0
            return out
        return timed

    def restore(self):
        for op in self.OPS:
            self.be.__dict__.pop(op, None)


def measure(name: str, steps: int, rounds: int, batch: int = 64) -> dict:
    be = pc.get_backend(name)
    timer = OpTimer(be)
    try:
        model = lenet5(be)
        opt = pc.SGD(model.parameters(), lr=0.01, momentum=0.9)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, batch)

        def step():
            opt.zero_grad()
            loss, dlogits = pc.losses.cross_entropy(be, model(x), y)
            model.backward(dlogits)
            opt.step()
            be.synchronize()

        for _ in range(5):  # warm-up (compiles JIT code)
            step()
        shares, step_s = [], []
        for _ in range(rounds):
            timer.seconds = 0.0
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            total = time.perf_counter() - t0
            shares.append(1.0 - timer.seconds / total)
            step_s.append(total / steps)
    finally:
        timer.restore()
    return {"backend": name, "step_ms": float(np.median(step_s)) * 1e3,
            "images_per_s": batch / float(np.median(step_s)),
            "outside_share": float(np.median(shares)), "rounds": shares}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=None,
                        help="comma-separated (default: every available one but cupy-emu)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    names = (args.backends.split(",") if args.backends else
             [n for n, ok in pc.available_backends().items() if ok is True and n != "cupy-emu"])
    print("LeNet-5 training step, batch 64, SGD momentum 0.9, float32; median of rounds")
    print(f"{'backend':9} {'ms/step':>8} {'images/s':>9} {'outside conv+pool':>18}  rounds")
    for name in names:
        r = measure(name, args.steps, args.rounds)
        rounds = ", ".join(f"{s:.1%}" for s in r["rounds"])
        print(f"{name:9} {r['step_ms']:8.2f} {r['images_per_s']:9,.0f} {r['outside_share']:18.1%}"
              f"  {rounds}")


if __name__ == "__main__":
    main()
