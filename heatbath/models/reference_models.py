"""The NumPyro models of the bundled reference posteriors (see :mod:`heatbath.models.references`).

Each is a plain NumPyro model whose log density equals the source Stan program's up to a
constant, with every observation in the plate named :data:`DATA_PLATE`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

__all__ = [
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
