"""Minibatch estimators of the gradient of the log posterior.

With N data rows, a prior p(theta) and a minibatch B of n rows, the log posterior
log p(theta | x) = log p(theta) + sum_i log p(x_i | theta) is estimated by

- naive (Robbins & Monro 1951; Welling & Teh 2011):
      f~(theta) = log p(theta) + (N / n) sum_{i in B} log p(x_i | theta)
- control variates (Baker, Fearnhead, Fox & Nemeth 2019, "Control variates for stochastic
  gradient MCMC"): with a centre theta* (the MAP) and the full-data value f(theta*) and
  gradient g* computed once,
      g~(theta) = g* + grad f~(theta) - grad f~(theta*)          (same minibatch B)
- SVRG (Johnson & Zhang 2013; Dubey et al. 2016 for SG-MCMC): the same estimator with the
  centre refreshed to the current position every ``update_every`` steps.

All three are unbiased for the full-data gradient. The estimators know nothing of models:
they consume ``terms(params, batch) -> (log_prior, log_lik_sum)`` where ``log_lik_sum`` is
the *unscaled* sum of the batch rows' log likelihoods, and the number of data rows N.

A *spec* (``naive()``, ``control_variates(...)``, ``svrg(...)``) is what a user passes to a
sampler; the driver calls ``spec.build(terms, num_data)`` to get an :class:`Estimator`:

- ``init(position, data) -> state``
- ``refresh(state, position, data, step) -> state``  (SVRG's periodic re-centring)
- ``estimate(state, position, batch) -> (value, grad)`` of the log posterior estimate
- ``rows_per_estimate``, ``rows_at_init``, ``refresh_every``: cost bookkeeping, in data rows.

What a sampler's ``step`` receives is an :class:`Oracle`: callable exactly like a gradient
function, ``oracle(position, batch) -> (log density estimate, grad)`` (the built estimator),
and also carrying what methods beyond first-order Langevin need: the target's ``terms`` and
``num_data`` (e.g. a federated sampler's own likelihood scaling), its ``nonsmooth`` term
with the proximity operator (Bregman and proximal samplers), and ``batch_info`` from the
batcher (e.g. the federated round's shard).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from heatbath.kernels import schedules as _schedules
from heatbath.kernels import tree
from heatbath.kernels.validate import check_int

PyTree = Any
TermsFn = Callable[[PyTree, PyTree], tuple]

__all__ = [
    "Oracle",
    "Nonsmooth",
    "Estimator",
    "CentredState",
    "naive",
    "control_variates",
    "svrg",
    "batch_size_of",
    "minibatch_logdensity",
    "full_data_value_and_grad",
]


def _positive_int(value, name):
    return check_int(value, name, minimum=1)


def _chunk_rows(value):
    return None if value is None else _positive_int(value, "chunk_rows")


def batch_size_of(batch: PyTree) -> int:
    """Leading-axis length of the batch's leaves (static)."""
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("the batch has no arrays")
    return int(jnp.shape(leaves[0])[0])


def minibatch_logdensity(terms: TermsFn, num_data: int) -> Callable:
    """f~(theta, batch) = log p(theta) + (N / n) * sum_{i in batch} log p(x_i | theta)."""

    def logdensity(params, batch):
        log_prior, log_lik = terms(params, batch)
        n = batch_size_of(batch)
        return log_prior + (num_data / n) * log_lik

    return logdensity


def full_data_value_and_grad(
    terms: TermsFn, params: PyTree, data: PyTree, num_data: int, chunk_rows: Optional[int] = None
):
    """Exact log posterior and its gradient over all N rows.

    When ``chunk_rows`` is given and smaller than N, the likelihood is summed over chunks in
    a ``lax.scan`` so that memory stays bounded by one chunk of per-row intermediates.
    """
    if chunk_rows is None or chunk_rows >= num_data:
        logdensity = minibatch_logdensity(terms, num_data)
        return jax.value_and_grad(logdensity)(params, data)

    def log_lik(p, rows):
        return terms(p, rows)[1]

    ll_vg = jax.value_and_grad(log_lik)
    num_chunks = num_data // chunk_rows
    head = jax.tree.map(
        lambda x: x[: num_chunks * chunk_rows].reshape((num_chunks, chunk_rows) + x.shape[1:]), data
    )

    def body(carry, rows):
        v, g = ll_vg(params, rows)
        return (carry[0] + v, tree.add(carry[1], g)), None

    zero = (jnp.zeros(()), tree.zeros_like(params))
    (value, grad), _ = jax.lax.scan(body, zero, head)
    rest = num_data - num_chunks * chunk_rows
    if rest:
        tail = jax.tree.map(lambda x: x[num_chunks * chunk_rows :], data)
        v, g = ll_vg(params, tail)
        value, grad = value + v, tree.add(grad, g)
    lp_v, lp_g = jax.value_and_grad(lambda p: terms(p, jax.tree.map(lambda x: x[:1], data))[0])(params)
    return lp_v + value, tree.add(lp_g, grad)


