r"""Stochastic-gradient Hamiltonian Monte Carlo (SGHMC) with splitting integrators.

SGHMC (Chen, Fox & Guestrin, ICML 2014) simulates the underdamped Langevin SDE

    d theta = M^-1 r dt,    d r = grad log p(theta) dt - C M^-1 r dt + sqrt(2 C T) dW

with a minibatch estimate g of grad log p, a diagonal mass M (a scalar or a pytree shaped
like the position), a friction C and a temperature T. Its stationary law is
p(theta)^(1/T) x N(r; 0, T M). One step of size h is a splitting of the SDE into the flows
A (theta += h M^-1 r), B (r += h g) and O (the exact Ornstein-Uhlenbeck flow
r <- e^{-C h/M} r + sqrt(T M (1 - e^{-2 C h/M})) xi), see
:mod:`heatbath.kernels.integrators`:

- ``"euler"`` (Chen et al. 2014, their Algorithm 2), in their variables v = h M^-1 r,
  eta = h^2 / M, alpha = h C / M:

      v <- (1 - alpha) v + eta g + N(0, 2 (alpha - beta^) eta T),    theta <- theta + v.

- ``"lie_trotter"``: a leapfrog step B(h/2) A(h) B(h/2) then an exact O(h) (Franzese et al.,
  ICML 2022, "Revisiting the effects of stochasticity for Hamiltonian samplers").
- ``"obabo"``, ``"baoab"``, ``"aboba"``: symmetric (Strang) splittings; with exact gradients
  their stationary bias is O(h^2) (BAOAB is exact in theta on Gaussian targets), against O(h)
  for Euler's momentum. With minibatch gradient noise of variance V every scheme has an O(h)
  bias, h V / (2 C) in the temperature of the momentum, which the beta-hat correction
  removes when V is known (``gradient_noise=V``).

Gradient-noise correction (Chen et al.'s beta-hat). A minibatch gradient with noise variance
V per coordinate adds h^2 V to the momentum's variance each step, on top of the 2 C h T
of the friction's noise. With ``gradient_noise=V`` the injected noise is reduced to keep the
total at 2 C h T: the O/E pieces run at the noise temperature T_O = T - h V / (2 C)
(for Euler this is Chen et al.'s N(0, 2 (alpha - beta^) eta T) with beta^ = eta V / 2 at
T = 1). T_O < 0 cannot be corrected; a constant setting that gives it is an error.

Temperature zero. At T = 0 Euler SGHMC is heavy-ball momentum, exactly optax.sgd with
momentum: v <- (1 - alpha) v + eta g; theta <- theta + v is ``optax.sgd(learning_rate=eta,
momentum=1 - alpha)`` on the loss U = -log p (optax's trace is -v / eta). Given a learning
rate and a momentum, :func:`heavy_ball_parameters` returns the step size h = sqrt(eta M) and
friction C = (1 - momentum) M / h.

As an optax update. :func:`heatbath.optim.as_optax` hands a sampler one gradient, at the
current parameters. Euler's kicks all precede its drift, so it qualifies; the FSAL splittings
(OBABO, BAOAB, Lie-Trotter) evaluate their gradient after the drift and are refused, but
``integrators.gradient_first(word)`` rotates them to start at that evaluation (OBABO ->
``"BOOBA"``), the same chain of positions (``Sampler.gradient_at_position``).

Momentum is carried across steps and draws (a chain of the SDE); ``resample_momentum=True``
redraws r ~ N(0, T M) at the start of every ``num_steps_per_sample``-th step, as in Chen et
al.'s Algorithm 2 (HMC-style restarts).

``num_steps_per_sample`` is the number of integrator steps per recorded draw. Every step is
one call of ``step`` with its own freshly drawn minibatch, so it is a driver-level thinning:
the driver records one draw every ``thinning * num_steps_per_sample`` steps (it reads
``Sampler.steps_per_draw``).

SGNHT (Ding, Fang, Babbush, Chen, Skeel & Neven, NeurIPS 2014), in
:mod:`heatbath.samplers.nose_hoover`, replaces the fixed friction by a thermostat xi that
adapts to the unknown gradient noise, with this module's checks and momentum helpers.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import validate as _validate
from heatbath.kernels import integrators as _integrators
from heatbath.kernels import integrators_fused as _fused
from heatbath.kernels import schedules as _schedules
from heatbath.kernels import noise as _noise
from heatbath.kernels import tree
from heatbath.kernels.gradients import default_estimator, naive
from heatbath.samplers.base import Sampler, check_gradient_spec, make_sampler

PyTree = Any

__all__ = [
    "SGHMCState",
    "SGHMCInfo",
    "sghmc",
    "heavy_ball_parameters",
    "build_kernel",
    "check_common",
    "check_noise_budget",
    "min_leaf",
    "initial_momentum",
    "restart_momentum",
    "step_values",
]


class SGHMCState(NamedTuple):
    """``cache``: the gradient carried between steps by FSAL splittings (``()`` otherwise)."""

    position: PyTree
    momentum: PyTree
    step: jax.Array
    cache: Any = ()


class SGHMCInfo(NamedTuple):
    step_size: jax.Array
    temperature: jax.Array
    grad_norm: jax.Array
    lp: jax.Array
    diverging: jax.Array
    kinetic_energy: jax.Array  # r^T M^-1 r / 2 at the end of the step


# ----------------------------------------------------------------------------------------
# Validation (eager, before any compilation) and the pieces SGHMC and SGNHT share
# ----------------------------------------------------------------------------------------
def check_common(mass, gradient_noise, num_steps_per_sample, resample_momentum, gradient):
    """Validated (M, V, k, gradient spec) of the arguments SGHMC and SGNHT share."""
    M = _validate.check_tree(mass, "mass", positive=True)
    V = None if gradient_noise is None else _validate.check_tree(gradient_noise, "gradient_noise", positive=False)
    k = _validate.check_int(num_steps_per_sample, "num_steps_per_sample", minimum=1)
    _validate.check_bool(resample_momentum, "resample_momentum")
    spec = check_gradient_spec(default_estimator() if gradient is None else gradient)
    return M, V, k, spec


def check_noise_budget(h, C, T, V, scale_name: str):
    """Constant settings where the gradient noise alone exceeds the friction's noise: an error."""
    hv, cv, tv = (_schedules.is_constant(s) for s in (h, C, T))
    if None in (hv, cv, tv) or V is None:
        return
    vmax = V if isinstance(V, float) else max(float(np.max(np.asarray(x))) for x in jax.tree.leaves(V))
    if hv * vmax > 2.0 * cv * tv * (1.0 + 1e-6):
        raise ValueError(
            f"gradient_noise={vmax:g} is too large to correct: step_size * gradient_noise = {hv * vmax:g} exceeds "
            f"2 * {scale_name} * temperature = {2 * cv * tv:g} (beta-hat > alpha); increase the {scale_name} or "
            "lower the step size"
        )


