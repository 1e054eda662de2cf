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


W0 = np.array([0.5, -0.3, 0.02, 1.5])


def iterates(target, sampler, n, w0=W0):
    """The first n iterates of a T = 0 run (every step recorded; w0 None: the default init), float64."""
    init = None if w0 is None else np.asarray(w0, np.float32)[None]
    r = hb.sample(target, sampler, num_samples=n, init=init, seed=0, progress_bar=False, checks="off")
    return np.asarray(r.samples["theta"][0], np.float64)


def soft(z, t):
    return np.sign(z) * np.maximum(np.abs(z) - t, 0)


def hyp_l1_prox(z, t, beta):
    """The Bregman prox of t |.| under hypentropy(beta), written out (0 in the middle)."""
    thr = beta * np.sinh(t)
    return np.where(z > thr, beta * np.sinh(np.arcsinh(z / beta) - t),
                    np.where(z < -thr, beta * np.sinh(np.arcsinh(z / beta) + t), 0.0))


def lasso_minimiser(a, bound=None):
    """argmin f + sum a |w| (over |w| <= bound) by scipy's L-BFGS-B on w = u - v, u, v >= 0."""
    from scipy.optimize import minimize

    def obj(uv):
        w = uv[:D] - uv[D:]
        z = X.astype(np.float64) @ w
        val = 0.5 * w @ w - Y @ z + np.sum(np.logaddexp(0, z)) + a @ (uv[:D] + uv[D:])
        g = grad_f(w)
        return val, np.concatenate([g + a, -g + a])

    res = minimize(obj, np.zeros(2 * D), jac=True, method="L-BFGS-B", bounds=[(0, bound)] * (2 * D),
                   options=dict(ftol=1e-15, gtol=1e-12, maxiter=10_000))
    return res.x[:D] - res.x[D:]


def objective(w):  # f + g, g = sum a |w|, full data, float64
    z = X.astype(np.float64) @ w
    return 0.5 * w @ w - Y @ z + np.sum(np.logaddexp(0, z)) + A @ np.abs(w)


def test_t0_myula_in_optimize_is_ista_and_reaches_the_lasso_minimiser():
    """T = 0: w <- prox_{h g}(w - h grad f(w)) (ISTA; lam plays no role). hb.optimize's trace of
    lp = -(f + g) at every step equals plain ISTA's, the end point equals it, and it is the
    lasso minimiser (scipy); the smooth convergence check is not run on a nonsmooth target."""
    h, n = 0.05, 600
    res = hb.optimize(logistic(prox.l1(A)), hb.samplers.myula(h, 0.02, temperature=0.0), num_steps=n, init=W0,
                      trace_every=1, progress_bar=False)
    w, obj = W0.copy(), []
    for _ in range(n):  # plain ISTA
        obj.append(objective(w))
        w = soft(w - h * grad_f(w), h * A)
    np.testing.assert_allclose(-res.trace["lp"], obj, rtol=2e-6)
    np.testing.assert_allclose(np.asarray(res.params), w, atol=1e-6)
    wstar = lasso_minimiser(A)
    assert np.sum(wstar == 0) == 2 and np.all(np.asarray(res.params)[2:] == 0)  # sparse, exactly
    np.testing.assert_allclose(np.asarray(res.params), wstar, atol=1e-6)
    assert res.converged is None and "nonsmooth" in res.diagnosis["reason"]


