"""The Bregman proximal samplers (heatbath.samplers.bregman): exact steps, T = 0 limits, the
mirror domain, the drivers' features (chains, minibatches, checkpoints, ArviZ, NumPyro) and
bad input. The long statistical checks are in test_bregman_slow.py."""

import numpy as np
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest

import heatbath as hb
from heatbath.kernels import mirror, prox

D = 4
A = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, D)).astype(np.float32)
Y = (RNG.uniform(size=40) < 0.5).astype(np.float32)


def logprior(w):
    return -0.5 * jnp.sum(w ** 2)


def loglik(w, batch):
    x, y = batch
    z = x @ w
    return jnp.sum(y * z - jax.nn.softplus(z))


def logistic(nonsmooth):
    return hb.models.from_logdensity(logprior, loglik, (X, Y), params=jnp.zeros(D), nonsmooth=nonsmooth)


def grad_f(w):  # gradient of f = -log p (full data), by hand
    p = 1 / (1 + np.exp(-X.astype(np.float64) @ w))
    return w - X.T.astype(np.float64) @ (Y - p)


def test_t0_myula_is_gradient_descent_on_the_moreau_envelope():
    w0 = np.array([0.5, -0.3, 0.02, 1.5])
    h, lam, n = 0.01, 0.02, 25
    res = hb.optimize(logistic(prox.l1(A)), hb.samplers.myula(h, lam, temperature=0.0), num_steps=n, init=w0,
                      progress_bar=False, check=False)
    w = w0.copy()
    for _ in range(n):  # a plain implementation: w - h grad f - (h / lam)(w - soft(w, lam a))
        soft = np.sign(w) * np.maximum(np.abs(w) - lam * A, 0)
        w = w - h * grad_f(w) - (h / lam) * (w - soft)
    np.testing.assert_allclose(np.asarray(res.params), w, rtol=2e-5, atol=2e-6)


def test_t0_bmumla_is_mirror_descent_on_the_bregman_moreau_envelope():
    w0 = np.array([0.5, -0.3, 0.02, 1.5])
    beta, sigma = np.array([0.5, 1.0, 2.0, 0.7]), 0.8
    h, lam, n = 0.01, 0.05, 25
    s = hb.samplers.bmumla(h, lam, mirror=mirror.hypentropy(beta.astype(np.float32)),
                           prox=mirror.hypentropy(sigma), temperature=0.0)
    res = hb.optimize(logistic(prox.l1(A)), s, num_steps=n, init=w0, progress_bar=False, check=False)
    w = w0.copy()
    for _ in range(n):  # Lau & Liu's update at T = 0, written out
        thr = sigma * np.sinh(lam * A)
        p = np.where(w > thr, sigma * np.sinh(np.arcsinh(w / sigma) - lam * A),
                     np.where(w < -thr, sigma * np.sinh(np.arcsinh(w / sigma) + lam * A), 0.0))
        env = (w - p) / (lam * np.sqrt(w ** 2 + sigma ** 2))
        w = beta * np.sinh(np.arcsinh(w / beta) - h * (grad_f(w) + env))
    np.testing.assert_allclose(np.asarray(res.params), w, rtol=2e-5, atol=2e-6)


def test_t0_limit_is_within_o_lam_of_the_proximal_gradient_minimiser():
    """The smoothed objective's minimiser approaches argmin f + g (plain proximal gradient) as lam -> 0."""
    w = np.zeros(D)
    for _ in range(3000):  # ISTA on f + sum a |w|
        z = w - 0.05 * grad_f(w)
        w = np.sign(z) * np.maximum(np.abs(z) - 0.05 * A * 0.3, 0)
    lam = 0.01
    res = hb.optimize(logistic(prox.l1(0.3 * A)), hb.samplers.myula(lam / 4, lam, temperature=0.0),
                      num_steps=4000, init=np.zeros(D), progress_bar=False, check=False)
    err = np.max(np.abs(np.asarray(res.params) - w))
    assert err < 3 * lam * np.max(0.3 * A), err  # |a| lam-sized shifts of the thresholds


def test_one_noisy_step_of_each_sampler_matches_its_equation():
    """One step at T = 1 from the same key: the draws equal the update written by hand."""
    t = logistic(prox.l1(A))
    w0 = np.array([[0.5, -0.3, 0.02, 1.5]], np.float32)
    h, lam, beta = 1e-2, 5e-2, 0.7
    samplers = {"myula": hb.samplers.myula(h, lam), "bmula": hb.samplers.bmula(h, lam, prox=mirror.hypentropy(beta)),
                "bmumla": hb.samplers.bmumla(h, lam, mirror=mirror.hypentropy(beta))}
    out = {k: np.asarray(hb.sample(t, s, num_samples=1, init=w0, seed=3, progress_bar=False, checks="off")
                         .samples["theta"][0, 0], np.float64) for k, s in samplers.items()}
    w = w0[0].astype(np.float64)
    g = -grad_f(w)
    soft = np.sign(w) * np.maximum(np.abs(w) - lam * A, 0)
    xi = (out["myula"] - (w + h * g - (h / lam) * (w - soft))) / np.sqrt(2 * h)  # the noise MYULA drew
    thr = beta * np.sinh(lam * A)
    p = np.where(w > thr, beta * np.sinh(np.arcsinh(w / beta) - lam * A),
                 np.where(w < -thr, beta * np.sinh(np.arcsinh(w / beta) + lam * A), 0.0))
    env = (w - p) / (lam * np.sqrt(w ** 2 + beta ** 2))
    np.testing.assert_allclose(out["bmula"], w + h * (g - env) + np.sqrt(2 * h) * xi, atol=2e-5)
    y = np.arcsinh(w / beta) + h * (g - env) + np.sqrt(2 * h) * (w ** 2 + beta ** 2) ** -0.25 * xi
    np.testing.assert_allclose(out["bmumla"], beta * np.sinh(y), atol=2e-5)


