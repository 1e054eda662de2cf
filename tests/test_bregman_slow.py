"""Long statistical checks of the Bregman samplers (slow): closed-form targets of Lau & Liu (2022).

- Anisotropic Laplace pi ~ exp(-sum_i a_i |theta_i|), d = 10, a_i = i: E|theta_i| = 1/a_i and
  Var theta_i = 2/a_i^2 within 5% for BMUMLA (hypentropy mirror and envelope); MYULA at the same
  number of gradient evaluations (steps) beside it; W1 of each marginal against the Laplace CDF.
- Uniform on the box prod [-i, i], d = 10: Var theta_i = i^2/3 within 5% for BMUMLA with the
  box-barrier mirror map, no draw outside the box; MYULA's figures beside it.

Means are accumulated in float64 from float32 draws; the tolerances leave room for the Monte
Carlo error (printed with the figures: run with -s to see them).
"""

import numpy as np
import jax.numpy as jnp
import pytest

import heatbath as hb
from heatbath.kernels import mirror, prox

pytestmark = pytest.mark.slow

D = 10
A = np.arange(1, D + 1, dtype=np.float64)


def _flat_target(nonsmooth):
    return hb.models.from_logdensity(lambda p: jnp.zeros(()), lambda p, b: 0.0 * jnp.sum(b),
                                     np.zeros((2, 1), np.float32), params=jnp.zeros(D), nonsmooth=nonsmooth)


def laplace_w1(x, a):
    """W1 between the empirical law of x and Laplace(0, 1/a): int_0^1 |F_n^-1(u) - F^-1(u)| du."""
    x = np.sort(x)
    u = (np.arange(x.size) + 0.5) / x.size
    q = np.where(u < 0.5, np.log(2 * u) / a, -np.log(2 * (1 - u)) / a)
    return float(np.mean(np.abs(x - q)))


def batch_se(v, nb=16):
    """Standard error of the mean of v (chain, draw) by batch means over draws, chains pooled."""
    n = v.shape[1] // nb
    parts = [np.mean(v[:, i * n:(i + 1) * n]) for i in range(nb)]
    return float(np.std(parts, ddof=1) / np.sqrt(nb))


STEPS, THIN, CHAINS = 400_000, 100, 64


def _laplace_run(sampler):
    r = hb.sample(_flat_target(prox.l1(A.astype(np.float32))), sampler, num_samples=STEPS // THIN, thinning=THIN,
                  num_warmup=20_000, num_chains=CHAINS, seed=11, progress_bar=False,
                  init=np.full((CHAINS, D), 0.01, np.float32), checks="off")
    x = np.asarray(r.samples["theta"], np.float64)
    abs_mean = np.mean(np.abs(x), axis=(0, 1)) * A
    var = np.mean(x ** 2, axis=(0, 1)) * A ** 2 / 2
    se_abs = np.array([batch_se(np.abs(x[..., i])) for i in range(D)]) * A
    se_var = np.array([batch_se(x[..., i] ** 2) for i in range(D)]) * A ** 2 / 2
    w1 = np.array([laplace_w1(x[..., i].ravel(), A[i]) for i in range(D)]) * A  # in units of the scale 1/a
    return abs_mean, var, se_abs, se_var, w1


def test_anisotropic_laplace_bmumla_within_5_percent_and_myula_beside_it():
    h, lam = 2e-3, 1e-3
    bm = _laplace_run(hb.samplers.bmumla(h, lam, mirror=mirror.hypentropy(1.0 / A)))
    my = _laplace_run(hb.samplers.myula(lam / 2, lam))
    for name, (m, v, sm, sv, w1) in (("bmumla", bm), ("myula", my)):
        print(f"\n{name}: a_i E|theta_i| = {np.round(m, 3)} (se {np.round(sm, 3)})"
              f"\n{name}: a_i^2 Var/2    = {np.round(v, 3)} (se {np.round(sv, 3)})"
              f"\n{name}: a_i W1         = {np.round(w1, 4)}")
    m, v, sm, sv, w1 = bm
    assert np.all(np.abs(m - 1) < 0.05), m
    assert np.all(np.abs(v - 1) < 0.05), v
    assert np.all(w1 < 0.05), w1


def test_uniform_on_a_box_bmumla_box_barrier_within_5_percent_and_inside():
    c = A.astype(np.float32)
    steps, thin, chains = 200_000, 50, 32
    target = _flat_target(prox.box(-c, c))
    init = np.zeros((chains, D), np.float32)
    out = {}
    for name, s in (("bmumla", hb.samplers.bmumla(2e-3, 1e-2, mirror=mirror.box(-c, c))),
                    ("myula", hb.samplers.myula(5e-3, 1e-2))):
        r = hb.sample(target, s, num_samples=steps // thin, thinning=thin, num_warmup=10_000, num_chains=chains,
                      seed=5, progress_bar=False, init=init, checks="off")
        x = np.asarray(r.samples["theta"], np.float64)
        var = np.mean(x ** 2, axis=(0, 1)) * 3 / A ** 2
        se = np.array([batch_se(x[..., i] ** 2) for i in range(D)]) * 3 / A ** 2
        outside = int(np.sum(np.abs(x) > A))
        print(f"\n{name}: 3 Var/c_i^2 = {np.round(var, 3)} (se {np.round(se, 3)}); draws outside the box: {outside} "
              f"of {x.size}")
        out[name] = (var, outside, x)
    var, outside, x = out["bmumla"]
    assert outside == 0 and np.all(np.abs(x) < A)
    assert np.all(np.abs(var - 1) < 0.05), var
