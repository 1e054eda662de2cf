"""Targets: what every sampler, optimizer and VI method consumes.

A :class:`Target` is the log posterior of a model in an unconstrained space, split so that
minibatches are cheap:

    log p(theta | x) = log_prior(theta) + sum_{i=1}^N log_lik(theta, x_i)

- ``terms(params, batch) -> (log_prior, log_lik_sum)``: one evaluation of both parts, the
  likelihood summed (unscaled) over the batch's rows. Everything else derives from it.
- ``data``: a pytree of arrays whose leaves share the leading axis N (``num_data``).
- ``init_params(key)``: a starting point (uniform(-2, 2) in the unconstrained space).
- ``constrain(params)``: the user's space, with deterministic sites (a dict name -> array).
- ``unconstrain(values)``: the inverse, for user-given initial values.
- ``nonsmooth``: an optional nonsmooth term with its proximity operator (Bregman methods).

Build one with :func:`from_logdensity` (plain JAX) or
:func:`heatbath.models.from_numpyro` (a NumPyro model).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import tree as _tree

PyTree = Any

__all__ = ["Target", "from_logdensity", "validate_data", "named_leaves"]


SYMMETRIC_ATTR = "heatbath_symmetric_sites"  # a model function's sites with exact symmetries (network_model sets it)


@dataclasses.dataclass(frozen=True)
class Target:
    terms: Callable
    data: PyTree
    num_data: int
    init_params: Callable
    constrain_fn: Callable  # (params, data) -> dict of constrained values
    unconstrain: Callable
    name: str = "target"
    minibatch_error: Optional[str] = None  # why this target cannot be minibatched, if it cannot
    observed_data: Optional[dict] = None
    nonsmooth: Any = None
    discrete_error: Optional[str] = None  # why gradient methods cannot run, if they cannot
    # prior_init(key, how) -> unconstrained params from the model's prior: how = "median" (the
    # median of 15 prior draws per site, NumPyro's init_to_median) or "sample" (one prior draw);
    # None for targets that have no prior to draw from (plain log densities).
    prior_init: Optional[Callable] = None
    # Sample sites whose posterior has exact symmetries (a network's weights: hidden units can be
    # permuted), so that their own R-hat and ESS do not measure convergence (the self-check reads
    # them from what the draws predict instead); set from a model's SYMMETRIC_ATTR attribute.
    symmetric_sites: tuple = ()

    # -- the contract's derived functions -------------------------------------------------
    def logprior(self, params):
        """log p(theta) in the unconstrained space (Jacobian included).

        ``terms``' prior part does not depend on the batch for minibatchable targets, so one row
        is enough; a full-batch-only target (local latent variables in its data plate) puts
        every term in the prior and is evaluated on its full (small) data.
        """
        rows = self.data if self.minibatch_error else jax.tree.map(lambda x: x[:1], self.data)
        return self.terms(params, rows)[0]

    def loglik(self, params, batch):
        """sum_{i in batch} log p(x_i | theta), unscaled."""
        return self.terms(params, batch)[1]

    def logdensity(self, params, batch=None):
        """Unbiased estimate of the log posterior: log p(theta) + (N/n) sum_batch log p(x_i|theta).

        With ``batch=None`` the full data is used and the value is exact.
        """
        batch = self.data if batch is None else batch
        lp, ll = self.terms(params, batch)
        n = jax.tree.leaves(batch)[0].shape[0]
        return lp + (self.num_data / n) * ll

    def constrain(self, params):
        """Map unconstrained params to the user's space (a dict name -> array)."""
        return self.constrain_fn(params, self.data)

    def with_data(self, data) -> "Target":
        """The same model on other data (same structure and row format)."""
        data, num = validate_data(data, _structure_of=self.data)
        return dataclasses.replace(self, data=data, num_data=num)

    def example_params(self):
        """Shapes and dtypes of the unconstrained parameters (no computation)."""
        # The key made inside the trace: an eager jax.random.key compiles a program of its own.
        return jax.eval_shape(lambda: self.init_params(jax.random.key(0)))

    def memo(self, name, build: Callable):
        """``build()``, computed once per Target object and kept on it (e.g. a jitted helper)."""
        cache = self.__dict__.get("_heatbath_cache")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_heatbath_cache", cache)
        if name not in cache:
            cache[name] = build()
        return cache[name]

    def has_memo(self, name) -> bool:
        """Whether :meth:`memo` has already built ``name`` on this Target."""
        return name in self.__dict__.get("_heatbath_cache", {})

    # The drivers run a sampler on a whitened copy of the target (theta = mu + L z, made by
    # heatbath.drivers.metric.whiten), a new copy whenever the metric differs: every call with
    # another seed. The two memos below keep compiled helpers on the target the copy whitens, so
    # the copies share them (at N = 2,000 a second call with another seed compiled its
    # measurements again: 6 s of a 7 s call).

    def data_memo(self, name, build: Callable):
        """:meth:`memo` on the target this one whitens (on itself when it whitens none): for
        helpers that read only the data and N, never the parameters' map."""
        return self.__dict__.get("_heatbath_whitened_from", self).memo(name, build)

    def metric_memo(self, name, build_raw: Callable) -> Callable:
        """``jax.jit(build_raw())``, memoised: on a whitened copy, once for every copy of one
        target, traced with the metric (mu, L) as an argument, as the compiled sampling loop is
        (:func:`heatbath.kernels.schedules.tuned_values`), and called with this copy's metric.
        ``build_raw()`` returns the function un-jitted, of array arguments only."""
        base = self.__dict__.get("_heatbath_whitened_from")
        if base is None:
            return self.memo(name, lambda: jax.jit(build_raw()))
        from heatbath.kernels.schedules import with_metric_argument

        shared = base.memo(("whitened", name), lambda: with_metric_argument(build_raw()))
        return functools.partial(shared, self.terms._heatbath_tuned)

    def has_metric_memo(self, name) -> bool:
        """Whether :meth:`metric_memo` has already built ``name`` (for every whitened copy)."""
        base = self.__dict__.get("_heatbath_whitened_from")
        return self.has_memo(name) if base is None else base.has_memo(("whitened", name))

    def flat(self, unravel: Callable) -> "Target":
        """The same target on a flat parameter vector x (params = ``unravel(x)``), e.g. for a
        method whose state holds a d x d covariance; the pytree is raveled once, outside any loop."""
        from jax.flatten_util import ravel_pytree

        target = self

        def terms(x, batch):
            return target.terms(unravel(x), batch)

        def constrain_fn(x, data_):
            return target.constrain_fn(unravel(x), data_)

        def init_params(key):
            return ravel_pytree(target.init_params(key))[0]

        def unconstrain(values):
            return ravel_pytree(target.unconstrain(values))[0]

        return dataclasses.replace(
            self, terms=terms, init_params=init_params, constrain_fn=constrain_fn, unconstrain=unconstrain
        )


