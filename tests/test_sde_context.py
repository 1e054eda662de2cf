"""The SDE VI's look-ahead context (next_observations) and its noise-scale family (noise_scale=True).

Fast; two Monte Carlo checks: a variance from 2000 paths (relative standard error
sqrt(2 / 2000) = 3.2%, against a 12% band, ~4 of them) and a mean ELBO within 4 of its standard
errors of the exact evidence.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heatbath.vi import sde as hsde
from heatbath.vi.sde import solver


def _zero_drift(p, t, x, c):
    return jnp.zeros_like(x)


def test_next_observations_sees_the_next_k_rows():
    ctx = hsde.next_observations(3)
    batch = {"t": jnp.asarray([0.5, 1.0, 1.5]), "y": jnp.asarray([[1.0], [2.0], [3.0]])}
    ts = jnp.asarray([0.0, 0.5, 0.7, 1.2, 1.6])
    c = np.asarray(ctx(ts, batch))
    assert ctx.dim(1) == 9 and c.shape == (5, 9)
    ys, gaps, has = c[:, :3], c[:, 3:6], c[:, 6:]
    np.testing.assert_allclose(ys, [[1, 2, 3], [1, 2, 3], [2, 3, 0], [3, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(gaps, [[0.5, 1.0, 1.5], [0.0, 0.5, 1.0], [0.3, 0.8, 0], [0.3, 0, 0], [0, 0, 0]],
                               atol=1e-6)
    np.testing.assert_array_equal(has, [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    # k = 1 is next_observation with the same columns (y, gap, has)
    np.testing.assert_allclose(np.asarray(hsde.next_observations(1)(ts, batch)),
                               np.asarray(hsde.next_observation(ts, batch)), atol=1e-7)
    with pytest.raises((TypeError, ValueError)):
        hsde.next_observations(0)


def test_default_control_with_noise_scale_starts_at_the_prior():
    sde = hsde.latent_sde(_zero_drift, 1.0, span=(0, 1), dt=0.05, hurst=0.7, num_k=3, gamma_max=5.0,
                          noise_scale=True, context=hsde.next_observations(2))
    p = sde.initial_params()
    assert p["control"][-1]["w"].shape[1] == 2  # (u, log sigma)
    assert sde.describe()["noise_scale"] is True
    batch = {"t": jnp.asarray([0.5, 1.0]), "y": jnp.asarray([[0.2], [-0.1]])}
    ctx = sde.context(sde.grid()[:-1], batch)
    key = jax.random.key(3)
    a = solver.simulate(sde, p, key, ctx)
    b = solver.simulate(sde, p, key, ctx, controlled=False)
    np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))  # u = 0, sigma = 1: the prior's path
    assert float(a.kl) == 0.0


def test_noise_scale_gives_the_exact_elbo_of_the_discrete_brownian_bridge():
    """H = 1/2, dX = dW on [0, T] (Euler is exact), y = X(T) + N(0, r^2). The posterior of the
    Euler chain given y moves X_n -> X_{n+1} ~ N(X_n + (y - X_n) dt / R, dt (R - dt) / R),
    R = T - t_n + r^2: with u = (y - x) / R and sigma^2 = (R - dt) / R the variational family
    holds the posterior, so the ELBO equals log p(y) = log N(y; 0, T + r^2). (Per path it is not
    constant: the path KL is the sum of the steps' conditional KLs, not the log ratio at the drawn
    noise; their mean is.) 4000 paths, |mean - log p(y)| < 4 standard errors. The mean shift alone
    (noise_scale=False, same u) is a strict lower bound, by more than 1 nat here."""
    T, dt, r, y = 1.0, 0.05, 0.1, 0.7
    evidence = -0.5 * math.log(2 * math.pi * (T + r * r)) - 0.5 * y * y / (T + r * r)

    def control(p, t, z, c, scale=True):
        R = T - t + r * r
        u = (y - z[:1]) / R
        return jnp.concatenate([u, 0.5 * jnp.log((R - dt) / R)[None]]) if scale else u

    batch = {"t": jnp.asarray([T], jnp.float32), "y": jnp.asarray([[y]], jnp.float32)}
    keys = jax.random.split(jax.random.key(0), 4000)
    out = {}
    for scale in (True, False):
        sde = hsde.latent_sde(_zero_drift, 1.0, span=(0, T), dt=dt, hurst=0.5, likelihood=hsde.gaussian(r),
                              control=lambda p, t, z, c, s=scale: control(p, t, z, c, s),
                              context=hsde.no_context, noise_scale=scale)
        p = sde.initial_params()
        out[scale] = np.asarray(jax.vmap(lambda k: solver.elbo_terms(sde, p, k, batch, 1.0)[0])(keys), np.float64)
    se = out[True].std(ddof=1) / math.sqrt(out[True].size)
    assert abs(out[True].mean() - evidence) < 4 * se, (out[True].mean(), evidence, se)
    assert out[False].mean() < evidence - 1.0, (out[False].mean(), evidence)


def test_noise_scale_scales_the_increments_and_pays_its_kl():
    """A constant sigma = 1/2 and u = 0 at H = 1/2: Var X(1) = sigma^2 t = 0.25 (2000 paths) and
    the path KL is n (sigma^2 - 1 - 2 log sigma) / 2 exactly."""
    sigma, n = 0.5, 20
    sde = hsde.latent_sde(_zero_drift, 1.0, span=(0, 1), dt=1.0 / n, hurst=0.5, context=hsde.no_context,
                          control=lambda p, t, z, c: jnp.asarray([0.0, math.log(sigma)], z.dtype), noise_scale=True)
    p = sde.initial_params()
    ctx = jnp.zeros((n, 0))
    paths = jax.vmap(lambda k: solver.simulate(sde, p, k, ctx))(jax.random.split(jax.random.key(1), 2000))
    var = float(np.var(np.asarray(paths.x[:, -1, 0], np.float64), ddof=1))
    assert abs(var / 0.25 - 1) < 0.12, var
    np.testing.assert_allclose(np.asarray(paths.kl), n * 0.5 * (sigma**2 - 1 - 2 * math.log(sigma)), rtol=1e-5)


def test_noise_scale_bad_input():
    with pytest.raises(TypeError, match="noise_scale"):
        hsde.latent_sde(_zero_drift, span=(0, 1), dt=0.01, noise_scale="yes")
    # a control of the wrong width for the family: a clear error when traced
    sde = hsde.latent_sde(_zero_drift, 1.0, span=(0, 1), dt=0.05, hurst=0.5, context=hsde.no_context,
                          control=lambda p, t, z, c: jnp.zeros((1,), z.dtype), noise_scale=True)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        solver.simulate(sde, sde.initial_params(), jax.random.key(0), jnp.zeros((20, 0)))
