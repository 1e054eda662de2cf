"""Automatic step size (and SGHMC friction), chosen during warmup from measured curvature and noise.

The criterion (see :mod:`heatbath.kernels.curvature`): linearised at a point, an SGLD chain's
variance along H's eigendirection u_i is inflated by the factor 1 + h (lambda_i + u_i' V u_i / T) / 2,
H the Hessian of -log p, V the covariance of the minibatch gradient (the run's own batch size
and gradient estimator). heatbath picks the largest step that keeps this below 1 + EPS in the
worst direction,

    SGLD:   h = 2 EPS / lambda_max(H + V / T),                         EPS = 0.2,

i.e. about 10% on the posterior sd in the worst direction from discretisation and gradient
noise together (less on the marginals, which mix directions); the same in
pSGLD's metric (lambda_max of G^(1/2) (H + V / T) G^(1/2), G the RMSprop diagonal). Larger steps
mix faster but the bias grows linearly; smaller ones waste gradients. For SGHMC (mass M) the
position update is second order: OBABO's position variance on a Gaussian is inflated by
1 / (1 - h^2 omega^2 / 4), so h = sqrt(4 EPS / omega_max^2) with omega^2 = lambda(M^-1/2 H M^-1/2)
(half that for the first-order splittings), and the friction must dominate the gradient noise:
the B steps add h^2 v to the momentum variance per step and the O step removes a fraction
2 h C / M of it, so the kinetic temperature is T + h v / (2 C). heatbath takes

    C / M = max(h v / (2 EPS T),  2 sqrt(lambda_min(M^-1/2 H M^-1/2))),   v = lambda_max(M^-1/2 V M^-1/2),

the first term keeping the excess temperature below EPS T, the second critical damping of
the softest direction (fastest mixing there) when the noise allows it; and h <= sqrt(2 EPS T / v)
so that h C / M <= 1 (past it the momentum is renewed every step and the chain is SGLD with
step h^2 / 2). With heavy gradient noise SGHMC then mixes per gradient like SGLD (its
advantage needs C ~ sqrt(lambda_min), i.e. little noise: larger batches or control variates).

The measurement is done twice: at the chains' starting points, and in the first half of the
warmup at 8 points per chain spread over its second half (the typical set, where the run will
be); the second measurement (its largest eigenvalue over all those points) sets the step of
the rest of the run.
If a chain diverges during the first half, that half is rerun from the start with a step four
times smaller (three tries). Everything measured is reported in ``Result.tuning``.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.drivers import loop
from heatbath.drivers.keys import fold_each, fold_in
from heatbath.drivers.measurement import (  # noqa: F401 - re-exported: callers read them here
    CURVATURE_ROWS, MEASURED, NUM_BATCHES, POWER_ITERS, _family, _measure, _metric, _metric_settings,
    _second_moment, curvature_rows, measure,
)
from heatbath.kernels.schedules import Tuned, as_schedule, is_constant

__all__ = ["EPS", "auto_names", "curvature_rows", "measure", "choose", "warmup", "default_num_warmup"]

EPS = 0.2  # first-order variance inflation allowed in the worst direction
RETRIES = 3
POINTS = 8  # measurement points per chain in the second half of the tuning warmup


def _positions(position, data):
    del data
    return position


def auto_names(sampler) -> tuple:
    """The hyperparameters the sampler left for the driver to choose (``step_size``, ``friction``)."""
    return tuple(getattr(sampler, "auto", ()) or ())


def default_num_warmup(steps: int) -> int:
    """Warmup steps when the step size is automatic: a quarter of the sampling steps, at least 200."""
    return max(200, steps // 4)


def default_warmup_for(sampler, auto, steps: int, batching) -> int:
    """``hb.sample``'s ``num_warmup`` when not given (and not resuming): with an automatic
    setting, or every setting a constant and T > 0, :func:`default_num_warmup` (the chains start
    away from the typical set, uniform(-2, 2) unconstrained by default, and their way there is
    not a posterior draw), rounded up to whole rounds of federated batching; 0 at T = 0 or on a
    step-size or temperature schedule (an optimizer, annealing, cyclical steps: the path from
    the start is the point)."""
    T = is_constant(sampler.temperature)
    h = sampler.hyperparameters.get("step_size")
    constant = T is not None and T > 0 and (h is None or is_constant(as_schedule(h, "step_size")) is not None)
    if not (auto or constant):
        return 0
    rounds = int((getattr(batching, "params", None) or {}).get("local_steps", 1) or 1)
    return -(-default_num_warmup(steps) // rounds) * rounds


def _symmetric(sampler) -> bool:
    word = sampler.hyperparameters.get("integrator", "obabo")
    word = {"obabo": "OBABO", "baoab": "BAOAB", "aboba": "ABOBA"}.get(word, word)
    return isinstance(word, str) and word.upper() == word.upper()[::-1] and "E" not in word.upper()


def _finite(m: dict) -> np.ndarray:
    """Per measurement point, whether its curvature is finite."""
    return np.isfinite(np.asarray(m["lam_hv"])) & np.isfinite(np.asarray(m["lam_h"]))


def _chains_of(points: np.ndarray, num_chains: int) -> list:
    """The chains of measurement points (draw-major: point i belongs to chain i % num_chains)."""
    return sorted({int(i) % num_chains for i in np.nonzero(points)[0]})


def _check_measured(m: dict, where: str, num_chains: int):
    """A clear error where the curvature or noise measured for some chain is not finite."""
    bad = _chains_of(~_finite(m), num_chains)
    if bad:
        raise FloatingPointError(
            f"automatic step size: the curvature measured {where} is not finite for chain(s) {bad} (the log density "
            "or its gradient overflows there); give init= values in the posterior's bulk (e.g. init='median' or an "
            "hb.optimize result), rescale the model's covariates, or give step_size=")


def _finite_points(m: dict, num_chains: int) -> dict:
    """The first half's measurements at the points where they are finite, with a warning naming
    the chains of the others; an error (:func:`_check_measured`) when none is finite.

    A chain the first steps threw far into a tail can reach points where the log density and
    its gradient are finite but float32 second derivatives are not (a zero-inflated Poisson
    whose gate sits near 0: logit(gate) <= -44, tens of posterior sds out); the step size is
    then chosen from the other points (it raised, naming the whole run's tuning impossible)."""
    ok = _finite(m)
    if ok.all():
        return m
    if not ok.any():
        _check_measured(m, "in the first half of the warmup", num_chains)
    bad = _chains_of(~ok, num_chains)
    warnings.warn(
        f"automatic step size: the curvature was not finite at {int((~ok).sum())} of {ok.size} measurement points "
        f"in the first half of the warmup, of chain(s) {bad} (far in a tail, where the log density's second "
        "derivatives overflow in float32); the step size was chosen from the other points. If those chains' draws "
        "look off (Result.checks), give step_size= or init=", RuntimeWarning, stacklevel=4)
    return {k: np.asarray(v)[ok] for k, v in m.items()}


def softest_curvature(m: dict, cap: Optional[float] = None) -> float:
    """lambda_min for SGHMC's friction: away from a mode H need not be positive definite
    (funnels, neural networks), so the softest direction's scale is floored at lambda_max / 100
    (the friction is then at least 0.2 omega_max).

    ``cap``: the run is in the metric's coordinates (:mod:`heatbath.drivers.metric`), where the
    posterior's scale is about 1 in every direction; the floor is then at most ``cap``, the
    curvature of a direction of scale 1 in the measured units (1 / M, :func:`unit_curvature`),
    so that the floor's friction is at most the critical damping of such a direction. Without
    it a posterior whose local curvature is indefinite and reaches lambda_max ~ 1,000 in places
    (the 8-unit network of the defaults table: lambda_min < 0 at most measurement points) got
    C = 0.2 omega_max ~ 6, overdamped for its directions of scale 1 (relaxation rate 1/6
    instead of 1): min ESS of its predictions 14 with C = 6 against 35 with C = 2 (4 x 10,000
    draws, seed 0).
    """
    lam_h = float(np.max(m["lam_h"]))
    floor = lam_h * 1e-2
    if cap is not None:
        floor = min(floor, float(cap))
    return float(np.clip(np.min(m["lam_min"]), floor, lam_h))


def unit_curvature(sampler) -> float:
    """omega^2 of a direction of scale 1 for ``sampler`` (SGHMC's 1 / M; 1 without a mass)."""
    mass = sampler.hyperparameters.get("mass", 1.0)
    return 1.0 / float(mass) if isinstance(mass, (int, float)) and mass > 0 else 1.0


def _as_tuned(values: dict) -> dict:
    """The chosen step size and friction as :class:`~heatbath.kernels.schedules.Tuned` values: the
    compiled loop takes them as arguments, so another seed's (or other data's) choice reuses it."""
    return {k: Tuned(v, k) if k in ("step_size", "friction") else v for k, v in values.items()}


def choose(family: str, m: dict, T: float, symmetric: bool = True, friction_given: Optional[float] = None,
           cap: Optional[float] = None):
    """The step size (and friction) from measured eigenvalues (worst chain). See the module docstring
    (``cap``: :func:`softest_curvature`)."""
    if family in ("sgld", "psgld"):
        lam = float(np.max(m["lam_hv"]))
        return {"step_size": 2.0 * EPS / lam}
    lam_h = float(np.max(m["lam_h"]))
    lam_v = float(np.max(m["lam_v"]))
    lam_min = softest_curvature(m, cap)
    h = math.sqrt(4.0 * EPS / lam_h) * (1.0 if symmetric else 0.5)
    if friction_given is not None:
        return {"step_size": h}
    if lam_v > 0.0:
        # Noise-dominated: keep h C / M <= 1 (beyond it the momentum is refreshed every step and
        # the chain is SGLD with step h^2 / 2, whose noise bias h^2 v / 4 the bound below caps).
        h = min(h, math.sqrt(2.0 * EPS * T / lam_v))
    gamma = max(h * lam_v / (2.0 * EPS * T), 2.0 * math.sqrt(lam_min))
    return {"step_size": h, "friction": gamma}


def constant_temperature(sampler) -> float:
    """The sampler's temperature T, which an automatic step size needs constant and > 0."""
    T = is_constant(sampler.temperature)
    if T is None or T <= 0.0:
        raise ValueError("an automatic step size is for sampling at a constant temperature T > 0; give step_size= "
                         "for annealing schedules and T = 0")
    return T


def _alive(out, mode):
    guard = out.carry[3]
    alive = guard if mode == "flag" else guard[0]
    return np.asarray(alive, bool)


def warmup(target, sampler, estimator, est_state, positions, keys, *, batch_size, batching, num_warmup,
           progress_bar, unit_scale=False):
    """Tune the sampler's automatic hyperparameters during the first half of the warmup.

    Returns ``(sampler with the chosen values, the chains' states after the first half, steps
    done, tuning info, cost per chain in per-datum gradients, compile seconds, the measurement
    points: positions with a leading axis (point * chain))``.
    """
    names = auto_names(sampler)
    family = _family(sampler)
    T = constant_temperature(sampler)
    symmetric = family != "sghmc" or _symmetric(sampler)
    friction_given = None if "friction" in names else sampler.hyperparameters.get("friction")
    key = fold_in(keys[0], 13)  # (on the host: no program to compile)
    m0, cost0 = _measure(target, sampler, family, estimator, est_state, positions, fold_in(key, 0),
                         batch_size, T)
    num_chains = jax.tree.leaves(positions)[0].shape[0]
    _check_measured(m0, "at the chains' starting points", num_chains)
    cap = unit_curvature(sampler) if unit_scale else None  # in the metric's coordinates: scale ~1
    chosen0 = choose(family, m0, T, symmetric, friction_given, cap)
    pilot = max(2, num_warmup // 2)
    # The second measurement is taken at POINTS positions per chain spread over the second half
    # of the tuning warmup (curvature varies: one point per chain under-samples a funnel).
    points = min(POINTS, pilot // 2)
    spacing = (pilot - pilot // 2) // points
    lead = pilot - points * spacing
    cost, compile_time, tries = cost0, 0.0, []
    step_scale = 1.0
    for attempt in range(RETRIES + 1):
        values = dict(chosen0)
        values["step_size"] = chosen0["step_size"] * step_scale
        tuned = sampler.rebuild(**_as_tuned({k: v for k, v in values.items() if k in names}))
        cfg = loop.LoopConfig(
            batching=batching, batch_size=batch_size, num_draws=points, thinning=spacing, num_warmup=lead,
            desc=f"{sampler.name} warmup 1/2 (tuning)", record=_positions, progress_bar=progress_bar,
            on_divergence="stop", chunk_size=points,
        )
        out = loop.run(target, tuned, estimator, positions, fold_each(keys, 17 + attempt), cfg)
        compile_time += out.compile_time
        if out.interrupted:  # Ctrl-C in the tuning warmup: nothing is recorded yet
            raise KeyboardInterrupt("interrupted during the tuning warmup (no draws were made)")
        cost += loop.grad_evals_per_chain(estimator, tuned.grads_per_step, batch_size, target.num_data, pilot)
        alive = _alive(out, "stop")
        tries.append({"step_size": values["step_size"], "diverged_chains": np.nonzero(~alive)[0].tolist()})
        if alive.all():
            break
        if attempt == RETRIES:
            raise FloatingPointError(
                f"automatic step size: chains {np.nonzero(~alive)[0].tolist()} diverged in the warmup even at "
                f"step size {values['step_size']:.3g} ({step_scale:g} x the measured bound): the model's curvature "
                "changes too fast for one step size; reparameterise it (non-centred scales) or give step_size="
            )
        step_scale /= 4.0
    states = out.carry[0]
    where = jax.tree.map(lambda x: jnp.asarray(x).reshape((-1,) + x.shape[2:]), out.draws)  # (draw * chain, ...)
    if family == "psgld" and hasattr(states.preconditioner, "square_avg"):
        # The RMSprop average restarts at its typical-set value: E[g^2] over the measurement
        # points (started at the mode it holds the small gradients there, and with the long
        # window below it would take the whole run to forget them).
        m2 = _second_moment(target, estimator, est_state, where, fold_in(key, 2), batch_size, points)
        nc = jax.tree.leaves(positions)[0].shape[0]
        square = jax.tree.map(lambda v, old: jnp.broadcast_to(v, old.shape).astype(old.dtype), m2,
                              states.preconditioner.square_avg)
        states = states._replace(preconditioner=states.preconditioner._replace(square_avg=square))
        cost += NUM_BATCHES * (batch_size or target.num_data) * points * nc / max(nc, 1)
    m1, cost1 = _measure(target, sampler, family, estimator, est_state, where, fold_in(key, 1),
                         batch_size, T, states=states, repeat=points)
    m1_used = _finite_points(m1, num_chains)
    cost1 *= points
    cost += cost1
    chosen = choose(family, m1_used, T, symmetric, friction_given, cap)
    if step_scale < 1.0:  # the first half needed smaller steps than measured: keep the margin
        chosen["step_size"] = min(chosen["step_size"], values["step_size"])
    changes = {k: v for k, v in chosen.items() if k in names}
    if family == "psgld" and sampler.hyperparameters.get("decay") is None and sampler.hyperparameters.get(
            "preconditioner") is None:
        # The RMSprop window follows the step: 10 / h steps (G must not track the position).
        decay = max(0.99, 1.0 - chosen["step_size"] / 10.0)
        chosen["decay"] = decay
        # An argument of the compiled loop (another seed's window reuses it), except with the
        # divergence correction, whose start step ceil(1 / (1 - decay)) is compiled in.
        changes["decay"] = decay if sampler.hyperparameters.get("correction") else Tuned(decay, "decay")
        names = names + ("decay",)
    final = sampler.rebuild(**_as_tuned(changes))
    info = {
        "auto": list(names),
        **{k: float(v) for k, v in chosen.items() if k in names},
        "criterion": ("h = 2 * 0.2 / lambda_max(H + V/T)" if family != "sghmc"
                      else "h = min(sqrt(0.8 / omega_max^2), sqrt(0.4 T / v)); C/M = max(h v / (0.4 T), 2 sqrt(lambda_min(H)))"),
        "first_half": {**{k: float(v) for k, v in values.items() if k in names}, "tries": tries,
                       "measured_at_start": {k: v.tolist() for k, v in m0.items()}},
        "measured": {k: v.tolist() for k, v in m1.items()},
        "warmup_steps_tuning": pilot,
        "cost_per_chain": float(cost),
    }
    return final, states, pilot, info, float(cost), compile_time, where
