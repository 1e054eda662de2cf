"""The measurement behind the automatic step size: curvature and gradient-noise eigenvalues at points.

At each point (a chain's position) the top eigenvalues of S^1/2 (H + V/T) S^1/2, S^1/2 H S^1/2
and S^1/2 V S^1/2 and the bottom one of S^1/2 H S^1/2 by power iteration, H the Hessian of
-log p (Hessian-vector products on up to ``CURVATURE_ROWS`` data rows), V the covariance of the
run's own gradient estimate (``NUM_BATCHES`` minibatch gradients), S the sampler's metric (pSGLD's
RMSprop diagonal, SGHMC's inverse mass; none for SGLD). What is done with them (the step size and
the friction, and the criterion) is :mod:`heatbath.drivers.autotune`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import curvature, hashrand

__all__ = ["NUM_BATCHES", "CURVATURE_ROWS", "POWER_ITERS", "MEASURED", "curvature_rows", "measure", "host_rng"]

NUM_BATCHES = 32  # minibatch gradients per point for the noise covariance
CURVATURE_ROWS = 4096  # data rows of the Hessian-vector products (all rows when N is smaller)
POWER_ITERS = 20
MEASURED = ("lam_hv", "lam_h", "lam_v", "lam_min")


def _family(sampler) -> str:
    base = sampler.name.split("-")[0]
    if base not in ("sgld", "psgld", "sghmc"):
        raise ValueError(f"automatic settings exist for sgld, psgld and sghmc, not {sampler.name}")
    return base


def _metric(sampler, family, m2, states):
    """The diagonal metric S of the measurement (pytree like the position, leading axis chain) or None."""
    if family == "psgld":
        hp = sampler.hyperparameters
        if states is not None:
            from heatbath.kernels import preconditioners as _pre

            pre = hp.get("preconditioner") or _pre.rmsprop(hp.get("decay") or 0.99, hp.get("eps", 1e-5))
            return jax.vmap(pre.diagonal)(states.preconditioner)
        eps = hp.get("eps", 1e-5)
        return jax.tree.map(lambda v: 1.0 / (eps + jnp.sqrt(v)), m2)
    if family == "sghmc":
        mass = sampler.hyperparameters.get("mass", 1.0)
        if not isinstance(mass, (int, float)):
            raise ValueError("automatic friction needs a scalar mass; give friction= with a pytree mass")
        return None if mass == 1.0 else jax.tree.map(lambda v: jnp.full_like(v, 1.0 / mass), m2)
    return None


def _subsamples(target) -> bool:
    return not (target.minibatch_error or target.num_data <= CURVATURE_ROWS)


def host_rng(key, salt: int) -> np.random.Generator:
    """A NumPy generator seeded by ``key``'s bits (a typed key or raw uint32 data) and ``salt``."""
    bits = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.random.default_rng([int(b) for b in np.asarray(bits).ravel()] + [salt])


def _host_rows(key, N) -> np.ndarray:
    """``CURVATURE_ROWS`` distinct row indices (sorted) drawn on the host from ``key``'s bits:
    NumPy's choice without replacement costs O(rows) where ``jax.random.choice(replace=False)``
    permutes all N rows (at N = 2e6: 1.2 s per draw on the CPU) and compiles a program with
    threefry and a sort (about 0.3 s, once per N)."""
    return np.sort(host_rng(key, 0x726F7773).choice(N, CURVATURE_ROWS, replace=False)).astype(np.int32)


def _host_batches(key, N, batch_size) -> np.ndarray:
    """``NUM_BATCHES`` minibatches of ``batch_size`` row indices (with replacement, as the uniform
    batcher draws them) drawn on the host from ``key``'s bits."""
    return host_rng(key, 0x62617463).integers(0, N, (NUM_BATCHES, batch_size), dtype=np.int32)


def _take_rows(target):
    return target.data_memo("curvature-rows-take", lambda: jax.jit(
        lambda idx, data: jax.tree.map(lambda x: x[idx], data)))


def curvature_rows(target, key):
    """``(rows, count)``: the data rows curvature is measured on: all of them when N <=
    ``CURVATURE_ROWS`` (or the target cannot be minibatched), else that many drawn without
    replacement on the host with ``key`` (:func:`_host_rows`; ``target.logdensity`` rescales
    them to N)."""
    if not _subsamples(target):
        return target.data, target.num_data
    return _take_rows(target)(_host_rows(key, target.num_data), target.data), CURVATURE_ROWS


