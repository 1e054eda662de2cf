"""The default gradient estimator of an automatic run: naive minibatches or control variates.

A sampler built without ``gradient=`` and run by ``hb.sample`` with an automatic step size, on
minibatches, in the Laplace metric (:mod:`heatbath.drivers.metric`) gets the estimator that
lets it take the larger step per gradient evaluation. The step is h = 2 EPS / lambda_max(H + V/T)
(:mod:`heatbath.drivers.autotune`), so the choice compares lambda_max(H + V/T) of the two
estimators, each measured where the run will be: in the Laplace metric the posterior is about
N(mode, I), so the points are the chains' modes plus one standard normal draw each. Control
variates (Baker et al., 2019: g* + grad f~(theta) - grad f~(theta*), centred at the mode with the
highest log density) cost two minibatch gradients per step against one, so they are chosen when

    lambda_naive / lambda_cv > COST_RATIO * MARGIN      (2 x 1.25),

i.e. when they buy a step more than 2.5 times larger. Near a mode the naive noise is
(N/n) H against H, so on a model with N/n = 10 the naive bound is about 11 and the control
variates' about 1 + O(N |theta - theta*|^2 / n): they win on unimodal posteriors with a
regular likelihood and lose where the chains sit in several modes or the curvature changes
fast (the noise of control variates grows with the distance to the centre). The measurements
and the choice are reported in ``Result.tuning["gradient"]``.

Where the Laplace metric is replaced from warmup draws (:mod:`heatbath.drivers.adapt`: the mode
was far from the typical set), the choice is made again after each adopted window, where the
chains now are: the centre is the window draws' mean, and the points are the live chains' last
8 window draws (draws from about N(0, I) in the refined metric, so no extra spread). On a
hierarchical model whose mode sits far from the typical set this is what makes control
variates pay: on the random-intercept model of ``benchmarks/defaults_models.py`` the ratio is
0.71 with the centre at the mode (naive kept) and 4.1 with the centre at the draws' mean. The
earlier choices are kept in ``Result.tuning["gradient"]["earlier"]``.

SGHMC with an automatic friction also weighs full batches (on at most ``FULL_MAX_ROWS`` rows).
The step-size criterion above does not see SGHMC's gain from a quiet gradient: the friction
must dominate the minibatch noise v (C >= h v / (2 EPS T), :mod:`heatbath.drivers.autotune`), so
with heavy noise SGHMC is overdamped and mixes per gradient like SGLD, while with the exact
gradient the friction is the critical damping 2 omega_min of the softest direction. The choice
compares the data rows read per unit of relaxation time of that direction (:func:`mixing_cost`)
of the cheaper minibatch estimator and of full batches, and takes full batches when they read
at least ``FULL_MARGIN`` (4) times fewer rows; it replaces the ``batch_size`` given, with one
UserWarning per run. With the step sizes and frictions of autotune (unit mass, T = 1) and the
naive noise v = c (N / n) lambda_h, the gain is about 2.24 c sqrt(lambda_h / lambda_min)
whatever N / n: on a posterior the metric has made round (condition number ~1, c ~ 1) it is
about 2.2, under the margin, and the minibatches stay; where the posterior stays badly
conditioned in the metric (a curved ridge of a hierarchical model, condition numbers 10-100
in the typical set) it is 7-22 and full batches are taken. Measured on the random-intercept and
panel models of ``benchmarks/defaults_models.py`` (1,000 and 1,200 rows, batch N / 10).
"""

from __future__ import annotations

import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.drivers import adapt
from heatbath.drivers import keys as _keys
from heatbath.drivers.measurement import host_rng

from heatbath.kernels import gradients as _gradients

__all__ = ["COST_RATIO", "MARGIN", "FULL_MARGIN", "wants_choice", "choose", "choose_again", "mixing_cost"]

COST_RATIO = 2.0  # minibatch gradients per step: control variates / naive
MARGIN = 1.25
FULL_MARGIN = 4.0  # full batches replace the user's minibatches only for a clear gain (module docstring)
FULL_MAX_ROWS = 100_000  # full-batch gradients of more rows are not weighed (memory, time per step)


def wants_choice(sampler, target, batch_size, affine) -> bool:
    """Whether the driver chooses the estimator: a default one, minibatches, the Laplace metric."""
    return (bool(getattr(sampler.gradient, "default", False)) and batch_size is not None
            and batch_size < target.num_data and not target.minibatch_error and affine is not None)


