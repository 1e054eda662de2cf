"""Issue 18: automatic step size and friction, init strategies, the end-of-run self-diagnosis."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import heatbath as hb
from heatbath.drivers import autotune
from heatbath.kernels import curvature

# -- the measurement kernels -----------------------------------------------------------------


def test_power_iteration_and_bottom_eigenvalue_match_numpy():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    lam = np.array([9.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    A = jnp.asarray((Q * lam) @ Q.T, jnp.float32)
    top, vec = curvature.power_iteration(lambda v: A @ v, jnp.ones(6), 60)
    assert float(top) == pytest.approx(9.0, rel=1e-4)
    assert abs(float(jnp.dot(vec, Q[:, 0]))) == pytest.approx(1.0, abs=1e-3)
    bottom, _ = curvature.bottom_eigenvalue(lambda v: A @ v, top, jnp.ones(6), 400)
    assert float(bottom) == pytest.approx(0.25, abs=0.02)


def test_noise_matvec_is_the_sample_covariance():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(12, 5)) * np.array([1.0, 2.0, 3.0, 0.5, 1.0])
    x = rng.normal(size=5)
    want = np.cov(g, rowvar=False) @ x
    got = curvature.noise_matvec({"a": jnp.asarray(g[:, :2]), "b": jnp.asarray(g[:, 2:])})(
        {"a": jnp.asarray(x[:2]), "b": jnp.asarray(x[2:])})
    np.testing.assert_allclose(np.concatenate([got["a"], got["b"]]), want, rtol=1e-5)


def test_choose_follows_the_stated_formulas():
    m = {"lam_hv": np.array([100.0, 80.0]), "lam_h": np.array([400.0]), "lam_v": np.array([6000.0]),
         "lam_min": np.array([25.0])}
    assert autotune.choose("sgld", m, 1.0)["step_size"] == pytest.approx(2 * autotune.EPS / 100.0)
    c = autotune.choose("sghmc", m, 1.0)
    h = min(np.sqrt(4 * autotune.EPS / 400.0), np.sqrt(2 * autotune.EPS / 6000.0))
    assert c["step_size"] == pytest.approx(h)
    assert c["friction"] == pytest.approx(max(h * 6000.0 / (2 * autotune.EPS), 2 * 5.0))
    quiet = dict(m, lam_v=np.array([0.0]))
    c = autotune.choose("sghmc", quiet, 1.0)
    assert c["step_size"] == pytest.approx(np.sqrt(4 * autotune.EPS / 400.0))
    assert c["friction"] == pytest.approx(10.0)  # critical damping of the softest direction


def test_the_friction_floor_where_the_curvature_is_indefinite():
    """Where lambda_min <= 0 at some measurement point the softest curvature is floored: at
    lambda_max / 100 (C = 0.2 omega_max), and in the metric's coordinates (unit scale) at most at 1
    (C = 2, critical damping of a direction of scale 1)."""
    stiff = {"lam_h": np.array([1000.0, 400.0]), "lam_v": np.array([0.0]), "lam_min": np.array([-0.5, 2.0])}
    assert autotune.choose("sghmc", stiff, 1.0)["friction"] == pytest.approx(2 * np.sqrt(10.0))
    assert autotune.choose("sghmc", stiff, 1.0, cap=1.0)["friction"] == pytest.approx(2.0)
    assert autotune.choose("sghmc", stiff, 1.0, cap=4.0)["friction"] == pytest.approx(4.0)  # mass 1/4
    soft = dict(stiff, lam_h=np.array([50.0]))  # the floor lambda_max / 100 = 0.5 is below 1 anyway
    for cap in (None, 1.0):
        assert autotune.choose("sghmc", soft, 1.0, cap=cap)["friction"] == pytest.approx(2 * np.sqrt(0.5))
    positive = dict(stiff, lam_min=np.array([4.0, 9.0]))  # no floor: the smallest measured value
    assert autotune.choose("sghmc", positive, 1.0, cap=1.0)["friction"] == pytest.approx(4.0)


# -- a Gaussian target whose curvature is known ------------------------------------------------

PREC = np.array([400.0, 100.0, 4.0])  # posterior precisions (N = 200 rows)


def gaussian_target():
    X = np.zeros((200, 1), np.float32)

    def logprior(p):
        return -0.5 * jnp.sum(jnp.asarray(PREC, jnp.float32) * p["x"] ** 2)

    def loglik(p, batch):
        return 0.0 * jnp.sum(batch) * jnp.sum(p["x"])

    return hb.models.from_logdensity(logprior, loglik, X, params={"x": jnp.zeros(3)})


@pytest.mark.slow
def test_automatic_sgld_step_on_a_gaussian_is_the_bound_and_its_bias_is_the_predicted_one():
    t = gaussian_target()
    res = hb.sample(t, hb.samplers.sgld(), num_samples=20_000, num_chains=4, seed=0, progress_bar=False,
                    checks="off", metric="identity")
    h = res.tuning["step_size"]
    assert h == pytest.approx(2 * autotune.EPS / PREC.max(), rel=0.02)
    assert res.tuning["init"]["strategy"] == "map"
    assert np.all(np.asarray(res.stats["step_size"]) == np.float32(h))
    x = np.asarray(res.samples["x"], np.float64).reshape(-1, 3)
    var = x.var(0)
    # Exact-gradient SGLD on N(0, 1/lam): variance 1 / (lam (1 - h lam / 2)).
    want = 1.0 / (PREC * (1 - h * PREC / 2))
    np.testing.assert_allclose(var, want, rtol=0.08)
    assert res.tuning["warmup_steps_tuning"] == autotune.default_num_warmup(20_000) // 2


@pytest.mark.slow
def test_sghmc_friction_dominates_injected_gradient_noise_and_kinetic_temperature_is_right():
    # A noisy Gaussian: each row's gradient carries noise, so minibatches of 10 are noisy.
    rng = np.random.default_rng(3)
    N, d = 500, 2
    Z = rng.normal(size=(N, d)).astype(np.float32)
    Z -= Z.mean(0)

    def logprior(p):
        return -0.5 * jnp.sum(p ** 2)

    def loglik(p, batch):  # sum_i [-0.5 |p|^2 / N * 50 + z_i . p]: mean-zero row noise in the gradient
        return jnp.sum(-0.5 * 50.0 / N * jnp.sum(p ** 2) + batch @ p)

    t = hb.models.from_logdensity(logprior, loglik, Z, params=jnp.zeros(d))
    res = hb.sample(t, hb.samplers.sghmc(), batch_size=50, num_samples=40_000, num_chains=4, seed=1,
                    progress_bar=False, checks="basic")
    tu = res.tuning
    v = max(tu["measured"]["lam_v"])
    assert tu["friction"] >= tu["step_size"] * v / (2 * autotune.EPS) * 0.999
    tk = res.checks["kinetic_temperature"]
    # The friction keeps the excess h v / (2 C) below EPS T; 0.05 of Monte Carlo room.
    assert 0.95 < tk < 1.0 + autotune.EPS + 0.05, tk
    x = np.asarray(res.samples["theta"], np.float64).reshape(-1, d)
    ratio = x.std(0) * np.sqrt(51.0)
    assert np.all((ratio > 0.9) & (ratio < 1.0 + autotune.EPS)), ratio


# -- init strategies -------------------------------------------------------------------------


def regression(x, y):
    a = numpyro.sample("a", dist.Normal(0, 10))
    s = numpyro.sample("s", dist.LogNormal(0, 1))
    numpyro.deterministic("a2", 2 * a)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(a * x, s), obs=y)


@pytest.fixture(scope="module")
def reg_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200).astype(np.float32)
    return {"x": x, "y": (1.5 * x + 0.3 * rng.normal(size=200)).astype(np.float32)}


def test_init_median_map_values_and_optimize_result(reg_data):
    t = hb.models.from_numpyro(regression, **reg_data)
    keys = jax.random.split(jax.random.key(0), 3)
    from heatbath.drivers import initialize

    med, info = initialize.resolve(t, "median", keys, 3, None)
    assert info["strategy"] == "median"
    # The prior median of s ~ LogNormal(0, 1) is 1: log s = 0 up to the 15-draw median's error.
    assert np.all(np.abs(np.asarray(med["s"])) < 0.8)
    mp, info = initialize.resolve(t, "map", keys, 3, None)
    assert all(info["converged"])
    np.testing.assert_allclose(np.asarray(mp["a"]), 1.5, atol=0.05)
    opt = hb.optimize(regression, data=reg_data, num_steps=3000)
    res = hb.sample(regression, hb.samplers.sgld(1e-4), data=reg_data, num_samples=3, init=opt, progress_bar=False, num_warmup=0)
    np.testing.assert_allclose(res.samples["a"][0, 0], opt.values["a"], atol=0.05)
    # A Result's values hold deterministic sites: accepted and ignored as init.
    vals = {k: np.asarray(v)[0, -1] for k, v in res.samples.items()}
    hb.sample(regression, hb.samplers.sgld(1e-4), data=reg_data, num_samples=2, init=vals, progress_bar=False, num_warmup=0)
    # hb.fit takes the same: the OptimizeResult, or its values with the deterministic site a2.
    for init in (opt, dict(opt.values)):
        assert "a2" in opt.values
        with warnings.catch_warnings():  # one step: "did not converge", as it should
            warnings.simplefilter("ignore")
            q = hb.fit(regression, hb.vi.fbgvi(1e-9, 1), data=reg_data, init=init)  # h ~ 0: m stays at the start
        np.testing.assert_allclose(q.mean["a"], opt.values["a"], rtol=1e-5)


def test_init_errors(reg_data):
    with pytest.raises(ValueError, match="unknown init strategy"):
        hb.sample(regression, hb.samplers.sgld(1e-4), data=reg_data, num_samples=2, init="bogus")
    with pytest.raises(ValueError, match="only NumPyro models"):
        hb.sample(gaussian_target(), hb.samplers.sgld(1e-4), num_samples=2, init="median")


def test_automatic_settings_errors(reg_data):
    with pytest.raises(ValueError, match="num_warmup must be >= 2"):
        hb.sample(regression, hb.samplers.sgld(), data=reg_data, num_samples=10, num_warmup=0)
    with pytest.raises(ValueError, match="T > 0"):
        hb.sample(regression, hb.samplers.sgld(temperature=0.0), data=reg_data, num_samples=10)
    with pytest.raises(ValueError, match="chosen automatically"):
        hb.optimize(regression, hb.samplers.sgld(temperature=0.0), data=reg_data, num_steps=10)


# -- the self-diagnosis ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_biased_run_warns_and_a_good_one_does_not():
    t = gaussian_target()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        good = hb.sample(t, hb.samplers.sgld(1e-4), num_samples=20_000, num_warmup=2000, num_chains=4,
                         progress_bar=False, checks="full")
    assert not [w for w in caught if "configurational" in str(w.message) or "predicted" in str(w.message)]
    # 128 points: T_conf is dominated by the stiff direction (weight lambda), a chi^2_1 mean: se ~ 0.125.
    assert abs(good.checks["configurational_temperature"] - 1) < 3 * good.checks["configurational_temperature_se"]
    assert good.checks["predicted_variance_inflation"] == pytest.approx(1e-4 * 400 / 2, rel=0.05)
    with pytest.warns(RuntimeWarning, match="configurational temperature"):
        bad = hb.sample(t, hb.samplers.sgld(4e-3), num_samples=20_000, num_warmup=2000, num_chains=4,
                        progress_bar=False, checks="full")
    # h lam = 1.6 in the stiff direction: variance 1 / (lam (1 - 0.8)) = 5x: T_conf well above 1.
    assert bad.checks["configurational_temperature"] > 1.5
    assert bad.checks["predicted_variance_inflation"] == pytest.approx(4e-3 * 400 / 2, rel=0.05)


def test_chains_in_different_modes_warn_about_rhat():
    def logprior(p):  # two well-separated modes at +-4
        return jnp.logaddexp(-0.5 * jnp.sum((p - 4.0) ** 2) * 25, -0.5 * jnp.sum((p + 4.0) ** 2) * 25)

    def loglik(p, batch):
        return 0.0 * jnp.sum(batch)

    t = hb.models.from_logdensity(logprior, loglik, np.zeros((10, 1), np.float32), params=jnp.zeros(1))
    init = jnp.array([[4.0], [-4.0], [4.0], [-4.0]])
    with pytest.warns(RuntimeWarning, match="R-hat .* the chains disagree"):
        res = hb.sample(t, hb.samplers.sgld(1e-3), num_samples=2000, num_chains=4, init=init, progress_bar=False,
                        checks="basic")
    assert res.checks["rhat_max"] > 1.5


def test_sghmc_with_a_friction_too_low_warns_about_the_kinetic_temperature():
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(500, 2)).astype(np.float32)
    Z -= Z.mean(0)

    def logprior(p):
        return -0.5 * jnp.sum(p ** 2)

    def loglik(p, batch):
        return jnp.sum(-0.05 * jnp.sum(p ** 2) + batch @ p)

    t = hb.models.from_logdensity(logprior, loglik, Z, params=jnp.zeros(2))
    with pytest.warns(RuntimeWarning, match="kinetic temperature"):
        res = hb.sample(t, hb.samplers.sghmc(0.05, 0.5), batch_size=5, num_samples=10_000, num_chains=4,
                        progress_bar=False, checks="basic")
    assert res.checks["kinetic_temperature"] > 1.3


def test_numpyro_kernel_with_automatic_step_size(reg_data):
    from numpyro.infer import MCMC

    kernel = hb.numpyro.SGLD(regression, batch_size=50)
    mcmc = MCMC(kernel, num_warmup=200, num_samples=2000, num_chains=2, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0), **reg_data)
    assert kernel.tuning["step_size"] > 0
    a = np.asarray(mcmc.get_samples()["a"], np.float64)
    assert abs(a.mean() - 1.5) < 0.05


# slow: the CLI reaches the same automatic path as hb.sample (tested in this file)
@pytest.mark.slow
def test_cli_sample_without_a_step_size_chooses_one(capsys):
    from heatbath.cli import main

    assert main(["sample", "eight_schools_noncentered", "--steps", "400", "--chains", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "chosen" in out


def test_checkpoint_of_a_model_with_latents_in_its_data_plate(tmp_path):
    ref = hb.models.reference("eight_schools_noncentered")
    a = hb.sample(ref.model, hb.samplers.sgld(1e-3), data=ref.data, num_samples=20, num_chains=2,
                  checkpoint=tmp_path / "ck", progress_bar=False)
    b = hb.sample(ref.model, hb.samplers.sgld(1e-3), data=ref.data, num_samples=20, num_chains=2,
                  checkpoint=tmp_path / "ck", resume=True, progress_bar=False)
    np.testing.assert_array_equal(a.samples["tau"], b.samples["tau"])


# slow: the automatic settings again, in float64 (default-suite budget)
@pytest.mark.slow
def test_automatic_settings_under_x64():
    """find_map's L-BFGS carry and the tuning run in float64 too (a line-search counter was int64)."""
    import subprocess
    import sys

    code = ("import numpy as np, jax.numpy as jnp, heatbath as hb\n"
            "t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p ** 2), lambda p, b: -0.5 * jnp.sum((b - p) ** 2),"
            " np.linspace(-1, 1, 50), params=jnp.zeros(()))\n"
            "r = hb.sample(t, hb.samplers.sgld(), num_samples=200, num_chains=2, progress_bar=False, checks='off',"
            " metric='identity')\n"
            "assert r.samples['theta'].dtype == np.float64 and all(r.tuning['init']['converged'])\n"
            "print('ok', r.tuning['step_size'])\n")
    env = {**__import__("os").environ, "JAX_ENABLE_X64": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # The posterior precision is 1 + 50: h = 0.4 / 51.
    assert float(out.stdout.split()[-1]) == pytest.approx(0.4 / 51, rel=0.02)


def test_automatic_sgld_step_is_the_measured_bound_short():
    """The default-suite version of the slow Gaussian test: the chosen h is 0.4 / lambda_max."""
    res = hb.sample(gaussian_target(), hb.samplers.sgld(), num_samples=400, num_chains=2, seed=0, progress_bar=False,
                    checks="off", metric="identity")
    assert res.tuning["step_size"] == pytest.approx(2 * autotune.EPS / PREC.max(), rel=0.02)
    assert len(res.tuning["first_half"]["tries"]) == 1 and not res.tuning["first_half"]["tries"][0]["diverged_chains"]


def test_configurational_temperature_on_many_rows_reads_exact_and_wide_draws():
    """N = 10,000 rows (> autotune.CURVATURE_ROWS: the Hessian trace on 4,096 rows drawn without
    replacement, rescaled): on exact posterior draws of a Gaussian mean T_conf is 1 within its
    error, on draws 1.5 x too wide it is 1.5^2 = 2.25 (the gradient is on all the rows)."""
    from heatbath.drivers import selfcheck

    rng = np.random.default_rng(11)
    N, d = 10_000, 3
    y = rng.normal(size=(N, d)).astype(np.float32) + np.array([0.5, -1.0, 2.0], np.float32)
    t = hb.models.from_logdensity(lambda th: -0.5 * jnp.sum(th**2) / 100.0,
                                  lambda th, b: -0.5 * jnp.sum((b - th) ** 2), y, params=jnp.zeros(d))
    prec = N + 0.01
    mean = y.astype(np.float64).sum(0) / prec
    # 1.1: what the automatic step size allows (variance 1.2 in the worst direction): no warning.
    for scale, expected, alarm in ((1.0, 1.0, False), (1.1, 1.21, False), (1.5, 2.25, True)):
        draws = (mean + scale * rng.normal(size=(4, 400, d)) / np.sqrt(prec)).astype(np.float32)
        out = selfcheck._configurational(t, draws, [0, 1, 2, 3], jax.random.key(0))
        tc, se = out["configurational_temperature"], out["configurational_temperature_se"]
        assert abs(tc - expected) < max(3 * se, 0.1 * expected), (scale, tc, se)
        assert selfcheck.tconf_alarm(tc, se, 1.0) is alarm, (scale, tc, se)
