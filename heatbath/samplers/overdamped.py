"""Stochastic gradient Langevin dynamics: SGLD and preconditioned SGLD (pSGLD).

SGLD (Welling & Teh, ICML 2011), with g = grad log p~(theta) the minibatch estimate of the
gradient of the log posterior, step size h and temperature T:

    theta <- theta + h g + sqrt(2 h T) xi,      xi ~ N(0, I).

At T = 1 it samples the posterior (up to an O(h) bias), at T < 1 a tempered posterior, at
T = 0 it is exactly gradient ascent on log p~, i.e. SGD on the potential U = -log p.

pSGLD (Li, Chen, Carlson & Carin, AAAI 2016), with the RMSprop diagonal G:

    V <- a V + (1 - a) g * g,   G = 1 / (eps + sqrt(V)),
    theta <- theta + h (G g + T Gamma) + sqrt(2 h T G) xi,

with Gamma_i = dG_ii/dtheta_i the divergence correction, taking V as a function of theta
through the current gradient (Li et al., eq. 4, written there at T = 1). The noise
sqrt(2 h T G) xi makes the diffusion T G, so Gamma enters multiplied by T (Ma, Chen & Fox
2015; see :mod:`heatbath.kernels.preconditioners`): with Gamma unscaled the chain would
sample p^(1/T) G^((1-T)/T) at T != 1. ``correction=False`` (the paper's choice) drops Gamma;
``correction=True`` adds T Gamma, estimating the Hessian diagonal by Hutchinson's z * (H z)
with one Hessian-vector product per step (about twice the cost of a gradient), and only once
the preconditioner's averaging window (ceil(1/(1 - a)) steps for RMSprop) is full (Gamma ~
1/V is stiff while V fills up from 0). What dropping it costs at T = 1 is measured in the
README (benchmarks/psgld_correction.py): on N(0, 1) Gamma removes little of pSGLD's bias,
which comes from V tracking the position when the window 1/(1 - a) is short in time units
(the chain then samples pi / G); keep a close to 1 - h/10, or use a fixed preconditioner.
At T = 0 pSGLD is RMSprop, with or without the correction (T Gamma = 0).

pSGLD, optax.rmsprop-Langevin and Adam-Langevin (:mod:`heatbath.samplers.optax_langevin`) are one
kernel, :func:`build_preconditioned_kernel`, with a preconditioner from
:mod:`heatbath.kernels.preconditioners` and, for Adam, a first-moment drift.

The gradient estimator (naive, control variates of Baker et al. 2019, SVRG) is chosen with
``gradient=`` and built by the driver; see :mod:`heatbath.kernels.gradients`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from heatbath.kernels import validate as _validate
from heatbath.kernels import preconditioners as _precond
from heatbath.kernels import schedules as _schedules
from heatbath.kernels import noise as _noise
from heatbath.kernels import tree
from heatbath.kernels.gradients import default_estimator, naive
from heatbath.samplers.base import Info, Sampler, check_gradient_spec, make_sampler

PyTree = Any

__all__ = ["SGLDState", "PSGLDState", "sgld", "psgld", "build_kernel", "build_preconditioned_kernel",
           "preconditioned_sampler"]


class SGLDState(NamedTuple):
    position: PyTree
    step: jax.Array


class PSGLDState(NamedTuple):
    position: PyTree
    step: jax.Array
    preconditioner: Any  # the preconditioner's state (RMSprop's / Adam's second moment, ...)
    momentum: Any = ()  # Adam's first moment mu (a pytree like position) with b1, () otherwise


def _noise_scale(h, T):
    return jnp.sqrt(2.0 * h * T)


# Bound on the size of one update's terms below which SGLD's finiteness check trusts the sum
# not to overflow float32 (3.4e38): far above any sane step, far below overflow.
UPDATE_BOUND = 1e30


def _update_finite(h, sq, c):
    """Whether x + h g + c xi is finite, from scalars only (no pass over the new state).

    x is finite (the driver's guard keeps it so) and xi is (every noise source draws finite
    values of a few units at most), so the new position is finite when g is (sum g^2 finite),
    h g is (h |g| <= h sqrt(sum g^2)) and c is (a schedule gone negative makes sqrt(2 h T) NaN),
    and the sum cannot overflow: h sqrt(sum g^2) + c below UPDATE_BOUND. A state beyond that
    is flagged (conservatively: such a step has left any posterior's scale). What remains is
    x itself within UPDATE_BOUND of float32's maximum, which the next step's log-density
    check and the end-of-run check of the positions catch."""
    size = h * jnp.sqrt(sq) + c
    return jnp.logical_and(jnp.isfinite(sq), size < UPDATE_BOUND)


def build_kernel(step_size, temperature, noise=None):
    """The SGLD transition for validated schedules ``step_size`` and ``temperature``; xi comes
    from the noise source ``noise`` (:mod:`heatbath.kernels.noise`, default Brownian)."""
    noiseless = _schedules.is_constant(temperature) == 0.0
    source = _noise.as_noise(noise)

    def step(key, state: SGLDState, batch, grad_fn):
        h = step_size(state.step)
        T = temperature(state.step)
        lp, g = grad_fn(state.position, batch)
        if noiseless:
            new = jax.tree.map(lambda p, gl: p + h * gl, state.position, g)
        else:
            c = _noise_scale(h, T)
            xi = source.draw(key, state.position)
            new = jax.tree.map(lambda p, gl, n: p + h * gl + c * n, state.position, g, xi)
        sq = tree.sq_norm(g)
        info = Info(h, T, jnp.sqrt(sq), lp, jnp.logical_not(_update_finite(h, sq, 0.0 if noiseless else c)))
        return SGLDState(new, state.step + 1), info

    return step


def sgld(step_size=None, *, temperature=1.0, gradient=None, noise=None) -> Sampler:
    """SGLD: theta <- theta + h grad log p~(theta) + sqrt(2 h T) xi (Welling & Teh 2011).

    Args:
      step_size: h > 0, a number or a schedule of the step count
        (e.g. ``heatbath.kernels.schedules.polynomial_decay``). None (default): chosen by
        ``hb.sample`` during warmup, h = 0.2 / lambda_max(H + V / T) from the measured Hessian H
        and minibatch-gradient covariance V (:mod:`heatbath.drivers.autotune`; about 5% on the
        posterior sd in the worst direction), reported in ``Result.tuning``.
      temperature: T >= 0, a number or a schedule (keyword-only). T = 0 is SGD
        (``optax.sgd(h)`` step by step); T < 1 a cold posterior.
      gradient: the gradient estimator: ``"naive"`` (default), ``"cv"`` (control variates at
        the MAP, found by the driver) or a spec from :mod:`heatbath.kernels.gradients`
        (``control_variates(centre=...)``, ``svrg(update_every)``).
      noise: the source of xi (:mod:`heatbath.kernels.noise`; default Brownian).
    """
    h = _schedules.as_schedule(1e-3 if step_size is None else step_size, "step_size", positive=True)
    T = _schedules.as_schedule(temperature, "temperature", positive=False)
    spec = check_gradient_spec(default_estimator() if gradient is None else gradient)

    def init(position, key=None):
        del key
        return SGLDState(position, jnp.zeros((), jnp.int32))

    hyper = dict(step_size=step_size, temperature=temperature, gradient=spec, noise=noise)
    return make_sampler(sgld, hyper, base_name="sgld", init=init, step=build_kernel(h, T, _noise.as_noise(noise)),
                        gradient=spec, temperature=T, auto=("step_size",) if step_size is None else (),
                        checks_state=True)


def build_preconditioned_kernel(
    step_size,
    temperature,
    preconditioner: _precond.Preconditioner,
    correction: bool,
    *,
    b1: float | None = None,
    nesterov: bool = False,
    noise=None,
):
    """The preconditioned Langevin transition, for validated schedules ``step_size`` (h) and
    ``temperature`` (T) and a preconditioner G from :mod:`heatbath.kernels.preconditioners`:

        theta <- theta + h (G d + T Gamma) + sqrt(2 h T G) xi,      xi ~ N(0, I),

    with the drift direction d = g = grad log p~(theta) (pSGLD, Li et al. 2016), or, with
    ``b1`` set, Adam's bias-corrected first moment (Kingma & Ba 2015), t = k + 1:

        mu <- b1 mu + (1 - b1) g,    d = mu / (1 - b1^t)
        (nesterov: d = b1 mu / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t), as optax.adam).

    G is updated with the new gradient before it is used. ``correction=True`` adds T Gamma
    (Gamma_i = dG_ii / d theta_i, with Hutchinson's z * (H z) for the Hessian diagonal: one
    Hessian-vector product per step) from step ``preconditioner.window`` on; at a constant
    T = 0 it is skipped (it would be multiplied by 0). With ``b1`` the pair (theta, mu) is not
    a Langevin sampler of p^(1/T) for h > 0 (see :mod:`heatbath.samplers.optax_langevin`).
    """
    noiseless = _schedules.is_constant(temperature) == 0.0
    if correction and preconditioner.correction is None:
        raise ValueError(f"the {preconditioner.name} preconditioner has no divergence correction to add")
    with_gamma = bool(correction) and not noiseless
    window = int(preconditioner.window)
    source = _noise.as_noise(noise)

    def step(key, state: PSGLDState, batch, grad_fn):
        h = step_size(state.step)
        T = temperature(state.step)
        if with_gamma:
            key_noise, key_probe = jax.random.split(key)
            z = tree.rademacher_like(key_probe, state.position)
            (lp, g), (_, hz) = jax.jvp(lambda p: grad_fn(p, batch), (state.position,), (z,))
        else:
            key_noise = key
            lp, g = grad_fn(state.position, batch)
        pstate = preconditioner.update(state.preconditioner, g)
        if b1 is None:
            momentum, direction = state.momentum, g
        else:
            count = state.step + 1
            momentum = jax.tree.map(lambda gl, m: (1 - b1) * gl + b1 * m, g, state.momentum)
            if nesterov:
                direction = jax.tree.map(
                    lambda m, gl: b1 * m + (1 - b1) * gl,
                    _precond.bias_correction(momentum, b1, count + 1),
                    _precond.bias_correction(g, b1, count),
                )
            else:
                direction = _precond.bias_correction(momentum, b1, count)
        G = None if noiseless else preconditioner.diagonal(pstate)
        if G is not None and preconditioner.apply is None:
            drift = tree.mul(G, direction)  # one G for the drift and the noise
        else:
            drift = _precond.precondition(preconditioner, pstate, direction)
        if with_gamma:
            gamma = preconditioner.correction(pstate, g, tree.mul(z, hz))
            on = state.step >= window
            # T Gamma, not Gamma: the diffusion is T G (see heatbath.kernels.preconditioners).
            drift = jax.tree.map(lambda d, gm: d + T * jnp.where(on, gm, 0.0), drift, gamma)
        if noiseless:
            new = jax.tree.map(lambda p, d: p + h * d, state.position, drift)
        else:
            xi = source.draw(key_noise, state.position)
            if G is None:
                c = _noise_scale(h, T)
                new = jax.tree.map(lambda p, d, n: p + h * d + c * n, state.position, drift, xi)
            else:
                new = jax.tree.map(
                    lambda p, d, n, gl: p + h * d + jnp.sqrt(2.0 * h * T * gl) * n, state.position, drift, xi, G
                )
        info = Info(h, T, tree.norm(g), lp, jnp.logical_not(tree.all_finite(new)))
        return PSGLDState(new, state.step + 1, pstate, momentum), info

    return step


def preconditioned_sampler(
    step_size, temperature, preconditioner, correction, gradient, *, name, hyperparameters, constructor,
    b1=None, nesterov=False, noise=None,
) -> Sampler:
    """The Sampler around :func:`build_preconditioned_kernel` (pSGLD, RMSprop- and Adam-Langevin)."""
    h = _schedules.as_schedule(step_size, "step_size", positive=True)
    T = _schedules.as_schedule(temperature, "temperature", positive=False)
    if not isinstance(preconditioner, _precond.Preconditioner):
        raise TypeError(
            "preconditioner must be one of heatbath.kernels.preconditioners (identity(), fixed(...), "
            f"rmsprop(...), adam(...)), got {type(preconditioner).__name__}"
        )
    correction = _validate.check_bool(correction, "correction")
    spec = check_gradient_spec(default_estimator() if gradient is None else gradient)
    step = build_preconditioned_kernel(h, T, preconditioner, correction, b1=b1, nesterov=nesterov,
                                      noise=_noise.as_noise(noise))
    with_gamma = correction and _schedules.is_constant(T) != 0.0

    def init(position, key=None):
        del key
        momentum = tree.zeros_like(position) if b1 is not None else ()
        return PSGLDState(position, jnp.zeros((), jnp.int32), preconditioner.init(position), momentum)

    return make_sampler(
        constructor, hyperparameters, base_name=name, init=init, step=step, gradient=spec, temperature=T,
        grads_per_step=3.0 if with_gamma else 1.0,
        # The Hessian-vector product of the correction differentiates the gradient estimator.
        gradient_at_position=not with_gamma,
    )


def psgld(
    step_size=None,
    *,
    temperature=1.0,
    decay=None,
    eps: float = 1e-5,
    correction: bool = False,
    gradient=None,
    preconditioner: _precond.Preconditioner | None = None,
    noise=None,
) -> Sampler:
    """pSGLD: RMSprop-preconditioned SGLD (Li et al. 2016).

        V <- a V + (1 - a) g^2;  G = 1 / (eps + sqrt(V));
        theta <- theta + h (G g + T Gamma) + sqrt(2 h T G) xi

    Args:
      step_size: h > 0 (number or schedule). Note that G ~ 1/|g| makes h dimensionless;
        typical values are 1e-4 to 1e-2 whatever the scale of the posterior. None (default):
        chosen by ``hb.sample`` during warmup as for :func:`sgld`, in the metric G.
      temperature: T >= 0 (number or schedule), keyword-only. T = 0 is RMSprop:
        ``optax.rmsprop(h, decay=a, eps=eps, eps_in_sqrt=False)`` step by step (optax's
        default ``eps_in_sqrt=True`` is ``preconditioner=rmsprop(a, eps, eps_in_sqrt=True)``).
      decay: a, the RMSprop averaging constant, in [0, 1). None (default): 0.99, or, when
        ``hb.sample`` chooses the step size h, max(0.99, 1 - h / 10), so that the preconditioner
        averages over a window 10 / h steps long (G tracking the position over a shorter window
        biases pSGLD; see the README's pSGLD bias table).
      eps: the RMSprop damping, > 0.
      correction: add the divergence term T Gamma (one extra Hessian-vector product per step),
        from step ``preconditioner.window`` (ceil(1 / (1 - a)) for RMSprop) on. Without it
        the chain samples p^(1/T) only up to an O(1 - a) bias (the paper's choice).
      gradient: the gradient estimator (see :func:`sgld`).
      preconditioner: any diagonal preconditioner from :mod:`heatbath.kernels.preconditioners`
        in place of ``rmsprop(decay, eps)`` (``decay`` and ``eps`` are then ignored).
      noise: the source of xi (:mod:`heatbath.kernels.noise`; default Brownian).
    """
    auto_decay = decay is None
    if decay is None:
        decay = 0.99
    if correction and isinstance(decay, _schedules.Tuned):
        # The correction starts at step ceil(1 / (1 - decay)), compiled in: keyed by value, not by name.
        decay = float(decay)
    pre = _precond.rmsprop(decay, eps) if preconditioner is None else preconditioner
    spec = check_gradient_spec(default_estimator() if gradient is None else gradient)
    hyper = dict(step_size=step_size, temperature=temperature, decay=None if auto_decay else decay, eps=eps,
                 correction=correction, gradient=spec, preconditioner=preconditioner, noise=noise)
    sampler = preconditioned_sampler(
        1e-3 if step_size is None else step_size, temperature, pre, correction, spec, name="psgld",
        hyperparameters=hyper, constructor=psgld, noise=noise,
    )
    return sampler._replace(auto=("step_size",)) if step_size is None else sampler
