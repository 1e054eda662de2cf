"""``hb.optimize``: the sampling loop at temperature zero (or along an annealing schedule)."""

from __future__ import annotations

import time
import warnings
from typing import Optional, Union

import jax
import numpy as np

from heatbath.drivers import initialize, inputs, loop, mapsearch
from heatbath.drivers.batching import as_batching
from heatbath.drivers.cache import IdentityCache, relieve_mapping_pressure
from heatbath.drivers.checkpoint import hold
from heatbath.drivers.results import OptimizeResult
from heatbath.drivers.placement import spans_processes
from heatbath.drivers.settings import open_checkpoint
from heatbath.kernels import tree as _tree
from heatbath.kernels.validate import check_bool, check_count, seed_key
from heatbath.samplers.base import Sampler

__all__ = ["optimize", "as_optimizer", "optimize_from", "default_optimizer"]

_OPTIMIZERS = IdentityCache(32)


def default_optimizer(num_steps: int):
    """Adam with a cosine decay of its learning rate from 1e-2 to 1e-4 over ``num_steps``."""
    import optax

    return optax.adam(optax.cosine_decay_schedule(1e-2, num_steps, alpha=1e-2))


def optimize(
    model_or_target,
    optimizer=None,
    *,
    data=None,
    batch_size: Optional[int] = None,
    num_steps: Union[int, str] = 2000,
    seed=0,
    init=None,
    trace_every: Optional[int] = None,
    progress_bar: bool = False,
    chunk_size: Optional[int] = None,
    checkpoint=None,
    checkpoint_every: int = 1,
    resume=None,
    shard: Optional[str] = None,
    devices=None,
    batching="uniform",
    check: bool = True,
    tol: float = mapsearch.TOL,
    max_steps: Optional[int] = None,
) -> OptimizeResult:
    """Maximise the log posterior (the MAP): the sampling loop at temperature zero.

    Args:
      optimizer: a heatbath :class:`Sampler` at temperature 0 (or with a temperature schedule
        that anneals), or an optax ``GradientTransformation``. Default: Adam with a cosine
        decay from 1e-2 to 1e-4 (scale-free, robust for a MAP in the unconstrained space).
      num_steps: optimisation steps; ``trace_every``: steps between recorded trace points
        (default: about 200 points); ``chunk_size``: trace points per compiled chunk (the unit
        of checkpointing; default: all in one chunk, or 20 chunks when checkpointing).
        ``num_steps="auto"``: run until the convergence check passes (at most ``max_steps``).
        With the default optimizer this is full-batch L-BFGS when the full-data gradient is
        cheap (N d <= 1e7 or no ``batch_size``), else Adam on minibatches in segments of
        2000, 4000, ... steps (:func:`heatbath.drivers.mapsearch.find_map`; ``max_steps``
        counts L-BFGS iterations, default 1000, or Adam steps, default 64000); with a given
        optimizer, segments of 1000, 2000, ... steps (the optimizer's state and schedule
        restart at each), default ``max_steps`` 64000. Not with checkpoints or ``shard``.
      checkpoint, checkpoint_every, resume, shard, devices, batching: as in :func:`heatbath.sample`.
      check: run the end-of-run convergence check (default True): the full-data Newton
        decrement sqrt(g' H^-1 g) at the result, i.e. its distance to the stationary point in
        posterior standard deviations (H read as the posterior precision); see
        :mod:`heatbath.drivers.mapsearch`. It costs one full-data gradient and at most 50
        full-data Hessian-vector products (``diagnosis["cost"]``, not in ``grad_evals``).
        ``converged`` is True when the decrement is below ``tol`` (default 0.05 sd) and the
        Hessian is positive definite there; otherwise a RuntimeWarning gives the numbers and
        the fixes. ``diagnosis`` also holds the change of the trace's ``lp`` over its last
        fifth (``lp_change``, with its standard error ``lp_change_se``). Not run for a target
        with a nonsmooth term (``converged`` None; its minimiser is not a stationary point of
        the smooth part the check reads).
      Other arguments as in :func:`heatbath.sample`.
    """
    relieve_mapping_pressure()  # a long session nears the kernel's limit on mappings: empty the caches
    t_start = time.perf_counter()
    auto = isinstance(num_steps, str)
    if auto and num_steps != "auto":
        raise ValueError(f"num_steps must be a positive integer or 'auto', got {num_steps!r}")
    if auto and (checkpoint is not None or resume is not None or shard is not None):
        raise ValueError("num_steps='auto' runs in segments that are not checkpointed or sharded; give a number "
                         "of steps to use checkpoint, resume or shard")
    num_steps = 1000 if auto else check_count(num_steps, "num_steps", 1)
    max_steps = check_count(max_steps, "max_steps", 1, allow_none=True)
    check = check_bool(check, "check")
    tol = _check_tol(tol)
    progress_bar = check_bool(progress_bar, "progress_bar")
    default = optimizer is None
    optimizer = as_optimizer(optimizer, num_steps)
    target = inputs.as_target(model_or_target, data)
    batch_size = check_count(batch_size, "batch_size", 1, allow_none=True)
    batching = as_batching(batching)
    inputs.check_target_for_gradients(target, batch_size)
    inputs.check_oracle_uses(target, optimizer, batching)
    trace_every = check_count(trace_every, "trace_every", 1, allow_none=True) or max(1, num_steps // 200)
    chunk_size = check_count(chunk_size, "chunk_size", 1, allow_none=True)
    checkpoint_every = check_count(checkpoint_every, "checkpoint_every", 1)
    master = seed_key(seed)
    if auto:
        keys = jax.random.fold_in(master, 0)[None]
        positions = initialize.sampler_default(optimizer, target, init,
                                               inputs.initial_positions(target, init, loop.fold_each(keys, 0), 1))
        inputs.check_init_finite(target, positions, target.data)
        if getattr(optimizer, "check_start", None) is not None:
            optimizer.check_start(target, positions)
        if default:
            return _auto_default(target, positions, keys, batch_size, max_steps, tol, t_start)
        return _auto_segments(target, optimizer, positions, keys, batch_size, max_steps or 64000, tol, t_start,
                              trace_every, progress_bar, devices, batching)
    ckpt, resuming = open_checkpoint(
        checkpoint, resume, target, "optimize", optimizer.hyperparameters, seed=seed, init=init,
        processes=spans_processes(shard, devices),
        optimizer=optimizer.name, num_data=target.num_data, batch_size=batch_size, num_steps=num_steps,
        trace_every=trace_every, batching=repr(batching),
    )
    with hold(ckpt):  # the checkpoint lock, released however the run ends
        keys = jax.random.fold_in(master, 0)[None]
        positions = initialize.sampler_default(optimizer, target, init,
                                               inputs.initial_positions(target, init, loop.fold_each(keys, 0), 1))
        inputs.check_init_finite(target, positions, target.data)
        if getattr(optimizer, "check_start", None) is not None:  # a mirror map's domain, a prox's shapes
            optimizer.check_start(target, positions)
        return optimize_from(target, optimizer, positions, keys, batch_size=batch_size, num_steps=num_steps,
                             trace_every=trace_every, chunk_size=chunk_size, progress_bar=progress_bar, ckpt=ckpt,
                             checkpoint_every=checkpoint_every, resuming=resuming, shard=shard, devices=devices,
                             t_start=t_start, batching=batching, check=check, tol=tol)


def _auto_default(target, positions, keys, batch_size, max_steps, tol, t_start) -> OptimizeResult:
    """``num_steps="auto"`` with the default optimizer: :func:`mapsearch.search` on one chain."""
    x, outcome, trace = mapsearch.search(target, positions, jax.random.fold_in(keys[0], 1)[None], batch_size,
                                         max_steps, tol)
    params = jax.tree.map(lambda a: a[0], jax.vmap(mapsearch.unravel_of(target, positions))(x))
    finite = bool(_tree.all_finite(params))
    diagnosis = {k: (v[0].item() if hasattr(v[0], "item") else v[0]) for k, v in outcome.items()}
    trace = {k: np.asarray(v)[0] for k, v in trace.items()}
    diagnosis.update(_trend(trace["lp"]), tol=float(tol), num_steps=int(outcome["steps"][0]))
    if not finite:
        warnings.warn(f"the MAP search diverged: {diagnosis['reason']}", RuntimeWarning, stacklevel=3)
    elif not diagnosis["converged"]:
        warnings.warn(_unconverged_message(diagnosis, f"the MAP search ({diagnosis['method']}, "
                                           f"{diagnosis['num_steps']} steps)", batch_size), RuntimeWarning, stacklevel=3)
    constrain = target.memo("constrain", lambda: jax.jit(target.constrain_fn))
    values = {k: np.asarray(v) for k, v in jax.device_get(constrain(params, target.data)).items()}
    return OptimizeResult(params=params, values=values, trace=trace, grad_evals=float(outcome["cost"][0]),
                          num_data=target.num_data, wall_time=time.perf_counter() - t_start,
                          compile_time=0.0, converged=bool(diagnosis["converged"]), diagnosis=diagnosis)


def _auto_segments(target, optimizer, positions, keys, batch_size, max_steps, tol, t_start, trace_every,
                   progress_bar, devices, batching) -> OptimizeResult:
    """``num_steps="auto"`` with a given optimizer: segments of 1000, 2000, ... steps (each
    restarts the optimizer) until the check passes or ``max_steps`` are spent."""
    done, seg, parts, res = 0, 1000, [], None
    while done < max_steps:
        seg = min(seg, max_steps - done)
        res = optimize_from(target, optimizer, positions, jax.random.fold_in(keys[0], done)[None],
                            batch_size=batch_size, num_steps=seg, trace_every=min(trace_every, seg),
                            progress_bar=progress_bar, devices=devices, batching=batching, tol=tol, warn=False)
        parts.append(res)
        done += seg
        positions = jax.tree.map(lambda a: a[None], res.params)
        if res.converged is not False or not bool(_tree.all_finite(res.params)):
            break
        seg *= 2
    trace = {k: np.concatenate([np.asarray(p.trace[k]) for p in parts]) for k in res.trace}
    diagnosis = dict(res.diagnosis or {}, num_steps=done, segments=len(parts))
    if res.diagnosis is not None:
        diagnosis.update(_trend(trace.get("lp")))
        if res.diagnosis["converged"] is False and "decrement" in res.diagnosis:
            warnings.warn(_unconverged_message(diagnosis, f"{done} steps of {optimizer.name} (num_steps='auto', "
                                               f"max_steps={max_steps})", batch_size), RuntimeWarning, stacklevel=3)
    return OptimizeResult(params=res.params, values=res.values, trace=trace,
                          grad_evals=float(sum(p.grad_evals for p in parts)), num_data=target.num_data,
                          wall_time=time.perf_counter() - t_start, compile_time=sum(p.compile_time for p in parts),
                          converged=res.converged, diagnosis=diagnosis)


def _check_tol(tol) -> float:
    try:
        value = float(tol)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(tol, bool) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"tol must be a positive number (posterior standard deviations), got {tol!r}")
    return value


