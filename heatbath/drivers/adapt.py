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
tuned again there, in a second tuning pilot of half the first one's length; its points may open
another window (SUSPECT = 4.0  # a pilot point variance off by more than this factor opens a window
ROUNDS = 3 at most, each as long as the first). A posterior the Laplace metric
already fits keeps it: no window, or a window whose S is near I was warmup, nothing else changes.
Reported in ``Result.tuning["metric"]["adaptation"]`` (one entry per window).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from heatbath.drivers import loop
from heatbath.drivers.keys import fold_each
from heatbath.drivers.metric import Affine

__all__ = ["DRAWS", "ADOPT", "MIN_STEPS", "ROUNDS", "suspect", "window", "refine", "compose", "positions_after",
           "last_draws"]

DRAWS = 200  # positions recorded per chain in the window
ADOPT = 2.5  # a direction's variance off by more than this factor: the metric is replaced
MIN_STEPS = 500  # a shorter window adapts nothing (short runs: the Laplace metric as it is)
SUSPECT = 4.0  # a pilot point variance off by more than this factor opens a window
ROUNDS = 3  # adaptation windows at most (each one adopted is followed by a tuning pilot)


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
    return out.carry[0], draws, alive, float(cost), out.compile_time


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
