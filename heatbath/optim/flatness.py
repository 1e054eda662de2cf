"""Flatness of a minimum: the trace and the top eigenvalue of the Hessian of a loss.

Both use Hessian-vector products only (forward-over-reverse, ``jax.jvp`` of ``jax.grad``),
so they scale to networks whose Hessian cannot be formed:

- ``hessian_trace``: Hutchinson's estimator (Hutchinson 1990),
  tr(H) = E[z^T H z] with Rademacher z; with m probes the standard error is
  sqrt(Var(z^T H z) / m), Var(z^T H z) = 2 (|H|_F^2 - sum_i H_ii^2).
- ``hessian_top_eigenvalue``: the Lanczos method (Lanczos 1950) with full
  reorthogonalisation: k steps build an orthonormal Krylov basis V and the tridiagonal
  T = V^T H V; the largest eigenvalue of T converges to lambda_max(H) fast (for k of a few
  tens, to many digits when the top of the spectrum is separated).

These are diagnostics (run once on a final point), so they flatten the parameters into one
vector; the samplers never do.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from heatbath.kernels import validate as _validate

PyTree = Any

__all__ = ["hvp", "hessian_trace", "hessian_top_eigenvalue"]


def hvp(loss: Callable, params: PyTree) -> Callable:
    """v -> H v, H the Hessian of ``loss`` at ``params`` (v a pytree like params)."""
    grad = jax.grad(loss)
    return lambda v: jax.jvp(grad, (params,), (v,))[1]


def _check(loss, num, name):
    if not callable(loss):
        raise TypeError(f"loss must be a function of the parameters, got {type(loss).__name__}")
    return _validate.check_int(num, name, minimum=1)


def hessian_trace(loss: Callable, params: PyTree, key, num_probes: int = 100, batch_size: int = 10):
    """Hutchinson estimate of tr(H) for H = Hessian of ``loss`` at ``params``.

        tr(H) ~ (1/m) sum_j z_j^T H z_j,   z_j ~ Rademacher,

    Returns ``(estimate, standard_error)``, the error from the spread of the m terms.
    Probes run ``batch_size`` at a time under ``vmap``.
    """
    num_probes = _check(loss, num_probes, "num_probes")
    batch_size = _validate.check_int(batch_size, "batch_size", minimum=1)
    flat, unravel = ravel_pytree(params)
    matvec = hvp(lambda x: loss(unravel(x)), flat)
    num_batches = -(-num_probes // batch_size)

    @jax.jit
    def terms(k):
        z = jax.random.rademacher(k, (batch_size, flat.size), dtype=flat.dtype)
        return jax.vmap(lambda v: jnp.dot(v, matvec(v)))(z)

    vals = jnp.concatenate([terms(k) for k in jax.random.split(key, num_batches)])[:num_probes]
    se = jnp.std(vals, ddof=1) / jnp.sqrt(num_probes) if num_probes > 1 else jnp.asarray(jnp.inf)
    return jnp.mean(vals), se


def hessian_top_eigenvalue(loss: Callable, params: PyTree, key, num_iters: int = 30):
    """Largest (algebraic) eigenvalue of the Hessian of ``loss`` at ``params``, by Lanczos.

        beta_0 = 0, v_1 random unit;  for j = 1..k:
            w = H v_j - beta_{j-1} v_{j-1};  alpha_j = w . v_j;  w -= alpha_j v_j
            w -= V V^T w  (full reorthogonalisation);  beta_j = |w|;  v_{j+1} = w / beta_j
        lambda_max(H) ~ lambda_max(tridiag(beta, alpha, beta))

    ``num_iters`` is capped at the dimension. Returns a scalar array.
    """
    num_iters = _check(loss, num_iters, "num_iters")
    flat, unravel = ravel_pytree(params)
    d = flat.size
    k = min(int(num_iters), d)
    matvec = hvp(lambda x: loss(unravel(x)), flat)

    @jax.jit
    def run(key):
        v0 = jax.random.normal(key, (d,), flat.dtype)
        v0 = v0 / jnp.linalg.norm(v0)
        V = jnp.zeros((k + 1, d), flat.dtype).at[0].set(v0)
        alphas = jnp.zeros((k,), flat.dtype)
        betas = jnp.zeros((k,), flat.dtype)

        def body(j, carry):
            V, alphas, betas = carry
            v = V[j]
            w = matvec(v) - jnp.where(j > 0, betas[j - 1], 0.0) * V[jnp.maximum(j - 1, 0)]
            a = jnp.dot(w, v)
            w = w - a * v
            mask = (jnp.arange(k + 1) <= j).astype(flat.dtype)
            for _ in range(2):  # twice is enough (Kahan / Parlett)
                w = w - (V.T @ (mask * (V @ w)))
            b = jnp.linalg.norm(w)
            V = V.at[j + 1].set(jnp.where(b > 0, w / jnp.where(b > 0, b, 1.0), 0.0))
            return V, alphas.at[j].set(a), betas.at[j].set(b)

        V, alphas, betas = jax.lax.fori_loop(0, k, body, (V, alphas, betas))
        # After a breakdown (beta_j = 0: an invariant subspace) the later rows decouple with
        # alpha = 0; give them alpha_1 = v_1^T H v_1 <= lambda_max so they cannot win.
        valid = jnp.concatenate([jnp.ones((1,), bool), jnp.cumprod(betas[:-1] > 0).astype(bool)])
        alphas = jnp.where(valid, alphas, alphas[0])
        T = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
        return jnp.linalg.eigvalsh(T)[-1]

    return run(key)
