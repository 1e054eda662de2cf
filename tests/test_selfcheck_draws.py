"""The end-of-run checks' draws: the coordinates R-hat and ESS read on a large model are picked
before the float64 conversion, and are the same ones as converting everything first."""

import numpy as np

from heatbath.drivers import selfcheck


def _everything_then_pick(samples, chains, max_coords):
    cols = [np.asarray(v)[chains].reshape(len(chains), np.shape(v)[1], -1).astype(np.float64)
            for v in samples.values() if np.issubdtype(np.asarray(v).dtype, np.floating)]
    x = np.concatenate(cols, axis=2)
    if x.shape[2] > max_coords:
        x = x[:, :, np.linspace(0, x.shape[2] - 1, max_coords).astype(int)]
    return x


def test_picked_coordinates_equal_those_of_the_full_conversion():
    rng = np.random.default_rng(0)
    samples = {
        "w": rng.normal(size=(3, 7, 40, 5)).astype(np.float32),  # 200 coordinates
        "n": rng.integers(0, 5, size=(3, 7, 11)),  # an integer site: left out
        "b": rng.normal(size=(3, 7, 9)).astype(np.float32),
        "s": rng.normal(size=(3, 7)).astype(np.float32),  # a scalar site
    }
    for chains in ([0, 1, 2], [2, 0], np.array([1])):
        for cap in (None, 1, 2, 13, 209, 210, 1000):
            got = selfcheck._flat_draws(samples, chains, cap)
            want = _everything_then_pick(samples, chains, cap if cap is not None else 10**9)
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, want)
    assert selfcheck._flat_draws({"n": samples["n"]}, [0, 1], 5).shape == (2, 0, 0)


def test_from_logdensity_checks_its_functions_on_shapes_only():
    """The example-params check of ``from_logdensity`` runs on a 2-row batch's shapes (no eager
    slice of the data): a shape mismatch is still a clear error, and one row is enough."""
    import jax.numpy as jnp
    import pytest

    import heatbath as hb

    def loglik(p, b):
        return jnp.sum(b["x"] @ p)

    with pytest.raises(ValueError, match="fail on the example params and a 2-row batch"):
        hb.models.from_logdensity(lambda p: -jnp.sum(p**2), loglik, {"x": jnp.ones((5, 3))}, params=jnp.zeros(4))
    t = hb.models.from_logdensity(lambda p: -jnp.sum(p**2), loglik, {"x": jnp.ones((1, 3))}, params=jnp.zeros(3))
    assert t.num_data == 1
