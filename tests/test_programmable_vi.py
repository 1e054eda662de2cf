"""Programmable VI (heatbath.vi.programmable): estimators against exact gradients, NumPyro's
ELBOs, the objectives, hb.fit with minibatches / checkpoint / ArviZ / Predictive, bad input.
The 10,000-seed unbiasedness table is in test_programmable_vi_slow.py; the long checks here are
slow-marked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import heatbath as hb
from heatbath.vi import programmable as pvi


def _empty_model():
    pass


def _bernoulli_case(estimator):
    def guide():
        t = numpyro.param("t", 0.3)
        numpyro.sample("v", dist.Bernoulli(logits=t), infer={"estimator": estimator})

    def objective(ctx):
        v = ctx.sample_guide().values["v"]
        t = ctx.params["t"]
        return (v - t) ** 2 + 3.0 * v

    def exact(t):
        p = jax.nn.sigmoid(t)
        return p * ((1 - t) ** 2 + 3.0) + (1 - p) * t**2

    return guide, objective, {"t": 0.3}, exact


def _gaussian_case(estimator):
    def guide():
        m = numpyro.param("m", 0.5)
        s = numpyro.param("s", -0.2)
        numpyro.sample("z", dist.Normal(m, jnp.exp(s)), infer={"estimator": estimator})

    def objective(ctx):
        z = ctx.sample_guide().values["z"]
        return -((z - 1.0) ** 2)

    def exact(m, s):
        return -((m - 1.0) ** 2 + jnp.exp(2 * s))

    return guide, objective, {"m": 0.5, "s": -0.2}, exact


def _grads(guide, objective, n, running=None, params=None, seed=0):
    est = pvi.gradient_estimator(objective, _empty_model, guide)
    p = est.init_params() if params is None else params
    keys = jax.random.split(jax.random.key(seed), n)
    f = jax.jit(jax.vmap(lambda k: est(p, k, None, running if running is not None else est.init_running())[1]))
    return {k: np.asarray(v, np.float64) for k, v in f(keys)["params"].items()}


@pytest.mark.parametrize("estimator", ["enum", "mvd"])
def test_bernoulli_estimators_are_unbiased(estimator):
    guide, objective, _, exact = _bernoulli_case(estimator)
    g = _grads(guide, objective, 2000)["t"]
    truth = float(jax.grad(exact)(0.3))
    se = g.std() / np.sqrt(len(g)) + 1e-12
    assert abs(g.mean() - truth) < 4 * se + 1e-6, (g.mean(), truth, se)
    if estimator in ("enum", "mvd"):
        assert g.std() < 1e-5 if estimator == "enum" else True


@pytest.mark.slow  # default-suite budget: run with -m slow
@pytest.mark.parametrize("estimator", ["reparam", "reinforce"])
def test_gaussian_estimators_are_unbiased_and_reparam_has_lower_variance(estimator):
    guide, objective, _, exact = _gaussian_case(estimator)
    g = _grads(guide, objective, 2000)
    truth = jax.grad(exact, argnums=(0, 1))(0.5, -0.2)
    for name, t in zip(("m", "s"), truth):
        se = g[name].std() / np.sqrt(len(g[name]))
        assert abs(g[name].mean() - float(t)) < 4 * se, (name, g[name].mean(), t)
    if estimator == "reinforce":
        rep = _grads(*_gaussian_case("reparam")[:2], 2000)
        assert rep["m"].var() < g["m"].var()


@pytest.mark.slow  # default-suite budget: run with -m slow
def test_running_baseline_lowers_reinforce_variance_and_stays_unbiased():
    guide, objective, _, exact = _gaussian_case(pvi.reinforce(baseline="running"))
    est = pvi.gradient_estimator(objective, _empty_model, guide)
    (key,) = est.structure(None).running
    plain = _grads(*_gaussian_case("reinforce")[:2], 2000)
    based = _grads(guide, objective, 2000, running={key: jnp.asarray(-0.9), "_count": jnp.asarray(5)})
    truth = float(jax.grad(exact)(0.5, -0.2))
    se = based["m"].std() / np.sqrt(2000)
    assert abs(based["m"].mean() - truth) < 4 * se
    assert based["m"].var() < 0.8 * plain["m"].var()


def test_categorical_enum_is_exact_and_reinforce_unbiased():
    def make(estimator):
        def guide():
            t = numpyro.param("t", jnp.array([0.2, -0.4, 0.1]))
            numpyro.sample("c", dist.Categorical(logits=t), infer={"estimator": estimator})

        def objective(ctx):
            c = ctx.sample_guide().values["c"]
            return jnp.array([1.0, -2.0, 4.0])[c] + ctx.params["t"][c]

        return guide, objective

    def exact(t):
        p = jax.nn.softmax(t)
        return jnp.sum(p * (jnp.array([1.0, -2.0, 4.0]) + t))

    truth = np.asarray(jax.grad(exact)(jnp.array([0.2, -0.4, 0.1])))
    enum_g = _grads(*make("enum"), 4)["t"]
    np.testing.assert_allclose(enum_g, np.broadcast_to(truth, enum_g.shape), atol=1e-5)
    g = _grads(*make("reinforce"), 2000)["t"]
    se = g.std(axis=0) / np.sqrt(2000)
    assert np.all(np.abs(g.mean(axis=0) - truth) < 4 * se)


def _cone_model():
    x = numpyro.sample("x", dist.Normal(0.0, 10.0))
    y = numpyro.sample("y", dist.Normal(0.0, 10.0))
    r = x**2 + y**2
    numpyro.sample("z", dist.Normal(r, 0.1 + r / 100.0), obs=5.0)


def _cone_guide():
    m1, m2 = numpyro.param("m1", 0.3), numpyro.param("m2", -0.2)
    s1, s2 = numpyro.param("s1", 0.5), numpyro.param("s2", 0.1)
    numpyro.sample("x", dist.Normal(m1, jnp.exp(s1)))
    numpyro.sample("y", dist.Normal(m2, jnp.exp(s2)))


def test_elbo_equals_numpyro_trace_elbo_value_and_gradient():
    from numpyro.infer import Trace_ELBO

    est = pvi.gradient_estimator(pvi.elbo(), _cone_model, _cone_guide)
    params = est.init_params()
    for seed in range(3):
        key = jax.random.key(seed)
        value, grads = est.value_and_grad(params, key)
        loss, ref = jax.value_and_grad(lambda p: Trace_ELBO().loss(key, p, _cone_model, _cone_guide))(params["params"])
        np.testing.assert_allclose(float(value), -float(loss), rtol=1e-6)
        # Same keys, same draws, both pathwise: the gradient is the same number key by key
        # (so equal in expectation).
        for k in ref:
            np.testing.assert_allclose(float(grads["params"][k]), -float(ref[k]), rtol=1e-5, atol=1e-5)


def test_model_side_enumeration_matches_trace_enum_elbo():
    pytest.importorskip("funsor")
    from numpyro.infer import TraceEnum_ELBO

    data = jnp.array([-2.1, -1.7, 2.2, 1.9, 2.4, -2.0])

    def model(x):
        locs = numpyro.sample("locs", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            c = numpyro.sample("c", dist.Categorical(jnp.array([0.4, 0.6])), infer={"enumerate": "parallel"})
            numpyro.sample("x", dist.Normal(locs[c], 1.0), obs=x)

    def guide(x):
        numpyro.sample("locs", dist.Delta(numpyro.param("q_locs", jnp.array([-1.0, 1.5])), event_dim=1))

    est = pvi.gradient_estimator(pvi.elbo(), model, guide, data)
    params = est.init_params()
    key = jax.random.key(0)
    value, grads = est.value_and_grad(params, key)
    loss, ref = jax.value_and_grad(
        lambda p: TraceEnum_ELBO(max_plate_nesting=1).loss(key, p, model, guide, data))(params["params"])
    np.testing.assert_allclose(float(value), -float(loss), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grads["params"]["q_locs"]), -np.asarray(ref["q_locs"]), rtol=1e-4)


@pytest.mark.slow  # default-suite budget: run with -m slow
def test_objectives_run_and_order_as_bounds():
    """IWAE(K) >= ELBO in expectation (K = 20, 400 keys), RWS reports the IWAE bound, all jit."""
    k = jax.random.split(jax.random.key(0), 400)
    vals = {}
    for name, obj in (("elbo", pvi.elbo()), ("iwae", pvi.iwae(20)), ("renyi", pvi.renyi(0.5, 20)),
                      ("rws", pvi.rws(20))):
        est = pvi.gradient_estimator(obj, _cone_model, _cone_guide)
        v, g = jax.jit(jax.vmap(est.value_and_grad, in_axes=(None, 0)))(est.init_params(), k)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))
        vals[name] = np.asarray(v, np.float64).mean()
    assert vals["iwae"] > vals["renyi"] > vals["elbo"]
    assert abs(vals["rws"] - vals["iwae"]) < 0.5


@pytest.mark.slow  # default-suite budget: run with -m slow
def test_hvi_marginal_objectives_run():
    def guide():
        s1, s2 = numpyro.param("s1", 0.0), numpyro.param("s2", 0.0)
        u = numpyro.sample("u", dist.Uniform(0.0, 1.0))
        numpyro.sample("x", dist.Normal(jnp.sqrt(5.0) * jnp.cos(2 * jnp.pi * u), jnp.exp(s1)))
        numpyro.sample("y", dist.Normal(jnp.sqrt(5.0) * jnp.sin(2 * jnp.pi * u), jnp.exp(s2)))

    keys = jax.random.split(jax.random.key(0), 300)
    means = {}
    for name, obj in (("hvi", pvi.hvi()), ("iwhvi", pvi.iwhvi(m=5)), ("diwhvi", pvi.diwhvi(n=5, m=5))):
        est = pvi.gradient_estimator(obj, _cone_model, guide)
        v, g = jax.jit(jax.vmap(est.value_and_grad, in_axes=(None, 0)))(est.init_params(), keys)
        assert set(g["params"]) == {"s1", "s2"}
        means[name] = np.asarray(v, np.float64).mean()
    # more inner particles tighten the bound (the marginal's estimate), outer IWAE more still
    assert means["hvi"] < means["iwhvi"] < means["diwhvi"]


def _regression_data(n=400):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0]) + 0.5 * rng.normal(size=n)).astype(np.float32)
    return x, y


def _regression_model(x, y):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)


def _regression_guide(x, y):
    loc = numpyro.param("loc", jnp.zeros(2))
    scale = numpyro.param("scale", 0.1 * jnp.ones(2), constraint=dist.constraints.positive)
    numpyro.sample("w", dist.Normal(loc, scale).to_event(1))


@pytest.mark.slow  # default-suite budget (ArviZ / Predictive / exact posterior); the checkpoint test keeps a fit
def test_fit_minibatched_matches_exact_posterior_and_feeds_arviz_and_predictive():
    x, y = _regression_data()
    method = hb.vi.programmable(pvi.elbo(), _regression_guide, optimizer=optax.adam(0.02), num_steps=1500)
    q = hb.fit(_regression_model, method, data=(x, y), batch_size=40, seed=0)
    prec = np.eye(2) + x.T.astype(np.float64) @ x / 0.25
    mean = np.linalg.solve(prec, x.T.astype(np.float64) @ y / 0.25)
    sd = np.sqrt(np.diag(np.linalg.inv(prec)))
    np.testing.assert_allclose(q.params["loc"], mean, atol=4 * sd.max())
    np.testing.assert_allclose(q.params["scale"], sd, rtol=0.5)
    assert q.trace["objective"].dtype == np.float64 and len(q.trace["objective"]) == 100
    draws = q.sample(jax.random.key(1), 500)
    assert draws["w"].shape == (500, 2)
    idata = q.to_arviz(200)
    assert idata.posterior["w"].shape == (1, 200, 2)
    pred = numpyro.infer.Predictive(_regression_model, guide=q.guide, params=q.params, num_samples=7)(
        jax.random.key(2), x, None)
    assert pred["y"].shape == (7, len(x))


def test_fit_checkpoint_resume_equals_uninterrupted(tmp_path, monkeypatch):
    x, y = _regression_data(100)
    method = hb.vi.programmable(pvi.iwae(3), _regression_guide, optimizer=optax.adam(0.02), num_steps=400,
                                optimizer_name="adam(0.02)")
    kw = dict(data=(x, y), batch_size=20, seed=3, trace_every=10)
    q = hb.fit(_regression_model, method, **kw)
    ckpt = str(tmp_path / "pvi")
    real_commit = hb.checkpoint.Checkpoint.commit

    def crash(self, segments_done, *args, **kwargs):
        meta = real_commit(self, segments_done, *args, **kwargs)
        if segments_done == 5:
            raise KeyboardInterrupt("simulated crash")
        return meta

    monkeypatch.setattr(hb.checkpoint.Checkpoint, "commit", crash)
    with pytest.raises(KeyboardInterrupt):
        hb.fit(_regression_model, method, checkpoint=ckpt, **kw)
    monkeypatch.setattr(hb.checkpoint.Checkpoint, "commit", real_commit)
    resumed = hb.fit(_regression_model, method, resume=ckpt, **kw)
    for k in q.params:
        np.testing.assert_array_equal(resumed.params[k], q.params[k])
    assert q.trace["objective"].dtype == np.float64 and len(q.trace["objective"]) == 40
    np.testing.assert_array_equal(resumed.trace["objective"], q.trace["objective"])


def test_bad_input_fails_before_compilation():
    def guide_with(est, d):
        def guide():
            numpyro.sample("v", d(numpyro.param("t", 0.3)), infer={"estimator": est})

        return guide

    def obj(ctx):
        return jnp.sum(ctx.sample_guide().values["v"])

    bern = lambda t: dist.Bernoulli(logits=t)  # noqa: E731
    norm = lambda t: dist.Normal(t, 1.0)  # noqa: E731
    with pytest.raises(ValueError, match="unknown gradient estimator 'score'"):
        pvi.gradient_estimator(obj, _empty_model, guide_with("score", norm))
    with pytest.raises(ValueError, match="enum sums over a discrete support"):
        pvi.gradient_estimator(obj, _empty_model, guide_with("enum", norm))
    with pytest.raises(ValueError, match="reparam needs a reparameterised sampler"):
        pvi.gradient_estimator(obj, _empty_model, guide_with("reparam", bern))
    with pytest.raises(ValueError, match="mvd is implemented for Bernoulli"):
        pvi.gradient_estimator(obj, _empty_model, guide_with("mvd", norm))
    with pytest.raises(ValueError, match="must return a real scalar"):
        pvi.gradient_estimator(lambda ctx: ctx.sample_guide().values["v"] * jnp.ones(3), _empty_model,
                               guide_with("reparam", norm))
    with pytest.raises(ValueError, match="unknown gradient estimator"):
        hb.vi.programmable(pvi.elbo(), _regression_guide, num_steps=10, estimators={"w": "magic"})
    x, y = _regression_data(50)
    bad = hb.vi.programmable(lambda ctx: jnp.ones(2), _regression_guide, num_steps=10)
    with pytest.raises(ValueError, match="must return a real scalar"):
        hb.fit(_regression_model, bad, data=(x, y))


def test_defaults_and_estimate_handler():
    seen = {}

    def guide():
        t = numpyro.param("t", 0.0)
        numpyro.sample("z", dist.Normal(t, 1.0))
        numpyro.sample("c", dist.Categorical(logits=jnp.array([t, 0.0, 1.0])))
        numpyro.sample("p", dist.Poisson(jnp.exp(t)))

    def obj(ctx):
        tr = ctx.sample_guide()
        seen.update(tr.values)
        return tr.values["z"] + tr.values["c"] + tr.values["p"]

    est = pvi.gradient_estimator(obj, _empty_model, guide)
    s = est.structure(None)
    assert [k for k, _ in s.branches] == ["guide:c:0"]  # enum by default for a 3-value site
    assert set(s.scores) == {"guide:p"}  # reinforce for the Poisson, reparam for the normal
    est2 = pvi.gradient_estimator(obj, _empty_model, pvi.estimate(guide, {"c": "reinforce"}))
    assert est2.structure(None).branches == () and set(est2.structure(None).scores) == {"guide:c", "guide:p"}


def test_fresh_keys_do_not_collide_with_split_keys():
    """ctx.next_key() and particle keys are apart from split(ctx.key) (partitionable threefry:
    fold_in(k, i) == split(k, n)[i]; the collision made IWHVI reuse its retained draw)."""
    def obj(ctx):
        model_key, guide_key = jax.random.split(ctx.key)
        ks = [model_key, guide_key, *jax.random.split(guide_key, 3), ctx.next_key(), ctx.next_key()]
        data = jnp.stack([jax.random.key_data(k) for k in ks])
        child = ctx.particles(lambda c: jnp.stack([jax.random.key_data(c.key), jax.random.key_data(c.next_key())]), 3)
        data = jnp.concatenate([data, child.reshape(-1, data.shape[-1])])
        same = jnp.all(data[:, None, :] == data[None, :, :], axis=-1)
        return jnp.sum(same).astype(jnp.float32) - data.shape[0]  # off-diagonal equal pairs

    est = pvi.gradient_estimator(obj, _empty_model, lambda: None)
    assert float(est.value(est.init_params(), jax.random.key(0))) == 0.0


@pytest.mark.slow  # default-suite budget: run with -m slow
def test_iwhvi_value_equals_an_independent_implementation():
    """IWHVI(m = 5) on the noisy cone at log sigma = -3 against a plain-JAX estimate of the same
    bound (independent keys): equal within 4 combined standard errors (20,000 keys each)."""
    from jax.scipy.special import logsumexp
    from jax.scipy.stats import norm

    def guide():
        s1, s2 = numpyro.param("s1", -3.0), numpyro.param("s2", -3.0)
        u = numpyro.sample("u", dist.Uniform(0.0, 1.0))
        numpyro.sample("x", dist.Normal(jnp.sqrt(5.0) * jnp.cos(2 * jnp.pi * u), jnp.exp(s1)))
        numpyro.sample("y", dist.Normal(jnp.sqrt(5.0) * jnp.sin(2 * jnp.pi * u), jnp.exp(s2)))

    def plain(key, m=5, s=-3.0):
        k1, k2, k3 = jax.random.split(key, 3)
        us = jnp.concatenate([jax.random.uniform(k1, (1,)), jax.random.uniform(k3, (m - 1,))])
        e = jax.random.normal(k2, (2,)) * jnp.exp(s)
        x, y = jnp.sqrt(5.0) * jnp.cos(2 * jnp.pi * us[0]) + e[0], jnp.sqrt(5.0) * jnp.sin(2 * jnp.pi * us[0]) + e[1]
        r = x**2 + y**2
        lp = norm.logpdf(x, 0, 10) + norm.logpdf(y, 0, 10) + norm.logpdf(5.0, r, 0.1 + r / 100)
        lq = norm.logpdf(x, jnp.sqrt(5.0) * jnp.cos(2 * jnp.pi * us), jnp.exp(s)) + norm.logpdf(
            y, jnp.sqrt(5.0) * jnp.sin(2 * jnp.pi * us), jnp.exp(s))
        return lp - (logsumexp(lq) - jnp.log(m))

    n = 20_000
    est = pvi.gradient_estimator(pvi.iwhvi(("x", "y"), m=5), _cone_model, guide)
    ours = np.asarray(jax.jit(jax.vmap(est.value, in_axes=(None, 0)))(
        est.init_params(), jax.random.split(jax.random.key(0), n)), np.float64)
    ref = np.asarray(jax.jit(jax.vmap(plain))(jax.random.split(jax.random.key(1), n)), np.float64)
    se = np.sqrt(ours.var() / n + ref.var() / n)
    assert abs(ours.mean() - ref.mean()) < 4 * se, (ours.mean(), ref.mean(), se)


def test_numpyro_optim_adam_follows_optax_adam_and_checkpoints(tmp_path):
    """numpyro.optim.Adam (what SVI takes) and optax.adam are the same update, up to rounding."""
    import numpyro.optim

    x, y = _regression_data(60)
    kw = dict(data=(x, y), batch_size=20, seed=4, trace_every=10)
    a = hb.fit(_regression_model, hb.vi.programmable(pvi.elbo(), _regression_guide, optimizer=optax.adam(0.02),
                                                     num_steps=60), **kw)
    m = hb.vi.programmable(pvi.elbo(), _regression_guide, optimizer=numpyro.optim.Adam(0.02), num_steps=60)
    assert m.hyperparameters["optimizer"] == "numpyro.optim.Adam"
    b = hb.fit(_regression_model, m, checkpoint=str(tmp_path / "ck"), **kw)
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-4, atol=1e-5)
    c = hb.fit(_regression_model, m, resume=str(tmp_path / "ck"), **kw)
    for k in b.params:
        np.testing.assert_array_equal(c.params[k], b.params[k])
    with pytest.raises(TypeError, match="numpyro.optim optimizer"):
        hb.vi.programmable(pvi.elbo(), _regression_guide, optimizer=object(), num_steps=5)
