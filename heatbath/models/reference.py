r"""Reference posteriors: real models and data with gold-standard posterior moments.

This suite is the yardstick of the package. Each target is a NumPyro model, its data, and the
moments (and, for posteriordb targets, 10 x 1000 draws) of its posterior as computed by a long,
well-diagnosed NUTS run elsewhere. A sampler or VI method is judged by its distance to these
numbers, per unit of time and of gradient evaluations.

Targets (folder name, short alias in brackets):

- ``eight_schools-eight_schools_noncentered`` (``eight_schools_noncentered``): non-centred
  eight schools, posteriordb.
- ``sblri-blr`` (``sblri``): badly scaled Bayesian linear regression, N=100, D=5; exact
  moments by quadrature in ``extra``.
- ``arK-arK`` (``arK``): AR(5) time series, T=200.
- ``gp_pois_regr-gp_pois_regr`` (``gp_pois_regr``): latent GP Poisson regression, N=11;
  needs float64 (see :func:`gp_pois_regr`).
- ``low_dim_gauss_mix-low_dim_gauss_mix`` (``low_dim_gauss_mix``): two-component 1-D Gaussian
  mixture, N=1000.
- ``diamonds-diamonds`` (``diamonds``): brms linear regression, N=5000, 24 strongly
  correlated covariates.
- ``ig_german_credit_numeric_logistic_regression`` (``german_credit``): logistic regression,
  N=1000, D=25, inference_gym.
- ``ig_eight_schools`` (``eight_schools``): centred eight schools with inference_gym's prior.
- ``ig_brownian_motion_missing_middle_observations`` (``brownian_motion``): Gaussian
  state-space model, 30 states, 20 observed, inference_gym; exact posterior and exact
  mean-field VI optimum in ``extra``.

Usage::

    import heatbath as hb
    ref = hb.models.reference("german_credit")
    ref.model(**ref.data)                  # a plain NumPyro model, called with keyword data
    ref.reference["weights"]["mean"]       # (25,) reference posterior mean, constrained scale
    report = ref.compare(result.samples)   # samples: name -> (chain, draw, *shape)
    report["max_abs_z"], report["sd_ratio_min"], report["sd_ratio_max"]
    ref.data_as(np.float64)                # the data in float64, for runs with jax_enable_x64

Conventions every model follows (the rest of the package relies on them):

- ``model(**data)``: keyword arguments only; ``data`` holds numpy arrays (float32 / int32) and
  python scalars (ints; the Brownian-motion noise scales are python floats).
- Every observation sits in one ``numpyro.plate("data", N)``, the *data plate*; ``N`` is
  computed from the arrays (never passed as a separate int), and every array in ``data`` has
  leading axis ``N``. Data are preprocessed for this (AR lag matrix, centred design matrix,
  observed subset of a time series, ...), so no ``NaN`` appears in any data array.
- Per-observation latent variables (the eight schools' ``theta_trans`` / ``school_effects``,
  the GP's ``f_tilde``) sit inside the data plate, which marks those targets as full-batch only
  (``hb.models.from_numpyro`` then refuses to minibatch them, with a clear message). The
  Brownian-motion path ``locs`` (30 states, 20 observed) is global, so that target minibatches.
- No discrete latent sites; supports are declared through constrained distributions so that
  ``numpyro``'s ``biject_to`` gives the same unconstrained space as Stan. Each model's log joint
  equals the source program's log density (Stan ``target`` or inference_gym's joint) up to an
  additive constant (tested against hand-written densities; NumPyro NUTS reproduces every
  reference, see ``tests/test_reference_nuts.py``).
- Site names are the reference's parameter names (``mu``, ``tau``, ``theta``, ``beta``, ...);
  Stan's ``beta[1] .. beta[5]`` become one site ``beta`` of shape ``(5,)``.

Provenance: posteriordb (BSD-3-Clause, stan-dev/posteriordb at 28f8d3d; rstan NUTS, 10 chains,
10,000 thinned draws, all posteriordb checks passed) and TensorFlow Probability's inference_gym
(Apache-2.0, tensorflow/probability at c847a41; cmdstanpy NUTS). German credit data: UCI
"Statlog (German Credit Data)", german.data-numeric (CC BY 4.0). The data files are bundled
unchanged under ``heatbath/models/data`` (see ``data/PROVENANCE.md``); each target's
:attr:`ReferencePosterior.meta` keeps the exact source paths and inference settings.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

__all__ = [
    "ReferencePosterior",
    "reference",
    "list_references",
    "DATA_PLATE",
    "SortedNormal",
    "eight_schools_noncentered",
    "sblri_blr",
    "arK",
    "gp_pois_regr",
    "low_dim_gauss_mix",
    "diamonds",
    "german_credit_logistic",
    "eight_schools_centered",
    "brownian_motion_missing_middle",
]

#: Name of the plate that holds every observation in the reference models.
DATA_PLATE = "data"


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class SortedNormal(dist.Distribution):
    r"""Order statistics of ``n`` iid :math:`\mathcal N(\mathrm{loc}, \mathrm{scale})` draws.

    .. math:: p(x) = n!\, \prod_{i=1}^n \mathcal N(x_i; \mathrm{loc}, \mathrm{scale}),
              \qquad x_1 < \dots < x_n,

    i.e. the normal density restricted to the ordered cone (Stan's ``ordered[n] x;
    x ~ normal(loc, scale)`` up to a constant), normalised. Its support is
    ``constraints.ordered_vector``, so ``biject_to`` gives Stan's unconstrained space; unlike
    ``ImproperUniform`` it can be sampled (``sort`` of iid normals), so prior sampling,
    ``seed``/``trace`` and ``Predictive`` work.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.ordered_vector
    reparametrized_params = ["loc", "scale"]
    pytree_aux_fields = ("n",)

    def __init__(self, loc=0.0, scale=1.0, n: int = 2, *, validate_args=None):
        self.loc, self.scale, self.n = loc, scale, int(n)
        super().__init__(
            batch_shape=jnp.shape(jnp.broadcast_arrays(loc, scale)[0]),
            event_shape=(self.n,),
            validate_args=validate_args,
        )

    def sample(self, key, sample_shape=()):
        eps = jax.random.normal(key, sample_shape + self.batch_shape + self.event_shape)
        loc = jnp.expand_dims(self.loc, -1)
        scale = jnp.expand_dims(self.scale, -1)
        return jnp.sort(loc + scale * eps, axis=-1)

    def log_prob(self, value):
        loc = jnp.expand_dims(self.loc, -1)
        scale = jnp.expand_dims(self.scale, -1)
        lp = dist.Normal(loc, scale).log_prob(value).sum(-1)
        return lp + jax.scipy.special.gammaln(self.n + 1.0)


