"""The drivers' input side: targets from user models, argument checks, starting points.

Everything here runs on the host before anything is compiled, so bad input fails fast with
an error naming the problem. One resolver of initial values and one target cache serve
``hb.sample``, ``hb.optimize``, ``hb.fit`` and the NumPyro kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.drivers.cache import IdentityCache, fingerprint
from heatbath.kernels.validate import check_int
from heatbath.models.numpyro_bridge import from_numpyro
from heatbath.models.target import Target
from heatbath.samplers.base import Sampler
from heatbath.vi.base import VIMethod

__all__ = ["as_target", "model_arguments", "check_total_steps", "check_centre", "check_target_for_gradients", "check_sampler",
           "initial_positions", "check_init_finite", "default_init", "numpyro_target", "check_oracle_uses",
           "TARGETS"]

TARGETS = IdentityCache(8, check_mappings=True)


def as_target(model_or_target, data=None) -> Target:
    """A :class:`Target` from a Target or a NumPyro model and its data.

    For a NumPyro model, ``data`` holds the model's arguments: a dict of keyword arguments,
    or a tuple of positional ones.
    """
    if isinstance(model_or_target, Target):
        return model_or_target if data is None else model_or_target.with_data(data)
    if callable(model_or_target):
        args, kwargs = model_arguments(data)
        return numpyro_target(model_or_target, args, kwargs)
    raise TypeError(
        "expected a NumPyro model (a callable) or a heatbath Target (hb.models.from_numpyro / "
        f"from_logdensity), got {type(model_or_target).__name__}"
    )


def model_arguments(data) -> tuple:
    """(args, kwargs) of a NumPyro model from ``data``: a dict of keyword arguments or a tuple of
    positional ones (None: no arguments)."""
    if data is None:
        return (), {}
    if isinstance(data, dict):
        return (), data
    if isinstance(data, (tuple, list)):
        return tuple(data), {}
    raise TypeError(
        "data for a NumPyro model must be a dict of keyword arguments or a tuple of positional ones, "
        f"got {type(data).__name__}"
    )


def numpyro_target(model, args: tuple, kwargs: dict) -> Target:
    """``from_numpyro(model, *args, **kwargs)``, cached by the model's identity and the contents of
    its arguments (:func:`heatbath.drivers.cache.fingerprint`): the one target cache of the
    drivers and the NumPyro kernel."""
    key = fingerprint(model, args, kwargs)
    if key is None:
        return from_numpyro(model, *args, **kwargs)
    return TARGETS.get(key, (model,), lambda: from_numpyro(model, *args, **kwargs))


def check_total_steps(total: int):
    if total >= 2**31 - 1:
        raise ValueError(
            f"the run has {total} steps in all (num_warmup + num_samples * thinning); the step counter is "
            "int32: split it into runs below 2**31 steps (e.g. with checkpoint/resume)"
        )


def check_centre(target: Target, centre):
    """The control-variates centre must have the structure and shapes of the parameters."""
    example = target.example_params()
    if jax.tree.structure(centre) != jax.tree.structure(example):
        raise ValueError(
            f"the control-variates centre has structure {jax.tree.structure(centre)}, the parameters have "
            f"{jax.tree.structure(example)} (it lives in the unconstrained space, like Result.centre)"
        )
    for c, e in zip(jax.tree.leaves(centre), jax.tree.leaves(example)):
        if jnp.shape(c) != e.shape:
            raise ValueError(f"the control-variates centre has a leaf of shape {jnp.shape(c)} where the parameter has {e.shape}")
    return jax.tree.map(lambda c, e: jnp.asarray(c, e.dtype), centre, example)


def check_target_for_gradients(target: Target, batch_size):
    if target.discrete_error:
        raise ValueError(target.discrete_error)
    if batch_size is not None:
        if target.minibatch_error:
            raise ValueError(target.minibatch_error)
        if batch_size > target.num_data:
            raise ValueError(f"batch_size={batch_size} is larger than the data ({target.num_data} rows)")


def check_sampler(sampler):
    if isinstance(sampler, VIMethod):
        raise TypeError(f"{sampler.name} is a variational method: run it with hb.fit(model, method, ...)")
    if not isinstance(sampler, Sampler):
        raise TypeError(
            "sampler must be a heatbath Sampler (e.g. hb.samplers.sgld(step_size=1e-4)), "
            f"got {type(sampler).__name__}"
        )
    check_int(sampler.steps_per_draw, "Sampler.steps_per_draw", minimum=1)


def check_oracle_uses(target: Target, method, batching) -> None:
    """Refuse a run whose sampler or VI method would silently ignore part of the target or the
    batching: a nonsmooth term it does not handle, or federated rounds whose shard
    probabilities make its N/n likelihood scaling biased."""
    uses = getattr(method, "uses", ())
    if target.nonsmooth is not None and "nonsmooth" not in uses:
        raise ValueError(
            f"the target has a nonsmooth term ({target.nonsmooth.name}) that {method.name} would ignore (it samples "
            "exp(log p) without g): use a sampler that handles nonsmooth terms, or drop nonsmooth= from the target"
        )
    if not batching.unbiased_scaling and "batch_info" not in uses:
        raise ValueError(
            f"{batching.name} batching with shard probabilities other than N_s / N makes {method.name}'s N/n "
            "likelihood scaling biased: use a federated sampler (one that scales by N_s / (f_s n)) or probs=None"
        )


def default_init(target: Target, keys):
    return target.memo("init_params", lambda: jax.jit(jax.vmap(target.init_params)))(keys)


def initial_positions(target: Target, init, keys, num_chains):
    """Unconstrained initial positions with a leading chain axis."""
    try:
        example = target.example_params()
    except ValueError:
        example = None
    if example is not None and not jax.tree.leaves(example):
        raise ValueError(f"the target {target.name!r} has no parameters (no latent sites): there is nothing to sample")
    if init is None:
        return default_init(target, keys)

    def as_array(path, v, dtype=None):
        where = f"init leaf {jax.tree_util.keystr(path)}" if path else "init"
        try:
            arr = v if isinstance(v, jax.Array) else np.asarray(v)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{where} is not a numeric array: {err}") from err
        if not (jnp.issubdtype(arr.dtype, jnp.number) or jnp.issubdtype(arr.dtype, jnp.bool_)):
            raise TypeError(f"{where} is not a numeric array (dtype {arr.dtype})")
        if jnp.issubdtype(arr.dtype, jnp.complexfloating):
            raise TypeError(f"{where} is complex; parameters are real")
        if dtype is None and not jnp.issubdtype(arr.dtype, jnp.floating):
            dtype = jnp.result_type(float)
        return jnp.asarray(arr, dtype)

    if example is not None:
        try:
            values = target.unconstrain(init)
        except (TypeError, ValueError, IndexError, AssertionError) as err:
            msg = str(err) if "init" in str(err) else f"init could not be mapped to the unconstrained space: {err}"
            raise (TypeError if isinstance(err, TypeError) else ValueError)(msg) from err
    else:
        values = init
    if example is not None and isinstance(example, dict) and isinstance(values, dict):
        unknown = set(values) - set(example)
        if unknown:
            raise ValueError(
                f"init has unknown parameter(s) {sorted(unknown)}; the target's parameters are {sorted(example)}"
            )
        # Sites not given by the user start at the default.
        missing = set(example) - set(values)
        if missing:
            default = default_init(target, keys)
            values = {k: (values[k] if k in values else None) for k in example}
            leaves = {}
            for k in example:
                if k in missing:
                    leaves[k] = default[k]
                else:
                    v = as_array((jax.tree_util.DictKey(k),), values[k], example[k].dtype)
                    try:
                        leaves[k] = _chains_of(v, (num_chains,) + example[k].shape)
                    except ValueError as err:
                        raise ValueError(
                            f"init leaf {k!r} of shape {v.shape} does not match the parameter shape {example[k].shape}"
                        ) from err
            return leaves
    if example is not None:
        if jax.tree.structure(values) != jax.tree.structure(example):
            raise ValueError(
                f"init has tree structure {jax.tree.structure(values)}, the target's parameters have "
                f"{jax.tree.structure(example)}"
            )

        def broadcast(path, v, e):
            v = as_array(path, v, e.dtype)
            if v.shape == e.shape:
                return _chains_of(v, (num_chains,) + e.shape)
            if v.shape == (num_chains,) + e.shape:
                return v
            raise ValueError(f"init leaf of shape {v.shape} does not match the parameter shape {e.shape}")

        return jax.tree_util.tree_map_with_path(broadcast, values, example)
    # No example params: broadcast the user's pytree unless it already has a chain axis.
    values = jax.tree_util.tree_map_with_path(as_array, values)
    if not jax.tree.leaves(values):
        raise ValueError(f"init has no arrays (got {init!r}): the target needs at least one parameter array")
    return jax.tree.map(lambda v: _chains_of(v, (num_chains,) + jnp.shape(v)), values)


def _chains_of(v, shape):
    """``broadcast_to(v, shape)`` (a chain axis in front), made on the host and copied: an eager
    ``jnp.broadcast_to`` compiles a program per shape (one per parameter array on a first call)."""
    if isinstance(v, jax.core.Tracer):
        return jnp.broadcast_to(v, shape)
    return jax.device_put(np.broadcast_to(np.asarray(v), shape))


def check_init_finite(target: Target, positions, data):
    """Fail early (before the long compile) if the log density is not finite at the start."""
    from heatbath.drivers.divergence import terms_at

    lp, ll = terms_at(target)(positions, data)
    for name, value in (("logprior", lp), ("loglik", ll)):
        if jnp.shape(value) != (jnp.shape(lp)[0],) or not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            raise ValueError(
                f"{name} must return a real scalar (loglik: the sum over the batch's rows), got shape "
                f"{jnp.shape(value)[1:]} and dtype {jnp.result_type(value)}"
            )
    with np.errstate(over="ignore", invalid="ignore"):
        bad = np.nonzero(~np.isfinite(np.asarray(lp) + np.asarray(ll)))[0]
    if bad.size:
        raise ValueError(
            f"the log density is not finite at the initial position of chain(s) {bad.tolist()}; "
            "pass init=... inside the support"
        )
