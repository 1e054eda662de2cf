"""Step-size and temperature schedules: values against their formulas, and bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heatbath.kernels import schedules as S

STEPS = np.array([0, 1, 2, 7, 24, 25, 26, 49, 50, 99, 100, 101, 250, 999])


def _values(schedule, steps=STEPS):
    """Evaluate inside jit on a traced int32 step, as the samplers do."""
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32)))


def test_constant():
    s = S.constant(0.3)
    np.testing.assert_allclose(_values(s), 0.3, rtol=1e-7)
    assert S.is_constant(s) == 0.3 and S.is_constant(lambda k: 0.3) is None


def test_polynomial_decay():
    np.testing.assert_allclose(_values(S.polynomial_decay(0.1, 10.0, 0.55)), 0.1 * (10.0 + STEPS) ** -0.55, rtol=1e-6)


def test_cyclical_step_size():
    L = math.ceil(1000 / 40)  # 25
    expected = 0.5 * 0.2 * (np.cos(np.pi * np.mod(STEPS, L) / L) + 1)
    np.testing.assert_allclose(_values(S.cyclical(0.2, 1000, 40)), expected, rtol=1e-5, atol=1e-8)


def test_geometric_and_polynomial_cooling():
    np.testing.assert_allclose(_values(S.geometric_cooling(2.0, 0.99, 0.1)), np.maximum(2.0 * 0.99**STEPS, 0.1),
                               rtol=1e-5)
    np.testing.assert_allclose(_values(S.polynomial_cooling(2.0, 100, 2.0)),
                               2.0 * np.clip(1 - STEPS / 100, 0, 1) ** 2, rtol=1e-5, atol=1e-7)
    assert _values(S.polynomial_cooling(2.0, 100))[STEPS >= 100].max() == 0.0  # exactly 0 from num_steps on


def test_cyclical_temperature_and_sampling_phase():
    """T_k = 0 for mod(k, L)/L < exploration, T otherwise; the NumPy mask agrees with the traced one."""
    K, M, beta = 1000, 40, 0.8
    L = 25
    expected = np.where(np.mod(STEPS, L) / L >= beta, 0.7, 0.0)
    np.testing.assert_allclose(_values(S.cyclical_temperature(0.7, K, M, beta)), expected)
    all_steps = np.arange(K)
    mask_np = S.in_sampling_phase(all_steps, K, M, beta)
    mask_jit = np.asarray(jax.jit(jax.vmap(lambda k: S.in_sampling_phase(k, K, M, beta)))(jnp.asarray(all_steps)))
    np.testing.assert_array_equal(mask_np, mask_jit)
    assert mask_np.sum() == M * 5  # the last 5 steps of each 25-step cycle
    # The sampling phase is the low-step end of the step-size cycle.
    h = _values(S.cyclical(1.0, K, M), all_steps)
    assert h[mask_np].max() < h[~mask_np].min()
    # Boundary cases: exploration 0 (always sampling); close to 1 (at least one sampling step).
    assert S.in_sampling_phase(all_steps, K, M, 0.0).all()
    assert S.in_sampling_phase(all_steps, K, M, 0.999).sum() == M


@pytest.mark.parametrize(
    "value, error, match",
    [
        (-0.5, ValueError, ">= 0"),
        (float("nan"), ValueError, "finite"),
        (np.ones(3), ValueError, "scalar"),
        ("hot", TypeError, "number or a schedule"),
        (lambda: 1.0, TypeError, "function of the step count"),
        (lambda step, epoch: 1.0, TypeError, "function of the step count"),
        (lambda step: 1.0 if step < 10 else 0.0, TypeError, "traceable"),
        (lambda step: jnp.ones(2) * step, ValueError, "scalar"),
        (lambda step: -1.0 + 0.0 * step, ValueError, "non-negative"),
        (lambda step: jnp.nan * step, ValueError, "finite"),
    ],
)
def test_as_schedule_rejects_bad_temperatures(value, error, match):
    with pytest.raises(error, match=match):
        S.as_schedule(value, "temperature", positive=False)


def test_as_schedule_accepts_good_input():
    assert S.is_constant(S.as_schedule(0.0, "temperature", positive=False)) == 0.0
    f = S.as_schedule(lambda k: 1.0 / (1.0 + k), "temperature", positive=False)
    assert float(f(jnp.asarray(3))) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="> 0"):
        S.as_schedule(0.0, "step_size", positive=True)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: S.cyclical_temperature(-1.0, 100, 4), "temperature >= 0"),
        (lambda: S.cyclical_temperature(1.0, 100, 4, exploration=1.0), "exploration"),
        (lambda: S.cyclical_temperature(1.0, 100, 0), "num_cycles"),
        (lambda: S.cyclical_temperature(1.0, 10, 20), "num_cycles"),
        (lambda: S.in_sampling_phase(3, 100, 4, exploration=-0.1), "exploration"),
        (lambda: S.cyclical(0.0, 100, 4), "positive"),
        (lambda: S.geometric_cooling(1.0, 1.5), "rate"),
        (lambda: S.polynomial_cooling(-1.0, 100), "non-negative"),
    ],
)
def test_schedule_constructors_reject_bad_input(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_a_tuned_schedule_keeps_its_name_through_as_schedule():
    """A schedule built from a Tuned value, passed through as_schedule again, stays tuned (the
    compiled loop reads it as an argument) with the same value and the same checks."""
    from heatbath.kernels import schedules as S

    s = S.as_schedule(S.Tuned(0.01, "step_size"), "step_size")
    again = S.as_schedule(s, "step_size")
    assert isinstance(again, S._TunedSchedule) and again.name == "step_size" and again.value == 0.01
    with pytest.raises(ValueError, match="friction must be > 0"):
        S.as_schedule(S.as_schedule(S.Tuned(0.0, "friction"), "friction", positive=False), "friction")
