"""Curvature and gradient-noise measurements on pytrees: what an automatic step size reads.

For a potential U = -log p with Hessian H and a minibatch gradient whose noise has covariance
V (per step, the covariance of the estimate of grad log p), the linearised Langevin chain

    theta <- theta - h H theta + sqrt(2 h T) xi + h eta,        Cov(eta) = V,

has the stationary covariance Sigma solving H Sigma + Sigma H - h H Sigma H = 2 T I + h V. To
first order in h, in H's eigendirection u_i (eigenvalue lambda_i) the variance is inflated by
the factor 1 + h (lambda_i + u_i' V u_i / T) / 2: both the discretisation (lambda_i) and the
gradient noise (u_i' V u_i / T, Welling & Teh 2011's "injected noise must dominate") enter as
a rate times h. So one number bounds the bias in every direction:

    lambda_max(H + V / T) >= max_i (lambda_i + u_i' V u_i / T).

These functions estimate it by power iteration on the operator x -> H x + V x / T, with H x a
Hessian-vector product (forward over reverse mode) and V x from K independent minibatch
gradients g_k: V x = sum_k (g_k - gbar) <g_k - gbar, x> / (K - 1) (the sample covariance,
rank K - 1; its top eigenvalue is biased upwards when V is spread over many directions, which
errs on the side of a smaller step).

All functions are pure and jit/vmap-able; ``matvec`` arguments map a pytree to a pytree.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from heatbath.kernels import tree

PyTree = Any

__all__ = ["hvp", "power_iteration", "bottom_eigenvalue", "noise_matvec", "scaled"]


def hvp(f: Callable, x: PyTree, v: PyTree) -> PyTree:
    """The Hessian of the scalar function ``f`` at ``x`` applied to ``v`` (forward over reverse)."""
    return jax.jvp(jax.grad(f), (x,), (v,))[1]


def _vdot(a: PyTree, b: PyTree) -> jax.Array:
    return sum((jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), jnp.zeros(()))


def _normalise(v: PyTree) -> PyTree:
    n = jnp.sqrt(_vdot(v, v))
    n = jnp.where(n > 0, n, 1.0)
    return jax.tree.map(lambda x: x / n, v)


def power_iteration(matvec: Callable, x0: PyTree, num_iters: int = 20):
    """The top eigenvalue of a symmetric positive semi-definite operator, by power iteration.

    Returns ``(eigenvalue, eigenvector)``: the Rayleigh quotient at the last iterate (a lower
    bound of lambda_max that converges geometrically at the rate lambda_2 / lambda_1; 20
    iterations from a random start give it to a few per cent for well-separated spectra).
    """
    v = _normalise(x0)

    def body(_, v):
        return _normalise(matvec(v))

    v = jax.lax.fori_loop(0, num_iters, body, v)
    return _vdot(v, matvec(v)), v


def bottom_eigenvalue(matvec: Callable, top: jax.Array, x0: PyTree, num_iters: int = 30):
    """The smallest eigenvalue of a symmetric operator whose top eigenvalue is ``top``: power
    iteration on ``top * I - A``. Slow for ill-conditioned operators (it then overestimates
    lambda_min); use it as a scale, not a certificate."""

    def shifted(v):
        return jax.tree.map(lambda a, b: top * a - b, v, matvec(v))

    lam, vec = power_iteration(shifted, x0, num_iters)
    return top - lam, vec


def noise_matvec(gradients: PyTree) -> Callable:
    """x -> V x for the sample covariance V of ``gradients`` (leaves with a leading axis K >= 2)."""
    k = jax.tree.leaves(gradients)[0].shape[0]
    centred = jax.tree.map(lambda g: g - jnp.mean(g, axis=0), gradients)

    def matvec(x):
        coeff = sum(
            (jnp.tensordot(c.reshape(k, -1), xl.reshape(-1), axes=1)
             for c, xl in zip(jax.tree.leaves(centred), jax.tree.leaves(x))),
            jnp.zeros((k,)),
        ) / (k - 1)
        return jax.tree.map(lambda c: jnp.tensordot(coeff, c, axes=1), centred)

    return matvec


def scaled(matvec: Callable, scale: PyTree) -> Callable:
    """x -> S^(1/2) A S^(1/2) x for a positive diagonal ``scale`` S (a pytree like x): the operator
    in the metric of a preconditioner or an inverse mass."""
    root = jax.tree.map(jnp.sqrt, scale)

    def out(x):
        return tree.mul(root, matvec(tree.mul(root, x)))

    return out
