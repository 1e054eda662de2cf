"""The NumPyro bridge: log densities, minibatches, constraints, deterministic sites."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.stats as st

import heatbath as hb


def regression_data(N=200, D=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D)).astype(np.float32)
    y = (X @ np.array([1.0, -0.5, 0.25]) + 0.3 * rng.normal(size=N)).astype(np.float32)
    return X, y


def linreg(X, y):
    w = numpyro.sample("w", dist.Normal(0, 2).expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.deterministic("sigma_sq", sigma**2)
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w, sigma), obs=y)


def linreg_subsampled(X, y):
    """The same model written for NumPyro's own subsampling: plate(subsample_size) + X[idx]."""
    w = numpyro.sample("w", dist.Normal(0, 2).expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.deterministic("sigma_sq", sigma**2)
    with numpyro.plate("data", X.shape[0], subsample_size=10) as idx:
        numpyro.sample("y", dist.Normal(X[idx] @ w, sigma), obs=y[idx])


def linreg_subsample_primitive(X, y):
    w = numpyro.sample("w", dist.Normal(0, 2).expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.deterministic("sigma_sq", sigma**2)
    with numpyro.plate("data", X.shape[0], subsample_size=10):
        Xb = numpyro.subsample(X, event_dim=1)
        yb = numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Normal(Xb @ w, sigma), obs=yb)


def hand_terms(u, X, y):
    """log prior (with the log-Jacobian of sigma = exp(u)) and the log likelihood, by hand."""
    w, log_sigma = np.asarray(u["w"], np.float64), float(u["sigma"])
    sigma = np.exp(log_sigma)
    lp = st.norm(0, 2).logpdf(w).sum() + st.halfnorm(scale=1.0).logpdf(sigma) + log_sigma
    ll = st.norm(X @ w, sigma).logpdf(y).sum()
    return lp, ll


@pytest.mark.parametrize("model", [linreg, linreg_subsampled, linreg_subsample_primitive])
def test_terms_equal_hand_written_log_density(model):
    X, y = regression_data()
    target = hb.models.from_numpyro(model, X, y)
    assert target.num_data == 200 and target.minibatch_error is None
    u = {"w": jnp.array([0.3, -0.1, 0.2]), "sigma": jnp.array(-0.4)}
    lp, ll = target.terms(u, target.data)
    hlp, hll = hand_terms(u, X, y)
    assert float(lp) == pytest.approx(hlp, rel=1e-5)
    assert float(ll) == pytest.approx(hll, rel=1e-5)
    # A minibatch gives the unscaled sum over its rows.
    idx = np.array([3, 17, 17, 150])
    batch = jax.tree.map(lambda a: a[idx], target.data)
    _, llb = target.terms(u, batch)
    assert float(llb) == pytest.approx(hand_terms(u, X[idx], y[idx])[1], rel=1e-5)


def test_constrain_and_unconstrain_round_trip_with_deterministic_sites():
    X, y = regression_data()
    target = hb.models.from_numpyro(linreg, X, y)
    u = {"w": jnp.array([0.3, -0.1, 0.2]), "sigma": jnp.array(-0.4)}
    values = target.constrain(u)
    assert set(values) == {"w", "sigma", "sigma_sq"}
    assert float(values["sigma"]) == pytest.approx(np.exp(-0.4), rel=1e-6)
    assert float(values["sigma_sq"]) == pytest.approx(np.exp(-0.8), rel=1e-5)
    back = target.unconstrain({"w": values["w"], "sigma": values["sigma"]})
    np.testing.assert_allclose(back["sigma"], -0.4, rtol=1e-5)


def test_model_written_by_hand_gives_the_same_draws():
    """The same model through from_numpyro and from_logdensity: same seed, same draws."""
    X, y = regression_data()

    def logprior(u):
        sigma = jnp.exp(u["sigma"])
        return (
            jnp.sum(dist.Normal(0, 2).log_prob(u["w"]))
            + dist.HalfNormal(1.0).log_prob(sigma)
            + u["sigma"]
        )

    def loglik(u, batch):
        Xb, yb = batch["X"], batch["y"]
        return jnp.sum(dist.Normal(Xb @ u["w"], jnp.exp(u["sigma"])).log_prob(yb))

    example = {"w": jnp.zeros(3), "sigma": jnp.zeros(())}
    by_hand = hb.models.from_logdensity(logprior, loglik, {"X": X, "y": y}, params=example)
    sampler = hb.samplers.sgld(1e-4)
    kw = dict(batch_size=20, num_samples=300, num_chains=2, seed=7, progress_bar=False)
    a = hb.sample(linreg, sampler, data={"X": X, "y": y}, **kw)
    b = hb.sample(by_hand, sampler, **kw)
    np.testing.assert_allclose(a.samples["w"], b.samples["w"], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(a.samples["sigma"], np.exp(b.samples["sigma"]), rtol=2e-4, atol=2e-5)


def test_positional_and_keyword_arguments_and_non_data_arguments():
    X, y = regression_data(N=50)

    def model(X, y=None, prior_scale=2.0):
        w = numpyro.sample("w", dist.Normal(0, prior_scale).expand([X.shape[1]]).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ w, 0.5), obs=y)

    t = hb.models.from_numpyro(model, X, y=y, prior_scale=3.0)
    assert set(t.data) == {"arg0", "y"}
    u = {"w": jnp.ones(3)}
    lp, _ = t.terms(u, t.data)
    assert float(lp) == pytest.approx(st.norm(0, 3).logpdf(np.ones(3)).sum(), rel=1e-6)


def test_local_latents_run_full_batch_but_refuse_minibatches():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0, 5))
        with numpyro.plate("J", y.shape[0]):
            z = numpyro.sample("z", dist.Normal(mu, 1.0))
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y)

    y = np.arange(5.0, dtype=np.float32)
    t = hb.models.from_numpyro(model, y)
    assert "z" in t.minibatch_error
    r = hb.sample(t, hb.samplers.sgld(0.05), num_samples=10, progress_bar=False)
    assert r.samples["z"].shape == (1, 10, 5)
    with pytest.raises(ValueError, match="inside the data plate"):
        hb.sample(t, hb.samplers.sgld(0.05), batch_size=2, num_samples=10, progress_bar=False)


