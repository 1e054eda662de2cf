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

import threading
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.distributions.util import sum_rightmost
from numpyro.infer.initialization import init_to_uniform
from numpyro.primitives import Messenger

from heatbath.kernels import tree as _tree
from heatbath.models.target import Target, validate_data

__all__ = ["from_numpyro", "TRACE_LOCK"]

#: Held by every NumPyro trace the bridge runs at Python level (re-entrant).
TRACE_LOCK = threading.RLock()

# Relative tolerance of the construction checks: they look for gross differences (a prior
# that reads the number of rows, a lag inside the model), never for float rounding.
_PROBE_RTOL = 1e-3
_PROBE_KEY = 20240917


class _Bridge(Messenger):
    """Substitute latent sites from unconstrained values and point the row plates at the batch."""

    def __init__(self, fn, uparams: Optional[dict], row_plates: frozenset, batch_rows: Optional[int]):
        self.uparams = uparams or {}
        self.row_plates = row_plates if batch_rows is not None else frozenset()
        self.batch_rows = batch_rows
        self.log_jacobian = {}
        self.plate_scale = {}
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
            self.log_jacobian[msg["name"]] = jnp.sum(log_det) * (1.0 if scale is None else scale)
            msg["value"] = value
        elif kind == "plate" and msg["name"] in self.row_plates:
            size = msg["args"][0]
            msg["value"] = jnp.arange(self.batch_rows)
            msg["args"] = (size, self.batch_rows)
            self.plate_scale[msg["name"]] = size / self.batch_rows
        elif kind == "subsample" and self.row_plates:
            # The rows are already the minibatch: stop the plate from subsampling them again.
            msg["kwargs"] = {**msg["kwargs"], "event_dim": None}


def _row_frame(site, row_plates):
    """The frame of the first row plate the site is in, or None."""
    for f in site["cond_indep_stack"]:
        if f.name in row_plates:
            return f
    return None


def _is_array(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array)) and np.ndim(x) >= 1


def _short(err: BaseException, limit: int = 300) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- inputs --------------------------------------------------------------------------------


def _convert_input(label: str, a):
    """NumPy arrays from pandas objects and unmasked masked arrays; sparse matrices and masked
    arrays with masked entries refused (their structure would be silently dropped)."""
    module = type(a).__module__ or ""
    if module.startswith("scipy.sparse"):
        raise TypeError(
            f"model argument {label!r} is a SciPy sparse matrix ({type(a).__name__}): the NumPyro bridge needs "
            "dense arrays. Pass it dense (.toarray()), or write the log density with "
            "jax.experimental.sparse and hb.models.from_logdensity"
        )
    if isinstance(a, np.ma.MaskedArray):
        masked = int(np.ma.count_masked(a))
        if masked:
            raise TypeError(
                f"model argument {label!r} is a NumPy masked array with {masked} masked value(s): its mask "
                "would be dropped (the masked entries used as data). Drop the masked rows, or pass the filled "
                "array and the mask as two arguments and mask the observations in the model "
                "(numpyro.handlers.mask(mask=...) around the observed site)"
            )
        return np.asarray(np.ma.getdata(a))
    if module.startswith("pandas") and hasattr(a, "to_numpy"):
        kind = type(a).__name__
        try:
            arr = np.asarray(a.to_numpy())
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"model argument {label!r} (a pandas {kind}) could not be converted to a NumPy array: {err}"
            ) from err
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            bad = ""
            if hasattr(a, "dtypes") and hasattr(a.dtypes, "items"):
                cols = [str(c) for c, dt in a.dtypes.items() if not _pandas_numeric(dt)]
                bad = f"; non-numeric columns: {cols}" if cols else "; it holds missing values (pd.NA)"
            raise TypeError(
                f"model argument {label!r} is a pandas {kind} that is not numeric (as a NumPy array its dtype is "
                f"{arr.dtype}{bad}): pass numeric columns (e.g. df[cols].to_numpy(float)), one-hot encode "
                "categories and impute or drop missing values"
            )
        return arr
    listed = _as_numeric_list(a)
    return a if listed is None else listed


def _pandas_numeric(dtype) -> bool:
    try:
        import pandas.api.types as ptypes

        return bool(ptypes.is_numeric_dtype(dtype) or ptypes.is_bool_dtype(dtype))
    except ImportError:  # pragma: no cover - a pandas object without pandas
        return False


