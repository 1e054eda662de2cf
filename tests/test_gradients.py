"""Gradient estimators: unbiasedness over many minibatches, variance reduction of control variates."""

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import gradients


def _logistic_terms():
    rng = np.random.default_rng(0)
    N, D = 400, 3
    X = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    y = jnp.asarray(rng.random(N) < 0.4, jnp.float32)

    def terms(w, batch):
        Xb, yb = batch
        z = Xb @ w
        return -0.5 * jnp.sum(w**2), jnp.sum(yb * z - jax.nn.softplus(z))

    return terms, (X, y), N


def _estimates(est, state, w, data, N, n, key, M=4000):
    keys = jax.random.split(key, M)

    def one(k):
        idx = jax.random.randint(k, (n,), 0, N)
        batch = jax.tree.map(lambda x: x[idx], data)
        return est.estimate(state, w, batch)[1]

    return np.asarray(jax.vmap(one)(keys))


def test_estimators_are_unbiased_and_cv_reduces_variance():
    terms, data, N = _logistic_terms()
    w = jnp.array([0.3, -0.2, 0.1])
    exact = np.asarray(gradients.full_data_value_and_grad(terms, w, data, N)[1])
    centre = jnp.array([0.25, -0.15, 0.12])
    results = {}
    for name, spec in [
        ("naive", gradients.naive()),
        ("cv", gradients.control_variates(centre)),
        ("svrg", gradients.svrg(10)),
    ]:
        est = spec.build(terms, N)
        state = est.init(centre if name == "svrg" else w, data)
        g = _estimates(est, state, w, data, N, 20, jax.random.key(3))
        # Unbiased: the mean of M = 4000 estimates is within 4 standard errors of the exact gradient.
        se = g.std(0) / np.sqrt(len(g))
        assert np.all(np.abs(g.mean(0) - exact) < 4 * se + 1e-4), name
        results[name] = g.var(0).sum()
    # Near the centre, control variates cut the variance by orders of magnitude.
    assert results["cv"] < 0.05 * results["naive"]
    assert results["svrg"] < 0.05 * results["naive"]


def test_full_data_gradient_in_chunks_equals_one_pass():
    terms, data, N = _logistic_terms()
    w = jnp.array([0.3, -0.2, 0.1])
    v1, g1 = gradients.full_data_value_and_grad(terms, w, data, N)
    v2, g2 = gradients.full_data_value_and_grad(terms, w, data, N, chunk_rows=64)  # 6 chunks + 16 rows
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-4)


def test_svrg_refresh_recentres_every_m_steps():
    terms, data, N = _logistic_terms()
    est = gradients.svrg(5).build(terms, N)
    w0 = jnp.zeros(3)
    s = est.init(w0, data)
    w1 = jnp.ones(3) * 0.1
    s4 = est.refresh(s, w1, data, jnp.int32(4))
    np.testing.assert_array_equal(s4.centre, w0)
    s5 = est.refresh(s, w1, data, jnp.int32(5))
    np.testing.assert_array_equal(s5.centre, w1)
    np.testing.assert_allclose(s5.grad, gradients.full_data_value_and_grad(terms, w1, data, N)[1], rtol=1e-5)
