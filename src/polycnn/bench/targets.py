"""Compile targets: every Numba kernel compiled for several CPUs (``polycnn bench --targets``).

LLVM picks what to vectorise, and how wide, from the compile target's cost model, so a kernel
tuned on one CPU family can lose 10x on another with the same instructions (the 2x2 max-pool
took 8-11 ms compiled for Intel targets, 0.5-1 ms for AMD or generic ones, on one Intel Xeon).
Each target runs in a child process of its own, ``python -m polycnn.bench --kernels-only``
(Numba fixes the target when it loads), with the host's features, so only the cost model
differs and every target runs on this CPU."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from .. import available_backends, get_backend
from ..errors import BackendUnavailable
from .children import child_env
from .kernels import kernel_cases
from .machine import (BUSY_LOAD, BUSY_NOTE, blas_info, cpu_model, isa_flags, load_average,
                      numba_target)
from .timing import _calls_for, _time_round

#: the targets ``polycnn bench --targets`` compares with the host's when none are named: a
#: generic AVX-512 target and AMD's Zen 4 (the kernels were first tuned on AMD machines)
DEFAULT_TARGETS = ("x86-64-v4", "znver4")

#: the host's own target: NUMBA_CPU_NAME unset
HOST_TARGET = "host"

#: a kernel whose time under one target is more than this times its time under another is
#: flagged
TARGET_RATIO = 2.0

#: set in the child process of a target (names the target, for its report)
TARGET_MARKER = "POLYCNN_BENCH_TARGET"


def unknown_cpus(names: list[str]) -> list[str]:
    """The names LLVM does not know as an x86 CPU. LLVM says so only on stderr (and then
    compiles for a generic CPU), so stderr is caught while a target machine is made."""
    import llvmlite.binding as ll

    ll.initialize_native_target()
    target = ll.Target.from_default_triple()
    unknown = []
    for name in names:
        with tempfile.TemporaryFile() as caught:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(caught.fileno(), 2)
            try:
                target.create_target_machine(cpu=name, features="")
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            caught.seek(0)
            if b"not a recognized processor" in caught.read():
                unknown.append(name)
    return unknown


def select_targets(names: list[str] | None) -> list[str]:
    """The targets to compare: ``host`` first, then ``names`` (default
    :data:`DEFAULT_TARGETS`) without repeats. A name that is not an LLVM x86 CPU raises
    ValueError naming it."""
    names = list(DEFAULT_TARGETS) if names is None else names
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", n)]
    if bad:
        raise ValueError(f"--targets: {bad[0]!r} is not a CPU name (letters, digits, '.', '_',"
                         " '-'; e.g. x86-64-v4, znver4, sapphirerapids, host)")
    chosen = list(dict.fromkeys([HOST_TARGET, *names]))
    unknown = unknown_cpus([n for n in chosen if n != HOST_TARGET])
    if unknown:
        raise ValueError(f"--targets: LLVM does not know the CPU {', '.join(map(repr, unknown))}"
                         " (known are e.g. x86-64-v3, x86-64-v4, znver3, znver4, skylake-avx512,"
                         " icelake-server, sapphirerapids; 'host' is this machine's)")
    return chosen


class KernelTimer:
    """Every :func:`kernel_cases` case on the numba backend in this process (compiled for this
    process's target), ready to time: built, called once (compilation or a cache load, timed
    apart) and calibrated so that a round of each lasts at least ``min_round_s``."""

    def __init__(self, divisor: int, min_round_s: float, progress: Callable = lambda msg: None):
        be = get_backend("numba")
        self.target = numba_target()
        progress(f"compiling every kernel for {self.target['cpu_name']}")
        rng = np.random.default_rng(0)
        self.cases = kernel_cases(divisor)
        self.fns, self.first, self.calls = [], [], []
        for case in self.cases:
            fn = case.build(be, rng)
            t0 = time.perf_counter()
            fn()
            self.first.append(time.perf_counter() - t0)
            self.calls.append(_calls_for(fn, lambda: None, min_round_s))
            self.fns.append(fn)
        self.header = {
            "target": self.target,
            "target_label": os.environ.get(TARGET_MARKER, HOST_TARGET),
            "environment": {"cpu": cpu_model(), "isa": isa_flags(), "blas": blas_info(),
                            "threads": be.threads, "load_average": load_average()},
            "kernels": [{"kernel": c.name, "shape": c.shape, "calls_per_round": n,
                         "first_call_s": f} for c, n, f in zip(self.cases, self.calls, self.first)],
            "compile_s": sum(self.first),
            "config": {"divisor": divisor, "min_round_s": min_round_s},
        }

    def round(self) -> list[float]:
        """Seconds per call of every case, one round each, in order."""
        return [_time_round(fn, lambda: None, calls) for fn, calls in zip(self.fns, self.calls)]


def serve_kernels(divisor: int, min_round_s: float, lines, write: Callable,
                  progress: Callable = lambda msg: None) -> None:
    """The child process of one target (``python -m polycnn.bench --kernels-only``): a JSON line with
    :class:`KernelTimer`'s header once the kernels are compiled, then for each ``round`` line
    read from ``lines`` one JSON line ``{"seconds": [...]}``; it ends at the end of input."""
    timer = KernelTimer(divisor, min_round_s, progress)
    write(json.dumps(timer.header))
    for line in lines:
        if line.strip() == "round":
            write(json.dumps({"seconds": timer.round()}))


def target_env(name: str, cache_dir: str, threads: int | None = None) -> dict:
    """The environment of target ``name``'s child: NUMBA_CPU_NAME = ``name`` (unset for the
    host's), always the host's features (so the code runs here and only LLVM's cost model
    changes), a compile cache of its own and, with ``threads``, every thread pool limited."""
    extra = {"NUMBA_CACHE_DIR": cache_dir, TARGET_MARKER: name}
    if name != HOST_TARGET:
        extra["NUMBA_CPU_NAME"] = name
    unset = ("NUMBA_CPU_FEATURES",) + (("NUMBA_CPU_NAME",) if name == HOST_TARGET else ())
    return child_env(unset, threads, extra)[0]


class _TargetChild:
    """One target's child process, driven a round at a time through its stdin."""

    def __init__(self, name: str, argv: list[str], env: dict):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-m", "polycnn.bench", *argv], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.header = self._read()

    def _read(self) -> dict:
        """The child's next JSON line (anything else a library printed is skipped)."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                raise RuntimeError(f"the child process of target {self.name!r} ended (exit"
                                   f" code {code}) before its kernels were timed")
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    pass

    def round(self) -> list[float]:
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return self._read()["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def compare_targets(headers: list[dict], samples: dict) -> dict:
    """One result from each target's header and its per-round samples (target label -> list of
    rounds, each a list of seconds per case): per kernel its median time under every target,
    the ratio of the slowest to the fastest, and whether that exceeds :data:`TARGET_RATIO`."""
    first = headers[0]
    kernels = []
    for i, row in enumerate(first["kernels"]):
        ms = {h["target_label"]: statistics.median(r[i] for r in samples[h["target_label"]]) * 1e3
              for h in headers}
        slow = max(ms, key=ms.get)
        fast = min(ms, key=ms.get)
        ratio = ms[slow] / ms[fast] if ms[fast] > 0 else math.inf
        kernels.append({"kernel": row["kernel"], "shape": row["shape"], "ms": ms,
                        "ratio": ratio, "slowest": slow, "fastest": fast,
                        "flagged": ratio > TARGET_RATIO})
    rounds = min(len(v) for v in samples.values())
    return {
        "targets": {h["target_label"]: {**h["target"], "compile_s": h["compile_s"]}
                    for h in headers},
        "environment": first["environment"],
        "config": {**first["config"], "rounds": rounds, "ratio_limit": TARGET_RATIO},
        "kernels": kernels,
        "flagged": [k["kernel"] + " " + k["shape"] for k in kernels if k["flagged"]],
        "notes": [],
    }


def run_targets(names: list[str] | None, argv: list[str], rounds: int,
                threads: int | None = None, progress: Callable = lambda msg: None) -> dict:
    """``polycnn bench --targets``: one child process per target (the host's first), each
    running ``python -m polycnn.bench <argv>`` (:func:`serve_kernels`) with NUMBA_CPU_NAME set
    and an empty compile cache of its own. The children compile one after the other, then time their
    kernels in turns, a round each (host, target 1, target 2, host, ...), so load from
    elsewhere hits every target alike; each kernel's median round counts."""
    chosen = select_targets(names)
    status = available_backends().get("numba")
    if status is not True:
        raise BackendUnavailable(f"--targets times the numba backend's kernels: {status}")
    root = tempfile.mkdtemp(prefix="polycnn-targets-")
    children = []
    try:
        for name in chosen:
            progress(f"target {name}: a child process compiles every kernel")
            children.append(_TargetChild(name, argv, target_env(
                name, os.path.join(root, name), threads)))
        samples = {child.header["target_label"]: [] for child in children}
        for index in range(max(1, rounds)):
            progress(f"round {index + 1} of {rounds}: every kernel on every target in turn")
            for child in children:
                samples[child.header["target_label"]].append(child.round())
    finally:
        for child in children:
            child.close()
        shutil.rmtree(root, ignore_errors=True)
    result = compare_targets([c.header for c in children], samples)
    loads = [c.header["environment"].get("load_average") for c in children]
    busy = [load for load in loads if load is not None and load >= BUSY_LOAD]
    if busy:
        result["notes"].append(f"{BUSY_NOTE} {max(busy):.1f} while the targets compiled: other"
                               " work shared the CPU; a flag may be noise, rerun when it is"
                               " quiet or with more --rounds")
    return result
