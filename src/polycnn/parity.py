"""Parity of backends against the float64 reference (:mod:`polycnn.reference`).

A seeded set of small random cases covers every op (conv2d, maxpool2d, avgpool2d), forward and
backward, with odd and non-square sizes, strides, paddings and dilations; max-pool cases with
integer-valued inputs, so that ties are common. Each backend runs each case in each dtype; its
result is compared with the reference computed, in float64, from the same (rounded) inputs.

Error measure: ``max rel err`` is ``max |actual - expected| / M`` over one result array, where
``M`` is the largest magnitude of the terms summed into any of its elements: the same op run by
the reference on absolute values (``|x|``, ``|w|``, ``|b|``, ``|dy|``; see :func:`magnitudes`).
Rounding error is bounded by a multiple of that sum, so a sum that cancels to nearly zero (a
bias gradient over one channel, say) is held to what its terms allow, not to an impossible
bound. A result passes when that is within the dtype's tolerance and every NaN of the reference
is a NaN in the result (and nowhere else).

Used by ``polycnn parity`` and by the op tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from . import reference
from .geometry import conv_geometry, pool_geometry

OPS = ("conv2d", "maxpool2d", "avgpool2d")
DTYPES = ("float32", "float64")

#: relative tolerance (see the module docstring) per dtype: float32 allows a few roundings of
#: the sums of these small cases; float64 is far looser than its rounding, far tighter than a bug
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


@dataclass(frozen=True)
class Case:
    """One op call: input shapes, arguments and the seed its values are drawn from.

    ``params`` holds the op's keyword arguments: stride, padding, dilation for conv2d;
    kernel_size, stride, padding for the pools. ``integer_values`` draws small integers
    (exact in every dtype; ties in max pooling) instead of normal values."""

    op: str
    x_shape: tuple
    params: dict = field(default_factory=dict)
    w_shape: tuple | None = None
    has_bias: bool = False
    integer_values: bool = False
    seed: int = 0
    name: str = ""

    def geometry(self):
        if self.op == "conv2d":
            return conv_geometry(self.x_shape, self.w_shape, **self.params)
        return pool_geometry(self.x_shape, **self.params)

    def arrays(self, dtype) -> dict:
        """x, dy (and w, b for conv2d) in ``dtype``: the values every backend and the reference
        see (float32 cases are rounded once, here)."""
        rng = np.random.default_rng(self.seed)
        dtype = np.dtype(dtype)

        def draw(shape):
            if self.integer_values:
                return rng.integers(-3, 4, size=shape).astype(dtype)
            return rng.standard_normal(shape).astype(dtype)

        out = {"x": draw(self.x_shape)}
        if self.op == "conv2d":
            out["w"] = draw(self.w_shape)
            out["b"] = draw((self.w_shape[0],)) if self.has_bias else None
        out["dy"] = draw(self.geometry().y_shape)
        return out

    def describe(self) -> str:
        parts = [f"x {tuple(self.x_shape)}"]
        if self.op == "conv2d":
            parts.append(f"w {tuple(self.w_shape)}")
            parts.append("bias" if self.has_bias else "no bias")
        parts += [f"{k}={v!r}" for k, v in self.params.items()]
        if self.integer_values:
            parts.append("integer values")
        label = f"{self.name}: " if self.name else ""
        return label + ", ".join(parts)


# ---- running one case ------------------------------------------------------------------------

def passes(op: str) -> tuple:
    """The result arrays an op is checked on."""
    if op == "conv2d":
        return ("forward", "backward dx", "backward dw", "backward db")
    return ("forward", "backward dx")


def _reference_passes(case: Case, a: dict, argmax_x) -> dict:
    """pass -> float64 result of the reference on arrays ``a``; max pooling's backward takes
    its argmax from ``argmax_x``."""
    p = case.params
    if case.op == "conv2d":
        y = reference.conv2d_forward(a["x"], a["w"], a["b"], **p)
        dx, dw, db = reference.conv2d_backward(a["dy"], a["x"], a["w"], has_bias=case.has_bias, **p)
        out = {"forward": y, "backward dx": dx, "backward dw": dw}
        if case.has_bias:
            out["backward db"] = db
        return out
    if case.op == "maxpool2d":
        return {"forward": reference.maxpool2d_forward(a["x"], **p),
                "backward dx": reference.maxpool2d_backward(a["dy"], argmax_x, **p)}
    if case.op == "avgpool2d":
        return {"forward": reference.avgpool2d_forward(a["x"], **p),
                "backward dx": reference.avgpool2d_backward(a["dy"], case.x_shape, **p)}
    raise ValueError(f"unknown op {case.op!r}; ops: {', '.join(OPS)}")


def reference_results(case: Case, dtype) -> dict:
    """pass -> float64 result of the reference on the case's values in ``dtype``."""
    a = case.arrays(dtype)
    return _reference_passes(case, a, a["x"])


