"""``hb.sample``: run a sampler's chains and collect their draws."""

from __future__ import annotations

import functools
import time
import warnings
from typing import Optional

import jax
import numpy as np

from heatbath.drivers import autotune
from heatbath.drivers import centre as _centre
from heatbath.drivers import collect, federation, initialize, inputs, loop, selfcheck
from heatbath.drivers import adapt as _adapt, estimator_choice, mapsearch, metric as _metric
from heatbath.drivers import keys as _keys
from heatbath.drivers import stall as _stall
from heatbath.drivers.batching import as_batching
from heatbath.drivers.checkpoint import hold
from heatbath.drivers.cache import IdentityCache, relieve_mapping_pressure
from heatbath.drivers.placement import shardings, spans_processes
from heatbath.drivers.results import Result
from heatbath.drivers.settings import open_checkpoint, stored_setting, tuned_digest
from heatbath.kernels import tree as _tree
from heatbath.kernels.validate import check_bool, check_choice, check_count, seed_key
from heatbath.samplers.base import Sampler

__all__ = ["sample"]

_UNCONSTRAINED = IdentityCache(8)


def _record(target, unconstrained: bool):
    """What a draw keeps: the constrained values (and the unconstrained position)."""
    if not unconstrained:
        return target.constrain_fn

    def build():
        constrain_fn = target.constrain_fn

        def record(position, data):
            return {"values": constrain_fn(position, data), "position": position}

        if getattr(constrain_fn, "_heatbath_base", None) is not None:  # keyed like its constrain function
            record._heatbath_base = ("unconstrained", constrain_fn)
        return record

    # Keyed on the constrain function (a Target with new data= keeps it): the same record, so
    # the compiled loop is reused.
    return _UNCONSTRAINED.get(id(target.constrain_fn), (target.constrain_fn,), build)


