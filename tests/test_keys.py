"""The run's key derivations computed on the host (heatbath.drivers.keys) equal JAX's own, bit
for bit, and compile nothing."""

import logging

import numpy as np
import pytest

import jax

from heatbath.drivers import keys as K


def _data(k):
    return np.asarray(jax.random.key_data(k))


def test_host_threefry_equals_jax_fold_in_bit_for_bit():
    rng = np.random.default_rng(0)
    for _ in range(100):
        key = jax.random.wrap_key_data(rng.integers(0, 2**32, size=2, dtype=np.uint64).astype(np.uint32))
        i = int(rng.integers(0, 2**32))
        np.testing.assert_array_equal(_data(K.fold_in(key, i)), _data(jax.random.fold_in(key, i)))
    keys = jax.random.split(jax.random.key(7), 9)
    for i in (0, 1, 2, 4, 29, 2**31 - 2):
        np.testing.assert_array_equal(_data(K.fold_each(keys, i)), _data(K._fold_each(keys, i)))
    master = jax.random.key(3)
    for n in (1, 4, 17):
        np.testing.assert_array_equal(_data(K.chain_keys(master, n)), _data(K._chain_keys_jit(master, n)))
    for seed in (0, 1, 5, 123456789, 2**31 - 1, 2**31, 2**40, -3):
        np.testing.assert_array_equal(_data(K.key_from_seed(seed)), _data(jax.random.key(seed)))


def test_traced_keys_take_jax_functions():
    keys = jax.random.split(jax.random.key(1), 3)
    got = jax.jit(lambda k: K.fold_each(k, 5))(keys)
    np.testing.assert_array_equal(_data(got), _data(K._fold_each(keys, 5)))
    got = jax.jit(lambda k: K.fold_in(k, 5))(keys[0])
    np.testing.assert_array_equal(_data(got), _data(jax.random.fold_in(keys[0], 5)))


def test_host_derivations_compile_nothing_and_keep_placement(caplog):
    master = K.key_from_seed(11)
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING, logger="jax"):
            keys = K.chain_keys(master, 4)
            K.fold_each(keys, 2)
            K.fold_in(master, 3)
    finally:
        jax.config.update("jax_log_compiles", False)
    assert not [r for r in caplog.records if "Finished XLA compilation" in r.getMessage()]
    assert not keys.committed  # an uncommitted key stays so (no recompiles downstream)
    committed = jax.device_put(master, jax.devices()[0])
    assert K.fold_in(committed, 1).committed


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, True])
def test_other_indices_take_jax_fold_in(bad):
    key = jax.random.key(0)
    try:
        want = _data(jax.random.fold_in(key, bad))
    except Exception:  # noqa: BLE001 - JAX refuses it: so must we
        with pytest.raises(Exception):
            K.fold_in(key, bad)
        return
    np.testing.assert_array_equal(_data(K.fold_in(key, bad)), want)
