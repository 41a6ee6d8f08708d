"""``polycnn bench``: conv and pool timings, training throughput and start-up time, every backend
side by side with PyTorch CPU, as ratios measured in the same run (see polycnn.bench)."""

from __future__ import annotations

import sys

import click

from polycnn import bench as B

from ._common import echo_json, format_table, json_option


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


def _child_argv(params: dict) -> list[str]:
    """These options again, for the child process of ``--threads`` / ``--fast-blas`` (the
    environment does their work there; ``run_in_child`` adds ``--json``)."""
    argv = ["bench"]
    for option, key in (("--backends", "backends"), ("--layers", "layers"),
                        ("--rounds", "rounds"), ("--matmul-size", "matmul_size"),
                        ("--threads", "threads")):
        if params[key] is not None:
            argv += [option, str(params[key])]
    argv.append("--ops" if params["ops"] else "--no-ops")
    argv.append("--training" if params["training"] else "--no-training")
    if params["startup"] is not None:
        argv.append("--startup" if params["startup"] else "--no-startup")
    argv += [flag for flag, key in (("--no-torch", "no_torch"), ("--quick", "quick"))
             if params[key]]
    return argv


def _isolated(params: dict, backend_names, no_torch: bool) -> dict:
    """``--isolate``: one child process per engine, then the rows merged (see
    :func:`polycnn.bench.merge_isolated`); start-up is measured here as usual."""
    names, _ = B.select_backends(backend_names)
    base = _child_argv({**params, "backends": None, "startup": False})
    argvs = [base + ["--backends", name, "--no-torch"] for name in names]
    if not no_torch and B._import_torch() is not None:
        argvs.append(base + ["--torch-only"])
    parts = []
    for _ in range(params["repeat"]):  # engines alternate: A B C A B C ...
        for argv in argvs:
            try:
                parts.append(B.run_in_child(argv, threads=params["threads"]))
            except RuntimeError as exc:
                raise click.ClickException(str(exc)) from None
    result = B.merge_isolated(parts)
    startup = params["startup"] if params["startup"] is not None else not params["quick"]
    if startup:
        rows, notes = B.measure_startup(names, progress=_progress)
        result["startup"] = rows
        result["notes"] += notes
    return result


def _check_targets_options(targets: str, backends, layers, isolate: bool, fast_blas: bool):
    """--targets times the Numba kernels alone: the options of the op tables do not apply."""
    for given, option in ((backends, "--backends"), (layers, "--layers"), (isolate, "--isolate"),
                          (fast_blas, "--fast-blas")):
        if given:
            raise ValueError(f"--targets {targets} cannot be combined with {option}: it times"
                             " every Numba kernel, each target in a child process of its own")


