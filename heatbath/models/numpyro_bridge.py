"""The NumPyro bridge: a NumPyro model becomes a minibatchable :class:`Target`.

``from_numpyro(model, *args, **kwargs)`` traces the model once and finds

- its latent sites (continuous only: gradient methods cannot move a discrete latent), which
  are sampled in the unconstrained space theta = T^{-1}(z) of each site's support
  (``numpyro.distributions.biject_to``), with log |det dT/dtheta| added to the prior; an
  improper site (``dist.ImproperUniform``) is a latent like any other (log density 0 on its
  support);
- its *data plate*: the plate holding the observations (the one with a user
  ``subsample_size``, else a plate holding an observed site whose size is the leading axis of
  an array argument and of the observation, else the largest plate holding an observed site),
  of size N. Other plates of size N holding observations and never nested with it (a second
  data set of the same length) are row plates too: minibatched with the same rows, scaled by
  the same N/n;
- its *data arguments*: the array arguments whose leading axis has length N (the values of a
  ``handlers.condition(model, data=...)`` wrapper included). pandas objects and Python lists
  of numbers are converted to NumPy arrays before the model sees them; SciPy sparse matrices
  and masked arrays with masked entries are refused (``TypeError``).

A minibatch is the rows ``idx`` of every data argument. The model is re-run on those rows
with the row plates' indices substituted by ``arange(n)`` (so models written with
``plate(..., subsample_size=...)`` and ``X[ind]`` or ``numpyro.subsample`` work unchanged),
and the log likelihood is the *unscaled* sum of the observed sites inside the row plates;
every other term (latent sites, Jacobians, factors and observations outside the plates) is
the log prior. The drivers scale the likelihood by N/n. Nothing runs that a hand-written
log density would not run: the cost of a minibatch gradient equals the hand-written one.

Before a model is accepted for minibatching, construction checks that this is right, by
running the model through the bridge on the full data and on two batches of 1-2 rows at one
random parameter (one compiled program, 0.1-0.5 s): the prior part must not change with the
batch (a prior reading ``X.shape[0]``, an observation outside the data plate that reads the
data's rows, a latent of one value per row declared outside the plate all fail this) and each
row's likelihood on a minibatch must equal its term on the full data (a lag ``y[:-1]`` or a
cumulative sum built inside the model, the position ``arange(N)`` used as a covariate,
observations captured by a closure all fail this). When they fail with every argument of
length N cut, each one is tried whole in turn (a prior-mean vector that happens to have N
entries is not data); if none passes, the target runs full-batch and refuses minibatches
with the reason (``Target.minibatch_error``). A valid model's ``terms`` are unchanged by the
checks.

NumPyro's effect-handler stack is process-global: every trace the bridge runs (construction,
``unconstrain`` and ``terms`` / ``constrain_fn`` whenever they run as Python, eagerly or
while JAX traces them) holds the module's :data:`TRACE_LOCK`, so threads get the answers
sequential calls would. Compiled code runs without it.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.infer.initialization import init_to_median, init_to_sample, init_to_uniform

from heatbath.kernels import tree as _tree
from heatbath.models.bridge_handler import Bridge, is_array, row_frame
from heatbath.models.bridge_inputs import convert_input
from heatbath.models.minibatch_check import Checker, originals
from heatbath.models.target import SYMMETRIC_ATTR, Target, validate_data

__all__ = ["from_numpyro", "TRACE_LOCK"]

#: Held by every NumPyro trace the bridge runs at Python level (re-entrant).
TRACE_LOCK = threading.RLock()



def _prior_trace(fn, args, kwargs, values=None):
    """A trace of ``fn`` with prior draws for its latent sites (``values`` substituted).

    A site that cannot be sampled (an improper prior such as ``dist.ImproperUniform``) gets
    NumPyro's ``init_to_uniform`` value instead: its support's bijection applied to
    uniform(-2, 2) unconstrained values, as heatbath's default initialisation.
    """

    def go(uniform: bool):
        m = handlers.seed(fn, 0)
        if uniform:
            m = handlers.substitute(m, substitute_fn=init_to_uniform)
        if values:
            m = handlers.substitute(m, data=values)
        with handlers.block():
            return handlers.trace(m).get_trace(*args, **kwargs)

    try:
        return go(False)
    except Exception as first:  # noqa: BLE001 - retried, then re-raised
        try:
            return go(True)
        except Exception:  # noqa: BLE001 - the first error is the informative one
            raise first from None


# -- the bridge ------------------------------------------------------------------------------


def from_numpyro(model: Callable, *model_args, **model_kwargs) -> Target:
    """A :class:`Target` from a NumPyro model and its arguments (see the module docstring).

    Raises ``ValueError`` for NaN/inf in the data arguments, for data arguments of unequal
    length, and (when a gradient method asks for it) for discrete latent sites; ``TypeError``
    for SciPy sparse matrices, masked arrays with masked entries and non-numeric arrays or
    DataFrames. A model with no data plate, with latent sites inside it, or whose minibatches
    would not be unbiased (see the module docstring) gets a target that runs full-batch and
    says why it cannot be minibatched if asked to. Thread-safe (:data:`TRACE_LOCK`).

    ``nonsmooth=`` (a :class:`heatbath.kernels.gradients.Nonsmooth`, e.g. from
    :mod:`heatbath.kernels.prox`) is heatbath's keyword, never passed to the model: a convex
    term g on the *unconstrained* parameters (a dict site -> array; ``prox.sites(w=...)``
    picks sites), making the target exp(log p - g) for the Bregman samplers
    (:mod:`heatbath.samplers.bregman`); its prox is checked against the sites' shapes here.
    """
    nonsmooth = model_kwargs.pop("nonsmooth", None)
    with TRACE_LOCK:
        target = _from_numpyro(model, model_args, model_kwargs)
    if nonsmooth is None:
        return target
    from heatbath.kernels import prox as _prox
    from heatbath.models.target import _check_nonsmooth

    _prox.check(_check_nonsmooth(nonsmooth), target.example_params(), where="the model's unconstrained sites")
    out = dataclasses.replace(target, nonsmooth=nonsmooth)
    out.memo("numpyro_model", lambda: target.memo("numpyro_model", lambda: None))
    return out


def _from_numpyro(model, model_args, model_kwargs) -> Target:
    if not callable(model):
        raise TypeError(f"from_numpyro needs a NumPyro model (a callable), got {type(model).__name__}")

    # -- inputs: positional, keyword and handlers.condition values, each with a key ------------
    inner, cond_names = model, []
    if isinstance(model, handlers.condition) and isinstance(model.data, dict) and model.condition_fn is None:
        inner, cond_names = model.fn, list(model.data)
    inputs = [(f"arg{i}", f"argument {i}", a) for i, a in enumerate(model_args)]
    inputs += [(k, k, a) for k, a in model_kwargs.items()]
    inputs += [(f"condition:{s}", f"condition data {s!r}", model.data[s]) for s in cond_names]
    inputs = [(key, label, convert_input(label, a)) for key, label, a in inputs]
    labels = {key: label for key, label, _ in inputs}

    for _, label, a in inputs:
        if is_array(a) and np.issubdtype(np.asarray(a).dtype, np.floating) and not np.all(np.isfinite(a)):
            bad = int(np.sum(~np.isfinite(np.asarray(a))))
            raise ValueError(
                f"model argument {label!r} contains {bad} NaN or infinite value(s); drop or impute "
                "them (or mask the observations in the model and pass finite placeholders)"
            )
    for _, label, a in inputs:
        if isinstance(a, np.ndarray) and not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise TypeError(f"model argument {label!r} is not a numeric array (dtype {a.dtype})")
    empty = [label for _, label, a in inputs if is_array(a) and np.shape(a)[0] == 0]
    if empty:
        raise ValueError(f"model argument(s) {empty} have no rows: every data array needs at least one row")

    base = {key: a for key, _, a in inputs}
    num_args = len(model_args)
    kw_names = list(model_kwargs)

    def call_args(batch):
        """(callable, args, kwargs) with the batch's rows in place of the data arguments."""
        values = {**base, **batch} if batch else base
        args = [values[f"arg{i}"] for i in range(num_args)]
        kwargs = {k: values[k] for k in kw_names}
        if cond_names:
            fn = handlers.condition(inner, data={s: values[f"condition:{s}"] for s in cond_names})
        else:
            fn = model
        return fn, args, kwargs

    fn0, args0, kwargs0 = call_args({})
    try:
        trace = _prior_trace(fn0, args0, kwargs0)
    except Exception as err:  # noqa: BLE001 - re-raised with what heatbath can tell about the inputs
        lengths = {label: np.shape(a)[0] for _, label, a in inputs if is_array(a)}
        hint = ""
        if len(set(lengths.values())) > 1:
            hint = " The array arguments have unequal numbers of rows: " + ", ".join(
                f"{k}: {v}" for k, v in lengths.items()
            ) + "."
        given = originals(model_args, model_kwargs, model, cond_names)
        converted = [label for (_, label, a), orig in zip(inputs, given) if a is not orig]
        if converted:
            hint += (
                f" heatbath converted {converted} to NumPy arrays (pandas objects, lists of numbers, masked "
                "arrays) before the run."
            )
        message = f"{type(err).__name__}: {str(err).rstrip('.')}"
        if "parameter" in str(err) or "support" in str(err):
            hint += (" The model ran with its latent sites at one draw from their priors: if the error is about a "
                     "distribution's parameters, that draw may have made them invalid (e.g. exp(X @ beta) overflowing "
                     "for covariates of a large scale): rescale the covariates or narrow the priors.")
        raise ValueError(f"the NumPyro model failed when run on its arguments: {message}.{hint}") from err

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

    shapes = {
        name: jax.ShapeDtypeStruct(
            jnp.shape(biject_to(site["fn"].support).inv(site["value"])), jnp.result_type(float)
        )
        for name, site in latent.items()
    }

    def init_params(key):
        return _tree.uniform_like(key, shapes)

    # -- the data plate: candidates in order of preference -------------------------------------
    input_lengths = set()
    for _, _, a in inputs:
        if is_array(a):
            input_lengths.add(int(np.shape(a)[0]))
    holding_obs = [n for n in plates if any(row_frame(trace[o], {n}) for o in observed)]
    leading = set()
    for o in observed:
        site = trace[o]
        batch_ndim = len(site["fn"].batch_shape)
        for f in site["cond_indep_stack"]:
            if f.dim == -batch_ndim:
                leading.add(f.name)
    user_subsampled = [n for n, s in plates.items() if s["args"][1] is not None and s["args"][1] < s["args"][0]]
    if len(user_subsampled) == 1:
        candidates = user_subsampled
    else:
        candidates = sorted(
            holding_obs,
            key=lambda n: (int(plates[n]["args"][0]) in input_lengths, n in leading, int(plates[n]["args"][0])),
            reverse=True,
        )[:3]

    checker = Checker(
        call_args=call_args, inputs=inputs, labels=labels, trace=trace, plates=plates, latent=latent,
        observed=observed, init_params=init_params, skip_probe=bool(discrete),
    )
    data_plate, row_plates, data, minibatch_error = None, frozenset(), {}, None
    if not candidates:
        minibatch_error = (
            "the model has no data plate (no numpyro.plate holds an observed site), so it cannot be "
            "minibatched; put the observations in a numpyro.plate, or run full-batch (batch_size=None)"
        )
    else:
        first = None
        for plate in candidates:
            ok, plate_rows, plate_data, reason = checker.try_plate(plate)
            if ok:
                data_plate, row_plates, data = plate, plate_rows, plate_data
                break
            first = first or (reason, plate_data)
        else:
            # Full batches only; the target still carries the data arguments of the first
            # candidate (new data of the same shapes can be swapped in, as for any target).
            minibatch_error, data = first

    if data:
        data, num_data = validate_data(data)
    else:
        # No minibatchable data: the full-batch target carries a one-row dummy.
        data, num_data = {"_rows": jnp.zeros((1,))}, 1
    full_rows = num_data if data_plate is not None else None

    def run(uparams, batch, rows):
        fn, args, kwargs = call_args(batch)
        bridge = Bridge(fn, uparams, row_plates, rows)
        tr = handlers.trace(handlers.seed(bridge, 0)).get_trace(*args, **kwargs)
        return tr, bridge

    def terms(uparams, batch):
        with TRACE_LOCK:
            rows = jax.tree.leaves(batch)[0].shape[0] if data_plate is not None else None
            tr, bridge = run(uparams, batch, rows)
            log_prior = sum(bridge.log_jacobian.values(), jnp.zeros(()))
            log_lik = jnp.zeros(())
            for site in tr.values():
                if site["type"] != "sample":
                    continue
                if not site.get("is_observed") and site["name"] not in uparams:
                    continue
                lp = jnp.sum(site["fn"].log_prob(site["value"]))
                scale = site.get("scale")
                lp = lp if scale is None else lp * scale
                frame = row_frame(site, row_plates) if site.get("is_observed") else None
                if frame is not None:
                    log_lik = log_lik + lp / bridge.plate_scale[frame.name]
                else:
                    log_prior = log_prior + lp
            return log_prior, log_lik

    def constrain_fn(uparams, data_):
        with TRACE_LOCK:
            tr, _ = run(uparams, data_, full_rows)
            out = {}
            for name, site in tr.items():
                if site["type"] == "sample" and name in uparams:
                    out[name] = site["value"]
                elif site["type"] == "deterministic":
                    out[name] = site["value"]
            return out

    array_keys = [k for k, a in base.items() if is_array(a)]
    compiled_unconstrain = []

    def unconstrain_values(values, arrays):
        """Each given site's unconstrained value and whether the value is inside its support."""
        fn, args, kwargs = call_args(arrays)
        tr = _prior_trace(fn, args, kwargs, values=values)
        out, inside = {}, {}
        for name in values:
            support = tr[name]["fn"].support
            value = jnp.asarray(tr[name]["value"], jnp.result_type(float))
            inside[name] = jnp.all(support(value))
            out[name] = biject_to(support).inv(value)
        return out, inside

    def unconstrain(values):
        if not isinstance(values, dict):
            raise TypeError("initial values of a NumPyro model must be a dict site name -> value")
        unknown = set(values) - set(latent)
        if unknown:
            raise ValueError(f"unknown site(s) in initial values: {sorted(unknown)}; latent sites are {sorted(latent)}")
        arrays = {k: base[k] for k in array_keys}
        with TRACE_LOCK:
            # Compiled with the data as arguments, the model's likelihood is dead code: only the
            # prior's sites run (eagerly the whole model ran on all the data at every call: 1.4 s
            # at 670k weights). A model that needs concrete data values to run falls back to eager.
            if not compiled_unconstrain:
                compiled_unconstrain.append(jax.jit(unconstrain_values))
            result = None
            if compiled_unconstrain[0] is not None:
                try:
                    result = compiled_unconstrain[0](values, arrays)
                except Exception:  # noqa: BLE001 - the eager run below raises the model's own error
                    result = unconstrain_values(values, arrays)
                    compiled_unconstrain[0] = None  # it runs eagerly but not traced: eager from now on
            out, inside = result if result is not None else unconstrain_values(values, arrays)
        bad = [name for name in values if not bool(inside[name])]
        if bad:
            support = latent[bad[0]]["fn"].support
            try:  # the support at the given values (it may depend on other sites), on this error path only
                with TRACE_LOCK:
                    fn, args, kwargs = call_args({})
                    support = _prior_trace(fn, args, kwargs, values=values)[bad[0]]["fn"].support
            except Exception:  # noqa: BLE001 - keep the prior trace's support
                pass
            raise ValueError(f"init for site {bad[0]!r} is outside its support ({support})")
        return out

    def prior_init(key, how):
        strategy = init_to_median(num_samples=15) if how == "median" else init_to_sample
        fn, args, kwargs = call_args({})
        with TRACE_LOCK, handlers.block():
            m = handlers.substitute(handlers.seed(fn, key), substitute_fn=strategy)
            tr = handlers.trace(m).get_trace(*args, **kwargs)
        return {name: jnp.asarray(biject_to(tr[name]["fn"].support).inv(tr[name]["value"]), jnp.result_type(float))
                for name in latent}

    discrete_error = None
    if discrete:
        discrete_error = (
            f"discrete latent site(s) {discrete}: gradient-based methods need continuous latent "
            "variables; marginalise them out of the model (e.g. a mixture likelihood)"
        )
    observed_data = {name: np.asarray(trace[name]["value"]) for name in observed if name in trace}
    target = Target(
        terms=terms,
        data=data,
        num_data=num_data,
        init_params=init_params,
        constrain_fn=constrain_fn,
        unconstrain=unconstrain,
        name=getattr(inner, "__name__", getattr(model, "__name__", "model")),
        minibatch_error=minibatch_error,
        observed_data=observed_data,
        discrete_error=discrete_error,
        prior_init=prior_init,
        symmetric_sites=tuple(getattr(model, SYMMETRIC_ATTR, ()) or ()),
    )
    target.memo("numpyro_model", lambda: call_args({}))  # model + args, for log-likelihoods and predictive checks
    return target