def eight_schools_noncentered(*, y, sigma):
    r"""Eight schools, non-centred parametrization (posteriordb ``eight_schools_noncentered``).

    .. math::

        \mu \sim \mathcal N(0, 5), \quad \tau \sim \mathrm{HalfCauchy}(5), \quad
        \tilde\theta_j \sim \mathcal N(0, 1), \quad \theta_j = \mu + \tau \tilde\theta_j, \quad
        y_j \sim \mathcal N(\theta_j, \sigma_j), \qquad j = 1..J = 8.

    Sites: ``mu``, ``tau``; in the data plate ``theta_trans`` (per-school latent, so the target
    is full-batch only), ``theta`` (deterministic) and the observed ``y``. Stan's ``tau ~ cauchy(0, 5)`` on ``real<lower=0>`` is the
    half-Cauchy up to a constant.

    Source: stan-dev/posteriordb @ 28f8d3d,
    ``posterior_database/models/stan/eight_schools_noncentered.stan`` with data
    ``eight_schools`` (Rubin 1981).

    Args:
      y: (J,) estimated treatment effects (``None`` for prior predictive).
      sigma: (J,) their standard errors.
    """
    J = sigma.shape[0]
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate(DATA_PLATE, J):
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_trans)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def sblri_blr(*, X, y):
    r"""Bayesian linear regression on the badly scaled ``sblri`` data (posteriordb ``sblri-blr``).

    .. math::

        \beta_d \sim \mathcal N(0, 10),\ d = 1..D=5, \quad
        \sigma \sim \mathrm{HalfNormal}(10), \quad
        y_n \sim \mathcal N(x_n^\top \beta, \sigma),\ n = 1..N=100.

    The covariates are O(100) so the posterior of ``beta`` has sd ~ 1e-3 while ``sigma`` has
    sd ~ 0.07: a test of step-size / preconditioner adaptation. The exact moments (``beta``
    integrated out analytically, quadrature over ``sigma``) are in ``extra["exact_semi_analytic"]``.

    Source: stan-dev/posteriordb @ 28f8d3d, ``posterior_database/models/stan/blr.stan``
    (``normal_lpdf(sigma | 0, 10)`` on ``real<lower=0>`` = half-normal up to a constant).

    Args:
      X: (N, D) design matrix.
      y: (N,) responses (``None`` for prior predictive).
    """
    N, D = X.shape
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([D]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))
    with numpyro.plate(DATA_PLATE, N):
        numpyro.sample("y", dist.Normal(jnp.matmul(X, beta), sigma), obs=y)


