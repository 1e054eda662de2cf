"""SGLD and pSGLD against closed forms.

On a Gaussian target with precision A and exact gradients, the SGLD chain
theta' = (I - hA) theta + sqrt(2hT) xi is a linear recursion whose stationary covariance S
solves the discrete Lyapunov equation S = (I - hA) S (I - hA)^T + 2hT I. With a fixed
diagonal preconditioner G: S = (I - hGA) S (I - hGA)^T + 2hT G.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import heatbath as hb
from heatbath.kernels import preconditioners

A = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 3.0]])
MU = np.array([1.0, -2.0, 0.5])


def gaussian_target():
    A_ = jnp.asarray(A, jnp.float32)
    mu = jnp.asarray(MU, jnp.float32)

    def logprior(p):
        d = p - mu
        return -0.5 * d @ A_ @ d

    # The data are a dummy: the whole density sits in the prior, gradients are exact.
    return hb.models.from_logdensity(logprior, lambda p, b: 0.0 * jnp.sum(b), jnp.zeros((4,)), params=jnp.zeros(3))


def lyapunov(M, Q):
    return scipy.linalg.solve_discrete_lyapunov(M, Q)


def check_covariance(draws, S, mean):
    """draws: (chains, draws, d). Per-chain estimates give the Monte Carlo standard error."""
    chains = draws.shape[0]
    per_chain_cov = np.stack([np.cov(c.T) for c in draws])
    per_chain_mean = draws.mean(1)
    cov = per_chain_cov.mean(0)
    se_cov = per_chain_cov.std(0, ddof=1) / np.sqrt(chains)
    se_mean = per_chain_mean.std(0, ddof=1) / np.sqrt(chains)
    # 4 standard errors: a false alarm has probability ~1e-4 per entry.
    assert np.all(np.abs(per_chain_mean.mean(0) - mean) < 4 * se_mean + 1e-6), (per_chain_mean.mean(0), mean)
    assert np.all(np.abs(cov - S) < 4 * se_cov + 1e-6), (cov, S, se_cov)
    return cov


@pytest.mark.parametrize("h, T", [(0.1, 1.0), (0.2, 1.0), (0.1, 0.3)])
def test_sgld_stationary_covariance_matches_lyapunov(h, T):
    r = hb.sample(gaussian_target(), hb.samplers.sgld(h, temperature=T), num_samples=2000, num_warmup=300,
                  num_chains=128, progress_bar=False, seed=1)
    M = np.eye(3) - h * A
    S = lyapunov(M, 2 * h * T * np.eye(3))
    check_covariance(r.samples["theta"], S, MU)
    # The discretisation bias is real and this test sees it: S differs from T A^-1 by more than the error.
    assert np.abs(S - T * np.linalg.inv(A)).max() > 0.02 * T


def test_psgld_fixed_preconditioner_covariance():
    G = np.array([0.5, 1.0, 0.25])
    h = 0.2
    s = hb.samplers.psgld(h, preconditioner=preconditioners.fixed(jnp.asarray(G, jnp.float32)))
    r = hb.sample(gaussian_target(), s, num_samples=2000, num_warmup=300, num_chains=128, progress_bar=False, seed=2)
    M = np.eye(3) - h * np.diag(G) @ A
    S = lyapunov(M, 2 * h * np.diag(G))
    check_covariance(r.samples["theta"], S, MU)


def test_sgld_at_zero_temperature_is_gradient_ascent_exactly():
    target = gaussian_target()
    h = 0.05
    r = hb.sample(target, hb.samplers.sgld(h, temperature=0.0), num_samples=50, init=jnp.zeros(3), progress_bar=False)
    A_ = jnp.asarray(A, jnp.float32)
    mu = jnp.asarray(MU, jnp.float32)
    theta = jnp.zeros(3)
    for k in range(50):
        theta = theta + h * (-(A_ @ (theta - mu)))
        np.testing.assert_allclose(r.samples["theta"][0, k], theta, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("correction", [False, True])
def test_psgld_on_gaussian_mean_and_stats(correction):
    r = hb.sample(gaussian_target(), hb.samplers.psgld(0.05, correction=correction), num_samples=3000,
                  num_warmup=500, num_chains=16, progress_bar=False)
    x = r.samples["theta"]
    sd = np.sqrt(np.diag(np.linalg.inv(A)))
    # Mean within 4 Monte Carlo standard errors (from the spread of the 16 chain means).
    se = x.mean(1).std(0, ddof=1) / 4
    assert np.all(np.abs(x.mean((0, 1)) - MU) < 4 * se)
    # pSGLD is biased (V remembers past gradients), but its sds stay within 20% here.
    ratio = x.reshape(-1, 3).std(0) / sd
    assert np.all((ratio > 0.9) & (ratio < 1.2)), ratio
    assert set(r.stats) >= {"step_size", "temperature", "grad_norm", "lp", "diverging"}
    assert not r.stats["diverging"].any()


def test_sampler_constructors_reject_bad_hyperparameters():
    with pytest.raises(ValueError, match="step_size"):
        hb.samplers.sgld(0.0)
    with pytest.raises(ValueError, match="step_size"):
        hb.samplers.sgld(-1e-3)
    with pytest.raises(ValueError, match="temperature"):
        hb.samplers.sgld(1e-3, temperature=-1.0)
    with pytest.raises(ValueError, match="unknown gradient"):
        hb.samplers.sgld(1e-3, gradient="magic")
    with pytest.raises(ValueError, match="decay"):
        hb.samplers.psgld(1e-3, decay=1.0)
