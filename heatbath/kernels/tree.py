"""Pytree arithmetic and pytree-shaped Gaussian noise.

Every kernel of heatbath works leaf by leaf on pytrees of arrays: positions, momenta,
gradients and preconditioners share one tree structure, and nothing is ever flattened
into one vector inside a step (no ``ravel_pytree`` per step). These helpers are the
only place where that arithmetic is written.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import threefry as _threefry

PyTree = Any

__all__ = [
    "add",
    "sub",
    "scale",
    "mul",
    "zeros_like",
    "where_leading",
    "dot",
    "sq_norm",
    "norm",
    "size",
    "all_finite",
    "normal_like",
    "split_like",
    "rademacher_like",
    "uniform_like",
    "leafwise",
]



def add(x: PyTree, y: PyTree) -> PyTree:
    """x + y, leaf by leaf."""
    return jax.tree.map(jnp.add, x, y)


def sub(x: PyTree, y: PyTree) -> PyTree:
    """x - y, leaf by leaf."""
    return jax.tree.map(jnp.subtract, x, y)


def mul(x: PyTree, y: PyTree) -> PyTree:
    """x * y (elementwise), leaf by leaf."""
    return jax.tree.map(jnp.multiply, x, y)


def scale(a, x: PyTree) -> PyTree:
    """a * x for a scalar (or broadcastable array) a."""
    return jax.tree.map(lambda leaf: a * leaf, x)


def zeros_like(x: PyTree) -> PyTree:
    return jax.tree.map(jnp.zeros_like, x)


def dot(x: PyTree, y: PyTree) -> jax.Array:
    """Sum over all leaves of <x_leaf, y_leaf>."""
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.sum(a * b), x, y))
    return sum(leaves[1:], leaves[0]) if leaves else jnp.zeros(())


def sq_norm(x: PyTree) -> jax.Array:
    """Squared Euclidean norm of the whole tree."""
    return dot(x, x)


def norm(x: PyTree) -> jax.Array:
    """Euclidean norm of the whole tree."""
    return jnp.sqrt(sq_norm(x))


def size(x: PyTree) -> int:
    """Number of scalars in the tree (static)."""
    return int(sum(jnp.size(leaf) for leaf in jax.tree.leaves(x)))


def where_leading(mask, x: PyTree, y: PyTree) -> PyTree:
    """Leafwise ``where(mask, x, y)`` with ``mask`` along the leading axis (one flag per chain)."""
    mask = jnp.asarray(mask)
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (jnp.ndim(a) - 1)), a, b), x, y)


def all_finite(x: PyTree) -> jax.Array:
    """True when every entry of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(x)]
    if not leaves:
        return jnp.asarray(True)
    out = leaves[0]
    for leaf in leaves[1:]:
        out = jnp.logical_and(out, leaf)
    return out


def split_like(key: jax.Array, tree: PyTree):
    """One key per leaf: the key itself for a one-leaf tree (a split would cost a hash per
    step for nothing), else ``split(key, num_leaves)`` in flatten order."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = [key] if len(leaves) == 1 else jax.random.split(key, max(len(leaves), 1))
    return leaves, treedef, keys


def normal_like(key: jax.Array, tree: PyTree) -> PyTree:
    """Standard Gaussian noise with the shapes and dtypes of ``tree``.

    One key per leaf (split in flatten order; a one-leaf tree uses ``key`` itself), so the
    noise of a leaf depends only on the key and the leaf's position in the tree, never on a
    flattening of the whole state. The values are ``jax.random.normal``'s, computed in one fused
    pass (:func:`heatbath.kernels.threefry.normal`).
    """
    leaves, treedef, keys = split_like(key, tree)
    noise = [
        _threefry.normal(k, jnp.shape(leaf), jnp.result_type(leaf))
        for k, leaf in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, noise)


def rademacher_like(key: jax.Array, tree: PyTree) -> PyTree:
    """Random signs (+1/-1) shaped like ``tree`` (for Hutchinson estimators)."""
    leaves, treedef, keys = split_like(key, tree)
    noise = [
        jax.random.rademacher(k, jnp.shape(leaf), dtype=jnp.result_type(leaf))
        for k, leaf in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, noise)


def uniform_like(key: jax.Array, tree: PyTree, minval=-2.0, maxval=2.0) -> PyTree:
    """Uniform(minval, maxval) noise shaped like ``tree`` (used for default inits)."""
    leaves, treedef, keys = split_like(key, tree)
    noise = [
        jax.random.uniform(
            k, jnp.shape(leaf), dtype=jnp.result_type(float), minval=minval, maxval=maxval
        )
        for k, leaf in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, noise)



def _is_scalar(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    return isinstance(value, (np.ndarray, np.generic, jax.Array)) and np.ndim(value) == 0


def leafwise(value, like: PyTree, name: str = "value") -> PyTree:
    """``value`` (a scalar, or a pytree like ``like``) as a pytree with the structure of ``like``.

    A per-leaf hyperparameter (a mass, a friction, a fixed preconditioner, a gradient-noise
    variance): a scalar (a number or a 0-d array) is repeated on every leaf; a pytree must
    have the structure of ``like``, each of its leaves a scalar or an array that broadcasts
    to the shape of the matching leaf of ``like`` (it is not broadcast: arithmetic does it).
    Every leaf is cast to the dtype of its ``like`` leaf. Raises a ``ValueError`` naming
    ``name`` when the structure or a shape does not match. Works on traced values.
    """
    if _is_scalar(value):
        return jax.tree.map(lambda p: jnp.asarray(value, jnp.result_type(p)), like)
    if jax.tree.structure(value) != jax.tree.structure(like):
        raise ValueError(
            f"{name} has tree structure {jax.tree.structure(value)} but the position has "
            f"{jax.tree.structure(like)}; pass a scalar or a pytree with the position's structure"
        )

    def leaf(v, p):
        try:
            shape = jnp.broadcast_shapes(jnp.shape(v), jnp.shape(p))
        except ValueError:
            shape = None
        if shape != jnp.shape(p):
            raise ValueError(
                f"{name} leaf of shape {jnp.shape(v)} does not broadcast to the position leaf of shape {jnp.shape(p)}"
            )
        return jnp.asarray(v, jnp.result_type(p))

    return jax.tree.map(leaf, value, like)