def min_leaf(M) -> float:
    return M if isinstance(M, float) else min(float(np.min(np.asarray(x))) for x in jax.tree.leaves(M))


def heavy_ball_parameters(learning_rate: float, momentum: float, mass: float = 1.0) -> dict:
    """The Euler-SGHMC (h, C) for which T = 0 is ``optax.sgd(learning_rate, momentum)``.

    eta = h^2 / M = learning_rate and 1 - alpha = 1 - h C / M = momentum, so
    h = sqrt(learning_rate M) and C = (1 - momentum) M / h.
    """
    learning_rate = _validate.check_real(learning_rate, "learning_rate", low=0.0, low_open=True)
    momentum = _validate.check_unit(momentum, "momentum")
    mass = _validate.check_real(mass, "mass", low=0.0, low_open=True)
    h = math.sqrt(learning_rate * mass)
    return {"step_size": h, "friction": (1.0 - momentum) * mass / h, "mass": mass}


# ----------------------------------------------------------------------------------------
# SGHMC
# ----------------------------------------------------------------------------------------
def _momentum_draw(key, position, mass, T, noiseless):
    """r ~ N(0, T M) (zeros at T = 0 or without a key)."""
    if noiseless or key is None:
        return tree.zeros_like(position)
    xi = _noise.brownian().draw(key, position)
    return jax.tree.map(lambda n, m: jnp.sqrt(T * m) * n, xi, mass)