def _progress(message: str) -> None:
    click.echo(f"bench: {message}", err=True)


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
        argv = ["bench", "--kernels-only"] + (["--quick"] if quick else [])
        try:
            result = B.run_targets(_names(targets, "--targets"), argv,
                                   rounds or (3 if quick else 7), threads=threads,
                                   progress=_progress)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
        if as_json:
            echo_json(result)
        else:
            click.echo(render_targets(result))
        return
    if isolate and not B.in_child():
        if fast_blas:
            raise click.UsageError("--isolate and --fast-blas cannot be combined")
        result = _isolated(click.get_current_context().params, backend_names, no_torch)
    elif (fast_blas or threads) and not B.in_child():
        try:
            result = B.run_in_child(_child_argv(click.get_current_context().params),
                                    unset=B.BLAS_ENV if fast_blas else (), threads=threads)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        options = dict(backends=[] if torch_only else backend_names, layers=layer_names,
                       rounds=rounds, ops=ops,
                       matmul_n=matmul_size, torch=not no_torch, training=training,
                       startup=startup, threads=threads)
        if quick:
            config = B.BenchConfig.quick_defaults(**options)
        else:
            config = B.BenchConfig(**{k: v for k, v in options.items() if v is not None})
        result = B.run(config, progress=_progress)
    if as_json:
        echo_json(result)
    else:
        click.echo(render(result))


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _num(value) -> str:
    """Three significant digits or so, at any scale (GFLOP/s run from 0.01 to thousands)."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def render(result: dict) -> str:
    """The report of a :func:`polycnn.bench.run` result: environment, op table, training
    table, start-up table, notes."""
    env, peak, config = result["environment"], result["matmul"], result["config"]
    threads = ", ".join(f"{k} {'?' if v is None else v}" for k, v in env["backend_threads"].items())
    blas_env = ", ".join(f"{k}={v}" for k, v in env["blas_env"].items() if v is not None)
    out = [
        f"CPU: {env['cpu']}, {env['cores']} cores ({env['usable_cores']} usable); load average"
        f" {_fmt(env['load_average'], '.2f')} at start, {_fmt(env.get('load_average_end'), '.2f')}"
        " at end",
        f"threads: {threads}",
        f"versions: python {env['python']}, numpy {env['numpy']}, numba {env['numba'] or '-'},"
        f" torch {env['torch'] or '-'}",
        f"ISA: {' '.join(env['isa']) if env.get('isa') is not None else '-'};"
        f" Numba target: {B.describe_target(env.get('numba_target'))}",
        f"BLAS: {B.blas_kernel(env['blas'])}" + (f" ({blas_env})" if blas_env else ""),
        f"heap (every engine): {env.get('heap', '-')}",
        (f"each engine in a process of its own (--isolate), each time the median of"
         f" {config['rounds']} rounds"
         + (f"; {config['repeats']} processes per engine, alternating, the median of them"
            if config.get("repeats", 1) > 1 else "")
         if config.get("isolated") else
         f"each time: median of {config['rounds']} interleaved rounds")
        + (f"; batch sizes / {config['batch_divisor']} (--quick)"
           if config["batch_divisor"] > 1 else ""),
    ]
    fma = result.get("fma")
    if fma:
        out.insert(5, f"FMA peak: {fma['gflops']:.0f} GFLOP/s on {fma['threads']} threads,"
                      f" {fma['gflops_1_thread']:.0f} on 1 (float32 FMAs on {fma['accumulators']}"
                      f" independent {fma['lanes']}-float registers, best before and after the"
                      f" ops); % FMA = GFLOP/s over the {fma['threads']}-thread value")
    if peak:
        out.insert(5, f"matmul peak: numpy.matmul {peak['n']}^3 float32 = {peak['gflops']:.0f}"
                      f" GFLOP/s (best of {peak['repeats']} before the ops and"
                      f" {peak['repeats']} after: {peak['gflops_before']:.0f},"
                      f" {peak['gflops_after']:.0f}); % peak = GFLOP/s over it")
    has_torch = "torch" in result["engines"]

    if result["ops"]:
        headers = ["layer", "pass", "shape", "engine", "ms", "GFLOP/s", "% peak"]
        headers += ["% FMA"] if fma else []
        headers += ["time/torch"] if has_torch else []
        rows, last = [], None
        for r in result["ops"]:
            key = (r["layer"], r["pass"])
            row = ["", "", ""] if key == last else [r["layer"], r["pass"], r["shape"]]
            last = key
            percent = None if r["peak_fraction"] is None else 100 * r["peak_fraction"]
            row += [r["engine"], _ms(r["ms"]), _num(r["gflops"]), _num(percent)]
            if fma:
                fraction = r.get("fma_fraction")
                row += [_num(None if fraction is None else 100 * fraction)]
            row += [_fmt(r["time_vs_torch"], ".2f")] if has_torch else []
            rows.append(row)
        out += ["", "conv and max pool, float32" + (" (time/torch < 1: faster than PyTorch)"
                                                    if has_torch else ""),
                format_table(headers, rows)]

    if result["training"]:
        headers = ["model", "input", "batch", "engine", "images/s", "ms/step"]
        headers += ["speed/torch"] if has_torch else []
        rows, last = [], None
        for r in result["training"]:
            row = ["", "", ""] if r["model"] == last else [r["model"], r["input"], r["batch"]]
            last = r["model"]
            row += [r["engine"], f"{r['images_per_s']:.0f}", _ms(r["ms_per_step"])]
            row += [_fmt(r["speed_vs_torch"], ".2f")] if has_torch else []
            rows.append(row)
        out += ["", "training throughput, SGD momentum 0.9, float32"
                + (" (speed/torch > 1: faster than PyTorch)" if has_torch else ""),
                format_table(headers, rows)]

    if result["startup"]:
        headers = ["backend", "cold s", "cold first call s", "warm s", "warm first call s",
                   "compile s"]
        rows = [[r["backend"], f"{r['cold']['process_s']:.2f}",
                 f"{r['cold']['first_call_s']:.2f}", f"{r['warm']['process_s']:.2f}",
                 f"{r['warm']['first_call_s']:.2f}", f"{r['compile_s']:.2f}"]
                for r in result["startup"]]
        out += ["", "start-up: a fresh process imports polycnn, gets the backend, runs a tiny conv"
                " and pool fwd+bwd; cold = empty compile caches, warm = the caches cold left",
                format_table(headers, rows)]

    if result.get("child"):
        child = result["child"]
        changes = ", ".join(
            (f"{k} unset" if v is None else f"{k}={v}") + f" (was {child['was'][k] or 'not set'})"
            for k, v in child["changed"].items())
        out += ["", f"measured in a child process with {changes}",
                f"BLAS kernel in that child: {child['kernel_in_child']};"
                f" here: {child['kernel_here']}"]

    out += [""] + [f"note: {n}" for n in result["notes"]] if result["notes"] else []
    return "\n".join(out)


def render_targets(result: dict) -> str:
    """The report of :func:`polycnn.bench.run_targets`: each target, then one row per kernel
    with its time under every target and the slowest/fastest ratio, flagged above the limit."""
    env, config = result["environment"], result["config"]
    names = list(result["targets"])
    limit = config["ratio_limit"]
    out = [f"CPU: {env['cpu']}; ISA: {' '.join(env['isa']) if env.get('isa') is not None else '-'};"
           f" {env['threads']} threads; load average {_fmt(env.get('load_average'), '.2f')}",
           f"every Numba kernel, float32, batch sizes / {config['divisor']}; each target in a"
           f" child process of its own with the host's features and an empty compile cache;"
           f" time per call, median of {config['rounds']} rounds, the targets taking turns"]
    for name, target in result["targets"].items():
        out.append(f"target {name}: {B.describe_target(target)}; compiling and first calls"
                   f" {target['compile_s']:.1f} s")
    headers = ["kernel", "shape"] + [f"{n} ms" for n in names] + ["slowest/fastest", ""]
    rows = []
    for k in result["kernels"]:
        flag = f"FLAG: {k['slowest']} {k['ratio']:.1f}x {k['fastest']}" if k["flagged"] else ""
        rows.append([k["kernel"], k["shape"]] + [_ms(k["ms"][n]) for n in names]
                    + [f"{k['ratio']:.2f}", flag])
    out += ["", format_table(headers, rows), ""]
    if result["flagged"]:
        out.append(f"{len(result['flagged'])} kernel(s) differ by more than {limit:g}x between"
                   f" targets: {'; '.join(result['flagged'])}")
    else:
        out.append(f"no kernel differs by more than {limit:g}x between targets")
    out += [f"note: {n}" for n in result["notes"]]
    return "\n".join(out)


COMMANDS = [bench]