class Nonsmooth(NamedTuple):
    """A convex, possibly nonsmooth term g of a target pi ~ exp(log p~ - g) (Bregman methods).

    ``value(params) -> scalar`` is g; ``prox(params, lam) -> params`` its Euclidean proximity
    operator argmin_y g(y) + |y - params|^2 / (2 lam); ``bregman_prox`` optionally the same
    under a mirror map (``bregman_prox(params, lam, mirror)``), None when not available.
    """

    value: Callable
    prox: Callable
    bregman_prox: Optional[Callable] = None
    name: str = "nonsmooth"


class Oracle:
    """What ``Sampler.step`` calls: the gradient estimator, with the target's other pieces.

    ``oracle(position, batch)`` is the estimator's ``(log density estimate, grad)`` of the
    log posterior (naive, control variates, SVRG; the same call a plain ``grad_fn`` had).
    Attributes: ``terms(params, batch) -> (log_prior, log_lik_sum)``, ``num_data`` N,
    ``nonsmooth`` (a :class:`Nonsmooth` or None) and ``batch_info`` (a dict of arrays from the
    batcher; empty for uniform minibatches). It is a plain Python object built inside the
    traced step, so it works under ``jit``, ``vmap`` and sharding.
    """

    __slots__ = ("_estimate", "terms", "num_data", "nonsmooth", "batch_info")

    def __init__(self, estimate: Callable, terms: Optional[TermsFn] = None, num_data: Optional[int] = None,
                 nonsmooth: Optional[Nonsmooth] = None, batch_info: Optional[dict] = None):
        self._estimate = estimate
        self.terms = terms
        self.num_data = num_data
        self.nonsmooth = nonsmooth
        self.batch_info = {} if batch_info is None else batch_info

    def __call__(self, position, batch):
        return self._estimate(position, batch)

    def prox(self, position, lam):
        """The Euclidean prox of lam * g at ``position`` (a ValueError if the target has no g)."""
        if self.nonsmooth is None:
            raise ValueError("this target has no nonsmooth term: build it with from_logdensity(..., nonsmooth=...)")
        return self.nonsmooth.prox(position, lam)


class Estimator(NamedTuple):
    """A built gradient estimator (see the module docstring)."""

    init: Callable
    refresh: Callable
    estimate: Callable
    rows_per_estimate: int = 1  # multiples of the batch size per call
    rows_at_init: int = 0  # data rows touched by init
    refresh_every: int = 0  # a full pass every this many steps (0: never)
    name: str = "naive"
    shared: bool = True  # the state ignores the position and never changes: one copy for all chains


class CentredState(NamedTuple):
    """State of the control-variate and SVRG estimators."""

    centre: PyTree
    value: jax.Array  # full-data log posterior at the centre
    grad: PyTree  # full-data gradient at the centre


def _no_refresh(state, position, data, step):
    del position, data, step
    return state


class _Naive:
    """Spec of the naive estimator: f~ = log p(theta) + (N/n) sum_B log p(x_i | theta)."""

    needs_centre = False
    name = "naive"
    # True when the sampler was built without gradient=: with an automatic step size the driver
    # may then choose control variates instead (heatbath.drivers.estimator_choice).
    default = False

    def build(self, terms: TermsFn, num_data: int) -> Estimator:
        vg = jax.value_and_grad(minibatch_logdensity(terms, num_data))

        def init(position, data):
            del position, data
            return ()

        def estimate(state, position, batch):
            del state
            return vg(position, batch)

        return Estimator(init, _no_refresh, estimate, 1, 0, 0, self.name)

    def __repr__(self):
        return "naive()"


def naive():
    """The naive minibatch estimator, unbiased with variance O(N^2 / n)."""
    return _Naive()


def default_estimator():
    """The naive estimator, marked as the sampler's default (no ``gradient=`` given)."""
    spec = _Naive()
    spec.default = True
    return spec


@functools.lru_cache(maxsize=None)
def _passes():
    """The compiled full-data passes: one of the drivers' caches (keyed by identity, so
    unhashable terms are fine; pinning the terms, which for a NumPyro target hold its data;
    emptied by hb.clear_caches()). Made on first use: the drivers sit above the kernels."""
    from heatbath.drivers.cache import IdentityCache

    return IdentityCache(8)


