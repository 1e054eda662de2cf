"""Noise sources: where every kernel's Gaussian noise comes from.

A Langevin or Hamiltonian step adds ``sqrt(2 h T) P^(1/2) xi`` (or an OU kick), where xi is a
standard-normal increment shaped like the position. Kernels never call ``jax.random.normal``
themselves: they ask a :class:`NoiseSource`, so another noise (fractional Brownian motion
through its Markov approximation, quasi-random or cheaper noise) plugs in without touching a
kernel.

- ``draw(key, like) -> xi``: one standard-normal pytree shaped like ``like`` (one key per leaf,
  see :func:`heatbath.kernels.tree.normal_like`: a leaf's noise depends only on the key and
  the leaf's place in the tree).
- ``draws(key, like, num) -> [xi_1, ..., xi_num]``: ``num`` independent pytrees from one RNG
  call per leaf (a splitting integrator's O/E pieces: one call of shape (num, *leaf) launches
  fewer operations than ``num`` calls, which is most of a small model's step).

:func:`brownian` (increments of a standard Wiener process, scaled by the kernel) is the
default everywhere and draws exactly what the kernels drew inline before this module existed.
A source with memory (the Markov-approximate fBM of the neural-SDE methods) keeps its state
in the state of the method that uses it; the stateless contract above is what the samplers
see.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from heatbath.kernels import tree

PyTree = Any

__all__ = ["NoiseSource", "brownian", "as_noise"]


class NoiseSource(NamedTuple):
    """A source of standard-normal increments (see the module docstring)."""

    name: str
    draw: Callable
    draws: Callable

    def __repr__(self) -> str:  # a stable description (checkpoint settings record it)
        return f"noise.{self.name}()"


def _brownian_draws(key, like: PyTree, num: int) -> list:
    leaves, treedef, keys = tree.split_like(key, like)
    draws = [jax.random.normal(k, (num,) + jnp.shape(leaf), jnp.result_type(leaf)) for k, leaf in zip(keys, leaves)]
    return [jax.tree.unflatten(treedef, [d[i] for d in draws]) for i in range(num)]


_BROWNIAN = NoiseSource("brownian", tree.normal_like, _brownian_draws)


def brownian() -> NoiseSource:
    """Independent N(0, I) increments: the Wiener process of every Langevin/Hamiltonian SDE."""
    return _BROWNIAN


def as_noise(noise) -> NoiseSource:
    """``noise`` checked (None: :func:`brownian`)."""
    if noise is None:
        return _BROWNIAN
    if not isinstance(noise, NoiseSource):
        raise TypeError(f"noise must be a heatbath.kernels.noise.NoiseSource (e.g. brownian()), got {type(noise).__name__}")
    return noise