def _leaf_name(path) -> str:
    parts = []
    for p in path:
        if isinstance(p, jax.tree_util.DictKey):
            parts.append(str(p.key))
        elif isinstance(p, jax.tree_util.SequenceKey):
            parts.append(str(p.idx))
        elif isinstance(p, jax.tree_util.GetAttrKey):
            parts.append(str(p.name))
        else:
            parts.append(str(p))
    return ".".join(parts)


def named_leaves(tree: PyTree, default: str = "theta") -> dict:
    """A flat dict name -> leaf: dict keys (joined by '.') or positions; a bare array is ``default``."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if len(leaves) == 1 and not leaves[0][0]:
        return {default: leaves[0][1]}
    return {_leaf_name(path) or default: leaf for path, leaf in leaves}


def _is_numeric(dtype) -> bool:
    """Booleans and numbers (bfloat16 included); not strings, dates, objects or records."""
    dtype = np.dtype(dtype)
    return dtype.kind in "biufc" or (dtype.kind == "V" and jnp.issubdtype(dtype, jnp.number))


def validate_data(data, *, _structure_of=None):
    """Check a data pytree: arrays with one shared leading axis N > 0, finite values.

    Returns ``(data as jax arrays, N)``. Raises ``ValueError`` naming the offending leaf.
    """
    if data is None:
        raise ValueError("data is None: pass the data (a pytree of arrays with leading axis N)")
    flat = jax.tree_util.tree_flatten_with_path(data)[0]
    if not flat:
        raise ValueError("data is empty: it must hold at least one array with a leading axis N")
    if _structure_of is not None and jax.tree.structure(data) != jax.tree.structure(_structure_of):
        raise ValueError(
            f"data has structure {jax.tree.structure(data)}, expected {jax.tree.structure(_structure_of)}"
        )
    lengths = {}
    out = []
    for path, leaf in flat:
        name = _leaf_name(path) or "data"
        try:
            arr = np.asarray(leaf)
        except (TypeError, ValueError) as err:
            raise TypeError(f"data leaf {name!r} is not a numeric array: {err}") from err
        if not _is_numeric(arr.dtype):
            raise TypeError(f"data leaf {name!r} is not a numeric array (dtype {arr.dtype})")
        if arr.ndim == 0:
            raise ValueError(f"data leaf {name!r} is a scalar; every data leaf needs a leading axis of rows")
        if arr.shape[0] == 0:
            raise ValueError(f"data leaf {name!r} has no rows (shape {arr.shape})")
        if jnp.issubdtype(arr.dtype, jnp.inexact):
            bad = ~np.isfinite(arr)
            if bad.any():
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(
                    f"data leaf {name!r} contains {int(bad.sum())} NaN or infinite value(s), the first at "
                    f"index {first}; drop or impute those rows (or mask them in the model)"
                )
        lengths[name] = arr.shape[0]
        try:
            converted = jnp.asarray(arr)
        except TypeError as err:  # e.g. float128: numeric for NumPy, not for JAX
            raise TypeError(f"data leaf {name!r} has dtype {arr.dtype}, which JAX does not support") from err
        if converted.dtype != arr.dtype and arr.size:
            # Without x64, JAX stores int64 / float64 in 32 bits: refuse values that wrap or overflow.
            back = np.asarray(converted)
            lost = not np.array_equal(back, arr) if arr.dtype.kind in "iu" else not np.isfinite(back).all()
            if lost:
                raise ValueError(
                    f"data leaf {name!r} has {arr.dtype} values that do not fit in {converted.dtype} (JAX's "
                    "default precision): rescale them, or enable 64-bit types with jax.config.update('jax_enable_x64', True)"
                )
        out.append(converted)
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}: {v}" for k, v in lengths.items())
        raise ValueError(f"data arrays have unequal numbers of rows ({detail}); all leaves need the same leading axis")
    treedef = jax.tree.structure(data)
    return jax.tree.unflatten(treedef, out), next(iter(lengths.values()))


def _param_shapes(params):
    """Shapes and dtypes of the example ``params``; a TypeError/ValueError naming the bad leaf."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not flat:
        raise ValueError(
            f"params has no arrays (got {params!r}): the target needs at least one parameter array"
        )
    shapes = []
    for path, leaf in flat:
        name = _leaf_name(path) or "params"
        try:
            dtype = np.dtype(jnp.result_type(leaf))
        except TypeError as err:
            raise TypeError(f"params leaf {name!r} is not a numeric array ({type(leaf).__name__}): {err}") from err
        if not _is_numeric(dtype):
            raise TypeError(f"params leaf {name!r} is not a numeric array (dtype {dtype})")
        shapes.append(jax.ShapeDtypeStruct(jnp.shape(leaf), dtype))
    return jax.tree.unflatten(treedef, shapes)