def choose(target, sampler, positions, usable, key, batch_size, temperature, *, centre=None,
           full_batch: bool = False):
    """``(sampler with the chosen estimator, info, cost per chain in per-datum gradients)``.

    ``positions``: the chains' starts in the run's coordinates (leading axis chain), ``usable``:
    the chains whose mode search converged (the centre is the best of them).

    ``centre``: given (a point in the run's coordinates, e.g. warmup draws' mean), the control
    variates are centred there and measured at ``positions`` of the ``usable`` chains as they are
    (draws from the typical set, not modes: no spread added).

    ``full_batch``: whether full batches may be weighed (the driver says so for uniform or
    reshuffled batching; see :func:`full_batch_candidate` for the rest).
    """
    from heatbath.drivers import autotune

    chains = np.nonzero(np.asarray(usable, bool))[0]
    if chains.size == 0:
        return sampler, {"chosen": "naive", "reason": "no converged mode for a centre"}, 0.0
    family = autotune._family(sampler)
    k_pts, k_naive, k_cv = (_keys.fold_in(key, i) for i in range(3))  # (on the host: nothing to compile)
    num_chains = jax.tree.leaves(positions)[0].shape[0]
    if centre is None:
        logp = target.metric_memo("logdensity_of_chains",
                                  lambda: jax.vmap(lambda p: target.logdensity(p)))(positions)
        logp = np.asarray(logp, np.float64)
        best = int(chains[np.argmax(logp[chains])])
        centre = jax.tree.map(lambda x: x[best], positions)
        # Standard normal offsets drawn on the host (an eager vmap of threefry normals compiled a
        # program of its own on a first call).
        rng = host_rng(k_pts, 0x70747320)
        noise = jax.tree.map(lambda p: rng.standard_normal(np.shape(p)).astype(p.dtype), positions)
        points = jax.tree.map(lambda p, e: p + e.astype(p.dtype), positions, noise)
        where = best
    else:
        points = jax.tree.map(lambda p: p[chains], positions)
        where = "warmup draws' mean"
    measured = jax.tree.leaves(points)[0].shape[0]

    naive = _gradients.naive()
    cv = _gradients.control_variates(centre=centre)
    lam, ms, cost = {}, {}, 0.0
    for name, spec, k in (("naive", naive, k_naive), ("control_variates", cv, k_cv)):
        est = spec.build(target.terms, target.num_data)
        state = est.init(centre, target.data) if name == "control_variates" else ()  # compiled once per target
        m, c = autotune._measure(target, sampler, family, est, state, points, k, batch_size, temperature)
        lam[name] = np.asarray(m["lam_hv"], np.float64)
        ms[name] = m
        cost += c * measured / num_chains
    cost += target.num_data / num_chains  # the control variates' full-data gradient at the centre
    ratio = float(np.max(lam["naive"]) / np.max(lam["control_variates"]))
    chosen = "control_variates" if ratio > COST_RATIO * MARGIN else "naive"
    info = {
        "chosen": chosen,
        "lam_hv_naive": lam["naive"].tolist(),
        "lam_hv_control_variates": lam["control_variates"].tolist(),
        "ratio": ratio,
        "rule": f"control variates when lambda_max(H + V/T) naive / control variates > {COST_RATIO * MARGIN:g}",
        "centre_chain": where,
    }
    if full_batch and full_batch_candidate(sampler, family, target, batch_size, ms["naive"]):
        symmetric = autotune._symmetric(sampler)
        cap = autotune.unit_curvature(sampler)  # weighed only in the metric's coordinates (wants_choice)
        costs = {name: mixing_cost(ms[name], temperature, symmetric, rows, cap=cap)
                 for name, rows in (("naive", batch_size), ("control_variates", 2 * batch_size))}
        costs["full_batch"] = mixing_cost(ms["naive"], temperature, symmetric, target.num_data, noise=False, cap=cap)
        gain = min(costs["naive"], costs["control_variates"]) / costs["full_batch"]
        info.update(mixing_cost_rows=costs, full_batch_gain=gain,
                    full_batch_rule=f"full batches when the cheaper minibatch estimator's data rows per unit of "
                                    f"mixing time / the full batch's > {FULL_MARGIN:g}")
        if gain > FULL_MARGIN:
            chosen = info["chosen"] = "full_batch"
            info["batch_size"] = None
    if chosen == "control_variates":
        sampler = sampler.rebuild(gradient=cv)
    else:
        sampler = sampler.rebuild(gradient=naive)
    return sampler, info, cost


def run_batch_size(info: dict, minibatch):
    """The batch size the run uses after a choice: None when full batches were chosen, else the
    given minibatch size."""
    return None if info.get("chosen") == "full_batch" else minibatch


