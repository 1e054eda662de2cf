"""The curvature rows: all rows up to ``CURVATURE_ROWS``, a uniform subset without replacement
beyond; from ``HOST_CHOICE_MIN`` rows on drawn on the host (O(rows), not a permutation of N)."""

import jax
import jax.numpy as jnp
import numpy as np

import heatbath as hb
from heatbath.drivers import measurement as M


def test_host_rows_are_a_uniform_subset_without_replacement():
    N, m = M.HOST_CHOICE_MIN, M.CURVATURE_ROWS
    counts = np.zeros(N)
    for s in range(200):
        idx = M._host_rows(jax.random.key(s), N)
        assert idx.shape == (m,) and idx.dtype == np.int32
        assert np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < N  # sorted, distinct, in range
        counts[idx] += 1
    np.testing.assert_array_equal(M._host_rows(jax.random.key(5), N), M._host_rows(jax.random.key(5), N))
    assert not np.array_equal(M._host_rows(jax.random.key(5), N), M._host_rows(jax.random.key(6), N))
    # Legacy uint32 keys work too.
    assert M._host_rows(jax.random.PRNGKey(5), N).shape == (m,)
    # Inclusion probability m / N for every row: over 200 draws a row's count is Binomial(200, 1/32).
    p = m / N
    assert abs(counts.mean() - 200 * p) < 1e-9  # exact: m rows per draw
    # Rows split into 64 blocks: each block's count is ~ 200 m / 64 +- its binomial sd (no region favoured).
    blocks = counts.reshape(64, -1).sum(axis=1)
    expect = 200 * m / 64
    assert np.all(np.abs(blocks - expect) < 5 * np.sqrt(expect))


def test_curvature_rows_beyond_the_host_threshold_are_the_data_at_the_drawn_indices():
    N = M.HOST_CHOICE_MIN + 3
    x = np.arange(N, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    target = hb.models.from_logdensity(lambda w: -0.5 * jnp.sum(w * w), lambda w, b: -0.5 * jnp.sum((b - w) ** 2), x,
                                       params=jnp.zeros(2))
    key = jax.random.key(1)
    rows, count = M.curvature_rows(target, key)
    assert count == M.CURVATURE_ROWS
    np.testing.assert_array_equal(np.asarray(rows)[:, 0], M._host_rows(key, N).astype(np.float32))
    # The measurement's inputs draw the same rows from the same key.
    fn = M._measurement_inputs(target, 16, 2, True)
    r2, batches, vkeys = fn(key, target.data)
    np.testing.assert_array_equal(np.asarray(r2), np.asarray(rows))
    assert batches.shape == (M.NUM_BATCHES, 16, 2) and vkeys.shape[0] == 2
