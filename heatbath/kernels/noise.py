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
A source with memory (:func:`fractional`, the Markov-approximate fBM of
:mod:`heatbath.kernels.fbm`) is a :class:`MemoryNoise`: ``init(key, like) -> state`` and
``draw(state, key, like) -> (xi, state)``. Its state lives in the state of the method that
uses it: the neural-SDE VI keeps the OU states in its Euler scan, and :func:`with_memory`
wraps a sampler (SGLD, pSGLD, the Bregman samplers: one draw per step) so that its state
carries the OU states and its kernel receives the fractional increments as ``xi``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

import numpy as np

from heatbath.kernels import fbm as _fbm
from heatbath.kernels import threefry as _threefry
from heatbath.kernels import tree
from heatbath.kernels import validate as _validate

PyTree = Any

__all__ = ["NoiseSource", "brownian", "as_noise", "MemoryNoise", "fractional", "with_memory", "MemoryState"]


class NoiseSource(NamedTuple):
    """A source of standard-normal increments (see the module docstring)."""

    name: str
    draw: Callable
    draws: Callable

    def __repr__(self) -> str:  # a stable description (checkpoint settings record it)
        return f"noise.{self.name}()"


def _brownian_draws(key, like: PyTree, num: int) -> list:
    leaves, treedef, keys = tree.split_like(key, like)
    draws = [_threefry.normal(k, (num,) + jnp.shape(leaf), jnp.result_type(leaf)) for k, leaf in zip(keys, leaves)]
    return [jax.tree.unflatten(treedef, [d[i] for d in draws]) for i in range(num)]


_BROWNIAN = NoiseSource("brownian", tree.normal_like, _brownian_draws)


def brownian() -> NoiseSource:
    """Independent N(0, I) increments: the Wiener process of every Langevin/Hamiltonian SDE."""
    return _BROWNIAN


def as_noise(noise) -> NoiseSource:
    """``noise`` checked (None: :func:`brownian`)."""
    if noise is None:
        return _BROWNIAN
    if isinstance(noise, MemoryNoise):
        raise TypeError(
            f"noise={noise!r} has memory (OU states carried from step to step): wrap the sampler instead, "
            "heatbath.kernels.noise.with_memory(sampler, noise)"
        )
    if not isinstance(noise, NoiseSource):
        raise TypeError(f"noise must be a heatbath.kernels.noise.NoiseSource (e.g. brownian()), got {type(noise).__name__}")
    return noise


# ----------------------------------------------------------------------------------------
# Fractional noise: the Markov approximation of fBM (heatbath.kernels.fbm), a source with memory
# ----------------------------------------------------------------------------------------
class MemoryNoise(NamedTuple):
    """A noise source with state: ``init(key, like) -> state``, ``draw(state, key, like) -> (xi,
    state)``; ``xi`` is shaped like ``like`` and scaled like a standard-normal increment (the
    process's increment over one step of size ``dt`` is ``sqrt(dt) xi``)."""

    name: str
    init: Callable
    draw: Callable
    params: dict

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"noise.{self.name}({args})"


