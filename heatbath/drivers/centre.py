"""The control-variate centre: given, restored from a checkpoint, or found (the MAP).

One search serves ``hb.sample``, ``hb.fit`` and the NumPyro kernel: the convergence-checked
mode search :func:`heatbath.drivers.mapsearch.find_map` (full-batch L-BFGS when the data is
small enough, else Adam on minibatches of the run's batch size with a Newton polish), from a
starting point and a key the caller chooses; its cost is charged to the run. A centre the
search could not bring within 0.05 posterior sd of a mode is warned about (control variates
centred away from the mode leave minibatch noise that grows with the distance).
"""

from __future__ import annotations

import jax

from heatbath.drivers.inputs import check_centre
import warnings

import numpy as np

from heatbath.drivers.mapsearch import find_map
from heatbath.models.target import Target

__all__ = ["MAP_KEY", "search", "resolve"]

MAP_KEY = 2**31 - 1  # fold_in index of the key used for the control-variates MAP search


def search(target: Target, map_steps: int, positions, keys, batch_size):
    """The MAP from ``positions`` (leading axis 1) with the loop keys ``keys`` (shape (1,)).

    ``map_steps`` bounds the Adam steps of a minibatch search (L-BFGS runs up to 1,000
    iterations). Returns (centre, cost in per-datum gradients, compile time: 0, it is in the
    wall time).
    """
    found, outcome = find_map(target, positions, keys, batch_size=batch_size,
                              max_steps=None if map_steps == 2000 else map_steps)
    if not bool(np.asarray(outcome["converged"])[0]):
        why = outcome["reason"][0] or f"{float(np.asarray(outcome['decrement'])[0]):.3g} posterior sd from a mode"
        warnings.warn(f"the control-variate centre (the MAP search) did not converge: {why}; pass "
                      "gradient=control_variates(centre=...) with a better MAP (hb.optimize(..., num_steps='auto'))",
                      RuntimeWarning, stacklevel=4)
    centre = jax.tree.map(lambda x: x[0], found)
    return centre, float(np.sum(outcome["cost"])), 0.0


def resolve(target: Target, spec, positions, master, batch_size, ckpt=None, record=None):
    """The centre of a gradient-estimator spec for a run whose chains start at ``positions``.

    Given: checked. Resuming a checkpoint that holds one: restored. Otherwise the MAP, searched
    from chain 0's starting point (so a user ``init`` that keeps the chain inside the support
    keeps the search there too) with the key ``fold_in(master, MAP_KEY)``.

    ``record``: a fresh run's checkpoint, whose settings keep the search's cost (``centre_cost``)
    so that a resumed run reports the same cost.

    Returns (spec with its centre, centre or None, MAP cost in per-datum gradients, MAP compile time).
    """
    if not getattr(spec, "needs_centre", False):
        return spec, None, 0.0, 0.0
    if spec.centre is not None:
        centre = check_centre(target, spec.centre)
        return spec.with_centre(centre), centre, 0.0, 0.0
    if ckpt is not None and ckpt.has_extra():
        centre = ckpt.load_extra(jax.tree.map(lambda x: x[0], positions))
        recorded = ckpt.read_meta(ckpt.path)["settings"].get("centre_cost")
        cost = float(recorded) if isinstance(recorded, (int, float)) else 0.0
        if recorded is not None:
            ckpt.settings["centre_cost"] = recorded
        return spec.with_centre(centre), centre, cost, 0.0
    centre, cost, compile_time = search(
        target, spec.map_steps, jax.tree.map(lambda x: x[:1], positions), jax.random.fold_in(master, MAP_KEY)[None],
        batch_size,
    )
    if record is not None:
        record.settings["centre_cost"] = cost
    return spec.with_centre(centre), centre, cost, compile_time
