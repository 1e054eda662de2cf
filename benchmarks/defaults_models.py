"""NumPyro models nobody designed heatbath around, with synthetic data (fixed seeds, no downloads).

Each entry: ``name -> (model, data dict, sites to compare)``; ``sites`` None compares every
latent site. Used by ``benchmarks/defaults_eval.py`` (issue 18's "safe by default" table).
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist


def random_intercepts(x, group, y, num_groups):
    """Hierarchical regression: y_ij = a_j + b x_ij + noise, a_j ~ N(mu, tau)."""
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfNormal(2))
    b = numpyro.sample("b", dist.Normal(0, 5))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2))
    with numpyro.plate("groups", num_groups):
        z = numpyro.sample("z", dist.Normal(0, 1))
    a = numpyro.deterministic("a", mu + tau * z)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(a[group] + b * x, sigma), obs=y)


def poisson_glm(X, y):
    beta = numpyro.sample("beta", dist.Normal(0, 1).expand([X.shape[1]]).to_event(1))
    alpha = numpyro.sample("alpha", dist.Normal(0, 2))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Poisson(jnp.exp(alpha + X @ beta)), obs=y)


def mvn_lkj(y):
    d = y.shape[1]
    L = numpyro.sample("L", dist.LKJCholesky(d, 2.0))
    scale = numpyro.sample("scale", dist.HalfNormal(2.0).expand([d]).to_event(1))
    mu = numpyro.sample("mu", dist.Normal(0, 5).expand([d]).to_event(1))
    numpyro.deterministic("corr01", (L @ L.T)[0, 1])
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.MultivariateNormal(mu, scale_tril=scale[:, None] * L), obs=y)


def horseshoe(X, y):
    d = X.shape[1]
    tau = numpyro.sample("tau", dist.HalfCauchy(1.0))
    with numpyro.plate("coef", d):
        lam = numpyro.sample("lam", dist.HalfCauchy(1.0))
        beta = numpyro.sample("beta", dist.Normal(0, 1))
    w = numpyro.deterministic("w", tau * lam * beta)
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w, sigma), obs=y)


def bnn(X, y, X_test):
    """A 1-hidden-layer (8 tanh units) regression MLP; compared on its predictions at X_test."""
    h = 8
    w1 = numpyro.sample("w1", dist.Normal(0, 1).expand([X.shape[1], h]).to_event(2))
    b1 = numpyro.sample("b1", dist.Normal(0, 1).expand([h]).to_event(1))
    w2 = numpyro.sample("w2", dist.Normal(0, 1).expand([h]).to_event(1))
    b2 = numpyro.sample("b2", dist.Normal(0, 1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.deterministic("f_test", jnp.tanh(X_test @ w1 + b1) @ w2 + b2)
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.tanh(X @ w1 + b1) @ w2 + b2, sigma), obs=y)


def dirichlet_categorical(y, k):
    p = numpyro.sample("p", dist.Dirichlet(jnp.ones(k)))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Categorical(probs=p), obs=y)


def panel(x, unit, time, y, num_units, num_times):
    """Two crossed random effects (unit and time) and a slope."""
    s_u = numpyro.sample("s_u", dist.HalfNormal(1.0))
    s_t = numpyro.sample("s_t", dist.HalfNormal(1.0))
    b = numpyro.sample("b", dist.Normal(0, 2))
    c = numpyro.sample("c", dist.Normal(0, 5))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("units", num_units):
        u = numpyro.sample("u", dist.Normal(0, 1))
    with numpyro.plate("times", num_times):
        t = numpyro.sample("t", dist.Normal(0, 1))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(c + b * x + s_u * u[unit] + s_t * t[time], sigma), obs=y)


def mixture3(y):
    """Three-component Gaussian mixture, ordered means (the modes the issue reports)."""
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
    mu = numpyro.sample("mu", dist.TransformedDistribution(
        dist.Normal(0, 5).expand([3]).to_event(1), dist.transforms.OrderedTransform()))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0).expand([3]).to_event(1))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.MixtureSameFamily(dist.Categorical(w), dist.Normal(mu, sigma)), obs=y)


def student_t_regression(X, y):
    beta = numpyro.sample("beta", dist.Normal(0, 2).expand([X.shape[1]]).to_event(1))
    nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.StudentT(nu, X @ beta, sigma), obs=y)


def _data():
    rng = np.random.default_rng(20261202)
    out = {}
    # random intercepts: 20 groups x 50 rows
    g = np.repeat(np.arange(20), 50)
    x = rng.normal(size=1000)
    a = 1.0 + 0.8 * rng.normal(size=20)
    out["random_intercepts"] = (random_intercepts, dict(
        x=x.astype(np.float32), group=g.astype(np.int32),
        y=(a[g] + 0.5 * x + 0.7 * rng.normal(size=1000)).astype(np.float32), num_groups=20), ["mu", "tau", "b", "sigma", "a"])
    X = rng.normal(size=(2000, 5)) * 0.5
    out["poisson_glm"] = (poisson_glm, dict(
        X=X.astype(np.float32), y=rng.poisson(np.exp(0.5 + X @ np.array([0.3, -0.2, 0.5, 0.0, 0.1]))).astype(np.float32)), None)
    C = np.array([[1.0, 0.6, 0.2], [0.6, 1.0, -0.3], [0.2, -0.3, 1.0]])
    s = np.array([1.0, 2.0, 0.5])
    Y = rng.multivariate_normal([0.5, -1.0, 2.0], C * np.outer(s, s), size=500)
    out["mvn_lkj"] = (mvn_lkj, dict(y=Y.astype(np.float32)), ["scale", "mu", "corr01"])
    X = rng.normal(size=(400, 20))
    w = np.zeros(20)
    w[:3] = [2.0, -1.5, 1.0]
    out["horseshoe"] = (horseshoe, dict(X=X.astype(np.float32), y=(X @ w + 0.5 * rng.normal(size=400)).astype(np.float32)),
                        ["w", "sigma"])
    X = rng.uniform(-2, 2, size=(500, 1))
    Xt = np.linspace(-2, 2, 9)[:, None]
    out["bnn"] = (bnn, dict(X=X.astype(np.float32), y=(np.sin(2 * X[:, 0]) + 0.2 * rng.normal(size=500)).astype(np.float32),
                            X_test=Xt.astype(np.float32)), ["f_test", "sigma"])
    out["dirichlet_categorical"] = (dirichlet_categorical, dict(
        y=rng.choice(4, size=2000, p=[0.1, 0.2, 0.3, 0.4]).astype(np.int32), k=4), None)
    nu, nt = 30, 10
    unit, time = np.repeat(np.arange(nu), nt * 4), np.tile(np.repeat(np.arange(nt), 4), nu)
    x = rng.normal(size=unit.size)
    yy = 1.0 + 0.5 * x + 0.8 * rng.normal(size=nu)[unit] + 0.4 * rng.normal(size=nt)[time] + 0.5 * rng.normal(size=unit.size)
    out["panel"] = (panel, dict(x=x.astype(np.float32), unit=unit.astype(np.int32), time=time.astype(np.int32),
                                y=yy.astype(np.float32), num_units=nu, num_times=nt), ["s_u", "s_t", "b", "c", "sigma"])
    comp = rng.choice(3, size=1000, p=[0.3, 0.4, 0.3])
    out["mixture3"] = (mixture3, dict(y=(np.array([-4.0, 0.0, 5.0])[comp] + np.array([1.0, 0.7, 1.2])[comp]
                                         * rng.normal(size=1000)).astype(np.float32)), None)
    X = np.c_[np.ones(800), rng.normal(size=(800, 3))]
    out["student_t"] = (student_t_regression, dict(
        X=X.astype(np.float32), y=(X @ np.array([1.0, 0.5, -0.5, 0.0]) + 0.5 * rng.standard_t(4, size=800)).astype(np.float32)),
        None)
    return out


MODELS = _data()