def arK(*, y_lags, y):
    r"""Autoregressive model of order K (posteriordb ``arK-arK``, K = 5, T = 200).

    .. math::

        \alpha \sim \mathcal N(0, 10), \quad \beta_k \sim \mathcal N(0, 10),\ k = 1..K, \quad
        \sigma \sim \mathrm{HalfCauchy}(2.5), \\
        y_t \sim \mathcal N\Big(\alpha + \sum_{k=1}^K \beta_k\, y_{t-k},\ \sigma\Big),
        \qquad t = K+1..T.

    The lags are precomputed so that each conditional term is one row of the data plate:
    ``y`` holds ``y_{K+1..T}`` (length ``N = T - K``) and ``y_lags[n, k-1] = y_{t_n - k}``.

    Source: stan-dev/posteriordb @ 28f8d3d, ``posterior_database/models/stan/arK.stan``
    (``sigma ~ cauchy(0, 2.5)`` on ``real<lower=0>`` = half-Cauchy up to a constant).

    Args:
      y_lags: (N, K) lagged values.
      y: (N,) responses ``y_{K+1..T}`` (``None`` for prior predictive).
    """
    N, K = y_lags.shape
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([K]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    with numpyro.plate(DATA_PLATE, N):
        numpyro.sample("y", dist.Normal(alpha + jnp.matmul(y_lags, beta), sigma), obs=y)


def gp_pois_regr(*, x, k, jitter=1e-10):
    r"""Latent Gaussian-process Poisson regression (posteriordb ``gp_pois_regr``, N = 11).

    .. math::

        \rho \sim \mathrm{Gamma}(25, \text{rate } 4), \quad \alpha \sim \mathrm{HalfNormal}(2),
        \quad \tilde f \sim \mathcal N(0, I_N), \\
        K_{ij} = \alpha^2 \exp\!\big(-(x_i - x_j)^2 / (2\rho^2)\big) + 10^{-10}\,\delta_{ij},
        \quad f = \mathrm{chol}(K)\, \tilde f, \quad k_i \sim \mathrm{Poisson}(e^{f_i}).

    Sites: ``rho``, ``alpha``, ``f_tilde`` (per-observation latent, in the data plate: the
    target is full-batch only, and ``f`` mixes all of ``f_tilde``), ``f`` (deterministic);
    ``k`` observed in the data plate.

    **Needs float64** (``jax.config.update("jax_enable_x64", True)``): at typical posterior
    values (``rho`` ~ 5.7) the kernel matrix has condition number ~ 1e9-1e12 and a float32
    Cholesky returns NaN, so the model raises ``ValueError`` when traced in float32 with the
    default ``jitter`` (Stan's 1e-10). ``jitter >= 1e-4`` makes float32 work, at the price of a
    slightly different model (f gets extra white noise of variance ``jitter``).

    Source: stan-dev/posteriordb @ 28f8d3d, ``posterior_database/models/stan/gp_pois_regr.stan``.
    The data file's unused ``y`` column is dropped.

    Args:
      x: (N,) inputs.
      k: (N,) counts (``None`` for prior predictive).
      jitter: diagonal added to the kernel matrix (not data; keep the default).
    """
    N = x.shape[0]
    rho = numpyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = numpyro.sample("alpha", dist.HalfNormal(2.0))
    with numpyro.plate(DATA_PLATE, N):
        f_tilde = numpyro.sample("f_tilde", dist.Normal(0.0, 1.0))
    dtype = jnp.result_type(rho, alpha)
    if jnp.finfo(dtype).bits < 64 and jitter < 1e-4:
        raise ValueError(
            "gp_pois_regr needs float64: its kernel matrix is too ill-conditioned for a float32 "
            "Cholesky (NaN at typical posterior values). Run with "
            "jax.config.update('jax_enable_x64', True) (and data_as(np.float64)), or pass "
            "jitter >= 1e-4 for an approximate float32 model."
        )
    x = jnp.asarray(x, dtype)
    d2 = (x[:, None] - x[None, :]) ** 2
    cov = alpha**2 * jnp.exp(-d2 / (2.0 * rho**2)) + jitter * jnp.eye(N, dtype=d2.dtype)
    f = numpyro.deterministic("f", jnp.linalg.cholesky(cov) @ f_tilde)
    with numpyro.plate(DATA_PLATE, N):
        numpyro.sample("k", dist.Poisson(jnp.exp(f)), obs=k)


def low_dim_gauss_mix(*, y):
    r"""Two-component Gaussian mixture in 1-D (posteriordb ``low_dim_gauss_mix``, N = 1000).

    .. math::

        \mu \in \{\mu_1 < \mu_2\},\ p(\mu) \propto \mathcal N(\mu_1; 0, 2)\,\mathcal N(\mu_2; 0, 2),
        \quad \sigma_{1,2} \sim \mathrm{HalfNormal}(2), \quad \theta \sim \mathrm{Beta}(5, 5), \\
        y_n \sim \theta\, \mathcal N(\mu_1, \sigma_1) + (1 - \theta)\, \mathcal N(\mu_2, \sigma_2).

    ``mu`` is an ordered vector with the normal density on each entry, as Stan's
    ``ordered[2] mu; mu ~ normal(0, 2)``: the :class:`SortedNormal` distribution (support
    ``ordered_vector``, so the unconstrained space is Stan's), which identifies the
    components. The observation is a ``MixtureSameFamily`` (Stan's ``log_mix``).

    Source: stan-dev/posteriordb @ 28f8d3d,
    ``posterior_database/models/stan/low_dim_gauss_mix.stan``.

    Args:
      y: (N,) observations.
    """
    N = y.shape[0]
    mu = numpyro.sample("mu", SortedNormal(0.0, 2.0, 2))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
    theta = numpyro.sample("theta", dist.Beta(5.0, 5.0))
    mix = dist.MixtureSameFamily(
        dist.Categorical(probs=jnp.stack([theta, 1.0 - theta])), dist.Normal(mu, sigma)
    )
    with numpyro.plate(DATA_PLATE, N):
        numpyro.sample("y", mix, obs=y)


def diamonds(*, Xc, Y):
    r"""brms linear model of diamond prices (posteriordb ``diamonds-diamonds``, N = 5000).

    .. math::

        b_k \sim \mathcal N(0, 1),\ k = 1..24, \quad
        \mathrm{Intercept} \sim t_3(8, 10), \quad \sigma \sim t_3(0, 10)\ \text{truncated to}\
        \sigma > 0, \\
        Y_n \sim \mathcal N(\mathrm{Intercept} + X^c_n{}^\top b,\ \sigma),

    where ``Xc`` is the design matrix ``X`` without its first (intercept) column, each column
    centred (brms' ``transformed data``). The posterior of ``b`` is strongly correlated (the
    covariates are polynomial terms): NUTS needs long trajectories or a dense mass matrix.

    Source: stan-dev/posteriordb @ 28f8d3d, ``posterior_database/models/stan/diamonds.stan``
    (generated by brms 2.10.0; ``prior_only = 0``). The truncated Student-t is
    ``FoldedDistribution(StudentT(3, 0, 10))`` (symmetric about 0, so folding = truncating).

    Args:
      Xc: (N, 24) centred covariates.
      Y: (N,) log prices (``None`` for prior predictive).
    """
    N, Kc = Xc.shape
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([Kc]).to_event(1))
    intercept = numpyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = numpyro.sample("sigma", dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0)))
    with numpyro.plate(DATA_PLATE, N):
        numpyro.sample("Y", dist.Normal(intercept + jnp.matmul(Xc, b), sigma), obs=Y)


