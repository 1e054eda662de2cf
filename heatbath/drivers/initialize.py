"""Where chains start: ``init=`` strategies, as NumPyro names them.

- ``"uniform"``: uniform(-2, 2) in the unconstrained space, per chain (Stan's and NumPyro's
  ``init_to_uniform``); heatbath's default when every setting of the run is given.
- ``"median"``: the median of 15 prior draws per site (NumPyro's ``init_to_median``; NumPyro
  models only), per chain with the chain's own key.
- ``"sample"``: one prior draw per chain (``init_to_sample``; NumPyro models only).
- ``"map"``: each chain climbs from its own uniform(-2, 2) start to a mode of the posterior with
  a convergence-checked search (:func:`heatbath.drivers.mapsearch.find_map`). Chains started
  apart find different modes when there are several, so the end-of-run R-hat can see that
  they disagree. With the automatic metric, a search that stalls is finished by dense Newton
  (``resolve(..., rescue=)``) from where it ended and, for a chain with no mode found there,
  from its fallback start. A chain neither reaches (no mode: the density grows without bound,
  e.g. a hierarchical scale going to 0) starts at its median (NumPyro models) or uniform start
  instead, with a warning. The default when the step size is automatic. In
  ``Result.tuning["init"]``, ``decrement``, ``lp``, ``grad_norm`` and ``steps`` describe where the
  search ended; ``newton`` what Newton did after it; ``converged`` and ``usable`` the outcome.
- a dict of values on the user's (constrained) scale (missing sites: uniform), a pytree of
  unconstrained parameters for plain targets, or an ``OptimizeResult`` (its ``values``).

Deterministic sites in an init dict are ignored (they are functions of the others).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.drivers import inputs
from heatbath.drivers.results import OptimizeResult
from heatbath.kernels import tree as _tree

__all__ = ["STRATEGIES", "resolve", "sampler_default"]

STRATEGIES = ("uniform", "median", "sample", "map")


def _strip_deterministic(target, init):
    """An init dict without the target's deterministic sites (e.g. a Result's or a MAP's values).

    NumPyro targets only: their parameters are named by their sites, so a constrained name that
    is not a parameter is a deterministic site. A plain target's constrained names may differ from
    its parameters' (``b`` for ``log_b``): its ``unconstrain`` gets the dict as given."""
    if not isinstance(init, dict) or target.prior_init is None:
        return init
    try:
        example = target.example_params()
    except ValueError:
        return init
    if not isinstance(example, dict):
        return init
    # Names the constrained output has but the parameters do not: deterministic sites.
    keep = {k: v for k, v in init.items() if k in example}
    dropped = set(init) - set(keep)
    if dropped and keep:
        names = target.memo("constrained_names", lambda: set(jax.eval_shape(
            target.constrain_fn, example, target.data)))
        unknown = dropped - names
        if unknown:
            return init  # let initial_positions name the unknown sites
        return keep
    return init


def _prior(target, how, keys):
    if target.prior_init is None:
        raise ValueError(
            f"init={how!r} draws from the model's prior, which only NumPyro models have; this target is a "
            "plain log density: use init='uniform', 'map' or values"
        )
    draw = target.memo(f"prior_init_{how}", lambda: jax.jit(jax.vmap(lambda k: target.prior_init(k, how))))
    positions = draw(keys)
    # A site whose prior median is not a valid point (e.g. a simplex's coordinate-wise median
    # mapped back) falls back to its uniform start.
    uniform = inputs.default_init(target, keys)
    return jax.tree.map(lambda p, u: jnp.where(jnp.isfinite(p), p, u), positions, uniform)


def resolve(target, init, keys, num_chains, batch_size, *, default="uniform", rescue=None):
    """Unconstrained starting positions (leading axis chain) and a description of how they were found.

    ``keys``: one key per chain (the chain's init key). Returns ``(positions, info)``; ``info``
    is a dict (``strategy``, and for ``"map"`` the search's per-chain outcome and cost).

    ``rescue``: for ``"map"``, a second search for the chains whose first one did not converge,
    ``rescue(positions, converged) -> (positions, converged, info or None)`` (the driver passes
    the dense Newton of :func:`heatbath.drivers.metric.newton`). It starts where the first search
    ended (finite) and, for a chain the first search found no mode for and it does not rescue
    from there, again from the fallback start. Only the chains it does not rescue start at the
    fallback, and only they are warned about.
    """
    init = default if init is None else given_values(target, init)
    if isinstance(init, str):
        if init not in STRATEGIES:
            raise ValueError(f"unknown init strategy {init!r}; use one of {list(STRATEGIES)}, a dict of values "
                             "or an OptimizeResult")
        info = {"strategy": init}
        if init == "uniform":
            return inputs.initial_positions(target, None, keys, num_chains), info
        if init in ("median", "sample"):
            return _prior(target, init, keys), info
        return _map(target, keys, num_chains, batch_size, info, rescue)
    return inputs.initial_positions(target, init, keys, num_chains), {"strategy": "values"}


