"""PRNG key derivations of a run: chain c's key is ``fold_in(key(seed), c)``, so its draws never
depend on how many chains run; from it, ``fold_in(., 0)`` the start, ``1`` the sampler's init,
``2`` the transitions, ``4`` the batcher's stream."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["fold_each", "chain_keys"]


# Key derivations as jitted functions of stable identity: an eager ``jax.vmap`` of a fresh
# lambda is re-traced on every call (a few ms of host time per ``hb.sample``).
@jax.jit
def fold_each(keys, i):
    """``fold_in(keys[c], i)`` for every chain c."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)


def _chain_keys(master, num_chains):
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(master, jnp.arange(num_chains))


_chain_keys_jit = jax.jit(_chain_keys, static_argnums=1)


def chain_keys(master, num_chains: int):
    """Chain c's key, ``fold_in(master, c)``: chain c's draws never depend on ``num_chains``."""
    return _chain_keys_jit(master, num_chains)
