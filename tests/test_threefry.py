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


def test_the_fast_path_has_no_threefry_loop():
    key = jax.random.key(0)
    for fn in (lambda k: threefry.normal(k, (5, 4), jnp.float32), lambda k: threefry.bits(k, (5, 4))):
        jaxpr = str(jax.make_jaxpr(fn)(key))
        assert "random_bits" not in jaxpr and "while" not in jaxpr
    assert "random_bits" in str(jax.make_jaxpr(lambda k: jax.random.normal(k, (5, 4)))(key))


@pytest.mark.parametrize("case", ["rbg", "float16", "bfloat16", "not partitionable", "raw key", "float64 without x64"])
def test_other_generators_dtypes_and_layouts_take_jax_random_normal(case):
    key = jax.random.key(5)
    dtype = jnp.float32
    if case == "rbg":
        key = jax.random.key(5, impl="rbg")
    elif case in ("float16", "bfloat16"):
        dtype = jnp.dtype(case)
    elif case == "raw key":
        key = jax.random.PRNGKey(5)
    elif case == "float64 without x64":
        if jax.config.jax_enable_x64:
            pytest.skip("x64 is on")
        with pytest.warns(UserWarning, match="float64"):  # JAX's warning, as from jax.random.normal
            threefry.normal(key, (9, 4), jnp.float64)
        dtype = jnp.float64
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


def test_block_known_answers():
    # Random123's known-answer vectors of Threefry-2x32, 20 rounds: (key, counter) -> output
    kat = [((0, 0, 0, 0), (0x6B200159, 0x99BA4EFE)),
           ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
           ((0x13198A2E, 0x03707344, 0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]
    for args, want in kat:
        with np.errstate(over="ignore"):
            host = threefry.block(*(np.uint32(v) for v in args))
        traced = jax.jit(threefry.block)(*(jnp.uint32(v) for v in args))
        assert tuple(int(v) for v in host) == want and tuple(int(v) for v in traced) == want


def test_mixed_float32_float64_tree_under_x64():
    with jax.enable_x64(True):
        like = {"a": jnp.zeros((4, 3), jnp.float32), "b": jnp.zeros((7,), jnp.float64)}
        key = jax.random.key(2)
        keys = jax.random.split(key, 2)
        got = jax.jit(tree.normal_like)(key, like)
        assert _same(got["a"], jax.random.normal(keys[0], (4, 3), jnp.float32))
        assert _same(got["b"], jax.random.normal(keys[1], (7,), jnp.float64))


def test_symbolic_shapes_huge_arrays_and_key_reuse_checks_take_jax():
    n, = jax.export.symbolic_shape("n")
    f = jax.jit(lambda x: threefry.normal(jax.random.key(0), x.shape, jnp.float32))
    exported = jax.export.export(f)(jax.ShapeDtypeStruct((n,), jnp.float32))
    assert _same(exported.call(np.zeros(5, np.float32)), jax.random.normal(jax.random.key(0), (5,)))
    assert not threefry._fast(jax.random.key(0), (2**16, 2**16))  # 2^32 entries: the counter's high word
    assert threefry._fast(jax.random.key(0), (2**16, 2**16 - 1))
    with jax.debug_key_reuse(True):  # JAX's checker sees the key used twice
        with pytest.raises(jax.errors.KeyReuseError):
            jax.jit(lambda k: threefry.normal(k, (3,)) + threefry.normal(k, (3,)))(jax.random.key(1))
