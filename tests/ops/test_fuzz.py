"""Fuzzing every backend against the float64 oracle (:mod:`polycnn.reference`) with hypothesis.

Random small shapes, strides, paddings ("same", "valid", ints, pairs), dilations, dtypes and
values (normal, small integers for ties, tiny and large magnitudes, with ±0, ±inf, NaN and
denormals sprinkled in) for conv2d, max and average pooling, forward and backward, on every
backend (the ``backend`` fixture: numpy, numba, cupy-emu). The budget is the hypothesis profile's
(tests/conftest.py): "ci" by default, ``--hypothesis-profile=long`` for 100k cases a test. The
number of cases run is printed at the end of the pytest run.

Comparison, element by element: where the oracle gives NaN the backend must give NaN; where it
gives ±inf, the same infinity; elsewhere ``|got - expected| <= tol * M + floor``, with ``M`` the
sum of the absolute values of the terms of that element (the oracle run on ``|inputs|``, as in
:mod:`polycnn.parity`), ``tol`` the parity tolerance of the dtype and ``floor`` a few hundred of
the dtype's smallest normal numbers (a product of denormals may flush or round to zero).

NOTE: finite values are bounded (1e15 in float32, 1e150 in float64) so that no product or sum of
these small cases overflows: an overflow of the float32 arithmetic that the float64 oracle does
not have is not a bug. Max pooling, which does no arithmetic, gets the whole range.

NOTE: inf * 0 at the border. The oracle skips the terms that fall on padding; a backend that
multiplies the weights with padded zeros gets NaN from an infinite weight (forward) or dy
(weight gradient) there, as PyTorch does. Both are accepted: an element passes when it matches
the oracle either way (the second way is the oracle on an explicitly zero-padded input).

Known bugs can be tolerated narrowly (KNOWN_NAN_LEAKS below; none now). The NaN leaks found
so far (an inf or NaN making NaN in gradients that do not depend on it) are also fixed cases
(NAN_LEAK_CASES) run on every backend.

Also here: the oracle's sizes agree with :mod:`polycnn.geometry` on random arguments (it works
them out on its own), a wrong "same" rule in geometry.py fails the parity comparison, and a bug
seeded in each backend's padding or stride handling is found by these properties.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from support.oracle import FUZZ_CASES
from polycnn import geometry, parity, reference
from polycnn.backends import base as backend_base
from polycnn.backends import get_backend

#: finite values stay within this magnitude (see the module docstring), per dtype
BOUND = {"float32": 1e15, "float64": 1e150}
#: absolute slack, in the dtype's smallest normal numbers: a product of denormals may round or
#: flush to zero in the backend's dtype
FLOOR_TINIES = 512

#: (backend, op, pass) -> a known bug, tolerated only as narrowly as this: where the case has an
#: inf or NaN in its inputs, a NaN where the oracle has a number (finite or infinite) passes in
#: that pass (a wrong number, a NaN missing, or any other pass still fails).
KNOWN_NAN_LEAKS: dict = {}

#: the backend fixture is one shared object per backend: nothing to reset between examples
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture,
                                             HealthCheck.too_slow])


# ---- values ----------------------------------------------------------------------------------

def _specials(dtype: np.dtype, bound: float) -> list:
    f = np.finfo(dtype)
    sub = float(f.smallest_subnormal)
    return [0.0, -0.0, np.inf, -np.inf, np.nan, sub, -sub, float(f.tiny), float(f.tiny) / 7,
            -float(f.tiny) * 0.5, bound, -bound, 1.0 / bound, 1.0, -1.0]


@st.composite
def _array(draw, shape, dtype: np.dtype, bound: float):
    """Random values of one kind and scale, with a few special values written over them."""
    size = int(np.prod(shape))
    kind = draw(st.sampled_from(["normal", "integers", "zeros"]))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3, bound, 1.0 / bound]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "normal":
        flat = rng.standard_normal(size).clip(-4, 4) * (scale / 4)
    elif kind == "integers":  # ties in max pooling, exact sums
        flat = rng.integers(-3, 4, size).astype(np.float64)
    else:
        flat = np.where(rng.integers(0, 2, size) == 1, 0.0, -0.0)
    specials = draw(st.lists(st.tuples(st.integers(0, size - 1),
                                       st.sampled_from(_specials(dtype, bound))), max_size=3))
    for i, v in specials:
        flat[i] = v
    return flat.astype(dtype).reshape(shape)


# ---- cases -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    op: str
    dtype: np.dtype
    params: dict
    x: np.ndarray
    dy: np.ndarray
    w: np.ndarray | None = None
    b: np.ndarray | None = None

    def all_finite(self) -> bool:
        return all(np.isfinite(a).all() for a in (self.x, self.w, self.b, self.dy) if a is not None)

    def describe(self) -> str:
        parts = [f"{self.op} {self.dtype.name} x {self.x.shape}"]
        if self.op == "conv2d":
            parts.append(f"w {self.w.shape}" + (" with bias" if self.b is not None else ""))
        return ", ".join(parts + [f"{k}={v!r}" for k, v in self.params.items()])


def _int_or_pair(lo: int, hi: int):
    n = st.integers(lo, hi)
    return st.one_of(n, st.tuples(n, n))


@st.composite
def conv_cases(draw):
    dtype = np.dtype(draw(st.sampled_from(["float32", "float64"])))
    N, C, K = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = draw(_int_or_pair(1, 4))
    R, S = reference._pair(kernel)
    dilation = draw(_int_or_pair(1, 2))
    padding = draw(st.one_of(st.just("same"), st.just("valid"), _int_or_pair(0, 2)))
    stride = 1 if padding == "same" else draw(_int_or_pair(1, 3))
    (dh, dw), (sh, sw) = reference._pair(dilation), reference._pair(stride)
    ph, pw = (0, 0) if isinstance(padding, str) else reference._pair(padding)
    # the smallest input a window fits in, plus a little
    H = max(1, dh * (R - 1) + 1 - 2 * ph + draw(st.integers(0, 2 * sh)))
    W = max(1, dw * (S - 1) + 1 - 2 * pw + draw(st.integers(0, 2 * sw)))
    if padding == "same":
        H, W = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    params = {"stride": stride, "padding": padding, "dilation": dilation}
    g = reference.conv_sizes((N, C, H, W), (K, C, R, S), **params)
    bound = BOUND[dtype.name]
    has_bias = draw(st.booleans())
    return Case("conv2d", dtype, params,
                x=draw(_array((N, C, H, W), dtype, bound)),
                w=draw(_array((K, C, R, S), dtype, bound)),
                b=draw(_array((K,), dtype, bound)) if has_bias else None,
                dy=draw(_array(g.y_shape, dtype, bound)))


@st.composite
def pool_cases(draw, op: str):
    dtype = np.dtype(draw(st.sampled_from(["float32", "float64"])))
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    kernel = draw(_int_or_pair(1, 4))
    R, S = reference._pair(kernel)
    stride = draw(st.one_of(st.none(), _int_or_pair(1, 3)))
    sh, sw = reference._pair(kernel if stride is None else stride)
    ph, pw = draw(st.integers(0, R // 2)), draw(st.integers(0, S // 2))
    padding = draw(st.sampled_from([ph, (ph, pw)])) if ph <= S // 2 else (ph, pw)
    ph, pw = reference._pair(padding)
    H = max(1, R - 2 * ph + draw(st.integers(0, 2 * sh)))
    W = max(1, S - 2 * pw + draw(st.integers(0, 2 * sw)))
    params = {"kernel_size": kernel, "stride": stride, "padding": padding}
    g = reference.pool_sizes((N, C, H, W), **params)
    bound = BOUND[dtype.name]
    x_bound = float(np.finfo(dtype).max) if op == "maxpool2d" else bound
    return Case(op, dtype, params, x=draw(_array((N, C, H, W), dtype, x_bound)),
                dy=draw(_array(g.y_shape, dtype, bound)))


# ---- the oracle's answers ----------------------------------------------------------------------

def _abs(a):
    return None if a is None else np.abs(a.astype(np.float64))


def _conv_oracle(case: Case, x, w, b, dy) -> dict:
    y = reference.conv2d_forward(x, w, b, **case.params)
    dx, dw, db = reference.conv2d_backward(dy, x, w, has_bias=b is not None, **case.params)
    return {"forward": y, "dx": dx, "dw": dw, "db": db}


def expected_results(case: Case) -> dict:
    """pass -> list of (expected, magnitude) an element may match (see the module docstring)."""
    with np.errstate(all="ignore"):
        if case.op == "conv2d":
            exact = _conv_oracle(case, case.x, case.w, case.b, case.dy)
            mags = _conv_oracle(case, _abs(case.x), _abs(case.w), _abs(case.b), _abs(case.dy))
            out = {k: [(exact[k], mags[k])] for k in exact if exact[k] is not None}
            g = reference.conv_sizes(case.x.shape, case.w.shape, **case.params)
            pads = (g.pad_h, g.pad_bottom, g.pad_w, g.pad_right)
            if any(pads) and not (np.isfinite(case.w).all() and np.isfinite(case.dy).all()):
                # inf * 0 on the padding: the oracle on the zero-padded input is right too
                widths = ((0, 0), (0, 0), pads[:2], pads[2:])
                params = {**case.params, "padding": 0}
                padded = dataclasses.replace(case, params=params)
                xz = np.pad(case.x.astype(np.float64), widths)
                alt = _conv_oracle(padded, xz, case.w, case.b, case.dy)
                alt_mags = _conv_oracle(padded, _abs(xz), _abs(case.w), _abs(case.b), _abs(case.dy))
                for k in ("forward", "dw"):
                    out[k].append((alt[k], alt_mags[k]))
            return out
        if case.op == "maxpool2d":
            y = reference.maxpool2d_forward(case.x, **case.params)
            dx = reference.maxpool2d_backward(case.dy, case.x, **case.params)
            dx_mag = reference.maxpool2d_backward(_abs(case.dy), case.x, **case.params)
            return {"forward": [(y, np.zeros_like(y))], "dx": [(dx, dx_mag)]}
        y = reference.avgpool2d_forward(case.x, **case.params)
        y_mag = reference.avgpool2d_forward(_abs(case.x), **case.params)
        dx = reference.avgpool2d_backward(case.dy, case.x.shape, **case.params)
        dx_mag = reference.avgpool2d_backward(_abs(case.dy), case.x.shape, **case.params)
        return {"forward": [(y, y_mag)], "dx": [(dx, dx_mag)]}


def _matches(got, expected, magnitude, dtype) -> np.ndarray:
    """Element-wise: NaN for NaN, the same infinity, else within tol * magnitude + floor."""
    a = got.astype(np.float64)
    tol = parity.TOLERANCE[dtype.name]
    floor = FLOOR_TINIES * float(np.finfo(dtype).tiny)
    with np.errstate(all="ignore"):
        close = np.abs(a - expected) <= tol * magnitude + floor
        return np.where(np.isnan(expected), np.isnan(a),
                        np.where(np.isfinite(expected), close, a == expected))


def assert_pass(got, allowed, case: Case, backend_name: str, pass_: str) -> None:
    where = f"{case.op} {pass_}, backend={backend_name}, {case.describe()}"
    got = np.asarray(got)
    expected = allowed[0][0]
    assert got.shape == expected.shape, f"{where}: shape {got.shape}, expected {expected.shape}"
    assert got.dtype == case.dtype, f"{where}: dtype {got.dtype}, expected {case.dtype}"
    ok = np.zeros(got.shape, dtype=bool)
    for exp, mag in allowed:
        ok |= _matches(got, exp, mag, case.dtype)
    if (backend_name, case.op, pass_) in KNOWN_NAN_LEAKS and not case.all_finite():
        ok |= np.isnan(got)
    if not ok.all():
        bad = np.argwhere(~ok)
        i = tuple(int(v) for v in bad[0])
        raise AssertionError(
            f"{where}: {len(bad)} of {got.size} elements differ from the oracle; first at {i}:"
            f" got {float(got[i])!r}, expected {float(expected[i])!r}"
            f" (terms' magnitude {float(allowed[0][1][i])!r})")


# ---- the property -----------------------------------------------------------------------------

def check_case(backend, case: Case) -> None:
    """Forward, then backward, of ``case`` on ``backend`` against the oracle; each pass is
    compared as soon as it is computed (a wrong forward is reported before any backward runs)."""
    want = expected_results(case)
    be = backend
    with np.errstate(all="ignore"):
        x, dy = be.asarray(case.x), be.asarray(case.dy)
        if case.op == "conv2d":
            b = None if case.b is None else be.asarray(case.b)
            y, ctx = be.conv2d_forward(x, be.asarray(case.w), b, **case.params)
            assert_pass(be.to_numpy(y), want["forward"], case, be.name, "forward")
            dx, dw, db = be.conv2d_backward(dy, ctx)
            assert_pass(be.to_numpy(dx), want["dx"], case, be.name, "backward dx")
            assert_pass(be.to_numpy(dw), want["dw"], case, be.name, "backward dw")
            if case.b is None:
                assert db is None, f"conv2d backward returned db without a bias ({case.describe()})"
            else:
                assert_pass(be.to_numpy(db), want["db"], case, be.name, "backward db")
            return
        y, ctx = getattr(be, f"{case.op}_forward")(x, **case.params)
        assert_pass(be.to_numpy(y), want["forward"], case, be.name, "forward")
        dx = getattr(be, f"{case.op}_backward")(dy, ctx)
        assert_pass(be.to_numpy(dx), want["dx"], case, be.name, "backward dx")


def _leak_case(dtype, x_shape, w_shape, params, x_at=None, w_at=None):
    """A conv2d case of ones with one inf in x (at ``x_at``) or in w (at ``w_at``)."""
    x, w = np.ones(x_shape, dtype=dtype), np.ones(w_shape, dtype=dtype)
    if x_at is not None:
        x[x_at] = np.inf
    if w_at is not None:
        w[w_at] = np.inf
    g = reference.conv_sizes(x_shape, w_shape, **params)
    return Case("conv2d", np.dtype(dtype), params, x=x, w=w, dy=np.ones(g.y_shape, dtype=dtype))


#: inf * 0 against zeros that are no term of the sum (found by the fuzzer on numba: NaN where
#: the oracle has a number); id -> (x shape, w shape, params, inf in x at, inf in w at)
NAN_LEAK_CASES = {
    "dx-inf-weight-valid": ((1, 1, 2, 2), (1, 1, 2, 2), {"padding": "valid"}, None, (0, 0, 0, 0)),
    "dx-inf-weight-pad1-dilation2": ((2, 2, 5, 6), (3, 2, 3, 3), {"padding": 1, "dilation": 2},
                                     None, (1, 0, 2, 1)),
    "dw-inf-pixel-same-dilation2": ((1, 1, 1, 1), (1, 1, 2, 2),
                                    {"padding": "same", "dilation": 2}, (0, 0, 0, 0), None),
    "dw-inf-pixel-row-end": ((2, 2, 4, 7), (2, 2, 3, 2), {"padding": "valid"}, (1, 1, 2, 6),
                             None),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(NAN_LEAK_CASES))
def test_nan_leak_cases(backend, name, dtype):
    check_case(backend, _leak_case(dtype, *NAN_LEAK_CASES[name]))


STRATEGIES = {"conv2d": conv_cases(), "maxpool2d": pool_cases("maxpool2d"),
              "avgpool2d": pool_cases("avgpool2d")}


@pytest.mark.parametrize("op", list(STRATEGIES))
def test_fuzz_against_the_oracle(backend, op):
    @FIXTURE_OK
    @given(case=STRATEGIES[op])
    def prop(case):
        assert case.op == op
        FUZZ_CASES[(op, backend.name)] += 1
        check_case(backend, case)

    prop()


# ---- the oracle's sizes are its own, and agree with geometry.py ------------------------------

def _sizes_agree(geometry_fn, oracle_fn, args, sides):
    """The oracle's sizes for ``args``, checked against geometry's on the attributes ``sides``;
    or None when geometry refuses ``args`` with a ValueError, and then the oracle must too."""
    try:
        g = geometry_fn(*args)
    except ValueError:
        with pytest.raises(ValueError):
            oracle_fn(*args)
        return None
    o = oracle_fn(*args)
    assert [getattr(o, k) for k in sides] == [getattr(g, k) for k in sides], args
    return o


@given(H=st.integers(1, 40), W=st.integers(1, 40), C=st.integers(1, 3),
       kernel=_int_or_pair(1, 9), stride=_int_or_pair(1, 5), dilation=_int_or_pair(1, 4),
       padding=st.one_of(st.sampled_from(["same", "valid", "SAME"]), _int_or_pair(0, 5)))
def test_oracle_conv_sizes_agree_with_geometry(H, W, C, kernel, stride, dilation, padding):
    """Output size and the padding on each side, "same"'s odd pixel included (after: bottom,
    right, as PyTorch puts it), or an error from both."""
    R, S = reference._pair(kernel)
    args = ((2, C, H, W), (3, C, R, S), stride, padding, dilation)
    o = _sizes_agree(geometry.conv_geometry, reference.conv_sizes, args,
                     ("P", "Q", "pad_h", "pad_bottom", "pad_w", "pad_right"))
    if o is not None and isinstance(padding, str) and padding.lower() == "same":
        assert (o.P, o.Q) == (H, W)
        assert o.pad_bottom - o.pad_h in (0, 1) and o.pad_right - o.pad_w in (0, 1), args


@given(H=st.integers(1, 30), W=st.integers(1, 30), kernel=_int_or_pair(1, 8),
       stride=st.one_of(st.none(), _int_or_pair(1, 5)), padding=_int_or_pair(0, 4))
def test_oracle_pool_sizes_agree_with_geometry(H, W, kernel, stride, padding):
    R, S = reference._pair(kernel)
    ph, pw = reference._pair(padding)
    assume(ph <= R // 2 and pw <= S // 2)  # geometry's rule; the oracle does not check it
    args = ((1, 2, H, W), kernel, stride, padding)
    _sizes_agree(geometry.pool_geometry, reference.pool_sizes, args,
                 ("P", "Q", "stride_h", "stride_w", "pad_h", "pad_w"))


def _odd_same_pixel_before(monkeypatch):
    """geometry.py's "same" rule with the odd pixel moved before (top/left): a plausible bug."""
    right_rule = geometry.resolve_padding

    def wrong_rule(padding, kernel, stride, dilation):
        top, bottom, left, right = right_rule(padding, kernel, stride, dilation)
        if isinstance(padding, str) and padding.lower() == "same":
            return bottom, top, right, left
        return top, bottom, left, right

    monkeypatch.setattr(geometry, "resolve_padding", wrong_rule)
    monkeypatch.setattr(backend_base, "_GEOMETRY_CACHE", {})  # forget the right geometries


