"""Issue 18: the automatic Laplace metric, the dense-Newton finish of a stalled mode search, and the
default choice between naive minibatch gradients and control variates."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb
from heatbath.drivers import autotune, metric

# A correlated Gaussian with condition number 1e3: Sigma = R diag(1 / PREC) R'.
PREC = np.array([1.0, 30.0, 1000.0])
_R = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
P = (_R * PREC) @ _R.T
SIGMA = np.linalg.inv(P)
MEAN = np.array([1.0, -2.0, 0.5])


def correlated_gaussian():
    X = np.zeros((100, 1), np.float32)

    def logprior(p):
        d = p["x"] - jnp.asarray(MEAN, jnp.float32)
        return -0.5 * d @ jnp.asarray(P, jnp.float32) @ d

    def loglik(p, batch):
        return 0.0 * jnp.sum(batch) * jnp.sum(p["x"])

    return hb.models.from_logdensity(logprior, loglik, X, params={"x": jnp.zeros(3)})


def test_whitened_target_is_the_same_density_and_round_trips():
    t = correlated_gaussian()
    L = np.linalg.cholesky(SIGMA)
    _, unravel = jax.flatten_util.ravel_pytree({"x": jnp.zeros(3)})
    aff = metric.Affine(mu=MEAN, L=L, L_inv=np.linalg.inv(L), unravel=unravel)
    w = metric.whiten(t, aff)
    z = {"x": jnp.array([0.3, -1.2, 2.0])}
    theta = aff.forward(z)
    np.testing.assert_allclose(theta["x"], MEAN + L @ np.asarray(z["x"]), rtol=1e-6)
    assert float(w.logdensity(z)) == pytest.approx(float(t.logdensity(theta)), rel=1e-6)
    np.testing.assert_allclose(aff.inverse(theta)["x"], z["x"], atol=1e-5)
    np.testing.assert_allclose(w.constrain(z)["x"], t.constrain(theta)["x"])
    # In z the Gaussian is standard: log p(z) = -|z|^2 / 2 + const.
    z0 = {"x": jnp.zeros(3)}
    assert float(w.logdensity(z) - w.logdensity(z0)) == pytest.approx(-0.5 * float(jnp.sum(z["x"] ** 2)), rel=1e-4)


def test_laplace_metric_rounds_a_correlated_gaussian():
    t = correlated_gaussian()
    res = hb.sample(t, hb.samplers.sgld(), num_samples=3000, num_chains=2, seed=0, progress_bar=False,
                    checks="off", record_unconstrained=True)
    m = res.tuning["metric"]
    assert m["kind"] == "dense" and m["chains"] == [0, 1]
    assert m["condition_number"] == pytest.approx(PREC.max() / PREC.min(), rel=1e-2)
    # In z the Hessian is I: h = 2 EPS / 1, where the identity metric gives 2 EPS / lambda_max.
    assert res.tuning["step_size"] == pytest.approx(2 * autotune.EPS, rel=0.02)
    x = np.asarray(res.samples["x"], np.float64).reshape(-1, 3)
    # Exact-gradient SGLD in z: every variance inflated by 1 / (1 - h / 2).
    h = res.tuning["step_size"]
    want = SIGMA / (1.0 - h / 2.0)
    scale = np.sqrt(np.outer(np.diag(want), np.diag(want)))
    np.testing.assert_allclose(np.cov(x.T) / scale, want / scale, atol=0.1)
    # 6000 draws, a few steps per independent draw in z: 4 standard errors of ~1,000 draws.
    assert np.all(np.abs(x.mean(0) - MEAN) < 4 * np.sqrt(np.diag(want) / 1000))
    # Result.unconstrained is on the target's scale, not the run's.
    np.testing.assert_allclose(np.asarray(res.unconstrained["x"]), np.asarray(res.samples["x"]), rtol=1e-5, atol=1e-5)

    off = hb.sample(t, hb.samplers.sgld(), num_samples=50, num_chains=2, seed=0, progress_bar=False, checks="off",
                    metric="identity")
    assert "metric" not in off.tuning
    assert off.tuning["step_size"] == pytest.approx(2 * autotune.EPS / PREC.max(), rel=0.02)


def test_a_step_size_given_runs_in_the_targets_coordinates():
    t = correlated_gaussian()
    res = hb.sample(t, hb.samplers.sgld(1e-4), num_samples=20, progress_bar=False, checks="off")
    assert res.tuning is None or "metric" not in res.tuning
    with pytest.raises(ValueError, match="metric"):
        hb.sample(t, hb.samplers.sgld(), num_samples=20, progress_bar=False, metric="dense")


def test_newton_finishes_an_ill_conditioned_mode_from_far_away():
    # Condition number 1e8: the mode at MEAN2, reached from a start 1e3 sds away in the soft direction.
    prec = np.array([1e-4, 1.0, 1e4])
    mean = np.array([300.0, -2.0, 0.01])

    def logprior(p):
        return -0.5 * jnp.sum(jnp.asarray(prec) * (p - jnp.asarray(mean)) ** 2)

    def loglik(p, batch):
        return 0.0 * jnp.sum(batch) * jnp.sum(p)

    t = hb.models.from_logdensity(logprior, loglik, np.zeros((10, 1), np.float32), params=jnp.zeros(3))
    starts = jnp.array([[0.0, 0.0, 0.0], [-5.0, 3.0, 1.0]], jnp.float32)
    found, conv, info = metric.newton(t, starts, np.array([False, True]), jax.random.key(0))
    assert conv.tolist() == [True, True] and info["tried"] == [0] and info["converged"] == [0]
    np.testing.assert_allclose(np.asarray(found[0]), mean, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(found[1]), np.asarray(starts[1]))  # converged chains are left alone


@functools.lru_cache(maxsize=None)  # one target per size: its compiled programs are shared by the tests
def _regression_target(N=2000):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(N, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -0.5, 0.25]) + 0.5 * rng.normal(size=N)).astype(np.float32)
    data = np.c_[X, y].astype(np.float32)

    def logprior(p):
        return -0.5 * jnp.sum(p ** 2) / 25.0

    def loglik(p, batch):
        r = batch[:, 3] - batch[:, :3] @ p
        return jnp.sum(-0.5 * r ** 2 / 0.25)

    return hb.models.from_logdensity(logprior, loglik, data, params=jnp.zeros(3)), X, y


def test_default_estimator_is_control_variates_where_they_pay_and_naive_when_asked():
    t, X, y = _regression_target()
    res = hb.sample(t, hb.samplers.sgld(), batch_size=200, num_samples=300, num_chains=2, seed=0,
                    progress_bar=False, checks="off")
    g = res.tuning["gradient"]
    # Near the mode the naive noise is (N/n) H = 10 H against ~0: control variates win by far.
    assert g["chosen"] == "control_variates" and g["ratio"] > 2.5 * 2
    assert res.sampler_name == "sgld-control_variates"
    # The posterior (conjugate Gaussian) and the draws agree.
    prec = X.T.astype(np.float64) @ X / 0.25 + np.eye(3) / 25.0
    mean = np.linalg.solve(prec, X.T.astype(np.float64) @ y / 0.25)
    x = np.asarray(res.samples["theta"], np.float64).reshape(-1, 3)
    sd = np.sqrt(np.diag(np.linalg.inv(prec)))
    assert np.max(np.abs(x.mean(0) - mean) / sd) < 0.3
    # An explicit naive estimator is kept; full batches need no choice.
    naive = hb.sample(t, hb.samplers.sgld(gradient="naive"), batch_size=200, num_samples=20, num_chains=2,
                      progress_bar=False, checks="off")
    assert "gradient" not in naive.tuning and naive.sampler_name == "sgld"
    full = hb.sample(t, hb.samplers.sghmc(), num_samples=20, num_chains=2, progress_bar=False, checks="off")
    assert "gradient" not in full.tuning and full.tuning["metric"]["kind"] == "dense"


def test_metric_and_estimator_choice_resume_to_the_same_draws(tmp_path):
    t, _, _ = _regression_target(1000)
    kw = dict(batch_size=100, num_samples=60, num_chains=2, seed=3, progress_bar=False, checks="off")
    a = hb.sample(t, hb.samplers.psgld(), checkpoint=tmp_path / "ck", **kw)
    b = hb.sample(t, hb.samplers.psgld(), checkpoint=tmp_path / "ck", resume=True, **kw)
    np.testing.assert_array_equal(a.samples["theta"], b.samples["theta"])
    assert a.tuning["metric"]["kind"] == "dense"


def test_no_metric_above_the_dense_limit_or_without_a_converged_mode():
    flat = jnp.zeros((2, metric.DENSE_MAX + 1))
    t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p ** 2), lambda p, b: 0.0 * jnp.sum(b) * p[0],
                                  np.zeros((4, 1), np.float32), params=jnp.zeros(metric.DENSE_MAX + 1))
    aff, info = metric.laplace(t, flat, np.array([True, True]), jax.random.key(0))
    assert aff is None and "dimensions" in info["reason"]
    t2 = correlated_gaussian()
    aff, info = metric.laplace(t2, {"x": jnp.zeros((2, 3))}, np.array([False, False]), jax.random.key(0))
    assert aff is None and "converged" in info["reason"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        metric.laplace(t2, {"x": jnp.zeros((2, 3))}, np.array([True, False]), jax.random.key(0))


def test_resume_with_another_metric_is_refused_and_the_centre_is_on_the_models_scale(tmp_path):
    t, X, y = _regression_target(1000)
    kw = dict(batch_size=100, num_samples=30, num_chains=2, seed=3, progress_bar=False, checks="off")
    a = hb.sample(t, hb.samplers.sgld(), checkpoint=tmp_path / "ck", **kw)
    assert a.tuning["gradient"]["chosen"] == "control_variates"
    # Result.centre is the MAP in theta (the run's z is not the model's scale).
    prec = X.T.astype(np.float64) @ X / 0.25 + np.eye(3) / 25.0
    mode = np.linalg.solve(prec, X.T.astype(np.float64) @ y / 0.25)
    np.testing.assert_allclose(np.asarray(a.centre), mode, atol=1e-3)
    with pytest.raises(ValueError, match="coordinates"):
        hb.sample(t, hb.samplers.sgld(), checkpoint=tmp_path / "ck", resume=True, metric="identity", **kw)
    # A centre given in theta is used in theta.
    b = hb.sample(t, hb.samplers.sgld(gradient=hb.kernels.gradients.control_variates(centre=jnp.asarray(mode))),
                  **kw)
    np.testing.assert_allclose(np.asarray(b.centre), mode, rtol=1e-6, atol=1e-6)
    assert "metric" in b.tuning


def test_the_whitened_target_is_reused_for_the_same_metric():
    t = correlated_gaussian()
    L = np.linalg.cholesky(SIGMA)
    _, unravel = jax.flatten_util.ravel_pytree({"x": jnp.zeros(3)})
    aff = metric.Affine(mu=MEAN, L=L, L_inv=np.linalg.inv(L), unravel=unravel)
    other = metric.Affine(mu=MEAN + 1.0, L=L, L_inv=np.linalg.inv(L), unravel=unravel)
    assert metric.whiten(t, aff) is metric.whiten(t, aff)
    assert metric.whiten(t, other) is not metric.whiten(t, aff)


@pytest.mark.slow  # 67 s on 2 cores (a NumPyro GLM, 4 chains, defaults); run with -m slow
def test_starts_that_overflow_fall_back_and_the_run_is_finite():
    """Unscaled covariates (sd 10) under a log link: a uniform(-2, 2) start overflows the mode
    search (log density -3e19, gradient not finite). Such a chain is not a usable mode: it falls
    back to the prior median and is finished by Newton, instead of a NaN step size."""
    import numpyro
    import numpyro.distributions as dist

    def gamma_glm(X, y):
        beta = numpyro.sample("beta", dist.Normal(0, 1).expand([X.shape[1]]).to_event(1))
        shape = numpyro.sample("shape", dist.Gamma(2.0, 0.5))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Gamma(shape, shape / jnp.exp(X @ beta)), obs=y)

    rng = np.random.default_rng(7)
    X = (rng.normal(size=(300, 3)) * np.array([1.0, 3.0, 10.0])).astype(np.float32)
    y = rng.gamma(3.0, np.exp(X @ np.array([0.2, -0.1, 0.02])) / 3.0).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = hb.sample(gamma_glm, hb.samplers.sgld(), data=dict(X=X, y=y), num_samples=100, num_chains=4, seed=0,
                        progress_bar=False, checks="off")
    assert np.isfinite(res.tuning["step_size"]) and all(res.tuning["init"]["converged"])
    assert np.all(np.isfinite(res.samples["beta"])) and not res.diverged_chains()


def test_a_non_finite_curvature_is_a_clear_error():
    with pytest.raises(FloatingPointError, match=r"not finite for chain\(s\) \[1\]"):
        autotune._check_measured({"lam_hv": np.array([1.0, np.nan]), "lam_h": np.array([1.0, np.nan])}, "here", 2)
    # Measured at 8 points per chain (draw-major): points 22 and 26 of 4 chains are chain 2's
    # (the message said "chain(s) [22, 26]" of a 4-chain run).
    lam = np.ones(32)
    lam[[22, 26]] = np.inf
    with pytest.raises(FloatingPointError, match=r"not finite for chain\(s\) \[2\] "):
        autotune._check_measured({"lam_hv": lam, "lam_h": np.ones(32)}, "in the first half of the warmup", 4)


def test_the_first_half_leaves_out_points_with_a_non_finite_curvature_and_says_so():
    """A chain thrown far into a tail (a zero-inflated Poisson whose gate sits near 0) reached
    points where float32 second derivatives overflow: the step size is chosen from the other
    points, with a warning naming the chain (it raised); with no finite point it still raises."""
    lam = np.arange(1.0, 33.0)
    lam[[22, 26]] = np.nan
    m = {"lam_hv": lam, "lam_h": np.ones(32), "lam_v": np.ones(32), "lam_min": np.ones(32)}
    with pytest.warns(RuntimeWarning, match=r"not finite at 2 of 32 measurement points .* chain\(s\) \[2\]"):
        used = autotune._finite_points(m, 4)
    assert used["lam_hv"].size == 30 and np.max(used["lam_hv"]) == 32.0 and used["lam_v"].size == 30
    assert autotune._finite_points({k: np.ones(8) for k in m}, 4)["lam_hv"].size == 8
    with pytest.raises(FloatingPointError, match="not finite"):
        autotune._finite_points({k: np.full(8, np.nan) for k in m}, 4)


def _stalled_search(end):
    """A mode search that stops at ``end`` (flat) for every chain and says it found no mode."""
    def search(target, positions, keys, batch_size=None, **kw):
        n = jax.tree.leaves(positions)[0].shape[0]
        x = jnp.tile(jnp.asarray(end, jnp.float32), (n, 1))
        outcome = {"converged": np.zeros(n, bool), "usable": np.zeros(n, bool), "decrement": np.full(n, 0.5),
                   "grad_norm": np.ones(n), "lp": np.zeros(n), "steps": np.full(n, 500), "cost": np.full(n, 1e3),
                   "negative_curvature": np.zeros(n, bool), "reason": ["no mode found: still rising"] * n,
                   "method": ["lbfgs"] * n}
        return x, outcome, {}
    return search


def test_a_stalled_mode_search_is_finished_by_newton_from_where_it_ended_without_a_false_warning(monkeypatch):
    """The search stops 0.3 away from the mode and says it found none (as L-BFGS in float32 did on
    the diamonds regression, condition number 3e5). Newton finishes it from there: the chains
    start at the mode, in one or two iterations, and no warning claims they start elsewhere.
    Without the metric (no Newton) the warning stands."""
    from heatbath.drivers import mapsearch

    monkeypatch.setattr(mapsearch, "search", _stalled_search(MEAN + 0.3))
    starts = []
    real_newton = metric.newton

    def spy(target, positions, converged, key):
        starts.append(np.asarray(positions["x"]))
        return real_newton(target, positions, converged, key)

    monkeypatch.setattr(metric, "newton", spy)
    t = correlated_gaussian()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = hb.sample(t, hb.samplers.sgld(), num_samples=20, num_warmup=20, num_chains=2, progress_bar=False,
                        checks="off", keep="moments")
    assert not [w for w in caught if "mode search failed" in str(w.message)]
    init = res.tuning["init"]
    assert init["converged"] == [True, True] and init["usable"] == [True, True] and init["reason"] == ["", ""]
    assert init["newton"]["from"] == "the search's end" and init["newton"]["converged"] == [0, 1]
    assert len(starts) == 1  # rescued from the search's end: no second try from the fallback start
    np.testing.assert_allclose(starts[0], np.tile(MEAN + 0.3, (2, 1)), rtol=1e-6)
    with pytest.warns(RuntimeWarning, match=r"mode search failed for chain\(s\) \[0, 1\]"):
        hb.sample(t, hb.samplers.sgld(), num_samples=20, num_warmup=20, num_chains=2, progress_bar=False,
                  checks="off", keep="moments", metric="identity")


def test_rescue_tries_the_fallback_start_for_a_chain_with_no_mode_where_its_search_ended():
    """initialize._rescue: chain 0 (no mode found) is not rescued from its search's end but is from
    the fallback start; chain 1 (usable, unconverged) keeps Newton's steps though it did not
    converge; chain 2 (converged) is not tried; chain 3 (no mode, non-finite end) starts from the
    fallback and is not rescued."""
    from heatbath.drivers import initialize

    ends = jnp.array([[5.0], [1.0], [2.0], [np.nan]])
    fallback = jnp.array([[-1.0], [-1.0], [-1.0], [-1.0]])
    calls = []

    def rescue(p, converged):
        calls.append((np.asarray(p).ravel().tolist(), np.asarray(converged).tolist()))
        todo = ~np.asarray(converged)
        moved = np.asarray(p).copy()
        conv = np.asarray(converged).copy()
        for c in np.nonzero(todo)[0]:
            moved[c] += 0.5  # "a step up"
            conv[c] = (len(calls) == 2 and c == 0)  # only chain 0, from the fallback
        return jnp.asarray(moved), conv, {"tried": np.nonzero(todo)[0].tolist(), "converged": [],
                                          "iterations": {}, "cost_per_chain": 1.0}

    info = {}
    ok, usable = np.array([False, False, True, False]), np.array([False, True, True, False])
    points, conv = initialize._rescue(rescue, ends, fallback, ok, usable, info)
    assert calls[0] == ([5.0, 1.0, 2.0, -1.0], [False, False, True, False])
    assert calls[1] == ([-1.0, -1.0, -1.0, -1.0], [False, True, True, True])  # chain 0 only: 3's end was not finite
    assert conv.tolist() == [True, False, True, False]
    got = np.asarray(points).ravel()
    assert got[0] == -0.5 and got[1] == 1.5 and got[2] == 2.0 and np.isnan(got[3])
    assert info["newton"]["converged"] == [0] and info["newton"]["tried"] == [0, 1, 3]
    assert info["newton"]["from"] == ("the search's end where finite, else the fallback start, "
                                      "then the fallback start")


def test_sghmc_friction_floor_is_capped_only_in_the_metric_coordinates(monkeypatch):
    """The softest curvature's cap (1 / M, the curvature of a unit-scale direction) is passed to
    the friction's choice in the metric's coordinates and not in the model's."""
    caps = []
    real_choose = autotune.choose

    def spy(family, m, T, symmetric=True, friction_given=None, cap=None):
        caps.append(cap)
        return real_choose(family, m, T, symmetric, friction_given, cap)

    monkeypatch.setattr(autotune, "choose", spy)
    t = correlated_gaussian()
    for metric_mode, expected in (("auto", 0.5), ("identity", None)):
        caps.clear()
        hb.sample(t, hb.samplers.sghmc(mass=2.0), num_samples=20, num_warmup=20, num_chains=2, progress_bar=False,
                  checks="off", keep="moments", metric=metric_mode)
        assert caps and all(c == expected for c in caps), (metric_mode, caps)