def as_optimizer(optimizer, num_steps: int) -> Sampler:
    """A T = 0 (or annealing) Sampler from None (the default Adam), an optax transform or a Sampler.

    The wrappers are cached (by the transform's identity, or by ``num_steps`` for the default),
    so repeated calls reuse the compiled loop.
    """
    from heatbath.kernels.schedules import is_constant
    from heatbath.optim.optax_bridge import from_optax

    if optimizer is None:
        def build():
            wrapped = from_optax(default_optimizer(num_steps), name="adam")
            return wrapped._replace(hyperparameters={
                "optimizer": f"adam(cosine_decay_schedule(1e-2, {num_steps}, alpha=1e-2))",
                "gradient": wrapped.gradient,
            })

        optimizer = _OPTIMIZERS.get(("default", num_steps), (None,), build)
    elif not isinstance(optimizer, Sampler):
        transform = optimizer
        optimizer = _OPTIMIZERS.get(("optax", id(transform)), (transform,), lambda: from_optax(transform))
    t_const = is_constant(optimizer.temperature)
    if t_const is not None and t_const != 0.0:
        raise ValueError(
            f"optimize runs at temperature 0 (or an annealing schedule), but the sampler has constant "
            f"temperature {t_const}; build it with temperature=0.0 or a cooling schedule"
        )
    return optimizer


