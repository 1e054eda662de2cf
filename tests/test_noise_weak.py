"""Cheap noise sources (heatbath/kernels/noise_weak.py): moments, bits, and the stationary laws.

On a Gaussian target SGLD and SGHMC are linear recursions whose stationary covariance (the
discrete Lyapunov equation) depends on the noise only through its covariance: the weak-order
sources must give the Gaussian-noise Lyapunov values within MC error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb
from heatbath.kernels import noise_weak
from test_integrators import stationary_variances
from test_sghmc import BATCH, NOISE_VAR, _noisy_gaussian_target, _se
from test_sgld import A, MU, check_covariance, gaussian_target, lyapunov


@pytest.mark.parametrize("source, fourth", [(noise_weak.rademacher(), 1.0), (noise_weak.uniform(), None),
                                            pytest.param(noise_weak.uniform(4), None, marks=pytest.mark.slow),
                                            pytest.param(noise_weak.gaussian16(), 3.0, marks=pytest.mark.slow)])
def test_moments_and_leafwise_draws(source, fourth):
    """Mean 0, variance 1, third moment 0 within 5 SE over 2^18 values; the fourth moment of
    the law (Rademacher 1; uniform on L levels 9/5 (L^2 - 7/3) / (L^2 - 1); Gaussian 3); a
    pytree's leaves get their own shapes and dtypes; ``draws`` gives independent pytrees."""
    like = {"w": jnp.zeros((1 << 9, 1 << 9)), "b": jnp.zeros((3,), jnp.float32)}
    x = np.asarray(source.draw(jax.random.key(0), like)["w"], np.float64).ravel()
    n = x.size
    for k, want in ((1, 0.0), (2, 1.0), (3, 0.0)):
        m = np.mean(x**k)
        se = np.std(x**k) / np.sqrt(n)
        assert abs(m - want) < 5 * se + 1e-12, (k, m, want, se)
    if source.name.startswith("uniform"):
        bits = 8 if source.name == "uniform" else int(source.name[7:])
        L = 2**bits
        fourth = 1.8 * (L * L - 7 / 3) / (L * L - 1)  # discrete uniform on L levels, variance 1
    assert abs(np.mean(x**4) - fourth) <= 5 * np.std(x**4) / np.sqrt(n) + 1e-9, (np.mean(x**4), fourth)
    out = source.draws(jax.random.key(1), like, 2)
    assert out[0]["b"].shape == (3,) and out[0]["b"].dtype == jnp.float32
    assert not np.allclose(out[0]["w"], out[1]["w"])
    if source.name == "rademacher":
        assert set(np.unique(x)) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="bits"):
        noise_weak.uniform(3)


@pytest.mark.parametrize("source", [noise_weak.rademacher(),
                                    pytest.param(noise_weak.uniform(), marks=pytest.mark.slow)])
def test_sgld_weak_noise_keeps_the_lyapunov_covariance(source):
    """SGLD with Rademacher or uniform noise on the correlated 3-d Gaussian (h = 0.2): the full
    covariance equals the Gaussian-noise Lyapunov solution within 4 SE per entry (128 chains x
    2000 draws), as does the mean."""
    h = 0.2
    r = hb.sample(gaussian_target(), hb.samplers.sgld(h, noise=source), num_samples=2000, num_warmup=300,
                  num_chains=128, progress_bar=False, seed=1, checks="off")
    S = lyapunov(np.eye(3) - h * A, 2 * h * np.eye(3))
    check_covariance(r.samples["theta"], S, MU)


@pytest.mark.slow
def test_sghmc_weak_noise_minibatch_lyapunov():
    """SGHMC OBABO (plain and fused) with Rademacher noise on the noisy Gaussian (gradient
    noise 1, h = 0.2): Var(theta) at OBABO's Lyapunov value within 4.5 SE."""
    h = 0.2
    want_t = stationary_variances("obabo", h, NOISE_VAR)[0]
    for fuse in (False, True):
        sampler = hb.samplers.sghmc(h, 1.0, "obabo", noise=noise_weak.rademacher(), fuse_noise=fuse)
        res = hb.sample(_noisy_gaussian_target(), sampler, batch_size=BATCH, num_samples=1700, num_chains=150,
                        seed=1, progress_bar=False, checks="off")
        got_t, se_t = _se((res.samples["theta"][:, 200:] ** 2).mean(axis=1))
        assert abs(got_t - want_t) < 4.5 * se_t, (fuse, got_t, want_t, se_t)