def announce(info: Optional[dict], minibatch, num_data: int, stacklevel: int):
    """The UserWarning of a run that replaced the ``batch_size`` given by full batches (once per
    run, from the final choice)."""
    if not info or info.get("chosen") != "full_batch":
        return
    warnings.warn(
        f"sghmc: full-batch gradients instead of minibatches of {minibatch}: with the automatic friction they "
        f"mix {info['full_batch_gain']:.1f}x faster per data row read (the minibatch noise would need a friction "
        f"that makes SGHMC overdamped; Result.tuning['gradient']). Each step reads all {num_data} rows, about "
        f"{num_data / minibatch:.0f}x a minibatch step, so fewer num_samples give the same mixing. To keep "
        "minibatches give friction= or gradient=\"naive\"", UserWarning, stacklevel=stacklevel + 1)


def full_batch_candidate(sampler, family, target, batch_size, measured) -> bool:
    """Whether full batches are weighed against minibatches: SGHMC with an automatic step size
    and friction (its gain from a quiet gradient is a lower friction; the cost model assumes
    the step :mod:`heatbath.drivers.autotune` would set) on at most ``FULL_MAX_ROWS`` rows, with
    a finite positive curvature ``measured`` (else the minibatch choice stands)."""
    auto = tuple(getattr(sampler, "auto", ()) or ())
    if not (family == "sghmc" and "friction" in auto and "step_size" in auto
            and batch_size is not None and target.num_data <= FULL_MAX_ROWS):
        return False
    lam = np.asarray([np.max(measured["lam_h"]), np.max(measured["lam_v"]), np.min(measured["lam_min"])], np.float64)
    return bool(np.all(np.isfinite(lam)) and lam[0] > 0.0)


def mixing_cost(m: dict, temperature: float, symmetric: bool, rows_per_step: float, noise: bool = True,
                cap: Optional[float] = None) -> float:
    """SGHMC's data rows per unit of relaxation time of its softest direction.

    With the step h and friction C of :func:`heatbath.drivers.autotune.choose` (unit mass) and
    omega^2 = lambda_min (floored as there), the slowest mode of the damped oscillator decays at
    the rate C/2 when C <= 2 omega and C/2 - sqrt(C^2/4 - omega^2) = omega^2 / (C/2 + sqrt(...))
    beyond (about omega^2 / C: overdamped). The cost is rows_per_step / (h rate). With the
    minibatch noise v the friction is at least h v / (2 EPS T): overdamped, the rate falls as
    1/v. ``noise=False``: the exact (full-batch) gradient, v = 0. ``cap``: the softest
    curvature's floor cap of the metric's coordinates (:func:`heatbath.drivers.autotune.softest_curvature`).
    """
    from heatbath.drivers import autotune

    if not noise:
        m = dict(m, lam_v=np.zeros_like(np.asarray(m["lam_v"])))
    chosen = autotune.choose("sghmc", m, temperature, symmetric, cap=cap)
    h, friction = chosen["step_size"], chosen["friction"]
    omega2 = autotune.softest_curvature(m, cap)
    half = friction / 2.0
    rate = half if half * half <= omega2 else omega2 / (half + np.sqrt(half * half - omega2))
    return float(rows_per_step / (h * rate))


def choose_again(target, sampler, draws, alive, old, new, positions, key, batch_size, *, full_batch=False):
    """The choice made again after an adopted metric window, or one that lost a chain
    (:mod:`heatbath.drivers.adapt`): control variates centred at z' = 0 in the refined coordinates
    ``new`` (the window draws' mean when a metric was adopted; the old centre when it was kept),
    measured at up to the last 8 window draws of each live chain. ``draws``: the window's flat
    draws (chain, K, d) in the ``old`` coordinates; ``positions``: the chains' positions in the
    new ones. Returns ``(sampler, info, cost per chain)`` as :func:`choose`, or None when no
    live chain has a finite draw."""
    from heatbath.drivers import autotune

    last = adapt.last_draws(draws, alive, old, new, dtype=jax.tree.leaves(positions)[0].dtype)
    if last is None:
        return None
    num_points = jax.tree.leaves(last)[0].shape[0]
    num_chains = jax.tree.leaves(positions)[0].shape[0]
    sampler, info, cost = choose(target, sampler, last, np.ones(num_points, bool), key, batch_size,
                                 autotune.constant_temperature(sampler),
                                 centre=jax.tree.map(lambda x: jnp.zeros_like(x[0]), positions), full_batch=full_batch)
    info["measured_at"] = f"{num_points} window draws (up to the last 8 of each live chain)"
    return sampler, info, cost * num_points / num_chains  # choose() charged its points as chains
