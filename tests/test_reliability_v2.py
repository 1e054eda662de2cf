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