def from_logdensity(
    logprior: Callable,
    loglik: Callable,
    data,
    *,
    params=None,
    constrain: Optional[Callable] = None,
    unconstrain: Optional[Callable] = None,
    name: str = "target",
    nonsmooth=None,
) -> Target:
    """A target from plain JAX functions.

    Args:
      logprior: ``logprior(params) -> scalar``, log p(theta) in the space the sampler moves in.
      loglik: ``loglik(params, batch) -> scalar``, the *sum* over the batch's rows of
        log p(x_i | theta). ``batch`` has the structure of ``data`` with n rows.
      data: a pytree of arrays sharing the leading axis N (e.g. ``(X, y)`` or a dict).
      params: an example of the parameters (a pytree; only shapes and dtypes are used). It
        gives the default initialisation (uniform(-2, 2), as for NumPyro models) and lets
        the functions be checked now; without it ``hb.sample`` needs ``init=``.
      constrain: optional map to the user's space returning a dict name -> array; the default
        names the leaves of ``params`` (dict keys, or ``theta`` for a bare array).
      unconstrain: the inverse of ``constrain`` (default: identity), used for user inits.
      nonsmooth: a convex nonsmooth term g with its prox
        (:class:`heatbath.kernels.gradients.Nonsmooth`); the target is then exp(log p - g) and
        samplers reach g through their oracle (``oracle.nonsmooth``, ``oracle.prox``).
    """
    if not callable(logprior) or not callable(loglik):
        raise TypeError("from_logdensity needs callables logprior(params) and loglik(params, batch)")
    data, num_data = validate_data(data)

    def terms(p, batch):
        return logprior(p), loglik(p, batch)

    if params is not None:
        shapes = _param_shapes(params)
        # Shapes only (slicing the arrays would compile two eager slices on a first call).
        probe = jax.tree.map(lambda x: jax.ShapeDtypeStruct((min(2, x.shape[0]),) + x.shape[1:], x.dtype), data)
        try:
            lp_shape, ll_shape = jax.eval_shape(terms, shapes, probe)
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise ValueError(f"logprior/loglik fail on the example params and a 2-row batch: {err}") from err
        for what, out in (("logprior", lp_shape), ("loglik", ll_shape)):
            if jnp.issubdtype(out.dtype, jnp.complexfloating):
                raise TypeError(f"{what} must return a real scalar, got dtype {out.dtype}")
        if lp_shape.shape != ():
            raise ValueError(f"logprior must return a scalar, got shape {lp_shape.shape}")
        if ll_shape.shape != ():
            raise ValueError(
                f"loglik must return the sum over the batch's rows (a scalar), got shape {ll_shape.shape}; "
                "wrap it as lambda p, b: jnp.sum(per_row(p, b))"
            )

        def init_params(key):
            return _tree.uniform_like(key, shapes)

    else:

        def init_params(key):
            raise ValueError(
                "this target was built without example params: pass init=... to the driver, or "
                "params=... to from_logdensity"
            )

    if constrain is None:

        def constrain_fn(p, data_):
            del data_
            return named_leaves(p)

    else:

        def constrain_fn(p, data_):
            del data_
            out = constrain(p)
            return out if isinstance(out, dict) else named_leaves(out)

    unconstrain_fn = unconstrain if unconstrain is not None else (lambda values: values)
    return Target(
        terms=terms,
        data=data,
        num_data=num_data,
        init_params=init_params,
        constrain_fn=constrain_fn,
        unconstrain=unconstrain_fn,
        name=name,
        observed_data=None,
        nonsmooth=_check_nonsmooth(nonsmooth),
    )


def _check_nonsmooth(nonsmooth):
    from heatbath.kernels.gradients import Nonsmooth

    if nonsmooth is not None and not isinstance(nonsmooth, Nonsmooth):
        raise TypeError(
            f"nonsmooth must be a heatbath.kernels.gradients.Nonsmooth(value, prox), got {type(nonsmooth).__name__}"
        )
    return nonsmooth
