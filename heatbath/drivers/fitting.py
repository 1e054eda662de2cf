"""``hb.fit``: run a variational method (any :class:`~heatbath.vi.base.VIMethod`) in the one loop."""

from __future__ import annotations

import time
import warnings
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from heatbath.drivers import centre as _centre
from heatbath.drivers import initialize, inputs, loop
from heatbath.drivers.batching import as_batching
from heatbath.drivers.cache import IdentityCache, relieve_mapping_pressure
from heatbath.drivers.checkpoint import hold
from heatbath.drivers.placement import spans_processes
from heatbath.drivers.settings import open_checkpoint
from heatbath.kernels import tree as _tree
from heatbath.models.target import Target
from heatbath.kernels.validate import check_bool, check_count, seed_key
from heatbath.vi.base import FitRun, VIMethod

__all__ = ["fit", "TRACE_KEY"]

TRACE_KEY = 3  # fold_in index of the key handed to the method's finalize (e.g. ELBO trace draws)
TRACE_BYTES = 1 << 28  # recorded states a default trace keeps at most (256 MiB): fewer points when larger


def _bytes(shapes) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes))


class _FitInfo(NamedTuple):
    """What the loop keeps every ``trace_every`` steps: the method's info and its new state."""

    diverging: jax.Array
    info: Any
    state: Any


_WRAPPED = IdentityCache(32)


def _recording(method):
    """``method`` with a step that also records its new state (cached, to reuse compiled loops)."""

    def build():
        step = method.step

        def recording_step(key, state, batch, oracle):
            new, info = step(key, state, batch, oracle)
            return new, _FitInfo(info.diverging, info, new)

        return method._replace(step=recording_step)

    return _WRAPPED.get(id(method), (method,), build)


