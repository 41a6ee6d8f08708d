"""The CUDA backend: the kernels of ``kernels/*.cu`` launched through CuPy (see base for the
contract). The same class, given the emulator's stand-in for CuPy, is the ``cupy-emu`` backend.

- Sources are read with ``importlib.resources`` and prefixed with ``#line 1 "kernels/<file>"``,
  so a compile error names the real file and line; each is compiled on first use, once per
  device, and its kernels are cached.
- Every launch goes through :meth:`CupyBackend._launch`, which checks each argument against the
  kernel's parameter list below (dtype, contiguity, device, shape; scalars as exact NumPy types)
  before the kernel runs: a mismatch on a GPU is silent garbage.
- Arrays stay on the device: only ``asarray`` and ``to_numpy`` cross. ReLU, dropout (mask and
  apply), cross-entropy and the SGD step are one kernel each (glue.cu); the rest of base.py's
  glue (linear layers) runs on the device through ``xp`` (CuPy's array functions).

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

import contextlib
import functools
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable
from ..geometry import ConvGeometry, PoolGeometry, ceil_div
from ..losses import check_labels
from ._tiles import (  # noqa: F401  (re-exported: the tile table is part of this module's API)
    TF32_TILE, TILE_K, TILES, gemm_smem_bytes, gemm_tc_smem_bytes, gemm_threads, gemm_tile)
from .base import Backend, OpContext

CONV_SHAPE = np.dtype([(f, np.int32) for f in (
    "N", "C", "H", "W", "K", "R", "S", "P", "Q", "sh", "sw", "ph", "pw", "dh", "dw", "chunk")])
POOL_SHAPE = np.dtype([(f, np.int32) for f in (
    "N", "C", "H", "W", "R", "S", "P", "Q", "sh", "sw", "ph", "pw")])

# NOTE: these mirror the #defines of conv2d.cu and glue.cu; the launch shapes depend on them.
GEMM_THREADS = 256
BIAS_THREADS = 256
#: the fewest dy entries one block of the bias gradient sums (8 a thread)
BIAS_MIN_CHUNK = 8 * BIAS_THREADS
#: block size of every grid-stride kernel (pools, reductions, glue, few-channel backward-data)
ELEMENTWISE_THREADS = 256
#: cross_entropy's one block (its shared-memory tree is this wide)
GLUE_THREADS = 256
#: backward-data of at most this many input channels runs the one-pixel-a-thread kernel
FEWC_MAX = 4

#: Upper bound on the backward-weight partial sums, in bytes.
PARTIAL_BYTES = 64 * 2**20
_INT32_MAX = 2**31 - 1

#: NVRTC options given to ``cupy.RawModule`` (CuPy adds the device's ``-arch``); the compile
#: gate in tests/backends/test_cuda_compile.py uses the same.
COMPILE_OPTIONS = ("--std=c++17",)

#: Kernel name (without the dtype suffix) -> its source file and parameters. ``T`` is the op's
#: dtype; ``?`` marks a pointer that may be null.
KERNELS = {
    "conv2d_fwd": ("conv2d.cu", ("x: const T*", "w: const T*", "b: const T*?", "y: T*",
                                 "s: ConvShape")),
    "conv2d_bwd_data": ("conv2d.cu", ("dy: const T*", "w: const T*", "dx: T*", "s: ConvShape")),
    "conv2d_bwd_weight": ("conv2d.cu", ("dy: const T*", "x: const T*", "partial: T*",
                                        "s: ConvShape")),
    "conv2d_reduce": ("conv2d.cu", ("partial: const T*", "out: T*", "count: int64",
                                    "splits: int32")),
    "conv2d_bias_grad": ("conv2d.cu", ("dy: const T*", "partial: T*", "s: ConvShape")),
    "maxpool2d_fwd": ("pool2d.cu", ("x: const T*", "y: T*", "argmax: int32*", "s: PoolShape")),
    "maxpool2d_bwd": ("pool2d.cu", ("dy: const T*", "argmax: const int32*", "dx: T*",
                                    "s: PoolShape")),
    "avgpool2d_fwd": ("pool2d.cu", ("x: const T*", "y: T*", "s: PoolShape")),
    "avgpool2d_bwd": ("pool2d.cu", ("dy: const T*", "dx: T*", "s: PoolShape")),
    "relu_fwd": ("glue.cu", ("x: const T*", "y: T*", "count: int64")),
    "relu_bwd": ("glue.cu", ("dy: const T*", "x: const T*", "dx: T*", "count: int64")),
    "dropout_mask": ("glue.cu", ("keep: bool*", "count: int64", "key: uint64",
                                 "threshold: uint64")),
    "dropout_mask_keyed": ("glue.cu", ("keep: bool*", "count: int64", "keys: const uint64*",
                                       "threshold: uint64")),
    "dropout_apply": ("glue.cu", ("x: const T*", "keep: const bool*", "y: T*", "count: int64",
                                  "scale: T")),
    "sgd_step": ("glue.cu", ("p: T*", "grad: const T*", "v: T*", "count: int64", "lr: T",
                             "momentum: T", "wd: T", "nesterov: int32")),
    "cross_entropy": ("glue.cu", ("logits: const T*", "labels: const int64*", "dlogits: T*",
                                  "loss: float64*", "n: int32", "k: int32", "smoothing: T")),
}
KERNELS["conv2d_bwd_data_fewc"] = KERNELS["conv2d_bwd_data"]
KERNELS["conv2d_fwd_relu"] = KERNELS["conv2d_fwd"]  # the ReLU fused into the epilogue
for _op in ("conv2d_fwd", "conv2d_fwd_relu", "conv2d_bwd_data", "conv2d_bwd_weight"):
    for _tile in TILES:
        KERNELS[_op + _tile] = KERNELS[_op]
    KERNELS[_op + "_tf32"] = KERNELS[_op]
_STRUCTS = {"ConvShape": CONV_SHAPE, "PoolShape": POOL_SHAPE}


class _Param:
    """One parameter of KERNELS, parsed once: checks an argument before a launch."""

    def __init__(self, spec: str):
        self.name, kind = (p.strip() for p in spec.split(":"))
        self.spec = kind
        self.nullable = kind.endswith("?")
        kind = kind.rstrip("?")
        self.pointer = kind.endswith("*")
        base = kind.rstrip("*").removeprefix("const ")
        self.elem = None if base == "T" else np.dtype(_STRUCTS.get(base, base))
        self.struct = base in _STRUCTS

    def check(self, value, shape, dtype, device, array_type):
        """None when ``value`` fits, else (exception type, what is wrong)."""
        if self.pointer:
            if value is None:
                return None if self.nullable else (TypeError, "is None")
            want = dtype if self.elem is None else self.elem
            if not isinstance(value, array_type):
                return TypeError, f"must be a device array, got {type(value).__name__}"
            if value.dtype != want:
                return TypeError, f"must be {np.dtype(want)}, got {value.dtype}"
            if not value.flags.c_contiguous:
                return ValueError, (f"must be C-contiguous (shape {value.shape},"
                                    f" strides {value.strides})")
            if value.device.id != device:
                return ValueError, (f"lives on device {value.device.id}, the kernel on device"
                                    f" {device}")
            if value.shape != tuple(shape):
                return ValueError, f"has shape {tuple(value.shape)}, expected {tuple(shape)}"
            return None
        if self.struct:
            if type(value) is not np.ndarray or value.dtype != self.elem or value.size != 1:
                return TypeError, f"must be a size-1 numpy array of dtype {self.spec}"
            return None
        want = np.dtype(dtype) if self.elem is None else self.elem
        if type(value) is not want.type:
            return TypeError, f"must be numpy.{want.name}, got {type(value).__name__}"
        return None


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: the dtypes a kernel is compiled for, when not float32 and float64
KERNEL_DTYPES = {"dropout_mask": (np.dtype(np.bool_),), "dropout_mask_keyed": (np.dtype(np.bool_),),
                 **{op + "_tf32": (np.dtype(np.float32),)
                    for op in ("conv2d_fwd", "conv2d_fwd_relu", "conv2d_bwd_data",
                               "conv2d_bwd_weight")}}


def entry_points(name: str) -> list[tuple[str, np.dtype]]:
    """(entry point, dtype) of each compiled variant of kernel ``name``: ``<name>_<C type>``."""
    return [(f"{name}_{_C_TYPES[d]}", d) for d in KERNEL_DTYPES.get(name, _FLOAT_DTYPES)]


_PARAMS = {name: tuple(_Param(p) for p in params) for name, (_, params) in KERNELS.items()}
#: kernel-name suffix of each dtype a kernel is launched for (``bool``: dropout_mask's output)
_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
            np.dtype(np.bool_): "bool"}


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def kernel_source(filename: str, kernel_dir=None) -> str:
    """The text of ``kernels/<filename>`` with a ``#line`` prefix naming the real file."""
    if kernel_dir is None:
        text = (resources.files("polycnn.kernels") / filename).read_text()
    else:
        text = (Path(kernel_dir) / filename).read_text()
    return f'#line 1 "kernels/{filename}"\n{text}'


