"""PRNG key derivations of a run: chain c's key is ``fold_in(key(seed), c)``, so its draws never
depend on how many chains run; from it, ``fold_in(., 0)`` the start, ``1`` the sampler's init,
``2`` the transitions, ``4`` the batcher's stream.

With JAX's default generator (threefry2x32) the derivations of concrete keys are computed on
the host in NumPy, bit for bit as ``jax.random.fold_in`` does (the Threefry-2x32 hash of
Salmon et al. 2011, 20 rounds, as in ``jax._src.random.threefry2x32``): each eager JAX
derivation is a small XLA program of its own, and on a first call their compiles cost about
0.25 s (``_chain_keys``, ``fold_each``, ``_threefry_fold_in``, ``_threefry_seed``) against
about 1.2 s for the whole sampling loop of a logistic regression. Traced keys (inside a
compiled function), keys spread over several devices and other generators take JAX's own
functions.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import threefry as _threefry

__all__ = ["fold_each", "chain_keys", "fold_in", "key_from_seed"]


def _host_fold_in(data, i):
    """``fold_in`` on raw threefry key data (..., 2) uint32 and integers i (broadcast):
    threefry_2x32(key, threefry_seed(uint32(i))), whose count is the pair (0, i)."""
    data = np.asarray(data, np.uint32)
    i = np.asarray(i).astype(np.uint32)
    with np.errstate(over="ignore"):  # the hash's additions wrap around
        y0, y1 = _threefry.block(data[..., 0], data[..., 1], np.zeros_like(i), i)
    return np.stack(np.broadcast_arrays(y0, y1), axis=-1)


def _on_host(key) -> bool:
    """Whether ``key`` is a concrete threefry key array on one device (its data can be read)."""
    return (isinstance(key, jax.Array) and not isinstance(key, jax.core.Tracer)
            and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.is_fully_addressable
            and len(key.sharding.device_set) == 1 and str(jax.random.key_impl(key)) == "threefry2x32")


def _wrap(data, like):
    """Key data as keys placed as ``like`` is: committed to its device only when it is (an
    uncommitted array lives on the default device; committing it would change the cache key of
    every compiled function it reaches, and compile them again)."""
    keys = jax.random.wrap_key_data(data, impl="threefry2x32")
    return jax.device_put(keys, like.sharding) if like.committed else keys


def _check_index(i) -> bool:
    """A Python or NumPy integer in [0, 2**32): what the host path folds in."""
    return not isinstance(i, bool) and isinstance(i, (numbers.Integral, np.integer)) and 0 <= int(i) < 2**32


def fold_in(key, i):
    """``jax.random.fold_in(key, i)`` for one key and a Python integer 0 <= i < 2**32."""
    if _on_host(key) and key.shape == () and _check_index(i):
        return _wrap(_host_fold_in(np.asarray(jax.random.key_data(key)), int(i)), key)
    return jax.random.fold_in(key, i)


# Key derivations as jitted functions of stable identity: an eager ``jax.vmap`` of a fresh
# lambda is re-traced on every call (a few ms of host time per ``hb.sample``).
@jax.jit
def _fold_each(keys, i):
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)


def fold_each(keys, i):
    """``fold_in(keys[c], i)`` for every chain c."""
    if _on_host(keys) and keys.ndim == 1 and _check_index(i):
        return _wrap(_host_fold_in(np.asarray(jax.random.key_data(keys)), int(i)), keys)
    return _fold_each(keys, i)


def _chain_keys(master, num_chains):
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(master, jnp.arange(num_chains))


_chain_keys_jit = jax.jit(_chain_keys, static_argnums=1)


def chain_keys(master, num_chains: int):
    """Chain c's key, ``fold_in(master, c)``: chain c's draws never depend on ``num_chains``."""
    if _on_host(master) and master.shape == ():
        data = np.asarray(jax.random.key_data(master))
        return _wrap(_host_fold_in(data[None, :], np.arange(num_chains)), master)
    return _chain_keys_jit(master, num_chains)


def key_from_seed(seed: int):
    """``jax.random.key(seed)`` for an integer seed; for 0 <= seed < 2**31 with the default
    threefry generator, built from its data (0, seed) without an XLA program."""
    if jax.config.jax_default_prng_impl == "threefry2x32" and 0 <= seed < 2**31:
        return jax.random.wrap_key_data(np.array([0, seed], np.uint32), impl="threefry2x32")
    return jax.random.key(seed)