def given_values(target, init):
    """A user's ``init`` other than a strategy name as ``inputs.initial_positions`` takes it: an
    :class:`OptimizeResult` gives its values; a dict loses the target's deterministic sites."""
    if isinstance(init, OptimizeResult):
        init = init.values
    return init if isinstance(init, str) else _strip_deterministic(target, init)


def sampler_default(sampler, target, init, positions, strategy="uniform"):
    """The sampler's own default start (``Sampler.default_init``, e.g. the uniform draws mapped
    into a mirror map's domain) when no ``init`` was given and the uniform default was drawn."""
    hook = getattr(sampler, "default_init", None)
    if init is None and strategy == "uniform" and hook is not None:
        return hook(target, positions)
    return positions


def _rescue(rescue, ends, fallback, ok, usable, info):
    """The second search (``rescue``) for the chains the first did not converge: from where the
    first search ended (when finite) and, for a chain with no mode found that it does not rescue
    from there, again from ``fallback``. Returns the points (a chain not tried, or not rescued and
    without a usable mode, keeps its ``ends`` point) and the converged mask (rescued chains count
    as converged)."""
    finite = np.asarray(jax.vmap(_tree.all_finite)(ends), bool)
    new, conv, first = rescue(_tree.where_leading(finite, ends, fallback), ok.copy())
    conv = np.asarray(conv, bool)
    runs = [first] if first is not None else []
    again = ~conv & ~usable & finite  # tried from the search's end, no mode there: the fallback start
    if first is not None and again.any():  # (None: Newton did not run, e.g. too many dimensions)
        new2, conv2, second = rescue(fallback, ~again)
        conv2 = np.asarray(conv2, bool) & again
        new, conv = _tree.where_leading(conv2, new2, new), conv | conv2
        runs += [second] if second is not None else []
    # Newton only takes steps that raise the log density: a usable chain keeps them even when
    # it did not converge; a chain with no mode found keeps them only when rescued.
    points = _tree.where_leading(conv | usable, new, ends)
    if runs:
        info["newton"] = {"tried": np.nonzero(~ok)[0].tolist(), "converged": np.nonzero(conv & ~ok)[0].tolist(),
                          "from": ("the search's end" if finite[~ok].all() else "the search's end where finite, "
                                   "else the fallback start") + (", then the fallback start" if len(runs) > 1 else ""),
                          "iterations": {k: v for r in runs for k, v in r["iterations"].items()},
                          "cost_per_chain": float(sum(r["cost_per_chain"] for r in runs))}
    return points, conv


def _map(target, keys, num_chains, batch_size, info, rescue=None):
    from heatbath.drivers.mapsearch import search, unravel_of

    starts = inputs.initial_positions(target, None, keys, num_chains)
    inputs.check_init_finite(target, starts, target.data)
    x, outcome, _ = search(target, starts, jax.vmap(lambda k: jax.random.fold_in(k, 11))(keys), batch_size=batch_size)
    ends = jax.vmap(unravel_of(target, starts))(x)  # where each chain's search ended
    outcome = dict(outcome)
    ok = np.asarray(outcome["converged"], bool)
    usable = np.asarray(outcome["usable"], bool) & np.asarray(jax.vmap(_tree.all_finite)(ends), bool)
    fallback = starts
    if target.prior_init is not None and not usable.all():
        fallback = _prior(target, "median", keys)
    if rescue is not None and not ok.all():
        ends, ok = _rescue(rescue, ends, fallback, ok, usable, info)
        usable = usable | ok
        outcome["usable"] = usable
        outcome["reason"] = [("" if ok[c] else r) for c, r in enumerate(outcome["reason"])]
    positions = _tree.where_leading(usable, ends, fallback)
    cost = float(np.sum(outcome.get("cost", 0.0))) + info.get("newton", {}).get("cost_per_chain", 0.0) * num_chains
    info.update(converged=ok.tolist(), cost=cost,
                **{k: np.asarray(v).tolist() for k, v in outcome.items() if k not in ("converged", "cost")})
    bad = np.nonzero(~usable)[0].tolist()
    if bad:
        reasons = outcome.get("reason")
        why = f" ({reasons[bad[0]]})" if reasons is not None else ""
        where = "its prior median" if target.prior_init is not None else "its uniform(-2, 2) start"
        warnings.warn(
            f"init='map': the mode search failed for chain(s) {bad}{why}; they start at {where} instead. "
            "A posterior without a mode (e.g. a hierarchical scale whose density grows as it goes to 0) is "
            "better started with init='median' or values, and a non-centred parameterisation",
            RuntimeWarning, stacklevel=4)
    unconverged = np.nonzero(usable & ~ok)[0].tolist()
    if unconverged:
        info["note"] = f"the mode search had not converged for chain(s) {unconverged}; the warmup goes on from there"
    return positions, info