def german_credit_logistic(*, X, y):
    r"""Logistic regression on German credit (inference_gym
    ``german_credit_numeric_logistic_regression``, N = 1000, D = 25).

    .. math::

        w \sim \mathcal N(0, I_{25}), \quad y_n \sim \mathrm{Bernoulli}(\mathrm{logits} = x_n^\top w).

    ``X`` is the 24 numeric features z-scored (population sd) with a column of ones appended
    last, so ``weights[24]`` is the bias; ``y = 1`` for a "bad" credit (raw class 2).

    Source: tensorflow/probability @ c847a41,
    ``spinoffs/inference_gym/inference_gym/targets/logistic_regression.py``; data UCI Statlog
    (German Credit Data) ``german.data-numeric`` (CC BY 4.0).

    Args:
      X: (N, 25) features with the ones column last.
      y: (N,) int labels in {0, 1} (``None`` for prior predictive).
    """
    N, D = X.shape
    w = numpyro.sample("weights", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
    with numpyro.plate(DATA_PLATE, N):
        numpyro.sample("y", dist.Bernoulli(logits=jnp.matmul(X, w)), obs=y)


def eight_schools_centered(*, treatment_effects, treatment_stddevs):
    r"""Eight schools, centred, with inference_gym's prior (``ig_eight_schools``).

    .. math::

        \mathrm{avg} \sim \mathcal N(0, 10), \quad \log s \sim \mathcal N(5, 1), \quad
        e_j \sim \mathcal N(\mathrm{avg}, e^{\log s}), \quad y_j \sim \mathcal N(e_j, \sigma_j).

    Sites: ``avg_effect``, ``log_stddev``; in the data plate ``school_effects`` (per-school
    latent, so the target is full-batch only) and the observed ``treatment_effects``. Not the
    posteriordb prior.

    Source: tensorflow/probability @ c847a41,
    ``spinoffs/inference_gym/inference_gym/targets/eight_schools.py``.

    Args:
      treatment_effects: (J,) estimated effects (``None`` for prior predictive).
      treatment_stddevs: (J,) their standard errors.
    """
    J = treatment_stddevs.shape[0]
    avg = numpyro.sample("avg_effect", dist.Normal(0.0, 10.0))
    log_sd = numpyro.sample("log_stddev", dist.Normal(5.0, 1.0))
    with numpyro.plate(DATA_PLATE, J):
        effects = numpyro.sample("school_effects", dist.Normal(avg, jnp.exp(log_sd)))
        numpyro.sample(
            "treatment_effects", dist.Normal(effects, treatment_stddevs), obs=treatment_effects
        )


def brownian_motion_missing_middle(
    *,
    observed_locs,
    obs_index,
    num_timesteps,
    innovation_noise_scale,
    observation_noise_scale,
):
    r"""Brownian motion with missing middle observations (inference_gym, 30 steps, 20 observed).

    .. math::

        x_0 \sim \mathcal N(0, s_{in}), \quad x_t \sim \mathcal N(x_{t-1}, s_{in}),\
        t = 1..29, \qquad \hat x_t \sim \mathcal N(x_t, s_{obs})\ \text{for observed}\ t,

    with ``s_in = 0.1``, ``s_obs = 0.15`` and ``t = 10..19`` unobserved. The latent path is the
    site ``locs`` (a ``GaussianRandomWalk``, outside the data plate); the data plate holds only
    the 20 observed values ``observed_locs`` at integer times ``obs_index``. The posterior is
    Gaussian: its exact mean / covariance and the exact mean-field VI optimum are in
    ``extra``.

    Source: tensorflow/probability @ c847a41,
    ``spinoffs/inference_gym/inference_gym/targets/brownian_motion.py``
    (``BrownianMotionMissingMiddleObservations``).

    Args:
      observed_locs: (N,) observed values (``None`` for prior predictive).
      obs_index: (N,) int time index of each observation.
      num_timesteps: python int, length of the latent path (30).
      innovation_noise_scale, observation_noise_scale: python floats (0.1, 0.15).
    """
    N = obs_index.shape[0]
    locs = numpyro.sample(
        "locs", dist.GaussianRandomWalk(innovation_noise_scale, num_steps=int(num_timesteps))
    )
    with numpyro.plate(DATA_PLATE, N):
        numpyro.sample(
            "observed_locs",
            dist.Normal(locs[obs_index], observation_noise_scale),
            obs=observed_locs,
        )


# ---------------------------------------------------------------------------------------------
# Preprocessing: data.json -> model kwargs
# ---------------------------------------------------------------------------------------------


def _f(a, dtype) -> np.ndarray:
    """Floats computed in float64, then cast to the data dtype (float32 by default)."""
    return np.asarray(a, dtype=np.float64).astype(dtype)


def _prep_eight_schools_noncentered(raw, dtype=np.float32):
    return {"y": _f(raw["y"], dtype), "sigma": _f(raw["sigma"], dtype)}


def _prep_sblri(raw, dtype=np.float32):
    return {"X": _f(raw["X"], dtype), "y": _f(raw["y"], dtype)}


def _prep_arK(raw, dtype=np.float32):
    y = np.asarray(raw["y"], dtype=np.float64)
    K, T = int(raw["K"]), int(raw["T"])
    if y.shape != (T,):
        raise ValueError(f"arK data: expected {T} values, got {y.shape}")
    t = np.arange(K, T)  # 0-based times of the modelled terms (Stan's K+1..T)
    lags = np.stack([y[t - k] for k in range(1, K + 1)], axis=1)  # lags[:, k-1] = y[t-k]
    return {"y_lags": _f(lags, dtype), "y": _f(y[K:], dtype)}


def _prep_gp(raw, dtype=np.float32):
    return {"x": _f(raw["x"], dtype), "k": np.asarray(raw["k"], dtype=np.int32)}


def _prep_gauss_mix(raw, dtype=np.float32):
    return {"y": _f(raw["y"], dtype)}


def _prep_diamonds(raw, dtype=np.float32):
    X = np.asarray(raw["X"], dtype=np.float64)
    Xc = X[:, 1:] - X[:, 1:].mean(axis=0)
    return {"Xc": _f(Xc, dtype), "Y": _f(raw["Y"], dtype)}


def _prep_german(raw, dtype=np.float32):
    R = np.asarray(raw["raw_german_data_numeric"], dtype=np.float64)
    feats, cls = R[:, :-1], R[:, -1]
    Z = (feats - feats.mean(axis=0)) / feats.std(axis=0)  # population sd (ddof=0)
    X = np.concatenate([Z, np.ones((R.shape[0], 1))], axis=1)
    return {"X": _f(X, dtype), "y": (cls == 2).astype(np.int32)}


def _prep_ig_eight_schools(raw, dtype=np.float32):
    return {
        "treatment_effects": _f(raw["treatment_effects"], dtype),
        "treatment_stddevs": _f(raw["treatment_stddevs"], dtype),
    }


def _prep_brownian(raw, dtype=np.float32):
    vals = raw["observed_locs"]
    idx = [i for i, v in enumerate(vals) if v is not None]
    return {
        "observed_locs": _f([vals[i] for i in idx], dtype),
        "obs_index": np.asarray(idx, dtype=np.int32),
        "num_timesteps": len(vals),
        "innovation_noise_scale": float(raw["innovation_noise_scale"]),
        "observation_noise_scale": float(raw["observation_noise_scale"]),
    }


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    folder: str
    alias: str
    model: Callable
    prep: Callable[..., dict]  # prep(raw, dtype=np.float32) -> model kwargs
    params: tuple[str, ...]
    requires_x64: bool = False


_SPECS: tuple[_Spec, ...] = (
    _Spec("eight_schools-eight_schools_noncentered", "eight_schools_noncentered",
          eight_schools_noncentered, _prep_eight_schools_noncentered, ("theta", "mu", "tau")),
    _Spec("sblri-blr", "sblri", sblri_blr, _prep_sblri, ("beta", "sigma")),
    _Spec("arK-arK", "arK", arK, _prep_arK, ("alpha", "beta", "sigma")),
    _Spec("gp_pois_regr-gp_pois_regr", "gp_pois_regr", gp_pois_regr, _prep_gp,
          ("rho", "alpha", "f"), requires_x64=True),
    _Spec("low_dim_gauss_mix-low_dim_gauss_mix", "low_dim_gauss_mix", low_dim_gauss_mix,
          _prep_gauss_mix, ("mu", "sigma", "theta")),
    _Spec("diamonds-diamonds", "diamonds", diamonds, _prep_diamonds, ("b", "Intercept", "sigma")),
    _Spec("ig_german_credit_numeric_logistic_regression", "german_credit",
          german_credit_logistic, _prep_german, ("weights",)),
    _Spec("ig_eight_schools", "eight_schools", eight_schools_centered, _prep_ig_eight_schools,
          ("avg_effect", "log_stddev", "school_effects")),
    _Spec("ig_brownian_motion_missing_middle_observations", "brownian_motion",
          brownian_motion_missing_middle, _prep_brownian, ("locs",)),
)
_BY_NAME: dict[str, _Spec] = {}
for _s in _SPECS:
    _BY_NAME[_s.folder] = _s
    _BY_NAME[_s.alias] = _s
del _s


# ---------------------------------------------------------------------------------------------
# Loading helpers
# ---------------------------------------------------------------------------------------------

_INDEXED = re.compile(r"^([A-Za-z_]\w*)\[(\d+(?:,\d+)*)\]$")


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a)  # own copy
    a.setflags(write=False)
    return a


