"""One whole run: pick the backends, build the engines, measure the peaks, the ops, training
and start-up, and return the JSON-able result that :mod:`.report` prints."""

from __future__ import annotations

from typing import Callable

from .. import available_backends, get_backend
from ..backends import _heap
from ..errors import BackendUnavailable
from .cases import EXCLUDED_BY_DEFAULT, TORCH_HINT, BenchConfig, select_layers, select_models
from .engines import (PRECISIONS, BackendEngine, TorchEngine, _import_torch, add_fma_fractions,
                      add_peak_fractions, measure_ops)
from .machine import (BUSY_LOAD, BUSY_NOTE, _version, best_fma, environment, fma_peak,
                      load_average, matmul_peak, usable_cores)
from .startup import measure_startup
from .training import measure_training


def select_backends(names: list[str] | None) -> tuple[list[str], list[str]]:
    """The backends to run and notes on the ones skipped. Unknown names raise
    ``BackendUnavailable`` listing the known ones."""
    status = available_backends()
    notes = []
    if names is None:
        chosen = []
        for name, ok in status.items():
            if name in EXCLUDED_BY_DEFAULT:
                notes.append(f"{name} not run: {EXCLUDED_BY_DEFAULT[name]}")
            elif ok is True:
                chosen.append(name)
            else:
                notes.append(f"{name} skipped: {' '.join(str(ok).split())}")
        return chosen, notes
    unknown = [n for n in names if n not in status]
    if unknown:
        raise BackendUnavailable(
            f"--backends: unknown backend {', '.join(map(repr, unknown))}; known backends:"
            f" {', '.join(status)}")
    chosen = []
    for name in dict.fromkeys(names):
        if status[name] is True:
            chosen.append(name)
        else:
            notes.append(f"{name} skipped: {' '.join(str(status[name]).split())}")
    return chosen, notes