def test_box_mirror_keeps_every_draw_inside_and_samples_the_uniform():
    c = np.array([1.0, 2.0], np.float32)
    t = hb.models.from_logdensity(lambda p: jnp.zeros(()), lambda p, b: 0.0 * jnp.sum(b), np.zeros((2, 1), np.float32),
                                  params=jnp.zeros(2), nonsmooth=prox.box(-c, c))
    r = hb.sample(t, hb.samplers.bmumla(0.05, 0.1, mirror=mirror.box(-c, c)), num_samples=2000, thinning=5,
                  num_chains=8, init=np.zeros((8, 2), np.float32), progress_bar=False, checks="off")
    x = np.asarray(r.samples["theta"], np.float64)
    assert np.all(np.abs(x) < c)
    # a coarse check (the tight one is slow): Var = c^2 / 3 within 15%
    np.testing.assert_allclose(np.mean(x ** 2, axis=(0, 1)) * 3 / c ** 2, 1.0, atol=0.15)


def test_minibatches_chains_checkpoint_resume_and_arviz(tmp_path):
    t = logistic(prox.l1(A))
    s = hb.samplers.bmumla(1e-3, 1e-2, mirror=mirror.hypentropy(1.0), gradient=hb.kernels.gradients.svrg(10))
    kw = dict(batch_size=8, num_samples=30, num_chains=3, seed=4, progress_bar=False, checks="off",
              init=np.zeros((3, D), np.float32))
    ckpt = str(tmp_path / "c")
    a = hb.sample(t, s, checkpoint=ckpt, chunk_size=10, **kw)
    b = hb.sample(t, s, resume=ckpt, chunk_size=10, **kw)
    np.testing.assert_array_equal(a.samples["theta"], b.samples["theta"])
    idata = a.to_arviz()
    assert idata.posterior["theta"].shape == (3, 30, D) and a.sampler_name.startswith("bmumla")
    assert np.all(np.isfinite(a.stats["lp"]))


def test_from_numpyro_with_a_nonsmooth_term_on_a_site():
    def model(X, y):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([X.shape[1]]).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("obs", dist.Bernoulli(logits=X @ w), obs=y)

    t = hb.models.from_numpyro(model, X, Y, nonsmooth=prox.sites(w=prox.l1(A)))
    w0 = {"w": np.array([[0.5, -0.3, 0.02, 1.5]], np.float32)}
    a = hb.optimize(t, hb.samplers.myula(0.01, 0.02, temperature=0.0), num_steps=5, init={"w": w0["w"][0]},
                    progress_bar=False, check=False)
    b = hb.optimize(logistic(prox.l1(A)), hb.samplers.myula(0.01, 0.02, temperature=0.0), num_steps=5,
                    init=w0["w"][0], progress_bar=False, check=False)
    np.testing.assert_allclose(np.asarray(a.params["w"]), np.asarray(b.params), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no site"):
        hb.models.from_numpyro(model, X, Y, nonsmooth=prox.sites(v=prox.l1()))


def test_bad_input_is_refused_before_compiling():
    t = logistic(prox.l1(A))
    for lam in (0.0, -1.0):
        with pytest.raises(ValueError, match="lam must be > 0"):
            hb.samplers.bmumla(1e-3, lam, mirror=mirror.hypentropy())
    with pytest.raises(ValueError, match="needs step_size"):
        hb.samplers.myula(lam=0.1)
    with pytest.raises(ValueError, match="needs lam"):
        hb.samplers.bmula(1e-3)
    with pytest.raises(ValueError, match="needs mirror"):
        hb.samplers.bmumla(1e-3, 0.1)
    with pytest.raises(TypeError, match="mirror map"):
        hb.samplers.bmumla(1e-3, 0.1, mirror="hypentropy")
    with pytest.raises(ValueError, match="step_size must be"):
        hb.samplers.myula(-1e-3, 0.1)
    kw = dict(num_samples=5, progress_bar=False)
    # the default init is uniform(-2, 2): outside the box (-1, 1)^d and the positive orthant
    with pytest.raises(ValueError, match=r"chain\(s\) \[0, 1\].*outside the domain of the box mirror map"):
        hb.sample(t, hb.samplers.bmumla(1e-3, 0.1, mirror=mirror.box(-1.0, 1.0)), num_chains=2, **kw)
    with pytest.raises(ValueError, match="outside the domain of the burg mirror map"):
        hb.sample(t, hb.samplers.bmumla(1e-3, 0.1, mirror=mirror.burg()), init=-np.ones((1, D)), **kw)
    with pytest.raises(ValueError, match="outside the domain of the simplex"):
        hb.sample(t, hb.samplers.bmumla(1e-3, 0.1, mirror=mirror.simplex()), init=np.full((1, D), 0.3), **kw)
    with pytest.raises(ValueError, match="l1 weights leaf of shape"):
        hb.sample(logistic(prox.l1(np.ones(3, np.float32))), hb.samplers.myula(1e-3, 0.1), **kw)
    with pytest.raises(ValueError, match="not available"):
        hb.sample(logistic(prox.tv1d(1.0)), hb.samplers.bmumla(1e-3, 0.1, mirror=mirror.hypentropy()), **kw)
    with pytest.raises(ValueError, match="would ignore"):
        hb.sample(t, hb.samplers.sgld(1e-3), **kw)