def magnitudes(case: Case, dtype) -> dict:
    """pass -> the magnitude its rounding error is measured against: the reference on absolute
    values, so each element is the sum of the absolute values of its terms. Max pooling keeps
    the argmax of the real input (its backward only moves dy)."""
    real = case.arrays(dtype)
    a = {k: (None if v is None else np.abs(v.astype(np.float64))) for k, v in real.items()}
    return _reference_passes(case, a, real["x"])


def backend_results(backend, case: Case, dtype) -> dict:
    """pass -> the backend's result (as a NumPy array) on the case's values in ``dtype``."""
    a = case.arrays(dtype)
    be = backend
    x, dy = be.asarray(a["x"]), be.asarray(a["dy"])
    if case.op == "conv2d":
        b = None if a["b"] is None else be.asarray(a["b"])
        y, ctx = be.conv2d_forward(x, be.asarray(a["w"]), b, **case.params)
        dx, dw, db = be.conv2d_backward(dy, ctx)
        out = {"forward": y, "backward dx": dx, "backward dw": dw}
        if case.has_bias:
            out["backward db"] = db
        elif db is not None:
            raise AssertionError(f"conv2d backward returned db although there was no bias: {db!r:.60}")
    else:
        forward = getattr(be, f"{case.op}_forward")
        backward = getattr(be, f"{case.op}_backward")
        y, ctx = forward(x, **case.params)
        out = {"forward": y, "backward dx": backward(dy, ctx)}
    return {k: be.to_numpy(v) for k, v in out.items()}


# ---- comparing ------------------------------------------------------------------------------

@dataclass
class Comparison:
    max_abs_err: float
    max_rel_err: float
    tolerance: float
    ok: bool
    problem: str = ""  # why it failed, when it is not just the error size


def compare(actual, expected, dtype, magnitude=None) -> Comparison:
    """Compare a backend result with the float64 reference (see the module docstring);
    ``magnitude`` (from :func:`magnitudes`) defaults to ``|expected|``."""
    tol = TOLERANCE[np.dtype(dtype).name]
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return Comparison(float("inf"), float("inf"), tol, False,
                          f"shape {actual.shape}, expected {expected.shape}")
    if actual.dtype != np.dtype(dtype):
        return Comparison(float("inf"), float("inf"), tol, False,
                          f"dtype {actual.dtype}, expected {np.dtype(dtype)}")
    a = actual.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(expected)
    if (nan_a != nan_e).any():
        where = tuple(int(i) for i in np.argwhere(nan_a != nan_e)[0])
        return Comparison(float("nan"), float("nan"), tol, False,
                          f"NaN mismatch at index {where}: got {float(a[where])!r},"
                          f" expected {float(expected[where])!r}")
    keep = ~nan_e
    if not keep.any():
        return Comparison(0.0, 0.0, tol, True)
    diff = np.abs(a[keep] - expected[keep])
    with np.errstate(invalid="ignore"):  # inf - inf
        diff = np.where(a[keep] == expected[keep], 0.0, diff)
    max_abs = float(diff.max()) if diff.size else 0.0
    mags = np.abs(expected if magnitude is None else np.asarray(magnitude, np.float64))[keep]
    finite = mags[np.isfinite(mags)]
    scale = float(finite.max()) if finite.size else 0.0
    if max_abs == 0.0:
        rel = 0.0
    elif scale == 0.0:
        rel = float("inf")
    else:
        rel = max_abs / scale
    ok = bool(rel <= tol)
    problem = ""
    if not ok:
        flat = np.argwhere(keep)[int(np.argmax(diff))]
        where = tuple(int(i) for i in flat)
        problem = f"at index {where}: got {float(a[where])!r}, expected {float(expected[where])!r}"
    return Comparison(max_abs, rel, tol, ok, problem)


# ---- random cases ---------------------------------------------------------------------------

def _random_conv(rng) -> Case:
    while True:
        N, C, K = (int(v) for v in rng.integers(1, 4, size=3))
        H, W = (int(v) for v in rng.integers(1, 10, size=2))
        R, S = (int(v) for v in rng.integers(1, 5, size=2))
        stride = _int_or_pair(rng, 1, 3)
        dilation = _int_or_pair(rng, 1, 2)
        kind = rng.integers(0, 4)
        if kind == 0:
            padding, stride = "same", 1
        elif kind == 1:
            padding = "valid"
        else:
            padding = _int_or_pair(rng, 0, 2)
        params = {"stride": stride, "padding": padding, "dilation": dilation}
        case = Case("conv2d", (N, C, H, W), params, w_shape=(K, C, R, S),
                    has_bias=bool(rng.integers(0, 2)), seed=int(rng.integers(2**31)))
        if _valid(case):
            return case


