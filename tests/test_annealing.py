"""Annealing to the MAP, cyclical SG-MCMC and cold posteriors: the temperature dial in use."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import heatbath as hb
from heatbath.kernels import schedules as S
from heatbath.optim import anneal, cyclical, sampling_phase

TILT = 0.5


def _double_well(d):
    """U(x) = sum_i (x_i^2 - 1)^2 + 0.5 x_i: 2^d minima, the global one at x_i = -1.06 for all i
    (U = -0.52 per coordinate there, +0.48 in the other well; barrier top 1.03 at x = 0.125)."""
    def logp(x):
        return -jnp.sum((x**2 - 1.0) ** 2 + TILT * x)

    return hb.models.from_logdensity(logp, lambda x, b: 0.0 * jnp.sum(b), jnp.zeros((1, 1)),
                                     params=jnp.zeros(d) if d else jnp.zeros(()))


def _final_positions(target, sampler, num_steps, init, seed=1):
    res = hb.sample(target, sampler, num_samples=1, num_warmup=num_steps - 1, num_chains=init.shape[0],
                    init=init, seed=seed, progress_bar=False)
    return np.asarray(res.final_state.position)


# slow: 3 optimizers x many restarts (default-suite budget)
@pytest.mark.slow
def test_annealed_sgld_finds_the_global_minimum_more_often_than_sgd_and_adam():
    """10-D tilted double well (1024 minima), 100 starts uniform in [-2, 2]^10, 5000 steps each.

    Success = every coordinate in the global well (x_i < 0). A descent from a uniform start
    ends in the well it starts in: per coordinate P(x0 < 0.125) = 0.53, so 0.53^10 = 0.2% of
    the starts (P(5 or more of 100) < 1e-6). Annealed SGLD (T_k = 0.5 (1 - k/4500), then 500
    noiseless steps; h = 0.04) crosses the barrier while T is high and freezes in the global
    well with probability ~0.986 per coordinate, ~0.88 for all ten (measured 88/100 with the
    cooling over all 5000 steps): P(< 60 of 100 | 0.88) < 1e-10, so >= 60 is a safe bar,
    and the test fails if annealing does nothing.
    """
    d, K = 10, 5000
    target = _double_well(d)
    starts = jax.random.uniform(jax.random.key(0), (100, d), minval=-2.0, maxval=2.0)
    results = {
        "sgd": _final_positions(target, hb.samplers.sgld(0.04, temperature=0.0), K, starts),
        "adam": _final_positions(target, hb.optim.from_optax(optax.adam(0.01)), K, starts),
        "annealed sgld": _final_positions(
            target, hb.samplers.sgld(0.04, temperature=S.polynomial_cooling(0.5, K - 500)), K, starts),
    }
    share = {k: float(np.mean(np.all(v < 0, axis=1))) for k, v in results.items()}
    assert share["sgd"] <= 0.05 and share["adam"] <= 0.05, share
    assert share["annealed sgld"] >= 0.6, share
    # The annealed runs end with 500 steps at T = 0, i.e. at a minimum, not at a noisy draw:
    # U'(x) = 0 up to float32 (contraction (1 - 0.04 * 8)^500 ~ 1e-84 of the last noise).
    x = results["annealed sgld"]
    grad = 4 * x * (x**2 - 1) + TILT
    assert np.max(np.abs(grad)) < 1e-4


def test_optimize_with_a_cooling_schedule_returns_the_annealed_map_and_trace():
    """hb.optimize accepts a sampler with a temperature schedule; from the wrong well (x0 = 1)
    SGD stays at the local minimum 0.93 while annealed SGLD reaches the global one at -1.06
    (a root of 4x^3 - 4x + 0.5). The trace records T_k, decreasing to 0."""
    target = _double_well(1)
    x_local, x_global = sorted(np.roots([4.0, 0.0, -4.0, TILT]).real)[::2][::-1]
    assert x_global < 0 < x_local
    K = 4000
    sgd = hb.optimize(target, hb.samplers.sgld(0.04, temperature=0.0), num_steps=K, init=jnp.ones(1), seed=0)
    ann = hb.optimize(target, anneal(hb.samplers.sgld(0.04), S.polynomial_cooling(0.5, K - 500)), num_steps=K,
                      init=jnp.ones(1), seed=0, trace_every=100)
    assert abs(float(sgd.params[0]) - x_local) < 1e-3
    assert abs(float(ann.params[0]) - x_global) < 1e-3
    T = ann.trace["temperature"]
    assert T.shape == (40,) and np.all(np.diff(T[:35]) < 0) and np.all(T[35:] == 0.0)
    np.testing.assert_allclose(T[0], 0.5 * (1 - 99 / (K - 500)), rtol=1e-5)  # recorded at step k = 99


def test_optimize_refuses_a_constant_nonzero_temperature_and_anneal_refuses_it_too():
    target = _double_well(1)
    with pytest.raises(ValueError, match="temperature"):
        hb.optimize(target, hb.samplers.sgld(0.04, temperature=1.0), num_steps=10)
    with pytest.raises(ValueError, match="cools"):
        anneal(hb.samplers.sgld(0.04), 0.5)
    with pytest.raises(TypeError, match="Sampler"):
        anneal(optax.sgd(0.1), S.polynomial_cooling(1.0, 10))
    with pytest.raises(ValueError, match="temperature"):
        anneal(hb.samplers.sgld(0.04), lambda k: -1.0 + 0.0 * k)


def test_cold_posterior_is_the_posterior_to_the_power_one_over_t():
    """SGLD at temperature T targets p^(1/T): on N(0, 1/a) that is N(0, T/a); with the step-size
    bias, Var = 2 h T / (1 - (1 - h a)^2) = (T/a) / (1 - h a / 2) exactly.

    8 chains x 10000 draws, integrated autocorrelation of x^2 = (1 + rho^2)/(1 - rho^2) = 10.5
    (rho = 1 - h a = 0.9): relative standard error sqrt(2 * 10.5 / 80000) = 1.6%; tolerance 7%.
    T = 0.25 and T = 1 differ by 4x, and the bias term (1 - h a / 2) is 5%.
    """
    a, h = 2.0, 0.05
    target = hb.models.from_logdensity(lambda x: -0.5 * a * x**2, lambda x, b: 0.0 * jnp.sum(b), jnp.zeros((1, 1)),
                                       params=jnp.zeros(()))
    for T in (0.25, 1.0):
        res = hb.sample(target, hb.samplers.sgld(h, temperature=T), num_samples=10000, num_warmup=500, num_chains=8,
                        seed=2, progress_bar=False, init=jnp.zeros(()))
        var = float(np.mean(np.asarray(res.samples["theta"]) ** 2))
        expected = (T / a) / (1 - h * a / 2)
        assert abs(var / expected - 1) < 0.07, (T, var, expected)


def test_cyclical_sgld_follows_the_exact_moment_recursion():
    """cSGLD (Zhang et al. 2020) on N(mu, 1/a): the chain is linear, so its mean and variance
    over chains obey, step by step, with the cyclical h_k and T_k,

        m_{k+1} = m_k + h_k a (mu - m_k),   v_{k+1} = (1 - h_k a)^2 v_k + 2 h_k T_k.

    1000 chains from x0 = 0 over 2 cycles of 100 steps: the exploration phase (T = 0) is
    deterministic (variance exactly 0); in the sampling phase the standard error of the
    variance estimate is sqrt(2/1000) = 4.5% and of the mean sqrt(v/1000); tolerances 5
    standard errors (25 sampling-phase steps are compared).
    """
    a, mu, h0, K, M = 1.0, 2.0, 0.5, 200, 2
    target = hb.models.from_logdensity(lambda x: -0.5 * a * (x - mu) ** 2, lambda x, b: 0.0 * jnp.sum(b),
                                       jnp.zeros((1, 1)), params=jnp.zeros(()))
    sampler = cyclical(hb.samplers.sgld(1.0), h0, K, M, exploration=0.75, temperature=1.0)
    assert sampler.name == "csgld"
    res = hb.sample(target, sampler, num_samples=K, num_chains=1000, seed=3, progress_bar=False, init=jnp.zeros(()), num_warmup=0)
    x = np.asarray(res.samples["theta"])  # (chain, draw), draw i taken after step i (k = i)
    h = np.array([float(S.cyclical(h0, K, M)(k)) for k in range(K)])
    T = np.array([float(S.cyclical_temperature(1.0, K, M, 0.75)(k)) for k in range(K)])
    np.testing.assert_allclose(res.stats["step_size"][0], h, rtol=1e-4)  # float32, eager vs compiled
    np.testing.assert_allclose(res.stats["temperature"][0], T)
    mask = sampling_phase(res)
    np.testing.assert_array_equal(mask[0], S.in_sampling_phase(np.arange(K), K, M, 0.75))
    assert mask[0].sum() == 50  # the last quarter of each 100-step cycle
    m, v = 0.0, 0.0
    for k in range(K):
        m, v = m + h[k] * a * (mu - m), (1 - h[k] * a) ** 2 * v + 2 * h[k] * T[k]
        if T[k] == 0.0 and v == 0.0:
            assert np.ptp(x[:, k]) == 0.0  # noiseless exploration: every chain on the same path
            assert abs(x[0, k] - m) < 1e-5
        elif T[k] > 0 and k % 2 == 0:
            assert abs(x[:, k].mean() - m) < 5 * math.sqrt(v / 1000) + 1e-5
            assert abs(x[:, k].var() / v - 1) < 5 * math.sqrt(2 / 1000)
        elif T[k] == 0.0:  # the next exploration phase contracts the spread to ~0 again
            assert x[:, k].var() < 2 * v + 1e-10


def test_cyclical_bad_input():
    with pytest.raises(ValueError, match="exploration"):
        cyclical(hb.samplers.sgld(1.0), 0.1, 100, 4, exploration=1.0)
    with pytest.raises(ValueError, match="num_cycles"):
        cyclical(hb.samplers.sgld(1.0), 0.1, 100, 0)
    with pytest.raises(TypeError, match="Sampler"):
        cyclical("sgld", 0.1, 100, 4)
    with pytest.raises(TypeError, match="stats"):
        sampling_phase(object())