def test_a_wrong_same_rule_in_geometry_fails_the_parity_comparison(monkeypatch):
    """What ``polycnn parity`` and the op tests run (run_parity / check_case): fine with the
    right rule, failing with the odd pixel before, since the oracle no longer shares it."""
    from support.oracle import check_case as op_test_check

    be = get_backend("numpy")
    case = parity.Case("conv2d", (1, 2, 5, 6), {"padding": "same"}, w_shape=(2, 2, 2, 4), seed=3)
    op_test_check(be, case, np.float64)
    assert parity.run_parity({"numpy": be}, dtypes=("float64",), ops=("conv2d",)).ok

    _odd_same_pixel_before(monkeypatch)
    assert geometry.conv_geometry(case.x_shape, case.w_shape, padding="same").pad_h == 1  # moved
    with pytest.raises(AssertionError, match="conv2d forward"):
        op_test_check(be, case, np.float64)
    report = parity.run_parity({"numpy": be}, dtypes=("float64",), ops=("conv2d",))
    assert not report.ok
    assert any("padding='same'" in m.case for m in report.mismatches), report.mismatches


# ---- a bug seeded in each backend is found -------------------------------------------------

def _search(backend, op: str):
    """The first case (shrunk) on which the fuzz property fails, or None."""
    def fails(case):
        try:
            check_case(backend, case)
        except AssertionError:
            return True
        return False

    search = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                      phases=[Phase.generate, Phase.shrink],
                      suppress_health_check=list(HealthCheck))
    try:
        return find(STRATEGIES[op], fails, settings=search)
    except NoSuchExample:
        return None


