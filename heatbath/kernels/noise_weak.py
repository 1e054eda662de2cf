r"""Cheap noise sources: fewer random bits per coordinate, through the noise-source contract.

At Bayesian-deep-learning scale on a CPU the Gaussian noise, not the gradient, is the cost of
a Langevin step: JAX's default generator (threefry) spends one 32-bit word per float32
normal, and for a 784-512-512-10 MLP (669,706 weights) those words took longer than the
forward and backward pass (benchmarks/RESULTS.md). These sources spend fewer bits:

- :func:`rademacher`: xi_i = +-1 with probability 1/2, **one bit per coordinate** (a 32-bit
  word serves 32 coordinates).
- :func:`uniform`: xi_i = c (k_i - (2^b - 1)/2), k_i uniform on {0, ..., 2^b - 1}, with
  c = sqrt(12 / (4^b - 1)) so that Var xi_i = 1; ``bits=8`` (default) spends 8 bits per
  coordinate (a word serves 4).
- :func:`gaussian16`: Box-Muller on two 16-bit uniforms, **two normals per 32-bit word**
  (half the bits of ``jax.random.normal``); a Gaussian quantised to 2^16 levels of the
  radius and the angle (tails cut at sqrt(2 ln 2^17) = 4.8 sd). Measured on the 2-core CPU
  (benchmarks/bench_noise.py, 669,706 float32, 2026-12-02): its log, cos and sin cost more than
  the bits saved (2.7x ``jax.random.normal``'s threefry normals), so it is kept for
  accelerators, not recommended on a CPU; ``uniform()`` took 0.28x and ``rademacher()`` 0.08x of
  ``jax.random.normal`` (the default noise, ``noise.brownian()``, now 0.68x of it:
  :mod:`heatbath.kernels.threefry`).

Weak order one. For SGLD (Euler-Maruyama) and SGHMC's O/E pieces, weak first-order
convergence needs the increments' first three moments to match the Gaussian's (mean 0,
covariance I, zero third moment: Kloeden & Platen 1992, section 14.1, the "simplified weak
Euler scheme"). Rademacher signs and the symmetric uniform do. On a Gaussian target the
schemes are linear recursions, and their stationary covariance (the discrete Lyapunov
equation) depends on the noise only through its covariance: it is the same as with
Gaussian noise, to the last digit (tests/test_noise_weak.py checks this through
``hb.sample``). Higher moments (Rademacher's fourth moment is 1, not 3) enter the error at
order h^2 on non-Gaussian targets. These sources are opt-in (``noise=`` of sgld, psgld,
sghmc, ...); :func:`heatbath.kernels.noise.brownian` stays the default.

Each leaf is drawn from its own key (as :func:`heatbath.kernels.tree.normal_like`), and
``draws(key, like, num)`` makes one call per leaf for ``num`` pytrees.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import threefry as _threefry
from heatbath.kernels import tree
from heatbath.kernels.noise import NoiseSource

PyTree = Any

__all__ = ["rademacher", "uniform", "gaussian16"]


def _words(key, count: int):
    return _threefry.bits(key, (max(1, count),))  # jax.random.bits's values, one fused pass


def _signs(key, n: int, dtype):
    """n values +-1 from ceil(n / 32) words."""
    words = _words(key, -(-n // 32))
    bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
    return (1.0 - 2.0 * bits.reshape(-1)[:n].astype(dtype)).astype(dtype)


def _uniform_levels(bits: int):
    def sample(key, n: int, dtype):
        per = 32 // bits
        words = _words(key, -(-n // per))
        shifts = jnp.arange(per, dtype=jnp.uint32) * jnp.uint32(bits)
        k = (words[:, None] >> shifts) & jnp.uint32((1 << bits) - 1)
        scale = math.sqrt(12.0 / (4.0**bits - 1.0))
        return ((k.reshape(-1)[:n].astype(dtype) - ((1 << bits) - 1) / 2.0) * scale).astype(dtype)

    return sample


def _box_muller16(key, n: int, dtype):
    """Two normals per 32-bit word: u1, u2 the word's 16-bit halves (shifted off 0)."""
    words = _words(key, -(-n // 2))
    u1 = ((words & jnp.uint32(0xFFFF)).astype(jnp.float32) + 0.5) * (1.0 / 65536.0)
    u2 = ((words >> jnp.uint32(16)).astype(jnp.float32) + 0.5) * (1.0 / 65536.0)
    radius = jnp.sqrt(-2.0 * jnp.log(u1))
    angle = (2.0 * np.pi) * u2
    z = jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], axis=1).reshape(-1)[:n]
    return z.astype(dtype)


def _source(name: str, sample) -> NoiseSource:
    def leaf_values(key, leaf, num):
        shape = jnp.shape(leaf)
        n = int(np.prod(shape, dtype=np.int64))
        return sample(key, num * n, jnp.result_type(leaf)).reshape((num,) + shape)

    def draw(key, like: PyTree) -> PyTree:
        leaves, treedef, keys = tree.split_like(key, like)
        return jax.tree.unflatten(treedef, [leaf_values(k, leaf, 1)[0] for k, leaf in zip(keys, leaves)])

    def draws(key, like: PyTree, num: int) -> list:
        leaves, treedef, keys = tree.split_like(key, like)
        values = [leaf_values(k, leaf, num) for k, leaf in zip(keys, leaves)]
        return [jax.tree.unflatten(treedef, [v[i] for v in values]) for i in range(num)]

    return NoiseSource(name, draw, draws)


_RADEMACHER = _source("rademacher", _signs)
_UNIFORM = {b: _source(f"uniform{b}" if b != 8 else "uniform", _uniform_levels(b)) for b in (2, 4, 8, 16)}
_GAUSSIAN16 = _source("gaussian16", _box_muller16)


def rademacher() -> NoiseSource:
    """xi_i = +-1 (one random bit per coordinate): mean 0, variance 1, third moment 0."""
    return _RADEMACHER


def uniform(bits: int = 8) -> NoiseSource:
    """Symmetric discrete uniform on 2^bits levels scaled to variance 1 (``bits`` in 2, 4, 8, 16)."""
    if bits not in _UNIFORM:
        raise ValueError(f"uniform noise: bits must be one of {sorted(_UNIFORM)} (levels per coordinate 2^bits), "
                         f"got {bits!r}")
    return _UNIFORM[bits]


def gaussian16() -> NoiseSource:
    """Box-Muller normals from 16-bit uniforms: two per 32-bit word (half of threefry's bits)."""
    return _GAUSSIAN16
