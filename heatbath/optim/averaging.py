"""Iterate averaging of any sampler: SWA at T = 0, Langevin averaging at T > 0.

``averaged(sampler, start, every)`` runs ``sampler`` unchanged and keeps the running mean of
its iterates theta_k taken every ``every`` steps after ``start``:

    n <- n + 1,   bar_theta <- bar_theta + (theta_k - bar_theta) / n

- At T = 0 with a constant (or cyclical) step size this is Stochastic Weight Averaging
  (Izmailov, Podoprikhin, Garipov, Vetrov & Wilson, UAI 2018): SGD's iterates bounce around a
  wide basin and their mean lands near its centre, where the loss is flatter.
- At T > 0 (SGLD, Welling & Teh 2011) the average estimates the mean of p^(1/T): the
  posterior mean (Bayesian model averaging of the parameters' first moment, exact for a
  Gaussian) at T = 1, and for T < 1 the mean of the tempered posterior. This "Langevin
  averaging" emulates landscape smoothing: the mean of the Gibbs measure at T is pulled
  towards wide regions, as Entropy-SGD's local mean is (Chaudhari et al. 2017).

The wrapper's ``position`` is the average (the wrapped iterate before averaging starts), so
``hb.optimize`` returns bar_theta and ``hb.sample`` records it. The average is an estimator,
not a draw: the wrapper reports ``temperature`` 0 to the drivers, and the wrapped sampler's
own temperature is in ``stats["temperature"]`` and ``hyperparameters["sampler"]``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from heatbath.kernels import validate as _validate
from heatbath.kernels import schedules as _schedules
from heatbath.samplers.base import Sampler

PyTree = Any

__all__ = ["AveragedState", "averaged"]


class AveragedState(NamedTuple):
    position: PyTree  # the running average (the wrapped iterate while count == 0)
    step: jax.Array
    inner: Any  # the wrapped sampler's state
    count: jax.Array  # iterates averaged so far


def averaged(sampler: Sampler, start: int = 0, every: int = 1) -> Sampler:
    """Average the iterates of ``sampler`` (SWA at T = 0, Langevin averaging at T > 0).

        after step k (k = 1, 2, ...): if k > start and (k - start) % every == 0:
            n <- n + 1;  bar_theta <- bar_theta + (theta_k - bar_theta) / n

    Izmailov et al. (UAI 2018) for SWA; Welling & Teh (2011) for averaging SGLD iterates.

    Args:
      sampler: any heatbath Sampler (``sgld(h, temperature=0.0)`` is SWA's SGD).
      start: steps to run before averaging (burn-in, e.g. the end of the SGD phase of SWA).
      every: average every this many steps (SWA's cycle length with a cyclical step size).
    """
    if not isinstance(sampler, Sampler):
        raise TypeError(f"averaged needs a heatbath Sampler, got {type(sampler).__name__}")
    start = _validate.check_int(start, "start", minimum=0)
    every = _validate.check_int(every, "every", minimum=1)

    def init(position, key=None):
        inner = sampler.init(position, key)
        zero = jnp.zeros((), jnp.int32)
        return AveragedState(inner.position, zero, inner, zero)

    def step(key, state: AveragedState, batch, grad_fn):
        inner, info = sampler.step(key, state.inner, batch, grad_fn)
        k = state.step + 1
        take = jnp.logical_and(k > start, (k - start) % every == 0)
        n = state.count + take.astype(state.count.dtype)
        inv = 1.0 / jnp.maximum(n, 1).astype(jnp.result_type(float))

        def leaf(avg, x):
            updated = avg + (x - avg) * inv.astype(avg.dtype)
            return jnp.where(take, updated, jnp.where(state.count > 0, avg, x))

        position = jax.tree.map(leaf, state.position, inner.position)
        return AveragedState(position, k, inner, n), info

    hyper = dict(sampler=sampler, start=start, every=every)

    def rebuild(**changes):
        own = {k: changes.pop(k) for k in ("start", "every") if k in changes}
        inner = sampler.rebuild(**changes) if changes else sampler
        return averaged(inner, **{"start": start, "every": every, **own})

    return Sampler(
        init=init,
        step=step,
        gradient=sampler.gradient,
        temperature=_schedules.constant(0.0),
        name=f"averaged-{sampler.name}",
        grads_per_step=sampler.grads_per_step,
        hyperparameters=hyper,
        rebuild=rebuild,
        gradient_at_position=False,  # the position is the average, the gradient is at the iterate
        steps_per_draw=sampler.steps_per_draw,
    )
