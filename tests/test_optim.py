"""Optimisers against PyTorch's (when installed) and a hand-written update; schedules; state."""

from __future__ import annotations

import math

import numpy as np
import pytest

import polycnn as pc
from polycnn.layers import Parameter


def _params(backend, rng):
    return [Parameter(backend.asarray(rng.standard_normal(s)), f"p{i}") for i, s in
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