def test_user_init_on_the_constrained_scale():
    X, y = regression_data(N=50)
    r = hb.sample(linreg, hb.samplers.sgld(1e-6, temperature=0.0), data={"X": X, "y": y},
                  init={"sigma": 0.5}, num_samples=1, progress_bar=False, num_warmup=0)
    # After one tiny step sigma is still ~0.5 (given), w came from the default init.
    assert r.samples["sigma"][0, 0] == pytest.approx(0.5, rel=1e-2)


def test_init_values_are_unconstrained_without_running_the_model_again():
    """init= on a NumPyro model: a compiled run maps the values (the likelihood dead code); a
    second call runs the model's Python zero times (it ran the whole model eagerly on all the
    rows at every call before), with the same draws; a value outside its support is refused."""
    import numpyro
    import numpyro.distributions as dist

    calls = {"n": 0}

    def model(X, y=None):
        calls["n"] += 1
        w = numpyro.sample("w", dist.Normal(0, 1).expand([3]).to_event(1))
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ w, s), obs=y)

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -1.0, 0.5]) + 0.3 * rng.normal(size=500)).astype(np.float32)
    kw = dict(data={"X": X, "y": y}, batch_size=50, num_samples=50, init={"w": np.zeros(3), "s": 1.0},
              progress_bar=False, checks="off")
    a = hb.sample(model, hb.samplers.sgld(1e-4), **kw, num_warmup=0)
    calls["n"] = 0
    b = hb.sample(model, hb.samplers.sgld(1e-4), **kw, num_warmup=0)
    assert calls["n"] == 0
    np.testing.assert_array_equal(a.samples["w"], b.samples["w"])
    np.testing.assert_allclose(a.samples["s"][0, 0], 1.0, atol=0.05)
    with pytest.raises(ValueError, match="outside its support"):
        hb.sample(model, hb.samplers.sgld(1e-4), **{**kw, "init": {"w": np.zeros(3), "s": -1.0}}, num_warmup=0)


def test_init_values_on_a_model_that_needs_concrete_data_fall_back_to_the_eager_run():
    """A model whose Python reads data values (np.max of a group index) cannot be traced with the
    data as arguments: the target's unconstrain falls back to the eager run, with the right values;
    a value outside its support is refused."""
    import numpyro
    import numpyro.distributions as dist

    def model(g, y=None):
        groups = int(np.max(np.asarray(g))) + 1
        a = numpyro.sample("a", dist.Normal(0, 1).expand([groups]).to_event(1))
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        with numpyro.plate("data", g.shape[0]):
            numpyro.sample("y", dist.Normal(a[g], s), obs=y)

    rng = np.random.default_rng(1)
    g = rng.integers(0, 4, size=300)
    y = (np.arange(4)[g] + 0.5 * rng.normal(size=300)).astype(np.float32)
    t = hb.models.from_numpyro(model, g, y)
    for _ in range(2):  # the second call goes straight to the eager run
        u = t.unconstrain({"a": np.arange(4.0), "s": 0.5})
        np.testing.assert_allclose(u["a"], np.arange(4.0))
        np.testing.assert_allclose(u["s"], np.log(0.5), rtol=1e-6)
    with pytest.raises(ValueError, match="invalid scale|site 's' is outside its support"):
        t.unconstrain({"a": np.zeros(4), "s": -1.0})  # eagerly the model's own check fires first