def check_device_options(device: str, precision: str) -> None:
    """``device`` is "cpu", "cuda" or "cuda:N"; ``precision`` one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not (kind == "cuda" and index.isdigit())):
        raise ValueError(f"--device: expected cpu, cuda or cuda:N, got {device!r}")


def config_from_options(*, backends=None, layers=None, rounds=None, matmul_size=None, ops=True,
                        no_torch=False, training=True, startup=None, quick=False, threads=None,
                        torch_only=False, **more) -> BenchConfig:
    """The :class:`BenchConfig` of the command-line options (``polycnn bench`` and
    ``python -m polycnn.bench``, by parameter name; ``more``: the other BenchConfig fields);
    ``quick`` starts from :meth:`BenchConfig.quick_defaults`. Bad names raise here, before
    anything is measured."""
    select_layers(layers)
    select_models(more.get("models"))
    check_device_options(more.get("device") or "cpu", more.get("precision") or "float32")
    options = dict(backends=[] if torch_only else backends, layers=layers, rounds=rounds,
                   ops=ops, matmul_n=matmul_size, torch=not no_torch, training=training,
                   startup=startup, threads=threads, **more)
    if quick:
        return BenchConfig.quick_defaults(**options)
    return BenchConfig(**{k: v for k, v in options.items() if v is not None})


def _engines(names: list[str], config: BenchConfig, threads: int, notes: list[str]):
    engines = [BackendEngine(get_backend(n), config.precision) for n in names]
    torch_module = None
    if config.torch:
        torch_module = _import_torch()
        if torch_module is None:
            notes.append(f"PyTorch is not installed: {TORCH_HINT}")
        else:
            engines.append(TorchEngine(torch_module, threads, config.device, config.precision))
    return engines, torch_module


def _measure_ops_and_peaks(engines, layers, config: BenchConfig, threads: int, progress):
    """The op rows, with the matmul and FMA peaks measured before and after them."""
    # NOTE: measured before and after the ops and the best counts, so a burst of load from
    # elsewhere during one of them does not lower the peak (and inflate every fraction)
    progress(f"numpy.matmul {config.matmul_n}^3 float32 (the machine's peak)"
             " and the FMA probe")
    before = matmul_peak(config.matmul_n, config.matmul_repeats)
    fma_before = fma_peak(threads, 0.02 if config.quick else 0.05)
    ops = measure_ops(engines, layers, config, progress)
    progress(f"numpy.matmul {config.matmul_n}^3 float32 and the FMA probe again")
    after = matmul_peak(config.matmul_n, config.matmul_repeats)
    fma = best_fma(fma_before, fma_peak(threads, 0.02 if config.quick else 0.05))
    peak = dict(max(before, after, key=lambda m: m["gflops"]),
                gflops_before=before["gflops"], gflops_after=after["gflops"])
    add_peak_fractions(ops, peak["gflops"])
    add_fma_fractions(ops, fma["gflops"] if fma else None)
    return ops, peak, fma


def _describe_device(torch, device: str) -> str:
    """The GPU PyTorch runs on, with the CUDA and cuDNN versions it was built with."""
    return (f"{torch.cuda.get_device_name(torch.device(device))}, CUDA {torch.version.cuda},"
            f" cuDNN {torch.backends.cudnn.version()}")


def _config_record(config: BenchConfig) -> dict:
    record = {"rounds": config.rounds, "quick": config.quick,
              "batch_divisor": config.batch_divisor, "min_round_s": config.min_round_s,
              "train_steps": config.train_steps}
    # NOTE: only what differs from a CPU run, so a CPU run's result is as it always was
    if config.device != "cpu" or config.precision != "float32" or config.graph or config.check:
        record.update(device=config.device, precision=config.precision, graph=config.graph,
                      check=config.check)
    return record


def run(config: BenchConfig, progress: Callable = lambda msg: None) -> dict:
    """Measure everything ``config`` asks for; returns the JSON-able dict that ``polycnn bench``
    prints as tables (or as is, with ``--json``)."""
    layers = select_layers(config.layers)
    # NOTE: an empty list (not None) measures PyTorch alone: the child of --isolate that does so
    names, notes = select_backends(config.backends) if config.backends != [] else ([], [])
    if not names and not (config.backends == [] and config.torch):
        raise BackendUnavailable("no backend to benchmark: " + "; ".join(notes))
    threads = config.threads or usable_cores()
    # NOTE: every engine, PyTorch included, runs with the heap setting the CPU backends choose
    # (in --isolate's PyTorch child too), so the comparison is between kernels, not allocators
    _heap.keep_freed_blocks()
    engines, torch_module = _engines(names, config, threads, notes)
    infos = {e.name: e.backend.info() for e in engines if not e.is_torch}
    env = environment(threads, infos,
                      torch_module.__version__ if torch_module else _version("torch"))
    if torch_module is not None:
        env["backend_threads"]["torch"] = torch_module.get_num_threads()
        if config.device != "cpu":
            env["torch_device"] = _describe_device(torch_module, config.device)
    ops, peak, fma = ([], None, None) if not config.ops else _measure_ops_and_peaks(
        engines, layers, config, threads, progress)
    result = {"config": _config_record(config), "environment": env,
              "engines": [e.name for e in engines], "matmul": peak, "fma": fma, "ops": ops,
              "training": [], "startup": [], "notes": notes}
    if config.training:
        result["training"], train_notes = measure_training(engines, config, torch_module,
                                                           progress)
        notes.extend(train_notes)
    if config.startup:
        result["startup"], start_notes = measure_startup(names, progress=progress)
        notes.extend(start_notes)
    env["load_average_end"] = load_average()
    if env["load_average"] is not None and env["load_average"] >= BUSY_LOAD:
        notes.append(
            f"{BUSY_NOTE} {env['load_average']:.1f} on {env['usable_cores']} cores before"
            " the run: other processes shared the CPU, which slows multi-threaded code most;"
            " rerun when the machine is idle, or compare with --threads 1")
    return result
