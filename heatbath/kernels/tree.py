"""Pytree arithmetic and pytree-shaped Gaussian noise.

Every kernel of heatbath works leaf by leaf on pytrees of arrays: positions, momenta,
gradients and preconditioners share one tree structure, and nothing is ever flattened
into one vector inside a step (no ``ravel_pytree`` per step). These helpers are the
only place where that arithmetic is written.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = [
    "add",
    "sub",
    "scale",
    "axpy",
    "mul",
    "map",
    "zeros_like",
    "dot",
    "sq_norm",
    "norm",
    "size",
    "all_finite",
    "normal_like",
    "rademacher_like",
    "uniform_like",
    "cast",
]


def map(f: Callable, tree: PyTree, *rest: PyTree) -> PyTree:  # noqa: A001 - mirrors jax.tree.map
    """``jax.tree.map`` re-exported so kernels read ``tree.map``."""
    return jax.tree.map(f, tree, *rest)


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


def axpy(a, x: PyTree, y: PyTree) -> PyTree:
    """a * x + y, leaf by leaf (a a scalar)."""
    return jax.tree.map(lambda xl, yl: a * xl + yl, x, y)


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


def all_finite(x: PyTree) -> jax.Array:
    """True when every entry of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(x)]
    if not leaves:
        return jnp.asarray(True)
    out = leaves[0]
    for leaf in leaves[1:]:
        out = jnp.logical_and(out, leaf)
    return out


def _split_like(key: jax.Array, tree: PyTree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    return leaves, treedef, keys


def normal_like(key: jax.Array, tree: PyTree) -> PyTree:
    """Standard Gaussian noise with the shapes and dtypes of ``tree``.

    One key per leaf (split in flatten order), so the noise of a leaf depends only on the
    key and the leaf's position in the tree, never on a flattening of the whole state.
    """
    leaves, treedef, keys = _split_like(key, tree)
    noise = [
        jax.random.normal(k, jnp.shape(leaf), dtype=jnp.result_type(leaf))
        for k, leaf in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, noise)


def rademacher_like(key: jax.Array, tree: PyTree) -> PyTree:
    """Random signs (+1/-1) shaped like ``tree`` (for Hutchinson estimators)."""
    leaves, treedef, keys = _split_like(key, tree)
    noise = [
        jax.random.rademacher(k, jnp.shape(leaf), dtype=jnp.result_type(leaf))
        for k, leaf in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, noise)


def uniform_like(key: jax.Array, tree: PyTree, minval=-2.0, maxval=2.0) -> PyTree:
    """Uniform(minval, maxval) noise shaped like ``tree`` (used for default inits)."""
    leaves, treedef, keys = _split_like(key, tree)
    noise = [
        jax.random.uniform(
            k, jnp.shape(leaf), dtype=jnp.result_type(float), minval=minval, maxval=maxval
        )
        for k, leaf in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, noise)


def cast(tree: PyTree, dtype) -> PyTree:
    """Cast every floating leaf to ``dtype``."""
    return jax.tree.map(
        lambda leaf: leaf.astype(dtype) if jnp.issubdtype(jnp.result_type(leaf), jnp.floating) else leaf,
        tree,
    )
