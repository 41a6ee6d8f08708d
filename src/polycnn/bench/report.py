"""The report of a run as text: the environment, then the op, training and start-up tables,
then the notes (:func:`render`), and the report of ``--targets`` (:func:`render_targets`)."""

from __future__ import annotations

from .machine import blas_kernel, describe_target


def format_table(headers, rows) -> str:
    """Left-aligned text columns under a header line and a rule of dashes."""
    table = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    widths = [max(map(len, column)) for column in zip(*table)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in table]
    return "\n".join(lines[:1] + ["  ".join("-" * width for width in widths)] + lines[1:])


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _num(value) -> str:
    """Three significant digits or so, at any scale (GFLOP/s run from 0.01 to thousands)."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _percent(fraction) -> str:
    return _num(None if fraction is None else 100 * fraction)


def _timing_line(config: dict) -> str:
    if config.get("isolated"):
        line = (f"each engine in a process of its own (--isolate), each time the median of"
                f" {config['rounds']} rounds")
        if config.get("repeats", 1) > 1:
            line += (f"; {config['repeats']} processes per engine, alternating, the median of"
                     " them")
    else:
        line = f"each time: median of {config['rounds']} interleaved rounds"
    if config["batch_divisor"] > 1:
        line += f"; batch sizes / {config['batch_divisor']} (--quick)"
    return line


def _environment_lines(result: dict) -> list[str]:
    env, peak, fma, config = result["environment"], result["matmul"], result.get("fma"), \
        result["config"]
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
        f" Numba target: {describe_target(env.get('numba_target'))}",
        f"BLAS: {blas_kernel(env['blas'])}" + (f" ({blas_env})" if blas_env else ""),
    ]
    if peak:
        out.append(f"matmul peak: numpy.matmul {peak['n']}^3 float32 = {peak['gflops']:.0f}"
                   f" GFLOP/s (best of {peak['repeats']} before the ops and"
                   f" {peak['repeats']} after: {peak['gflops_before']:.0f},"
                   f" {peak['gflops_after']:.0f}); % peak = GFLOP/s over it")
    if fma:
        out.append(f"FMA peak: {fma['gflops']:.0f} GFLOP/s on {fma['threads']} threads,"
                   f" {fma['gflops_1_thread']:.0f} on 1 (float32 FMAs on {fma['accumulators']}"
                   f" independent {fma['lanes']}-float registers, best before and after the"
                   f" ops); % FMA = GFLOP/s over the {fma['threads']}-thread value")
    out.append(f"heap (every engine): {env.get('heap', '-')}")
    if "device" in config:
        out.append(f"PyTorch on {config['device']}"
                   + (f" ({env['torch_device']})" if env.get("torch_device") else "")
                   + f"; convolutions in {config['precision']} on every engine"
                   + ("; +graph: the training step as a captured CUDA graph (pc.CapturedStep)"
                      if config.get("graph") else "")
                   + ("; rel err = max |y - y_torch| / max |y_torch| of the forward"
                      if config.get("check") else ""))
    return out + [_timing_line(config)]


def _ops_table(result: dict, has_torch: bool) -> list[str]:
    fma = result.get("fma")
    headers = ["layer", "pass", "shape", "engine", "ms", "GFLOP/s", "% peak"]
    headers += ["% FMA"] if fma else []
    headers += ["time/torch"] if has_torch else []
    check = has_torch and result["config"].get("check")
    headers += ["rel err"] if check else []
    rows, last = [], None
    for r in result["ops"]:
        key = (r["layer"], r["pass"])
        row = ["", "", ""] if key == last else [r["layer"], r["pass"], r["shape"]]
        last = key
        row += [r["engine"], _ms(r["ms"]), _num(r["gflops"]), _percent(r["peak_fraction"])]
        row += [_percent(r.get("fma_fraction"))] if fma else []
        row += [_fmt(r["time_vs_torch"], ".2f")] if has_torch else []
        row += [_fmt(r.get("rel_err_vs_torch"), ".1e")] if check else []
        rows.append(row)
    precision = result["config"].get("precision", "float32")
    return ["", f"conv and max pool, {precision}" + (" (time/torch < 1: faster than PyTorch)"
                                                     if has_torch else ""),
            format_table(headers, rows)]


def _training_table(result: dict, has_torch: bool) -> list[str]:
    headers = ["model", "input", "batch", "engine", "images/s", "ms/step"]
    headers += ["speed/torch"] if has_torch else []
    rows, last = [], None
    for r in result["training"]:
        row = ["", "", ""] if r["model"] == last else [r["model"], r["input"], r["batch"]]
        last = r["model"]
        row += [r["engine"], f"{r['images_per_s']:.0f}", _ms(r["ms_per_step"])]
        row += [_fmt(r["speed_vs_torch"], ".2f")] if has_torch else []
        rows.append(row)
    precision = result["config"].get("precision", "float32")
    title = "training throughput, SGD momentum 0.9, float32" + (
        "" if precision == "float32" else f" ({precision} convolutions in +graph and torch)")
    return ["", title + (" (speed/torch > 1: faster than PyTorch)" if has_torch else ""),
            format_table(headers, rows)]


def _startup_table(result: dict) -> list[str]:
    headers = ["backend", "cold s", "cold first call s", "warm s", "warm first call s",
               "compile s"]
    rows = [[r["backend"], f"{r['cold']['process_s']:.2f}",
             f"{r['cold']['first_call_s']:.2f}", f"{r['warm']['process_s']:.2f}",
             f"{r['warm']['first_call_s']:.2f}", f"{r['compile_s']:.2f}"]
            for r in result["startup"]]
    return ["", "start-up: a fresh process imports polycnn, gets the backend, runs a tiny conv"
            " and pool fwd+bwd; cold = empty compile caches, warm = the caches cold left",
            format_table(headers, rows)]


def _child_lines(child: dict) -> list[str]:
    changes = ", ".join(
        (f"{k} unset" if v is None else f"{k}={v}") + f" (was {child['was'][k] or 'not set'})"
        for k, v in child["changed"].items())
    return ["", f"measured in a child process with {changes}",
            f"BLAS kernel in that child: {child['kernel_in_child']};"
            f" here: {child['kernel_here']}"]


def render(result: dict) -> str:
    """The report of a :func:`polycnn.bench.run` result: environment, op table, training
    table, start-up table, notes."""
    has_torch = "torch" in result["engines"]
    out = _environment_lines(result)
    if result["ops"]:
        out += _ops_table(result, has_torch)
    if result["training"]:
        out += _training_table(result, has_torch)
    if result["startup"]:
        out += _startup_table(result)
    if result.get("child"):
        out += _child_lines(result["child"])
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
        out.append(f"target {name}: {describe_target(target)}; compiling and first calls"
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
