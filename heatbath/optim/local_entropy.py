"""Entropy-SGD (Chaudhari, Choromanska, Soatto, LeCun, Baldassi, Borgs, Chayes, Sagun &
Zecchina, ICLR 2017, "Entropy-SGD: biasing gradient descent into wide valleys"), built from
the SGLD kernel.

Entropy-SGD maximises the *local entropy* of the (tempered) posterior around theta,

    F(theta; gamma) = log \\int p(theta')^(1/T) exp(-gamma / (2 T) |theta - theta'|^2) d theta',
    grad F(theta) = (gamma / T) (<theta'> - theta),

where <theta'> is the mean of the local Gibbs measure
p(theta' | theta) ~ p(theta')^(1/T) exp(-gamma |theta - theta'|^2 / (2 T)). F is log p
smoothed by a Gaussian of variance T / gamma: it is large where the posterior has a lot of
mass near theta (a wide valley), not only a high peak, which is why Entropy-SGD prefers
flat minima. Each outer iteration estimates <theta'> by an inner SGLD chain on the coupled
density (``heatbath.samplers.overdamped.build_kernel``, one minibatch per inner step):

    theta' <- theta' + h' [grad log p~(theta') - gamma (theta' - theta)] + sqrt(2 h' T) xi
    mu     <- beta mu + (1 - beta) theta'                       (L inner steps; mu, theta'
                                                                  start at theta)
    theta  <- theta + eta gamma (mu - theta)                    (the outer step, every L steps)
    gamma  <- gamma_0 (1 + scoping)^t                           ("scoping", t the outer count)

(the outer step is gradient ascent on T F, Algorithm 1 of the paper; the official code,
ucla-vision/entropy-sgd, folds gamma into eta and uses beta = 0.75, a thermal noise
eps = 1e-4 on a mean loss, i.e. T = eps^2 in that scale). In heatbath's scale (log p~ sums
the N likelihood terms) T = 1 is the posterior itself: the local entropy of the posterior.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from heatbath.kernels import validate as _validate
from heatbath.kernels import schedules as _schedules
from heatbath.kernels import tree
from heatbath.kernels.gradients import naive
from heatbath.samplers.base import Sampler, check_gradient_spec
from heatbath.samplers.overdamped import SGLDState
from heatbath.samplers.overdamped import build_kernel as _sgld_kernel

PyTree = Any

__all__ = ["EntropySGDState", "entropy_sgd"]


class EntropySGDState(NamedTuple):
    position: PyTree  # theta, the outer iterate (what hb.optimize returns)
    step: jax.Array  # driver steps = inner steps
    inner: SGLDState  # theta', the inner SGLD chain (its step is the global step)
    mean: PyTree  # mu, the running estimate of the local Gibbs mean


def entropy_sgd(
    step_size,
    gamma,
    *,
    inner_step_size,
    num_inner: int = 20,
    temperature=1.0,
    mean_decay: float = 0.75,
    scoping: float = 0.0,
    gradient=None,
) -> Sampler:
    """Entropy-SGD as a heatbath Sampler (run it with ``hb.optimize``).

    One driver step is one inner SGLD step on the coupled density
    log p~(theta') - gamma |theta' - theta|^2 / 2 at temperature T (a fresh minibatch each);
    every ``num_inner`` steps the outer iterate moves: theta <- theta + eta gamma (mu - theta),
    and theta', mu restart at the new theta (see the module docstring for the full update
    and Chaudhari et al. 2017 for the method). So ``num_steps`` of ``hb.optimize`` makes
    ``num_steps // num_inner`` outer steps, at the cost of ``num_steps`` minibatch gradients.

    Args:
      step_size: eta > 0, the outer step (a number, or a schedule of the OUTER count t).
      gamma: gamma_0 > 0, the coupling ("scope"); the local Gibbs measure has width
        sqrt(T / gamma) around theta. Small gamma: wide smoothing; large: Entropy-SGD -> SGD.
      inner_step_size: h' > 0 of the inner SGLD chain (a number or a schedule of the step).
        It must be stable for the coupled density: h' (curvature + gamma) < 2.
      num_inner: L, inner steps per outer step.
      temperature: T >= 0 of the inner chain (number or schedule of the step); T = 0 makes
        the inner loop gradient ascent to the proximal point (then Entropy-SGD is a proximal
        point method). The outer iterate itself gets no noise: ``Sampler.temperature`` is 0.
      mean_decay: beta in [0, 1), the exponential average of the inner iterates.
      scoping: gamma_t = gamma_0 (1 + scoping)^t, t the outer count (the paper's scoping).
      gradient: the gradient estimator (see :func:`heatbath.samplers.sgld`).
    """
    eta = _schedules.as_schedule(step_size, "step_size", positive=True)
    gamma0 = _validate.check_real(gamma, "gamma", low=0.0, low_open=True)
    h_inner = _schedules.as_schedule(inner_step_size, "inner_step_size", positive=True)
    T = _schedules.as_schedule(temperature, "temperature", positive=False)
    L = _validate.check_int(num_inner, "num_inner", minimum=1)
    beta = _validate.check_unit(mean_decay, "mean_decay")
    scope = _validate.check_real(scoping, "scoping", low=0.0)
    spec = check_gradient_spec(naive() if gradient is None else gradient)
    inner_kernel = _sgld_kernel(h_inner, T)

    def init(position, key=None):
        del key
        zero = jnp.zeros((), jnp.int32)
        return EntropySGDState(position, zero, SGLDState(position, zero), position)

    def step(key, state: EntropySGDState, batch, grad_fn):
        outer = state.step // L
        g_t = gamma0 * (1.0 + scope) ** outer.astype(jnp.result_type(float))
        anchor = state.position

        def coupled_grad(xp, b):
            lp, g = grad_fn(xp, b)
            return lp, jax.tree.map(lambda gl, a, c: gl - g_t * (a - c), g, xp, anchor)

        inner, info = inner_kernel(key, state.inner, batch, coupled_grad)
        mean = jax.tree.map(lambda m, a: beta * m + (1.0 - beta) * a, state.mean, inner.position)
        last = (state.step + 1) % L == 0
        e = eta(outer)
        moved = jax.tree.map(lambda x, m: x + e * g_t * (m - x), anchor, mean)
        new_x = jax.tree.map(lambda a, b: jnp.where(last, a, b), moved, anchor)
        new_inner = SGLDState(jax.tree.map(lambda a, b: jnp.where(last, a, b), new_x, inner.position), inner.step)
        new_mean = jax.tree.map(lambda a, b: jnp.where(last, a, b), new_x, mean)
        info = info._replace(diverging=jnp.logical_or(info.diverging, jnp.logical_not(tree.all_finite(new_x))))
        return EntropySGDState(new_x, state.step + 1, new_inner, new_mean), info

    hyper = dict(step_size=step_size, gamma=gamma, inner_step_size=inner_step_size, num_inner=num_inner,
                 temperature=temperature, mean_decay=mean_decay, scoping=scoping, gradient=spec)
    return Sampler(
        init=init,
        step=step,
        gradient=spec,
        temperature=_schedules.constant(0.0),  # the outer iterate is noiseless
        name="entropy-sgd",
        grads_per_step=1.0,
        hyperparameters=hyper,
        rebuild=lambda **changes: entropy_sgd(**{**hyper, **changes}),
        gradient_at_position=False,  # the inner chain's gradients are at theta', not theta
    )
