"""SGNHT: the stochastic-gradient Nose-Hoover thermostat (Ding et al., NeurIPS 2014).

A scalar thermostat xi replaces SGHMC's fixed friction and adapts until the kinetic
temperature r^T M^-1 r / d equals T, absorbing unknown gradient noise (see :func:`sgnht`).
The mass, gradient-noise and momentum conventions are SGHMC's
(:mod:`heatbath.samplers.hamiltonian`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from heatbath.kernels import integrators as _integrators
from heatbath.kernels import noise as _noise
from heatbath.kernels import schedules as _schedules
from heatbath.kernels import tree
from heatbath.kernels import validate as _validate
from heatbath.samplers.base import Sampler, make_sampler
from heatbath.samplers.hamiltonian import (
    check_common,
    check_noise_budget,
    initial_momentum,
    min_leaf,
    restart_momentum,
    step_values,
)

PyTree = Any

__all__ = ["SGNHTState", "SGNHTInfo", "sgnht", "build_sgnht_kernel"]


class SGNHTState(NamedTuple):
    position: PyTree
    momentum: PyTree
    step: jax.Array
    thermostat: jax.Array  # xi, a scalar friction rate


class SGNHTInfo(NamedTuple):
    step_size: jax.Array
    temperature: jax.Array
    grad_norm: jax.Array
    lp: jax.Array
    diverging: jax.Array
    kinetic_energy: jax.Array
    thermostat: jax.Array


# ----------------------------------------------------------------------------------------
# SGNHT
# ----------------------------------------------------------------------------------------
def build_sgnht_kernel(step_size, diffusion, temperature, mass, gradient_noise, num_steps_per_sample: int,
                       resample_momentum: bool, noise=None):
    """The SGNHT transition (Ding et al. 2014) for validated schedules, mass and gradient noise."""
    noiseless = _schedules.is_constant(temperature) == 0.0
    source = _noise.as_noise(noise)

    def step(key, state: SGNHTState, batch, grad_fn):
        position = state.position
        h, T, M, inv_M = step_values(state, step_size, temperature, mass)
        A = diffusion(state.step)
        key_noise, momentum = key, state.momentum
        if resample_momentum:
            key_noise, momentum = restart_momentum(key, state, M, T, noiseless, num_steps_per_sample)
        lp, g = grad_fn(position, batch)
        xi = state.thermostat
        if noiseless:
            momentum = jax.tree.map(lambda r, gl: (1.0 - h * xi) * r + h * gl, momentum, g)
        else:
            noise = source.draw(key_noise, position)
            if gradient_noise is None:
                var = jax.tree.map(lambda m: 2.0 * h * A * T * m, M)
            else:
                V = tree.leafwise(gradient_noise, position, "gradient_noise")
                var = jax.tree.map(lambda m, v: jnp.maximum(2.0 * h * A * T * m - h * h * v, 0.0), M, V)
            momentum = jax.tree.map(
                lambda r, gl, s, n: (1.0 - h * xi) * r + h * gl + jnp.sqrt(s) * n, momentum, g, var, noise
            )
        new_pos = _integrators.position_update(position, momentum, h, inv_M)
        kinetic = _integrators.kinetic_energy(momentum, inv_M)
        d = tree.size(position)
        new_xi = xi + h * (2.0 * kinetic / d - T)
        diverging = jnp.logical_not(
            jnp.logical_and(jnp.logical_and(tree.all_finite(new_pos), tree.all_finite(momentum)), jnp.isfinite(new_xi))
        )
        info = SGNHTInfo(h, T, tree.norm(g), lp, diverging, kinetic, new_xi)
        return SGNHTState(new_pos, momentum, state.step + 1, new_xi), info

    return step


def sgnht(
    step_size,
    diffusion=1.0,
    *,
    mass=1.0,
    temperature=1.0,
    num_steps_per_sample: int = 1,
    thermostat_init=None,
    gradient_noise=None,
    resample_momentum: bool = False,
    gradient=None,
    noise=None,
) -> Sampler:
    """Stochastic-gradient Nose-Hoover thermostat (Ding et al., NeurIPS 2014).

    With a scalar thermostat xi (a friction rate that adapts), the diffusion A and d the
    number of coordinates:

        r     <- (1 - h xi) r + h g + N(0, 2 h A T M - h^2 V)
        theta <- theta + h M^-1 r
        xi    <- xi + h (r^T M^-1 r / d - T)

    At equilibrium xi settles where the kinetic temperature r^T M^-1 r / d equals T, which
    absorbs unknown gradient noise: with noise variance V it goes to xi = A + h mean(V/M)/(2T)
    instead of needing V (the beta-hat correction of SGHMC). With M = T = 1 this is Ding et
    al.'s Algorithm 2 written with the momentum r = v / h; with a scalar mass M it is Euler
    SGHMC with the friction rate C / M replaced by xi.

    Args:
      step_size: h > 0 (number or schedule).
      diffusion: A > 0 (number or schedule), the injected noise level; xi starts at A.
      mass, temperature, num_steps_per_sample, gradient_noise, resample_momentum, gradient, noise:
        as in :func:`sghmc` (keyword-only).
      thermostat_init: the initial xi (default: A at step 0).
    """
    h = _schedules.as_schedule(step_size, "step_size", positive=True)
    A = _schedules.as_schedule(diffusion, "diffusion", positive=True)
    T = _schedules.as_schedule(temperature, "temperature", positive=False)
    M, V, k, spec = check_common(mass, gradient_noise, num_steps_per_sample, resample_momentum, gradient)
    av = _schedules.is_constant(A)
    if V is not None and av is not None:
        # noise budget per coordinate: 2 h A T M >= h^2 V, i.e. h V <= 2 (A M) T
        check_noise_budget(h, _schedules.constant(av * min_leaf(M)), T, V, "diffusion * mass")
    if thermostat_init is None:
        xi0 = float(A(jnp.zeros((), jnp.int32)))
    else:
        xi0 = _validate.check_real(thermostat_init, "thermostat_init")
    noiseless = _schedules.is_constant(T) == 0.0

    def init(position, key=None):
        momentum = initial_momentum(position, key, M, V, T, noiseless)
        return SGNHTState(position, momentum, jnp.zeros((), jnp.int32), jnp.asarray(xi0, jnp.result_type(float)))

    hyper = dict(step_size=step_size, diffusion=diffusion, mass=mass, temperature=temperature,
                 num_steps_per_sample=k, thermostat_init=thermostat_init, gradient_noise=gradient_noise,
                 resample_momentum=resample_momentum, gradient=spec, noise=noise)
    return make_sampler(
        sgnht, hyper, base_name="sgnht", init=init,
        step=build_sgnht_kernel(h, A, T, M, V, k, resample_momentum, _noise.as_noise(noise)),
        gradient=spec, temperature=T, steps_per_draw=k,
    )