def _measurement_inputs(target, batch_size, num_chains, noisy):
    """``(key, data) -> (rows, batches, chain keys)``: the random inputs of :func:`measure`. The
    row and minibatch indices are drawn on the host and the chains' keys derived there
    (:mod:`heatbath.drivers.keys`): one compiled gather, no threefry program to compile."""
    from heatbath.drivers import keys as _keys

    N, sub = target.num_data, _subsamples(target)

    def gather(data, rows_idx, batch_idx):
        rows = None if rows_idx is None else jax.tree.map(lambda x: x[rows_idx], data)
        batches = None if batch_idx is None else jax.tree.map(lambda x: x[batch_idx], data)
        return rows, batches

    fn = target.data_memo(("measurement-inputs", N, batch_size if noisy else None, noisy, sub),
                          lambda: jax.jit(gather))

    def inputs(key, data):
        key_rows, key_batches, key_vec = (_keys.fold_in(key, i) for i in range(3))
        rows, batches = fn(data, _host_rows(key_rows, N) if sub else None,
                           _host_batches(key_batches, N, batch_size) if noisy else None)
        return rows, batches, _keys.chain_keys(key_vec, num_chains)

    return inputs


def measure(target, estimator, est_state, positions, key, batch_size, temperature, metric_of):
    """Per-chain curvature and gradient-noise eigenvalues at ``positions`` (leading axis chain).

    Returns ``(one, meta)``: ``one(p, st, k, metric_given, rows, batches)`` gives one chain's dict
    of ``lam_hv`` (top eigenvalue of S^1/2 (H + V/T) S^1/2), ``lam_h``, ``lam_v``, ``lam_min``
    (bottom eigenvalue of S^1/2 H S^1/2); ``meta`` holds the data rows and minibatches it reads
    (arguments, not constants, so that one compiled measurement serves every call), their
    counts (the per-datum gradient evaluations it costs per chain) and the chains' keys.
    """
    noisy = batch_size is not None and not target.minibatch_error
    num_chains = jax.tree.leaves(positions)[0].shape[0]
    rows, batches, vkeys = _measurement_inputs(target, batch_size, num_chains, noisy)(key, target.data)
    if rows is None:
        rows, rows_m = target.data, target.num_data
    else:
        rows_m = CURVATURE_ROWS
    one = _measure_one(target, estimator, noisy, temperature, metric_of)
    return one, {"rows": rows_m, "batches": NUM_BATCHES if noisy else 0, "vkeys": vkeys,
                 "shared": estimator.shared, "row_data": rows, "batch_data": batches, "noisy": noisy}



def _measure_one(target, estimator, noisy, temperature, metric_of, need=MEASURED):
    """One chain's measurement (see :func:`measure`), a function of its arguments only (besides
    the target's and the estimator's functions and the settings given here). ``need``: the
    eigenvalues to compute (each is a power iteration: a loop of Hessian-vector products, which
    is most of the compile time); each one's value does not depend on which others are computed."""

    def one(p, st, k, metric_given, rows, batches):
        def u(q):
            return -target.logdensity(q, rows)

        if noisy:
            grads = jax.vmap(lambda b: estimator.estimate(st, p, b)[1])(batches)
            m2 = jax.tree.map(lambda g: jnp.mean(g * g, axis=0), grads)
            v_mv = curvature.noise_matvec(grads)
        else:
            g = jax.grad(lambda q: target.logdensity(q, rows))(p)
            m2 = jax.tree.map(lambda x: x * x, g)
            v_mv = None
        metric = metric_of(m2) if metric_given is None else metric_given

        def h_mv(v):
            return curvature.hvp(u, p, v)

        def hv_mv(v):
            out = h_mv(v)
            if v_mv is not None:
                out = jax.tree.map(lambda a, b: a + b / temperature, out, v_mv(v))
            return out

        if metric is not None:
            h_mv_s, hv_mv_s = curvature.scaled(h_mv, metric), curvature.scaled(hv_mv, metric)
            v_mv_s = None if v_mv is None else curvature.scaled(v_mv, metric)
        else:
            h_mv_s, hv_mv_s, v_mv_s = h_mv, hv_mv, v_mv
        # Start vectors from hashed counters (heatbath.kernels.hashrand): any vector with a
        # component along the sought eigenvector serves, and threefry would add 0.3-0.4 s to
        # this program's compile.
        w = hashrand.words(k)

        def start(i):
            return hashrand.uniform_like(w, p, stream=i)

        out = {}
        if "lam_hv" in need:
            out["lam_hv"] = curvature.power_iteration(hv_mv_s, start(1), POWER_ITERS)[0]
        if "lam_h" in need or "lam_min" in need:
            out["lam_h"] = curvature.power_iteration(h_mv_s, start(2), POWER_ITERS)[0]
        if "lam_v" in need:
            out["lam_v"] = jnp.zeros(()) if v_mv_s is None else curvature.power_iteration(
                v_mv_s, start(3), POWER_ITERS)[0]
        if "lam_min" in need:
            out["lam_min"] = curvature.bottom_eigenvalue(h_mv_s, out["lam_h"], start(4), 30)[0]
        return out

    return one


# Estimators whose ``estimate`` depends only on the target's terms, num_data and the state (the
# centre is in the state): a compiled measurement is shared by every estimator of that name.
_STATELESS_ESTIMATORS = ("naive", "control_variates")


