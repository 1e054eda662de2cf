"""Markov-approximate fBM (heatbath.kernels.fbm) and the fractional noise source (kernels.noise).

Tolerances: the variance checks are deterministic (closed forms); Monte Carlo checks use
n draws with the standard error of a variance, sqrt(2/n) relative, and allow 4 of them.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

import heatbath as hb
from heatbath.kernels import fbm, noise


def _f64(fn):
    """Run ``fn`` with float64 enabled (restored after)."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        return fn()
    finally:
        jax.config.update("jax_enable_x64", old)


def test_speeds_are_geometric_from_one_over_gamma_max_to_gamma_max():
    g = fbm.speeds(5, 20.0)
    np.testing.assert_allclose(g, [0.05, 20 ** -0.5, 1.0, 20 ** 0.5, 20.0], rtol=1e-12)
    np.testing.assert_allclose(fbm.speeds(1, 20.0), [1.0])


@pytest.mark.parametrize("hurst,target", [(0.7, 0.8473), (0.9, 0.7057)])
def test_type2_variance_at_t1_within_one_percent_of_riemann_liouville(hurst, target):
    def run():
        g = fbm.speeds(5, 20.0)
        v = float(jax.jit(lambda h: fbm.variance(fbm.omega_type2(jnp.asarray(g), h, 1.0), g, 1.0, kind=2))(hurst))
        rl = fbm.rl_variance(hurst, 1.0)
        assert abs(rl - target) < 1e-4  # t^(2H) / (2H Gamma(H + 1/2)^2)
        assert abs(v / rl - 1) < 0.01, (v, rl)  # measured: -0.24% (H = 0.7), -0.17% (H = 0.9)
        return v

    _f64(run)
    # float32 too (omega in the dtype of H): measured -0.17% and -0.42%
    g = fbm.speeds(5, 20.0)
    v32 = jax.jit(lambda h: fbm.variance(fbm.omega_type2(jnp.asarray(g, jnp.float32), h, 1.0), g, 1.0, kind=2))
    assert abs(float(v32(jnp.float32(hurst))) / fbm.rl_variance(hurst, 1.0) - 1) < 0.01


