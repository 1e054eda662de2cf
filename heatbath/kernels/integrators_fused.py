"""Fused O/E pieces of a splitting: one noise draw per run of consecutive O/E pieces.

Each O or E piece of a splitting (:mod:`heatbath.kernels.integrators`) is a linear Gaussian
map of the momentum, r <- d r + s xi (O: d = exp(-C h/M), s^2 = T M (1 - d^2); E: d = 1 - C h/M,
s^2 = 2 C h T). Two in a row are one such map,

    (d1, s1) then (d2, s2)  =  (d2 d1, sqrt(d2^2 s1^2 + s2^2)),

with the same conditional law of r, so a run of them costs one draw. A word that ends and
starts with O/E (``"OBABO"``, ``"OABAO"``) has such a run across the step boundary: the
tail of step k and the lead of step k+1. With ``fuse=True`` a step ends with its tail
composed with the next step's lead (at the next step's h, C, T) and starts without its
lead, which is already applied. O and E do not move the position, so the law of the chain
of positions is unchanged (OBABO becomes B(h/2) A(h) B(h/2) O(h) after a first O(h/2): half
the draws), while the momentum a step ends with is the one after the next lead.

Scope: exact in law for Gaussian noise; with a non-Gaussian noise source (weak order one,
:mod:`heatbath.kernels.noise_weak`) the composed increment has the same mean and covariance.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from heatbath.kernels import noise as _noise
from heatbath.kernels.integrators import Cache, Splitting, momentum_update, position_update

PyTree = Any

__all__ = ["fused_boundary", "num_draws", "lead_update", "build_fused"]


def _ou_map(letter, dt, friction, inv_mass, mass, temperature):
    """(decay, sd) pytrees of one O or E piece, the linear Gaussian map r <- decay r + sd xi."""
    if letter == "O":
        decay = jax.tree.map(lambda c, im: jnp.exp(-(dt * c) * im), friction, inv_mass)
        sd = jax.tree.map(lambda d, m, t: jnp.sqrt(jnp.maximum(t * m * (1.0 - d * d), 0.0)), decay, mass, temperature)
    else:
        decay = jax.tree.map(lambda c, im: 1.0 - (dt * c) * im, friction, inv_mass)
        sd = jax.tree.map(lambda c, t: jnp.sqrt(jnp.maximum(2.0 * dt * c * t, 0.0)), friction, temperature)
    return decay, sd


def _compose(maps):
    """The maps applied in order, as one: (d1, s1) then (d2, s2) is (d2 d1, sqrt(d2^2 s1^2 + s2^2)),
    the same Gaussian law for r given the previous r (exact: each piece is linear Gaussian)."""
    decay, sd = maps[0]
    for d2, s2 in maps[1:]:
        sd = jax.tree.map(lambda s1, d, s: jnp.sqrt(d * d * s1 * s1 + s * s), sd, d2, s2)
        decay = jax.tree.map(lambda d1, d: d * d1, decay, d2)
    return decay, sd


def _apply_map(momentum, decay, sd, xi):
    if xi is None:
        return jax.tree.map(lambda r, d: d * r, momentum, decay)
    return jax.tree.map(lambda r, d, s, n: d * r + s * n, momentum, decay, sd, xi)


def fused_boundary(split: Splitting) -> tuple:
    """(lead, tail): the O/E pieces a word starts and ends with, when it does both (``"OBABO"``:
    ((O, 1/2),), ((O, 1/2),)); ``((), ())`` otherwise. With ``fuse=True`` (:func:`build_fused`) a
    step ends with its tail composed with the next step's lead, one draw for both."""
    pieces = split.pieces
    if pieces[0][0] not in "OE" or pieces[-1][0] not in "OE":
        return (), ()
    i = 0
    while pieces[i][0] in "OE":
        i += 1
    j = len(pieces)
    while pieces[j - 1][0] in "OE":
        j -= 1
    return pieces[:i], pieces[j:]


def num_draws(split: Splitting, fuse: bool = False) -> int:
    """Standard-normal pytrees a step of ``split`` draws: one per O/E piece, or with ``fuse``
    one per run of consecutive O/E pieces, the run across the step boundary counted once."""
    letters = split.letters
    if not fuse:
        return sum(1 for letter in letters if letter in "OE")
    runs = sum(1 for i, letter in enumerate(letters) if letter in "OE" and (i == 0 or letters[i - 1] not in "OE"))
    lead, _ = fused_boundary(split)
    return runs - 1 if lead else runs