def _seed_numpy(monkeypatch):
    """The pools' padding one row off: the image sits a row low inside its padding."""
    from polycnn.backends import numpy_backend

    padded = numpy_backend._padded

    def row_low(x, top, bottom, left, right, fill):
        if top and bottom:
            top, bottom = top + 1, bottom - 1
        return padded(x, top, bottom, left, right, fill)

    monkeypatch.setattr(numpy_backend, "_padded", row_low)
    return "maxpool2d"


def _seed_numba(monkeypatch):
    """The pools' strides swapped, h for w, in what is passed to the kernels."""
    from polycnn.backends.numba_backend import NumbaBackend

    window = NumbaBackend._pool_window
    swapped = staticmethod(lambda g: window(g)._replace(sh=g.stride_w, sw=g.stride_h))
    monkeypatch.setattr(NumbaBackend, "_pool_window", swapped)
    return "avgpool2d"


def _seed_cupy_emu(monkeypatch):
    """conv2d's left padding off by one in what the forward kernel is given."""
    from polycnn.backends.cupy_backend import CupyBackend

    forward = CupyBackend._conv2d_forward

    def off_by_one(self, x, w, b, g):
        return forward(self, x, w, b, dataclasses.replace(g, pad_w=g.pad_w + 1))

    monkeypatch.setattr(CupyBackend, "_conv2d_forward", off_by_one)
    return "conv2d"


SEEDED = {"numpy": _seed_numpy, "numba": _seed_numba, "cupy-emu": _seed_cupy_emu}


@pytest.mark.parametrize("name", list(SEEDED))
def test_a_bug_seeded_in_the_backend_is_found(name, monkeypatch, capsys):
    from support.oracle import required_backends
    from polycnn.errors import BackendUnavailable

    try:
        be = get_backend(name)
    except BackendUnavailable as exc:
        if name in required_backends():
            pytest.fail(f"backend {name!r} is required here but unavailable: {exc}")
        pytest.skip(f"backend {name!r} unavailable: {exc}")
    op = SEEDED[name](monkeypatch)
    found = _search(be, op)
    assert found is not None, f"the fuzz property missed the bug seeded in {name}'s {op}"
    with pytest.raises(AssertionError) as caught:
        check_case(be, found)
    monkeypatch.undo()
    check_case(be, found)  # the case fails because of the seeded bug, nothing else
    with capsys.disabled():
        print(f"\nseeded bug in {name} found on {found.describe()}:\n  {caught.value}")
