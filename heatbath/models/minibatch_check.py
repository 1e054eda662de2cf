"""The NumPyro bridge's construction-time check that minibatches of a model are unbiased:
one compiled run of the model through the bridge on the full data and on two small row sets
at a random parameter (see :mod:`heatbath.models.numpyro_bridge`)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers

from heatbath.models.bridge_handler import Bridge, is_array, row_frame, short_error

__all__ = ["Checker", "NotPerRow", "originals", "PROBE_RTOL", "PROBE_KEY"]

# Relative tolerance of the construction checks: they look for gross differences (a prior
# that reads the number of rows, a lag inside the model), never for float rounding.
PROBE_RTOL = 1e-3
PROBE_KEY = 20240917


def originals(model_args, model_kwargs, model, cond_names):
    out = list(model_args) + list(model_kwargs.values())
    out += [model.data[s] for s in cond_names]
    return out


class Checker:
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
            and any(row_frame(trace[o], {n}) for o in self.observed)
        }
        row_plates = frozenset(row_plates)
        data = {}
        for key, _, a in self.inputs:
            if is_array(a) and np.shape(a)[0] == N:
                data[key] = a
        if not data:
            return False, row_plates, data, (
                f"the data plate {plate!r} has size {N}, but no model argument is an array with "
                f"leading axis {N}; pass the per-observation arrays as model arguments (observations built "
                "inside the model from longer arrays, e.g. y[1:] against the lag y[:-1], must be precomputed "
                "as arguments with one row per term)"
            )
        local = [n for n, s in self.latent.items() if row_frame(s, row_plates)]
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
            if jnp.ndim(s["value"]) >= 1 and jnp.shape(s["value"])[0] == N and not row_frame(s, row_plates)
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
            rng = np.random.default_rng(PROBE_KEY)
            self._u0 = jax.tree.map(
                lambda s: jnp.asarray(rng.uniform(-2.0, 2.0, s.shape), s.dtype),
                jax.eval_shape(self.init_params, jax.random.PRNGKey(0)),
            )
        return self._u0

    def site_terms(self, u, batch, rows, row_plates):
        """Per-site terms on ``batch`` (``rows`` rows): ``(prior, lik)``, the prior terms as
        scalars and the likelihood as one value per row. Raises :class:`NotPerRow` when an
        observed site's log density lacks the data plate's dimension."""
        fn, args, kwargs = self.call_args(batch)
        bridge = Bridge(fn, u, row_plates, rows)
        tr = handlers.trace(handlers.seed(bridge, 0)).get_trace(*args, **kwargs)
        prior = {f"jacobian:{n}": v for n, v in bridge.log_jacobian.items()}
        lik = {}
        for name, site in tr.items():
            if site["type"] != "sample" or (not site.get("is_observed") and name not in u):
                continue
            scale = site.get("scale")
            scale = 1.0 if scale is None else scale
            frame = row_frame(site, row_plates) if site.get("is_observed") else None
            if frame is None:
                prior[f"site:{name}"] = jnp.sum(site["fn"].log_prob(site["value"])) * scale
                continue
            d = frame.dim
            axis = jnp.ndim(site["value"]) - len(site["fn"].event_shape) + d
            if 0 <= axis and jnp.shape(site["value"])[axis] not in (rows, 1):
                raise NotPerRow(
                    f"on a batch of {rows} rows the observed site {name!r} still has "
                    f"{jnp.shape(site['value'])[axis]} rows: its values are not cut with the data arguments (they "
                    "come from a closure, a handler such as handlers.substitute or handlers.condition with a "
                    "condition_fn, or an argument of another length); pass the observations as a model argument "
                    "(obs=y) or through handlers.condition(model, data={...})"
                )
            lp = jnp.asarray(site["fn"].log_prob(site["value"]))
            if lp.ndim < -d or lp.shape[d] != rows:
                raise NotPerRow(
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
        except NotPerRow as err:
            return str(err)
        except Exception as err:  # noqa: BLE001 - a reason, not a crash
            return f"the model fails when run on {stage[0]} through the bridge ({short_error(err)})"
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
        changed = [k for k in fp if not close(pp[k], fp[k])]
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
            if not close(values, expected):
                return (
                    f"the log likelihood of rows {rows.tolist()} run as a minibatch differs from their terms in the "
                    f"full data (observed site {name!r}: {np.round(values, 4).tolist()} vs "
                    f"{np.round(expected, 4).tolist()}): the likelihood is not a sum of independent per-row terms "
                    "(e.g. a lag y[:-1] or a cumulative sum built inside the model, or the row's position used as "
                    "a covariate); precompute such quantities as data arguments with one row per term"
                )
        return None


class NotPerRow(Exception):
    """An observed site in the data plate whose log density has no dimension for the rows."""


def close(a, b) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    ok = np.abs(a - b) <= PROBE_RTOL * (1.0 + np.abs(b))
    return bool(np.all(ok | both_nan | same_inf))
