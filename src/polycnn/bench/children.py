"""Child processes: ``polycnn bench --threads`` / ``--fast-blas`` / ``--isolate`` measure in
fresh interpreters (thread pools and the BLAS kernel are chosen once, when the libraries load),
each running ``python -m polycnn.bench ... --json`` (never the CLI); their results come back
as JSON and are merged here."""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys

from .cases import LAYERS, PASSES, TRAIN_MODELS
from .engines import add_fma_fractions, add_peak_fractions
from .machine import BUSY_NOTE, best_fma, blas_info, blas_kernel

#: set in a child process that runs the benchmark for a parent, so it does not spawn another
CHILD_MARKER = "POLYCNN_BENCH_CHILD"

#: what every thread pool here reads: OpenBLAS, OpenMP (PyTorch, Numba's omp layer), MKL, Numba
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def combine_repeats(parts: list[dict]) -> list[dict]:
    """``--isolate --repeat N``: the results of N children per engine (run alternately) as one
    result per engine, in first-seen order: each case's time (and a training model's images/s)
    is the median over that engine's children, GFLOP/s follows from it; the best matmul peak
    and every note are kept. An engine measured once passes through unchanged."""
    groups: dict[str, list[dict]] = {}
    for part in parts:
        groups.setdefault(part["engines"][0], []).append(part)
    combined = []
    for group in groups.values():
        if len(group) == 1:
            combined.append(group[0])
            continue
        out = copy.deepcopy(group[-1])
        for i, row in enumerate(out["ops"]):
            times = [g["ops"][i]["ms"] for g in group]
            ms = statistics.median(times)
            if row["gflops"]:
                row["gflops"] *= row["ms"] / ms
            row["ms"] = ms
            row["repeats"] = len(group)
        for i, row in enumerate(out["training"]):
            for key in ("images_per_s", "ms_per_step"):
                if key in row:
                    row[key] = statistics.median(g["training"][i][key] for g in group)
            row["repeats"] = len(group)
        peaks = [g["matmul"] for g in group if g["matmul"]]
        out["matmul"] = max(peaks, key=lambda m: m["gflops"]) if peaks else None
        out["fma"] = best_fma(*(g.get("fma") for g in group))
        notes = list(dict.fromkeys(n for g in group for n in g["notes"]))
        busy = [n for n in notes if n.startswith(BUSY_NOTE)]
        out["notes"] = [n for n in notes if not n.startswith(BUSY_NOTE) or n == busy[0]]
        out["config"]["repeats"] = len(group)
        combined.append(out)
    return combined


def merge_isolated(parts: list[dict]) -> dict:
    """One result from the results of ``--isolate``'s children, one engine each (PyTorch's child
    last, when there is one; repeated children combined first, see :func:`combine_repeats`):
    rows side by side, ratios to the PyTorch child's times, peak fractions against the best
    matmul peak any child measured."""
    parts = combine_repeats(parts)
    merged = copy.deepcopy(parts[0])
    merged.pop("child", None)  # each part ran in a child; none of them is "the" child
    for part in parts[1:]:
        merged["ops"] += part["ops"]
        merged["training"] += part["training"]
        merged["engines"] += part["engines"]
        # NOTE: one busy-machine note is enough (each child writes its own, with its own load)
        busy = any(n.startswith(BUSY_NOTE) for n in merged["notes"])
        merged["notes"] += [n for n in part["notes"] if n not in merged["notes"]
                            and not (busy and n.startswith(BUSY_NOTE))]
        merged["environment"]["backend_threads"].update(part["environment"]["backend_threads"])
        for key in ("torch", "load_average_end"):
            merged["environment"][key] = part["environment"].get(key) or merged["environment"][key]
    peaks = [p["matmul"] for p in parts if p["matmul"]]
    merged["matmul"] = max(peaks, key=lambda m: m["gflops"]) if peaks else None
    if merged["matmul"]:
        add_peak_fractions(merged["ops"], merged["matmul"]["gflops"])
    merged["fma"] = best_fma(*(p.get("fma") for p in parts))
    add_fma_fractions(merged["ops"], merged["fma"]["gflops"] if merged["fma"] else None)
    torch_ops = {(r["layer"], r["pass"]): r["ms"] for r in merged["ops"] if r["engine"] == "torch"}
    torch_train = {r["model"]: r["images_per_s"] for r in merged["training"]
                   if r["engine"] == "torch"}
    for r in merged["ops"]:
        torch_ms = torch_ops.get((r["layer"], r["pass"]))
        r["time_vs_torch"] = r["ms"] / torch_ms if torch_ms else None
    for r in merged["training"]:
        torch_ips = torch_train.get(r["model"])
        r["speed_vs_torch"] = r["images_per_s"] / torch_ips if torch_ips else None
    order = {name: i for i, name in enumerate(merged["engines"])}
    order.update({r["engine"]: len(order) for r in merged["training"] if r["engine"] not in order})
    layer_order = list(LAYERS)
    merged["ops"].sort(key=lambda r: (layer_order.index(r["layer"]), PASSES.index(r["pass"]),
                                      order[r["engine"]]))
    merged["training"].sort(key=lambda r: (list(TRAIN_MODELS).index(r["model"]),
                                           order[r["engine"]]))
    merged["config"]["isolated"] = True
    return merged


