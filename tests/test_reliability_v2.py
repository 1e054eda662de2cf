"""Reliability v2 (issue 17): divergence on a non-finite log density."""

import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb


def _gamma_target():
    """log p = log x - x (Gamma(2, 1)) on the raw x: a step that lands at x < 0 keeps a finite
    state and a finite gradient (1/x - 1) but a NaN log density."""
    return hb.models.from_logdensity(lambda p: jnp.sum(jnp.log(p) - p), lambda p, b: 0.0 * jnp.sum(b),
                                     np.zeros((4, 1), np.float32), params=jnp.ones(1))


@pytest.mark.parametrize("mode", ["stop", "restart", "flag"])
def test_a_nan_log_density_with_a_finite_gradient_is_a_divergence(mode):
    with pytest.warns(RuntimeWarning, match="non-finite state or log density"):
        r = hb.sample(_gamma_target(), hb.samplers.sgld(0.3), num_samples=2000, num_chains=2, seed=1,
                      init=jnp.ones(1), on_divergence=mode, progress_bar=False)
    x = r.samples["theta"][..., 0]
    div = r.stats["diverging"]
    assert div.any(axis=1).all()
    # Every draw at x <= 0 (a NaN log density) is flagged in every mode.
    assert div[x <= 0].all()
    assert (x[~div] > 0).all()
    if mode != "flag":
        # The chain falls back to its last state with a finite log density: at most one draw (the
        # state whose log density turned out NaN at the next step) is outside the support.
        assert (x <= 0).sum(axis=1).max() <= (1 if mode == "stop" else div.sum())
    if mode == "stop":
        first = np.argmax(div, axis=1)
        for c in range(2):
            np.testing.assert_array_equal(x[c, first[c] + 1:], x[c, first[c] + 1])
            assert x[c, first[c] + 1] > 0
    if mode == "restart":
        # The chains go on moving after a rejected step.
        assert all(len(np.unique(x[c, np.argmax(div[c, :]):])) > 10 for c in range(2))


# ----------------------------------------------------------------------------------------
# Class 2: a resume is refused when the model is not the same
# ----------------------------------------------------------------------------------------
def _regression(scale, mean=None):
    import numpyro
    import numpyro.distributions as dist

    def model(X, y, prior_scale=1.0, prior_mean=None):
        loc = 0.0 if prior_mean is None else prior_mean
        w = numpyro.sample("w", dist.Normal(loc, prior_scale).expand([X.shape[1]]).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ w, scale), obs=y)

    return model


def _edited_body():
    import numpyro
    import numpyro.distributions as dist

    def model(X, y, prior_scale=1.0, prior_mean=None):  # same name, another likelihood
        w = numpyro.sample("w", dist.Normal(0.0, prior_scale).expand([X.shape[1]]).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.StudentT(4.0, X @ w, 1.0), obs=y)

    return model


def test_a_resume_with_another_model_or_other_non_data_arguments_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -1.0, 0.5]) + rng.normal(size=60)).astype(np.float32)
    kw = dict(batch_size=10, num_samples=20, chunk_size=5, progress_bar=False)
    path = str(tmp_path / "c")
    base = _regression(1.0)
    hb.sample(base, hb.samplers.sgld(1e-3), data={"X": X, "y": y}, checkpoint=path, **kw)
    cases = [
        (_edited_body(), {"X": X, "y": y}),                                   # edited body, same name
        (_regression(2.0), {"X": X, "y": y}),                                 # a constant in the body
        (base, {"X": X, "y": y, "prior_scale": 3.0}),                         # a non-data scalar argument
        (base, {"X": X, "y": y, "prior_mean": np.ones(3, np.float32)}),       # a non-data array argument
    ]
    for model, data in cases:
        with pytest.raises(ValueError, match="different run.*model"):
            hb.sample(model, hb.samplers.sgld(1e-3), data=data, resume=path, **kw)
    # The same model and arguments resume (the finished run's draws come back).
    again = hb.sample(base, hb.samplers.sgld(1e-3), data={"X": X, "y": y}, resume=path, **kw)
    assert again.samples["w"].shape == (1, 20, 3)


def test_a_resume_under_another_jax_version_warns_instead_of_comparing_the_jaxpr(tmp_path, monkeypatch):
    import json

    X = np.random.default_rng(1).normal(size=(40, 2)).astype(np.float32)
    y = X[:, 0].copy()
    kw = dict(data={"X": X, "y": y}, batch_size=8, num_samples=10, chunk_size=5, progress_bar=False)
    path = str(tmp_path / "c")
    first = hb.sample(_regression(1.0), hb.samplers.sgld(1e-3), checkpoint=path, **kw)
    meta_path = tmp_path / "c" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["settings"]["jax"] = "0.0.1"
    meta["settings"]["model"] = "another-printing-of-the-same-model"
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="written with JAX 0.0.1"):
        again = hb.sample(_regression(1.0), hb.samplers.sgld(1e-3), resume=path, **kw)
    np.testing.assert_array_equal(again.samples["w"], first.samples["w"])
