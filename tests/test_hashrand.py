"""Hashed randomness (heatbath.kernels.hashrand): the measurements' start vectors and the checks'
Hutchinson probes. Its statistics, its determinism, and that the programs using it contain no
threefry (whose compile cost is what it removes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb
from heatbath.drivers import measurement as M
from heatbath.drivers import selfcheck
from heatbath.kernels import gradients, hashrand

N = 1 << 20


def _signs(b):
    return 1.0 - 2.0 * (np.asarray(b) >> 31)


def test_bits_are_fair_deterministic_and_unrelated_across_words_and_streams():
    w = hashrand.words(jax.random.key(3))
    b = np.asarray(hashrand.bits(w, (N,), 0))
    np.testing.assert_array_equal(b, np.asarray(hashrand.bits(w, (N,), 0)))
    # Every bit position is 1 with probability 1/2: sd of a frequency 0.5 / sqrt(N) = 4.9e-4.
    freq = np.array([((b >> i) & 1).mean() for i in range(32)])
    assert np.all(np.abs(freq - 0.5) < 5 * 0.5 / np.sqrt(N)), freq
    # The sign sequences of other words, other streams and the next element are uncorrelated
    # (sd of a correlation 1 / sqrt(N) ~ 1e-3).
    others = [hashrand.bits(hashrand.words(jax.random.key(4)), (N,), 0), hashrand.bits(w, (N,), 1),
              hashrand.bits(w + jnp.uint32(1), (N,), 0)]
    s = _signs(b)
    for o in others:
        assert abs(np.mean(s * _signs(o))) < 5 / np.sqrt(N)
    assert abs(np.mean(s[1:] * s[:-1])) < 5 / np.sqrt(N)
    assert not np.array_equal(b, np.asarray(others[0]))


def test_words_of_typed_raw_and_rbg_keys():
    k = jax.random.key(7)
    np.testing.assert_array_equal(hashrand.words(k), jax.random.key_data(k))
    np.testing.assert_array_equal(hashrand.words(jax.random.key_data(k)), jax.random.key_data(k))
    assert hashrand.words(jax.random.key(7, impl="rbg")).shape == (2,)
    batched = jax.random.split(k, 5)
    assert hashrand.words(batched).shape == (5, 2)
    with pytest.raises(ValueError, match="32-bit counter"):
        hashrand.bits(hashrand.words(k), (1 << 16, 1 << 16))


def test_uniform_and_sign_trees_have_their_moments_and_dtypes():
    w = hashrand.words(jax.random.key(0))
    tree = {"a": jnp.zeros((N // 2,), jnp.float32), "b": jnp.zeros((N // 4, 2), jnp.float32)}
    u = hashrand.uniform_like(w, tree, stream=5)
    assert u["a"].dtype == jnp.float32 and u["b"].shape == (N // 4, 2)
    assert hashrand.uniform_like(w, jnp.zeros(3, jnp.bfloat16)).dtype == jnp.bfloat16
    for x in jax.tree.leaves(u):
        x = np.asarray(x, np.float64).ravel()
        assert -1.0 <= x.min() and x.max() < 1.0
        # Uniform(-1, 1): mean 0 (sd 0.577 / sqrt(n)), variance 1/3 (sd of the estimate 0.298 / sqrt(n)).
        assert abs(x.mean()) < 5 * 0.577 / np.sqrt(x.size)
        assert abs(x.var() - 1 / 3) < 5 * 0.298 / np.sqrt(x.size)
    # Leaves are on streams of their own: a's values are not b's.
    assert abs(np.corrcoef(np.asarray(u["a"][: N // 2]), np.asarray(u["b"]).ravel())[0, 1]) < 5 / np.sqrt(N // 2)
    z = hashrand.rademacher_like(w, tree, stream=2)
    for x in jax.tree.leaves(z):
        x = np.asarray(x)
        assert set(np.unique(x)) == {-1.0, 1.0}
        assert abs(x.mean()) < 5 / np.sqrt(x.size)


def test_hutchinson_with_hashed_signs_is_unbiased():
    # E[z^T A z] = tr A for independent fair signs; over 4,000 probes (one stream each) the mean
    # lies within 4 standard errors of the trace.
    rng = np.random.default_rng(0)
    B = rng.normal(size=(30, 30))
    A = jnp.asarray(B @ B.T / 30 + np.diag(rng.uniform(0, 3, 30)))
    w = hashrand.words(jax.random.key(11))
    z = jax.vmap(lambda j: hashrand.rademacher_like(w, jnp.zeros(30), stream=j))(jnp.arange(4000, dtype=jnp.uint32))
    q = np.asarray(jnp.einsum("ni,ij,nj->n", z, A, z), np.float64)
    se = q.std(ddof=1) / np.sqrt(len(q))
    assert abs(q.mean() - float(jnp.trace(A))) < 4 * se, (q.mean(), float(jnp.trace(A)), se)


def _no_threefry(lowered_text):
    # JAX's threefry lowers to a function named threefry2x32; heatbath's fused normals (and any
    # threefry written in jnp) rotate words with left shifts, which nothing else here uses.
    return "threefry" not in lowered_text and "shift_left" not in lowered_text


def test_the_measurement_and_the_configurational_check_compile_no_threefry():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    y = (X @ np.ones(3) + rng.normal(size=300) > 0).astype(np.float32)

    def loglik(w, batch):
        Xb, yb = batch
        z = Xb @ w
        return jnp.sum(yb * z - jax.nn.softplus(z))

    target = hb.models.from_logdensity(lambda w: -0.5 * jnp.sum(w * w), loglik, (X, y), params=jnp.zeros(3))
    est = gradients.naive().build(target.terms, target.num_data)
    positions = jnp.zeros((2, 3))
    one, meta = M.measure(target, est, (), positions, jax.random.key(0), 32, 1.0, lambda m2: None)
    fn = jax.vmap(one, in_axes=(0, None, 0, None, None, None))
    args = (positions, (), meta["vkeys"], None, meta["row_data"], meta["batch_data"])
    assert _no_threefry(jax.jit(fn).lower(*args).as_text())
    # The measured eigenvalues are those of the model: the Hessian of the negative log density at 0
    # is I + sum_i x_i x_i^T / 4 (logistic curvature 1/4), on all 300 rows.
    out = jax.jit(fn)(*args)
    H = np.eye(3) + X.T @ X / 4
    # (20 power iterations from a random start: within 2% here, and from below.)
    top = np.linalg.eigvalsh(H)[-1]
    lam_h = np.asarray(out["lam_h"], np.float64)
    assert np.all(lam_h <= top * (1 + 1e-5)) and np.all(lam_h > 0.98 * top), (lam_h, top)
    np.testing.assert_allclose(np.asarray(out["lam_min"]), np.linalg.eigvalsh(H)[0], rtol=2e-2)

    draws = jnp.asarray(rng.normal(size=(2, 64, 3)).astype(np.float32))
    conf = selfcheck._configurational(target, draws, [0, 1], jax.random.key(1))
    assert conf["points"] == 64
    tconf = target.memo("selfcheck_tconf", None)
    rows, _ = M.curvature_rows(target, jax.random.key(2))
    pts = draws.reshape(-1, 3)
    assert _no_threefry(tconf.lower(pts, jax.random.split(jax.random.key(0), 128), rows).as_text())
