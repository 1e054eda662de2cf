"""The step size of FB-GVI and BW-SGD from the curvature: automatic, or a cap on a given one.

FB-GVI converges for h < 1/lambda_max(hess V) on an L-smooth, convex V (Diao et al. 2023; on a
Gaussian target for every such h), and BW-SGD's covariance iteration is unstable above it. Each
step already estimates E_q hess V (the d x d matrix for a full covariance); its spectral radius
rho bounds the step:

- ``step_size=None`` (``rule="auto"``): h_t = ``SAFE_FRACTION`` / rho_t times the factor
  :func:`auto_schedule` (1 for the first half of the run, then a cosine down to
  ``FINAL_FACTOR``, which shrinks the noise ball of a stochastic run by 10 in variance);
- ``safeguard=True`` with a given step size (``rule="cap"``): h_t = min(h, SAFE_FRACTION / rho_t).

rho is the exact spectral radius of the step's d x d estimate for a full covariance (negative
curvature counts too: |1 - h lambda| must stay below 1 either way); for ``"diag"`` and
``"lowrank"`` it comes from ``POWER_ITERS`` power iterations of Hessian-vector products at the
mean on the step's batch, from a random start (a lower bound; the margin SAFE_FRACTION covers it).
The step size used is the ``step_size`` field of the trace.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["SAFE_FRACTION", "POWER_ITERS", "FINAL_FACTOR", "spectral_radius", "curvature_radius", "apply_rule",
           "auto_schedule"]

SAFE_FRACTION = 0.5
POWER_ITERS = 6
FINAL_FACTOR = 0.1


def spectral_radius(matvec, v0, num_iters: int):
    """|lambda|_max of a symmetric operator by power iteration from ``v0`` (a lower bound)."""

    def body(_, v):
        w = matvec(v)
        n = jnp.linalg.norm(w)
        return jnp.where(n > 0, w / jnp.where(n > 0, n, 1.0), v)

    v = jax.lax.fori_loop(0, num_iters, body, v0 / jnp.linalg.norm(v0))
    return jnp.linalg.norm(matvec(v))


def curvature_radius(key, mean, curv_v, batch, grad_fn):
    """rho of this step's E hess V: from ``curv_v`` (the d x d estimate) when given, else by
    power iteration at ``mean`` (``grad_fn(x, batch) -> (lp, grad log p)``)."""
    if curv_v is not None:
        eig = jnp.linalg.eigvalsh(curv_v)
        return jnp.maximum(jnp.abs(eig[0]), jnp.abs(eig[-1]))
    v0 = jax.random.rademacher(jax.random.fold_in(key, 1), mean.shape, dtype=mean.dtype)
    return spectral_radius(lambda v: jax.jvp(lambda x: grad_fn(x, batch)[1], (mean,), (v,))[1], v0, POWER_ITERS)


def apply_rule(rule: str, h, rho):
    """The step size of ``rule`` ("auto": h is the schedule's factor; "cap": h is the user's)."""
    bound = SAFE_FRACTION / jnp.maximum(rho, jnp.finfo(rho.dtype).tiny)
    return h * bound if rule == "auto" else jnp.minimum(h, bound)


def auto_schedule(num_steps: int):
    """The factor of the automatic step size: 1, then from half-way a cosine to FINAL_FACTOR."""
    half = num_steps / 2.0

    def schedule(step):
        frac = jnp.clip((jnp.asarray(step, jnp.float32) - half) / max(num_steps - half, 1.0), 0.0, 1.0)
        return FINAL_FACTOR + (1.0 - FINAL_FACTOR) * 0.5 * (1.0 + jnp.cos(math.pi * frac))

    return schedule