def sample(
    model_or_target,
    sampler: Sampler,
    *,
    data=None,
    batch_size: Optional[int] = None,
    num_samples: int,
    num_warmup: Optional[int] = None,
    thinning: int = 1,
    num_chains: int = 1,
    seed=0,
    init=None,
    progress_bar: bool = True,
    chunk_size: Optional[int] = None,
    on_divergence: str = "stop",
    keep: str = "draws",
    swag_rank: int = 0,
    checkpoint=None,
    checkpoint_every: int = 1,
    resume=None,
    shard: Optional[str] = None,
    devices=None,
    batching="uniform",
    record_unconstrained: bool = False,
    checks=None,
    metric: str = "auto",
) -> Result:
    """Run a heatbath sampler on a NumPyro model or a Target.

    Args:
      model_or_target: a NumPyro model (its arguments in ``data``) or a :class:`Target`.
      sampler: a :class:`Sampler`, e.g. ``hb.samplers.sgld(step_size=1e-4)``.
      data: the model's arguments (dict of keyword arguments or tuple of positional ones), or
        new data for a Target.
      batch_size: minibatch size n; None for full-batch gradients.
      num_samples: draws kept per chain; ``num_warmup`` steps are run and discarded first
        (default: a quarter of the sampling steps, at least 200, at a constant temperature
        T > 0; none at T = 0 or on a temperature schedule; with an automatic step size the
        first half of them tunes it; ``num_warmup=0`` keeps every step from the start);
        ``thinning``: steps per kept draw.
      num_chains: independent chains (run under vmap).
      seed: an integer (or a JAX key). Chain i's draws depend only on (seed, i).
      init: where the chains start (:mod:`heatbath.drivers.initialize`): ``"map"`` (each chain
        climbs to a mode from its own uniform(-2, 2) start; the default with an automatic step
        size), ``"uniform"`` (uniform(-2, 2) in the unconstrained space; the default otherwise),
        ``"median"`` or ``"sample"`` (NumPyro models: the prior's median, a prior draw), or
        values: a dict on the user's (constrained) scale for NumPyro models (missing sites start
        uniform; deterministic sites are ignored), or an ``OptimizeResult``.
      progress_bar: show a tqdm bar fed from inside the scan.
      chunk_size: draws per compiled chunk (bounded memory); default: about 128 MiB of draws.
      on_divergence: what a chain does when its state becomes non-finite, decided inside the
        scan: ``"stop"`` (default: its position freezes at its last finite state, every later
        draw is flagged; the rest of its state and its later stats are its rejected steps'),
        ``"restart"`` (the step is rejected and the chain goes on from its last
        finite state with fresh noise), ``"flag"`` (nothing is done; the state is non-finite).
      keep: ``"draws"`` (default) keeps every recorded draw; ``"moments"`` keeps only running
        means and variances per chain (and, with ``swag_rank=K``, the last K draws as SWAG-style
        deviations), so memory does not grow with the run: see ``Result.moments``.
      checkpoint: a directory; the run's state and draws are written there atomically every
        ``checkpoint_every`` chunks (npz + JSON, no pickle), under a lock (a second run writing
        it is refused). A directory that already holds a committed checkpoint is refused unless
        ``resume`` says what to do with it.
      resume: ``"auto"`` (with ``checkpoint``): resume what is committed there, or start fresh
        when nothing is (one command line for a requeued job); ``True`` (with ``checkpoint``) or
        the checkpoint directory: the run must resume. The resumed run's draws equal the
        uninterrupted run's.
      shard: ``"chains"`` splits the chains over ``devices`` (default: all), ``"data"`` splits
        the data rows (full-data gradients become sharded reductions; with federated
        batching, whole shards per device: :func:`heatbath.drivers.placement.place_data`); the
        draws are the same as on one device (to the last float32 bit with full-data gradients
        or the automatic Laplace metric, whose products compile differently per device count).
      batching: which rows a step sees (:mod:`heatbath.drivers.batching`): ``"uniform"``
        (default: n rows with replacement), ``"reshuffle"`` (epochs without replacement) or a
        spec such as ``batching.federated(shards, local_steps=...)``.
      record_unconstrained: also keep the unconstrained positions (``Result.unconstrained``),
        e.g. for Stein discrepancies, whose scores live there.
      checks: the end-of-run self-diagnosis (:mod:`heatbath.drivers.selfcheck`): ``"full"``
        (default; R-hat, ESS, kinetic and configurational temperatures, the predicted bias of
        the step size against the measured gradient noise), ``"basic"`` (R-hat, ESS and the
        kinetic temperature only) or ``"off"``; the default can be set with
        ``$HEATBATH_CHECKS``. Results in ``Result.checks``; what looks wrong is warned about.
      metric: ``"auto"`` (default): with an automatic step size and the MAP start, the chains run
        in coordinates where the posterior's Hessian at the modes is the identity (the dense
        Laplace metric, :mod:`heatbath.drivers.metric`; up to 2,000 dimensions), reported in
        ``Result.tuning["metric"]``; ``"identity"``: the target's own coordinates. With a step
        size you give the run is always in the target's coordinates. ``Result.samples`` and
        ``Result.unconstrained`` are on the target's scales either way; ``Result.final_state``
        is the sampler's state, in the run's coordinates.

    Returns:
      A :class:`Result`.
    """
    relieve_mapping_pressure()  # a long session nears the kernel's limit on mappings: empty the caches
    t_start = time.perf_counter()
    inputs.check_sampler(sampler)
    batching = as_batching(batching)
    data, batching = federation.resolve_shards(model_or_target, data, batching)
    target = inputs.as_target(model_or_target, data)
    num_samples = check_count(num_samples, "num_samples", 1)
    thinning = check_count(thinning, "thinning", 1)
    auto = autotune.auto_names(sampler)
    num_chains = check_count(num_chains, "num_chains", 1)
    batch_size = check_count(batch_size, "batch_size", 1, allow_none=True)
    chunk_size = check_count(chunk_size, "chunk_size", 1, allow_none=True)
    swag_rank = check_count(swag_rank, "swag_rank", 0)
    checkpoint_every = check_count(checkpoint_every, "checkpoint_every", 1)
    progress_bar = check_bool(progress_bar, "progress_bar")
    record_unconstrained = check_bool(record_unconstrained, "record_unconstrained")
    level = selfcheck.default_level() if checks is None else checks
    if level is False:
        level = "off"
    check_choice(level, "checks", selfcheck.LEVELS)
    check_choice(on_divergence, "on_divergence", loop.DIVERGENCE_MODES)
    check_choice(metric, "metric", _metric.MODES)
    check_choice(keep, "keep", loop.KEEP_MODES)
    if swag_rank and keep != "moments":
        raise ValueError("swag_rank needs keep='moments'")
    inputs.check_target_for_gradients(target, batch_size)
    inputs.check_oracle_uses(target, sampler, batching)
    sampler = federation.prepare(target, sampler, batching, lambda: _keys.fold_in(seed_key(seed), 2**31 - 2))
    # Samplers that take several integrator steps per draw (SGHMC's num_steps_per_sample) get
    # them as driver-level thinning: every step draws its own minibatch.
    steps_per_draw = thinning * sampler.steps_per_draw
    if num_warmup is None:
        stored = stored_setting(checkpoint, resume, "num_warmup")  # a resume takes the checkpoint's
        num_warmup = (stored if isinstance(stored, int) and stored >= 0 else
                      autotune.default_warmup_for(sampler, auto, num_samples * steps_per_draw, batching))
    num_warmup = check_count(num_warmup, "num_warmup", 0)
    if auto and num_warmup < 2:
        raise ValueError(f"an automatic {' and '.join(auto)} is chosen during warmup: num_warmup must be >= 2 "
                         f"(got {num_warmup}; default {autotune.default_num_warmup(num_samples * steps_per_draw)})")
    if auto and target.nonsmooth is not None:
        raise ValueError("automatic step sizes measure the curvature of a smooth target; give step_size= for a "
                         "target with a nonsmooth term")
    inputs.check_total_steps(num_warmup + num_samples * steps_per_draw)
    if shard is not None:
        shardings(shard, devices, num_chains, target.num_data, batching)
    master = seed_key(seed)
    ckpt, resuming = open_checkpoint(
        checkpoint, resume, target, "sample", sampler.hyperparameters, seed=seed, init=init,
        processes=spans_processes(shard, devices), sampler=sampler.name,
        num_data=target.num_data, batch_size=batch_size, num_samples=num_samples, num_warmup=num_warmup,
        thinning=thinning, num_chains=num_chains, keep=keep, swag_rank=swag_rank, on_divergence=on_divergence,
        batching=repr(batching),
        **({"record_unconstrained": True} if record_unconstrained else {}),
    )
    watched = _stall.applies()  # a hang with no CPU use is reported (drivers/stall.py)
    with hold(ckpt), _stall.watch("hb.sample", enabled=watched):  # the checkpoint lock, released however the run ends
        keys = loop.chain_keys(master, num_chains)
        # the dense Newton finishes mode searches that did not converge (with the automatic metric)
        newton = (functools.partial(_metric.newton, target, key=_keys.fold_in(master, 4))
                  if auto and metric == "auto" and _metric.applies(sampler) else None)
        positions, init_info = initialize.resolve(target, init, loop.fold_each(keys, 0), num_chains, batch_size,
                                                  default="map" if auto else "uniform", rescue=newton)
        positions = initialize.sampler_default(sampler, target, init, positions, init_info["strategy"])
        inputs.check_init_finite(target, positions, target.data)
        if getattr(sampler, "check_start", None) is not None:  # e.g. a mirror map's domain (heatbath.samplers.bregman)
            sampler.check_start(target, positions)
        user_target, affine, metric_info = target, None, None
        if auto and metric == "auto" and init_info["strategy"] == "map" and _metric.applies(sampler):
            usable = np.asarray(init_info["converged"], bool)
            affine, metric_info = _metric.laplace(target, positions, usable, _keys.fold_in(master, 5))
            if affine is not None:
                target = _metric.whiten(target, affine)
                positions = _metric.to_run(affine, positions)
                sampler = _metric.centre_to_run(sampler, affine)
        if auto and ckpt is not None:
            # The sampler's state is in the run's coordinates: a resume must run in the same ones.
            ckpt.settings["coordinates"] = "laplace metric" if affine is not None else "model"
        gradient_info, minibatch = None, batch_size  # batch_size: the run's (None once full batches are chosen)
        full_ok = batching.name in ("uniform", "reshuffle")  # full batches would drop e.g. federated rounds
        if auto and estimator_choice.wants_choice(sampler, target, batch_size, affine):
            sampler, gradient_info, choice_cost = estimator_choice.choose(
                target, sampler, positions, usable, _keys.fold_in(master, 6), batch_size,
                autotune.constant_temperature(sampler), full_batch=full_ok)
            batch_size = estimator_choice.run_batch_size(gradient_info, minibatch)

        spec, centre, map_cost, map_compile = _centre.resolve(
            target, sampler.gradient, positions, master, batch_size,
            # a whitened run recomputes its centre: the checkpoint's may be in refined coordinates
            ckpt if resuming and affine is None else None, record=ckpt
        )
        map_cost += init_info.get("cost", 0.0) / num_chains
        estimator = spec.build(target.terms, target.num_data)
        tuning, states = None, None
        if init_info["strategy"] != "uniform" or auto:
            tuning = {"init": init_info}
        if metric_info is not None:
            tuning["metric"] = metric_info
            map_cost += metric_info.get("cost_per_chain", 0.0)
        if gradient_info is not None:
            tuning["gradient"] = gradient_info
            map_cost += choice_cost
        if auto:
            untuned = sampler
            est_state = estimator_state(estimator, positions, target.data)
            sampler, states, pilot, info, tune_cost, tune_compile, points = autotune.warmup(
                target, sampler, estimator, est_state, positions, keys, batch_size=batch_size, batching=batching,
                num_warmup=num_warmup, progress_bar=progress_bar, unit_scale=affine is not None)
            tuning.update(info)
            num_warmup -= pilot
            map_cost += tune_cost
            map_compile += tune_compile
            window, rounds, pilot_last = num_warmup, [], True
            # where the chains started (e.g. their modes): a lost chain starts there again
            origin, origin_flat = affine, np.asarray(mapsearch.flat_positions(positions), np.float64)
            while (affine is not None and window >= _adapt.MIN_STEPS and len(rounds) < _adapt.ROUNDS
                   and _adapt.suspect(np.asarray(mapsearch.flat_positions(points)))):
                # An adaptation window: the metric refined from its draws, the step tuned again.
                states, draws, alive, w_cost, w_compile = _adapt.window(
                    target, sampler, estimator, states, positions, loop.fold_each(keys, 29 + len(rounds)),
                    steps=window, batch_size=batch_size, batching=batching, progress_bar=progress_bar)
                map_cost += w_cost
                map_compile += w_compile
                num_warmup, pilot_last = 0, False
                lost, lost_info, lost_cost = _adapt.lost_chains(target, draws, alive, positions, batch_size)
                map_cost += lost_cost
                alive = alive & ~lost
                m, C, adapted = _adapt.refine(draws, alive)
                if lost_info:
                    adapted["chains"] = lost_info
                rounds.append(adapted)
                if C is None and not lost.any():
                    break  # the window checked the last pilot's chains
                if C is None:  # the metric stays; the lost chains restart and the step is tuned again
                    m, C = np.zeros(draws.shape[2]), np.eye(draws.shape[2])
                old = affine
                affine = _adapt.compose(old, m, C)
                target = _metric.whiten(user_target, affine)
                starts = _adapt.starts_of(np.asarray(mapsearch.flat_positions(positions)), lost, origin_flat, origin,
                                          old)
                positions = _adapt.positions_after(draws, alive, starts, old, affine)
                if centre is not None:
                    centre = affine.inverse(old.forward(centre))
                    spec = spec.with_centre(centre)
                if gradient_info is not None:
                    # The estimator chosen again where the chains now are (estimator_choice.choose_again).
                    again = estimator_choice.choose_again(
                        target, untuned, draws, alive, old, affine, positions,
                        _keys.fold_in(master, 40 + len(rounds)), minibatch, full_batch=full_ok)
                    if again is not None:
                        untuned, gradient_info, choice_cost = again
                        batch_size = estimator_choice.run_batch_size(gradient_info, minibatch)
                        gradient_info["earlier"] = tuning["gradient"].pop("earlier", []) + [tuning["gradient"]]
                        tuning["gradient"] = gradient_info
                        map_cost += choice_cost
                        spec = untuned.gradient
                        centre = spec.centre if getattr(spec, "needs_centre", False) else None
                estimator = spec.build(target.terms, target.num_data)
                est_state = estimator_state(estimator, positions, target.data)
                tuning.setdefault("earlier_passes", []).append({k: tuning[k] for k in info if k in tuning})
                sampler, states, _, info, tune_cost, tune_compile, points = autotune.warmup(
                    target, untuned, estimator, est_state, positions, loop.fold_each(keys, 23 + len(rounds)),
                    batch_size=batch_size, batching=batching, num_warmup=max(4, pilot), progress_bar=progress_bar,
                    unit_scale=True)
                tuning.update(info)
                map_cost += tune_cost
                map_compile += tune_compile
                pilot_last = True
                if ckpt is not None:
                    ckpt.settings["coordinates"] = "adapted metric"
            if pilot_last and affine is not None:  # a lost chain of the last pilot starts again
                states, last, r_cost = _adapt.check_last_pilot(target, sampler, states, points, positions, origin_flat,
                                                               origin, affine, keys, batch_size, bool(rounds))
                map_cost += r_cost
                if last is not None:
                    tuning["metric"]["last_pilot"] = last
            if rounds:
                tuning["metric"]["adaptation"] = rounds
                if any(r["adapted"] for r in rounds):
                    tuning["metric"]["condition_number_adapted"] = float(np.linalg.cond(affine.L) ** 2)
        estimator_choice.announce(gradient_info, minibatch, target.num_data, stacklevel=2)
        if auto and ckpt is not None:
            # A resume tunes again: it must arrive at the same settings (another heatbath version
            # may not), else its sampler state would be read in other coordinates or steps.
            ckpt.settings["tuned"] = tuned_digest(sampler, affine)
        if ckpt is not None and gradient_info is not None:
            # A resume must read the same rows per step: the choice is part of the run's settings.
            ckpt.settings["run_batch_size"] = batch_size
        # The configurational-temperature check reads unconstrained draws: kept for it when small.
        keep_unc = record_unconstrained or (
            level == "full" and keep == "draws"
            and _tree.size(positions) // num_chains * num_samples * num_chains <= selfcheck_unconstrained_budget)
        cfg = loop.LoopConfig(
            batching=batching, batch_size=batch_size, num_draws=num_samples, thinning=steps_per_draw,
            num_warmup=num_warmup, desc=sampler.name, record=_record(target, keep_unc),
            chunk_size=chunk_size, progress_bar=progress_bar, on_divergence=on_divergence, keep=keep,
            swag_rank=swag_rank, shard=shard, devices=devices, checkpoint=ckpt, checkpoint_every=checkpoint_every,
            resume=resuming, extra_state=centre, states=states,
        )
        out = loop.run(target, sampler, estimator, positions, keys, cfg)
        if out.interrupted and out.steps_done <= num_warmup:
            raise KeyboardInterrupt(f"interrupted during the warmup, after {out.steps_done} of {num_warmup} steps "
                                    "(no draws were made)")
    result = collect.result(out, target, sampler, estimator, cfg, num_chains, centre, map_cost, map_compile, t_start,
                     keep_unc, tuning)
    if affine is not None:  # back to the target's coordinates (the sampler's state stays in the run's)
        result.target = user_target
        if result.centre is not None:
            result.centre = jax.tree.map(np.asarray, affine.forward(result.centre))
        if result.unconstrained is not None:
            result.unconstrained = jax.tree.map(np.asarray, _metric.from_run(affine, result.unconstrained, lead=2))
    if not out.interrupted:
        with _stall.watch("hb.sample's end-of-run checks", enabled=watched):
            msgs = selfcheck.run_checks(result, sampler, estimator, lambda p: estimator_state(estimator, p, target.data),
                                        batch_size, level, _keys.fold_in(master, 3), run_target=target)
        for msg in msgs:
            warnings.warn(f"{sampler.name}: {msg}", RuntimeWarning, stacklevel=2)
    if keep_unc and not record_unconstrained:
        result.unconstrained = None
    return result


selfcheck_unconstrained_budget = 25_000_000  # unconstrained values kept for the checks (100 MB in float32)


def estimator_state(estimator, positions, data):
    """The gradient estimator's state at the chains' positions (shared: one copy), for measurements."""
    if estimator.shared:
        chain0 = jax.tree.map(lambda x: x[0], positions)
        return estimator.init(chain0, data)
    return jax.vmap(estimator.init, in_axes=(0, None))(positions, data)