def fractional(hurst: float, dt: float, *, num_k: int = 5, gamma_max: float = 20.0, kind: int = 1,
               horizon: float | None = None) -> MemoryNoise:
    """Increments of Markov-approximate fBM (Daems et al. 2024) over steps of size ``dt``.

    Each leaf entry carries K OU states Y (shape ``leaf + (K,)``), advanced by their exact joint
    transition over dt (one shared W):

        Y(t + dt) = e^{-gamma dt} Y(t) + Z,   Z ~ N(0, [(1 - e^{-(g_i + g_j) dt}) / (g_i + g_j)]),
        xi = sum_k omega_k (Y_k(t + dt) - Y_k(t)) / sqrt(dt),

    so ``sqrt(dt) xi`` is the increment of B^ (type I: Y(0) stationary; type II: Y(0) = 0).
    The xi are correlated across steps (positively for H > 1/2, negatively for H < 1/2); their
    variance is Var B^(dt) / dt, not 1. At ``hurst=0.5`` the draws are exactly those of
    :func:`brownian` (same keys, same numbers) and the state is empty.

    Args:
      hurst: H in (0, 1). dt: the step size > 0 (the sampler's, constant).
      num_k, gamma_max, kind: as :func:`heatbath.kernels.fbm.markov_fbm`.
      horizon: T of the optimisation of omega (default 1000 dt).
    """
    dt = _validate.check_real(dt, "dt", low=0.0, low_open=True)
    horizon = 1000.0 * dt if horizon is None else horizon
    approx = _fbm.markov_fbm(hurst, num_k=num_k, gamma_max=gamma_max, kind=kind, horizon=horizon)
    params = dict(hurst=float(hurst), dt=dt, num_k=num_k, gamma_max=float(gamma_max), kind=kind, horizon=float(horizon))
    if approx.exact:
        return MemoryNoise("fractional", lambda key, like: (), lambda state, key, like: (tree.normal_like(key, like), state),
                           params)
    g = approx.gamma
    w64 = np.asarray(_fbm.weights(approx, dtype=jnp.float32 if not jax.config.jax_enable_x64 else jnp.float64), np.float64)
    s = g[:, None] + g[None, :]
    chol = _fbm.psd_sqrt(-np.expm1(-s * dt) / s)
    decay = np.exp(-g * dt)

    def init(key, like):
        leaves, treedef, keys = tree.split_like(key, like)
        ys = [_fbm.init_ou(k, approx, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)]
        return jax.tree.unflatten(treedef, ys)

    def draw(state, key, like):
        leaves, treedef, keys = tree.split_like(key, like)
        ys = treedef.flatten_up_to(state)
        xis, new = [], []
        for k, x, y in zip(keys, leaves, ys):
            dtype = jnp.result_type(x)
            z = jax.random.normal(k, jnp.shape(x) + (approx.num_k,), dtype) @ jnp.asarray(chol.T, dtype)
            y1 = jnp.asarray(decay, dtype) * y + z
            xis.append(jnp.sum(jnp.asarray(w64, dtype) * (y1 - y), axis=-1) / jnp.sqrt(jnp.asarray(dt, dtype)))
            new.append(y1)
        return jax.tree.unflatten(treedef, xis), jax.tree.unflatten(treedef, new)

    return MemoryNoise("fractional", init, draw, params)


class MemoryState(NamedTuple):
    """A wrapped sampler's state: ``inner`` (the sampler's), ``noise`` (the source's memory)."""

    position: PyTree
    step: jax.Array
    inner: Any
    noise: Any


def with_memory(sampler, noise: MemoryNoise):
    """``sampler`` driven by a noise source with memory (e.g. :func:`fractional`).

    The state becomes a :class:`MemoryState` carrying the source's state; each step draws
    ``(xi, memory) = noise.draw(memory, key, position)`` and runs the sampler rebuilt with a
    stateless source that hands it that xi. For samplers that draw once per step (``sgld``,
    ``psgld``, ``myula``, ``bmula``, ``bmumla``); a sampler drawing twice (a splitting
    integrator) is refused when the step is traced.
    """
    if not isinstance(noise, MemoryNoise):
        raise TypeError(f"noise must be a MemoryNoise (e.g. heatbath.kernels.noise.fractional(...)), got {noise!r}")
    if getattr(sampler, "rebuild", None) is None or "noise" not in getattr(sampler, "hyperparameters", {}):
        raise TypeError(f"{getattr(sampler, 'name', sampler)!r} takes no noise= (with_memory rebuilds it with one)")

    def init(position, key=None):
        key = jax.random.key(0) if key is None else key
        inner = sampler.init(position, key)
        return MemoryState(inner.position, inner.step, inner, noise.init(jax.random.fold_in(key, 1), position))

    def step(key, state, batch, oracle):
        # xi is drawn with the step's own key, the one the sampler hands its source (these
        # samplers use it for nothing else): at H = 1/2 the run is the Brownian one, number for number
        xi, memory = noise.draw(state.noise, key, state.inner.position)
        calls = []

        def once(k, like):
            calls.append(1)
            if len(calls) > 1:
                raise ValueError(f"{sampler.name} draws its noise more than once per step: with_memory serves one draw")
            return xi

        def several(k, like, num):
            raise ValueError(f"{sampler.name} draws {num} noises per step: with_memory serves one draw")

        inner_sampler = sampler.rebuild(noise=NoiseSource(noise.name, once, several))
        inner, info = inner_sampler.step(key, state.inner, batch, oracle)
        return MemoryState(inner.position, inner.step, inner, memory), info

    return sampler._replace(init=init, step=step, name=f"{sampler.name}+{noise.name}", rebuild=None)