def optimize_from(target, optimizer, positions, keys, *, batch_size, num_steps, trace_every, chunk_size=None,
                  progress_bar=False, ckpt=None, checkpoint_every=1, resuming=False, shard=None, devices=None,
                  t_start=None, batching=None, check=True, tol=mapsearch.TOL, warn=True) -> OptimizeResult:
    """The optimisation loop from unconstrained ``positions`` (leading axis of size 1), then
    (``check``) the convergence check of :func:`optimize`, which warns when ``warn``."""
    t_start = time.perf_counter() if t_start is None else t_start
    estimator = optimizer.gradient.build(target.terms, target.num_data)
    trace_every = min(trace_every, num_steps)
    num_records, rest = divmod(num_steps, trace_every)
    if chunk_size is None and ckpt is not None:
        chunk_size = max(1, num_records // 20)
    # The first `rest` steps run unrecorded, then num_records draws every trace_every steps.
    cfg = loop.LoopConfig(
        batching=as_batching("uniform" if batching is None else batching), batch_size=batch_size,
        num_draws=num_records, thinning=trace_every, num_warmup=rest, desc=f"optimize ({optimizer.name})",
        chunk_size=chunk_size, progress_bar=progress_bar, shard=shard, devices=devices, checkpoint=ckpt,
        checkpoint_every=checkpoint_every, resume=resuming,
    )
    out = loop.run(target, optimizer, estimator, positions, keys, cfg)
    params = jax.tree.map(lambda x: x[0], out.carry[0].position)
    trace = {k: np.asarray(v)[:, 0] for k, v in out.infos._asdict().items()}
    constrain = target.memo("constrain", lambda: jax.jit(target.constrain_fn))
    values = {k: np.asarray(v) for k, v in jax.device_get(constrain(params, target.data)).items()}
    if out.interrupted:
        warnings.warn(f"interrupted (Ctrl-C) after {out.steps_done} of {num_steps} steps: the result is the "
                      "point reached", RuntimeWarning, stacklevel=3)
        num_steps = out.steps_done
    finite = bool(_tree.all_finite(params))
    if not finite:
        warnings.warn("the optimizer diverged (non-finite parameters); lower the learning rate", RuntimeWarning, stacklevel=3)
    diagnosis = {"converged": False, "reason": "non-finite parameters"} if check and not finite else None
    if check and finite:
        diagnosis = _diagnose(target, params, batch_size, tol)
        diagnosis.update(_trend(trace.get("lp")), num_steps=int(num_steps))
        if warn and diagnosis["converged"] is False:
            warnings.warn(_unconverged_message(diagnosis, f"{num_steps} steps of {optimizer.name}", batch_size),
                          RuntimeWarning, stacklevel=3)
    return OptimizeResult(
        params=params,
        values=values,
        trace=trace,
        grad_evals=loop.grad_evals_per_chain(estimator, optimizer.grads_per_step, batch_size, target.num_data,
                                            num_steps),
        num_data=target.num_data,
        wall_time=time.perf_counter() - t_start,
        compile_time=out.compile_time,
        converged=None if diagnosis is None else diagnosis["converged"],
        diagnosis=diagnosis,
    )


def _diagnose(target, params, batch_size, tol) -> dict:
    """:func:`mapsearch.diagnose`, or (a model whose log density has no Hessian-vector
    products, e.g. a ``custom_vjp`` without forward rules, or a target with a nonsmooth term,
    whose minimiser is not a stationary point of the smooth part the check reads)
    ``converged`` None and why."""
    if target.nonsmooth is not None:
        return {"converged": None, "reason": f"not checked: the target has a nonsmooth term "
                f"({target.nonsmooth.name}), and the check reads the smooth log density only"}
    try:
        return mapsearch.diagnose(target, params, batch_size=batch_size, tol=tol)
    except Exception as err:  # noqa: BLE001 - the check must never break a run that worked
        warnings.warn(f"the convergence check could not run ({type(err).__name__}: {err}); pass check=False to "
                      "skip it", RuntimeWarning, stacklevel=4)
        return {"converged": None, "reason": f"check failed: {type(err).__name__}: {err}"}


def _trend(lp) -> dict:
    """The change of the trace's lp over its last fifth against the fifth before, with the
    standard error of that difference from the points' scatter (minibatch lp is noisy)."""
    lp = None if lp is None else np.asarray(lp, np.float64)
    if lp is None or lp.size < 10 or not np.all(np.isfinite(lp[-(2 * max(2, lp.size // 5)):])):
        return {"lp_change": None, "lp_change_se": None}
    k = max(2, lp.size // 5)
    last, before = lp[-k:], lp[-2 * k:-k]
    se = float(np.sqrt(np.var(last, ddof=1) / k + np.var(before, ddof=1) / k))
    return {"lp_change": float(last.mean() - before.mean()), "lp_change_se": se}


def _unconverged_message(d: dict, what: str, batch_size) -> str:
    numbers = (f"Newton decrement {d['decrement']:.3g} posterior sd (tolerance {d['tol']:g}), full-data gradient norm "
               f"{d['grad_norm']:.3g}")
    why = "" if d["reason"].startswith("the Newton decrement is") else f"; {d['reason']}"
    trend = ""
    if d.get("lp_change") is not None:
        trend = f"; lp changed by {d['lp_change']:+.3g} (+- {d['lp_change_se']:.2g}) over the last fifth of the trace"
    fix = "more steps (num_steps, num_steps='auto' to stop when converged, or map_steps for a control-variate centre)"
    if batch_size is not None:
        fix += ", a larger batch_size (a minibatch optimizer ends in a noise ball around the mode)"
    return (f"{what} did not converge: {numbers}{why}{trend}. The result may be that many sds from the mode; "
            f"use {fix}, or another optimizer (num_steps='auto' with the default optimizer runs L-BFGS when the "
            "data allow)")