def _freeze_data(d: dict) -> dict:
    return {k: _readonly(v) if isinstance(v, np.ndarray) else v for k, v in d.items()}


def _to_array(v):
    if isinstance(v, bool) or isinstance(v, str) or v is None:
        return v
    if isinstance(v, (int, float, list)):
        try:
            return _readonly(np.asarray(v, dtype=np.float64))
        except (TypeError, ValueError):
            return v
    return v


def _split_name(key: str) -> tuple[str, tuple[int, ...]]:
    """``"beta[3]" -> ("beta", (2,))`` (0-based); ``"sigma" -> ("sigma", ())``."""
    m = _INDEXED.match(key)
    if m is None:
        return key, ()
    return m.group(1), tuple(int(i) - 1 for i in m.group(2).split(","))


def _gather_table(table: Mapping[str, Any]) -> dict[str, Any]:
    """Gather a ``{"beta[1]": {...stats}, ...}`` table into ``{"beta": {stat: array}}``.

    Entries without an index (``"sigma"``, or inference_gym's whole-vector ``"locs"``) are kept
    as given, with lists turned into arrays; indexed entries are stacked in index order.
    """
    groups: dict[str, dict[tuple[int, ...], Mapping]] = {}
    order: list[str] = []
    for key, entry in table.items():
        base, idx = _split_name(key)
        if base not in groups:
            groups[base] = {}
            order.append(base)
        groups[base][idx] = entry
    out: dict[str, Any] = {}
    for base in order:
        entries = groups[base]
        if list(entries) == [()]:
            e = entries[()]
            out[base] = {k: _to_array(v) for k, v in e.items()} if isinstance(e, Mapping) else e
            continue
        if () in entries:
            raise ValueError(f"parameter {base!r} given both whole and by index")
        ndim = {len(i) for i in entries}
        if len(ndim) != 1:
            raise ValueError(f"parameter {base!r} has inconsistent index ranks")
        shape = tuple(max(i[d] for i in entries) + 1 for d in range(ndim.pop()))
        if len(entries) != int(np.prod(shape)):
            raise ValueError(f"parameter {base!r}: missing indices for shape {shape}")
        stats = list(next(iter(entries.values())))
        gathered = {}
        for s in stats:
            arr = np.empty(shape, dtype=np.float64)
            for i, e in entries.items():
                arr[i] = e[s]
            gathered[s] = _readonly(arr)
        out[base] = gathered
    return out


