"""Hashed randomness for measurements and checks: vectors that compile in milliseconds.

On the CPU, XLA compiles every program that draws from JAX's threefry generator slowly:
0.13 s for a split, 0.13-0.3 s for a vector of normals, 0.34 s for a ``randint``, against 0.03 s
for a trivial program (d = 50, jax 0.10, the 2-core test machine). The automatic settings'
curvature and gradient-noise measurements and the end-of-run configurational temperature are
compiled per target and shape, and each drew its start vectors or probes from threefry:
on a logistic regression's first call that was about 2 s of compile time.

What they draw needs no such stream. Power iteration needs a start vector that is not special
(a component along the top eigenvector), Hutchinson's estimator needs independent fair signs
(E[z z^T] = I). So these come from a counter hashed by a 32-bit integer finaliser (xorshift and
odd-constant multiplies, two rounds per word, the multipliers of C. Wellons' "hash prospector"
search), seeded by the key's bits and a stream number. The samplers' noise does not come from
here: it stays on JAX's keys (:mod:`heatbath.kernels.noise`).

- :func:`words`: a key (typed, or raw uint32 data) as two uint32 words, traceable.
- :func:`bits`: uint32 words of a shape, from ``(words, stream)``.
- :func:`uniform_like`, :func:`rademacher_like`: a pytree of Uniform(low, high) values or of
  random signs shaped like ``tree``, leaf i on its own stream.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["words", "bits", "uniform_like", "rademacher_like"]

_M1 = 0x7FEB352D
_M2 = 0x846CA68B
_GOLDEN = 0x9E3779B9  # odd: counter * _GOLDEN is a bijection of the 32-bit counters
_LEAF = 0x632BE5AB  # another odd constant: leaf i's stream is stream * _LEAF + i


def _u32(x):
    return jnp.asarray(x, jnp.uint32)


def _mix(x):
    """A bijective 32-bit finaliser: every input bit flips each output bit with probability ~1/2."""
    x = x ^ (x >> 16)
    x = x * _u32(_M1)
    x = x ^ (x >> 15)
    x = x * _u32(_M2)
    return x ^ (x >> 16)


def words(key):
    """Two uint32 words from ``key``: a typed key (any generator) or raw uint32 key data, last axis
    the words (a threefry key's 2, an rbg key's 4: its first and last are used)."""
    if jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    key = _u32(key)
    return jnp.stack([key[..., 0], key[..., -1]], axis=-1)


def bits(w, shape, stream=0):
    """uint32 words of ``shape`` from the words ``w`` (``(2,)`` uint32, traced or not) and a
    ``stream`` number (traced or not): ``mix(mix(c * G + s) ^ w1)``, c the element's counter and
    s = mix(w0 ^ mix(stream)). Distinct streams or words give unrelated outputs."""
    w = _u32(w)
    n = int(np.prod(shape, dtype=np.int64))
    if n >= 2**32:
        raise ValueError(f"hashrand.bits: {n} values exceed the 32-bit counter")
    seed = _mix(w[0] ^ _mix(_u32(stream) + _u32(_GOLDEN)))
    counter = jax.lax.iota(jnp.uint32, n)
    out = _mix(_mix(counter * _u32(_GOLDEN) + seed) ^ w[1])
    return out.reshape(shape)


def _leaf_streams(tree, stream):
    leaves, treedef = jax.tree.flatten(tree)
    base = _u32(stream) * _u32(_LEAF)
    return leaves, treedef, [base + _u32(i) for i in range(len(leaves))]


def _float_dtype(leaf):
    dtype = jnp.result_type(leaf)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def uniform_like(w, tree, stream=0, low=-1.0, high=1.0):
    """Uniform(low, high) values shaped like ``tree`` (24 random bits each, computed in float32),
    in each leaf's floating dtype (a narrower one may round a value to ``high``)."""
    leaves, treedef, streams = _leaf_streams(tree, stream)
    out = []
    for leaf, s in zip(leaves, streams):
        u = (bits(w, jnp.shape(leaf), s) >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)  # [0, 1)
        out.append((jnp.float32(low) + jnp.float32(high - low) * u).astype(_float_dtype(leaf)))
    return jax.tree.unflatten(treedef, out)


def rademacher_like(w, tree, stream=0):
    """Random signs (+1 / -1, each with probability 1/2) shaped like ``tree``, in each leaf's dtype."""
    leaves, treedef, streams = _leaf_streams(tree, stream)
    out = []
    for leaf, s in zip(leaves, streams):
        top = (bits(w, jnp.shape(leaf), s) >> 31).astype(jnp.float32)
        out.append((1.0 - 2.0 * top).astype(_float_dtype(leaf)))
    return jax.tree.unflatten(treedef, out)