def _as_numeric_list(a):
    """A numeric NumPy array from a Python list of numbers (or of equal-length lists), else None."""
    if not isinstance(a, list) or not a:
        return None
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError):
        return None
    if arr.ndim >= 1 and (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        return arr
    return None


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
    """
    with TRACE_LOCK:
        return _from_numpyro(model, model_args, model_kwargs)


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
    inputs = [(key, label, _convert_input(label, a)) for key, label, a in inputs]
    labels = {key: label for key, label, _ in inputs}

    for _, label, a in inputs:
        if _is_array(a) and np.issubdtype(np.asarray(a).dtype, np.floating) and not np.all(np.isfinite(a)):
            bad = int(np.sum(~np.isfinite(np.asarray(a))))
            raise ValueError(
                f"model argument {label!r} contains {bad} NaN or infinite value(s); drop or impute "
                "them (or mask the observations in the model and pass finite placeholders)"
            )
    for _, label, a in inputs:
        if isinstance(a, np.ndarray) and not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise TypeError(f"model argument {label!r} is not a numeric array (dtype {a.dtype})")
    empty = [label for _, label, a in inputs if _is_array(a) and np.shape(a)[0] == 0]
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
        lengths = {label: np.shape(a)[0] for _, label, a in inputs if _is_array(a)}
        hint = ""
        if len(set(lengths.values())) > 1:
            hint = " The array arguments have unequal numbers of rows: " + ", ".join(
                f"{k}: {v}" for k, v in lengths.items()
            ) + "."
        originals = _originals(model_args, model_kwargs, model, cond_names)
        converted = [label for (_, label, a), orig in zip(inputs, originals) if a is not orig]
        if converted:
            hint += (
                f" heatbath converted {converted} to NumPy arrays (pandas objects, lists of numbers, masked "
                "arrays) before the run."
            )
        message = f"{type(err).__name__}: {str(err).rstrip('.')}"
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
        if _is_array(a):
            input_lengths.add(int(np.shape(a)[0]))
    holding_obs = [n for n in plates if any(_row_frame(trace[o], {n}) for o in observed)]
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

    checker = _Checker(
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
        bridge = _Bridge(fn, uparams, row_plates, rows)
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
                frame = _row_frame(site, row_plates) if site.get("is_observed") else None
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

    def unconstrain(values):
        if not isinstance(values, dict):
            raise TypeError("initial values of a NumPyro model must be a dict site name -> value")
        unknown = set(values) - set(latent)
        if unknown:
            raise ValueError(f"unknown site(s) in initial values: {sorted(unknown)}; latent sites are {sorted(latent)}")
        with TRACE_LOCK:
            fn, args, kwargs = call_args({})
            tr = _prior_trace(fn, args, kwargs, values=values)
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
        name=getattr(inner, "__name__", getattr(model, "__name__", "model")),
        minibatch_error=minibatch_error,
        observed_data=observed_data,
        discrete_error=discrete_error,
    )


def _originals(model_args, model_kwargs, model, cond_names):
    out = list(model_args) + list(model_kwargs.values())
    out += [model.data[s] for s in cond_names]
    return out


class _Checker:
    """Choose the row plates and data arguments for a candidate data plate, and check by a few
    small runs that minibatches of the model are unbiased; a string is the reason they are not."""

    def __init__(self, *, call_args, inputs, labels, trace, plates, latent, observed, init_params, skip_probe):
        self.call_args = call_args
        self.inputs = inputs
        self.labels = labels
        self.trace = trace
        self.plates = plates
        self.latent = latent
        self.observed = observed
        self.init_params = init_params
        self.skip_probe = skip_probe
        self._u0 = None

    def try_plate(self, plate):
        """``(ok, row_plates, data, reason)`` for minibatches over ``plate``: ``reason`` says why
        it cannot be minibatched when ``ok`` is False."""
        N = int(self.plates[plate]["args"][0])
        trace = self.trace
        # Plates of the same size holding observations, never nested with the data plate: a
        # second data set of the same length, minibatched with the same rows.
        nested = set()
        for site in trace.values():
            names = {f.name for f in site.get("cond_indep_stack", ())}
            if plate in names:
                nested |= names
        row_plates = {plate} | {
            n for n, s in self.plates.items()
            if n not in nested and int(s["args"][0]) == N
            and any(_row_frame(trace[o], {n}) for o in self.observed)
        }
        row_plates = frozenset(row_plates)
        data = {}
        for key, _, a in self.inputs:
            if _is_array(a) and np.shape(a)[0] == N:
                data[key] = a
        if not data:
            return False, row_plates, data, (
                f"the data plate {plate!r} has size {N}, but no model argument is an array with "
                f"leading axis {N}; pass the per-observation arrays as model arguments (observations built "
                "inside the model from longer arrays, e.g. y[1:] against the lag y[:-1], must be precomputed "
                "as arguments with one row per term)"
            )
        local = [n for n, s in self.latent.items() if _row_frame(s, row_plates)]
        if local:
            return False, row_plates, data, (
                f"latent site(s) {local} sit inside the data plate {plate!r}: per-observation latent "
                "variables cannot be minibatched; run full-batch (batch_size=None)"
            )
        if self.skip_probe or N < 2:
            return True, row_plates, data, None
        reason = self.probe(row_plates, data, N)
        if reason is None:
            return True, row_plates, data, None
        if len(data) > 1:
            # One of the arguments of length N may not be per-row (a prior mean that happens to
            # have N entries): keep it whole if the model is then minibatched right.
            for key in data:
                rest = {k: v for k, v in data.items() if k != key}
                if self.probe(row_plates, rest, N) is None:
                    return True, row_plates, rest, None
        return False, row_plates, data, self.refusal(reason, plate, row_plates, data, N)

    def refusal(self, reason, plate, row_plates, data, N) -> str:
        parts = [f"the model cannot be minibatched: {reason}."]
        per_row = [
            n for n, s in self.latent.items()
            if jnp.ndim(s["value"]) >= 1 and jnp.shape(s["value"])[0] == N and not _row_frame(s, row_plates)
        ]
        if per_row:
            parts.append(
                f"Latent site(s) {per_row} have a leading axis of length {N}, the number of rows, and are "
                f"outside the data plate {plate!r}: a latent variable with one value per row (e.g. declared "
                f"with .expand([{N}])) cannot be minibatched; declare it inside the plate (the model then runs "
                "full-batch only)."
            )
        if len(data) > 1:
            taken = [self.labels[k] for k in data]
            parts.append(
                f"The bridge cuts to each minibatch's rows every array argument whose leading axis has the data "
                f"plate's size {N}, here {taken}; an argument of that length that is not per-row data (e.g. a "
                "prior-mean vector) must reach the model another way, e.g. functools.partial(model, name=value)."
            )
        parts.append("Run it with full batches (batch_size=None).")
        return " ".join(parts)

    # -- the probe ---------------------------------------------------------------------------
    def u0(self):
        """One random parameter, uniform(-2, 2) in the unconstrained space (drawn on the host)."""
        if self._u0 is None:
            rng = np.random.default_rng(_PROBE_KEY)
            self._u0 = jax.tree.map(
                lambda s: jnp.asarray(rng.uniform(-2.0, 2.0, s.shape), s.dtype),
                jax.eval_shape(self.init_params, jax.random.PRNGKey(0)),
            )
        return self._u0

    def site_terms(self, u, batch, rows, row_plates):
        """Per-site terms on ``batch`` (``rows`` rows): ``(prior, lik)``, the prior terms as
        scalars and the likelihood as one value per row. Raises :class:`_NotPerRow` when an
        observed site's log density lacks the data plate's dimension."""
        fn, args, kwargs = self.call_args(batch)
        bridge = _Bridge(fn, u, row_plates, rows)
        tr = handlers.trace(handlers.seed(bridge, 0)).get_trace(*args, **kwargs)
        prior = {f"jacobian:{n}": v for n, v in bridge.log_jacobian.items()}
        lik = {}
        for name, site in tr.items():
            if site["type"] != "sample" or (not site.get("is_observed") and name not in u):
                continue
            scale = site.get("scale")
            scale = 1.0 if scale is None else scale
            frame = _row_frame(site, row_plates) if site.get("is_observed") else None
            if frame is None:
                prior[f"site:{name}"] = jnp.sum(site["fn"].log_prob(site["value"])) * scale
                continue
            d = frame.dim
            axis = jnp.ndim(site["value"]) - len(site["fn"].event_shape) + d
            if 0 <= axis and jnp.shape(site["value"])[axis] not in (rows, 1):
                raise _NotPerRow(
                    f"on a batch of {rows} rows the observed site {name!r} still has "
                    f"{jnp.shape(site['value'])[axis]} rows: its values are not cut with the data arguments (they "
                    "come from a closure, a handler such as handlers.substitute or handlers.condition with a "
                    "condition_fn, or an argument of another length); pass the observations as a model argument "
                    "(obs=y) or through handlers.condition(model, data={...})"
                )
            lp = jnp.asarray(site["fn"].log_prob(site["value"]))
            if lp.ndim < -d or lp.shape[d] != rows:
                raise _NotPerRow(
                    f"on a batch of {rows} rows, the log density of the observed site {name!r} has shape "
                    f"{tuple(lp.shape)}, without the data plate's dimension ({frame.name!r}, dim {d}) of size "
                    f"{rows}: its rows are not the data arguments' rows"
                )
            per_row = jnp.moveaxis(lp, d, 0).reshape(rows, -1).sum(axis=1)
            lik[name] = per_row * scale / bridge.plate_scale[frame.name]
        return prior, lik

    def probe(self, row_plates, data, N) -> Optional[str]:
        """None when the prior terms do not change with the batch and each row's likelihood on
        a minibatch equals its term on the full data (two row sets of 1-2 rows, one random
        parameter); else the reason. The three runs are one compiled program: cheaper than
        running the model op by op, whose first use compiles every operation on new shapes."""
        rowsets = [np.array([0, 2]), np.array([N - 1, 1])] if N >= 4 else [np.array([0, 2][: N - 1]), np.array([1])]
        data = {k: jnp.asarray(v) for k, v in data.items()}
        batches = [{k: v[rows] for k, v in data.items()} for rows in rowsets]
        stage = ["the full data"]

        def all_terms(u, full, parts):
            out = [self.site_terms(u, full, N, row_plates)]
            for rows, batch in zip(rowsets, parts):
                stage[0] = f"a minibatch of {len(rows)} rows"
                out.append(self.site_terms(u, batch, len(rows), row_plates))
            return out

        try:
            results = jax.jit(all_terms)(self.u0(), data, batches)
        except _NotPerRow as err:
            return str(err)
        except Exception as err:  # noqa: BLE001 - a reason, not a crash
            return f"the model fails when run on {stage[0]} through the bridge ({_short(err)})"
        full, *parts = [
            ({k: float(v) for k, v in prior.items()}, {k: np.asarray(v, np.float64) for k, v in lik.items()})
            for prior, lik in results
        ]
        for rows, part in zip(rowsets, parts):
            reason = self.compare(full, part, rows)
            if reason:
                return reason
        return None

    def compare(self, full, part, rows) -> Optional[str]:
        (fp, fl), (pp, pl) = full, part
        if set(fp) != set(pp) or set(fl) != set(pl):
            names = sorted({k.split(":", 1)[1] for k in set(fp) ^ set(pp)} | (set(fl) ^ set(pl)))
            return f"the model's sites differ between a minibatch and the full data (site(s) {names})"
        changed = [k for k in fp if not _close(pp[k], fp[k])]
        if changed:
            changed = [tuple(k.split(":", 1)) for k in changed]
            obs = sorted({n for kind, n in changed if kind == "site" and n in self.observed})
            other = sorted({n for kind, n in changed if not (kind == "site" and n in self.observed)})
            if obs:
                return (
                    f"observed site(s) {obs} are outside the data plate but change with the minibatch (they read "
                    "the rows of the data arguments): they would be cut to the batch without being scaled by "
                    "N/n; put them in the data plate (or in a plate of their own over the same rows)"
                )
            return (
                f"the prior term(s) of site(s) {other} change with the minibatch (the model reads the number or "
                "the values of the rows outside the data plate, e.g. a prior scale 1/sqrt(X.shape[0])): a "
                "minibatch would change the prior"
            )
        for name, values in pl.items():
            expected = fl[name][rows]
            if not _close(values, expected):
                return (
                    f"the log likelihood of rows {rows.tolist()} run as a minibatch differs from their terms in the "
                    f"full data (observed site {name!r}: {np.round(values, 4).tolist()} vs "
                    f"{np.round(expected, 4).tolist()}): the likelihood is not a sum of independent per-row terms "
                    "(e.g. a lag y[:-1] or a cumulative sum built inside the model, or the row's position used as "
                    "a covariate); precompute such quantities as data arguments with one row per term"
                )
        return None


class _NotPerRow(Exception):
    """An observed site in the data plate whose log density has no dimension for the rows."""


def _close(a, b) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    ok = np.abs(a - b) <= _PROBE_RTOL * (1.0 + np.abs(b))
    return bool(np.all(ok | both_nan | same_inf))