def _is_table(d: Any) -> bool:
    return (
        isinstance(d, Mapping)
        and len(d) > 0
        and all(isinstance(v, Mapping) for v in d.values())
        and any(_INDEXED.match(k) for k in d)
    )


def _convert_extra(obj: Any) -> Any:
    if _is_table(obj):
        return _gather_table(obj)
    if isinstance(obj, Mapping):
        return {k: _convert_extra(v) for k, v in obj.items()}
    return _to_array(obj)


def _normalise_stats(stats: dict) -> dict:
    """Rename posteriordb's ``posteriordb_mcse_mean`` to the common key ``mcse_mean``."""
    out = dict(stats)
    if "posteriordb_mcse_mean" in out and "mcse_mean" not in out:
        out["mcse_mean"] = out.pop("posteriordb_mcse_mean")
    return out


def _gather_draws(npz: Mapping[str, np.ndarray], ref_keys: Sequence[str]) -> dict:
    """npz keys ``beta_1..beta_5`` (Stan ``beta[1..5]``) -> ``{"beta": (chain, draw, 5)}``."""
    groups: dict[str, dict[tuple[int, ...], np.ndarray]] = {}
    for key in ref_keys:
        base, idx = _split_name(key)
        npz_key = base + "".join(f"_{i + 1}" for i in idx)
        if npz_key not in npz:
            raise KeyError(f"reference draws lack {npz_key!r} (for {key!r})")
        groups.setdefault(base, {})[idx] = np.asarray(npz[npz_key], dtype=np.float64)
    out = {}
    for base, entries in groups.items():
        if list(entries) == [()]:
            out[base] = _readonly(entries[()])
            continue
        shape = tuple(max(i[d] for i in entries) + 1 for d in range(len(next(iter(entries)))))
        first = next(iter(entries.values()))
        arr = np.empty(first.shape + shape, dtype=np.float64)
        for i, a in entries.items():
            arr[(Ellipsis,) + i] = a
        out[base] = _readonly(arr)
    return out


