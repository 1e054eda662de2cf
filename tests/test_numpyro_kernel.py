"""heatbath samplers as numpyro.infer.MCMCKernels (heatbath.numpyro).

The model is the conjugate Gaussian mean, mu ~ N(0, 10^2), y_i ~ N(mu, 1), i = 1..N, whose
posterior is N(m, 1/P) with P = 1/100 + N and m = sum(y) / P. SGLD's discretised chain on it
is an AR(1) process with a closed-form stationary law, so the tests compare with exact numbers.

SGLD with step h, a = h P, and a minibatch B of n rows drawn uniformly with replacement:

    g = -mu/100 + (N/n) sum_{j in B} (y_j - mu),   E[g | mu] = -P (mu - m),
    Var[g | mu] = sigma_g^2 = (N^2 / n) var_pop(y)      (no mu dependence: y_j - mu shifts)
    mu' - m = (1 - a)(mu - m) + h eps + sqrt(2 h) xi

so the stationary mean is m and the stationary variance is

    v = (2 h + h^2 sigma_g^2) / (a (2 - a))        (full batch: sigma_g^2 = 0, v = (1/P)/(1 - a/2)).

Monte Carlo error of C chains x S draws of an AR(1) with rho = 1 - a (Gaussian increments):
    sd(mean_hat) = sqrt(v (1 + rho) / (1 - rho) / (C S)),
    sd(var_hat)  = v sqrt(2 (1 + rho^2) / (1 - rho^2) / (C S)).
Tolerances are 4 of those standard deviations (two-sided false-alarm rate ~6e-5 per check).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import arviz as az
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, Predictive

import heatbath as hb

N = 1000
PREC = 1.0 / 100.0 + N  # posterior precision P


def gauss_model(y=None, n=N):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    numpyro.deterministic("two_mu", 2.0 * mu)
    with numpyro.plate("data", n if y is None else y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.fixture(scope="module")
def y():
    return np.random.default_rng(0).normal(1.5, 1.0, N).astype(np.float32)


def _posterior_mean(y):
    return float(np.sum(y.astype(np.float64)) / PREC)


def _stationary_var(h, y, batch_size=None):
    a = h * PREC
    sg2 = 0.0 if batch_size is None else N**2 / batch_size * float(np.var(y.astype(np.float64)))
    return (2 * h + h**2 * sg2) / (a * (2 - a))


def _mc_sd(v, a, draws):
    rho = 1.0 - a
    sd_mean = np.sqrt(v * (1 + rho) / (1 - rho) / draws)
    sd_var = v * np.sqrt(2 * (1 + rho**2) / (1 - rho**2) / draws)
    return sd_mean, sd_var


def _mcmc(kernel, num_samples, num_warmup=200, num_chains=1, **kw):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There are not enough devices")
        return MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                    progress_bar=False, **kw)


def test_sgld_full_batch_matches_closed_form(y):
    # a = h P = 0.1: the discretised variance is (1/P) / 0.95, 5.3% above the posterior's;
    # with 2 x 5000 draws sd(var_hat)/v = 0.024, so the test tells the two apart (2.2 sd).
    a = 0.1
    h = a / PREC
    mcmc = _mcmc(hb.numpyro.SGLD(gauss_model, step_size=h), 5000, num_chains=2)
    mcmc.run(jax.random.key(1), y)
    mu = np.asarray(mcmc.get_samples(group_by_chain=True)["mu"], np.float64)
    assert mu.shape == (2, 5000)
    v = _stationary_var(h, y)
    sd_mean, sd_var = _mc_sd(v, a, mu.size)
    assert abs(mu.mean() - _posterior_mean(y)) < 4 * sd_mean
    assert abs(mu.var() - v) < 4 * sd_var
    # Deterministic sites come back through postprocess_fn.
    np.testing.assert_allclose(mcmc.get_samples()["two_mu"], 2 * mcmc.get_samples()["mu"], rtol=1e-6)


def test_sgld_minibatch_matches_closed_form(y):
    # n = 100 of N = 1000: the minibatch noise adds h sigma_g^2 / 2 = 0.5 x var_pop(y) to the
    # variance factor; a wrong N/n scaling or index draw would move it by far more than 4 sd.
    a, n = 0.1, 100
    h = a / PREC
    mcmc = _mcmc(hb.numpyro.SGLD(gauss_model, step_size=h, batch_size=n), 5000, num_chains=2)
    mcmc.run(jax.random.key(2), y)
    mu = np.asarray(mcmc.get_samples()["mu"], np.float64)
    v = _stationary_var(h, y, n)
    sd_mean, sd_var = _mc_sd(v, a, mu.size)
    assert abs(mu.mean() - _posterior_mean(y)) < 4 * sd_mean
    assert abs(mu.var() - v) < 4 * sd_var
    assert abs(v / _stationary_var(h, y) - 1.0) > 8 * sd_var / v  # the two laws are far apart


def test_control_variates_minibatch_is_the_full_batch_chain(y):
    # For a gradient linear in mu the control-variate estimator is exact whatever the batch:
    # g* + grad f~(mu) - grad f~(mu*) = g* - P (mu - mu*) = grad log p(mu | y). With the same
    # keys the minibatch chain is the full-batch chain, up to float32 rounding (the chain
    # contracts, so the rounding does not grow): it reproduces the same posterior exactly.
    h = 0.1 / PREC
    key = jax.random.key(3)
    full = _mcmc(hb.numpyro.SGLD(gauss_model, step_size=h), 500)
    full.run(key, y)
    cv = _mcmc(hb.numpyro.SGLD(gauss_model, step_size=h, batch_size=50, gradient="cv"), 500)
    cv.run(key, y)
    sd = np.sqrt(1 / PREC)
    np.testing.assert_allclose(cv.get_samples()["mu"], full.get_samples()["mu"], rtol=0, atol=1e-3 * sd)


def test_kernel_is_hb_sample_chain_zero(y):
    # Same transition function and key derivation: MCMC's chain from fold_in(key(s), 0) is
    # chain 0 of hb.sample(seed=s), draw for draw.
    h = 0.1 / PREC
    kernel = hb.numpyro.SGLD(gauss_model, step_size=h, batch_size=100)
    mcmc = _mcmc(kernel, 300, num_warmup=50)
    mcmc.run(jax.random.fold_in(jax.random.key(7), 0), y)
    res = hb.sample(gauss_model, hb.samplers.sgld(h), data=(y,), batch_size=100, num_samples=300,
                    num_warmup=50, seed=7, progress_bar=False)
    np.testing.assert_allclose(np.asarray(mcmc.get_samples()["mu"]), res.samples["mu"][0], rtol=1e-6)


def test_chain_methods_agree_and_arviz(y):
    # "parallel" falls back to sequential on one device; "vectorized" runs the chains under
    # vmap. Both split the key the same way, so the draws are the same.
    h = 0.1 / PREC
    kernel = hb.numpyro.SGLD(gauss_model, step_size=h, batch_size=100)
    runs = {}
    for method in ("parallel", "vectorized"):
        mcmc = _mcmc(kernel, 400, num_warmup=100, num_chains=2, chain_method=method)
        mcmc.run(jax.random.key(4), y, extra_fields=("lp", "step_size", "grad_norm"))
        runs[method] = mcmc
    a, b = (np.asarray(r.get_samples(group_by_chain=True)["mu"]) for r in runs.values())
    assert a.shape == (2, 400)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert not np.allclose(a[0], a[1])  # distinct chains

    idata = az.from_numpyro(runs["vectorized"])
    post, stats = idata.posterior, idata.sample_stats
    assert post["mu"].shape == (2, 400) and post["two_mu"].shape == (2, 400)
    assert stats["diverging"].shape == (2, 400) and stats["diverging"].dtype == bool
    assert not bool(stats["diverging"].any())
    np.testing.assert_allclose(stats["step_size"], h, rtol=1e-6)
    # lp is the minibatch log-density estimate at the start of each step: finite, and about
    # the log posterior's level (N log-likelihood terms of about -1.42 each).
    assert np.all(np.isfinite(stats["lp"])) and -2000 < float(stats["lp"].mean()) < -1000
    assert "y" in idata.observed_data


def test_predictive_from_samples(y):
    h = 0.1 / PREC
    mcmc = _mcmc(hb.numpyro.SGLD(gauss_model, step_size=h, batch_size=100), 500)
    mcmc.run(jax.random.key(5), y)
    samples = mcmc.get_samples()
    pred = Predictive(gauss_model, posterior_samples=samples)(jax.random.key(6))
    # The replicated rows are mu_s + e_si, e ~ N(0, 1): their mean matches the draws' mean
    # to sd 1/sqrt(S N) (the mu_s are shared between the two sides).
    assert pred["y"].shape == (500, N)
    assert abs(float(pred["y"].mean()) - float(samples["mu"].mean())) < 4 / np.sqrt(500 * N)


def test_psgld_kernel(y):
    # The kernel runs pSGLD's transition (with its preconditioner state) exactly as hb.sample.
    kernel = hb.numpyro.PSGLD(gauss_model, step_size=2e-3, decay=0.999, batch_size=100)
    mcmc = _mcmc(kernel, 200, num_warmup=20)
    mcmc.run(jax.random.fold_in(jax.random.key(8), 0), y, extra_fields=("sampler_state.preconditioner",))
    res = hb.sample(gauss_model, kernel.sampler, data=(y,), batch_size=100, num_samples=200, num_warmup=20,
                    seed=8, progress_bar=False)
    np.testing.assert_allclose(np.asarray(mcmc.get_samples()["mu"]), res.samples["mu"][0], rtol=1e-6)
    assert "sampler_state.preconditioner" in mcmc.get_extra_fields()

    # Moments, full batch. pSGLD's G ~ 1/sqrt(E g^2) makes h dimensionless: at stationarity
    # E g^2 = P^2 Var(mu) ~ P, so the effective step is a_eff = h G P ~ h sqrt(P) = 0.063 and the
    # discretisation inflates the sd by ~a_eff/4 = 1.6%. G also follows the recent gradients (an
    # average over 1/(1 - decay) = 1000 steps), which biases the law a little more: with
    # 2 x 50,000 draws we measured sd/sd_post = 1.024 (decay 0.999) and 1.066 (decay 0.99, the
    # default). Tolerances: 4 MC sd (from ArviZ's ESS) plus 3% for those biases.
    mcmc = _mcmc(hb.numpyro.PSGLD(gauss_model, step_size=2e-3, decay=0.999), 4000, num_warmup=3000,
                 num_chains=2, chain_method="vectorized")
    mcmc.run(jax.random.key(8), y)
    idata = az.from_numpyro(mcmc)
    mu = np.asarray(mcmc.get_samples()["mu"], np.float64)
    ess_mean = float(az.ess(idata, var_names=["mu"])["mu"])
    ess_sd = float(az.ess(idata, var_names=["mu"], method="sd")["mu"])
    s2 = 1 / PREC
    assert ess_mean > 100 and ess_sd > 100
    assert abs(mu.mean() - _posterior_mean(y)) < 4 * np.sqrt(s2 / ess_mean)
    # sd(sd_hat)/sd = 1/sqrt(2 ESS_sd).
    assert abs(mu.std() / np.sqrt(s2) - 1) < 4 / np.sqrt(2 * ess_sd) + 0.03


def test_init_params_and_constraints():
    # A positive site: the kernel moves log(sigma); get_samples returns sigma = exp(z.sigma).
    # Started at init_params (unconstrained) with T = 0, one full-batch step is exactly
    # gradient ascent: z1 = z0 + h d/dz log p(z0).
    def model(x):
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(0.0, sigma), obs=x)

    x = np.random.default_rng(1).normal(0.0, 2.0, 200).astype(np.float32)
    h = 1e-3
    z0 = jnp.asarray(0.3)
    mcmc = _mcmc(hb.numpyro.SGLD(model, step_size=h, temperature=0.0), 1, num_warmup=0)
    mcmc.run(jax.random.key(0), x, init_params={"sigma": z0}, extra_fields=("z.sigma",))
    z1 = float(mcmc.get_extra_fields()["z.sigma"][0])
    target = hb.models.from_numpyro(model, x)
    grad = jax.grad(lambda z: target.logdensity({"sigma": z}))(z0)
    np.testing.assert_allclose(z1, float(z0 + h * grad), rtol=1e-6)
    np.testing.assert_allclose(float(mcmc.get_samples()["sigma"][0]), np.exp(z1), rtol=1e-6)


def test_jit_model_args_same_draws(y):
    h = 0.1 / PREC
    out = []
    for jit_args in (False, True):
        mcmc = _mcmc(hb.numpyro.SGLD(gauss_model, step_size=h, batch_size=100), 200, num_warmup=20,
                     jit_model_args=jit_args)
        mcmc.run(jax.random.key(9), y)
        out.append(np.asarray(mcmc.get_samples()["mu"]))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-6)


def test_target_kernel():
    # A Target from plain JAX functions works too: MCMC.run takes no model arguments.
    yv = np.random.default_rng(2).normal(1.0, 1.0, 100).astype(np.float32)
    target = hb.models.from_logdensity(
        lambda p: -0.5 * p**2 / 100.0, lambda p, b: jnp.sum(-0.5 * (b - p) ** 2), yv, params=jnp.zeros(())
    )
    prec = 1 / 100 + 100
    h = 0.1 / prec
    mcmc = _mcmc(hb.numpyro.HeatbathKernel(target, hb.samplers.sgld(h)), 3000, num_chains=2,
                 chain_method="vectorized")
    mcmc.run(jax.random.key(0))
    theta = np.asarray(mcmc.get_samples()["theta"], np.float64)
    v = (1 / prec) / (1 - 0.05)
    sd_mean, _ = _mc_sd(v, 0.1, theta.size)
    assert abs(theta.mean() - yv.astype(np.float64).sum() / prec) < 4 * sd_mean


# -- bad input: the same errors as hb.sample, before compiling ------------------------------
def _hb_error(model, data, sampler, batch_size):
    with pytest.raises((ValueError, TypeError)) as err:
        hb.sample(model, sampler, data=data, batch_size=batch_size, num_samples=10, progress_bar=False)
    return str(err.value)


def test_no_data_plate_with_batch_size():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    yv = np.zeros(50, np.float32)
    msg = _hb_error(model, (yv,), hb.samplers.sgld(1e-3), 10)
    mcmc = _mcmc(hb.numpyro.SGLD(model, step_size=1e-3, batch_size=10), 10)
    with pytest.raises(ValueError) as err:
        mcmc.run(jax.random.key(0), yv)
    assert str(err.value) == msg and "data plate" in msg


def test_discrete_latent():
    def model(y):
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y)

    yv = np.zeros(50, np.float32)
    msg = _hb_error(model, (yv,), hb.samplers.sgld(1e-3), None)
    mcmc = _mcmc(hb.numpyro.SGLD(model, step_size=1e-3), 10)
    with pytest.raises(ValueError) as err:
        mcmc.run(jax.random.key(0), yv)
    assert str(err.value) == msg and "discrete" in msg


def test_batch_larger_than_data_and_bad_arguments(y):
    msg = _hb_error(gauss_model, (y,), hb.samplers.sgld(1e-3), N + 1)
    mcmc = _mcmc(hb.numpyro.SGLD(gauss_model, step_size=1e-3, batch_size=N + 1), 10)
    with pytest.raises(ValueError) as err:
        mcmc.run(jax.random.key(0), y)
    assert str(err.value) == msg
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        hb.numpyro.SGLD(gauss_model, step_size=1e-3, batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        hb.numpyro.SGLD(gauss_model, step_size=1e-3, batch_size=10.0)
    with pytest.raises(TypeError, match="Sampler"):
        hb.numpyro.HeatbathKernel(gauss_model, "sgld")
    with pytest.raises(ValueError, match="step_size"):
        hb.numpyro.SGLD(gauss_model, step_size=-1.0)
    with pytest.raises(ValueError, match="unknown site"):
        _mcmc(hb.numpyro.SGLD(gauss_model, step_size=1e-3), 10).run(
            jax.random.key(0), y, init_params={"nu": 0.0}
        )


# slow: a subprocess with 2 devices (device equality is also tested in test_reliability and test_spine)
@pytest.mark.slow
def test_parallel_chains_on_two_devices():
    # chain_method="parallel" pmaps init and sample when there are enough devices; the
    # control-variate MAP search then runs eagerly inside init. Draws equal the sequential ones.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import numpy as np, jax
        import numpyro, numpyro.distributions as dist
        from numpyro.infer import MCMC
        import heatbath as hb

        def model(y):
            mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
            with numpyro.plate("data", y.shape[0]):
                numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

        assert jax.device_count() == 2
        y = np.random.default_rng(0).normal(1.5, 1.0, 500).astype(np.float32)
        for gradient in ("naive", hb.kernels.gradients.control_variates(map_steps=300)):
            out = []
            for method in ("parallel", "sequential"):
                kernel = hb.numpyro.SGLD(model, step_size=2e-4, batch_size=50, gradient=gradient)
                mcmc = MCMC(kernel, num_warmup=20, num_samples=50, num_chains=2, chain_method=method,
                            progress_bar=False)
                mcmc.run(jax.random.key(0), y)
                out.append(np.asarray(mcmc.get_samples(group_by_chain=True)["mu"]))
            np.testing.assert_allclose(out[0], out[1], rtol=1e-5)
        print("OK")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_svrg_is_refused_under_vectorized_chains():
    """Under NumPyro's vectorized chains SVRG's refresh would run every step: refused with a reason."""
    import heatbath as hb
    from numpyro.infer import MCMC

    rng = np.random.default_rng(0)
    y = rng.normal(size=50).astype(np.float32)

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0, 1))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1), obs=y)

    kernel = hb.numpyro.HeatbathKernel(model, hb.samplers.sgld(1e-3, gradient=hb.kernels.gradients.svrg(10)),
                                       batch_size=10)
    mcmc = MCMC(kernel, num_warmup=0, num_samples=5, num_chains=2, chain_method="vectorized", progress_bar=False)
    with pytest.raises(ValueError, match="vectorized"):
        mcmc.run(jax.random.key(0), y)
    seq = MCMC(kernel, num_warmup=0, num_samples=5, num_chains=1, progress_bar=False)
    seq.run(jax.random.key(0), y)
    assert seq.get_samples()["mu"].shape == (5,)