def in_child() -> bool:
    return os.environ.get(CHILD_MARKER) == "1"


def child_env(unset=(), threads: int | None = None, extra: dict | None = None
              ) -> tuple[dict, dict]:
    """The environment for a child run: ``unset`` removed, with ``threads`` every thread
    pool's variable set to it, and ``extra`` set; also what changed, for the report."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    changed = {name: None for name in unset}
    if threads is not None:
        for name in THREAD_ENV:
            env[name] = changed[name] = str(threads)
    for name, value in (extra or {}).items():
        env[name] = changed[name] = value
    env[CHILD_MARKER] = "1"
    return env, changed


def run_in_child(argv: list[str], unset=(), threads: int | None = None,
                 extra: dict | None = None) -> dict:
    """Run ``python -m polycnn.bench <argv> --json`` in a child process whose environment differs from this one
    as :func:`child_env` says (thread counts and BLAS kernel choice are read once, when the
    libraries load, so only a fresh process can change them), and return its result with what
    was changed and which BLAS kernel ran here and there. The child's progress passes through
    on stderr."""
    env, changed = child_env(unset, threads, extra)
    proc = subprocess.run([sys.executable, "-m", "polycnn.bench", *argv, "--json"], env=env,
                          stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the benchmark's child process failed with exit code {proc.returncode}")
    result = json.loads(lines[-1])
    result["child"] = {
        "changed": changed,
        "was": {name: os.environ.get(name) for name in changed},
        "kernel_here": blas_kernel(blas_info()),
        "kernel_in_child": blas_kernel(result["environment"]["blas"]),
    }
    return result


# ---- compile targets: every Numba kernel compiled for several CPUs -----------------------------
#
# LLVM picks what to vectorise, and how wide, from the compile target's cost model, so a kernel
# tuned on one CPU family can lose 10x on another with the same instructions (the 2x2 max-pool
# took 8-11 ms compiled for Intel targets, 0.5-1 ms for AMD or generic ones, on one Intel Xeon).
# Each target runs in a child process of its own (Numba fixes the target when it loads) with
# the host's features, so only the cost model differs and every target runs on this CPU.



#: the options of ``python -m polycnn.bench`` that take a value, by their parameter name
VALUE_OPTIONS = (("--backends", "backends"), ("--layers", "layers"), ("--rounds", "rounds"),
                 ("--matmul-size", "matmul_size"), ("--threads", "threads"),
                 ("--device", "device"), ("--precision", "precision"), ("--models", "models"),
                 ("--train-batch", "train_batch"), ("--train-steps", "train_steps"))


def child_argv(params: dict) -> list[str]:
    """The arguments of ``python -m polycnn.bench`` that measure what ``params`` (the options
    of ``polycnn bench``, by parameter name; absent ones default) ask for, for a child process
    of ``--threads`` / ``--fast-blas`` / ``--isolate`` (the environment does their work
    there; :func:`run_in_child` adds ``--json``)."""
    argv = []
    for option, key in VALUE_OPTIONS:
        if params.get(key) is not None:
            argv += [option, str(params[key])]
    argv.append("--ops" if params.get("ops", True) else "--no-ops")
    argv.append("--training" if params.get("training", True) else "--no-training")
    if params.get("startup") is not None:
        argv.append("--startup" if params["startup"] else "--no-startup")
    argv += [flag for flag, key in (("--no-torch", "no_torch"), ("--quick", "quick"),
                                    ("--graph", "graph"), ("--check", "check"))
             if params.get(key)]
    return argv


def run_isolated(params: dict, names: list[str], with_torch: bool) -> dict:
    """``--isolate``: one child process per engine (the backends ``names``, then PyTorch when
    ``with_torch``), ``params["repeat"]`` times, engines alternating (A B C A B C ...), then
    the rows merged (:func:`merge_isolated`). Start-up is not measured in the children."""
    base = child_argv({**params, "backends": None, "startup": False})
    argvs = [base + ["--backends", name, "--no-torch"] for name in names]
    if with_torch:
        argvs.append(base + ["--torch-only"])
    parts = [run_in_child(argv, threads=params.get("threads"))
             for _ in range(params.get("repeat", 1)) for argv in argvs]
    return merge_isolated(parts)
