"""Pointwise log-likelihoods and posterior predictive draws of a run (for LOO, WAIC and PPCs).

:func:`pointwise_loglik` evaluates log p(y_i | theta_s) for every kept draw s and every
observation i, in chunks of draws (one compiled program, bounded memory). Two routes:

- **the model's**: when the sampled Target was built from a NumPyro model that it keeps (see
  :func:`model_call`), ``numpyro.infer.log_likelihood`` runs on the constrained draws of its
  latent sites: one variable per observed site, shaped (chain, draw, *site shape), as
  ``numpyro.infer.log_likelihood`` and ``arviz.from_numpyro`` give it.
- **the Target's**: otherwise, for a Target that can be minibatched, the likelihood of row i
  is ``target.terms(theta, row i)[1]`` (the bridge checked at construction that a row's term on
  a minibatch equals its term on the full data), over the unconstrained draws
  (``Result.unconstrained`` when recorded, else ``target.unconstrain`` of the draws, checked by
  mapping draws back with ``target.constrain``). One variable of shape (chain, draw, N): named
  after the observed site when a NumPyro model has exactly one, else ``"loglik"``.

A NumPyro model whose data plate subsamples (``plate(..., subsample_size=n)``) takes the
Target's route (NumPyro would subsample rows at random). A full-batch-only NumPyro target
(local latent variables in its data plate) that does not keep its model has no pointwise
log-likelihood: :class:`LoglikUnavailable` says so.

:func:`predictive` is ``numpyro.infer.Predictive`` on the draws: with the model's own
arguments it drops the observations first (``unobserved``), so the observed sites are
predicted instead of echoed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["pointwise_loglik", "loglik_of_rows", "predictive", "model_call", "LoglikUnavailable", "CHUNK_VALUES", "MAX_VALUES",
           "unobserved"]

CHUNK_VALUES = 1 << 20  # log-likelihood values computed per compiled chunk of draws
MAX_VALUES = 100_000_000  # above this many values (draws x observations) the default skips it


class LoglikUnavailable(ValueError):
    """The run's pointwise log-likelihood cannot be computed (the reason is the message)."""


def model_call(target):
    """``(model, args, kwargs)`` of the NumPyro model a Target was built from, when it keeps them.

    The bridge keeps them with ``target.memo("numpyro_model", ...)`` (or as a ``numpyro_model``
    attribute); a Target built with ``from_logdensity``, or moved to other data with
    ``Target.with_data``, has none.
    """
    cache = getattr(target, "__dict__", {}).get("_heatbath_cache") or {}
    call = cache.get("numpyro_model", getattr(target, "numpyro_model", None))
    if call is None:
        return None
    fn, args, kwargs = call
    return fn, tuple(args), dict(kwargs or {})


def _flat(tree, leading: int):
    """Leaves (chain, draw, ...) -> (chain * draw, ...)."""
    return jax.tree.map(lambda x: np.reshape(np.asarray(x), (-1,) + np.shape(x)[leading:]), tree)


def _num_draws(tree) -> int:
    return int(np.shape(jax.tree.leaves(tree)[0])[0])


