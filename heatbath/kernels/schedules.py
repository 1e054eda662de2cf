"""Step-size and temperature schedules: functions of the step count.

A schedule is any callable ``step -> value`` with ``step`` an integer (a traced int32 inside
the scan). Samplers keep their step count in their state and evaluate their schedules at it,
so a schedule costs one scalar expression per step.

- ``constant(v)``:                     v_k = v
- ``polynomial_decay(a, b, gamma)``:   v_k = a (b + k)^(-gamma)
  (Welling & Teh 2011: sum v_k = inf, sum v_k^2 < inf for gamma in (0.5, 1])
- ``cyclical(v0, num_steps, num_cycles)``: cSG-MCMC (Zhang et al., ICLR 2020),
  v_k = v0/2 (cos(pi mod(k, L) / L) + 1), L = ceil(num_steps / num_cycles)
- ``geometric_cooling(v0, rate, v_min=0)``: v_k = max(v0 rate^k, v_min), an annealing schedule
- ``polynomial_cooling(v0, num_steps, power)``: v_k = v0 max(1 - k / num_steps, 0)^power,
  reaching exactly 0 at ``num_steps`` (annealing to the MAP)
- ``cyclical_temperature(T, num_steps, num_cycles, exploration)``: the temperature companion
  of ``cyclical`` in cSG-MCMC: T_k = 0 in the exploration phase (the first ``exploration``
  fraction of each cycle, large steps, an optimizer) and T_k = T in the sampling phase (the
  low-step end of the cycle, where draws are kept)
- ``in_sampling_phase(step, num_steps, num_cycles, exploration)``: the boolean mask of the
  sampling phase, to select the draws of a cSG-MCMC run
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
from typing import Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
ScheduleLike = Union[float, Schedule]

__all__ = [
    "Schedule",
    "as_schedule",
    "constant",
    "polynomial_decay",
    "cyclical",
    "geometric_cooling",
    "polynomial_cooling",
    "cyclical_temperature",
    "in_sampling_phase",
    "is_constant",
    "Described",
]


def _as_float(step):
    """The step count as the default float (float32, or float64 under jax_enable_x64)."""
    return jnp.asarray(step).astype(jnp.result_type(float))


class Described:
    """A schedule that knows its own parameters: ``repr`` gives ``name(arg=value, ...)``.

    heatbath's schedules are Described, so checkpoints can record them and refuse to resume a
    run with other schedule parameters.
    """

    def __init__(self, fn, name: str, **params):
        self._fn = fn
        self.description = f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")"

    def __call__(self, step):
        return self._fn(step)

    def __repr__(self) -> str:
        return self.description


class _Constant:
    """A constant schedule that remembers its value (so drivers can read it statically)."""

    def __init__(self, value: float):
        self.value = float(value)

    def __call__(self, step):
        del step
        return jnp.asarray(self.value)

    def __repr__(self) -> str:
        return f"constant({self.value!r})"


def constant(value: float) -> Schedule:
    """v_k = value."""
    return _Constant(value)


def is_constant(schedule: Schedule):
    """Return the value of a constant schedule, or None when it varies with the step."""
    return schedule.value if isinstance(schedule, _Constant) else None


# ----------------------------------------------------------------------------------------
# Values chosen by the driver, given to the compiled loop as arguments
# ----------------------------------------------------------------------------------------
_TUNED: contextvars.ContextVar = contextvars.ContextVar("heatbath_tuned_values", default=None)


class Tuned(float):
    """A constant the driver chose (``hb.sample``'s automatic step size or friction): a float for
    every reader, whose schedule reads its value from the compiled loop's arguments while the loop
    is traced (:func:`tuned_values`) and is the constant otherwise. The drivers' compile cache
    keys it by its name alone (:mod:`heatbath.drivers.cache`), so a run whose tuning chose another
    value (another seed, other data) reuses the compiled loop instead of compiling it again."""

    def __new__(cls, value, name: str):
        obj = super().__new__(cls, value)
        obj.name = name
        return obj

    def __reduce__(self):
        return (Tuned, (float(self), self.name))


class _TunedSchedule(_Constant):
    """The schedule of a :class:`Tuned` value (see there): a constant for every static reader."""

    def __init__(self, name: str, value: float):
        super().__init__(value)
        self.name = name

    def __call__(self, step):
        if current_tuned() is None:
            return super().__call__(step)
        return _traced(self.name)


@contextlib.contextmanager
def tuned_values(values: dict):
    """While tracing the compiled loop: the :class:`Tuned` schedules named in ``values`` return
    those (traced) values instead of their constants."""
    token = _TUNED.set(dict(values))
    try:
        yield
    finally:
        _TUNED.reset(token)


def with_metric_argument(fn):
    """``shared(values, *args)``: ``fn(*args)`` compiled once with the :class:`Tuned` values and
    a whitened target's metric read from ``values`` (a dict of arrays) while traced, so one
    compiled function serves every value (another seed's metric). Where a compiled loop's own
    values are being traced (:func:`current_tuned` is not None) it calls ``fn`` itself, which
    reads the loop's: the compiled function would make ``values`` constants of that loop."""

    def with_values(values, *args):
        with tuned_values(values):
            return fn(*args)

    compiled = jax.jit(with_values)

    def shared(values, *args):
        if current_tuned() is not None:
            return fn(*args)
        return compiled({k: jnp.asarray(v) for k, v in values.items()}, *args)

    return shared


def current_tuned():
    """The values given by :func:`tuned_values` while the compiled loop is traced (None outside)."""
    return _TUNED.get()


def tuned_value(value):
    """``value`` as the compiled loop reads it: a :class:`Tuned` value's traced argument while the
    loop is traced (:func:`tuned_values`), its float otherwise; any other value as it is."""
    if not isinstance(value, Tuned):
        return value
    return float(value) if current_tuned() is None else _traced(value.name)


def _traced(name: str):
    """The traced argument named ``name`` of the compiled loop being traced."""
    values = current_tuned()
    if name not in values:  # keyed by name, so it must not be compiled in as a constant
        raise RuntimeError(f"the tuned value {name!r} is traced in a compiled loop that does not take it "
                           "as an argument (heatbath.kernels.schedules.tuned_in)")
    return values[name]


def tuned_in(hyperparameters: dict) -> dict:
    """``{name: value}`` of the :class:`Tuned` values among a sampler's hyperparameters."""
    return {v.name: float(v) for _, v in sorted(hyperparameters.items()) if isinstance(v, Tuned)}


def polynomial_decay(a: float, b: float = 1.0, gamma: float = 0.55) -> Schedule:
    """v_k = a (b + k)^(-gamma) (Welling & Teh 2011)."""
    if a <= 0 or b <= 0:
        raise ValueError(f"polynomial_decay needs a > 0 and b > 0, got a={a}, b={b}")
    if not 0 <= gamma <= 1:
        raise ValueError(f"polynomial_decay needs 0 <= gamma <= 1, got {gamma}")

    def schedule(step):
        return a * (b + _as_float(step)) ** (-gamma)

    return Described(schedule, "polynomial_decay", a=a, b=b, gamma=gamma)


def cyclical(value: float, num_steps: int, num_cycles: int) -> Schedule:
    """Cosine cycles of cSG-MCMC (Zhang et al. 2020): v_k = v0/2 (cos(pi mod(k, L)/L) + 1)."""
    if value <= 0:
        raise ValueError(f"cyclical needs a positive initial value, got {value}")
    if num_steps <= 0 or num_cycles <= 0 or num_cycles > num_steps:
        raise ValueError(
            f"cyclical needs 0 < num_cycles <= num_steps, got {num_cycles} cycles over {num_steps} steps"
        )
    length = math.ceil(num_steps / num_cycles)

    def schedule(step):
        phase = jnp.mod(_as_float(step), length) / length
        return 0.5 * value * (jnp.cos(jnp.pi * phase) + 1.0)

    return Described(schedule, "cyclical", value=value, num_steps=num_steps, num_cycles=num_cycles)


def geometric_cooling(value: float, rate: float, minimum: float = 0.0) -> Schedule:
    """v_k = max(v0 rate^k, minimum), 0 < rate < 1: geometric annealing."""
    if value < 0 or minimum < 0:
        raise ValueError("geometric_cooling needs non-negative values")
    if not 0 < rate < 1:
        raise ValueError(f"geometric_cooling needs 0 < rate < 1, got {rate}")

    def schedule(step):
        return jnp.maximum(value * rate ** _as_float(step), minimum)

    return Described(schedule, "geometric_cooling", value=value, rate=rate, minimum=minimum)


def polynomial_cooling(value: float, num_steps: int, power: float = 1.0) -> Schedule:
    """v_k = v0 max(1 - k/num_steps, 0)^power: reaches exactly 0 at ``num_steps``."""
    if value < 0:
        raise ValueError(f"polynomial_cooling needs a non-negative value, got {value}")
    if num_steps <= 0 or power <= 0:
        raise ValueError("polynomial_cooling needs num_steps > 0 and power > 0")

    def schedule(step):
        # Subtract in integers first: 1 - k / K in float32 is not exactly 0 at k = K once XLA
        # turns the division into a multiplication by 1 / K.
        remaining = jnp.clip(num_steps - jnp.asarray(step, jnp.int32), 0, num_steps)
        frac = _as_float(remaining) / num_steps
        return value * frac**power

    return Described(schedule, "polynomial_cooling", value=value, num_steps=num_steps, power=power)


def _check_cycles(num_steps, num_cycles, exploration, who):
    for name, v in (("num_steps", num_steps), ("num_cycles", num_cycles)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{who} needs an integer {name}, got {v!r}")
    if num_steps <= 0 or num_cycles <= 0 or num_cycles > num_steps:
        raise ValueError(f"{who} needs 0 < num_cycles <= num_steps, got {num_cycles} cycles over {num_steps} steps")
    if not 0.0 <= float(exploration) < 1.0:
        raise ValueError(f"{who} needs 0 <= exploration < 1 (the fraction of each cycle without noise), got {exploration}")
    length = math.ceil(num_steps / num_cycles)
    # The first sampling step of a cycle, in integers so that traced and NumPy steps agree:
    # r_k >= exploration  <=>  mod(k, L) >= ceil(exploration * L).
    first = min(length - 1, math.ceil(float(exploration) * length - 1e-9))
    return length, first


def in_sampling_phase(step, num_steps: int, num_cycles: int, exploration: float = 0.8):
    """The sampling phase of cSG-MCMC (Zhang, Li, Zhang, Chen & Wilson, ICLR 2020).

    With L = ceil(num_steps / num_cycles) and r_k = mod(k, L) / L, step k is in the sampling
    phase when r_k >= exploration (the low-step-size end of the cosine cycle of
    :func:`cyclical`), in the exploration phase otherwise. Works on a traced step or a
    NumPy array of steps (e.g. to select the draws of ``hb.sample`` kept at those steps).
    """
    length, first = _check_cycles(num_steps, num_cycles, exploration, "in_sampling_phase")
    if isinstance(step, (numbers.Integral, np.ndarray, list, tuple)):
        return np.mod(np.asarray(step, np.int64), length) >= first
    return jnp.mod(jnp.asarray(step, jnp.int32), length) >= first


def cyclical_temperature(value: float, num_steps: int, num_cycles: int, exploration: float = 0.8) -> Schedule:
    """Temperature of cSG-MCMC (Zhang et al. 2020): 0 while exploring, ``value`` while sampling.

        r_k = mod(k, L) / L,  L = ceil(num_steps / num_cycles)
        T_k = 0      if r_k < exploration   (exploration: large steps, an optimizer)
        T_k = value  if r_k >= exploration  (sampling: small steps, Langevin noise on)

    Pair it with ``cyclical(h0, num_steps, num_cycles)`` for the step size, so the noise is on
    exactly in the low-step end of each cycle; keep the draws where
    ``in_sampling_phase(step, ...)`` holds (equivalently ``stats["temperature"] > 0``).
    The paper uses exploration = 0.8 to 0.94 on CIFAR.
    """
    if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"cyclical_temperature needs a finite temperature >= 0, got {value!r}")
    length, first = _check_cycles(num_steps, num_cycles, exploration, "cyclical_temperature")
    value = float(value)

    def schedule(step):
        return jnp.where(jnp.mod(jnp.asarray(step, jnp.int32), length) >= first, value, 0.0)

    return Described(schedule, "cyclical_temperature", value=value, num_steps=num_steps, num_cycles=num_cycles, exploration=exploration)


def as_schedule(value: ScheduleLike, name: str, *, positive: bool = True) -> Schedule:
    """Turn a number or a callable into a validated schedule.

    Raises a ``ValueError`` naming ``name`` when a number is out of range (negative, or zero
    when ``positive``), non-finite, or when a callable does not map a step count to a
    scalar of the allowed range. Callables are checked at steps 0 and 1 eagerly, before
    any compilation, and traced once with an abstract step (a ``TypeError`` when they
    branch on the step in Python, which would fail only inside the compiled loop).
    """
    if isinstance(value, Tuned):
        checked = as_schedule(float(value), name, positive=positive)  # the same errors as a number
        return _TunedSchedule(value.name, checked.value)
    if isinstance(value, (numbers.Real, np.ndarray, jnp.ndarray)) and not callable(value):
        if np.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar or a schedule, got an array of shape {np.shape(value)}")
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
        if positive and v <= 0:
            raise ValueError(f"{name} must be > 0, got {v}")
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
        return constant(v)
    if not callable(value):
        raise TypeError(f"{name} must be a number or a schedule (a function of the step count), got {type(value).__name__}")
    if isinstance(value, _TunedSchedule):  # a tuned schedule again: it keeps its name (a chunk argument)
        return as_schedule(Tuned(value.value, value.name), name, positive=positive)
    if isinstance(value, _Constant):
        return as_schedule(value.value, name, positive=positive)
    for step in (0, 1):
        try:
            out = value(jnp.asarray(step, jnp.int32))
        except TypeError as err:
            raise TypeError(
                f"{name} schedule must be a function of the step count (one integer argument): {err}"
            ) from err
        if np.ndim(out) != 0:
            raise ValueError(f"{name} schedule must return a scalar, got shape {np.shape(out)} at step {step}")
        try:
            v = float(out)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} schedule must return a number, got {out!r} at step {step}") from err
        if not math.isfinite(v) or v < 0 or (positive and v == 0 and step == 0):
            raise ValueError(f"{name} schedule returned {v} at step {step}; it must be finite and non-negative")
    # Inside the sampler's scan the step is a traced int32: a schedule that branches on it
    # in Python (``if step < 100``) only fails there, deep in the compile. Trace it now.
    try:
        jax.eval_shape(value, jax.ShapeDtypeStruct((), jnp.int32))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError) as err:
        raise TypeError(
            f"{name} schedule must be a traceable function of the step count (a traced int32 inside "
            "the compiled loop): use jnp.where / jnp.minimum instead of Python if/int() on the step"
        ) from err
    return value
