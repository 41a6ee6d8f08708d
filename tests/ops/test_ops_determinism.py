"""Same inputs, same bits: every op, forward and backward, on every backend; and a result is
never overwritten by a later call (no scratch buffer handed out as an output)."""

import numpy as np
import pytest

from polycnn import parity
from polycnn.parity import Case

# big enough for several threads / blocks / batch chunks, small enough for the CUDA emulator
CASES = [
    Case("conv2d", (4, 4, 12, 11), {"stride": 1, "padding": 1}, w_shape=(8, 4, 3, 3),
         has_bias=True, seed=1, name="conv-pad1"),
    Case("conv2d", (3, 3, 11, 9), {"stride": (2, 1), "padding": "valid", "dilation": 2},
         w_shape=(5, 3, 2, 3), seed=2, name="conv-strided-dilated"),
    Case("maxpool2d", (4, 4, 12, 11), {"kernel_size": 3, "stride": 2, "padding": 1},
         integer_values=True, seed=3, name="maxpool-ties"),
    Case("avgpool2d", (4, 4, 12, 11), {"kernel_size": 3, "stride": 1, "padding": 1},
         seed=4, name="avgpool-overlap"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_same_inputs_give_bit_identical_outputs(backend, dtype, case):
    first = parity.backend_results(backend, case, dtype)
    second = parity.backend_results(backend, case, dtype)
    for name in first:
        assert np.array_equal(first[name], second[name], equal_nan=True), (
            f"{case.op} {name}, backend={backend.name}, dtype={dtype}, case={case.describe()}:"
            f" two runs differ by up to {np.abs(first[name] - second[name]).max():.3g}")


@pytest.mark.parametrize("op", ["conv2d", "maxpool2d", "avgpool2d"])
def test_results_survive_later_calls(backend, op):
    """The arrays returned by one forward/backward keep their values after another call of
    the same shape with other inputs."""
    case = next(c for c in CASES if c.op == op)
    other = Case(**{**case.__dict__, "seed": case.seed + 100})
    be = backend
    a = case.arrays(np.float32)
    x, dy = be.asarray(a["x"]), be.asarray(a["dy"])
    if op == "conv2d":
        y, ctx = be.conv2d_forward(x, be.asarray(a["w"]), None if a["b"] is None else be.asarray(a["b"]),
                                   **case.params)
        grads = be.conv2d_backward(dy, ctx)
    else:
        y, ctx = getattr(be, f"{op}_forward")(x, **case.params)
        grads = (getattr(be, f"{op}_backward")(dy, ctx),)
    kept = [be.to_numpy(v).copy() for v in (y, *grads) if v is not None]
    parity.backend_results(be, other, np.float32)
    after = [be.to_numpy(v) for v in (y, *grads) if v is not None]
    for i, (before, now) in enumerate(zip(kept, after)):
        assert np.array_equal(before, now), (
            f"{op}: result {i} (0 = forward) changed after a later call, backend={be.name}")