def fit(
    model_or_target,
    method: VIMethod,
    *,
    data=None,
    batch_size: Optional[int] = None,
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
    **options,
):
    """Run a variational method and return its approximation.

    The loop is the one of :func:`heatbath.sample` (one jitted ``lax.scan`` per chunk,
    minibatches drawn inside it) on a single chain whose state is the method's (for Gaussian
    VI: (m, S)). For a ``flat`` method the model's parameter pytree is raveled *once* into a
    flat vector outside the loop; the log density unravels it, which XLA compiles to slices.

    Args:
      model_or_target: a NumPyro model (its arguments in ``data``) or a :class:`Target`.
      method: a :class:`~heatbath.vi.base.VIMethod`, e.g. ``hb.vi.fbgvi(...)`` or
        ``hb.vi.bwsgd(...)`` (it carries ``num_steps``).
      batch_size: minibatch size n for doubly stochastic VI (V~ = -log p(theta) - (N/n) sum
        over the batch); None: full data.
      seed: an integer or a JAX key.
      init: the initial point on the constrained scale (like :func:`heatbath.sample`'s ``init``);
        default: uniform(-2, 2) in the unconstrained space.
      trace_every: steps between recorded trace points (default: about 100 points, fewer when
        the method's states at those points would take more than ``TRACE_BYTES`` = 256 MiB:
        at d = 5,000 a Gaussian's covariance is 100 MB, so about 2 points).
      progress_bar, chunk_size, checkpoint, checkpoint_every, resume, shard, devices, batching:
        as in :func:`heatbath.sample` (``chunk_size`` counts trace points; with a checkpoint and
        no chunk size the run is cut into 20 chunks).
      **options: the method's own options (``method.options_defaults``). For FB-GVI/BW-SGD:
        ``elbo_samples`` (default 16: Monte Carlo draws, common random numbers across trace
        points, of the ELBO trace on the full data after the run; 0 skips it),
        ``exact=(mean, cov)`` of a Gaussian target in the flat unconstrained space (the trace
        then has the exact ``kl``), ``keep_trace_states`` (keep the state at every trace point),
        ``check`` (default True: the end-of-run stationarity check,
        :mod:`heatbath.vi.gaussian.convergence`, in ``q.converged`` / ``q.diagnosis``, with a
        RuntimeWarning naming the numbers when it fails; its cost, ``diagnosis["cost"]``, is not
        in ``grad_evals``).

    Returns:
      The method's approximation (for Gaussian VI a :class:`heatbath.Gaussian`). A run that
      diverged warns loudly; a non-finite Gaussian says DIVERGED in its repr and refuses
      ``sample``/``elbo`` (FloatingPointError).
    """
    relieve_mapping_pressure()  # a long session nears the kernel's limit on mappings: empty the caches
    t_start = time.perf_counter()
    if not isinstance(method, VIMethod):
        raise TypeError(
            "method must be a variational method (a heatbath.vi.VIMethod such as hb.vi.fbgvi(...), a Gaussian VI "
            f"method), got {type(method).__name__}; run samplers with hb.sample"
        )
    unknown = set(options) - set(method.options_defaults)
    if unknown:
        raise TypeError(f"hb.fit got unknown option(s) {sorted(unknown)} for {method.name}; it takes "
                        f"{sorted(method.options_defaults)}")
    options = {**method.options_defaults, **options}
    if method.bind is not None and callable(model_or_target) and not isinstance(model_or_target, Target):
        # A method that runs the model itself (programmable VI) builds its own target.
        target, method = method.bind(model_or_target, *inputs.model_arguments(data))
    else:
        target = inputs.as_target(model_or_target, data)
    batch_size = check_count(batch_size, "batch_size", 1, allow_none=True)
    chunk_size = check_count(chunk_size, "chunk_size", 1, allow_none=True)
    progress_bar = check_bool(progress_bar, "progress_bar")
    batching = as_batching(batching)
    inputs.check_target_for_gradients(target, batch_size)
    inputs.check_oracle_uses(target, method, batching)
    num_steps = check_count(method.num_steps, "num_steps", 1)
    trace_given = check_count(trace_every, "trace_every", 1, allow_none=True)
    trace_every = min(trace_given or max(1, num_steps // 100), num_steps)
    master = seed_key(seed)
    keys = jax.random.fold_in(master, 0)[None]
    # As in hb.sample: an OptimizeResult or a dict holding deterministic sites (a MAP's values).
    init = initialize.given_values(target, init)
    positions = inputs.initial_positions(target, init, loop.fold_each(keys, 0), 1)
    unravel = None
    run_target = target
    if method.flat:
        flat0, unravel = ravel_pytree(jax.tree.map(lambda x: x[0], positions))
        run_target = target.memo("flat_target", lambda: target.flat(unravel))
        positions = flat0[None]
    dim = sum(int(np.prod(jnp.shape(x)[1:])) for x in jax.tree.leaves(positions))
    dtype = jax.tree.leaves(positions)[0].dtype
    options = method.check(dim, dtype, options)
    # The trace records the method's state at every point (for Gaussian VI a d x d covariance):
    # bound the points kept by default, and the points per compiled chunk, by their bytes.
    state_bytes = _bytes(jax.eval_shape(method.init, jax.tree.map(lambda x: x[0], positions), keys[0]))
    if trace_given is None and (num_steps // trace_every) * state_bytes > TRACE_BYTES:
        trace_every = min(num_steps, -(-num_steps // max(1, TRACE_BYTES // state_bytes)))
    chunk_cap = max(1, loop.CHUNK_BYTES // max(state_bytes, 1))
    inputs.check_init_finite(run_target, positions, run_target.data)

    spec = method.gradient
    if getattr(spec, "needs_centre", False) and spec.centre is not None:
        centre = inputs.check_centre(target, spec.centre)
        spec = spec.with_centre(ravel_pytree(centre)[0] if method.flat else centre)
    checkpoint_every = check_count(checkpoint_every, "checkpoint_every", 1)
    ckpt, resuming = open_checkpoint(
        checkpoint, resume, target, "fit", method.hyperparameters, seed=seed, init=init,
        processes=spans_processes(shard, devices), method=method.name,
        num_data=target.num_data, batch_size=batch_size, trace_every=trace_every, dim=dim,
        batching=repr(batching),
    )
    with hold(ckpt):  # the checkpoint lock, released however the run ends
        spec, centre, map_cost, map_compile = _centre.resolve(
            run_target, spec, positions, master, batch_size, ckpt if resuming else None, record=ckpt
        )
        estimator = spec.build(run_target.terms, run_target.num_data)
        num_records, rest = divmod(num_steps, trace_every)
        if chunk_size is None and ckpt is not None:
            chunk_size = max(1, num_records // 20)
        if chunk_size is None and num_records > chunk_cap:
            chunk_size = chunk_cap
        cfg = loop.LoopConfig(
            batching=batching, batch_size=batch_size, num_draws=num_records, thinning=trace_every, num_warmup=rest,
            desc=method.name, chunk_size=chunk_size, progress_bar=progress_bar, shard=shard, devices=devices,
            checkpoint=ckpt, checkpoint_every=checkpoint_every, resume=resuming, extra_state=centre,
        )
        out = loop.run(run_target, _recording(method), estimator, positions, keys, cfg)
    if out.interrupted:
        raise KeyboardInterrupt(
            f"{method.name} interrupted after {out.steps_done} of {num_steps} steps"
            + (" (committed to the checkpoint: resume it to finish)" if ckpt is not None else "")
        )
    wall_time = time.perf_counter() - t_start
    final = jax.tree.map(lambda x: x[0], out.carry[0])

    grads, hvps = method.calls_per_step(dim)
    rows = (run_target.num_data if batch_size is None else batch_size) * estimator.rows_per_estimate
    grad_evals = num_steps * grads * rows + estimator.rows_at_init + map_cost
    if estimator.refresh_every:
        grad_evals += loop.num_refreshes(num_steps, estimator.refresh_every) * run_target.num_data
    run = FitRun(
        final_state=final,
        steps=rest + trace_every * (np.arange(num_records) + 1),
        infos={k: np.asarray(v)[:, 0] for k, v in out.infos.info._asdict().items()},
        states=jax.tree.map(lambda x: x[:, 0], out.infos.state),
        target=run_target,
        unravel=unravel,
        observed_data=target.observed_data,
        key=jax.random.fold_in(master, TRACE_KEY),
        method_name=method.name,
        num_steps=num_steps,
        num_data=run_target.num_data,
        grad_calls=float(num_steps * grads),
        hvp_calls=float(num_steps * hvps),
        grad_evals=float(grad_evals),
        hvp_evals=float(num_steps * hvps * rows),
        wall_time=wall_time,
        compile_time=out.compile_time + map_compile,
    )
    result = method.finalize(run, options)
    diagnosis = getattr(result, "diagnosis", None) or {}
    diverging = np.asarray(out.infos.diverging)[:, 0]
    if np.any(diverging) or not bool(_tree.all_finite(final)):
        first = int(run.steps[int(np.argmax(diverging))]) if np.any(diverging) else num_steps
        state = "the returned approximation is NOT FINITE (NaN)" if not bool(_tree.all_finite(final)) else (
            "the returned approximation is finite but passed through invalid states")
        warnings.warn(
            f"{method.name} diverged (non-finite state or a covariance that lost positive definiteness) "
            f"by step {first}: {state}" + (diagnosis.get("warning") or "; lower the step size"),
            RuntimeWarning,
            stacklevel=2,
        )
    elif diagnosis.get("warning"):
        warnings.warn(diagnosis["warning"], RuntimeWarning, stacklevel=2)
    return result
