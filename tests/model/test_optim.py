"""Optimisers against PyTorch's (when installed) and a hand-written update; schedules; state."""

from __future__ import annotations

import math

import numpy as np
import pytest

import polycnn as pc
from polycnn.layers import Parameter


def _params(backend, rng):
    # NOTE: with its backend, as a layer makes it: SGD updates through backend.sgd_step
    return [Parameter(backend.asarray(rng.standard_normal(s)), f"p{i}", backend) for i, s in
            enumerate([(3, 4), (5,)])]


def _grads(rng, step):
    r = np.random.default_rng(100 + step)
    return [r.standard_normal((3, 4)), r.standard_normal(5)]


def _run_ours(backend, make, steps=5):
    params = _params(backend, np.random.default_rng(0))
    opt = make(params)
    for t in range(steps):
        for p, g in zip(params, _grads(None, t)):
            p.grad = backend.asarray(g)
        opt.step()
    return [backend.to_numpy(p.data) for p in params], opt


OPTIMIZER_CASES = {
    "sgd": (lambda ps: pc.SGD(ps, lr=0.1), "SGD", dict(lr=0.1)),
    "sgd-momentum-wd": (lambda ps: pc.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01), "SGD",
                        dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    "sgd-nesterov": (lambda ps: pc.SGD(ps, lr=0.05, momentum=0.8, nesterov=True), "SGD",
                     dict(lr=0.05, momentum=0.8, nesterov=True)),
    "adam": (lambda ps: pc.Adam(ps, lr=0.01), "Adam", dict(lr=0.01)),
    "adam-l2": (lambda ps: pc.Adam(ps, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1), "Adam",
                dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    "adamw": (lambda ps: pc.AdamW(ps, lr=0.01, weight_decay=0.1), "AdamW", dict(lr=0.01, weight_decay=0.1)),
}


@pytest.mark.parametrize("case", list(OPTIMIZER_CASES))
def test_optimizer_matches_pytorch(backend, case):
    torch = pytest.importorskip("torch")
    make, torch_name, kwargs = OPTIMIZER_CASES[case]
    ours, _ = _run_ours(backend, make)
    tparams = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in
               [backend.to_numpy(p.data) for p in _params(backend, np.random.default_rng(0))]]
    topt = getattr(torch.optim, torch_name)(tparams, **kwargs)
    for t in range(5):
        for p, g in zip(tparams, _grads(None, t)):
            p.grad = torch.tensor(g)
        topt.step()
    for a, b in zip(ours, tparams):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=f"{case}, backend={backend.name}")


SGD_CASES = {"sgd": dict(lr=0.1), "sgd-momentum-wd": dict(lr=0.1, momentum=0.9, weight_decay=0.01),
             "sgd-nesterov": dict(lr=0.05, momentum=0.8, nesterov=True)}


@pytest.mark.parametrize("case", list(SGD_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_matches_a_hand_written_update(backend, case, dtype):
    """SGD runs through the parameter's backend (one kernel a parameter on the GPU): the same
    five steps as the formula written out in float64."""
    kw = SGD_CASES[case]
    lr, mu, wd, nesterov = kw["lr"], kw.get("momentum", 0.0), kw.get("weight_decay", 0.0), \
        kw.get("nesterov", False)
    start = [np.random.default_rng(0).standard_normal(s) for s in [(3, 4), (5,)]]
    params = [Parameter(backend.asarray(a.astype(dtype)), f"p{i}", backend) for i, a in enumerate(start)]
    opt = pc.SGD(params, **kw)
    want = [a.astype(dtype).astype(np.float64) for a in start]
    velocity = [np.zeros_like(a) for a in want]
    for t in range(5):
        for i, (p, g) in enumerate(zip(params, _grads(None, t))):
            g = g.astype(dtype)
            p.grad = backend.asarray(g)
            g = g.astype(np.float64) + wd * want[i]
            if mu:
                velocity[i] = mu * velocity[i] + g
                g = g + mu * velocity[i] if nesterov else velocity[i]
            want[i] = want[i] - lr * g
        opt.step()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for p, w in zip(params, want):
        assert p.data.dtype == dtype
        np.testing.assert_allclose(backend.to_numpy(p.data), w, rtol=tol, atol=tol)


def test_adam_first_step_by_hand(backend):
    params = [Parameter(backend.asarray(np.array([1.0, -2.0])), "w")]
    opt = pc.Adam(params, lr=0.1)
    params[0].grad = backend.asarray(np.array([0.5, -3.0]))
    opt.step()
    # after bias correction the first Adam step is lr * sign(g) (up to eps)
    np.testing.assert_allclose(backend.to_numpy(params[0].data), [0.9, -1.9], rtol=1e-7)


def test_schedules():
    step = pc.optim.StepLR(step_size=10, gamma=0.5)
    assert [step(t) for t in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    cos = pc.optim.CosineLR(total_steps=110, warmup_steps=10, min_factor=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(60) == pytest.approx(0.55)
    assert cos(110) == pytest.approx(0.1) and cos(500) == pytest.approx(0.1)
    warm = pc.optim.WarmupLR(4)
    assert [warm(t) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_schedule_drives_the_learning_rate(backend):
    params = [Parameter(backend.asarray(np.zeros(1)), "w")]
    opt = pc.SGD(params, lr=1.0, schedule=pc.optim.StepLR(1, gamma=0.5))
    for _ in range(3):
        params[0].grad = backend.asarray(np.ones(1))
        opt.step()
    assert backend.to_numpy(params[0].data)[0] == pytest.approx(-(1 + 0.5 + 0.25))
    assert opt.current_lr == pytest.approx(0.125)


def test_state_round_trip_continues_identically(backend):
    make = OPTIMIZER_CASES["adamw"][0]
    full, _ = _run_ours(backend, make, steps=6)
    params = _params(backend, np.random.default_rng(0))
    opt = make(params)
    for t in range(3):
        for p, g in zip(params, _grads(None, t)):
            p.grad = backend.asarray(g)
        opt.step()
    spec, arrays = opt.spec(), {k: backend.to_numpy(v) for k, v in opt.state_arrays().items()}
    fresh = pc.optim.optimizer_from_spec(spec, params)
    fresh.load_state(spec, arrays, backend)
    for t in range(3, 6):
        for p, g in zip(params, _grads(None, t)):
            p.grad = backend.asarray(g)
        fresh.step()
    for a, p in zip(full, params):
        np.testing.assert_array_equal(a, backend.to_numpy(p.data))


@pytest.mark.parametrize("make, error", [
    (lambda ps: pc.SGD(ps, lr=0), ValueError),
    (lambda ps: pc.SGD(ps, lr=math.nan), ValueError),
    (lambda ps: pc.SGD(ps, lr=0.1, nesterov=True), ValueError),
    (lambda ps: pc.SGD(ps, lr=0.1, momentum=1.5), ValueError),
    (lambda ps: pc.Adam(ps, betas=(0.9, 1.0)), ValueError),
    (lambda ps: pc.Adam(ps, betas=0.9), TypeError),
    (lambda ps: pc.SGD([], lr=0.1), ValueError),
    (lambda ps: pc.SGD([1.0], lr=0.1), TypeError),
    (lambda ps: pc.optim.CosineLR(10, warmup_steps=10), ValueError),
    (lambda ps: pc.optim.StepLR(0), ValueError),
])
def test_bad_arguments(make, error):
    params = [Parameter(np.zeros(2), "w")]
    with pytest.raises(error):
        make(params)
