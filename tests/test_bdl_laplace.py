"""Laplace at the MAP through hb.fit (exact on Bayesian linear regression; the linearised
predictive of a logistic regression against a direct computation), SWAG from keep="moments"."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb

RNG = np.random.default_rng(1)
N, D = 80, 3
X = RNG.normal(size=(N, D))
W_TRUE = np.array([1.0, -0.5, 0.25])
SIGMA, ALPHA = 0.5, 2.0  # noise sd, prior precision
Y_REG = X @ W_TRUE + SIGMA * RNG.normal(size=N)
Y_CLS = (RNG.uniform(size=N) < 1 / (1 + np.exp(-(X @ W_TRUE * 2)))).astype(np.float64)
XT = RNG.normal(size=(7, D))


def _blr_target():
    def logprior(p):
        return -0.5 * ALPHA * jnp.sum(p["w"] ** 2)

    def loglik(p, batch):
        x, y = batch
        return -0.5 * jnp.sum((y - x @ p["w"]) ** 2) / SIGMA**2

    return hb.models.from_logdensity(logprior, loglik, (jnp.asarray(X, jnp.float32), jnp.asarray(Y_REG, jnp.float32)),
                                     params={"w": jnp.zeros(D)})


def _logistic_target():
    def logprior(p):
        return -0.5 * ALPHA * jnp.sum(p["w"] ** 2)

    def loglik(p, batch):
        x, y = batch
        z = x @ p["w"]
        return jnp.sum(y * z - jax.nn.softplus(z))

    return hb.models.from_logdensity(logprior, loglik, (jnp.asarray(X, jnp.float32), jnp.asarray(Y_CLS, jnp.float32)),
                                     params={"w": jnp.zeros(D)})


def test_laplace_is_exact_on_bayesian_linear_regression():
    prec = X.T @ X / SIGMA**2 + ALPHA * np.eye(D)
    cov = np.linalg.inv(prec)
    mu = cov @ X.T @ Y_REG / SIGMA**2
    target = _blr_target()
    q = hb.fit(target, hb.vi.laplace(0.05, 800, structure="full", curvature="hessian"), seed=0, progress_bar=False)
    sd = np.sqrt(np.diag(cov))
    assert np.max(np.abs(q.mean_flat - mu) / sd) < 1e-3  # the MAP, to float32 Adam's end
    np.testing.assert_allclose(q.cov, cov, rtol=1e-4, atol=1e-4 * cov.max())
    np.testing.assert_allclose(q.precision_sub, prec, rtol=1e-4, atol=1e-4 * prec.max())
    # diagonal: the diagonal of the precision, inverted
    qd = hb.fit(target, hb.vi.laplace(0.05, 800), seed=0, progress_bar=False)
    np.testing.assert_allclose(qd.variance, 1 / np.diag(prec), rtol=1e-4)
    # draws: mean and covariance within MC error (4000 draws: se of a mean 0.016 sd)
    s = q.sample(0, 4000)["w"]
    assert np.max(np.abs(s.mean(0) - mu) / sd) < 0.07
    np.testing.assert_allclose(np.cov(s.T), cov, rtol=0.1, atol=0.1 * sd.min() ** 2)


def test_linearised_predictive_of_logistic_regression():
    # the MAP and the precision by Newton's method in float64, then the probit predictive
    w = np.zeros(D)
    for _ in range(50):
        p = 1 / (1 + np.exp(-X @ w))
        g = X.T @ (Y_CLS - p) - ALPHA * w
        H = X.T @ (X * (p * (1 - p))[:, None]) + ALPHA * np.eye(D)
        w = w + np.linalg.solve(H, g)
    p = 1 / (1 + np.exp(-X @ w))
    cov = np.linalg.inv(X.T @ (X * (p * (1 - p))[:, None]) + ALPHA * np.eye(D))
    mean_f, var_f = XT @ w, np.einsum("nd,de,ne->n", XT, cov, XT)
    p1 = 1 / (1 + np.exp(-mean_f / np.sqrt(1 + math.pi * var_f / 8)))
    outputs = lambda prm, x: x @ prm["w"]  # noqa: E731
    for curvature in ("ggn",):  # (the Hessian, equal for a GLM with its canonical link: a slow test)
        q = hb.fit(_logistic_target(), hb.vi.laplace(0.05, 800, structure="full", curvature=curvature,
                                                     outputs=outputs, likelihood="bernoulli"),
                   seed=0, progress_bar=False)
        np.testing.assert_allclose(q.cov, cov, rtol=2e-3)
        pred = q.linearised_predictive(jnp.asarray(XT, jnp.float32))
        np.testing.assert_allclose(pred[:, 1], p1, atol=2e-4)
        np.testing.assert_allclose(pred.sum(1), 1.0, atol=1e-12)
    # Monte Carlo over f ~ N(f*, J S J'): E sigmoid(f) (the probit formula is an approximation of it)
    mc = q.linearised_predictive(jnp.asarray(XT, jnp.float32), method="mc", num_samples=20000)
    z = np.random.default_rng(0).standard_normal((200000, 1))
    exact = (1 / (1 + np.exp(-(mean_f + np.sqrt(var_f) * z)))).mean(0)
    np.testing.assert_allclose(mc[:, 1], exact, atol=0.01)


def test_laplace_bad_input():
    with pytest.raises(ValueError, match="ggn.*outputs"):
        hb.vi.laplace(curvature="ggn")
    with pytest.raises(ValueError, match="structure"):
        hb.vi.laplace(structure="kron")
    with pytest.raises(ValueError, match="subset names sites"):
        hb.fit(_blr_target(), hb.vi.laplace(0.05, 10, subset=["v"]), progress_bar=False)


def test_swag_from_moments():
    # a fake keep="moments" result: 2 chains, rank 3
    rng = np.random.default_rng(0)
    dev = rng.normal(size=(2, 3, 4))
    dev -= dev.mean(1, keepdims=True)
    mom = {"count": 100, "mean": {"w": np.array([[0.0, 1, 2, 3], [10, 11, 12, 13]])},
           "var": {"w": np.full((2, 4), 0.5)}, "deviations": {"w": dev}}

    class R:
        moments = mom

    q = hb.vi.swag(R())
    s = q.sample(0, 40000)["w"]
    # mixture of the chains: mean of the means; each chain's covariance (diag(var) + D'D/(K-1)) / 2
    np.testing.assert_allclose(s.mean(0), [5, 6, 7, 8], atol=0.05)
    cov0 = (np.diag(np.full(4, 0.5)) + dev[0].T @ dev[0] / 2) / 2
    s0 = s[np.abs(s[:, 0]) < 5]
    np.testing.assert_allclose(np.cov(s0.T), cov0, atol=0.05)
    with pytest.raises(ValueError, match="swag_rank"):
        hb.vi.swag(type("R", (), {"moments": {"mean": {}}})())


@pytest.mark.slow
def test_laplace_ggn_equals_hessian_on_glms():
    """The GGN of a linear-Gaussian model and of a logistic regression is the Hessian."""
    prec = X.T @ X / SIGMA**2 + ALPHA * np.eye(D)
    cov = np.linalg.inv(prec)
    qg = hb.fit(_blr_target(), hb.vi.laplace(0.05, 800, structure="full", curvature="ggn",
                                             outputs=lambda p, x: x @ p["w"], likelihood="normal",
                                             noise_scale=SIGMA), seed=0, progress_bar=False)
    np.testing.assert_allclose(qg.cov, cov, rtol=1e-4, atol=1e-4 * cov.max())
    kw = dict(structure="full", outputs=lambda p, x: x @ p["w"], likelihood="bernoulli")
    qh = hb.fit(_logistic_target(), hb.vi.laplace(0.05, 800, curvature="hessian", **kw), seed=0, progress_bar=False)
    qg = hb.fit(_logistic_target(), hb.vi.laplace(0.05, 800, curvature="ggn", **kw), seed=0, progress_bar=False)
    np.testing.assert_allclose(qh.cov, qg.cov, rtol=1e-4)
    np.testing.assert_allclose(qh.linearised_predictive(jnp.asarray(XT, jnp.float32)),
                               qg.linearised_predictive(jnp.asarray(XT, jnp.float32)), atol=1e-5)


@pytest.mark.slow
def test_last_layer_laplace_of_a_network_and_swag_of_a_run():
    """A network through hb.fit: last-layer GGN equals the last-layer Hessian (softmax is the
    canonical link, and the hidden layer is fixed at the MAP), and hb.vi.swag of a real
    keep="moments" run samples around its mean."""
    from heatbath.diagnostics.predictive_mean import predictive_moments
    from heatbath.models.network import network_model

    def mlp(p, x):
        return p["l2"]["w"] @ jnp.tanh(p["l1"]["w"] @ x + p["l1"]["b"]) + p["l2"]["b"]

    params = {"l1": {"w": jnp.zeros((4, D)), "b": jnp.zeros(4)}, "l2": {"w": jnp.zeros((2, 4)), "b": jnp.zeros(2)}}
    bn = network_model(mlp, params, prior_scale=1.0)
    data = {"X": jnp.asarray(X, jnp.float32), "y": jnp.asarray(Y_CLS, jnp.int32)}
    kw = dict(structure="full", subset=("l2.w", "l2.b"), network=bn)
    qg = hb.fit(bn.model, hb.vi.laplace(0.02, 1500, curvature="ggn", **kw), data=data, seed=0, progress_bar=False)
    qh = hb.fit(bn.model, hb.vi.laplace(0.02, 1500, curvature="hessian", **kw), data=data, seed=0, progress_bar=False)
    assert len(qg.index) == 10 and qg.map_grad_norm < 0.1  # float32 sums over the data
    np.testing.assert_allclose(qg.precision_sub, qh.precision_sub, rtol=1e-3, atol=1e-3 * np.abs(qh.precision_sub).max())
    # the non-identified softmax direction is held by the prior: the precision is positive definite
    assert np.linalg.eigvalsh(qg.precision_sub).min() > 0.5
    p_lin = qg.linearised_predictive(jnp.asarray(XT, jnp.float32))
    p_mc = qg.linearised_predictive(jnp.asarray(XT, jnp.float32), method="mc", num_samples=20000)
    np.testing.assert_allclose(p_lin, p_mc, atol=0.03)  # the probit approximation of the MC value
    r = hb.sample(bn.model, hb.samplers.sgld(1e-3, temperature=0.0), data=data, batch_size=20, num_warmup=500,
                  num_samples=50, thinning=10, keep="moments", swag_rank=10, num_chains=2, progress_bar=False,
                  checks=False, init="sample")
    q = hb.vi.swag(r, sites=bn.sites)
    s = q.sample(0, 4000)
    for n in bn.sites:
        np.testing.assert_allclose(s[n].mean(0), np.asarray(r.moments["mean"][n]).mean(0), atol=0.1)
    pm = predictive_moments(q, bn.predict, jnp.asarray(XT, jnp.float32), num_draws=500)
    np.testing.assert_allclose(pm.mean.sum(1), 1.0, atol=1e-6)