def test_half_is_exactly_brownian():
    approx = fbm.markov_fbm(0.5, kind=2)
    assert approx.exact and np.array_equal(approx.gamma, [0.0])
    w = fbm.weights(approx)
    np.testing.assert_array_equal(np.asarray(w), [1.0])
    for t in (0.3, 1.0, 7.0):
        assert float(fbm.variance(w, approx.gamma, t, kind=2)) == pytest.approx(t, rel=1e-7)
    # the noise source at H = 1/2 draws the Brownian numbers, key for key
    src = noise.fractional(0.5, 0.01)
    like = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    state = src.init(jax.random.key(1), like)
    xi, _ = src.draw(state, jax.random.key(2), like)
    ref = noise.brownian().draw(jax.random.key(2), like)
    for a, b in zip(jax.tree.leaves(xi), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_domega_dhurst_matches_finite_differences():
    """Reverse mode (what training uses) against central differences, both types, in float64:
    d/dH of v . omega(H) for a fixed v, at H = 0.3, 0.7, 0.9 (one compile for all)."""

    def run():
        g = jnp.asarray(fbm.speeds(5, 20.0))
        v = jnp.asarray([0.3, -1.0, 0.7, 0.2, -0.5])
        f = jax.jit(lambda h: jnp.stack([v @ fbm.omega(g, h, 2.0, 1), v @ fbm.omega(g, h, 2.0, 2)]))
        jac = jax.jit(jax.jacrev(f))
        for h in (0.3, 0.7, 0.9):
            eps = 1e-5
            fd = (f(h + eps) - f(h - eps)) / (2 * eps)
            np.testing.assert_allclose(np.asarray(jac(h)), np.asarray(fd), rtol=1e-6)

    _f64(run)


@pytest.mark.slow
def test_type1_vector_b_matches_quadrature_and_is_stable_for_large_gamma_t():
    """b_i of type I against a direct double integral, and e^x Q(a, x) against scipy."""
    hurst, T, gi = 0.7, 1.0, 1.0
    a = hurst + 0.5
    k = lambda tau: np.where(tau > 0, np.abs(tau) ** (a - 1), 0.0) / special.gamma(a)  # noqa: E731
    e = lambda tau: np.where(tau > 0, np.exp(-gi * np.abs(tau)), 0.0)  # noqa: E731

    def inner(t):
        f = lambda s: (k(t - s) - k(-s)) * (e(t - s) - e(-s))  # noqa: E731
        # the integrand decays like |s|^(a-2) e^{g s}: 40 units of s are e^-40 of it
        return (integrate.quad(f, -40, -1, limit=200)[0] + integrate.quad(f, -1, 0, limit=200)[0]
                + integrate.quad(f, 0, t, limit=200)[0])

    b_num = integrate.quad(inner, 0, T, limit=100)[0]
    b_closed = (2 * T * gi ** -a - T ** a / (gi * special.gamma(a + 1))
                + gi ** -(a + 1) * (np.exp(-gi * T) - special.gammaincc(a, gi * T) * np.exp(gi * T)))
    assert b_num == pytest.approx(b_closed, rel=1e-6)

    def run():
        xs = np.array([5.0, 9.999, 10.0, 30.0, 600.0])
        for av in (0.6, 1.2, 1.4):
            got = np.asarray(jax.jit(fbm.scaled_gammaincc)(av, jnp.asarray(xs)))
            np.testing.assert_allclose(got, special.gammaincc(av, xs) * np.exp(xs), rtol=1e-9)
        # large gamma T: finite weights and gradients (e^{gT} alone overflows beyond 709)
        g = jnp.asarray(fbm.speeds(7, 1e4))
        for kind in (1, 2):
            w, dw = jax.jit(lambda h: jax.jvp(lambda hh: fbm.omega(g, hh, 100.0, kind), (h,), (1.0,)))(0.3)
            assert np.all(np.isfinite(np.asarray(w))) and np.all(np.isfinite(np.asarray(dw)))

    _f64(run)
    g32 = jnp.asarray(fbm.speeds(5, 1e3), jnp.float32)
    dw = jax.jit(jax.grad(lambda h: jnp.sum(fbm.omega(g32, h, 50.0, 1))))(jnp.float32(0.4))
    assert np.isfinite(float(dw))


def test_mvn_variance_matches_quadrature():
    h = 0.7
    a = h - 0.5
    integral = integrate.quad(lambda u: ((1 + u) ** a - u ** a) ** 2, 0, np.inf)[0] + 1 / (2 * h)
    assert fbm.mvn_variance(h, 1.0) == pytest.approx(integral / special.gamma(h + 0.5) ** 2, rel=1e-7)


@pytest.mark.slow
def test_sampled_ou_state_variance_matches_the_closed_form():
    """Type I: stationary Y(0), exact OU transitions of the noise source: Var of B^(t) over
    20,000 paths of 50 steps within 4 standard errors of the closed form."""
    hurst, dt, n, m = 0.7, 0.02, 50, 20_000
    src = noise.fractional(hurst, dt, kind=1, horizon=n * dt)
    like = jnp.zeros(m)
    state = src.init(jax.random.key(0), like)

    def body(carry, key):
        y, b = carry
        xi, y = src.draw(y, key, like)
        return (y, b + math.sqrt(dt) * xi), None

    (_, b), _ = jax.lax.scan(body, (state, jnp.zeros(m)), jax.random.split(jax.random.key(1), n))
    approx = fbm.markov_fbm(hurst, kind=1, horizon=n * dt)
    w = fbm.weights(approx)
    exact = float(fbm.variance(w, approx.gamma, n * dt, kind=1))
    var = float(np.var(np.asarray(b, np.float64)))
    assert abs(var / exact - 1) < 4 * math.sqrt(2 / m), (var, exact)


@pytest.mark.slow
def test_fractional_noise_drives_sgld_through_with_memory():
    target = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p["x"] ** 2), lambda p, b: 0.0 * jnp.sum(b),
                                       np.zeros((4, 1)), params={"x": jnp.zeros(2)})
    kw = dict(num_samples=50, num_chains=2, progress_bar=False, seed=3, init={"x": jnp.zeros(2)})
    brown = hb.sample(target, hb.samplers.sgld(0.05), **kw)
    half = hb.sample(target, noise.with_memory(hb.samplers.sgld(0.05), noise.fractional(0.5, 0.05)), **kw)
    np.testing.assert_array_equal(half.samples["x"], brown.samples["x"])
    frac = hb.sample(target, noise.with_memory(hb.samplers.sgld(0.05), noise.fractional(0.8, 0.05)), **kw)
    assert np.all(np.isfinite(frac.samples["x"])) and not np.array_equal(frac.samples["x"], brown.samples["x"])
    with pytest.raises(TypeError, match="with_memory"):
        hb.samplers.sgld(0.05, noise=noise.fractional(0.7, 0.05))


def test_bad_input_is_refused_before_compiling():
    with pytest.raises(ValueError, match="hurst"):
        fbm.markov_fbm(1.0)
    with pytest.raises(ValueError, match="hurst"):
        fbm.markov_fbm(0.0)
    with pytest.raises(ValueError, match="hurst"):
        noise.fractional(-0.2, 0.1)
    with pytest.raises(ValueError, match="num_k"):
        fbm.markov_fbm(0.7, num_k=0)
    with pytest.raises(ValueError, match="gamma_max"):
        fbm.speeds(5, 0.5)
    with pytest.raises(ValueError, match="kind"):
        fbm.markov_fbm(0.7, kind=3)
    with pytest.raises(ValueError, match="dt"):
        noise.fractional(0.7, 0.0)
