"""``polycnn parity``: passes on the real backends; a deliberately wrong backend makes it exit 1
and name the op, pass, backend, dtype and case."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import polycnn as pc
from polycnn import parity
from polycnn.backends import registry
from polycnn.backends.numpy_backend import NumpyBackend
from polycnn.cli.main import main

FAST = ["--cases", "3"]


class WrongDwBackend(NumpyBackend):
    """conv2d backward's dw off by 0.1%: well above float32 rounding, easy to miss by eye."""

    name = "test-wrong-dw"

    def _conv2d_backward(self, dy, ctx, input_grad):
        dx, dw, db = super()._conv2d_backward(dy, ctx, input_grad)
        return dx, dw * dw.dtype.type(1.001), db


class LastTieBackend(NumpyBackend):
    """Max pooling that sends the gradient to the LAST of tied maxima (the forward values are
    right, so only the backward can tell)."""

    name = "test-last-tie"

    def _maxpool2d_forward(self, x, g):
        xpad = np.pad(x, ((0, 0), (0, 0), (g.pad_h, g.pad_h), (g.pad_w, g.pad_w)),
                      constant_values=-np.inf)
        y = np.empty(g.y_shape, x.dtype)
        arg = np.empty(g.y_shape, np.int64)
        last = g.R * g.S - 1
        for p in range(g.P):
            for q in range(g.Q):
                h0, w0 = p * g.stride_h, q * g.stride_w
                window = xpad[:, :, h0:h0 + g.R, w0:w0 + g.S].reshape(g.N, g.C, -1)
                arg[:, :, p, q] = last - np.argmax(window[:, :, ::-1], axis=2)
                y[:, :, p, q] = window.max(axis=2)
        return y, arg

    def _maxpool2d_backward(self, dy, ctx):
        g = ctx.geom
        dxpad = np.zeros((g.N, g.C, g.H + 2 * g.pad_h, g.W + 2 * g.pad_w), dy.dtype)
        n, c = np.meshgrid(np.arange(g.N), np.arange(g.C), indexing="ij")
        for p in range(g.P):
            for q in range(g.Q):
                r, s = np.divmod(ctx.saved[:, :, p, q], g.S)
                np.add.at(dxpad, (n, c, p * g.stride_h + r, q * g.stride_w + s), dy[:, :, p, q])
        return dxpad[:, :, g.pad_h:g.pad_h + g.H, g.pad_w:g.pad_w + g.W].copy()


class CrashingAvgPoolBackend(NumpyBackend):
    name = "test-crash"

    def _avgpool2d_forward(self, x, g):
        raise IndexError("kernel index out of range")


def _wrong_dw():
    return WrongDwBackend()


def _last_tie():
    return LastTieBackend()


def _crash():
    return CrashingAvgPoolBackend()


def _missing():
    raise pc.BackendUnavailable("needs libfoo; pip install libfoo")