def _metric_settings(sampler, family):
    """What :func:`_metric` reads from the sampler when no states are given."""
    hp = sampler.hyperparameters
    if family == "psgld":
        return ("psgld", float(hp.get("eps", 1e-5)))
    if family == "sghmc":
        mass = hp.get("mass", 1.0)
        return ("sghmc", float(mass)) if isinstance(mass, (int, float)) else None
    return (family,)


@functools.partial(jax.jit, static_argnums=2)
def _group(tree, r, size):
    """Rows ``r * size`` to ``(r + 1) * size`` of every leaf (one compiled slice for every r)."""
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, r * size, size), tree)


def _measure(target, sampler, family, estimator, est_state, positions, key, batch_size, T, states=None, repeat=1,
             need=MEASURED):
    """``positions``: points with a leading axis ``repeat * chains`` (draw-major: point i belongs
    to chain i % chains), the chains' ``states`` (for pSGLD's metric) and estimator states.

    The compiled measurement is memoised on the target (by the estimator's kind, the metric's
    settings and T), so the estimator choice, the pilot and the end-of-run check of one call, and
    later calls on the same target, compile it once per shape instead of once each. ``need``
    (a subset of :data:`MEASURED`) compiles a smaller measurement, unless the full one is
    already compiled for this target (the end-of-run check after an automatic step size)."""
    metric_of = lambda m2: _metric(sampler, family, m2, None)  # noqa: E731
    one, meta = measure(target, estimator, est_state, positions, key, batch_size, T, metric_of)
    need = tuple(n for n in MEASURED if n in need)
    given = None if states is None or family != "psgld" else _metric(sampler, family, None, states)
    in_axes = (0, None if meta["shared"] else 0, 0, None if given is None else 0, None, None)
    settings = _metric_settings(sampler, family)
    if estimator.name in _STATELESS_ESTIMATORS and settings is not None:
        # Shapes (chains, batch size, rows) need no key: jit compiles once per shape.
        key_ = ("autotune-measure", estimator.name, estimator.rows_per_estimate, estimator.rows_at_init,
                estimator.refresh_every, meta["noisy"], settings, float(T), in_axes)
        if need != MEASURED and not target.has_metric_memo((key_, MEASURED)):
            one = _measure_one(target, estimator, meta["noisy"], T, metric_of, need)
        else:
            need = MEASURED
        fn = target.metric_memo((key_, need), lambda: jax.vmap(one, in_axes=in_axes))
    else:
        if need != MEASURED:
            one = _measure_one(target, estimator, meta["noisy"], T, metric_of, need)
        fn = jax.jit(jax.vmap(one, in_axes=in_axes))
    # The points in groups of one per chain (draw-major), each group with the chains' own estimator
    # states and metric: one compiled shape serves the chains' starting points, the tuning's
    # repeat * chains points and the end-of-run check (each other count of points compiled the
    # measurement again: about 1 s of a logistic regression's first call).
    chains = jax.tree.leaves(positions)[0].shape[0] // repeat
    outs = []
    for r in range(repeat):
        pos, vkeys = (positions, meta["vkeys"]) if repeat == 1 else _group((positions, meta["vkeys"]), r, chains)
        outs.append(fn(pos, est_state, vkeys, given, meta["row_data"], meta["batch_data"]))
    out = {k: np.concatenate([np.asarray(o[k], np.float64) for o in outs]) for k in outs[0]}
    # Per chain: 2 gradients per Hessian-vector product on `rows` rows; K minibatch gradients.
    loops = len({"lam_h" if n == "lam_min" else n for n in need})
    hvps = 3 * POWER_ITERS + 30 + 1 if need == MEASURED else loops * (POWER_ITERS + 1) + 31 * ("lam_min" in need)
    cost = 2.0 * hvps * meta["rows"] + meta["batches"] * (batch_size or 0)
    return out, cost


def _second_moment(target, estimator, est_state, points, key, batch_size, repeat):
    """E[g^2] of the run's gradient estimate, averaged over ``points`` (leading axis repeat * chains):
    the value an RMSprop average of the chain's gradients settles at in the typical set."""
    N = target.num_data
    noisy = batch_size is not None and not target.minibatch_error
    if noisy:
        batches = _take_rows(target)(_host_batches(key, N, batch_size), target.data)
    if not estimator.shared and repeat > 1:
        est_state = jax.tree.map(lambda x: jnp.concatenate([x] * repeat), est_state)

    def one(p, st):
        if noisy:
            grads = jax.vmap(lambda b: estimator.estimate(st, p, b)[1])(batches)
            return jax.tree.map(lambda g: jnp.mean(g * g, axis=0), grads)
        g = jax.grad(lambda q: target.logdensity(q))(p)
        return jax.tree.map(lambda x: x * x, g)

    m2 = jax.jit(jax.vmap(one, in_axes=(0, None if estimator.shared else 0)))(points, est_state)
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), m2)
