"""Predictive checks and model comparison (issue 18): ``Result.get_samples`` for NumPyro's
``Predictive``, ``Result.predictive``, pointwise log-likelihoods and the ``log_likelihood``
group of ``Result.to_arviz`` that ``arviz.loo`` / ``arviz.waic`` read."""

import time

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import Predictive

import heatbath as hb
from heatbath.diagnostics import loglik as _loglik
from heatbath.drivers.results import Result

RNG = np.random.default_rng(0)
N = 60
X = RNG.normal(size=(N, 3)).astype(np.float32)
Y = (RNG.random(N) < 1 / (1 + np.exp(-X @ np.array([1.0, -1.0, 0.5])))).astype(np.float32)


def logistic(X, y=None):
    w = numpyro.sample("w", dist.Normal(0, 1).expand([3]).to_event(1))
    s = numpyro.sample("s", dist.LogNormal(0.0, 0.3))  # a constrained site
    numpyro.deterministic("ws", w * s)
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=(X @ w) * s), obs=y)


def _direct(samples):
    """log p(y_i | w, s) per draw and row, in NumPy float64."""
    lin = np.einsum("nd,cgd->cgn", X.astype(np.float64), samples["w"]) * samples["s"][..., None]
    return Y * lin - np.logaddexp(0, lin)


def _hand_built(target, samples, **kw):
    """A Result holding ``samples`` (chain, draw, ...) of ``target``, without sampling."""
    chains, draws = np.shape(next(iter(samples.values())))[:2]
    return Result(samples=samples, stats={"diverging": np.zeros((chains, draws), bool)}, final_state=None,
                  grad_evals=0.0, num_data=target.num_data, wall_time=0.0, compile_time=0.0, sampler_name="sgld",
                  observed_data=target.observed_data, target=target, on_divergence="stop", **kw)


@pytest.fixture(scope="module")
def run():
    """Draws of the logistic model (around its posterior; the log-likelihood needs no more)."""
    rng = np.random.default_rng(1)
    w = (np.array([1.0, -1.0, 0.5]) + 0.3 * rng.normal(size=(2, 300, 3))).astype(np.float32)
    s = np.exp(0.3 * rng.normal(size=(2, 300))).astype(np.float32)
    return _hand_built(hb.models.from_numpyro(logistic, X, Y), {"w": w, "s": s, "ws": w * s[..., None]})


def _with_model(result):
    """The same draws, with a target that keeps its NumPyro model (as ``model_call`` reads it)."""
    import dataclasses

    target = dataclasses.replace(result.target)
    target.memo("numpyro_model", lambda: (logistic, (X, Y), {}))
    return dataclasses.replace(result, target=target)


def test_log_likelihood_equals_the_direct_per_row_computation(run):
    direct = _direct(run.samples)
    ll = run.log_likelihood()  # the target's route: per-row terms at the unconstrained draws
    assert list(ll) == ["y"] and ll["y"].shape == (2, 300, N)
    np.testing.assert_allclose(ll["y"], direct, rtol=1e-5, atol=1e-5)
    by_model = _with_model(run).log_likelihood()  # numpyro.infer.log_likelihood on the model
    assert list(by_model) == ["y"]
    np.testing.assert_allclose(by_model["y"], direct, rtol=1e-5, atol=1e-5)
    # Chunked (7 draws per compiled chunk, the last padded) equals unchunked.
    np.testing.assert_allclose(run.log_likelihood(chunk_size=7)["y"], ll["y"], rtol=1e-6, atol=1e-6)
    # The ArviZ group, and LOO / WAIC on it, equal those of the direct matrix.
    idata = run.to_arviz()
    assert idata.log_likelihood["y"].shape == (2, 300, N)
    ref = az.from_dict(posterior={"w": run.samples["w"]}, log_likelihood={"y": direct})
    assert az.loo(idata).elpd_loo == pytest.approx(az.loo(ref).elpd_loo, abs=1e-3)
    assert az.waic(idata).elpd_waic == pytest.approx(az.waic(ref).elpd_waic, abs=1e-3)
    assert "log_likelihood" not in run.to_arviz(log_likelihood=False).groups()