def lead_update(key, split: Splitting, momentum: PyTree, h, friction, mass, inv_mass, temperature,
                noiseless: bool = False, noise: _noise.NoiseSource | None = None) -> PyTree:
    """The leading O/E pieces of ``split`` applied to ``momentum`` (one draw; the identity for a
    word without a fused boundary). A fused non-FSAL chain starts from this (its sampler's
    ``init``): after it, every step finds its lead already applied."""
    lead, _ = fused_boundary(split)
    if not lead:
        return momentum
    decay, sd = _compose([_ou_map(letter, frac * h, friction, inv_mass, mass, temperature) for letter, frac in lead])
    xi = None if noiseless or key is None else _noise.as_noise(noise).draw(key, momentum)
    return _apply_map(momentum, decay, sd, xi)


def build_fused(split: Splitting, *, noiseless: bool = False, noise: _noise.NoiseSource | None = None) -> Callable:
    """:func:`heatbath.kernels.integrators.build` with ``fuse=True`` (see the module docstring).

    ``integrate(..., next_params=(h, friction, temperature))`` takes the next step's values
    for a word with a fused boundary. An FSAL word's priming step applies the next lead to
    the unchanged momentum (same draw); a non-FSAL word needs its lead applied once before
    its first step (:func:`lead_update`, called by the sampler's ``init``).
    """
    source = _noise.as_noise(noise)
    fsal = split.fsal
    pieces = split.pieces
    lead, tail = fused_boundary(split)
    if lead:
        pieces = pieces[len(lead):len(pieces) - len(tail)]
    merged = []  # runs of O/E pieces grouped as ("N", [(letter, frac), ...])
    for letter, frac in pieces:
        if letter in "OE":
            if merged and merged[-1][0] == "N":
                merged[-1][1].append((letter, frac))
            else:
                merged.append(("N", [(letter, frac)]))
        else:
            merged.append((letter, frac))
    pieces = tuple(merged)
    num_noise = num_draws(split, True)

    def integrate(key, position, momentum, cache, batch, grad_fn, h, friction, mass, inv_mass, temperature,
                  next_params=None):
        noises = [None] * num_noise if noiseless else source.draws(key, momentum, num_noise)
        start_position, start_momentum = position, momentum
        if fsal:
            lp, grad, valid = cache.lp, cache.grad, True
            lp_start = lp
            primed = cache.valid
        else:
            lp = grad = lp_start = None
            valid, primed = False, None
        first_eval = True
        for letter, frac in pieces:
            if letter == "N":
                decay, sd = _compose([_ou_map(lt, fr * h, friction, inv_mass, mass, temperature) for lt, fr in frac])
                momentum = _apply_map(momentum, decay, sd, noises.pop(0))
                continue
            dt = frac * h
            if letter == "A":
                position = position_update(position, momentum, dt, inv_mass)
                valid = False
            else:  # "B"
                if not valid:
                    where = position
                    if fsal and first_eval:
                        where = jax.tree.map(lambda a, b: jnp.where(primed, a, b), position, start_position)
                    lp, grad = grad_fn(where, batch)
                    if lp_start is None:
                        lp_start = lp
                    valid, first_eval = True, False
                momentum = momentum_update(momentum, grad, dt)
        if lead:
            if next_params is None:
                raise ValueError(f"a fused {split.letters!r} step needs next_params (the next step's h, C, T)")
            h1, friction1, temperature1 = next_params
            lead_map = _compose([_ou_map(lt, fr * h1, friction1, inv_mass, mass, temperature1) for lt, fr in lead])
            decay, sd = _compose([_ou_map(lt, fr * h, friction, inv_mass, mass, temperature) for lt, fr in tail]
                                 + [lead_map])
            xi = noises.pop(0)
            momentum = _apply_map(momentum, decay, sd, xi)
            if fsal:  # priming: the unchanged momentum gets the next step's lead, from the same draw
                start_momentum = _apply_map(start_momentum, lead_map[0], lead_map[1], xi)
        if fsal:
            position = jax.tree.map(lambda a, b: jnp.where(primed, a, b), position, start_position)
            momentum = jax.tree.map(lambda a, b: jnp.where(primed, a, b), momentum, start_momentum)
            lp_start = jnp.where(primed, lp_start, lp)
            cache = Cache(lp, grad, jnp.ones_like(cache.valid))
        return position, momentum, cache, lp_start, grad

    return integrate
