"""The metric refined from warmup draws: one adaptation window after the step-size tuning.

The Laplace metric (:mod:`heatbath.drivers.metric`) whitens the posterior at its joint mode. On
hierarchical models the joint mode can be far from the typical set: the group scale of a
random-intercept or panel model sits at 2-3x its posterior value there, and the curvature the
chains meet is 10-400x the mode's (``Result.tuning["measured"]``). The step is bounded by the
worst direction, so the run crawls (bulk ESS 5 in 10,000 draws).

The tuning pilot's measurement points (8 per chain, in the run's coordinates z) say when to doubt
the metric: in one that fits they have about unit variance in every coordinate; a coordinate
whose variance is outside [1 / 4, 4] (:func:`suspect`) opens a window. As in Stan's
windowed adaptation, the rest of the warmup after the step-size tuning is then an
adaptation window: K = min(200, steps) positions per chain are recorded, and their covariance in
the run's coordinates z,

    S = pooled within-chain covariance,   S_w = w S + (1 - w) diag(S),   w = n_eff / (n_eff + d),

(off-diagonals shrunk towards zero by the draws' effective size n_eff, the median bulk ESS
over coordinates summed over chains), replaces the identity when it is far from it: when
max |log eig(S_w)| > log(ADOPT) (some direction's variance is off by more than ADOPT = 2.5x). Then

    z = m + C z',   C C' = S_w,   m the draws' mean,

so theta = mu + L z = (mu + L m) + (L C) z': a new :class:`~heatbath.drivers.metric.Affine`.
The chains continue from their last draws, mapped to z', and the step size (and friction) is
tuned again there, in a second tuning pilot of half the first one's length (a chain the
warmup threw far out, :func:`lost_chains`, restarts instead); its points may open
another window (ROUNDS = 3 at most, each as long as the first). A posterior the Laplace metric
already fits keeps it: no window, or a window whose S is near I was warmup, nothing else changes
(unless it lost a chain: then the metric stays, that chain restarts and a pilot runs again).
Reported in ``Result.tuning["metric"]["adaptation"]`` (one entry per window).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from heatbath.drivers import loop, mapsearch
from heatbath.drivers.keys import fold_each
from heatbath.drivers.metric import Affine
from heatbath.kernels import tree as _tree
from heatbath.kernels.gradients import full_data_value_and_grad

__all__ = ["DRAWS", "ADOPT", "MIN_STEPS", "ROUNDS", "LOST_GAP", "LOST_RISE", "LOST_POINTS", "suspect", "window",
           "refine", "compose", "positions_after", "last_draws", "lost_chains", "starts_of", "restart_lost",
           "from_origin", "check_last_pilot", "full_data_lp"]

DRAWS = 200  # positions recorded per chain in the window
ADOPT = 2.5  # a direction's variance off by more than this factor: the metric is replaced
MIN_STEPS = 500  # a shorter window adapts nothing (short runs: the Laplace metric as it is)
SUSPECT = 4.0  # a pilot point variance off by more than this factor opens a window
ROUNDS = 3  # adaptation windows at most (each one adopted is followed by a tuning pilot)
LOST_GAP = 10.0  # a chain this many lp sds below the best one, and still climbing, is lost
LOST_RISE = 2.5  # ... and the t statistic of its log density's slope over the window above this
LOST_POINTS = 6  # window draws per half per chain at which the full-data log density is read


def _flat(position, data):
    """What the window records: the flat position (a module-level function: the compiled loop is reused)."""
    del data
    return jax.flatten_util.ravel_pytree(position)[0]


def window(target, sampler, estimator, states, positions, keys, *, steps, batch_size, batching, progress_bar):
    """Run ``steps`` warmup steps from ``states`` recording K positions per chain.

    Returns ``(states after the window, draws (chain, K, d) float64, alive chains, cost per chain,
    compile seconds)``."""
    k = min(DRAWS, steps)
    thin = steps // k
    cfg = loop.LoopConfig(
        batching=batching, batch_size=batch_size, num_draws=k, thinning=thin, num_warmup=steps - k * thin,
        desc=f"{sampler.name} warmup (metric window)", record=_flat, progress_bar=progress_bar,
        on_divergence="stop", chunk_size=k, states=states,
    )
    out = loop.run(target, sampler, estimator, positions, fold_each(keys, 29), cfg)
    if out.interrupted:
        raise KeyboardInterrupt("interrupted during the warmup (no draws were made)")
    alive = np.asarray(out.carry[3][0], bool).reshape(-1)  # on_divergence="stop": (alive, ...)
    draws = np.swapaxes(np.asarray(out.draws, np.float64), 0, 1)
    cost = loop.grad_evals_per_chain(estimator, sampler.grads_per_step, batch_size, target.num_data, steps)
    return fresh_where_dead(sampler, out.carry[0], alive, fold_each(keys, 31)), draws, alive, float(cost), \
        out.compile_time


def fresh_where_dead(sampler, states, alive, keys):
    """The states with each dead chain's replaced by a fresh one at its frozen position (its step
    count too: pSGLD's Adam bias correction and divergence-correction delay read it against the
    fresh moments, and ``noise.with_memory`` keeps it in two places). Under on_divergence="stop" only a chain's position is frozen: the rest of
    a dead chain's state (SGHMC's momentum and gradient cache, pSGLD's preconditioner) is that
    of its rejected steps, maybe non-finite, and a run that starts from these states (the main
    run after a window) would have the chain diverge at once, or (restart) stay stuck."""
    alive = np.asarray(alive, bool)
    if alive.all():
        return states
    fresh = jax.vmap(sampler.init)(states.position, keys)
    return _tree.where_leading(alive, states, fresh)


def suspect(points) -> bool:
    """Whether the tuning pilot's measurement points (P, d) in the run's coordinates doubt the metric.

    In a metric that fits, the points (spread over the pilot's second half) have about unit
    variance in every coordinate (a chi-square spread: with 32 independent points below 0.25 in
    7e-6 of coordinates, above 4 never). A coordinate whose variance is outside [1 / SUSPECT,
    SUSPECT] (the chains still drifting, or confined in a direction the metric calls wide) opens
    a window.
    """
    points = np.asarray(points, np.float64)
    if points.shape[0] < 4 or not np.all(np.isfinite(points)):
        return points.shape[0] >= 4
    var = points.var(axis=0, ddof=1)
    return bool(np.any(var > SUSPECT) or np.any(var < 1.0 / SUSPECT))


def _ess_median(draws):
    """The median bulk ESS over coordinates (summed over chains); where ArviZ gives no finite ESS
    in any coordinate, one draw per chain."""
    from heatbath.diagnostics.convergence import ess

    values = np.asarray(ess(draws), np.float64)
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float(draws.shape[0])


def refine(draws, alive):
    """``(m, C, info)`` from the window's draws (chain, K, d) of the live chains; C None to keep the metric."""
    live = draws[np.asarray(alive, bool)]
    live = live[:, np.all(np.isfinite(live), axis=(0, 2))]
    d = draws.shape[2]
    if live.shape[0] == 0 or live.shape[1] < 4:
        return None, None, {"adapted": False, "reason": "no chain survived the window"}
    n_eff = _ess_median(live)
    centred = live - live.mean(axis=1, keepdims=True)
    S = np.einsum("cki,ckj->ij", centred, centred) / max(centred.shape[0] * (centred.shape[1] - 1), 1)
    w = n_eff / (n_eff + d)
    S = w * S + (1.0 - w) * np.diag(np.diag(S))
    eig = np.linalg.eigvalsh(S)
    info = {"window_draws": int(live.shape[0] * live.shape[1]), "ess_median": n_eff, "shrinkage": float(1.0 - w),
            "eigenvalues_range": [float(eig.min()), float(eig.max())]}
    if not np.all(np.isfinite(eig)) or eig.min() <= 0.0:
        return None, None, {"adapted": False, "reason": "the window's covariance is singular", **info}
    off = float(np.max(np.abs(np.log(eig))))
    if off <= np.log(ADOPT):
        return None, None, {"adapted": False, "reason": f"the window's covariance is within {ADOPT}x of the metric's",
                            **info}
    m = live.reshape(-1, d).mean(axis=0)
    return m, np.linalg.cholesky(S), {"adapted": True, **info}


def compose(affine: Affine, m, C) -> Affine:
    """theta = mu + L (m + C z'): the refined affine map."""
    C_inv = np.linalg.solve(C, np.eye(C.shape[0]))
    return dataclasses.replace(affine, mu=affine.mu + affine.L @ m, L=affine.L @ C, L_inv=C_inv @ affine.L_inv)


def positions_after(draws, alive, old_positions_flat, old: Affine, new: Affine):
    """Each chain's last finite window draw (a dead chain: its start), in the refined coordinates
    (``new.inverse(old.forward(z))``; leading axis chain)."""
    rows = []
    for c in range(draws.shape[0]):
        z = np.asarray(old_positions_flat[c], np.float64)
        if alive[c]:
            finite = np.nonzero(np.all(np.isfinite(draws[c]), axis=1))[0]
            if finite.size:
                z = draws[c, finite[-1]]
        rows.append(_to_refined(z, old, new))
    return jax.vmap(new.unravel)(jnp.asarray(np.stack(rows), old_positions_flat.dtype))


def _to_refined(z, old: Affine, new: Affine):
    """A point z of the old coordinates in the refined ones: ``new.inverse(old.forward(z))``."""
    return new.L_inv @ (old.mu + old.L @ z - new.mu)


def last_draws(draws, alive, old: Affine, new: Affine, k: int = 8, dtype=jnp.float32):
    """The last ``k`` finite window draws of each live chain, in the refined coordinates (leading
    axis point, draw-major); None when there are none. Where the estimator choice is made again
    (:mod:`heatbath.drivers.estimator_choice`)."""
    rows = []
    for c in np.nonzero(np.asarray(alive, bool))[0]:
        finite = np.nonzero(np.all(np.isfinite(draws[c]), axis=1))[0][-k:]
        rows += [_to_refined(draws[c, i], old, new) for i in finite]
    if not rows:
        return None
    return jax.vmap(new.unravel)(jnp.asarray(np.stack(rows), dtype))


def full_data_lp(target, positions, batch_size=None):
    """``fn(x, data) -> (chain,)``: the exact log density at one flat point per chain (x: (chain,
    d)), summed over the rows in chunks of a few minibatches (:func:`mapsearch.chunk_rows`;
    ``full_data_value_and_grad``, whose unused gradient XLA drops), jitted, memoised on the target."""
    unravel = mapsearch.unravel_of(target, positions)
    chunk = mapsearch.chunk_rows(target, batch_size)

    def build():
        def lp(x, data):
            return full_data_value_and_grad(target.terms, unravel(x), data, target.num_data, chunk)[0]

        return jax.jit(jax.vmap(lp, in_axes=(0, None)))

    key = ("full_data_lp", int(mapsearch.flat_positions(positions).shape[1]), str(jax.tree.leaves(positions)[0].dtype),
           chunk)
    return target.memo(key, build)


def lost_chains(target, draws, alive, positions, batch_size):
    """Chains that the warmup so far left far below the others and still climbing.

    A tuning pilot run at settings measured at the mode (e.g. SGHMC with the friction of the mode's
    softest direction) can throw a chain far out on a network's or a hierarchy's landscape, where it
    then crawls back for the rest of the run (a 26-weight network: three of four chains at log
    density -1,114, -221 and -38 in the first window against +57, still rising after 10,000 draws,
    sd ratios up to 4.3). The full-data log density is read at ``LOST_POINTS`` draws in each half of
    the window of every live chain; with ``lp1``, ``lp2`` a chain's means over the two halves, and
    ``s`` the larger of sqrt(d / 2) (the sd of log p over a d-dimensional Gaussian) and the spread
    of the best chain's values, a chain is lost when

        max_c lp2 - lp2 > LOST_GAP * s    and    (lp2 - lp1 > s and t > LOST_RISE,  or  sd(lp) > LOST_GAP * s)

    with t the t statistic of the slope of a straight line through the chain's values against
    their draw index (ten sds below the best chain, and still rising by more than one sd and more
    than its own noise about that line allows: a chain at equilibrium in another mode does not
    rise; a steady climb is not mistaken for noise), or thrown about: its own values spread over
    more than LOST_GAP * s (at equilibrium in any near-Gaussian mode, however wide, log p has sd
    sqrt(d / 2); a pilot's unstable step throws a chain by thousands). A lost chain is
    treated as a dead one, left out of the refined metric, but restarted at the run's starting point
    (its mode, for a MAP start; :func:`starts_of`), not at the pilot's start, where an earlier pilot
    may have thrown it.

    The t statistic treats the points as independent; the window's draws are autocorrelated, so a
    chain at equilibrium far below the best one is flagged more often than on independent draws;
    it then only starts again from its own start.

    Returns ``(lost (chain,) bool, info dict, cost per chain in per-datum gradients)``.
    """
    alive = np.asarray(alive, bool)
    nc, k, d = draws.shape
    lost = np.zeros(nc, bool)
    half = k // 2
    per = min(LOST_POINTS, half)
    if per < 2 or alive.sum() < 2:
        return lost, {}, 0.0
    idx = np.concatenate([np.linspace(0, half - 1, per).round(), np.linspace(half, k - 1, per).round()]).astype(int)
    pts = draws[:, idx]  # (chain, 2 per, d)
    dtype = jax.tree.leaves(positions)[0].dtype
    fn = full_data_lp(target, positions, batch_size)  # one point per chain at a time: a step's memory
    lp = np.stack([np.asarray(fn(jnp.asarray(pts[:, j], dtype), target.data), np.float64)
                   for j in range(pts.shape[1])], axis=1)  # (chain, 2 per)
    ok = alive & np.all(np.isfinite(lp), axis=1) & np.all(np.isfinite(pts), axis=(1, 2))
    if ok.sum() < 2:
        return lost, {}, 0.0
    lp1, lp2 = lp[:, :per].mean(axis=1), lp[:, per:].mean(axis=1)
    best = int(np.argmax(np.where(ok, lp2, -np.inf)))
    s = max(np.sqrt(d / 2.0), float(lp[best, per:].std(ddof=1)))
    # the rise against its own noise: the t statistic of a straight line's slope through the
    # chain's values (the residuals about the line: a steady climb is not counted as noise)
    x = idx.astype(np.float64) - idx.mean()
    slope = lp @ x / (x @ x)
    resid = lp - lp.mean(axis=1, keepdims=True) - slope[:, None] * x
    se = np.sqrt((resid ** 2).sum(axis=1) / max(len(x) - 2, 1) / (x @ x))
    t = slope / np.maximum(se, 1e-300)
    rising = (lp2 - lp1 > s) & (t > LOST_RISE)
    # ... or thrown about: log p at equilibrium in any near-Gaussian mode, however wide, has sd
    # sqrt(d / 2); a chain whose values spread over more than LOST_GAP times s is not there
    wild = lp.std(axis=1, ddof=1) > LOST_GAP * s
    lost = ok & (lp2[best] - lp2 > LOST_GAP * s) & (rising | wild)
    info = {"lp_first_half": lp1.tolist(), "lp_second_half": lp2.tolist(), "lp_scale": s, "rise_t": t.tolist(),
            "lost_chains": np.nonzero(lost)[0].tolist()}
    return lost, info, float(lp.shape[1] * target.num_data)


def from_origin(origin_flat, origin: Affine, affine: Affine):
    """The run's starting points (chain, d), given in ``origin``'s coordinates, in ``affine``'s."""
    return np.stack([_to_refined(np.asarray(z, np.float64), origin, affine) for z in np.asarray(origin_flat)])


def starts_of(starts, lost, origin_flat, origin: Affine, old: Affine):
    """The points (chain, d) in ``old``'s coordinates the next pilot starts from when a chain is
    not alive after a window: the pilot's own start, except for a lost chain, which goes back to
    the run's starting point (its mode, for a MAP start; a pilot start may be where an earlier
    pilot had already thrown it)."""
    if not np.any(lost):
        return starts
    back = from_origin(origin_flat, origin, old)
    return np.where(np.asarray(lost, bool)[:, None], back, starts).astype(starts.dtype)


def restart_lost(target, sampler, states, points, positions, restart, keys, batch_size):
    """After the last tuning pilot, the chains it threw far out (:func:`lost_chains` on its
    measurement points) start again at ``restart`` (the run's starting points, e.g. the modes,
    in the current coordinates; a pytree with a leading chain axis) in a fresh sampler state
    (momentum drawn again, caches empty; pSGLD's RMSprop average and the step count kept).

    The windows check the pilots before them; this checks the last one, whose chains go
    straight into the sampling. ``points``: the pilot's measurement points, leading axis
    point * chain (draw-major). Returns ``(states, info, cost per chain)``.
    """
    flat = np.asarray(mapsearch.flat_positions(points), np.float64)
    nc = jax.tree.leaves(positions)[0].shape[0]
    draws = np.swapaxes(flat.reshape(-1, nc, flat.shape[1]), 0, 1)  # (chain, point, d)
    lost, info, cost = lost_chains(target, draws, np.ones(nc, bool), positions, batch_size)
    if not lost.any():
        return states, info, cost
    fresh = jax.vmap(sampler.init)(restart, fold_each(fold_each(keys, 37), 1))  # a fold no window uses
    new = jax.tree.map(lambda n, o: n.astype(o.dtype), _tree.where_leading(lost, fresh, states), states)
    keep = {k: getattr(states, k) for k in ("step", "preconditioner") if hasattr(states, k)}
    return new._replace(**keep), info, cost


def check_last_pilot(target, sampler, states, points, positions, origin_flat, origin: Affine, affine: Affine, keys,
                     batch_size, windowed: bool):
    """The last pilot's chains go straight into the sampling: :func:`restart_lost` on its points,
    where a window ran or those points doubt the metric (a run too short for a window); a lost
    chain starts again at the run's starting point. Returns ``(states, info or None, cost)``."""
    if not (windowed or suspect(np.asarray(mapsearch.flat_positions(points)))):
        return states, None, 0.0
    dtype = jax.tree.leaves(positions)[0].dtype
    restart = jax.vmap(affine.unravel)(jnp.asarray(from_origin(origin_flat, origin, affine), dtype))
    states, info, cost = restart_lost(target, sampler, states, points, positions, restart, keys, batch_size)
    return states, info or None, cost