def test_from_logdensity_target_gets_one_loglik_variable():
    data = {"X": X, "y": Y}

    def loglik(p, b):
        return jnp.sum(dist.Bernoulli(logits=b["X"] @ p["w"]).log_prob(b["y"]))

    t = hb.models.from_logdensity(lambda p: jnp.sum(dist.Normal(0, 1).log_prob(p["w"])), loglik, data,
                                  params={"w": jnp.zeros(3)})
    rng = np.random.default_rng(2)
    r = _hand_built(t, {"w": rng.normal(size=(2, 100, 3)).astype(np.float32)})
    idata = r.to_arviz()
    ll = idata.log_likelihood["loglik"].values
    lin = np.einsum("nd,cgd->cgn", X, r.samples["w"])
    np.testing.assert_allclose(ll, Y * lin - np.logaddexp(0, lin), rtol=1e-5, atol=1e-5)
    assert np.isfinite(az.waic(idata).elpd_waic)
    # A bare-array parameter (its draws are named "theta"), with and without recorded unconstrained draws.
    t2 = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2), lambda p, b: jnp.sum(b["X"] @ p * 0.1), data,
                                   params=jnp.zeros(3))
    theta = rng.normal(size=(1, 50, 3)).astype(np.float32)
    expect = 0.1 * np.einsum("nd,cgd->cgn", X, theta)
    r2 = _hand_built(t2, {"theta": theta}, unconstrained=theta)
    np.testing.assert_allclose(r2.log_likelihood()["loglik"], expect, rtol=1e-5, atol=1e-5)
    r2.unconstrained = None
    np.testing.assert_allclose(r2.log_likelihood()["loglik"], expect, rtol=1e-5, atol=1e-5)
    # A constrain without an inverse: the draws cannot be mapped back, and the error says what to do.
    t3 = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2), lambda p, b: jnp.sum(b["X"] @ p * 0.1), data,
                                   params=jnp.zeros(3), constrain=lambda p: {"theta": jnp.exp(p)})
    r3 = _hand_built(t3, {"theta": np.exp(theta)})
    with pytest.raises(ValueError, match="record_unconstrained=True"):
        r3.log_likelihood()
    r3.unconstrained = theta
    np.testing.assert_allclose(r3.log_likelihood()["loglik"], expect, rtol=1e-5, atol=1e-5)


def test_log_likelihood_unavailable_or_too_big_is_said():
    ref = hb.models.reference("eight_schools_noncentered")  # full-batch only (latents in the data plate)
    target = hb.models.from_numpyro(ref.model, **ref.data)
    rng = np.random.default_rng(4)
    draws = {"mu": rng.normal(size=(1, 20)), "tau": np.exp(rng.normal(size=(1, 20))),
             "theta_trans": rng.normal(size=(1, 20, 8))}
    # The bridge keeps the NumPyro model: numpyro.infer.log_likelihood serves full-batch models too.
    assert "log_likelihood" in _hand_built(target, draws).to_arviz().groups()
    # A target without its model (the memo dropped) has no row-wise likelihood to offer: said so.
    target.__dict__["_heatbath_cache"].pop("numpyro_model", None)
    r = _hand_built(target, draws)
    with pytest.warns(RuntimeWarning, match="no log_likelihood group.*full-batch only") as rec:
        idata = r.to_arviz()
    assert rec[0].filename == __file__
    assert "log_likelihood" not in idata.groups()
    with pytest.raises(ValueError, match="full-batch only"):
        r.to_arviz(log_likelihood=True)


def test_too_many_values_are_skipped_unless_asked(run, monkeypatch):
    monkeypatch.setattr(_loglik, "MAX_VALUES", 1000)
    with pytest.warns(RuntimeWarning, match=r"would hold 3\.6e\+04 values"):
        assert "log_likelihood" not in run.to_arviz().groups()
    assert "log_likelihood" in run.to_arviz(log_likelihood=True).groups()


def test_get_samples_feeds_numpyro_predictive(run):
    flat = run.get_samples()
    assert flat["w"].shape == (600, 3) and flat["s"].shape == (600,) and flat["ws"].shape == (600, 3)
    np.testing.assert_array_equal(flat["w"], run.samples["w"].reshape(600, 3))
    assert run.get_samples(group_by_chain=True)["w"].shape == (2, 300, 3)
    pred = Predictive(logistic, flat)(jax.random.key(0), X)
    assert pred["y"].shape == (600, N)
    # result.predictive(model, *args) is that call, regrouped by chain.
    mine = run.predictive(logistic, X, seed=0)
    np.testing.assert_array_equal(mine["y"].reshape(600, N), np.asarray(pred["y"]))
    # The bridge keeps the model, so predictive() with no model predicts the observed sites too.
    assert run.predictive(seed=0)["y"].shape == (2, 300, N)
    # With the model kept, predictive() predicts the observed sites (not echoes them) and
    # to_arviz(posterior_predictive=True) stores them.
    kept = _with_model(run)
    own = kept.predictive(seed=3)
    assert list(own) == ["y"] and own["y"].shape == (2, 300, N)
    assert not np.array_equal(own["y"][0, 0], Y)
    idata = kept.to_arviz(posterior_predictive=True, seed=3)
    np.testing.assert_array_equal(idata.posterior_predictive["y"].values, own["y"])