def test_t0_bmumla_is_the_bregman_proximal_gradient_method():
    """T = 0, hypentropy mirror: w <- P^phi_{h g}(grad phi*(grad phi(w) - h grad f(w))) at every
    iterate (lam and prox= play no role), ending at the lasso minimiser; BMULA with prox=phi
    takes the same step."""
    beta = np.array([0.5, 1.0, 2.0, 0.7])
    h, n = 0.05, 400
    t = logistic(prox.l1(A))
    phi = mirror.hypentropy(beta.astype(np.float32))
    got = iterates(t, hb.samplers.bmumla(h, 0.05, mirror=phi, prox=mirror.hypentropy(0.8), temperature=0.0), n)
    w, want = W0.copy(), []
    for _ in range(n):
        z = beta * np.sinh(np.arcsinh(w / beta) - h * grad_f(w))  # mirror descent step
        w = hyp_l1_prox(z, h * A, beta)  # Bregman prox of h g under phi
        want.append(w)
    np.testing.assert_allclose(got, np.array(want), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[-1], lasso_minimiser(A), atol=1e-6)
    # BMULA at T = 0 with prox=phi: the same step (one step of each kernel on the same oracle)
    from heatbath.kernels.gradients import Oracle
    from heatbath.samplers.bregman import BregmanState

    oracle = Oracle(lambda p, b: jax.value_and_grad(lambda q: logprior(q) + loglik(q, b))(p), nonsmooth=t.nonsmooth)
    state = BregmanState(jnp.asarray(W0, jnp.float32), jnp.zeros((), jnp.int32))
    steps = [jax.jit(lambda st: s.step(jax.random.key(0), st, (X, Y), oracle)[0].position)(state) for s in
             (hb.samplers.bmula(h, 0.05, prox=phi, temperature=0.0),
              hb.samplers.bmumla(h, 9.0, mirror=phi, temperature=0.0))]
    np.testing.assert_array_equal(steps[0], steps[1])
    np.testing.assert_allclose(steps[0], want[0], rtol=1e-5, atol=1e-6)


def test_t0_bmumla_box_mirror_reaches_the_constrained_lasso_minimiser():
    """T = 0 with the box barrier (-c, c) and an L1 term, from the default init: every step is
    the Bregman proximal gradient step written out, and the limit is argmin f + g over the box
    (scipy), with an active bound."""
    c, h, n = 0.25, 0.05, 3000
    got = iterates(logistic(prox.l1(A)), hb.samplers.bmumla(h, 0.05, mirror=mirror.box(-c, c), temperature=0.0),
                   n, w0=None)
    assert np.all(np.abs(got) < c)

    def conj(y):
        tt = c * y
        return c * tt / (1 + np.sqrt(1 + tt ** 2))

    def step(w):
        y = 1 / (c - w) - 1 / (w + c) - h * grad_f(w)  # grad phi(w) - h grad f(w); grad phi(0) = 0
        return np.where(y > h * A, conj(y - h * A), np.where(y < -h * A, conj(y + h * A), 0.0))

    np.testing.assert_allclose(got[1:50], [step(w) for w in got[:49]], rtol=1e-5, atol=1e-6)
    wstar = lasso_minimiser(A, bound=c)
    assert np.sum(np.abs(wstar) == c) == 1 and np.all(np.abs(lasso_minimiser(A)) <= 1)
    # the coordinate at the bound approaches it at the barrier's O(1/k); the others follow it
    np.testing.assert_allclose(got[-1], wstar, atol=2e-3)
    np.testing.assert_allclose(got[-1, 1:], wstar[1:], atol=3e-5)
    assert np.all(got[-1, 2:] == 0)