def _chunked(fn, draws, *rest, per_draw: int, chunk_size=None):
    """``fn(draws chunk, *rest)`` over chunks of a fixed size (the last one padded with its final
    draw, so ``fn`` compiles once), concatenated on the host."""
    total = _num_draws(draws)
    size = chunk_size or max(1, CHUNK_VALUES // max(per_draw, 1))
    size = min(size, total)
    outs = []
    for start in range(0, total, size):
        idx = np.minimum(np.arange(start, start + size), total - 1)
        part = fn(jax.tree.map(lambda x: x[idx], draws), *rest)
        keep = min(size, total - start)
        outs.append(jax.tree.map(lambda x: np.asarray(x)[:keep], part))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def _split_arrays(tree):
    """(array leaves, rebuild(arrays) -> tree): the arrays become arguments of a compiled function,
    the rest (ints, strings, None) stays static."""
    leaves, treedef = jax.tree.flatten(tree)
    where = [isinstance(x, (np.ndarray, jax.Array)) for x in leaves]
    arrays = [x for x, w in zip(leaves, where) if w]

    def rebuild(arrs):
        it = iter(arrs)
        return jax.tree.unflatten(treedef, [next(it) if w else x for x, w in zip(leaves, where)])

    return arrays, rebuild


def _subsamples(call, sample) -> bool:
    """Whether the model has a plate that subsamples (traced once at the first draw)."""
    from numpyro import handlers

    from heatbath.models.numpyro_bridge import TRACE_LOCK

    fn, args, kwargs = call
    with TRACE_LOCK, handlers.block():
        tr = handlers.trace(handlers.seed(handlers.substitute(fn, data=sample), 0)).get_trace(*args, **kwargs)
    return any(s["type"] == "plate" and s["args"][1] is not None and s["args"][1] < s["args"][0] for s in tr.values())


def _by_model(target, call, latent, chunk_size):
    from numpyro.infer import log_likelihood

    from heatbath.models.numpyro_bridge import TRACE_LOCK

    fn, args, kwargs = call
    arrays, rebuild = _split_arrays((args, kwargs))

    def build():
        def chunk(draws, arrs):
            a, k = rebuild(arrs)
            return log_likelihood(fn, draws, *a, parallel=True, batch_ndims=1, **k)

        return jax.jit(chunk)

    chunk = target.memo("pointwise_loglik_model", build)
    with TRACE_LOCK:  # tracing runs the model
        one = jax.eval_shape(chunk, jax.tree.map(lambda x: x[:1], latent), arrays)
        per_draw = max(1, sum(int(np.prod(s.shape)) for s in jax.tree.leaves(one)))
        return _chunked(chunk, latent, arrays, per_draw=per_draw, chunk_size=chunk_size)


def _rows_fn(target):
    def per_draw(u, data):
        def row(r):
            return target.terms(u, jax.tree.map(lambda x: x[None], r))[1]

        return jax.vmap(row)(data)

    return jax.jit(jax.vmap(per_draw, in_axes=(0, None)))


def _close(a, b) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-3, atol=1e-4 * (1 + np.max(np.abs(b), initial=0))))


def _round_trips(target, u, samples, picks) -> bool:
    """Whether ``target.constrain`` maps the candidate unconstrained draws ``picks`` back to the draws."""
    example = target.example_params()
    if jax.tree.structure(u) != jax.tree.structure(example):
        return False
    if any(np.shape(x)[1:] != e.shape for x, e in zip(jax.tree.leaves(u), jax.tree.leaves(example))):
        return False
    for i in picks:
        back = target.constrain(jax.tree.map(lambda x: jnp.asarray(x[i]), u))
        common = [k for k in back if k in samples]
        if not common or not all(_close(back[k], samples[k][i]) for k in common):
            return False
    return True


def _unconstrain_each(target, values, example):
    """``target.unconstrain`` draw by draw (it may check supports on concrete values); NaN where a
    draw is not finite."""
    n = _num_draws(values)
    out = []
    for i in range(n):
        v = jax.tree.map(lambda x: jnp.asarray(x[i]), values)
        try:
            out.append(target.unconstrain(v))
        except ValueError:
            if all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(v)):
                raise
            out.append(jax.tree.map(lambda e: np.full(e.shape, np.nan, e.dtype), example))
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *out)


def _unconstrained_draws(target, samples):
    """The unconstrained positions of the flat constrained ``samples``, or None when no inverse
    maps them back (checked with ``target.constrain`` on the first and last draw)."""
    from heatbath.models.target import named_leaves

    try:
        example = target.example_params()
    except ValueError:
        return None
    n = _num_draws(samples)
    finite = [i for i in range(n) if all(np.all(np.isfinite(v[i])) for v in samples.values())]
    picks = sorted({finite[0], finite[-1]}) if finite else []
    values = {k: samples[k] for k in example if k in samples} if isinstance(example, dict) else samples
    # The target's inverse, vectorized; the draws themselves (a target sampled on the user's scale,
    # its leaves named as the default constrain names them); the inverse draw by draw (slow: a
    # NumPyro target checks each value's support on the host).
    candidates = [lambda: jax.vmap(target.unconstrain)(jax.tree.map(jnp.asarray, values))]
    names = list(named_leaves(example))
    if set(names) <= set(samples):
        treedef = jax.tree.structure(example)
        candidates.append(lambda: jax.tree.unflatten(treedef, [samples[k] for k in names]))
    candidates.append(lambda: _unconstrain_each(target, values, example))
    for make in candidates:
        try:
            u = make()
        except Exception:  # noqa: BLE001 - the next candidate
            continue
        if picks and _round_trips(target, u, samples, picks):
            return u
    return None


