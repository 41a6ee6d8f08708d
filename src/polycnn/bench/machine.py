"""The machine a run measures on: CPU model, ISA flags, Numba's compile target, the OpenBLAS
kernel (through threadpoolctl), the load average, and two peaks every GFLOP/s is compared
with: numpy.matmul's and the FMA units' (a small LLVM-IR probe)."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import time

import numpy as np

from ..backends import _heap

BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def blas_info() -> list[dict] | None:
    """numpy's BLAS libraries as threadpoolctl sees them (which OpenBLAS kernel runs), or None
    when threadpoolctl is not installed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keep = ("internal_api", "architecture", "version", "num_threads", "threading_layer", "prefix")
    return [{k: info.get(k) for k in keep} for info in threadpool_info()
            if info.get("user_api") == "blas"]


def blas_kernel(blas: list[dict] | None) -> str:
    if blas is None:
        return "unknown (pip install threadpoolctl, or polycnn[bench], to see it)"
    if not blas:
        return "no BLAS library found by threadpoolctl"
    return ", ".join(f"{b['internal_api']} {b.get('version') or ''} {b.get('architecture') or ''}"
                     .replace("  ", " ").strip() for b in blas)


#: the ISA flags (as /proc/cpuinfo names them) that decide which kernels can run fast
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile")


def isa_flags() -> list[str] | None:
    """Which of :data:`ISA_FLAGS` the CPU has (None where /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in ISA_FLAGS if flag in have]
    except OSError:
        pass
    return None


#: LLVM features of Numba's compile target worth printing
TARGET_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512fp16")


def numba_target() -> dict | None:
    """The CPU Numba compiles for in this process: its LLVM name (``NUMBA_CPU_NAME``, or the
    host's as LLVM names it), where name and features came from, the features of
    :data:`TARGET_FEATURES` it has and the vector width the kernels take from them. The name
    picks LLVM's cost model (which loops it vectorises, with which width); the features, the
    instructions it may use. None without numba."""
    try:
        import llvmlite.binding as ll
        from numba.core import config
        from numba.core.codegen import get_host_cpu_features
    except ImportError:
        return None
    host = ll.get_host_cpu_name()
    named = config.CPU_NAME is not None
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    on = {f[1:] for f in features.split(",") if f.startswith("+")}
    return {
        "cpu_name": (config.CPU_NAME or "generic") if named else host,
        "host_cpu_name": host,
        "name_from": "NUMBA_CPU_NAME" if named else "host",
        "features_from": "NUMBA_CPU_FEATURES" if config.CPU_FEATURES is not None else "host",
        "features": [f for f in TARGET_FEATURES if f in on],
        # NOTE: the rule of _numba_kernels._simd_bytes (not imported here: importing the kernel
        # module outside numba_backend._load_kernels would cache it in the wrong folder)
        "vector_bits": 512 if "avx512f" in on else 256,
    }


def describe_target(target: dict | None) -> str:
    if not target:
        return "-"
    source = ("the host's" if target["name_from"] == "host" else "NUMBA_CPU_NAME")
    features = " ".join(target["features"]) or "none of " + " ".join(TARGET_FEATURES)
    if target["features_from"] != "host":
        features += " (NUMBA_CPU_FEATURES)"
    return (f"{target['cpu_name']} ({source}; host {target['host_cpu_name']}), features"
            f" {features}, {target['vector_bits']}-bit kernel vectors")


def environment(threads: int, backend_infos: dict, torch_version) -> dict:
    return {
        "cpu": cpu_model(),
        "isa": isa_flags(),
        "numba_target": numba_target(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "threads": threads,
        "backend_threads": {name: info.get("threads") for name, info in backend_infos.items()},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": _version("numba"),
        "torch": torch_version,
        "blas": blas_info(),
        "blas_env": {name: os.environ.get(name) for name in BLAS_ENV},
        "load_average": load_average(),
        "heap": _heap.describe(),
    }


#: a 1-minute load average from this much on means other work was running before the bench
BUSY_LOAD = 1.0


def load_average():
    """The 1-minute load average: above the core count, other work shared the CPU and every
    ratio in the run is less certain."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# ---- timing --------------------------------------------------------------------------------


def matmul_peak(n: int, repeats: int) -> dict:
    """The machine's practical peak: float32 ``numpy.matmul`` of two n×n matrices, best of
    ``repeats`` (after one untimed call)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"n": n, "repeats": len(times), "best_ms": best * 1e3, "gflops": 2 * n**3 / best / 1e9}


def fma_peak(threads: int, seconds: float = 0.05, repeats: int = 3) -> dict | None:
    """The CPU's float32 FMA peak as a small LLVM-IR kernel measures it (vector FMAs on
    independent registers, see ``_numba_kernels._make_fma_loop``), on one thread and on
    ``threads``; best of ``repeats`` calls of about ``seconds`` each. None without numba or
    with the JIT disabled. The matmul peak is what a BLAS reaches, this is what the FMA units
    can do: ``% FMA`` columns are fractions of the all-thread value."""
    try:
        import numba

        from ..backends.numba_backend import _load_kernels
    except ImportError:
        return None
    if numba.config.DISABLE_JIT:
        return None
    k = _load_kernels()
    saved = numba.get_num_threads()
    counts = sorted({1, max(1, min(threads, numba.config.NUMBA_NUM_THREADS))})
    per = {}
    try:
        for count in counts:
            numba.set_num_threads(count)
            out = np.zeros(count, dtype=np.float32)
            k._fma_probe(1000, out)  # compiles
            iters = 20_000
            t0 = time.perf_counter()
            k._fma_probe(iters, out)
            one = max(time.perf_counter() - t0, 1e-6)
            iters = max(1000, int(iters * seconds / one))
            best = math.inf
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                k._fma_probe(iters, out)
                best = min(best, time.perf_counter() - t0)
            per[count] = 2 * iters * k.FMA_ACCS * k.FMA_LANES * count / best / 1e9
    finally:
        numba.set_num_threads(saved)
    return {"lanes": k.FMA_LANES, "accumulators": k.FMA_ACCS, "threads": counts[-1],
            "gflops_1_thread": per[1], "gflops": per[counts[-1]]}


def best_fma(*peaks) -> dict | None:
    """The best of several FMA measurements (None ones skipped), keeping each all-thread value."""
    found = [p for p in peaks if p]
    if not found:
        return None
    best = dict(max(found, key=lambda p: p["gflops"]))
    best["gflops_1_thread"] = max(p["gflops_1_thread"] for p in found)
    best["gflops_each"] = [p["gflops"] for p in found]
    return best



#: the start of the note a run adds when the machine was busy before it
BUSY_NOTE = "the load average was"