def initial_momentum(position, key, mass, gradient_noise, temperature, noiseless):
    """The first momentum, r ~ N(0, T_0 M), after checking M and V against the position."""
    M = tree.leafwise(mass, position, "mass")
    if gradient_noise is not None:
        tree.leafwise(gradient_noise, position, "gradient_noise")
    return _momentum_draw(key, position, M, temperature(jnp.zeros((), jnp.int32)), noiseless)


def restart_momentum(key, state, M, T, noiseless, num_steps_per_sample):
    """``resample_momentum``: r ~ N(0, T M) at every ``num_steps_per_sample``-th step.

    Returns the key left for the step and the momentum to start it with."""
    key, key_mom = jax.random.split(key)
    fresh = _momentum_draw(key_mom, state.position, M, T, noiseless)
    restart = state.step % num_steps_per_sample == 0
    return key, jax.tree.map(lambda a, b: jnp.where(restart, a, b), fresh, state.momentum)


def step_values(state, step_size, temperature, mass):
    """h and T at the state's step, the mass M as a pytree like the position, and M^-1."""
    M = tree.leafwise(mass, state.position, "mass")
    return step_size(state.step), temperature(state.step), M, jax.tree.map(lambda m: 1.0 / m, M)


def _noise_temperature(T, h, C, V, position):
    """T_O = T - h V / (2 C) (beta-hat correction), per leaf; T itself when V is None."""
    if V is None:
        return jax.tree.map(lambda p: T, position)
    return jax.tree.map(lambda v, p: jnp.maximum(T - h * v / (2.0 * C), 0.0), V, position)


def build_kernel(split: _integrators.Splitting, step_size, friction, temperature, mass, gradient_noise,
                 num_steps_per_sample: int, resample_momentum: bool, noise=None, fuse_noise: bool = False):
    """The SGHMC transition for validated schedules and a validated mass / gradient noise; the
    O/E increments come from ``noise`` (:mod:`heatbath.kernels.noise`, default Brownian);
    ``fuse_noise``: one draw per run of O/E pieces (:mod:`heatbath.kernels.integrators_fused`)."""
    noiseless = _schedules.is_constant(temperature) == 0.0
    integrate = _integrators.build(split, noiseless=noiseless, noise=noise, fuse=fuse_noise)
    needs_next = fuse_noise and bool(_fused.fused_boundary(split)[0])

    def step(key, state: SGHMCState, batch, grad_fn):
        position = state.position
        h, T, M, inv_M = step_values(state, step_size, temperature, mass)
        C = friction(state.step)
        C_tree = jax.tree.map(lambda p: C, position)
        V = None if gradient_noise is None else tree.leafwise(gradient_noise, position, "gradient_noise")
        T_noise = _noise_temperature(T, h, C, V, position)
        key_int, momentum = key, state.momentum
        if resample_momentum:
            key_int, momentum = restart_momentum(key, state, M, T, noiseless, num_steps_per_sample)
        cache = state.cache if split.fsal else None
        next_params = None
        if needs_next:  # the next step's lead is applied at the end of this one
            step1 = state.step + 1
            h1, T1, C1 = step_size(step1), temperature(step1), friction(step1)
            next_params = (h1, jax.tree.map(lambda p: C1, position), _noise_temperature(T1, h1, C1, V, position))
        new_pos, new_mom, cache, lp, g = integrate(
            key_int, position, momentum, cache, batch, grad_fn, h, C_tree, M, inv_M, T_noise, next_params=next_params
        )
        # The whole new state checked with one pass (the position) and two sums computed anyway: the
        # kinetic energy (finite iff every momentum entry is, up to an overflow of r^2, flagged
        # too) and the gradient's sum of squares (an FSAL cache's gradient is g; its log density
        # is a scalar). So the driver's guard needs no pass of its own (``checks_state``).
        kinetic = _integrators.kinetic_energy(new_mom, inv_M)
        sq = tree.sq_norm(g)
        ok = jnp.logical_and(jnp.logical_and(tree.all_finite(new_pos), jnp.isfinite(kinetic)), jnp.isfinite(sq))
        if split.fsal:
            ok = jnp.logical_and(ok, jnp.isfinite(cache.lp))
        info = SGHMCInfo(h, T, jnp.sqrt(sq), lp, jnp.logical_not(ok), kinetic)
        return SGHMCState(new_pos, new_mom, state.step + 1, cache if split.fsal else ()), info

    return step


