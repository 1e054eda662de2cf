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
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Union

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
    "is_constant",
]


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


def polynomial_decay(a: float, b: float = 1.0, gamma: float = 0.55) -> Schedule:
    """v_k = a (b + k)^(-gamma) (Welling & Teh 2011)."""
    if a <= 0 or b <= 0:
        raise ValueError(f"polynomial_decay needs a > 0 and b > 0, got a={a}, b={b}")
    if not 0 <= gamma <= 1:
        raise ValueError(f"polynomial_decay needs 0 <= gamma <= 1, got {gamma}")

    def schedule(step):
        return a * (b + jnp.asarray(step, jnp.float32)) ** (-gamma)

    return schedule


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
        phase = jnp.mod(jnp.asarray(step, jnp.float32), length) / length
        return 0.5 * value * (jnp.cos(jnp.pi * phase) + 1.0)

    return schedule


def geometric_cooling(value: float, rate: float, minimum: float = 0.0) -> Schedule:
    """v_k = max(v0 rate^k, minimum), 0 < rate < 1: geometric annealing."""
    if value < 0 or minimum < 0:
        raise ValueError("geometric_cooling needs non-negative values")
    if not 0 < rate < 1:
        raise ValueError(f"geometric_cooling needs 0 < rate < 1, got {rate}")

    def schedule(step):
        return jnp.maximum(value * rate ** jnp.asarray(step, jnp.float32), minimum)

    return schedule


def polynomial_cooling(value: float, num_steps: int, power: float = 1.0) -> Schedule:
    """v_k = v0 max(1 - k/num_steps, 0)^power: reaches exactly 0 at ``num_steps``."""
    if value < 0:
        raise ValueError(f"polynomial_cooling needs a non-negative value, got {value}")
    if num_steps <= 0 or power <= 0:
        raise ValueError("polynomial_cooling needs num_steps > 0 and power > 0")

    def schedule(step):
        frac = jnp.clip(1.0 - jnp.asarray(step, jnp.float32) / num_steps, 0.0, 1.0)
        return value * frac**power

    return schedule


def as_schedule(value: ScheduleLike, name: str, *, positive: bool = True) -> Schedule:
    """Turn a number or a callable into a validated schedule.

    Raises a ``ValueError`` naming ``name`` when a number is out of range (negative, or zero
    when ``positive``), non-finite, or when a callable does not map a step count to a
    scalar of the allowed range. Callables are checked at steps 0 and 1 eagerly, before
    any compilation.
    """
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
        v = float(out)
        if not math.isfinite(v) or v < 0 or (positive and v == 0 and step == 0):
            raise ValueError(f"{name} schedule returned {v} at step {step}; it must be finite and non-negative")
    return value
