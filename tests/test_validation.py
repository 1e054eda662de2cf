"""Bad input gets a clear error naming the problem, before any compilation."""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import heatbath as hb

rng = np.random.default_rng(0)
X = rng.normal(size=(100, 3)).astype(np.float32)
Y = (rng.random(100) < 0.5).astype(np.float32)


def logistic(X, y):
    w = numpyro.sample("w", dist.Normal(0, 1).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)


def no_plate(X, y):
    w = numpyro.sample("w", dist.Normal(0, 1).expand([X.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Bernoulli(logits=X @ w).to_event(1), obs=y)


def discrete_latent(X, y):
    k = numpyro.sample("k", dist.Bernoulli(0.5))
    w = numpyro.sample("w", dist.Normal(0, 1).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=X @ w + k), obs=y)


@pytest.fixture
def no_compile(monkeypatch):
    """Fail the test if anything is compiled by the driver's jit/lower path."""
    import heatbath.drivers.loop as loop

    def boom(*a, **k):
        raise AssertionError("compiled before rejecting bad input")

    monkeypatch.setattr(loop, "make_chunk", boom)


S = hb.samplers.sgld(1e-3)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(batch_size=101), ValueError, "larger than the data"),
        (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
        (dict(batch_size=-5), ValueError, "batch_size must be >= 1"),
        (dict(batch_size=2.5), TypeError, "batch_size must be an integer"),
        (dict(num_samples=0), ValueError, "num_samples must be >= 1"),
        (dict(num_samples=-1), ValueError, "num_samples must be >= 1"),
        (dict(thinning=0), ValueError, "thinning must be >= 1"),
        (dict(num_chains=0), ValueError, "num_chains must be >= 1"),
        (dict(num_warmup=-1), ValueError, "num_warmup must be >= 0"),
    ],
)
def test_bad_driver_arguments(no_compile, kwargs, exc, match):
    args = dict(data={"X": X, "y": Y}, num_samples=10, progress_bar=False)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        hb.sample(logistic, S, **args)


def test_nan_and_inf_in_data(no_compile):
    Xn = X.copy()
    Xn[7, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        hb.sample(logistic, S, data={"X": Xn, "y": Y}, batch_size=10, num_samples=10)
    Yi = Y.copy()
    Yi[3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        hb.sample(logistic, S, data={"X": X, "y": Yi}, num_samples=10)
    with pytest.raises(ValueError, match=r"'X'.*index \(7, 1\)"):
        hb.models.from_logdensity(lambda p: 0.0, lambda p, b: 0.0, {"X": Xn})


def test_unequal_lengths(no_compile):
    with pytest.raises(ValueError, match="unequal numbers of rows"):
        hb.models.from_logdensity(lambda p: 0.0, lambda p, b: 0.0, {"X": X, "y": Y[:50]})
    t = hb.models.from_logdensity(lambda p: 0.0, lambda p, b: 0.0, {"X": X, "y": Y})
    with pytest.raises(ValueError, match="unequal"):
        t.with_data({"X": X, "y": Y[:99]})


def test_model_without_data_plate_refuses_minibatches(no_compile):
    with pytest.raises(ValueError, match="no data plate"):
        hb.sample(no_plate, S, data={"X": X, "y": Y}, batch_size=10, num_samples=10)


def test_discrete_latent_site(no_compile):
    with pytest.raises(ValueError, match=r"discrete latent site\(s\) \['k'\]"):
        hb.sample(discrete_latent, S, data={"X": X, "y": Y}, num_samples=10)


def test_bad_sampler_and_model_types(no_compile):
    with pytest.raises(TypeError, match="heatbath Sampler"):
        hb.sample(logistic, "sgld", data={"X": X, "y": Y}, num_samples=10)
    with pytest.raises(TypeError, match="NumPyro model"):
        hb.sample(42, S, num_samples=10)
    with pytest.raises(TypeError, match="dict of keyword arguments"):
        hb.sample(logistic, S, data=X, num_samples=10)


def test_from_logdensity_checks_its_functions():
    with pytest.raises(ValueError, match="sum over the batch"):
        hb.models.from_logdensity(lambda p: jnp.sum(p), lambda p, b: b @ p, jnp.ones((5, 2)), params=jnp.zeros(2))
    with pytest.raises(ValueError, match="logprior must return a scalar"):
        hb.models.from_logdensity(lambda p: p, lambda p, b: jnp.sum(b @ p), jnp.ones((5, 2)), params=jnp.zeros(2))
    t = hb.models.from_logdensity(lambda p: -jnp.sum(p**2), lambda p, b: jnp.sum(b @ p), jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="init="):
        hb.sample(t, S, num_samples=5)
    r = hb.sample(t, S, num_samples=5, init=jnp.zeros(2), progress_bar=False)
    assert r.samples["theta"].shape == (1, 5, 2)


def test_init_outside_support_and_wrong_structure(no_compile):
    def model(y):
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(0, s), obs=y)

    with pytest.raises(ValueError, match="unknown site"):
        hb.sample(model, S, data={"y": Y}, num_samples=5, init={"sigma": 1.0})
    t = hb.models.from_logdensity(lambda p: -jnp.sum(p["a"] ** 2), lambda p, b: 0.0 * jnp.sum(b), Y,
                                  params={"a": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['b'\]"):
        hb.sample(t, S, num_samples=5, init={"b": jnp.zeros(2)})
    with pytest.raises(ValueError, match="tree structure"):
        hb.sample(t, S, num_samples=5, init=[jnp.zeros(2)])
    tl = hb.models.from_logdensity(lambda p: jnp.log(p[0]), lambda p, b: 0.0 * jnp.sum(b), Y, params=jnp.ones(1))
    with pytest.raises(ValueError, match="not finite at the initial position"):
        hb.sample(tl, S, num_samples=5, init=-jnp.ones(1))