def sghmc(
    step_size=None,
    friction=None,
    integrator="obabo",
    *,
    mass=1.0,
    temperature=1.0,
    num_steps_per_sample: int = 1,
    gradient_noise=None,
    resample_momentum: bool = False,
    gradient=None,
    noise=None,
    fuse_noise: bool = False,
) -> Sampler:
    """Stochastic-gradient HMC with a splitting integrator (Chen et al. 2014; Franzese et al. 2022).

    SDE: d theta = M^-1 r dt;  dr = grad log p(theta) dt - C M^-1 r dt + sqrt(2 C T) dW.
    Pieces: A: theta += h M^-1 r;  B: r += h g;
    O: r <- exp(-C h/M) r + sqrt(T_O M (1 - exp(-2 C h/M))) xi;  E: r <- (1 - C h/M) r + sqrt(2 C h T_O) xi,
    with T_O = T - h V / (2 C) under the beta-hat correction (T_O = T without it).

    Args:
      step_size: h > 0, a number or a schedule of the step count; None (default): chosen by
        ``hb.sample`` during warmup from the measured curvature (:mod:`heatbath.drivers.autotune`).
      friction: C > 0 (number or schedule). The momentum relaxes at the rate C / M. None
        (default): chosen by ``hb.sample`` from the gradient noise measured during warmup, so
        that it dominates it (predicted excess temperature h v / (2 C) <= 0.2 T in the noisiest
        direction, ``autotune.EPS``: posterior sds at most about 10% wide there), and at least
        critical damping of the softest direction. The end-of-run check measures the noise
        again at the chains' final positions and warns when it predicts more.
      integrator: ``"obabo"`` (default), ``"baoab"``, ``"aboba"``, ``"lie_trotter"``,
        ``"euler"`` (Chen et al.'s SGHMC), any word in A, B, O, E (e.g. ``"OABAO"``), or a
        :class:`heatbath.kernels.integrators.Splitting`. Every named scheme costs one
        gradient per step (FSAL: the last gradient of a step is the first of the next; with
        minibatches it was computed on the previous step's batch). FSAL schemes spend their
        first step evaluating the initial gradient without moving. As an optax update
        (:func:`heatbath.optim.as_optax`, one gradient at the current parameters) use a word
        whose every B precedes its first A: ``"euler"``, or
        ``integrators.gradient_first("obabo")`` (``"BOOBA"``: the same chain of positions).
      mass: the diagonal mass M > 0: a number, or a pytree with the position's structure
        (each leaf a scalar or an array broadcastable to the position leaf). This and every
        argument after it are keyword-only.
      temperature: T >= 0 (number or schedule). T = 0 with ``"euler"`` is heavy-ball
        momentum, ``optax.sgd(learning_rate=h^2/M, momentum=1 - h C/M)`` step by step (see
        :func:`heavy_ball_parameters`).
      num_steps_per_sample: integrator steps per recorded draw (each with its own minibatch);
        read by the driver as a thinning factor, and the period of ``resample_momentum``.
      gradient_noise: V, the variance of the minibatch gradient's noise per coordinate (a
        number or a pytree like the position). Turns on Chen et al.'s beta-hat correction.
        It is exact when the noise is independent across coordinates (the tests' targets);
        with strongly correlated noise (logistic regression: all coordinates share the
        row residuals) a per-coordinate V over-corrects some directions: on German credit
        with V measured at the posterior mean, h = 0.01, C = 12, the smallest posterior sd
        came out at 0.74 of the reference (half of V: 0.95). Without it, keep h V / (2 C)
        small.
      resample_momentum: redraw r ~ N(0, T M) at the start of every ``num_steps_per_sample``-th
        step (default: never; the momentum is carried across draws).
      gradient: the gradient estimator (``"naive"``, ``"cv"`` or a spec from
        :mod:`heatbath.kernels.gradients`).
      noise: the source of the O/E increments (:mod:`heatbath.kernels.noise`; default Brownian).
      fuse_noise: one noise draw per run of consecutive O/E pieces, the run across the step
        boundary included (:mod:`heatbath.kernels.integrators_fused`): ``"obabo"`` and
        ``"OABAO"`` draw once per step instead of twice, ``"BOOBA"`` likewise. The composed
        O is exact, so the law of the chain of positions is unchanged; the momentum (and
        ``kinetic_energy``) is recorded after the next step's leading O (for OBABO: Lie-Trotter's
        momentum). Other draws than the default's (off, so the default stays bit for bit);
        not with ``resample_momentum``.

    Returns:
      A :class:`Sampler`. Its info adds ``kinetic_energy`` (r^T M^-1 r / 2, whose mean is
      d T / 2 at stationarity) to the common fields.
    """
    split = _integrators.get(integrator)
    auto = tuple(name for name, v in (("step_size", step_size), ("friction", friction)) if v is None)
    # Placeholders until hb.sample chooses them (a loop refuses a sampler with `auto` left).
    h = _schedules.as_schedule(1e-3 if step_size is None else step_size, "step_size", positive=True)
    C = _schedules.as_schedule(1.0 if friction is None else friction, "friction", positive=True)
    T = _schedules.as_schedule(temperature, "temperature", positive=False)
    M, V, k, spec = check_common(mass, gradient_noise, num_steps_per_sample, resample_momentum, gradient)
    if not auto:
        check_noise_budget(h, C, T, V, "friction")
    if not auto and (split.name == "euler" or "E" in split.letters):
        hv, cv = _schedules.is_constant(h), _schedules.is_constant(C)
        if hv is not None and cv is not None:
            mmin = min_leaf(M)
            if hv * cv / mmin > 1.0:
                raise ValueError(
                    f"Euler SGHMC needs alpha = step_size * friction / mass <= 1 (the momentum decay is 1 - alpha), "
                    f"got {hv * cv / mmin:g}; lower the step size or the friction, or use an exact-O integrator"
                )
    noiseless = _schedules.is_constant(T) == 0.0
    fuse_noise = _validate.check_bool(fuse_noise, "fuse_noise")
    if fuse_noise and resample_momentum:
        raise ValueError("fuse_noise=True applies the next step's leading O at the end of a step, which a "
                         "momentum redrawn at its start (resample_momentum=True) would discard; use one of the two")
    lead_first = fuse_noise and not split.fsal and bool(_fused.fused_boundary(split)[0])

    def init(position, key=None):
        key_lead = None
        if lead_first and key is not None:
            key, key_lead = jax.random.split(key)
        momentum = initial_momentum(position, key, M, V, T, noiseless)
        if lead_first:  # a fused non-FSAL word: the first step finds its lead applied
            zero = jnp.zeros((), jnp.int32)
            h0, T0, C0 = h(zero), T(zero), C(zero)
            Mt = tree.leafwise(M, position, "mass")
            momentum = _fused.lead_update(
                key_lead, split, momentum, h0, jax.tree.map(lambda p: C0, position), Mt,
                jax.tree.map(lambda m: 1.0 / m, Mt), _noise_temperature(T0, h0, C0, V, position), noiseless,
                _noise.as_noise(noise))
        step0 = jnp.zeros((), jnp.int32)
        if split.fsal:
            lp0 = jnp.zeros((), jnp.result_type(float))
            cache = _integrators.Cache(lp0, tree.zeros_like(position), jnp.zeros((), bool))
        else:
            cache = ()
        return SGHMCState(position, momentum, step0, cache)

    hyper = dict(step_size=step_size, friction=friction, integrator=integrator, mass=mass, temperature=temperature,
                 num_steps_per_sample=k, gradient_noise=gradient_noise, resample_momentum=resample_momentum,
                 gradient=spec, noise=noise, **({"fuse_noise": True} if fuse_noise else {}))
    return make_sampler(
        sghmc, hyper, base_name="sghmc" if split.name == "euler" else f"sghmc-{split.name}", init=init,
        step=build_kernel(split, h, C, T, M, V, k, resample_momentum, _noise.as_noise(noise), fuse_noise),
        gradient=spec, temperature=T, grads_per_step=float(split.grads_per_step), steps_per_draw=k,
        gradient_at_position=split.gradient_at_start, auto=auto, checks_state=True,
        checks_start_lp=bool(split.fsal),
    )
