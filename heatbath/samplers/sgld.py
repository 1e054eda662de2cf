"""Stochastic gradient Langevin dynamics: SGLD and preconditioned SGLD (pSGLD).

SGLD (Welling & Teh, ICML 2011), with g = grad log p~(theta) the minibatch estimate of the
gradient of the log posterior, step size h and temperature T:

    theta <- theta + h g + sqrt(2 h T) xi,      xi ~ N(0, I).

At T = 1 it samples the posterior (up to an O(h) bias), at T < 1 a tempered posterior, at
T = 0 it is exactly gradient ascent on log p~, i.e. SGD on the potential U = -log p.

pSGLD (Li, Chen, Carlson & Carin, AAAI 2016), with the RMSprop diagonal G:

    V <- a V + (1 - a) g * g,   G = 1 / (eps + sqrt(V)),
    theta <- theta + h (G g + Gamma) + sqrt(2 h T G) xi,

with Gamma_i = dG_ii/dtheta_i the divergence correction, taking V as a function of theta
through the current gradient (Li et al., eq. 4). ``correction=False`` (the paper's choice)
drops Gamma; ``correction=True`` adds it, estimating the Hessian diagonal by Hutchinson's
z * (H z) with one Hessian-vector product per step (about twice the cost of a gradient), and
only once the averaging window 1/(1 - a) is full (Gamma ~ 1/V is stiff while V fills up from
0). What dropping it costs is measured in the README (benchmarks/psgld_correction.py): on
N(0, 1) Gamma removes little of pSGLD's bias, which comes from V tracking the position when
the window 1/(1 - a) is short in time units (the chain then samples pi / G); keep a close to
1 - h/10, or use a fixed preconditioner. At T = 0 pSGLD is RMSprop.

The gradient estimator (naive, control variates of Baker et al. 2019, SVRG) is chosen with
``gradient=`` and built by the driver; see :mod:`heatbath.kernels.gradients`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from heatbath.kernels import preconditioners as _precond
from heatbath.kernels import schedules as _schedules
from heatbath.kernels import tree
from heatbath.kernels.gradients import naive
from heatbath.samplers.base import Info, Sampler, check_gradient_spec

PyTree = Any

__all__ = ["SGLDState", "PSGLDState", "sgld", "psgld", "build_kernel", "build_preconditioned_kernel"]


class SGLDState(NamedTuple):
    position: PyTree
    step: jax.Array


class PSGLDState(NamedTuple):
    position: PyTree
    step: jax.Array
    preconditioner: Any


def _noise_scale(h, T):
    return jnp.sqrt(2.0 * h * T)


def build_kernel(step_size, temperature):
    """The SGLD transition for validated schedules ``step_size`` and ``temperature``."""
    noiseless = _schedules.is_constant(temperature) == 0.0

    def step(key, state: SGLDState, batch, grad_fn):
        h = step_size(state.step)
        T = temperature(state.step)
        lp, g = grad_fn(state.position, batch)
        if noiseless:
            new = jax.tree.map(lambda p, gl: p + h * gl, state.position, g)
        else:
            c = _noise_scale(h, T)
            xi = tree.normal_like(key, state.position)
            new = jax.tree.map(lambda p, gl, n: p + h * gl + c * n, state.position, g, xi)
        info = Info(h, T, tree.norm(g), lp, jnp.logical_not(tree.all_finite(new)))
        return SGLDState(new, state.step + 1), info

    return step


def sgld(step_size, temperature=1.0, *, gradient=None) -> Sampler:
    """SGLD: theta <- theta + h grad log p~(theta) + sqrt(2 h T) xi (Welling & Teh 2011).

    Args:
      step_size: h > 0, a number or a schedule of the step count
        (e.g. ``heatbath.kernels.schedules.polynomial_decay``).
      temperature: T >= 0, a number or a schedule. T = 0 is SGD; T < 1 a cold posterior.
      gradient: the gradient estimator: ``"naive"`` (default), ``"cv"`` (control variates at
        the MAP, found by the driver) or a spec from :mod:`heatbath.kernels.gradients`
        (``control_variates(centre=...)``, ``svrg(update_every)``).
    """
    h = _schedules.as_schedule(step_size, "step_size", positive=True)
    T = _schedules.as_schedule(temperature, "temperature", positive=False)
    spec = check_gradient_spec(naive() if gradient is None else gradient)

    def init(position, key=None):
        del key
        return SGLDState(position, jnp.zeros((), jnp.int32))

    hyper = dict(step_size=step_size, temperature=temperature, gradient=spec)
    return Sampler(
        init=init,
        step=build_kernel(h, T),
        gradient=spec,
        temperature=T,
        name="sgld" if spec.name == "naive" else f"sgld-{spec.name}",
        grads_per_step=1.0,
        hyperparameters=hyper,
        rebuild=lambda **changes: sgld(**{**hyper, **changes}),
    )


def build_preconditioned_kernel(
    step_size, temperature, preconditioner: _precond.Preconditioner, correction: bool, correction_delay: int = 0
):
    """The preconditioned Langevin transition (pSGLD when the preconditioner is RMSprop)."""
    noiseless = _schedules.is_constant(temperature) == 0.0
    if correction and preconditioner.correction is None:
        raise ValueError(f"the {preconditioner.name} preconditioner has no divergence correction to add")

    def step(key, state: PSGLDState, batch, grad_fn):
        h = step_size(state.step)
        T = temperature(state.step)
        key_noise, key_probe = jax.random.split(key)
        if correction:
            z = tree.rademacher_like(key_probe, state.position)
            (lp, g), (_, hz) = jax.jvp(lambda p: grad_fn(p, batch), (state.position,), (z,))
        else:
            lp, g = grad_fn(state.position, batch)
        pstate = preconditioner.update(state.preconditioner, g)
        G = preconditioner.diagonal(pstate)
        if G is None:
            drift = g
        else:
            drift = tree.mul(G, g)
        if correction:
            gamma = preconditioner.correction(pstate, g, tree.mul(z, hz))
            # Gamma ~ 1/V is stiff while the running average V is still filling up (V starts
            # at 0): switch it on once the averaging window (``correction_delay`` steps) is full.
            on = state.step >= correction_delay
            drift = jax.tree.map(lambda d, gm: d + jnp.where(on, gm, 0.0), drift, gamma)
        if noiseless:
            new = jax.tree.map(lambda p, d: p + h * d, state.position, drift)
        else:
            xi = tree.normal_like(key_noise, state.position)
            if G is None:
                c = _noise_scale(h, T)
                new = jax.tree.map(lambda p, d, n: p + h * d + c * n, state.position, drift, xi)
            else:
                new = jax.tree.map(
                    lambda p, d, n, gl: p + h * d + jnp.sqrt(2.0 * h * T * gl) * n, state.position, drift, xi, G
                )
        info = Info(h, T, tree.norm(g), lp, jnp.logical_not(tree.all_finite(new)))
        return PSGLDState(new, state.step + 1, pstate), info

    return step


def psgld(
    step_size,
    temperature=1.0,
    *,
    decay: float = 0.99,
    eps: float = 1e-5,
    correction: bool = False,
    gradient=None,
    preconditioner: _precond.Preconditioner | None = None,
) -> Sampler:
    """pSGLD: RMSprop-preconditioned SGLD (Li et al. 2016).

        V <- a V + (1 - a) g^2;  G = 1 / (eps + sqrt(V));
        theta <- theta + h (G g + Gamma) + sqrt(2 h T G) xi

    Args:
      step_size: h > 0 (number or schedule). Note that G ~ 1/|g| makes h dimensionless;
        typical values are 1e-4 to 1e-2 whatever the scale of the posterior.
      temperature: T >= 0 (number or schedule); T = 0 is RMSprop.
      decay: a, the RMSprop averaging constant.
      eps: the RMSprop damping.
      correction: add the divergence term Gamma (one extra Hessian-vector product per step).
      gradient: the gradient estimator (see :func:`sgld`).
      preconditioner: any diagonal preconditioner from :mod:`heatbath.kernels.preconditioners`
        in place of RMSprop (``decay`` and ``eps`` are then ignored).
    """
    h = _schedules.as_schedule(step_size, "step_size", positive=True)
    T = _schedules.as_schedule(temperature, "temperature", positive=False)
    spec = check_gradient_spec(naive() if gradient is None else gradient)
    pre = _precond.rmsprop(decay, eps) if preconditioner is None else preconditioner

    def init(position, key=None):
        del key
        return PSGLDState(position, jnp.zeros((), jnp.int32), pre.init(position))

    hyper = dict(step_size=step_size, temperature=temperature, decay=decay, eps=eps,
                 correction=correction, gradient=spec, preconditioner=preconditioner)
    return Sampler(
        init=init,
        step=build_preconditioned_kernel(h, T, pre, correction, int(math.ceil(1.0 / (1.0 - decay)))),
        gradient=spec,
        temperature=T,
        name="psgld" if spec.name == "naive" else f"psgld-{spec.name}",
        grads_per_step=3.0 if correction else 1.0,
        hyperparameters=hyper,
        rebuild=lambda **changes: psgld(**{**hyper, **changes}),
    )