class CupyBackend(Backend):
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
        self._key_slots = None  # see dropout_keys
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

    # ---- training glue: one kernel where CuPy's array functions take several ---------------
    def relu_forward(self, x):
        """See base; one kernel. The context keeps x (the mask is ``x > 0``)."""
        xc = self._glue_input(x)
        if xc is None:
            return super().relu_forward(x)
        x = xc
        y = self.xp.empty(x.shape, dtype=x.dtype)
        self._launch_flat("relu_fwd", x.dtype, x.size, [x, y, np.int64(x.size)],
                          [x.shape, x.shape, None])
        return y, OpContext("relu", None, np.dtype(x.dtype), {"x": x})

    def relu_backward(self, dy, ctx):
        if "x" not in ctx.inputs:
            return super().relu_backward(dy, ctx)
        x = ctx.inputs["x"]
        self._check_relu_dy(dy, x.shape, x.dtype)
        dy = self.xp.ascontiguousarray(dy)
        dx = self.xp.empty(x.shape, dtype=x.dtype)
        self._launch_flat("relu_bwd", x.dtype, x.size, [dy, x, dx, np.int64(x.size)],
                          [x.shape, x.shape, x.shape, None])
        return dx

    def _glue_input(self, x):
        """x as a contiguous device array of a float dtype the kernels take, else None (the
        base's array functions then handle it, and raise what they raise)."""
        if not isinstance(x, self.xp.ndarray) or np.dtype(x.dtype) not in _FLOAT_DTYPES:
            return None
        return self.xp.ascontiguousarray(x)

    @contextlib.contextmanager
    def dropout_keys(self, slots, write: bool):
        """Inside, each dropout mask takes its key from the next of ``slots`` ((1,) uint64 device
        arrays, one a mask, in the order the masks are made), so that a CUDA graph reads a new
        key each step (graph_step.CapturedStep). ``write``: first copy the key the layer drew
        into its slot (an eager run); else the slot already holds it (a capture: the host fills
        the slots before each launch)."""
        self._key_slots = (iter(slots), bool(write))
        try:
            yield
        finally:
            self._key_slots = None

    def _dropout_mask(self, shape: tuple, threshold: int, key: int):
        """See base; one kernel (with its key from device memory inside dropout_keys)."""
        keep = self.xp.empty(shape, dtype=np.bool_)
        if self._key_slots is not None:
            slots, write = self._key_slots
            slot = next(slots, None)
            if slot is None:
                raise RuntimeError("dropout_keys: more dropout masks than key slots")
            if write:
                slot.set(np.array([key], dtype=np.uint64))
            if keep.size:
                self._launch_flat("dropout_mask_keyed", np.bool_, keep.size,
                                  [keep, np.int64(keep.size), slot, np.uint64(threshold)],
                                  [shape, None, (1,), None])
            return keep
        if keep.size:
            self._launch_flat("dropout_mask", np.bool_, keep.size,
                              [keep, np.int64(keep.size), np.uint64(key), np.uint64(threshold)],
                              [shape, None, None, None])
        return keep

    def dropout_apply(self, x, keep, scale: float):
        """See base; one kernel where the mask has x's shape (else the base's broadcast)."""
        xc = self._glue_input(x)
        if xc is None or tuple(keep.shape) != tuple(x.shape) or keep.dtype != np.bool_ \
                or not isinstance(keep, self.xp.ndarray):
            return super().dropout_apply(x, keep, scale)
        keep = self.xp.ascontiguousarray(keep)
        y = self.xp.empty(xc.shape, dtype=xc.dtype)
        self._launch_flat("dropout_apply", xc.dtype, xc.size,
                          [xc, keep, y, np.int64(xc.size), xc.dtype.type(scale)],
                          [xc.shape, xc.shape, xc.shape, None, None])
        return y

    def sgd_step(self, p, grad, velocity, lr, momentum, weight_decay, nesterov) -> None:
        """See base; one kernel a parameter."""
        dtype = np.dtype(p.dtype)
        arrays = (p, grad) + ((velocity,) if momentum else ())
        if dtype not in _FLOAT_DTYPES or not all(
                isinstance(a, self.xp.ndarray) and a.flags.c_contiguous for a in arrays):
            return super().sgd_step(p, grad, velocity, lr, momentum, weight_decay, nesterov)
        t = dtype.type
        self._launch_flat("sgd_step", dtype, p.size,
                          [p, grad, velocity if momentum else p, np.int64(p.size), t(lr),
                           t(momentum), t(weight_decay), np.int32(bool(nesterov))],
                          [p.shape, p.shape, p.shape, None, None, None, None, None])

    def cross_entropy(self, logits, labels, label_smoothing: float = 0.0):
        """See base; one kernel (one block: rows in a fixed order, a fixed tree), then one
        copy of the loss to the host."""
        lc = self._glue_input(logits)
        if lc is None or lc.ndim != 2 or 0 in lc.shape:
            return super().cross_entropy(logits, labels, label_smoothing)
        n, k = lc.shape
        labels = check_labels(labels, n, k)  # a label out of range would match no class
        loss, dlogits = self.cross_entropy_device(lc, self.xp.asarray(labels), label_smoothing)
        return float(self.to_numpy(loss)[0]), dlogits

    def cross_entropy_device(self, logits, labels, label_smoothing: float = 0.0):
        """cross_entropy with the labels already on the device (int64, (N,), each in [0, K):
        the caller checks them on the host) and the loss left there, a (1,) float64 array: no
        copy either way, so a CUDA graph can hold it (graph_step.CapturedStep)."""
        n, k = logits.shape
        dtype = np.dtype(logits.dtype)
        dlogits = self.xp.empty((n, k), dtype=dtype)
        loss = self.xp.empty((1,), dtype=np.float64)
        self._launch("cross_entropy", dtype, (1,), (GLUE_THREADS,),
                     [logits, labels, dlogits, loss, np.int32(n), np.int32(k),
                      dtype.type(label_smoothing)],
                     [(n, k), (n,), (n, k), (1,), None, None, None],
                     shared_mem=GLUE_THREADS * 8)
        return loss, dlogits

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


