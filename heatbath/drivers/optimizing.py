"""``hb.optimize``: the sampling loop at temperature zero (or along an annealing schedule)."""

from __future__ import annotations

import time
import warnings
from typing import Optional

import jax
import numpy as np

from heatbath.drivers import inputs, loop
from heatbath.drivers.batching import as_batching
from heatbath.drivers.cache import IdentityCache
from heatbath.drivers.checkpoint import hold
from heatbath.drivers.results import OptimizeResult
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
    num_steps: int = 2000,
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
) -> OptimizeResult:
    """Maximise the log posterior (the MAP): the sampling loop at temperature zero.

    Args:
      optimizer: a heatbath :class:`Sampler` at temperature 0 (or with a temperature schedule
        that anneals), or an optax ``GradientTransformation``. Default: Adam with a cosine
        decay from 1e-2 to 1e-4 (scale-free, robust for a MAP in the unconstrained space).
      num_steps: optimisation steps; ``trace_every``: steps between recorded trace points
        (default: about 200 points); ``chunk_size``: trace points per compiled chunk (the unit
        of checkpointing; default: all in one chunk, or 20 chunks when checkpointing).
      checkpoint, checkpoint_every, resume, shard, devices, batching: as in :func:`heatbath.sample`.
      Other arguments as in :func:`heatbath.sample`.
    """
    t_start = time.perf_counter()
    num_steps = check_count(num_steps, "num_steps", 1)
    progress_bar = check_bool(progress_bar, "progress_bar")
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
    ckpt, resuming = open_checkpoint(
        checkpoint, resume, target, "optimize", optimizer.hyperparameters, seed=seed, init=init,
        optimizer=optimizer.name, num_data=target.num_data, batch_size=batch_size, num_steps=num_steps,
        trace_every=trace_every, batching=repr(batching),
    )
    with hold(ckpt):  # the checkpoint lock, released however the run ends
        keys = jax.random.fold_in(master, 0)[None]
        positions = inputs.initial_positions(target, init, loop.fold_each(keys, 0), 1)
        inputs.check_init_finite(target, positions, target.data)
        return optimize_from(target, optimizer, positions, keys, batch_size=batch_size, num_steps=num_steps,
                             trace_every=trace_every, chunk_size=chunk_size, progress_bar=progress_bar, ckpt=ckpt,
                             checkpoint_every=checkpoint_every, resuming=resuming, shard=shard, devices=devices,
                             t_start=t_start, batching=batching)


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
                  t_start=None, batching=None) -> OptimizeResult:
    """The optimisation loop from unconstrained ``positions`` (leading axis of size 1)."""
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
    if not bool(_tree.all_finite(params)):
        warnings.warn("the optimizer diverged (non-finite parameters); lower the learning rate", RuntimeWarning, stacklevel=3)
    return OptimizeResult(
        params=params,
        values=values,
        trace=trace,
        grad_evals=loop.grad_evals_per_chain(estimator, optimizer.grads_per_step, batch_size, target.num_data,
                                            num_steps),
        num_data=target.num_data,
        wall_time=time.perf_counter() - t_start,
        compile_time=out.compile_time,
    )
