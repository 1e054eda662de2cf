"""kernels.threefry.normal: jax.random.normal's values bit for bit, in one fused pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heatbath.kernels import noise, threefry, tree

SHAPES = [(), (0,), (1,), (7,), (3, 4, 5), (784, 100), (2, 1, 33)]


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


@pytest.mark.parametrize("shape", SHAPES)
def test_equals_jax_random_normal_bit_for_bit(shape):
    for seed in (0, 1, 123, 2**31 - 1):
        key = jax.random.fold_in(jax.random.key(seed), 7)
        ref = jax.random.normal(key, shape, jnp.float32)
        assert _same(threefry.normal(key, shape, jnp.float32), ref)  # eager
        assert _same(jax.jit(threefry.normal, static_argnums=(1, 2))(key, shape, jnp.float32), ref)


@pytest.mark.parametrize("shape", [(), (1,), (5,), (21_000,), (4, 9)])
def test_bits_equal_jax_random_bits(shape):
    for seed in (0, 42):
        key = jax.random.key(seed)
        ref = jax.random.bits(key, shape, jnp.uint32)
        assert _same(jax.jit(threefry.bits, static_argnums=1)(key, shape), ref)
    key = jax.random.key(1, impl="rbg")  # another generator: jax.random.bits itself
    assert _same(threefry.bits(key, shape), jax.random.bits(key, shape, jnp.uint32))


def test_float64_bit_for_bit():
    with jax.enable_x64(True):
        for seed in range(5):
            key = jax.random.key(seed)
            ref = jax.random.normal(key, (3, 257), jnp.float64)
            got = jax.jit(lambda k: threefry.normal(k, (3, 257), jnp.float64))(key)
            assert got.dtype == jnp.float64 and _same(got, ref)


def test_under_vmap_over_keys():
    keys = jax.random.split(jax.random.key(3), 5)
    ref = jax.vmap(lambda k: jax.random.normal(k, (11, 3)))(keys)
    got = jax.vmap(lambda k: threefry.normal(k, (11, 3), jnp.float32))(keys)
    assert _same(got, ref)


def test_values_over_many_keys_cover_the_tails():
    # 2 million values: the same bits as jax.random.normal, so the same law; its tails reach 5 sd
    key = jax.random.key(11)
    z = np.asarray(jax.jit(lambda k: threefry.normal(k, (2_000_000,), jnp.float32))(key), np.float64)
    assert _same(z.astype(np.float32), jax.random.normal(key, (2_000_000,)))
    assert abs(z.mean()) < 5 / np.sqrt(z.size) and abs(z.var() - 1) < 5 * np.sqrt(2 / z.size)
    assert np.abs(z).max() > 4.5 and np.all(np.isfinite(z))


def test_the_fast_path_has_no_threefry_loop():
    key = jax.random.key(0)
    jaxpr = str(jax.make_jaxpr(lambda k: threefry.normal(k, (5, 4), jnp.float32))(key))
    assert "random_bits" not in jaxpr and "while" not in jaxpr
    assert "random_bits" in str(jax.make_jaxpr(lambda k: jax.random.normal(k, (5, 4)))(key))


@pytest.mark.parametrize("case", ["rbg", "float16", "bfloat16", "not partitionable", "raw key"])
def test_other_generators_dtypes_and_layouts_take_jax_random_normal(case):
    key = jax.random.key(5)
    dtype = jnp.float32
    if case == "rbg":
        key = jax.random.key(5, impl="rbg")
    elif case in ("float16", "bfloat16"):
        dtype = jnp.dtype(case)
    elif case == "raw key":
        key = jax.random.PRNGKey(5)
    if case == "not partitionable":
        with jax.threefry_partitionable(False):
            ref = jax.random.normal(key, (9, 4), dtype)
            got = threefry.normal(key, (9, 4), dtype)
    else:
        ref = jax.random.normal(key, (9, 4), dtype)
        got = threefry.normal(key, (9, 4), dtype)
    assert _same(got, ref)


def test_normal_like_and_brownian_draws_equal_per_leaf_jax_normals():
    like = {"w": jnp.zeros((6, 5)), "b": jnp.zeros((5,)), "s": jnp.zeros(())}
    key = jax.random.key(9)
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(key, len(leaves))
    ref = [jax.random.normal(k, jnp.shape(x)) for k, x in zip(keys, leaves)]
    assert all(_same(a, b) for a, b in zip(jax.tree.leaves(tree.normal_like(key, like)), ref))
    draws = noise.brownian().draws(key, like, 3)
    ref3 = [jax.random.normal(k, (3,) + jnp.shape(x)) for k, x in zip(keys, leaves)]
    for i in range(3):
        assert all(_same(a, b[i]) for a, b in zip(jax.tree.leaves(draws[i]), ref3))


def test_host_block_matches_the_traced_block():
    rng = np.random.default_rng(0)
    k1, k2, x0, x1 = (rng.integers(0, 2**32, size=50, dtype=np.uint32) for _ in range(4))
    with np.errstate(over="ignore"):
        host = threefry.block(k1, k2, x0, x1)
    traced = jax.jit(threefry.block)(*(jnp.asarray(v) for v in (k1, k2, x0, x1)))
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(host, traced))
