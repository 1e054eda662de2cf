"""The shipped objectives, each a short program written with the primitives (:mod:`.context`).

With w = p(x, z) / q(z), z ~ q (for an auxiliary-variable guide, q(z) is replaced by the
:func:`~.marginal.marginal` estimate q^(z)):

- ``elbo()``: E[log w] (Trace_ELBO's value: same keys, same draws, see :func:`elbo`).
- ``iwae(K)``: E[log (1/K) sum_k w_k] (Burda et al. 2016).
- ``renyi(alpha, K)``: E[1/(1 - alpha) log (1/K) sum_k w_k^(1 - alpha)] (Li & Turner 2016).
- ``hvi(over)``, ``iwhvi(over, m)``, ``diwhvi(over, n, m)``: ELBO / ELBO / IWAE(n) with log q(z)
  estimated by ``marginal(over, sir(m))`` (Ranganath et al. 2016; Sobolev & Vetrov 2019).
- ``rws(K, wake="both" | "p" | "q")``: reweighted wake-sleep (Bornschein & Bengio 2015; Le et
  al. 2019): the value is the IWAE bound, the gradient sum_k w~_k grad log p(x, z_k) (wake-p, the
  model's params) and sum_k w~_k grad log q(z_k) (wake-q, the guide's), with z_k ~ q detached and
  w~ the self-normalised weights.

Multi-particle objectives on a model whose guide has only local latent variables (sites in the
data plate, e.g. a VAE) weight particles row by row (``per_row=None`` decides: True when every
guide site is in the data plate): the bound is (global part) + (N/n) sum_rows log (1/K) sum_k w_ik.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from heatbath.vi.programmable.marginal import Marginal, marginal, sir

__all__ = ["elbo", "iwae", "renyi", "hvi", "iwhvi", "diwhvi", "rws", "log_weight"]

sg = jax.lax.stop_gradient


def log_weight(ctx, key=None, guide: Optional[Marginal] = None, rows: bool = False):
    """log p(x, z) - log q(z) for one z ~ q (NumPyro's Trace_ELBO key split: model, guide =
    split(key)); ``guide`` a :class:`Marginal` for auxiliary-variable guides."""
    key = ctx.next_key() if key is None else key
    model_key, guide_key = jax.random.split(key)
    if guide is None:
        tr = ctx.sample_guide(guide_key)
        if rows:
            g_p, r_p = ctx.log_model(tr, model_key, rows=True)
            g_q, r_q = tr.log_prob(rows=True)
            return g_p - g_q, r_p - r_q
        return ctx.log_model(tr, model_key) - tr.log_prob()
    values, log_q = guide.sample(ctx, guide_key)
    return ctx.log_model(None, model_key, values=values) - log_q


def _row_scale(ctx):
    n = ctx.program.batch_rows(ctx.batch)
    return 1.0 if n is None else ctx.program.num_data / n


def _local_only(ctx) -> bool:
    """True when every latent site of a guide draw is in the data plate (a trace at this batch)."""
    if not ctx.program.row_plates:
        return False
    tr = ctx.sample_guide(jax.random.key(0), detach=True)
    latent = [k for k in tr.values if not tr.observed[k]]
    return bool(latent) and all(tr.row_dims.get(k) is not None for k in latent)


def _particle_bound(ctx, K, combine, guide, per_row):
    if per_row is None:
        per_row = guide is None and _local_only(ctx)
    if per_row:
        g, r = ctx.particles(lambda c: log_weight(c, c.key, rows=True), K)  # (K,), (K, n)
        return jnp.mean(g) + _row_scale(ctx) * jnp.sum(combine(r, axis=0))
    lw = ctx.particles(lambda c: log_weight(c, c.key, guide), K)
    return combine(lw, axis=0)


def _logmeanexp(x, axis=0):
    return jax.nn.logsumexp(x, axis=axis) - math.log(x.shape[axis])


def elbo(num_particles: int = 1, guide: Optional[Marginal] = None):
    """E_q[log p(x, z) - log q(z)], averaged over ``num_particles`` draws.

    With one particle and key k it draws the guide with split(k)[1] and the model's own sites
    with split(k)[0], as NumPyro's Trace_ELBO does: its value is -Trace_ELBO().loss(k, ...).
    """
    n = int(num_particles)

    def objective(ctx):
        if n == 1:
            return log_weight(ctx, ctx.key, guide)
        return ctx.expectation(lambda c: log_weight(c, c.key, guide), n)

    objective.__name__ = f"elbo({n})" if guide is None else f"elbo({n}, {guide.algorithm.num_particles})"
    return objective


def iwae(num_particles: int, guide: Optional[Marginal] = None, per_row: Optional[bool] = None):
    """E[log (1/K) sum_k w_k], K = ``num_particles``."""
    K = int(num_particles)

    def objective(ctx):
        return _particle_bound(ctx, K, _logmeanexp, guide, per_row)

    objective.__name__ = f"iwae({K})"
    return objective


def renyi(alpha: float, num_particles: int, guide: Optional[Marginal] = None, per_row: Optional[bool] = None):
    """E[1/(1 - alpha) log (1/K) sum_k w_k^(1 - alpha)] (alpha = 0: IWAE; alpha -> 1: ELBO)."""
    alpha, K = float(alpha), int(num_particles)
    if alpha == 1.0:
        return elbo(K, guide)

    def combine(lw, axis=0):
        return _logmeanexp((1.0 - alpha) * lw, axis=axis) / (1.0 - alpha)

    def objective(ctx):
        return _particle_bound(ctx, K, combine, guide, per_row)

    objective.__name__ = f"renyi({alpha}, {K})"
    return objective


def hvi(over=None, proposal=None):
    """The ELBO with log q(z) from ``marginal(over, sir(1, proposal))``."""
    return elbo(1, marginal(over, sir(1, proposal)))


def iwhvi(over=None, m: int = 5, proposal=None):
    """The ELBO with log q(z) from ``marginal(over, sir(m, proposal))``."""
    return elbo(1, marginal(over, sir(m, proposal)))


def diwhvi(over=None, n: int = 5, m: int = 5, proposal=None):
    """IWAE(n) with log q(z) from ``marginal(over, sir(m, proposal))``."""
    return iwae(n, marginal(over, sir(m, proposal)))


def rws(num_particles: int, wake: str = "both"):
    """Reweighted wake-sleep (see the module docstring); ``wake`` in ("both", "p", "q")."""
    if wake not in ("both", "p", "q"):
        raise ValueError(f"wake must be 'both', 'p' or 'q', got {wake!r}")
    K = int(num_particles)

    def objective(ctx):
        def one(c):
            model_key, guide_key = jax.random.split(c.key)
            tr = c.sample_guide(guide_key, detach=True)
            return c.log_model(tr, model_key), tr.log_prob()

        lp, lq = ctx.particles(one, K)
        lw = lp - lq
        w = jax.nn.softmax(sg(lw))
        value = jax.nn.logsumexp(lw) - math.log(K)
        surrogate = jnp.zeros(())
        if wake in ("both", "p"):
            surrogate = surrogate + jnp.sum(w * lp)
        if wake in ("both", "q"):
            surrogate = surrogate + jnp.sum(w * lq)
        return sg(value) + surrogate - sg(surrogate)

    objective.__name__ = f"rws({K}, {wake})"
    return objective