def _by_target(target, samples, unconstrained, chunk_size, rows=None):
    """The Target's route on every data row, or on the rows ``rows`` (indices) only."""
    if target.minibatch_error:
        raise LoglikUnavailable(
            "this target runs full-batch only (" + target.minibatch_error.split(";")[0] + "), so its likelihood "
            "does not split into rows, and it does not keep its NumPyro model for numpyro.infer.log_likelihood"
        )
    u = unconstrained if unconstrained is not None else _unconstrained_draws(target, samples)
    if u is None:
        raise LoglikUnavailable(
            "the draws cannot be mapped back to the unconstrained space (the target's unconstrain is not "
            "the inverse of its constrain): run hb.sample(..., record_unconstrained=True)"
        )
    fn = target.memo("pointwise_loglik_rows", lambda: _rows_fn(target))
    data = target.data if rows is None else jax.tree.map(lambda x: x[np.asarray(rows, int)], target.data)
    out = _chunked(fn, u, data, per_draw=target.num_data if rows is None else len(rows), chunk_size=chunk_size)
    observed = list(target.observed_data or {})
    return {observed[0] if len(observed) == 1 else "loglik": out}


def pointwise_loglik(target, samples: dict, unconstrained=None, *, chunk_size=None) -> dict:
    """log p(y_i | theta) for every draw: name -> array (chain, draw, ...), in float32.

    Args:
      target: the Target the draws come from (``Result.target``).
      samples: constrained draws name -> (chain, draw, ...), deterministic sites allowed.
      unconstrained: the same draws in the unconstrained space (``Result.unconstrained``), if
        recorded; used by the Target's route.
      chunk_size: draws per compiled chunk (default: about 2**20 values per chunk).

    Raises :class:`LoglikUnavailable` when neither route applies.
    """
    if target is None:
        raise LoglikUnavailable("the Result does not know the Target it sampled (Result.target is None)")
    shape = np.shape(next(iter(samples.values())))[:2]
    flat = _flat(samples, 2)
    flat_u = None if unconstrained is None else _flat(unconstrained, 2)
    call = model_call(target)
    out = None
    if call is not None:
        try:
            latent = {k: flat[k] for k in target.example_params()}
        except (ValueError, TypeError, KeyError):
            latent = None
        if latent is not None and not _subsamples(call, jax.tree.map(lambda x: x[0], latent)):
            out = _by_model(target, call, latent, chunk_size)
    if out is None:
        out = _by_target(target, flat, flat_u, chunk_size)
    return {k: np.reshape(v, shape + np.shape(v)[1:]) for k, v in out.items()}


def loglik_of_rows(target, samples: dict, rows, unconstrained=None, *, chunk_size=None) -> np.ndarray:
    """log p(y_i | theta) of the data rows ``rows`` (indices) for every draw, by the Target's
    route: an array (chain, draw, len(rows)). A few rows' log-likelihoods are a summary of what
    the draws predict (the self-check reads R-hat and ESS from them where the sites have exact
    symmetries). Raises :class:`LoglikUnavailable` where the Target's route does not apply."""
    shape = np.shape(next(iter(samples.values())))[:2]
    flat_u = None if unconstrained is None else _flat(unconstrained, 2)
    out = next(iter(_by_target(target, _flat(samples, 2), flat_u, chunk_size, rows=rows).values()))
    return np.reshape(np.asarray(out), shape + (len(rows),))


def loglik_size(target, num_draws: int) -> int:
    """The number of log-likelihood values for ``num_draws`` draws (observed values x draws)."""
    sizes = [int(np.size(v)) for v in (target.observed_data or {}).values()]
    per_draw = sum(sizes) if sizes and model_call(target) is not None else target.num_data
    return per_draw * num_draws


def unobserved(model):
    """``model`` with its observed sites sampled instead (their ``obs`` values ignored)."""
    from numpyro.primitives import Messenger

    class Unobserved(Messenger):
        def process_message(self, msg):
            if msg["type"] == "sample" and msg.get("is_observed"):
                msg["is_observed"] = False
                msg["value"] = None

    return Unobserved(model)


def predictive(model, args, kwargs, samples: dict, *, seed=0, return_sites=None, drop_observations=False) -> dict:
    """``numpyro.infer.Predictive(model, flat samples)(key(seed), *args, **kwargs)``, reshaped to
    (chain, draw, ...). ``samples``: name -> (chain, draw, ...)."""
    from numpyro.infer import Predictive

    from heatbath.models.numpyro_bridge import TRACE_LOCK

    shape = np.shape(next(iter(samples.values())))[:2]
    key = seed if isinstance(seed, jax.Array) else jax.random.key(int(seed))
    fn = unobserved(model) if drop_observations else model
    with TRACE_LOCK:
        out = Predictive(fn, posterior_samples=_flat(samples, 2), return_sites=return_sites)(key, *args, **kwargs)
    return {k: np.reshape(np.asarray(v), shape + np.shape(v)[1:]) for k, v in out.items()}
