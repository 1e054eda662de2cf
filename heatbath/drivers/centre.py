"""The control-variate centre: given, restored from a checkpoint, or found (the MAP).

One search serves ``hb.sample``, ``hb.fit`` and the NumPyro kernel: ``spec.map_steps`` steps of
the default optimizer (:func:`heatbath.drivers.optimizing.default_optimizer`) on minibatches of
the run's batch size, from a starting point and a key the caller chooses; its cost is
charged to the run.
"""

from __future__ import annotations

import jax

from heatbath.drivers.inputs import check_centre
from heatbath.drivers.optimizing import as_optimizer, optimize_from
from heatbath.models.target import Target

__all__ = ["MAP_KEY", "search", "resolve"]

MAP_KEY = 2**31 - 1  # fold_in index of the key used for the control-variates MAP search


def search(target: Target, map_steps: int, positions, keys, batch_size):
    """The MAP from ``positions`` (leading axis 1) with the loop keys ``keys`` (shape (1,)).

    Returns (centre, cost in per-datum gradients, compile time).
    """
    opt = optimize_from(
        target, as_optimizer(None, map_steps), positions, keys, batch_size=batch_size, num_steps=map_steps,
        trace_every=map_steps,
    )
    cost = float(map_steps * (target.num_data if batch_size is None else batch_size))
    return opt.params, cost, opt.compile_time


def resolve(target: Target, spec, positions, master, batch_size, ckpt=None):
    """The centre of a gradient-estimator spec for a run whose chains start at ``positions``.

    Given: checked. Resuming a checkpoint that holds one: restored. Otherwise the MAP, searched
    from chain 0's starting point (so a user ``init`` that keeps the chain inside the support
    keeps the search there too) with the key ``fold_in(master, MAP_KEY)``.

    Returns (spec with its centre, centre or None, MAP cost in per-datum gradients, MAP compile time).
    """
    if not getattr(spec, "needs_centre", False):
        return spec, None, 0.0, 0.0
    if spec.centre is not None:
        centre = check_centre(target, spec.centre)
        return spec.with_centre(centre), centre, 0.0, 0.0
    cost = float(spec.map_steps * (target.num_data if batch_size is None else batch_size))
    if ckpt is not None and ckpt.has_extra():
        centre = ckpt.load_extra(jax.tree.map(lambda x: x[0], positions))
        return spec.with_centre(centre), centre, cost, 0.0
    centre, cost, compile_time = search(
        target, spec.map_steps, jax.tree.map(lambda x: x[:1], positions), jax.random.fold_in(master, MAP_KEY)[None],
        batch_size,
    )
    return spec.with_centre(centre), centre, cost, compile_time
