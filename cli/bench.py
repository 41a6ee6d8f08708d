"""``polycnn bench``: conv and pool timings, training throughput and start-up time, every backend
side by side with PyTorch CPU, as ratios measured in the same run. This module parses the
options and prints; the measuring and the tables are the library's (:mod:`polycnn.bench`)."""

from __future__ import annotations

import sys

import click

from polycnn import bench as B
from polycnn.bench.report import render, render_targets

from ._common import echo_json, json_option

__all__ = ["bench", "render", "render_targets", "COMMANDS"]


def _names(value, option: str):
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ValueError(f"{option}: expected comma-separated names, got {value!r}")
    return names


#: --rounds and --repeat above these are typos: the default is 7 rounds, one process per engine
MAX_ROUNDS, MAX_REPEAT = 1000, 100


def _check_sizes(threads, matmul_size, rounds=None, repeat=1) -> None:
    """--threads within the machine's cores (more measures contention, and OpenMP starts them
    all), --matmul-size's three float32 matrices within the memory limit, --rounds and
    --repeat below MAX_ROUNDS and MAX_REPEAT."""
    import os

    from polycnn import limits

    for value, option, most in ((rounds, "--rounds", MAX_ROUNDS), (repeat, "--repeat", MAX_REPEAT)):
        if value is not None and value > most:
            raise click.BadParameter(f"must be at most {most:,}, got {value:,}", param_hint=option)

    cores = os.cpu_count() or 1
    if threads is not None and threads > cores:
        raise click.BadParameter(f"must be at most the {cores} cores of this machine, got {threads:,}",
                                 param_hint="--threads")
    if matmul_size is not None:
        limits.check_memory(f"--matmul-size {matmul_size}", f"three {matmul_size:,}^2 float32"
                            " matrices", 3 * 4 * matmul_size ** 2)


def _check_targets_options(targets: str, backends, layers, isolate: bool, fast_blas: bool):
    """--targets times the Numba kernels alone: the options of the op tables do not apply."""
    for given, option in ((backends, "--backends"), (layers, "--layers"), (isolate, "--isolate"),
                          (fast_blas, "--fast-blas")):
        if given:
            raise ValueError(f"--targets {targets} cannot be combined with {option}: it times"
                             " every Numba kernel, each target in a child process of its own")


def _progress(message: str) -> None:
    click.echo(f"bench: {message}", err=True)


def _in_children(call):
    """``call()``, a measurement in child processes, with a failed child as a one-line error."""
    try:
        return call()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


def _targets(targets: str, quick: bool, rounds, threads) -> dict:
    argv = ["--kernels-only"] + (["--quick"] if quick else [])
    return _in_children(lambda: B.run_targets(_names(targets, "--targets"), argv,
                                              rounds or (3 if quick else 7), threads=threads,
                                              progress=_progress))


def _isolated(params: dict, backend_names, no_torch: bool) -> dict:
    """``--isolate``: one child process per engine, then the rows merged (see
    :func:`polycnn.bench.run_isolated`); start-up is measured here as usual."""
    names, _ = B.select_backends(backend_names)
    with_torch = not no_torch and B._import_torch() is not None
    result = _in_children(lambda: B.run_isolated(params, names, with_torch))
    startup = params["startup"] if params["startup"] is not None else not params["quick"]
    if startup:
        rows, notes = B.measure_startup(names, progress=_progress)
        result["startup"] = rows
        result["notes"] += notes
    return result


def _measure(params: dict, backend_names, layer_names) -> dict:
    """The result of ``polycnn bench`` without --targets: here, or in child processes."""
    if params["isolate"] and not B.in_child():
        if params["fast_blas"]:
            raise click.UsageError("--isolate and --fast-blas cannot be combined")
        return _isolated(params, backend_names, params["no_torch"])
    if (params["fast_blas"] or params["threads"]) and not B.in_child():
        return _in_children(lambda: B.run_in_child(
            B.child_argv(params), unset=B.BLAS_ENV if params["fast_blas"] else (),
            threads=params["threads"]))
    keys = ("rounds", "matmul_size", "ops", "no_torch", "training", "startup", "quick",
            "threads", "torch_only")
    config = B.config_from_options(backends=backend_names, layers=layer_names,
                                   **{k: params[k] for k in keys})
    return B.run(config, progress=_progress)