def test_a_run_gives_samples_for_predictive_and_loo():
    # y_i ~ N(mu, 1), mu ~ N(0, 10^2): mu | y ~ N(m, v) with v = 1 / (n + 1/100), m = v sum(y);
    # the posterior predictive of a new y is N(m, 1 + v).
    rng = np.random.default_rng(3)
    y = (1.5 + rng.normal(size=40)).astype(np.float32)

    def model(y=None, n=40):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        with numpyro.plate("data", n):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    r = hb.sample(model, hb.samplers.sgld(5e-3), data={"y": y}, num_samples=2000, num_warmup=200, num_chains=2,
                  thinning=2, seed=0, progress_bar=False)
    v = 1 / (40 + 1 / 100)
    m = v * float(y.sum())
    samples = r.get_samples()
    assert samples["mu"].shape == (4000,)
    pred = Predictive(model, samples)(jax.random.key(1), None)["y"]
    assert pred.shape == (4000, 40)
    assert float(pred.mean()) == pytest.approx(m, abs=0.05)  # MC error ~0.01
    assert float(pred.std()) == pytest.approx(np.sqrt(1 + v), rel=0.03)
    # hb.sample's Result knows its target: the log-likelihood group is there, row by row.
    idata = r.to_arviz()
    mu = r.samples["mu"][..., None].astype(np.float64)
    direct = -0.5 * (y - mu) ** 2 - 0.5 * np.log(2 * np.pi)
    np.testing.assert_allclose(idata.log_likelihood["y"].values, direct, rtol=1e-5, atol=1e-5)
    # The exact LOO: without row i, mu ~ N(m_i, v_i) and y_i's predictive is N(m_i, 1 + v_i).
    v_i = 1 / (1 / 100 + 39)
    m_i = v_i * (float(y.sum()) - y)
    exact = np.sum(-0.5 * (y - m_i) ** 2 / (1 + v_i) - 0.5 * np.log(2 * np.pi * (1 + v_i)))
    loo = az.loo(idata)
    assert loo.elpd_loo == pytest.approx(exact, abs=0.5)  # measured -65.05 vs -64.88 (se 7.7)


def test_moments_runs_and_chain_exclusion_apply_to_predictive(run):
    import dataclasses

    mom = dataclasses.replace(run, samples={})
    with pytest.raises(ValueError, match="keep='moments'"):
        mom.get_samples()
    with pytest.raises(ValueError, match="keep='moments'"):
        mom.log_likelihood()
    bad = dataclasses.replace(run, stats={**run.stats, "diverging": run.stats["diverging"].copy()})
    bad.stats["diverging"][1, -1] = True
    with pytest.warns(RuntimeWarning, match=r"chains \[1\] \(1 of 2\)"):
        assert bad.log_likelihood()["y"].shape == (1, 300, N)
    with pytest.warns(RuntimeWarning, match=r"chains \[1\] \(1 of 2\)"):
        assert bad.predictive(logistic, X)["y"].shape == (1, 300, N)


@pytest.mark.slow
def test_german_credit_loo_matches_nuts():
    """elpd_loo of SGLD-CV (the accuracy bars' settings, 4 x 30,000 steps thinned to 4 x 1000 draws)
    equals NumPyro NUTS's within the reported standard error."""
    from numpyro.infer import MCMC, NUTS

    ref = hb.models.reference("german_credit")
    t0 = time.perf_counter()
    r = hb.sample(ref.model, hb.samplers.sgld(4e-4, gradient="cv"), data=ref.data, batch_size=100, num_samples=1000,
                  thinning=30, num_warmup=3000, num_chains=4, seed=0, progress_bar=False)
    assert ref.compare(r.samples)["max_abs_z"] <= 0.15
    ours = az.loo(r.to_arviz(), pointwise=True)
    t1 = time.perf_counter()
    mcmc = MCMC(NUTS(ref.model), num_warmup=500, num_samples=1000, num_chains=4, chain_method="vectorized",
                progress_bar=False)
    mcmc.run(jax.random.key(1), **ref.data)
    nuts = az.loo(az.from_numpyro(mcmc), pointwise=True)
    t2 = time.perf_counter()
    diff = float(ours.elpd_loo - nuts.elpd_loo)
    paired_se = float(np.std(ours.loo_i.values - nuts.loo_i.values) * np.sqrt(ref.num_data))
    print(f"SGLD-CV elpd_loo {ours.elpd_loo:.2f} (se {ours.se:.2f}, p_loo {ours.p_loo:.2f}, {t1 - t0:.1f}s); "
          f"NUTS {nuts.elpd_loo:.2f} (se {nuts.se:.2f}, p_loo {nuts.p_loo:.2f}, {t2 - t1:.1f}s); "
          f"difference {diff:.2f}, paired se {paired_se:.2f}")
    assert abs(diff) < min(ours.se, nuts.se)
    assert (ours.pareto_k.values < 0.7).all()