def test_one_noisy_step_of_each_sampler_matches_its_equation():
    """One step at T = 1 from the same key: the draws equal the update written by hand."""
    t = logistic(prox.l1(A))
    w0 = np.array([[0.5, -0.3, 0.02, 1.5]], np.float32)
    h, lam, beta = 1e-2, 5e-2, 0.7
    samplers = {"myula": hb.samplers.myula(h, lam), "bmula": hb.samplers.bmula(h, lam, prox=mirror.hypentropy(beta)),
                "bmumla": hb.samplers.bmumla(h, lam, mirror=mirror.hypentropy(beta))}
    out = {k: np.asarray(hb.sample(t, s, num_samples=1, init=w0, seed=3, progress_bar=False, checks="off", num_warmup=0)
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


def _density(logp, d):
    return hb.models.from_logdensity(logp, lambda p, b: 0.0 * jnp.sum(b), np.zeros((2, 1), np.float32),
                                     params=jnp.full(d, 0.5))


def test_default_init_starts_inside_a_restricted_mirror_domain():
    """No init=: the uniform(-2, 2) draws u are mapped into the domain (box: centre + c tanh(u / 2),
    simplex: softmax([u, 0]), Burg: exp(u)), and the chains stay there."""
    from heatbath.drivers import inputs, loop
    from heatbath.kernels.validate import seed_key

    kw = dict(num_samples=300, thinning=4, num_chains=4, seed=5, progress_bar=False, checks="off")
    c = np.array([1.0, 2.0], np.float32)
    flat = hb.models.from_logdensity(lambda p: jnp.zeros(()), lambda p, b: 0.0 * jnp.sum(b),
                                     np.zeros((2, 1), np.float32), params=jnp.zeros(2), nonsmooth=prox.box(-c, c))
    s = hb.samplers.bmumla(0.05, 0.1, mirror=mirror.box(-c, c))
    box = np.asarray(hb.sample(flat, s, **kw).samples["theta"])
    assert np.all(np.abs(box) < c)
    u = inputs.default_init(flat, loop.fold_each(loop.chain_keys(seed_key(5), 4), 0))
    start = np.asarray(mirror.interior(mirror.box(-c, c), u))
    np.testing.assert_allclose(start, c * np.tanh(np.asarray(u) / 2), rtol=1e-6)
    np.testing.assert_array_equal(box, hb.sample(flat, s, init=start, **kw).samples["theta"])
    # Dirichlet(4, 5, 6) in its 2 free coordinates (the last probability is 1 - x_1 - x_2)
    alpha = np.array([4.0, 5.0, 6.0])
    dirichlet = _density(lambda x: jnp.sum((alpha[:2] - 1) * jnp.log(x)) + (alpha[2] - 1) * jnp.log1p(-jnp.sum(x)), 2)
    x = np.asarray(hb.sample(dirichlet, hb.samplers.bmumla(0.005, 0.1, mirror=mirror.simplex()), **kw)
                   .samples["theta"], np.float64)
    assert np.all(x > 0) and np.all(x.sum(-1) < 1)
    np.testing.assert_allclose(x.mean((0, 1)), alpha[:2] / alpha.sum(), atol=0.03)
    # Gamma(3, 1) on the positive orthant, Burg mirror
    gamma = _density(lambda x: jnp.sum(2.0 * jnp.log(x) - x), 2)
    g = np.asarray(hb.sample(gamma, hb.samplers.bmumla(0.02, 0.1, mirror=mirror.burg()), **kw).samples["theta"],
                   np.float64)
    assert np.all(g > 0)
    np.testing.assert_allclose(g.mean((0, 1)), 3.0, rtol=0.15)  # coarse: 1,200 correlated draws


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
    # an explicit init outside the mirror map's domain (the default one starts inside it)
    with pytest.raises(ValueError, match=r"chain\(s\) \[0, 1\].*outside the domain of the box mirror map"):
        hb.sample(t, hb.samplers.bmumla(1e-3, 0.1, mirror=mirror.box(-1.0, 1.0)), num_chains=2,
                  init=np.full((2, D), 1.5), **kw)
    with pytest.raises(ValueError, match="outside the domain of the box mirror map"):
        hb.optimize(t, hb.samplers.bmumla(1e-3, 0.1, mirror=mirror.box(-1.0, 1.0), temperature=0.0),
                    init=np.full(D, 1.5), num_steps=5, progress_bar=False)
    with pytest.raises(ValueError, match="outside the domain of the burg mirror map"):
        hb.sample(t, hb.samplers.bmumla(1e-3, 0.1, mirror=mirror.burg()), init=-np.ones((1, D)), **kw)
    with pytest.raises(ValueError, match="outside the domain of the simplex"):
        hb.sample(t, hb.samplers.bmumla(1e-3, 0.1, mirror=mirror.simplex()), init=np.full((1, D), 0.3), **kw)
    with pytest.raises(ValueError, match="l1 weights leaf of shape"):
        hb.sample(logistic(prox.l1(np.ones(3, np.float32))), hb.samplers.myula(1e-3, 0.1), **kw)
    with pytest.raises(ValueError, match="not available"):
        hb.sample(logistic(prox.tv1d(1.0)), hb.samplers.bmumla(1e-3, 0.1, mirror=mirror.hypentropy()), **kw)
    # at T = 0 the prox is taken under phi, whatever prox= (the Euclidean envelope's) says
    with pytest.raises(ValueError, match="tv1d under the hypentropy mirror map is not available"):
        hb.optimize(logistic(prox.tv1d(1.0)), hb.samplers.bmumla(1e-3, 0.1, mirror=mirror.hypentropy(), prox=None,
                                                                  temperature=0.0), num_steps=5, progress_bar=False)
    with pytest.raises(ValueError, match="would ignore"):
        hb.sample(t, hb.samplers.sgld(1e-3), **kw)