@click.command()
@click.option("--backends", default=None, metavar="A,B",
              help="comma-separated backends (default: every available one except cupy-emu)")
@click.option("--layers", default=None, metavar="A,B",
              help=f"comma-separated layers of {', '.join(B.LAYERS)} (default: all)")
@click.option("--rounds", type=click.IntRange(min=1), default=None, metavar="N",
              help="interleaved rounds per measurement; the median counts (default 7, --quick 3)")
@click.option("--matmul-size", "matmul_size", type=click.IntRange(min=16), default=None,
              metavar="N", help="numpy.matmul N^3 float32 for the machine's peak"
                                " (default 4096, --quick 2048)")
@click.option("--ops/--no-ops", default=True, show_default=True,
              help="conv and pool timings (and the matmul peak they are compared with)")
@click.option("--no-torch", "no_torch", is_flag=True, help="do not compare with PyTorch CPU")
@click.option("--training/--no-training", default=True, show_default=True,
              help="training throughput of LeNet-5 and the shapes CNN")
@click.option("--startup/--no-startup", default=None,
              help="cold and warm start-up time per backend (default: on, off with --quick)")
@click.option("--quick", is_flag=True, help="fewer rounds, smaller batches: a smoke run")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="threads for every backend and PyTorch (default: all cores); runs in a child"
                   " process with OPENBLAS/OMP/MKL/NUMBA_NUM_THREADS=N")
@click.option("--fast-blas", "fast_blas", is_flag=True,
              help="re-run in a child process with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset"
                   " there, and say which OpenBLAS kernel ran")
@click.option("--isolate", is_flag=True,
              help="measure each engine (every backend, then PyTorch) in a child process of its"
                   " own, one after the other: no engine's idle worker threads (OpenBLAS, OpenMP)"
                   " slow the next; not interleaved, so compare on a quiet machine")
@click.option("--repeat", type=click.IntRange(min=1), default=1, metavar="N",
              help="with --isolate: run every engine's process N times, engines alternating,"
                   " and take each case's median over them (steadier on a busy machine)")
@click.option("--targets", "targets", is_flag=False, flag_value=",".join(B.DEFAULT_TARGETS),
              default=None, metavar="[A,B]",
              help="instead of the tables: time every Numba kernel compiled for the host's CPU"
                   " and for these LLVM CPU names (default"
                   f" {','.join(B.DEFAULT_TARGETS)}), each in a child process of its own, and"
                   f" flag a kernel whose times differ by more than {B.TARGET_RATIO:g}x")
@click.option("--torch-only", "torch_only", is_flag=True, hidden=True,
              help="PyTorch alone (the last child of --isolate)")
@click.option("--kernels-only", "kernels_only", is_flag=True, hidden=True,
              help="time the Numba kernels for this process's target (a child of --targets)")
@json_option
def bench(backends, layers, rounds, matmul_size, ops, no_torch, training, startup, quick,
          threads, fast_blas, isolate, repeat, targets, torch_only, kernels_only, as_json):
    """Time conv/pool forward and forward+backward on the layers of notes/perf-baseline.md,
    training throughput, and start-up time, on every backend and PyTorch CPU, in one run
    (or, with --targets, every Numba kernel under several compile targets)."""
    backend_names, layer_names = _names(backends, "--backends"), _names(layers, "--layers")
    # fail on bad names here, before any measuring (or a child process)
    B.select_layers(layer_names)
    B.select_backends(backend_names)
    _check_sizes(threads, matmul_size, rounds, repeat)
    if repeat > 1 and not isolate:
        raise ValueError(f"--repeat {repeat} needs --isolate (without it the engines'"
                         " rounds are interleaved in one process already)")
    if kernels_only:
        B.serve_kernels(16 if quick else 4, 0.01 if quick else 0.05, sys.stdin,
                        lambda line: click.echo(line), progress=_progress)
        return
    if targets is not None:
        _check_targets_options(targets, backends, layers, isolate, fast_blas)
        result = _targets(targets, quick, rounds, threads)
    else:
        result = _measure(click.get_current_context().params, backend_names, layer_names)
    if as_json:
        echo_json(result)
    else:
        click.echo(render_targets(result) if targets is not None else render(result))


COMMANDS = [bench]
