"""Measuring polycnn: conv and pool op times, training throughput and start-up time, for every
backend side by side and PyTorch beside them when it is installed (on the CPU, or on a CUDA GPU
with cuDNN for the GPU backends).

Everything is a ratio measured in the same run: the machines are shared and noisy, so numbers
from different runs do not compare. Each measurement is the median of several rounds, and the
rounds are interleaved (backend A, backend B, torch, A, B, torch, ...) so a burst of load from
elsewhere hits every engine alike. A round times enough back-to-back calls to last at least
``min_round_s``, so sub-millisecond layers are not timer noise.

Nothing here asserts on a time: these are measurements to read, never tests.

    from polycnn import bench
    result = bench.run(bench.BenchConfig(backends=["numpy"], layers=["a", "pool"]))
    result["ops"]          # one row per layer, pass and engine: ms, GFLOP/s, ratio to torch
    print(bench.render(result))

The modules: :mod:`.cases` (what is measured), :mod:`.machine` (the CPU, its BLAS and peaks),
:mod:`.timing`, :mod:`.engines` (a backend, or PyTorch on a device), :mod:`.training`,
:mod:`.startup`, :mod:`.core` (one run), :mod:`.children` (runs in fresh processes, merged),
:mod:`.kernels` and :mod:`.targets` (every Numba kernel under several compile targets) and
:mod:`.report` (the tables). ``polycnn bench`` (cli/bench.py) parses options and prints;
``python -m polycnn.bench`` is what its child processes run.

Legend: N batch, C input channels, H×W input, K output channels, R×S kernel.
"""

from .cases import (EXCLUDED_BY_DEFAULT, LAYERS, PASSES, TORCH_HINT, TRAIN_MODELS, BenchConfig,
                    ConvLayer, PoolLayer, TrainModel, select_layers, select_models)
from .children import (CHILD_MARKER, THREAD_ENV, child_argv, child_env, combine_repeats,
                       in_child, merge_isolated, run_in_child, run_isolated)
from .core import check_device_options, config_from_options, run, select_backends
from .engines import (PRECISIONS, BackendEngine, TorchEngine, _import_torch, add_fma_fractions,
                      add_peak_fractions, measure_ops)
from .kernels import KernelCase, kernel_cases
from .machine import (BLAS_ENV, BUSY_LOAD, BUSY_NOTE, ISA_FLAGS, TARGET_FEATURES, best_fma,
                      blas_info, blas_kernel, cpu_model, describe_target, environment, fma_peak,
                      isa_flags, load_average, matmul_peak, numba_target, usable_cores)
from .report import format_table, render, render_targets
from .startup import measure_startup
from .targets import (DEFAULT_TARGETS, HOST_TARGET, TARGET_MARKER, TARGET_RATIO, KernelTimer,
                      compare_targets, run_targets, select_targets, serve_kernels, target_env,
                      unknown_cpus)
from .timing import interleaved
from .training import SHAPES_LAYERS, measure_training, polycnn_model, torch_twin

__all__ = [
    "EXCLUDED_BY_DEFAULT", "LAYERS", "PASSES", "TORCH_HINT", "TRAIN_MODELS", "BenchConfig",
    "ConvLayer", "PoolLayer", "TrainModel", "select_layers", "select_models",
    "CHILD_MARKER", "THREAD_ENV", "child_argv", "child_env", "combine_repeats", "in_child",
    "merge_isolated", "run_in_child", "run_isolated",
    "check_device_options", "config_from_options", "run", "select_backends",
    "PRECISIONS", "BackendEngine", "TorchEngine", "add_fma_fractions", "add_peak_fractions",
    "measure_ops", "KernelCase", "kernel_cases",
    "BLAS_ENV", "BUSY_LOAD", "BUSY_NOTE", "ISA_FLAGS", "TARGET_FEATURES", "best_fma", "blas_info",
    "blas_kernel", "cpu_model", "describe_target", "environment", "fma_peak", "isa_flags",
    "load_average", "matmul_peak", "numba_target", "usable_cores",
    "format_table", "render", "render_targets", "measure_startup",
    "DEFAULT_TARGETS", "HOST_TARGET", "TARGET_MARKER", "TARGET_RATIO", "KernelTimer",
    "compare_targets", "run_targets", "select_targets", "serve_kernels", "target_env",
    "unknown_cpus", "interleaved", "SHAPES_LAYERS", "measure_training", "polycnn_model",
    "torch_twin",
]