def _data_dir():
    return importlib.resources.files(__name__.rpartition(".")[0]).joinpath("data")


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ReferencePosterior:
    """A reference posterior: a NumPyro model, its data, and gold-standard moments.

    Attributes:
      name: folder name of the target, e.g. ``"ig_german_credit_numeric_logistic_regression"``.
      model: the NumPyro model, called ``model(**data)``.
      data: preprocessed model keyword arguments (read-only numpy arrays, float32 / int32,
        and python scalars); :meth:`data_as` gives them in float64.
      raw_data: ``data.json`` as loaded.
      reference: site name -> ``{"mean", "sd", ...}`` arrays shaped like the site (scalars as
        0-d arrays), on the constrained scale; posteriordb targets also have ``"q05"``,
        ``"q50"``, ``"q95"``, ``"mcse_mean"`` (posteriordb's) and ``"posteriordb_mean_value"``;
        inference_gym targets have ``"mcse_mean"``.
      draws: site name -> ``(chain, draw, *site_shape)`` reference draws (posteriordb targets:
        10 x 1000), or ``None``.
      meta: ``reference.json``'s ``meta`` block (provenance, inference settings).
      extra: everything else ``reference.json`` holds, arrays gathered the same way (sblri:
        ``extra["exact_semi_analytic"]["moments"]["beta"]["mean"]``; Brownian motion:
        ``extra["locs_exact_gaussian"]`` with ``mean``, ``sd``, ``cov`` and
        ``extra["meanfield_gaussian_vi_optimum"]``).
      requires_x64: the model needs ``jax_enable_x64`` to be evaluated faithfully
        (``gp_pois_regr``).
    """

    name: str
    model: Callable = field(repr=False)
    data: dict = field(repr=False)
    raw_data: dict = field(repr=False)
    reference: dict = field(repr=False)
    draws: dict | None = field(repr=False)
    meta: dict = field(repr=False)
    extra: dict = field(repr=False)
    requires_x64: bool = False

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the sites that have reference moments."""
        return tuple(self.reference)

    def data_as(self, dtype) -> dict:
        """The model kwargs preprocessed again from ``raw_data`` with float arrays in ``dtype``.

        ``data`` is float32; use ``data_as(np.float64)`` for runs under ``jax_enable_x64`` so
        that the data are not rounded to float32 (integer arrays and python scalars are
        unchanged). Returns a fresh, writable dict.
        """
        return _BY_NAME[self.name].prep(self.raw_data, np.dtype(dtype))

    @property
    def num_data(self) -> int:
        """Size ``N`` of the data plate (the leading axis of every array in ``data``)."""
        for v in self.data.values():
            if isinstance(v, np.ndarray) and v.ndim >= 1:
                return int(v.shape[0])
        raise ValueError(f"{self.name}: no array in data")  # pragma: no cover

    def compare(self, samples: Mapping[str, Any], params: Sequence[str] | None = None) -> dict:
        r"""Standardised distance of a sample set's moments to the reference.

        For each parameter, with pooled sample mean :math:`\bar x` and sd :math:`s` (ddof=1,
        over chains and draws) and reference mean / sd :math:`m, \sigma`:

        .. math:: z = |\bar x - m| / \sigma, \qquad r = s / \sigma.

        Args:
          samples: site name -> array of shape ``(chain, draw, *site_shape)``, constrained
            scale (e.g. ``Result.samples`` or ``MCMC.get_samples(group_by_chain=True)``).
          params: the parameters to compare (default: every reference parameter present in
            ``samples``).

        Returns:
          ``{"per_param": {name: {"z": array, "sd_ratio": array}}, "max_abs_z": float,
          "sd_ratio_min": float, "sd_ratio_max": float}``.

        Raises:
          ValueError: a requested parameter has no reference or is absent from ``samples``,
            no parameter in common, or a shape mismatch.
        """
        if params is None:
            names = [p for p in self.reference if p in samples]
            if not names:
                raise ValueError(
                    f"{self.name}: no reference parameter in samples; reference has "
                    f"{list(self.reference)}, samples have {list(samples)}"
                )
        else:
            names = list(params)
            for p in names:
                if p not in self.reference:
                    raise ValueError(
                        f"{self.name}: no reference for {p!r}; have {list(self.reference)}"
                    )
                if p not in samples:
                    raise ValueError(f"{self.name}: {p!r} not in samples")
        per_param = {}
        zs, ratios = [], []
        for p in names:
            ref = self.reference[p]
            x = np.asarray(samples[p], dtype=np.float64)
            shape = np.shape(ref["mean"])
            if x.ndim != 2 + len(shape) or x.shape[2:] != shape:
                raise ValueError(
                    f"{self.name}: samples[{p!r}] has shape {x.shape}, expected "
                    f"(chain, draw) + {shape}"
                )
            flat = x.reshape((-1,) + shape)
            if flat.shape[0] < 2:
                raise ValueError(f"{self.name}: need at least 2 draws of {p!r}")
            z = np.abs(flat.mean(axis=0) - ref["mean"]) / ref["sd"]
            r = flat.std(axis=0, ddof=1) / ref["sd"]
            per_param[p] = {"z": z, "sd_ratio": r}
            zs.append(np.ravel(z))
            ratios.append(np.ravel(r))
        zs, ratios = np.concatenate(zs), np.concatenate(ratios)
        return {
            "per_param": per_param,
            "max_abs_z": float(np.max(zs)),
            "sd_ratio_min": float(np.min(ratios)),
            "sd_ratio_max": float(np.max(ratios)),
        }

    def __repr__(self) -> str:
        shapes = {p: np.shape(s["mean"]) for p, s in self.reference.items()}
        return (
            f"ReferencePosterior(name={self.name!r}, model={self.model.__name__}, "
            f"num_data={self.num_data}, params={shapes}, draws={self.draws is not None})"
        )


def list_references() -> list[str]:
    """Folder names of every reference posterior, in the suite's order."""
    return [s.folder for s in _SPECS]