def _full_data_compiled(terms: TermsFn, num_data: int, chunk_rows: Optional[int]):
    """``(params, data) -> (value, grad)`` over all N rows, compiled once per (terms, N, chunk)
    with the point an argument: the control-variate centre (the MAP, new at every ``hb.sample``
    call) and SVRG's starting points no longer compile a program per call (0.15 s of a 0.2 s
    call at N = 2,000). A whitened target (``heatbath.drivers.metric``; a new copy, with new
    terms, whenever the metric differs) shares the compiled pass of the target it whitens, its
    metric an argument (the first copy's terms build it: any copy's read the metric from the
    argument while traced)."""
    base = getattr(terms, "_heatbath_base", (None, None))
    metric = getattr(terms, "_heatbath_tuned", None) if base[0] == "whitened" else None
    owner = terms if metric is None else base[1]
    shared = _passes().get(("full-data-pass", id(owner), num_data, chunk_rows, metric is not None), (owner,),
                           lambda: _schedules.with_metric_argument(functools.partial(
                               full_data_value_and_grad, terms, num_data=num_data, chunk_rows=chunk_rows)))
    return functools.partial(shared, metric or {})


def _centred_estimate(vg):
    def estimate(state: CentredState, position, batch):
        # Both evaluations on the same minibatch, batched into one pass over the rows.
        both = jax.tree.map(lambda a, b: jnp.stack([a, b]), position, state.centre)
        values, grads = jax.vmap(vg, in_axes=(0, None))(both, batch)
        value = state.value + values[0] - values[1]
        grad = jax.tree.map(lambda g0, g: g0 + g[0] - g[1], state.grad, grads)
        return value, grad

    return estimate


class _ControlVariates:
    """Spec of the control-variate estimator of Baker et al. (2019)."""

    needs_centre = True
    name = "control_variates"
    # The compiled loop reads the centre from the estimator's state (CentredState, made by
    # ``init`` outside it), never as a constant: the drivers' compile cache leaves it out of the key.
    cache_ignores = ("centre",)

    def __init__(self, centre=None, map_steps: int = 2000, chunk_rows: Optional[int] = None):
        self.centre = centre
        self.map_steps = _positive_int(map_steps, "map_steps")
        self.chunk_rows = _chunk_rows(chunk_rows)

    def with_centre(self, centre):
        return _ControlVariates(centre, self.map_steps, self.chunk_rows)

    def build(self, terms: TermsFn, num_data: int) -> Estimator:
        if self.centre is None:
            raise ValueError(
                "control_variates needs a centre (the MAP); pass centre=... or let hb.sample find it"
            )
        vg = jax.value_and_grad(minibatch_logdensity(terms, num_data))
        centre = self.centre
        chunk = self.chunk_rows

        def init(position, data):
            del position
            value, grad = _full_data_compiled(terms, num_data, chunk)(centre, data)
            return CentredState(centre, value, grad)

        return Estimator(init, _no_refresh, _centred_estimate(vg), 2, num_data, 0, self.name)

    def __repr__(self):
        return f"control_variates(centre={'given' if self.centre is not None else 'MAP'})"


def control_variates(centre=None, *, map_steps: int = 2000, chunk_rows: Optional[int] = None):
    """Control variates centred at ``centre`` (unconstrained params); None: the driver finds the MAP.

    g~(theta) = g* + grad f~(theta) - grad f~(theta*): two minibatch gradients per step and one
    full-data gradient at the start. The variance is O(N^2 |theta - theta*|^2 / n) instead of
    O(N^2 / n), so near the mode the minibatch noise nearly vanishes (Baker et al. 2019).
    """
    return _ControlVariates(centre, map_steps, chunk_rows)


class _SVRG:
    """Spec of the SVRG estimator: control variates re-centred every ``update_every`` steps."""

    needs_centre = False
    name = "svrg"

    def __init__(self, update_every: int, chunk_rows: Optional[int] = None):
        self.update_every = _positive_int(update_every, "svrg update_every")
        self.chunk_rows = _chunk_rows(chunk_rows)

    def build(self, terms: TermsFn, num_data: int) -> Estimator:
        vg = jax.value_and_grad(minibatch_logdensity(terms, num_data))
        chunk, every = self.chunk_rows, self.update_every

        def init(position, data):
            value, grad = _full_data_compiled(terms, num_data, chunk)(position, data)
            return CentredState(position, value, grad)

        def refresh(state, position, data, step):
            def recentre(_):
                return init(position, data)

            return jax.lax.cond(
                jnp.logical_and(step > 0, step % every == 0), recentre, lambda _: state, None
            )

        return Estimator(init, refresh, _centred_estimate(vg), 2, num_data, every, self.name, False)

    def __repr__(self):
        return f"svrg(update_every={self.update_every})"


def svrg(update_every: int, *, chunk_rows: Optional[int] = None):
    """SVRG gradients: the centre is the current position, refreshed every ``update_every`` steps."""
    return _SVRG(update_every, chunk_rows)
