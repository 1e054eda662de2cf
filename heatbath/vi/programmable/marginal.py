"""Approximate marginals of auxiliary-variable guides: ``marginal(over, sir(N, proposal))``.

A guide q(u, z) with auxiliary choices u (sites the model does not have) has an intractable
marginal q(z). Following genjax.vi's ``marginal`` (Becker et al., PLDI 2024, section 5;
Sobolev & Vetrov 2019 for IWHVI), sampling the marginal returns z with an estimate of log q(z)
whose reciprocal is unbiased for 1/q(z), so that ELBO-type objectives stay lower bounds:

    (u_0, z) ~ q,  u_1..u_{N-1} ~ r(u | z),  w_j = q(u_j, z) / r(u_j | z),
    log q^(z) = log (1/N) sum_j w_j.

The proposal r is the guide's own distribution of u (the default: then w_j = q(z | u_j), u_j
drawn as the guide draws it with z held) or a NumPyro program ``proposal(z_values, *args,
**kwargs)`` sampling the auxiliary sites. N = 1 is HVI (Ranganath et al. 2016; Agakov & Barber
2004), N > 1 IWHVI, and with an IWAE over the outer particles DIWHVI.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from heatbath.vi.programmable.program import run, to_trace

__all__ = ["SIR", "sir", "Marginal", "marginal"]


class SIR(NamedTuple):
    num_particles: int
    proposal: Optional[Callable] = None


def sir(num_particles: int, proposal: Optional[Callable] = None) -> SIR:
    """Sampling importance resampling with N particles (the true auxiliary draw is one of them)."""
    n = int(num_particles)
    if n < 1:
        raise ValueError(f"sir needs at least one particle, got {num_particles}")
    return SIR(n, proposal)


class Marginal(NamedTuple):
    """The marginal of the guide on the sites ``over`` (default: the sites the model has)."""

    over: Optional[tuple]
    algorithm: SIR

    def sites(self, ctx):
        return tuple(self.over) if self.over is not None else ctx.program.model_latent

    def _weight(self, ctx, values, aux_trace_key):
        """log w for one auxiliary draw u ~ r(u | z) at z = values."""
        over = self.sites(ctx)
        if self.algorithm.proposal is None:
            tr = to_trace(run(ctx, "guide", aux_trace_key, values=values))
            return tr.log_prob(sites=over)
        k1, k2 = jax.random.split(aux_trace_key)
        args, kwargs = ctx.program.call_args(ctx.batch)
        prop = to_trace(run(ctx, "guide", k1, fn=lambda *a, **kw: self.algorithm.proposal(values, *a, **kw)))
        joint = to_trace(run(ctx, "guide", k2, values={**values, **prop.latent()}))
        return joint.log_prob() - prop.log_prob()

    def sample(self, ctx, key=None):
        """(values of ``over``, log q^(z)) from one joint guide draw and N - 1 proposal draws."""
        key = ctx.next_key() if key is None else key
        k0, k1 = jax.random.split(key)
        over = self.sites(ctx)
        tr = ctx.sample_guide(k0)
        values = {k: v for k, v in tr.values.items() if k in over}
        if self.algorithm.proposal is None:
            lw0 = tr.log_prob(sites=over)
        else:
            aux = {k: v for k, v in tr.latent().items() if k not in over}
            prop = to_trace(run(ctx, "guide", k1, values=aux,
                                fn=lambda *a, **kw: self.algorithm.proposal(values, *a, **kw)))
            lw0 = tr.log_prob() - prop.log_prob()
        n = self.algorithm.num_particles
        if n == 1:
            return values, lw0
        extra = ctx.particles(lambda c: self._weight(c, values, c.key), n - 1)
        lws = jnp.concatenate([lw0[None], extra])
        return values, jax.nn.logsumexp(lws) - math.log(n)

    def log_density(self, ctx, values, key=None):
        """An estimate of log q(z) at ``values`` from N proposal draws (none of them given)."""
        lws = ctx.particles(lambda c: self._weight(c, values, c.key), self.algorithm.num_particles)
        return jax.nn.logsumexp(lws) - math.log(self.algorithm.num_particles)


def marginal(over=None, algorithm: SIR = SIR(1)) -> Marginal:
    """The guide's marginal on the sites ``over`` estimated by ``algorithm`` (``sir(N)``)."""
    if over is not None:
        over = (over,) if isinstance(over, str) else tuple(over)
    if not isinstance(algorithm, SIR):
        raise TypeError(f"algorithm must be sir(N[, proposal]), got {type(algorithm).__name__}")
    return Marginal(over, algorithm)
