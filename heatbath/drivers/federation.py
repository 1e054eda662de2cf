"""Federated runs: shards in, the FSGLD surrogates fitted before sampling.

A federated run is ``hb.sample`` with a federated batcher
(:func:`heatbath.drivers.batching.federated`) and a federated sampler
(:mod:`heatbath.samplers.federated`); this module does what comes before the loop:

- :func:`stack`: shards given as a list of data pytrees -> (one data set, shard ids), checked
  (no empty shard, the same structure, trailing shapes and dtypes in every shard).
- :func:`fit_conducive`: the Gaussian surrogates q_k of the shards' likelihoods L_k that FSGLD's
  conducive gradient needs, one vmapped computation over the shards (each shard's rows padded
  to the largest shard and masked):

  * ``"laplace"`` / ``"laplace-diag"``: the mode m_k of p(theta)^(1/K) L_k(theta) (damped
    Newton, whose convergence is checked), then the second-order expansion of log L_k at m_k:
    Lambda_k = -Hessian log L_k(m_k) (full, or its diagonal), eta_k = grad log L_k(m_k) + Lambda_k m_k,
    so grad log q_k(theta) = eta_k - Lambda_k theta (exact for a Gaussian likelihood).
  * ``"sgld"`` / ``"sgld-diag"``: the moments (mean m, covariance C, or variances) of a short
    Langevin run on p^(1/K) L_k from that mode (full shard gradients, step 0.1 / lambda_max), the
    prior's share taken out at m: Lambda_k = C^-1 - P_p / K, eta_k = C^-1 m - (grad log p(m) + P_p m) / K,
    P_p = -Hessian log p(m).

- :func:`prepare`: what ``hb.sample`` calls: refuses a federated sampler without federated
  rounds (and the reverse with biased probabilities, in ``inputs.check_oracle_uses``), and fits
  an FSGLD's surrogates when they are named by method, rebuilding the sampler with them.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from heatbath.drivers.batching import take_rows
from heatbath.samplers.federated import CONDUCIVE_METHODS, ShardGaussians, needs_fit

__all__ = ["stack", "fit_conducive", "prepare", "NEWTON_STEPS", "LANGEVIN_STEPS"]

NEWTON_STEPS = 60  # damped Newton iterations of the Laplace fit
LANGEVIN_STEPS = 4000  # steps of the "sgld" fit (the first quarter discarded)


def stack(shards):
    """(data, shard ids) from K data pytrees with the same structure, one per shard: the rows of
    shard 0, then shard 1, ...; ``ids[i]`` is the shard of row i. Pass the data to ``hb.sample``
    (or ``from_logdensity``) and the ids to ``batching.federated``."""
    if not isinstance(shards, (list, tuple)) or len(shards) == 0:
        raise ValueError("shards must be a non-empty list of data pytrees (one per shard)")
    struct = jax.tree.structure(shards[0])
    sizes = []
    for k, s in enumerate(shards):
        if jax.tree.structure(s) != struct:
            raise ValueError(f"shard {k} has the structure {jax.tree.structure(s)}, shard 0 {struct}: every shard "
                             "must hold the same arrays")
        leaves = [np.asarray(x) for x in jax.tree.leaves(s)]
        if not leaves or any(x.ndim == 0 for x in leaves):
            raise ValueError(f"shard {k}: every leaf must be an array with a leading row axis")
        rows = {x.shape[0] for x in leaves}
        if len(rows) != 1:
            raise ValueError(f"shard {k}: its arrays have different numbers of rows {sorted(rows)}")
        if rows == {0}:
            raise ValueError(f"shard {k} is empty (0 rows): every shard needs data")
        ref = [np.asarray(x) for x in jax.tree.leaves(shards[0])]
        for a, b in zip(leaves, ref):
            if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
                raise ValueError(f"shard {k} has an array of rows {a.shape[1:]} {a.dtype} where shard 0 has "
                                 f"{b.shape[1:]} {b.dtype}: mismatched shard structures")
        sizes.append(rows.pop())
    data = jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs], axis=0), *shards)
    ids = np.repeat(np.arange(len(shards), dtype=np.int32), sizes)
    return data, ids


def _zeros(target):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), target.example_params())


def _shard_tables(ids, K):
    sizes = np.bincount(ids, minlength=K)
    table = np.zeros((K, int(sizes.max())), np.int32)
    mask = np.zeros((K, int(sizes.max())), bool)
    for k in range(K):
        rows = np.nonzero(ids == k)[0]
        table[k, : rows.size] = rows
        mask[k, : rows.size] = True
    return table, mask


def _check_ids(ids, num_data, K=None):
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise TypeError("shard ids must be a 1-D integer array: the shard (0..K-1) of every data row")
    if ids.size != num_data:
        raise ValueError(f"the shard ids have {ids.size} entries but the data has {num_data} rows")
    K = int(ids.max()) + 1 if K is None else K
    if ids.min() < 0 or ids.max() >= K:
        raise ValueError(f"shard ids must be in 0..{K - 1}, got values in {int(ids.min())}..{int(ids.max())}")
    sizes = np.bincount(ids, minlength=K)
    if np.any(sizes == 0):
        raise ValueError(f"shard(s) {np.nonzero(sizes == 0)[0].tolist()} have no rows")
    return ids, K


def fit_conducive(target, ids, method: str = "laplace", *, key=None, start=None) -> ShardGaussians:
    """The surrogates q_k of the shards' likelihoods (see the module docstring).

    Args:
      target: a :class:`~heatbath.models.Target` (its full data; ``ids`` gives each row's shard).
      ids: (N,) shard ids 0..K-1.
      method: ``"laplace"``, ``"laplace-diag"``, ``"sgld"`` or ``"sgld-diag"``.
      key: PRNG key of the ``"sgld"`` runs (default ``key(0)``).
      start: an unconstrained starting point of the mode search (default: zeros).
    """
    if method not in CONDUCIVE_METHODS:
        raise ValueError(f"method must be one of {CONDUCIVE_METHODS}, got {method!r}")
    ids, K = _check_ids(ids, target.num_data)
    flat0, unravel = ravel_pytree(_zeros(target) if start is None else start)
    dim = flat0.shape[0]
    if method.startswith("laplace") and dim > 4096 or method == "sgld" and dim > 4096:
        raise ValueError(f"a full d x d fit with d = {dim} is too large here: use conducive='sgld-diag'")
    table, mask = _shard_tables(ids, K)
    rows = take_rows(target.data, jnp.asarray(table))  # leaves (K, Nmax, ...)
    weights = jnp.asarray(mask, flat0.dtype)
    terms = target.terms
    row0 = jax.tree.map(lambda x: x[0, :1], rows)

    def loglik(x, rows_k, w_k):
        def one(row):
            return terms(unravel(x), jax.tree.map(lambda a: a[None], row))[1]

        return jnp.sum(w_k * jax.vmap(one)(rows_k))

    def logprior(x):
        return terms(unravel(x), row0)[0]

    def objective(x, rows_k, w_k):  # log of p^(1/K) L_k
        return logprior(x) / K + loglik(x, rows_k, w_k)

    def newton(rows_k, w_k):
        vg = jax.value_and_grad(objective)

        def body(i, c):
            x, lam = c
            v, g = vg(x, rows_k, w_k)
            H = -jax.hessian(objective)(x, rows_k, w_k)
            step = jnp.linalg.solve(H + lam * jnp.eye(dim, dtype=x.dtype), g)
            x_new = x + step
            better = objective(x_new, rows_k, w_k) >= v
            better = better & jnp.all(jnp.isfinite(x_new))
            return jnp.where(better, x_new, x), jnp.where(better, lam * 0.3, lam * 10.0)

        x, _ = jax.lax.fori_loop(0, NEWTON_STEPS, body, (flat0, jnp.asarray(1.0, flat0.dtype)))
        g = jax.grad(objective)(x, rows_k, w_k)
        H = -jax.hessian(objective)(x, rows_k, w_k)
        # The Newton decrement sqrt(g' H^-1 g): the distance to the mode in local sds.
        dec = jnp.sqrt(jnp.abs(jnp.dot(g, jnp.linalg.solve(H + 1e-12 * jnp.eye(dim, dtype=x.dtype), g))))
        return x, dec

    modes, decrement = jax.jit(jax.vmap(newton))(rows, weights)
    decrement = np.asarray(decrement)
    bad = np.nonzero(~(decrement < 0.1))[0]
    if bad.size:
        warnings.warn(f"fit_conducive: the mode search of shard(s) {bad.tolist()} did not converge (Newton decrement "
                      f"{decrement[bad].round(3).tolist()} local sds): their surrogates are rough", RuntimeWarning,
                      stacklevel=3)
    diag = method.endswith("diag")
    if method.startswith("laplace"):
        def laplace(x, rows_k, w_k):
            g = jax.grad(loglik)(x, rows_k, w_k)
            H = -jax.hessian(loglik)(x, rows_k, w_k)
            if diag:
                lam = jnp.diag(H)
                return g + lam * x, lam
            return g + H @ x, H

        eta, prec = jax.jit(jax.vmap(laplace))(modes, rows, weights)
    else:
        key = jax.random.key(0) if key is None else key
        eta, prec = jax.jit(jax.vmap(_langevin_fit(objective, logprior, K, dim, diag)))(
            modes, rows, weights, jax.random.split(key, K))
    eta, prec = np.asarray(eta, np.float64), np.asarray(prec, np.float64)
    if not (np.all(np.isfinite(eta)) and np.all(np.isfinite(prec))):
        raise ValueError(f"fit_conducive({method!r}): non-finite surrogate (a shard's likelihood has no usable mode "
                         "or curvature); try another method or check the model")
    return ShardGaussians(eta, prec, method)


def _langevin_fit(objective, logprior, K, dim, diag):
    """The "sgld" surrogate of one shard: moments of an unadjusted Langevin run on p^(1/K) L_k."""

    def fit(x0, rows_k, w_k, key):
        H = -jax.hessian(objective)(x0, rows_k, w_k)
        lmax = jnp.max(jnp.linalg.eigvalsh(H))
        h = 0.1 / jnp.maximum(lmax, 1e-12)
        grad = jax.grad(objective)
        burn = LANGEVIN_STEPS // 4

        def body(c, k):
            x, s1, s2, i = c
            x = x + h * grad(x, rows_k, w_k) + jnp.sqrt(2 * h) * jax.random.normal(k, x.shape, x.dtype)
            keep = (i >= burn).astype(x.dtype)
            return (x, s1 + keep * x, s2 + keep * jnp.outer(x, x), i + 1), None

        z = jnp.zeros((dim,), x0.dtype)
        (x, s1, s2, _), _ = jax.lax.scan(body, (x0, z, jnp.zeros((dim, dim), x0.dtype), 0),
                                         jax.random.split(key, LANGEVIN_STEPS))
        n = LANGEVIN_STEPS - burn
        m = s1 / n
        C = s2 / n - jnp.outer(m, m)
        Pp = -jax.hessian(logprior)(m)
        gp = jax.grad(logprior)(m)
        if diag:
            P = 1.0 / jnp.diag(C)
            lam = P - jnp.diag(Pp) / K
            return P * m - (gp + jnp.diag(Pp) * m) / K, lam
        P = jnp.linalg.inv(C)
        return P @ m - (gp + Pp @ m) / K, P - Pp / K

    return fit


def prepare(target, sampler, batching, key):
    """The sampler ``hb.sample`` runs: an FSGLD's surrogates fitted (method named) and checked
    against the rounds' shards; a federated sampler without federated rounds refused. ``key``: a
    PRNG key, or a function returning one (derived only when a surrogate is fitted)."""
    federated_sampler = "batch_info" in sampler.uses and sampler.name.split("-")[0] in ("dsgld", "fsgld")
    if not federated_sampler:
        return sampler
    if batching.name != "federated":
        raise ValueError(f"{sampler.name} runs on federated rounds: pass batching=hb.drivers.batching.federated("
                         "shard_ids, local_steps=T)")
    ids = np.asarray(batching.shards)
    K = int(batching.params["num_shards"])
    if needs_fit(sampler):
        conducive = fit_conducive(target, ids, sampler.hyperparameters["conducive"], key=key() if callable(key) else key)
        sampler = sampler.rebuild(conducive=conducive)
    q = sampler.hyperparameters.get("conducive")
    if isinstance(q, ShardGaussians):
        dim = ravel_pytree(_zeros(target))[0].shape[0]
        if q.num_shards != K or q.dim != dim:
            raise ValueError(f"the conducive surrogates are for {q.num_shards} shards of dimension {q.dim}; the run has "
                             f"{K} shards and {dim} parameters")
    return sampler


def resolve_shards(model_or_target, data, batching):
    """(data, batching) with ``federated("name")`` resolved: the shard ids read from the model
    argument ``data["name"]``, which the model keeps only if its signature takes it."""
    from heatbath.drivers.batching import resolve_named

    if batching.name != "federated" or not isinstance(batching.shards, tuple):
        return data, batching

    def accepts(name):
        import inspect

        try:
            params = inspect.signature(model_or_target).parameters
        except (TypeError, ValueError):
            return False
        return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())

    return resolve_named(batching, data, accepts)
