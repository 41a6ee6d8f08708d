"""The CUDA backend: the kernels of ``kernels/*.cu`` launched through CuPy (see base for the
contract). The same class, given the emulator's stand-in for CuPy, is the ``cupy-emu`` backend.

- Sources are read with ``importlib.resources`` and prefixed with ``#line 1 "kernels/<file>"``,
  so a compile error names the real file and line; each is compiled on first use, once per
  device, and its kernels are cached.
- Every launch goes through :meth:`CupyBackend._launch`, which checks each argument against the
  kernel's parameter list in ``_cupy_kernels.KERNELS`` (dtype, contiguity, device, shape;
  scalars as exact NumPy types) before the kernel runs: a mismatch on a GPU is silent garbage.
- Arrays stay on the device: only ``asarray`` and ``to_numpy`` cross. ReLU, dropout (mask and
  apply), cross-entropy and the SGD step are one kernel each (glue.cu, launched by the ``_ops``
  of ``_cupy_glue.CupyGlue``); the rest of base.py's glue (linear layers) runs on the device
  through ``xp`` (CuPy's array functions).

Modules: this one (the class: compiling, launching, conv and pool), ``_cupy_kernels`` (the
kernel tables), ``_tiles`` (the GEMM tiles), ``_cupy_glue``, ``_cupy_capture`` (CaptureSession).

Optimisations: conv forward, backward-data and backward-weight are tiled implicit GEMMs (64×64,
32×128, 16×256 or 16×64 tiles through shared memory, whichever pads the output least, a 4×4
register tile a thread; see conv2d.cu). Backward-data is one GEMM per stride phase, over the taps
that reach it, or for at most four input channels (an image) one thread an input pixel. The
weight pass and the bias gradient split their (n, p, q) sums over enough blocks to fill the
device and add the partial sums in a fixed order (with one split, the kernel writes the result
directly). No float atomics: results are bit-identical run to run.

``precision="tf32"`` (float32, compute capability 8.0 or newer; see base): the three GEMMs run
their 64×64 tile on the tensor cores (WMMA m16n16k8, operands rounded to TF32 as they enter
shared memory, fp32 sums); backward-data for at most four input channels and the bias gradient
stay fp32 (no GEMM to speak of there). The emulator runs the same kernels through its WMMA
implementation (cuda_emu.h).

For a training step captured into a CUDA graph (graph_step.CapturedStep): ``conv2d_relu_forward``
(conv + bias + ReLU in one kernel), ``cross_entropy_device`` (labels and loss stay on the
device), ``dropout_keys`` (mask keys read from device memory) and ``CaptureSession`` (stream,
private memory pool, capture, pinned uploads).
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import BackendUnavailable
from ..geometry import ConvGeometry, PoolGeometry, ceil_div
from ._tiles import (  # noqa: F401  (re-exported: the tile table is part of this module's API)
    TF32_TILE, TILE_K, TILES, gemm_smem_bytes, gemm_tc_smem_bytes, gemm_threads, gemm_tile)
from ._cupy_capture import CaptureSession
from ._cupy_glue import CupyGlue
from ._cupy_kernels import (  # noqa: F401  (re-exported: tests and tools read the tables here)
    _C_TYPES, _INT32_MAX, _PARAMS, BIAS_MIN_CHUNK, BIAS_THREADS, COMPILE_OPTIONS, CONV_SHAPE,
    ELEMENTWISE_THREADS, FEWC_MAX, GEMM_THREADS, GLUE_THREADS, KERNEL_DTYPES, KERNELS,
    PARTIAL_BYTES, POOL_SHAPE, _frozen, entry_points, kernel_source)
from .base import Backend, OpContext


class CupyBackend(CupyGlue, Backend):
    """CUDA kernels through CuPy, or through the emulator's stand-in for CuPy (``cupy-emu``).

    ``kernel_dir`` replaces the packaged ``kernels/`` folder (tests load seeded-bug copies)."""

    is_device = True
    precisions = ("float32", "tf32")

    def __init__(self, xp, name: str = "cupy", kernel_dir=None, compile_options=COMPILE_OPTIONS):
        self.xp = xp
        self.name = name
        self.array_type = xp.ndarray
        self.kernel_dir = kernel_dir
        self.compile_options = tuple(compile_options)
        self._modules = {}
        self._functions = {}
        self._key_slots = None  # see CupyGlue.dropout_keys
        self._fused_relu = False  # see conv2d_relu_forward
        props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
        # enough blocks to fill the device several times over, for the split weight pass
        self.target_blocks = 4 * int(props.get("multiProcessorCount", 1))

    # ---- arrays -------------------------------------------------------------------------
    def to_numpy(self, x) -> np.ndarray:
        return self.xp.asnumpy(x)

    def synchronize(self) -> None:
        self.xp.cuda.Device().synchronize()

    def info(self) -> dict:
        xp = self.xp
        device = xp.cuda.Device().id
        props = xp.cuda.runtime.getDeviceProperties(device)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        if self.name == "cupy-emu":
            from ._cuda_emu import build, runtime

            return {"version": f"cupy-emu ({build.compiler_version(build.compiler())})",
                    "threads": runtime.options["threads"], "device": name}
        cuda = xp.cuda.runtime.runtimeGetVersion()
        return {"version": f"cupy {xp.__version__}, CUDA runtime {cuda // 1000}.{cuda % 1000 // 10}",
                "threads": None, "device": f"{name} (device {device})"}

    # ---- kernels ------------------------------------------------------------------------
    def _function(self, name: str, dtype, device: int):
        key = (device, name, dtype)
        fn = self._functions.get(key)
        if fn is None:
            filename = KERNELS[name][0]
            module = self._modules.get((device, filename))
            if module is None:
                module = self.xp.RawModule(code=kernel_source(filename, self.kernel_dir),
                                           options=self.compile_options)
                self._modules[(device, filename)] = module
            fn = module.get_function(f"{name}_{_C_TYPES[np.dtype(dtype)]}")
            self._functions[key] = fn
        return fn

    def _launch(self, name, dtype, grid, block, args, shapes, shared_mem=0):
        """Check ``args`` against ``KERNELS[name]`` (``shapes``: the expected shape of each array
        argument, None for the others), then launch ``<name>_<float|double>``."""
        params = _PARAMS[name]
        if len(args) != len(params) or len(shapes) != len(params):
            raise TypeError(f"{name}: takes {len(params)} arguments ({', '.join(KERNELS[name][1])}),"
                            f" got {len(args)}")
        device = self.xp.cuda.Device().id
        for param, value, shape in zip(params, args, shapes):
            problem = param.check(value, shape, dtype, device, self.xp.ndarray)
            if problem is not None:
                kind, message = problem
                raise kind(f"{name}_{_C_TYPES[np.dtype(dtype)]}: argument {param.name!r}"
                           f" ({param.spec}) {message}")
        self._function(name, dtype, device)(grid, block, tuple(args), shared_mem=shared_mem)

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def _conv_shape(g: ConvGeometry, chunk: int = 0):
        """The ConvShape struct of ``g`` (cached, read-only: a model reuses a few shapes)."""
        for what, size in (("N*P*Q", g.N * g.P * g.Q), ("N*H*W", g.N * g.H * g.W),
                           ("C*R*S", g.C * g.R * g.S), ("K*R*S", g.K * g.R * g.S),
                           ("C*H*W", g.C * g.H * g.W), ("K*P*Q", g.K * g.P * g.Q),
                           ("K*C*R*S", g.K * g.C * g.R * g.S)):
            if size > _INT32_MAX:
                raise ValueError(f"conv2d on the CUDA backend: {what} = {size} exceeds 2^31 - 1"
                                 f" (x {g.x_shape}, w {g.w_shape}); split the batch")
        return _frozen(np.array([(g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.stride_h,
                                  g.stride_w, g.pad_h, g.pad_w, g.dil_h, g.dil_w, chunk)],
                                dtype=CONV_SHAPE))

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def _pool_shape(g: PoolGeometry):
        return _frozen(np.array([(g.N, g.C, g.H, g.W, g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w,
                                  g.pad_h, g.pad_w)], dtype=POOL_SHAPE))

    def _launch_flat(self, name, dtype, count: int, args, shapes):
        """Launch a kernel whose threads walk ``count`` items in a grid-stride loop (any grid
        and block work): blocks of ELEMENTWISE_THREADS, at most 65536 of them."""
        grid = (max(1, min(ceil_div(count, ELEMENTWISE_THREADS), 65536)),)
        self._launch(name, dtype, grid, (ELEMENTWISE_THREADS,), args, shapes)

    # ---- convolution --------------------------------------------------------------------
    def _gemm(self, op, dtype, rows, cols, depth, args, shapes, tf32=False):
        """Launch a GEMM kernel over rows × cols in the tile that pads it least (``tf32``:
        the tensor-core kernel ``<op>_tf32``, its one tile), ``depth`` blocks deep (the weight
        pass's splits, backward-data's stride phases)."""
        tile = TF32_TILE if tf32 else gemm_tile(rows, cols)
        bm, bn = TILES[tile]
        self._launch(op + ("_tf32" if tf32 else tile), dtype,
                     (ceil_div(cols, bn), ceil_div(rows, bm), depth), (gemm_threads(tile),), args,
                     shapes, gemm_tc_smem_bytes() if tf32 else
                     gemm_smem_bytes(tile, np.dtype(dtype).itemsize))

    def _tf32(self, precision: str) -> bool:
        """Whether ``precision`` asks for the tensor cores; ValueError on a device without TF32
        (compute capability below 8.0)."""
        if precision != "tf32":
            return False
        cc = str(self.xp.cuda.Device().compute_capability)
        if cc.isdigit() and int(cc) < 80:
            raise ValueError(f"conv2d: precision='tf32' needs compute capability 8.0 or newer"
                             f" (tensor cores with TF32); this device has {cc[:-1]}.{cc[-1]}"
                             " (use precision='float32')")
        return True

    def _conv2d_forward(self, x, w, b, g: ConvGeometry, precision: str = "float32"):
        s = self._conv_shape(g)
        y = self.xp.empty(g.y_shape, dtype=x.dtype)
        self._gemm("conv2d_fwd_relu" if self._fused_relu else "conv2d_fwd", x.dtype, g.K,
                   g.N * g.P * g.Q, 1, [x, w, b, y, s],
                   [g.x_shape, g.w_shape, (g.K,), g.y_shape, None], self._tf32(precision))
        return y, None

    def conv2d_relu_forward(self, x, w, b=None, stride=1, padding=0, dilation=1,
                            precision="float32"):
        """conv2d_forward and the ReLU after it in one kernel (the ReLU in the GEMM's epilogue):
        -> (y, ctx, relu_ctx) with y = relu(conv), the bits of conv2d_forward then
        relu_forward; ``ctx`` is conv2d_forward's, ``relu_ctx`` relu_forward's (its mask is
        y > 0, the same as conv > 0), so the two backward passes run as before."""
        self._fused_relu = True
        try:
            y, ctx = self.conv2d_forward(x, w, b, stride, padding, dilation, precision)
        finally:
            self._fused_relu = False
        return y, ctx, OpContext("relu", None, np.dtype(y.dtype), {"x": y})

    def _weight_splits(self, g: ConvGeometry, itemsize: int, tf32: bool = False) -> tuple[int, int]:
        """(splits, chunk) of the weight pass's (n, p, q) reduction."""
        npq, crs = g.N * g.P * g.Q, g.C * g.R * g.S
        tile = TF32_TILE if tf32 else gemm_tile(g.K, crs)
        bm, bn = TILES[tile]
        # NOTE: target_blocks counts blocks of GEMM_THREADS; a smaller block gets more of them
        blocks = ceil_div(self.target_blocks * GEMM_THREADS, gemm_threads(tile))
        tiles = ceil_div(g.K, bm) * ceil_div(crs, bn)
        splits = min(ceil_div(npq, TILE_K), max(1, ceil_div(blocks, tiles)), 65535,
                     max(1, PARTIAL_BYTES // (g.K * crs * itemsize)))
        chunk = ceil_div(ceil_div(npq, splits), TILE_K) * TILE_K
        return ceil_div(npq, chunk), chunk

    def _conv2d_backward(self, dy, ctx: OpContext, input_grad: bool):
        g: ConvGeometry = ctx.geom
        tf32 = self._tf32(ctx.inputs.get("precision", "float32"))
        dx = self._conv_bwd_data(dy, ctx.inputs["w"], g, tf32) if input_grad else None
        dw = self._conv_bwd_weight(dy, ctx.inputs["x"], g, tf32)
        db = self._bias_grad(dy, g) if ctx.inputs["has_bias"] else None
        return dx, dw, db

    def _conv_bwd_data(self, dy, w, g: ConvGeometry, tf32: bool = False):
        """dx: one GEMM per stride phase (grid z; phase 0 has the most pixels), or for few input
        channels one thread a pixel (fp32 also under ``tf32``)."""
        dx = self.xp.empty(g.x_shape, dtype=dy.dtype)
        if g.C <= FEWC_MAX:
            self._launch_flat("conv2d_bwd_data_fewc", dy.dtype, g.N * g.H * g.W,
                              [dy, w, dx, self._conv_shape(g)],
                              [g.y_shape, g.w_shape, g.x_shape, None])
            return dx
        self._gemm("conv2d_bwd_data", dy.dtype, g.C, self._bwd_data_columns(g),
                   g.stride_h * g.stride_w, [dy, w, dx, self._conv_shape(g)],
                   [g.y_shape, g.w_shape, g.x_shape, None], tf32)
        return dx

    @staticmethod
    def _bwd_data_columns(g: ConvGeometry) -> int:
        """Columns of backward-data's largest stride phase (phase 0): its GEMM's width."""
        return g.N * ceil_div(g.H, g.stride_h) * ceil_div(g.W, g.stride_w)

    def _conv_bwd_weight(self, dy, x, g: ConvGeometry, tf32: bool = False):
        """dw: the (n, p, q) reduction split over grid z, the partial sums added in order."""
        xp, dtype = self.xp, dy.dtype
        crs = g.C * g.R * g.S
        splits, chunk = self._weight_splits(g, dtype.itemsize, tf32)
        dw = xp.empty(g.w_shape, dtype=dtype)
        partial = dw if splits == 1 else xp.empty((splits, g.K, crs), dtype=dtype)
        self._gemm("conv2d_bwd_weight", dtype, g.K, crs, splits,
                   [dy, x, partial, self._conv_shape(g, chunk)],
                   [g.y_shape, g.x_shape, partial.shape, None], tf32)
        if splits > 1:
            self._reduce(partial, dw)
        return dw

    def _reduce(self, partial, out):
        """out = partial.sum(axis=0), the splits added in order (conv2d_reduce)."""
        count = out.size
        self._launch_flat("conv2d_reduce", out.dtype, count,
                          [partial, out, np.int64(count), np.int32(partial.shape[0])],
                          [partial.shape, out.shape, None, None])

    def _bias_splits(self, g: ConvGeometry) -> tuple[int, int]:
        """(splits, chunk) of the bias gradient's (n, p, q) sum: enough blocks of (k, split)
        to fill the device, none summing fewer than BIAS_MIN_CHUNK entries."""
        npq = g.N * g.P * g.Q
        splits = max(1, min(ceil_div(self.target_blocks, g.K), npq // BIAS_MIN_CHUNK, 65535))
        chunk = ceil_div(npq, splits)
        return ceil_div(npq, chunk), chunk

    def _bias_grad(self, dy, g: ConvGeometry):
        dtype = dy.dtype
        splits, chunk = self._bias_splits(g)
        db = self.xp.empty((g.K,), dtype=dtype)
        partial = db if splits == 1 else self.xp.empty((splits, g.K), dtype=dtype)
        self._launch("conv2d_bias_grad", dtype, (g.K, splits), (BIAS_THREADS,),
                     [dy, partial, self._conv_shape(g, chunk)],
                     [g.y_shape, partial.shape, None], shared_mem=BIAS_THREADS * dtype.itemsize)
        if splits > 1:
            self._reduce(partial, db)
        return db

    def capture_session(self) -> "CaptureSession":
        """A stream and a private memory pool for capturing CUDA graphs (graph_step)."""
        return CaptureSession(self.xp)

    # ---- pooling ------------------------------------------------------------------------
    def _maxpool2d_forward(self, x, g: PoolGeometry):
        y = self.xp.empty(g.y_shape, dtype=x.dtype)
        argmax = self.xp.empty(g.y_shape, dtype=np.int32)
        self._launch_flat("maxpool2d_fwd", x.dtype, y.size, [x, y, argmax, self._pool_shape(g)],
                          [g.x_shape, g.y_shape, g.y_shape, None])
        return y, argmax

    def _maxpool2d_backward(self, dy, ctx: OpContext):
        g: PoolGeometry = ctx.geom
        dx = self.xp.empty(g.x_shape, dtype=dy.dtype)
        self._launch_flat("maxpool2d_bwd", dy.dtype, dx.size,
                          [dy, ctx.saved, dx, self._pool_shape(g)],
                          [g.y_shape, g.y_shape, g.x_shape, None])
        return dx

    def _avgpool2d_forward(self, x, g: PoolGeometry):
        y = self.xp.empty(g.y_shape, dtype=x.dtype)
        self._launch_flat("avgpool2d_fwd", x.dtype, y.size, [x, y, self._pool_shape(g)],
                          [g.x_shape, g.y_shape, None])
        return y

    def _avgpool2d_backward(self, dy, ctx: OpContext):
        g: PoolGeometry = ctx.geom
        dx = self.xp.empty(g.x_shape, dtype=dy.dtype)
        self._launch_flat("avgpool2d_bwd", dy.dtype, dx.size, [dy, dx, self._pool_shape(g)],
                          [g.y_shape, g.x_shape, None])
        return dx


def create() -> CupyBackend:
    """The ``cupy`` backend: real CuPy on a CUDA device."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailable(
            f"CuPy is not installed ({exc}): pip install 'polycnn[cuda12]' for CUDA 12.x or"
            " 'polycnn[cuda13]' for CUDA 13.x (one of them, never both)") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises CUDARuntimeError without a driver or device
        raise BackendUnavailable(
            f"CuPy {cupy.__version__} is installed but CUDA has no usable device:"
            f" {type(exc).__name__}: {exc}") from None
    if count < 1:
        raise BackendUnavailable(f"CuPy {cupy.__version__} is installed but found no CUDA device")
    return CupyBackend(cupy, name="cupy")


def create_emu(kernel_dir=None) -> CupyBackend:
    """The ``cupy-emu`` backend: the same class and kernels on the CPU emulator (needs g++)."""
    from ._cuda_emu import build, runtime, standin

    build.compiler()  # BackendUnavailable without a C++ compiler
    runtime.check_environment()  # ... or with a POLYCNN_EMU_* variable it cannot use
    return CupyBackend(standin, name="cupy-emu", kernel_dir=kernel_dir)
