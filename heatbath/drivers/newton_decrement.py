"""The Newton decrement lambda(x) = sqrt(g' H^-1 g) of V = -log p at a point, by conjugate
gradients on Hessian-vector products, and the verdict it gives on a mode search: how many
posterior standard deviations the point is from the stationary point, or why that cannot be
said (non-finite values, negative curvature met, CG not converged). The criterion and its
use are described in :mod:`heatbath.drivers.mapsearch`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["decrement", "solved", "verdict", "CG_RTOL"]

CG_RTOL = 1e-3  # relative residual at which CG stops


def _cg(matvec, g, max_iters):
    """Solve H p = g by CG (H = ``matvec``). Returns (p, iterations, relative residual,
    negative curvature met). Stops at a relative residual ``CG_RTOL``."""
    gg = jnp.vdot(g, g)

    def cond(c):
        k, _, _, _, rr, neg = c
        return (k < max_iters) & (rr > CG_RTOL**2 * gg) & ~neg

    def body(c):
        k, x, r, p, rr, neg = c
        hp = matvec(p)
        php = jnp.vdot(p, hp)
        neg = ~((php > 0) & jnp.isfinite(php))
        alpha = jnp.where(neg, 0.0, rr / jnp.where(neg, 1.0, php))
        x = x + alpha * p
        r = r - alpha * hp
        rr_new = jnp.vdot(r, r)
        p = r + (rr_new / jnp.where(rr > 0, rr, 1.0)) * p
        return k + 1, x, r, p, jnp.where(neg, rr, rr_new), neg

    init = (jnp.zeros((), jnp.int32), jnp.zeros_like(g), g, g, gg, jnp.zeros((), bool))
    k, x, _, _, rr, neg = jax.lax.while_loop(cond, body, init)
    return x, k, jnp.sqrt(rr / jnp.where(gg > 0, gg, 1.0)), neg


def decrement(value_and_grad, hvp, x, data, max_iters):
    """The check at one flat point: dict of ``lp``, ``grad_norm``, ``decrement`` (a lower bound
    when CG stopped early), ``cg_iters``, ``cg_residual``, ``negative_curvature``, and the
    Newton step ``step`` = H^-1 g (jit/vmap-able)."""
    v, g = value_and_grad(x, data)
    p, k, res, neg = _cg(lambda u: hvp(x, u, data), g, max_iters)
    lam2 = jnp.vdot(g, p)
    return {
        "lp": -v, "grad_norm": jnp.linalg.norm(g), "decrement": jnp.sqrt(jnp.maximum(lam2, 0.0)),
        "cg_iters": k, "cg_residual": res, "negative_curvature": neg, "step": p,
    }


def solved(check):
    """CG solved the system (a relative residual within 10 times its tolerance)."""
    return check["cg_residual"] <= 10 * CG_RTOL


def verdict(check, tol):
    """(converged, reason) per chain from the numbers of :func:`decrement` (numpy arrays)."""
    lam = np.asarray(check["decrement"], np.float64)
    lp = np.asarray(check["lp"], np.float64)
    neg = np.asarray(check["negative_curvature"], bool)
    exact = np.asarray(solved(check))
    conv = np.isfinite(lam) & np.isfinite(lp) & ~neg & exact & (lam < tol)
    reasons = []
    for i in range(lam.shape[0]):
        if conv[i]:
            reasons.append("")
        elif not (np.isfinite(lp[i]) and np.isfinite(lam[i])):
            reasons.append("non-finite log density or gradient at the result")
        elif neg[i]:
            reasons.append("the Hessian is not positive definite there (not a local maximum: a saddle, or a flat "
                           "or unbounded direction)")
        elif not exact[i]:
            reasons.append(f"{int(check['cg_iters'][i])} CG steps did not resolve the Newton decrement; it is at "
                           f"least {lam[i]:.3g} sd")
        else:
            reasons.append(f"the Newton decrement is {lam[i]:.3g} posterior sd (tolerance {tol:g})")
    return conv, reasons
