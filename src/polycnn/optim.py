"""Optimisers (SGD with momentum / Nesterov / weight decay, Adam, AdamW) and learning-rate
schedules (step, cosine, warm-up).

Updates run in place on the backend, parameter by parameter, in the order of
``model.parameters()``: SGD through the parameter's backend (``Backend.sgd_step``, one kernel on
the GPU), Adam with the arrays' own operators. The state (step count, momentum / moment buffers)
can be exported and restored exactly, so a resumed run continues bit for bit.

A schedule maps the optimiser's step count ``t`` (0 for the first update) to a factor of the base
learning rate: ``lr_t = lr * schedule(t)``.
"""

from __future__ import annotations

import math

import numpy as np

from ._args import flag, integer, owned_by, real
from .backends.base import Backend


# ---- schedules ----------------------------------------------------------------------------
class Schedule:
    """Factor of the base learning rate at step ``t``; ``spec()`` makes it JSON-ready."""

    def __call__(self, t: int) -> float:
        raise NotImplementedError

    def spec(self) -> dict:
        return {"type": type(self).__name__, **self.__dict__}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


class StepLR(Schedule):
    """Multiply by ``gamma`` every ``step_size`` steps."""

    def __init__(self, step_size: int, gamma: float = 0.1):
        with owned_by("StepLR"):
            self.step_size = integer(step_size, "step_size")
            self.gamma = real(gamma, "gamma", 0.0, 1.0, lo_open=True)

    def __call__(self, t):
        return self.gamma ** (t // self.step_size)


class CosineLR(Schedule):
    """Linear warm-up from ~0 over ``warmup_steps``, then a half cosine from 1 down to
    ``min_factor`` at ``total_steps`` (held there after)."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0):
        with owned_by("CosineLR"):
            self.total_steps = integer(total_steps, "total_steps")
            self.warmup_steps = integer(warmup_steps, "warmup_steps", minimum=0)
            if self.warmup_steps >= self.total_steps:
                raise ValueError(f"warmup_steps must be an int in [0, total_steps={total_steps}),"
                                 f" got {warmup_steps!r}")
            self.min_factor = real(min_factor, "min_factor", 0.0, 1.0)

    def __call__(self, t):
        if t < self.warmup_steps:
            return (t + 1) / self.warmup_steps
        span = self.total_steps - self.warmup_steps
        progress = min(1.0, (t - self.warmup_steps) / span)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupLR(Schedule):
    """Linear warm-up over ``warmup_steps``, then constant."""

    def __init__(self, warmup_steps: int):
        with owned_by("WarmupLR"):
            self.warmup_steps = integer(warmup_steps, "warmup_steps")

    def __call__(self, t):
        return min(1.0, (t + 1) / self.warmup_steps)


SCHEDULES = {cls.__name__: cls for cls in (StepLR, CosineLR, WarmupLR)}


def schedule_from_spec(spec):
    if spec is None:
        return None
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {kind!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[kind](**spec)


# ---- optimisers ---------------------------------------------------------------------------
#: updates a parameter made without a backend (its array's own operators do the work)
_PLAIN = Backend()


class Optimizer:
    """Base class. ``params``: ``model.parameters()``; ``lr`` the base learning rate;
    ``schedule`` an optional :class:`Schedule`. ``step()`` applies one update using each
    parameter's ``grad``."""

    #: names of the per-parameter state buffers
    _buffers: tuple = ()

    def __init__(self, params, lr: float, schedule: Schedule | None = None):
        owner = type(self).__name__
        if not hasattr(params, "__iter__") or isinstance(params, (str, bytes, dict)):
            raise TypeError(f"{owner}: params must be model.parameters(), got {params!r:.80}")
        params = list(params)
        if not params:
            raise ValueError(f"{owner}: the optimiser got no parameters (pass model.parameters())")
        seen = {}
        for i, p in enumerate(params):
            if not hasattr(p, "data") or not hasattr(p, "grad"):
                raise TypeError(f"{owner}: optimiser parameters must come from model.parameters(),"
                                f" got {p!r:.80}")
            if id(p) in seen:
                # NOTE: the same array stepped twice per update is a silently different run
                raise ValueError(f"{owner}: parameter {i} ({p.name}, shape {p.shape}) is the same"
                                 f" object as parameter {seen[id(p)]}; pass each parameter once")
            seen[id(p)] = i
        if schedule is not None and not callable(schedule):
            raise TypeError(f"{owner}: schedule must be a schedule such as pc.optim.CosineLR,"
                            f" got {schedule!r}")
        self.params = params
        with owned_by(owner):
            self.lr = real(lr, "lr", 0.0, lo_open=True)
        self.schedule = schedule
        self.t = 0
        self.state = [dict() for _ in params]

    @property
    def current_lr(self) -> float:
        return self.lr * (self.schedule(self.t) if self.schedule is not None else 1.0)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        lr = self.current_lr
        self.t += 1
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if tuple(p.grad.shape) != tuple(p.data.shape):
                raise ValueError(f"gradient of {p.name} has shape {tuple(p.grad.shape)}, expected"
                                 f" {tuple(p.data.shape)}")
            self._update(p, self.state[i], lr)

    def _update(self, p, state: dict, lr: float) -> None:
        raise NotImplementedError

    def _buffer(self, state, name, p):
        buf = state.get(name)
        if buf is None:
            buf = state[name] = p.data.copy()   # same array type as the parameter (any backend)
            buf.fill(0)
        return buf

    # ---- state for checkpoints ---------------------------------------------------------
    def hyperparameters(self) -> dict:
        raise NotImplementedError

    def spec(self) -> dict:
        return {"type": type(self).__name__, "lr": self.lr, **self.hyperparameters(),
                "schedule": None if self.schedule is None else self.schedule.spec(), "t": self.t}

    def state_arrays(self) -> dict:
        """Buffers by name ``"<param index>.<buffer>"`` (backend arrays)."""
        return {f"{i}.{k}": v for i, s in enumerate(self.state) for k, v in s.items()}

    def load_state(self, spec: dict, arrays: dict, backend) -> None:
        """Restore the step count and buffers saved by ``spec()`` / ``state_arrays()``."""
        if spec.get("type") != type(self).__name__:
            raise ValueError(f"optimiser state is for {spec.get('type')}, not {type(self).__name__}")
        self.t = int(spec.get("t", 0))
        self.state = [dict() for _ in self.params]
        for key, value in arrays.items():
            index, name = key.split(".", 1)
            i = int(index)
            if not 0 <= i < len(self.params) or name not in self._buffers:
                raise ValueError(f"optimiser state {key!r} does not match the model")
            p = self.params[i]
            if tuple(value.shape) != tuple(p.data.shape):
                raise ValueError(f"optimiser state {key!r} has shape {tuple(value.shape)}, expected"
                                 f" {tuple(p.data.shape)}")
            # NOTE: a copy the optimiser owns (a checkpoint's array may be read-only)
            self.state[i][name] = backend.asarray(np.array(value, dtype=p.data.dtype, copy=True),
                                                  dtype=p.data.dtype)

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        sched = "" if self.schedule is None else f", schedule={self.schedule!r}"
        return f"{type(self).__name__}(lr={self.lr!r}, {hp}{sched})"


class SGD(Optimizer):
    """SGD with optional momentum, Nesterov momentum and L2 weight decay (PyTorch's form):
    g = grad + wd*p; v = mu*v + g; p -= lr * (g + mu*v if nesterov else v)."""

    _buffers = ("velocity",)

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, schedule: Schedule | None = None):
        super().__init__(params, lr, schedule)
        with owned_by("SGD"):
            self.momentum = real(momentum, "momentum", 0.0, 1.0, hi_open=True)
            self.weight_decay = real(weight_decay, "weight_decay", 0.0)
            self.nesterov = flag(nesterov, "nesterov")
            if self.nesterov and self.momentum == 0.0:
                raise ValueError("nesterov=True needs momentum > 0")

    def _update(self, p, state, lr):
        v = self._buffer(state, "velocity", p) if self.momentum else None
        backend = p.backend if p.backend is not None else _PLAIN
        backend.sgd_step(p.data, p.grad, v, lr, self.momentum, self.weight_decay, self.nesterov)

    def hyperparameters(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam with bias correction. ``weight_decay`` adds wd*p to the gradient (L2, coupled);
    use :class:`AdamW` for decoupled decay."""

    _buffers = ("m", "v")
    _decoupled = False

    def __init__(self, params, lr: float = 0.001, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, schedule: Schedule | None = None):
        super().__init__(params, lr, schedule)
        with owned_by(type(self).__name__):
            if not isinstance(betas, (tuple, list)) or len(betas) != 2:
                raise TypeError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
            self.betas = tuple(real(b, f"betas[{i}]", 0.0, 1.0, hi_open=True)
                               for i, b in enumerate(betas))
            self.eps = real(eps, "eps", 0.0, lo_open=True)
            self.weight_decay = real(weight_decay, "weight_decay", 0.0)

    def _update(self, p, state, lr):
        xp_t = p.data.dtype.type
        b1, b2 = self.betas
        g = p.grad
        if self.weight_decay and not self._decoupled:
            g = g + xp_t(self.weight_decay) * p.data
        m = self._buffer(state, "m", p)
        v = self._buffer(state, "v", p)
        m *= xp_t(b1)
        m += xp_t(1 - b1) * g
        v *= xp_t(b2)
        v += xp_t(1 - b2) * (g * g)
        t = self.t
        step = lr / (1 - b1 ** t)
        denom_scale = 1.0 / math.sqrt(1 - b2 ** t)
        if self.weight_decay and self._decoupled:
            p.data *= xp_t(1 - lr * self.weight_decay)
        denom = (v ** xp_t(0.5)) * xp_t(denom_scale)
        denom += xp_t(self.eps)
        p.data -= xp_t(step) * (m / denom)

    def hyperparameters(self):
        return {"betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr*wd before the Adam step."""

    _decoupled = True

    def __init__(self, params, lr: float = 0.001, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, schedule: Schedule | None = None):
        super().__init__(params, lr, betas, eps, weight_decay, schedule)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def optimizer_from_spec(spec: dict, params):
    spec = dict(spec)
    kind = spec.pop("type", None)
    classes = {cls.__name__: cls for cls in OPTIMIZERS.values()}
    if kind not in classes:
        raise ValueError(f"unknown optimiser {kind!r}; known: {', '.join(classes)}")
    spec.pop("t", None)
    schedule = schedule_from_spec(spec.pop("schedule", None))
    if "betas" in spec:
        spec["betas"] = tuple(spec["betas"])
    return classes[kind](params, schedule=schedule, **spec)


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Schedule", "StepLR", "CosineLR", "WarmupLR",
           "OPTIMIZERS", "optimizer_from_spec", "schedule_from_spec"]
