"""``python -m polycnn.bench [options]``: one measurement in this process, printed as the
report's tables or, with ``--json``, as the result's JSON on one line. It is what the child
processes of ``polycnn bench`` (``--threads``, ``--fast-blas``, ``--isolate``, ``--targets``)
run, and what benchmarks/gpu_check.sh runs on a GPU (``--device cuda``, ``--precision tf32``,
``--graph``). It never starts a child itself: ``polycnn bench`` is the command for people."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import BackendUnavailable
from . import report
from .cases import BenchConfig
from .core import config_from_options, run
from .targets import serve_kernels


def _names(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {value!r}")
    return names


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _switch(parser, name: str, default, help: str) -> None:
    """``--name`` / ``--no-name``."""
    key = name.replace("-", "_")
    parser.add_argument(f"--{name}", dest=key, action="store_true", default=default, help=help)
    parser.add_argument(f"--no-{name}", dest=key, action="store_false")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m polycnn.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", type=_names, help="comma-separated backends (default: every"
                   " available one except cupy-emu)")
    p.add_argument("--layers", type=_names, help="comma-separated layers (default: all)")
    p.add_argument("--models", type=_names, help="comma-separated training models (default: all)")
    p.add_argument("--rounds", type=_positive, help="interleaved rounds per measurement")
    p.add_argument("--matmul-size", dest="matmul_size", type=_positive,
                   help="numpy.matmul N^3 for the machine's peak")
    p.add_argument("--threads", type=_positive, help="PyTorch's threads (the other pools read"
                   " their environment variables, which the parent sets)")
    p.add_argument("--train-batch", dest="train_batch", type=_positive,
                   help="the training batch of every model (default: each model's own)")
    p.add_argument("--train-steps", dest="train_steps", type=_positive,
                   help="SGD steps in each timed epoch")
    p.add_argument("--device", default="cpu", help="where PyTorch runs: cpu, cuda or cuda:N")
    p.add_argument("--precision", default="float32", help="the convolutions' precision on every"
                   " engine: float32 or tf32 (tensor cores)")
    p.add_argument("--graph", action="store_true", help="also train each CUDA backend's model"
                   " as a captured CUDA graph (pc.CapturedStep)")
    p.add_argument("--check", action="store_true", help="compare each engine's forward with"
                   " PyTorch's on the inputs timed (a rel err column)")
    _switch(p, "ops", True, "conv and pool timings")
    _switch(p, "training", True, "training throughput")
    _switch(p, "startup", None, "start-up time (default: on, off with --quick)")
    p.add_argument("--no-torch", dest="no_torch", action="store_true", help="no PyTorch")
    p.add_argument("--torch-only", dest="torch_only", action="store_true", help="PyTorch alone")
    p.add_argument("--quick", action="store_true", help="fewer rounds, smaller batches")
    p.add_argument("--kernels-only", dest="kernels_only", action="store_true",
                   help="serve the Numba kernel timings of this process's compile target")
    p.add_argument("--json", dest="as_json", action="store_true", help="print the result as JSON")
    return p


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _write(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    as_json, kernels_only = args.pop("as_json"), args.pop("kernels_only")
    if kernels_only:
        quick = args["quick"]
        serve_kernels(16 if quick else 4, 0.01 if quick else 0.05, sys.stdin, _write,
                      progress=_progress)
        return 0
    try:
        config: BenchConfig = config_from_options(**args)
        result = run(config, progress=_progress)
    except (ValueError, BackendUnavailable) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    _write(json.dumps(result) if as_json else report.render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