@pytest.fixture
def test_backends(monkeypatch):
    """Register the test backends in a copy of the registry, dropped after the test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    for name, factory in [("test-wrong-dw", "_wrong_dw"), ("test-last-tie", "_last_tie"),
                          ("test-crash", "_crash"), ("test-missing", "_missing")]:
        registry.register(name, f"{__name__}:{factory}", "a deliberately broken backend")


def run(*args):
    return CliRunner().invoke(main, ["parity", *args])


def test_numpy_passes_with_a_table():
    result = run("--backends", "numpy", *FAST)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["op", "pass", "dtype", "backend", "cases", "max", "abs", "err",
                                "max", "rel", "err", "tolerance", "ok"]
    body = [line for line in lines[2:] if line.split() and line.split()[0] in parity.OPS]
    # 4 conv passes + 2 per pool, in two dtypes
    assert len(body) == (4 + 2 + 2) * 2
    assert all(line.split()[-1] == "ok" for line in body)


def test_json_is_one_object_covering_every_op_pass_and_dtype():
    result = run("--backends", "numpy", "--json", *FAST)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["ok"] is True and out["mismatches"] == []
    seen = {(r["op"], r["pass"], r["dtype"]) for r in out["rows"]}
    expected = {(op, p, dt) for op in parity.OPS for p in parity.passes(op)
                for dt in ("float32", "float64")}
    assert seen == expected
    for row in out["rows"]:
        assert row["backend"] == "numpy" and row["ok"] is True
        assert 0 <= row["max_rel_err"] <= row["tolerance"]
        assert row["cases"] >= 1


def test_wrong_conv_backward_fails_and_names_it(test_backends):
    result = run("--backends", "numpy,test-wrong-dw", "--json", *FAST)
    assert result.exit_code == 1, result.output
    out = json.loads(result.stdout)
    assert out["ok"] is False
    bad = {(r["op"], r["pass"], r["backend"]) for r in out["rows"] if not r["ok"]}
    assert bad == {("conv2d", "backward dw", "test-wrong-dw")}
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("mismatch: conv2d backward dw, backend=test-wrong-dw,")
                         for line in lines)
    assert any("dtype=float32" in line for line in lines)
    assert all("case " in line and "x (" in line and "w (" in line for line in lines)


def test_last_tie_maxpool_fails_on_the_backward(test_backends):
    result = run("--backends", "test-last-tie", "--ops", "maxpool2d", "--cases", "6")
    assert result.exit_code == 1, result.output
    table = {tuple(line.split()[:3]): line.split()[-1] for line in result.stdout.splitlines()[2:]
             if line.startswith("maxpool2d")}
    assert table[("maxpool2d", "forward", "float64")] == "ok"
    assert table[("maxpool2d", "backward", "dx")] == "FAIL"
    assert "mismatch: maxpool2d backward dx, backend=test-last-tie" in result.stderr
    assert "integer values" in result.stderr  # the ties come from the integer-valued cases


def test_a_crash_is_a_mismatch_not_a_traceback(test_backends):
    result = run("--backends", "test-crash", "--ops", "avgpool2d", *FAST)
    assert result.exit_code == 1
    assert "backend=test-crash" in result.stderr and "IndexError" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, fragment", [
    (["--backends", "no-such"], "unknown backend 'no-such'; known backends: numpy"),
    (["--dtypes", "float16"], "--dtypes: unknown 'float16'"),
    (["--ops", "conv3d"], "--ops: unknown 'conv3d'"),
])
def test_bad_arguments_exit_2_with_one_line(args, fragment):
    result = run(*args, *FAST)
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_unavailable_backend_exits_2_with_reason(test_backends):
    result = run("--backends", "test-missing", *FAST)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: needs libfoo; pip install libfoo"


def test_default_runs_every_available_backend_and_names_the_rest(test_backends, monkeypatch):
    # only the real backends and the unavailable one; the wrong ones are not under test here
    for name in ("test-wrong-dw", "test-last-tie", "test-crash"):
        del registry._REGISTRY[name]
    result = run("--json", "--cases", "2", "--dtypes", "float64", "--ops", "avgpool2d")
    out = json.loads(result.stdout)
    assert result.exit_code == (0 if out["ok"] else 1), result.output
    assert {r["backend"] for r in out["rows"]} == {
        name for name, status in pc.available_backends().items() if status is True}
    assert "libfoo" in out["skipped"]["test-missing"]


def test_same_seed_same_cases_other_seed_other_cases():
    a = parity.random_cases("conv2d", 5, seed=1)
    assert a == parity.random_cases("conv2d", 5, seed=1)
    assert a != parity.random_cases("conv2d", 5, seed=2)
    first = run("--backends", "numpy", "--json", "--seed", "5", *FAST)
    again = run("--backends", "numpy", "--json", "--seed", "5", *FAST)
    assert json.loads(first.stdout) == json.loads(again.stdout)


def test_random_cases_reach_the_hard_paths():
    """The default case set is not all easy: it has strides, paddings, dilations, non-square
    shapes, no-bias convs and integer (tied) max-pool inputs."""
    conv = parity.random_cases("conv2d", 20)
    pool = parity.random_cases("maxpool2d", 20)
    assert any(c.params["padding"] == "same" for c in conv)
    assert any(c.params["stride"] not in (1, (1, 1)) for c in conv)
    assert any(c.params["dilation"] not in (1, (1, 1)) for c in conv)
    assert any(not c.has_bias for c in conv) and any(c.has_bias for c in conv)
    assert any(c.x_shape[2] != c.x_shape[3] for c in conv)
    assert any(c.integer_values for c in pool)
    assert any(c.params["padding"] not in (0, (0, 0)) for c in pool)


def test_error_is_measured_against_the_magnitude_of_the_terms():
    """A sum that cancels to nearly zero is held to the rounding of its terms, not to its
    own tiny size; an error that size in a sum that does not cancel still fails."""
    terms = np.array([1000.0, -999.99])
    exact = terms.sum()                           # 0.01
    rounded = np.float32(terms.astype(np.float32).sum())
    magnitude = np.abs(terms).sum()
    assert parity.compare(np.array([rounded]), np.array([exact]), "float32", np.array([magnitude])).ok
    assert not parity.compare(np.array([rounded]), np.array([exact]), "float32").ok
    off = np.array([exact + 1e-4 * magnitude], np.float32)
    assert not parity.compare(off, np.array([exact]), "float32", np.array([magnitude])).ok


def test_compare_reports_shape_dtype_and_nan_mismatches():
    e = np.zeros((2, 2))
    assert "shape" in parity.compare(np.zeros((2, 3), np.float32), e, "float32").problem
    assert "dtype" in parity.compare(np.zeros((2, 2), np.float64), e, "float32").problem
    a = np.zeros((2, 2), np.float32)
    a[1, 0] = np.nan
    cmp = parity.compare(a, e, "float32")
    assert not cmp.ok and "NaN mismatch at index (1, 0)" in cmp.problem