def _random_pool(rng, op: str) -> Case:
    while True:
        N, C = (int(v) for v in rng.integers(1, 4, size=2))
        H, W = (int(v) for v in rng.integers(1, 10, size=2))
        kernel = _int_or_pair(rng, 1, 4)
        stride = None if rng.integers(0, 3) == 0 else _int_or_pair(rng, 1, 3)
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
        padding = ph if rng.integers(0, 2) else (ph, pw)
        params = {"kernel_size": kernel, "stride": stride, "padding": padding}
        case = Case(op, (N, C, H, W), params, integer_values=bool(rng.integers(0, 2)),
                    seed=int(rng.integers(2**31)))
        if _valid(case):
            return case


def _int_or_pair(rng, low: int, high: int):
    if rng.integers(0, 2):
        return int(rng.integers(low, high + 1))
    return (int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1)))


def _valid(case: Case) -> bool:
    try:
        case.geometry()
    except ValueError:
        return False
    return True


def random_cases(op: str, count: int, seed: int = 0) -> list:
    """``count`` random small cases of ``op``, the same for the same seed."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops: {', '.join(OPS)}")
    rng = np.random.default_rng([seed, OPS.index(op)])
    cases = []
    for i in range(count):
        case = _random_conv(rng) if op == "conv2d" else _random_pool(rng, op)
        cases.append(Case(**{**case.__dict__, "name": f"case {i} of seed {seed}"}))
    return cases


# ---- the whole run ------------------------------------------------------------------------

@dataclass
class Mismatch:
    """One failed comparison: an op's pass on a backend and dtype, the case, what differed."""

    op: str
    #: "forward", "backward" or "forward/backward" (``pass`` in the JSON: a keyword here)
    pass_: str = field(metadata={"json": "pass"})
    backend: str
    dtype: str
    case: str
    detail: str

    def as_dict(self) -> dict:
        """The JSON object of ``polycnn parity --json``: the fields by their JSON names."""
        return {f.metadata.get("json", f.name): getattr(self, f.name) for f in fields(self)}

    def line(self) -> str:
        return (f"mismatch: {self.op} {self.pass_}, backend={self.backend}, dtype={self.dtype},"
                f" {self.case}: {self.detail}")


@dataclass
class ParityReport:
    seed: int
    cases_per_op: int
    rows: list = field(default_factory=list)      # dicts: the table
    mismatches: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def as_dict(self) -> dict:
        return {"ok": self.ok, "seed": self.seed, "cases_per_op": self.cases_per_op,
                "tolerance": dict(TOLERANCE), "rows": self.rows,
                "mismatches": [m.as_dict() for m in self.mismatches]}


def run_parity(backends: dict, dtypes=DTYPES, seed: int = 0, cases: int = 20,
               ops=OPS) -> ParityReport:
    """Every backend (name -> backend object) on ``cases`` random cases of every op, in every
    dtype, against the reference. Never raises for a wrong result: it is a mismatch."""
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    report = ParityReport(seed, cases)
    for op in ops:
        op_cases = random_cases(op, cases, seed)
        for dtype in dtypes:
            dtype = np.dtype(dtype).name
            expected = [(reference_results(c, dtype), magnitudes(c, dtype)) for c in op_cases]
            for name, be in backends.items():
                stats = {p: {"abs": 0.0, "rel": 0.0, "ok": True, "cases": 0} for p in passes(op)}
                for case, (want, mags) in zip(op_cases, expected):
                    try:
                        got = backend_results(be, case, dtype)
                    except Exception as exc:  # NOTE: a crash is a failed case, not a crashed run
                        detail = f"raised {type(exc).__name__}: {' '.join(str(exc).split())}"
                        report.mismatches.append(
                            Mismatch(op, "forward/backward", name, dtype, case.describe(), detail))
                        for s in stats.values():
                            s["ok"] = False
                        continue
                    for p, value in want.items():
                        cmp = compare(got[p], value, dtype, mags[p])
                        s = stats[p]
                        s["cases"] += 1
                        s["abs"] = max(s["abs"], cmp.max_abs_err)
                        s["rel"] = max(s["rel"], cmp.max_rel_err)
                        if not cmp.ok:
                            s["ok"] = False
                            detail = cmp.problem or ""
                            detail = (f"max rel err {cmp.max_rel_err:.3g} > tolerance"
                                      f" {cmp.tolerance:.0e}" + (f"; {detail}" if detail else ""))
                            report.mismatches.append(
                                Mismatch(op, p, name, dtype, case.describe(), detail))
                for p, s in stats.items():
                    report.rows.append({
                        "op": op, "pass": p, "dtype": dtype, "backend": name,
                        "cases": s["cases"], "max_abs_err": s["abs"], "max_rel_err": s["rel"],
                        "tolerance": TOLERANCE[dtype], "ok": s["ok"],
                    })
    return report


__all__ = [
    "OPS", "DTYPES", "TOLERANCE", "Case", "Comparison", "compare", "passes", "random_cases",
    "reference_results", "magnitudes", "backend_results", "run_parity", "ParityReport", "Mismatch",
]