def _resolve(name: str) -> _Spec:
    if not isinstance(name, str):
        raise TypeError(f"reference name must be a str, got {type(name).__name__}")
    spec = _BY_NAME.get(name)
    if spec is None:
        folded = [s for k, s in _BY_NAME.items() if k.lower() == name.lower()]
        if folded:
            spec = folded[0]
    if spec is None:
        valid = ", ".join(f"{s.folder!r} (alias {s.alias!r})" for s in _SPECS)
        raise ValueError(f"unknown reference posterior {name!r}; valid names: {valid}")
    return spec


def reference(name: str) -> ReferencePosterior:
    """Load a reference posterior by folder name or short alias (loaded lazily, cached).

    Aliases: ``german_credit``, ``eight_schools_noncentered``, ``eight_schools`` (inference_gym,
    centred), ``brownian_motion``, ``arK``, ``gp_pois_regr``, ``low_dim_gauss_mix``,
    ``diamonds``, ``sblri``. See :func:`list_references` for the folder names.

    The returned object is shared between calls: its arrays are read-only.
    """
    return _load(_resolve(name).folder)


@functools.lru_cache(maxsize=None)
def _load(folder: str) -> ReferencePosterior:
    spec = _BY_NAME[folder]
    base = _data_dir().joinpath(folder)
    raw = json.loads(base.joinpath("data.json").read_text(encoding="utf-8"))
    ref_json = json.loads(base.joinpath("reference.json").read_text(encoding="utf-8"))
    table = ref_json["reference"]

    site_keys = [k for k in table if _split_name(k)[0] in spec.params]
    other_keys = [k for k in table if _split_name(k)[0] not in spec.params]
    gathered = _gather_table({k: table[k] for k in site_keys})
    missing = [p for p in spec.params if p not in gathered]
    if missing:
        raise ValueError(f"{folder}: reference.json lacks {missing}")  # pragma: no cover
    ref = {p: _normalise_stats(gathered[p]) for p in spec.params}

    extra = {k: _convert_extra(v) for k, v in ref_json.items() if k not in ("meta", "reference")}
    extra.update({k: _convert_extra(table[k]) for k in other_keys})

    draws = None
    npz_res = base.joinpath("reference_draws.npz")
    if npz_res.is_file():
        with npz_res.open("rb") as fh, np.load(fh) as npz:
            draws = _gather_draws(npz, site_keys)

    return ReferencePosterior(
        name=folder,
        model=spec.model,
        data=_freeze_data(spec.prep(raw)),
        raw_data=raw,
        reference=ref,
        draws=draws,
        meta=ref_json.get("meta", {}),
        extra=extra,
        requires_x64=spec.requires_x64,
    )
