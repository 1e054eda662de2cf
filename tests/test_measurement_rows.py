"""The curvature rows: all rows up to ``CURVATURE_ROWS``, a uniform subset without replacement
beyond, drawn on the host (O(rows), not a permutation of N, and no threefry program to compile);
the measurement's minibatches likewise; its start vectors from hashed counters."""

import jax
import pytest
import jax.numpy as jnp
import numpy as np

import heatbath as hb
from heatbath.drivers import measurement as M


def test_host_rows_are_a_uniform_subset_without_replacement():
    N, m = 1 << 17, M.CURVATURE_ROWS
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


@pytest.mark.parametrize("N", [M.CURVATURE_ROWS + 5, (1 << 17) + 3])
def test_curvature_rows_are_the_data_at_the_drawn_indices(N):
    x = np.arange(N, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    target = hb.models.from_logdensity(lambda w: -0.5 * jnp.sum(w * w), lambda w, b: -0.5 * jnp.sum((b - w) ** 2), x,
                                       params=jnp.zeros(2))
    key = jax.random.key(1)
    rows, count = M.curvature_rows(target, key)
    assert count == M.CURVATURE_ROWS
    np.testing.assert_array_equal(np.asarray(rows)[:, 0], M._host_rows(key, N).astype(np.float32))
    # The measurement's inputs: its rows from fold_in(key, 0), its minibatches from fold_in(key, 1)
    # (uniform with replacement), the chains' keys fold_in(fold_in(key, 2), c).
    fn = M._measurement_inputs(target, 16, 2, True)
    r2, batches, vkeys = fn(key, target.data)
    np.testing.assert_array_equal(np.asarray(r2)[:, 0], M._host_rows(jax.random.fold_in(key, 0), N).astype(np.float32))
    idx = M._host_batches(jax.random.fold_in(key, 1), N, 16)
    assert idx.shape == (M.NUM_BATCHES, 16) and idx.min() >= 0 and idx.max() < N
    np.testing.assert_array_equal(np.asarray(batches)[..., 0], idx.astype(np.float32))
    np.testing.assert_array_equal(jax.random.key_data(vkeys),
                                  jax.random.key_data(jax.vmap(jax.random.fold_in, (None, 0))(
                                      jax.random.fold_in(key, 2), jnp.arange(2))))
