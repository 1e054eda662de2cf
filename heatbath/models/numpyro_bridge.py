"""The NumPyro bridge: a NumPyro model becomes a minibatchable :class:`Target`.

``from_numpyro(model, *args, **kwargs)`` traces the model once and finds

- its latent sites (continuous only: gradient methods cannot move a discrete latent), which
  are sampled in the unconstrained space theta = T^{-1}(z) of each site's support
  (``numpyro.distributions.biject_to``), with log |det dT/dtheta| added to the prior;
- its *data plate*: the plate holding the observations (the one with a user
  ``subsample_size``, else the largest plate that holds an observed site), of size N;
- its *data arguments*: the array arguments whose leading axis has length N.

A minibatch is the rows ``idx`` of every data argument. The model is re-run on those rows
with the data plate's indices substituted by ``arange(n)`` (so models written with
``plate(..., subsample_size=...)`` and ``X[ind]`` or ``numpyro.subsample`` work unchanged),
and the log likelihood is the *unscaled* sum of the observed sites inside the data plate;
every other term (latent sites, Jacobians, factors and observations outside the plate) is
the log prior. The drivers scale the likelihood by N/n. Nothing runs that a hand-written
log density would not run: the cost of a minibatch gradient equals the hand-written one.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.distributions.util import sum_rightmost
from numpyro.primitives import Messenger

from heatbath.kernels import tree as _tree
from heatbath.models.target import Target, validate_data

__all__ = ["from_numpyro"]


class _Bridge(Messenger):
    """Substitute latent sites from unconstrained values and point the data plate at the batch."""

    def __init__(self, fn, uparams: Optional[dict], data_plate: Optional[str], batch_rows: Optional[int]):
        self.uparams = uparams or {}
        self.data_plate = data_plate
        self.batch_rows = batch_rows
        self.log_jacobian = []
        self.plate_scale = 1.0
        super().__init__(fn)

    def process_message(self, msg):
        kind = msg["type"]
        if kind == "sample" and not msg.get("is_observed") and msg["name"] in self.uparams:
            fn = msg["fn"]
            u = self.uparams[msg["name"]]
            transform = biject_to(fn.support)
            value = transform(u)
            log_det = transform.log_abs_det_jacobian(u, value)
            log_det = sum_rightmost(log_det, jnp.ndim(log_det) - jnp.ndim(value) + len(fn.event_shape))
            scale = msg.get("scale")
            self.log_jacobian.append(jnp.sum(log_det) * (1.0 if scale is None else scale))
            msg["value"] = value
        elif kind == "plate" and self.batch_rows is not None and msg["name"] == self.data_plate:
            size = msg["args"][0]
            msg["value"] = jnp.arange(self.batch_rows)
            msg["args"] = (size, self.batch_rows)
            self.plate_scale = size / self.batch_rows
        elif kind == "subsample" and self.batch_rows is not None:
            # The rows are already the minibatch: stop the plate from subsampling them again.
            msg["kwargs"] = {**msg["kwargs"], "event_dim": None}


def _in_plate(site, plate_name) -> bool:
    return plate_name is not None and any(f.name == plate_name for f in site["cond_indep_stack"])


def _is_array(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array)) and np.ndim(x) >= 1


def from_numpyro(model: Callable, *model_args, **model_kwargs) -> Target:
    """A :class:`Target` from a NumPyro model and its arguments (see the module docstring).

    Raises ``ValueError`` for NaN/inf in the data arguments, for data arguments of unequal
    length, and (when a gradient method asks for it) for discrete latent sites. A model
    with no data plate, or with latent sites inside it, gets a target that runs full-batch
    and says why it cannot be minibatched if asked to.
    """
    if not callable(model):
        raise TypeError(f"from_numpyro needs a NumPyro model (a callable), got {type(model).__name__}")
    labelled = [(f"argument {i}", a) for i, a in enumerate(model_args)] + list(model_kwargs.items())
    for label, a in labelled:
        if _is_array(a) and np.issubdtype(np.asarray(a).dtype, np.floating) and not np.all(np.isfinite(a)):
            bad = int(np.sum(~np.isfinite(np.asarray(a))))
            raise ValueError(
                f"model argument {label!r} contains {bad} NaN or infinite value(s); drop or impute "
                "them (or mask the observations in the model and pass finite placeholders)"
            )
    for label, a in labelled:
        if isinstance(a, np.ndarray) and not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise TypeError(f"model argument {label!r} is not a numeric array (dtype {a.dtype})")
    empty = [label for label, a in labelled if _is_array(a) and np.shape(a)[0] == 0]
    if empty:
        raise ValueError(f"model argument(s) {empty} have no rows: every data array needs at least one row")
    try:
        with handlers.block():
            trace = handlers.trace(handlers.seed(model, 0)).get_trace(*model_args, **model_kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with what heatbath can tell about the inputs
        lengths = {label: np.shape(a)[0] for label, a in labelled if _is_array(a)}
        hint = ""
        if len(set(lengths.values())) > 1:
            hint = " The array arguments have unequal numbers of rows: " + ", ".join(
                f"{k}: {v}" for k, v in lengths.items()
            ) + "."
        raise ValueError(f"the NumPyro model failed when run on its arguments: {type(err).__name__}: {err}.{hint}") from err

    latent = {}
    discrete = []
    observed = []
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        if site.get("is_observed"):
            observed.append(name)
            continue
        if site["fn"].support.is_discrete:
            discrete.append(name)
            continue
        latent[name] = site
    plates = {name: site for name, site in trace.items() if site["type"] == "plate"}

    # -- the data plate --------------------------------------------------------------------
    user_subsampled = [n for n, s in plates.items() if s["args"][1] is not None and s["args"][1] < s["args"][0]]
    holding_obs = [
        n for n in plates if any(_in_plate(trace[o], n) for o in observed)
    ]
    data_plate = None
    if len(user_subsampled) == 1:
        data_plate = user_subsampled[0]
    elif holding_obs:
        data_plate = max(holding_obs, key=lambda n: plates[n]["args"][0])
    num_rows = int(plates[data_plate]["args"][0]) if data_plate else None

    # -- the data arguments (leading axis N) -------------------------------------------------
    data = {}
    if num_rows is not None:
        for i, a in enumerate(model_args):
            if _is_array(a) and np.shape(a)[0] == num_rows:
                data[f"arg{i}"] = a
        for k, a in model_kwargs.items():
            if _is_array(a) and np.shape(a)[0] == num_rows:
                data[k] = a

    minibatch_error = None
    if data_plate is None:
        minibatch_error = (
            "the model has no data plate (no numpyro.plate holds an observed site), so it cannot be "
            "minibatched; put the observations in a numpyro.plate, or run full-batch (batch_size=None)"
        )
    elif not data:
        minibatch_error = (
            f"the data plate {data_plate!r} has size {num_rows}, but no model argument is an array with "
            f"leading axis {num_rows}; pass the per-observation arrays as model arguments"
        )
    else:
        local = [n for n, s in latent.items() if _in_plate(s, data_plate)]
        if local:
            minibatch_error = (
                f"latent site(s) {local} sit inside the data plate {data_plate!r}: per-observation latent "
                "variables cannot be minibatched; run full-batch (batch_size=None)"
            )
    if data:
        data, num_data = validate_data(data)
    else:
        # No minibatchable data: the full-batch target carries a one-row dummy.
        data, num_data = {"_rows": jnp.zeros((1,))}, 1

    def call_args(batch):
        args = [batch.get(f"arg{i}", a) for i, a in enumerate(model_args)]
        kwargs = {k: batch.get(k, a) for k, a in model_kwargs.items()}
        return args, kwargs

    full_rows = num_rows

    def run(uparams, batch, rows):
        args, kwargs = call_args(batch)
        bridge = _Bridge(model, uparams, data_plate if rows is not None else None, rows)
        tr = handlers.trace(handlers.seed(bridge, 0)).get_trace(*args, **kwargs)
        return tr, bridge

    def terms(uparams, batch):
        rows = jax.tree.leaves(batch)[0].shape[0] if minibatch_error is None else None
        tr, bridge = run(uparams, batch, rows)
        log_prior = sum(bridge.log_jacobian, jnp.zeros(()))
        log_lik = jnp.zeros(())
        for site in tr.values():
            if site["type"] != "sample":
                continue
            if not site.get("is_observed") and site["name"] not in uparams:
                continue
            lp = jnp.sum(site["fn"].log_prob(site["value"]))
            scale = site.get("scale")
            lp = lp if scale is None else lp * scale
            if site.get("is_observed") and _in_plate(site, data_plate) and minibatch_error is None:
                log_lik = log_lik + lp / bridge.plate_scale
            else:
                log_prior = log_prior + lp
        return log_prior, log_lik

    def constrain_fn(uparams, data_):
        tr, _ = run(uparams, data_, full_rows if minibatch_error is None else None)
        out = {}
        for name, site in tr.items():
            if site["type"] == "sample" and name in uparams:
                out[name] = site["value"]
            elif site["type"] == "deterministic":
                out[name] = site["value"]
        return out

    shapes = {
        name: jax.ShapeDtypeStruct(
            jnp.shape(biject_to(site["fn"].support).inv(site["value"])), jnp.result_type(float)
        )
        for name, site in latent.items()
    }

    def init_params(key):
        return _tree.uniform_like(key, shapes)

    def unconstrain(values):
        if not isinstance(values, dict):
            raise TypeError("initial values of a NumPyro model must be a dict site name -> value")
        unknown = set(values) - set(latent)
        if unknown:
            raise ValueError(f"unknown site(s) in initial values: {sorted(unknown)}; latent sites are {sorted(latent)}")
        args, kwargs = call_args({})
        with handlers.block():
            tr = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=values)).get_trace(*args, **kwargs)
        out = {}
        for name in values:
            support = tr[name]["fn"].support
            value = jnp.asarray(tr[name]["value"], jnp.result_type(float))
            if not bool(jnp.all(support(value))):
                raise ValueError(f"init for site {name!r} is outside its support ({support})")
            out[name] = biject_to(support).inv(value)
        return out

    discrete_error = None
    if discrete:
        discrete_error = (
            f"discrete latent site(s) {discrete}: gradient-based methods need continuous latent "
            "variables; marginalise them out of the model (e.g. a mixture likelihood)"
        )
    observed_data = {name: np.asarray(trace[name]["value"]) for name in observed if name in trace}
    return Target(
        terms=terms,
        data=data,
        num_data=num_data,
        init_params=init_params,
        constrain_fn=constrain_fn,
        unconstrain=unconstrain,
        name=getattr(model, "__name__", "model"),
        minibatch_error=minibatch_error,
        observed_data=observed_data,
        discrete_error=discrete_error,
    )