class CaptureSession:
    """One stream and one private memory pool, for the CUDA graphs of one captured training
    step (graph_step.CapturedStep): work runs on the stream, allocating from the pool, so the
    memory a graph's kernels use is never handed to other arrays while the graph lives; host
    batches reach static device buffers through pinned memory, copied on the stream.

    NOTE: cudaMalloc is not allowed while a stream captures: run the step once eagerly in
    ``session.running()`` first (the pool then holds every block the capture asks for again)."""

    def __init__(self, xp):
        self.xp = xp
        # NOTE: a blocking stream, so the legacy default stream (where the rest of the backend's
        # work and CuPy's copies to the host run) waits for it and it for them: a parameter read
        # after a step sees the step's result without an explicit synchronisation
        self.stream = xp.cuda.Stream(non_blocking=False)
        self.pool = xp.cuda.MemoryPool()

    @contextlib.contextmanager
    def running(self):
        """Work on the session's stream, allocating from its pool."""
        with self.xp.cuda.using_allocator(self.pool.malloc), self.stream:
            yield

    def capture(self, fn):
        """The CUDA graph of ``fn()``'s work (nothing runs now), captured in relaxed mode where
        CuPy names it (the pool may still call cudaMalloc for a block the eager run did not
        leave in its cache)."""
        mode = getattr(self.xp.cuda.runtime, "streamCaptureModeRelaxed", None)
        with self.running():
            if mode is None:
                self.stream.begin_capture()
            else:
                self.stream.begin_capture(mode)
            try:
                fn()
            finally:
                graph = self.stream.end_capture()
        return graph

    def launch(self, graph) -> None:
        graph.launch(self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def pinned(self, shape, dtype) -> np.ndarray:
        """A host array in page-locked memory (copies from it to the device are asynchronous)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        memory = self.xp.cuda.alloc_pinned_memory(max(1, count * dtype.itemsize))
        return np.frombuffer(memory, dtype=dtype, count=count).reshape(shape)

    def upload(self, device_array, host_array):
        """Copy a (pinned) host array into ``device_array`` on the stream; an event marks its
        end (wait on it before writing the host array again)."""
        device_array.set(host_array, stream=self.stream)
        event = self.xp.cuda.Event(disable_timing=True)
        event.record(self.stream)
        return event


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
