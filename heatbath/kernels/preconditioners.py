"""Diagonal preconditioners for Langevin dynamics, and their divergence corrections.

A preconditioned Langevin step with a diagonal G(theta) reads (Li et al. 2016; Ma, Chen &
Fox 2015 for the general recipe)

    theta <- theta + h [G(theta) grad log p~(theta) + Gamma(theta)] + sqrt(2 h T G(theta)) xi,
    Gamma_i(theta) = sum_j d G_ij(theta) / d theta_j = d G_ii / d theta_i,

and Gamma is what keeps the posterior stationary when G varies with theta.

A preconditioner is ``Preconditioner(init, update, diagonal, correction)``:

- ``init(position) -> state``
- ``update(state, grad) -> state``             (called once per step with the new gradient)
- ``diagonal(state) -> G``                     (a pytree like the position, or None for I)
- ``correction(state, grad, hess_diag) -> Gamma`` (None when G does not depend on theta)

Available: ``identity()``, ``fixed(diagonal)``, ``rmsprop(decay, eps)`` (pSGLD).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = ["Preconditioner", "identity", "fixed", "rmsprop"]


class Preconditioner(NamedTuple):
    init: Callable
    update: Callable
    diagonal: Callable
    correction: Optional[Callable] = None
    name: str = "identity"


def identity() -> Preconditioner:
    """G = I: plain (unpreconditioned) Langevin."""
    return Preconditioner(
        init=lambda position: (),
        update=lambda state, grad: state,
        diagonal=lambda state: None,
        correction=None,
        name="identity",
    )


def fixed(diagonal: PyTree) -> Preconditioner:
    """A constant diagonal G (a positive scalar, or a pytree shaped like the position).

    Being constant, it needs no correction term: Gamma = 0.
    """
    leaves = jax.tree.leaves(diagonal)
    if not leaves or any(bool(jnp.any(jnp.asarray(leaf) <= 0)) for leaf in leaves):
        raise ValueError("a fixed diagonal preconditioner must be strictly positive")
    is_scalar = len(leaves) == 1 and jnp.ndim(leaves[0]) == 0 and not isinstance(diagonal, (dict, list, tuple))

    def init(position):
        if is_scalar:
            return jax.tree.map(lambda p: jnp.full(jnp.shape(p), diagonal, jnp.result_type(p)), position)
        if jax.tree.structure(diagonal) != jax.tree.structure(position):
            raise ValueError(
                "the fixed preconditioner's tree structure does not match the position: "
                f"{jax.tree.structure(diagonal)} vs {jax.tree.structure(position)}"
            )
        return jax.tree.map(
            lambda p, d: jnp.broadcast_to(jnp.asarray(d, jnp.result_type(p)), jnp.shape(p)), position, diagonal
        )

    return Preconditioner(init, lambda state, grad: state, lambda state: state, None, "fixed")


class RMSpropState(NamedTuple):
    square_avg: PyTree  # V, the running average of squared gradients


def rmsprop(decay: float = 0.99, eps: float = 1e-5, eps_in_sqrt: bool = False) -> Preconditioner:
    """RMSprop preconditioner of pSGLD (Li, Chen, Carlson & Carin, AAAI 2016).

        V <- decay V + (1 - decay) g * g
        G = 1 / (eps + sqrt(V))          (eps_in_sqrt=False, the paper)
        G = 1 / sqrt(V + eps)            (eps_in_sqrt=True, optax.rmsprop's default)

    Treating V as a function of theta through the current gradient g(theta),
    dV_i/dtheta_i = 2 (1 - decay) g_i H_ii with H_ii = d g_i / d theta_i, so

        Gamma_i = -(1 - decay) g_i H_ii G_i^2 / sqrt(V_i)   (eps outside the sqrt)
        Gamma_i = -(1 - decay) g_i H_ii G_i^3               (eps inside the sqrt)

    It is O(1 - decay), which is why the paper drops it; the sampler offers it as an option
    (``correction=True``) with H_ii estimated by Hutchinson's z * (H z).
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"rmsprop decay must be in [0, 1), got {decay}")
    if eps <= 0:
        raise ValueError(f"rmsprop eps must be > 0, got {eps}")

    def init(position):
        return RMSpropState(jax.tree.map(jnp.zeros_like, position))

    def update(state, grad):
        return RMSpropState(
            jax.tree.map(lambda v, g: decay * v + (1.0 - decay) * g * g, state.square_avg, grad)
        )

    if eps_in_sqrt:

        def diagonal(state):
            return jax.tree.map(lambda v: jax.lax.rsqrt(v + eps), state.square_avg)

        def correction(state, grad, hess_diag):
            return jax.tree.map(
                lambda v, g, hd: -(1.0 - decay) * g * hd * jax.lax.rsqrt(v + eps) ** 3,
                state.square_avg,
                grad,
                hess_diag,
            )

    else:

        def diagonal(state):
            return jax.tree.map(lambda v: 1.0 / (eps + jnp.sqrt(v)), state.square_avg)

        def correction(state, grad, hess_diag):
            def leaf(v, g, hd):
                root = jnp.sqrt(v)
                G = 1.0 / (eps + root)
                return jnp.where(root > 0, -(1.0 - decay) * g * hd * G * G / jnp.where(root > 0, root, 1.0), 0.0)

            return jax.tree.map(leaf, state.square_avg, grad, hess_diag)

    return Preconditioner(init, update, diagonal, correction, "rmsprop")
