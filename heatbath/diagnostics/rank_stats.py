r"""Rank-normalised split R-hat and bulk ESS in NumPy, many coordinates at once.

Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), "Rank-normalization, folding, and
localization: an improved R-hat for assessing convergence of MCMC", Bayesian Analysis 16(2).
The definitions are those of ArviZ 0.23 (``arviz.rhat`` with its default ``method="rank"``,
``arviz.ess`` with ``method="bulk"``), reproduced to float64 rounding (tested against ArviZ),
for what ``hb.sample``'s end-of-run checks need: the same numbers without importing ArviZ
(several seconds of a first call) and vectorised over the coordinates.

For draws x of shape (chain, draw) per coordinate:

* split: each chain's first and last floor(n/2) draws become two chains (M = 2 x chains);
* rank-normalise: z = Phi^-1((r - 3/8) / (S + 1/4)), r the average rank of each draw among
  all S draws of that coordinate;
* R-hat of z: with W the mean of the chains' variances and B = n Var(chain means),
  R = sqrt((B / W + n - 1) / n); the rank R-hat is the larger of R(z(x_split)) and
  R(z(|x_split - median|)) (the folded draws: the tails). Needs at least two chains.
* bulk ESS of z(x_split): S / tau with tau = -1 + 2 sum_t rho_t from the multi-chain
  autocorrelations (FFT), Geyer's initial positive then initial monotone sequence, and
  tau >= 1 / log10(S).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

__all__ = ["rank_rhat", "bulk_ess", "rhat_and_bulk_ess"]


def _check(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ValueError(f"draws must have shape (chain, draw) or (chain, draw, coordinate), got {x.shape}")
    return x


def _split(x: np.ndarray) -> np.ndarray:
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)


def _average_ranks(y: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties given their average rank (scipy's
    ``method="average"``). Rows are sorted contiguously (the last axis), which is what keeps
    2,000 coordinates x 10,000 draws to about a second."""
    n = y.shape[-1]
    order = np.argsort(y, axis=-1)
    s = np.take_along_axis(y, order, axis=-1)
    idx = np.broadcast_to(np.arange(n), s.shape)
    new = np.ones(s.shape, bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    start = np.maximum.accumulate(np.where(new, idx, 0), axis=-1)
    last = np.ones(s.shape, bool)
    last[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(last, idx, n - 1)[:, ::-1], axis=-1)[:, ::-1]
    ranks = np.empty(s.shape)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=-1)
    return ranks


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Rank-normalised draws, per coordinate over all chains and draws."""
    m, n, k = x.shape
    rows = np.ascontiguousarray(np.moveaxis(x, 2, 0).reshape(k, m * n))
    r = _average_ranks(rows)
    z = ndtri((r - 0.375) / (m * n - 0.75 + 1.0))
    return np.moveaxis(z.reshape(k, m, n), 0, 2)


def _rhat_raw(z: np.ndarray) -> np.ndarray:
    n = z.shape[1]
    between = n * np.var(np.mean(z, axis=1), axis=0, ddof=1)
    within = np.mean(np.var(z, axis=1, ddof=1), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((between / within + n - 1) / n)


def rank_rhat(draws) -> np.ndarray:
    """Rank-normalised split R-hat per coordinate (``arviz.rhat``). ``draws``: (chain, draw) or
    (chain, draw, coordinate). NaN for fewer than two chains or four draws, or a non-finite column."""
    return rhat_and_bulk_ess(draws, ess=False)[0]


def _autocov(z: np.ndarray) -> np.ndarray:
    """Per chain and coordinate, the autocovariance at every lag (biased, divided by n), by FFT."""
    n = z.shape[1]
    m = 1
    while m < 2 * n:  # a power of two >= 2n: no circular wrap
        m *= 2
    zc = z - z.mean(axis=1, keepdims=True)
    f = np.fft.rfft(zc, n=m, axis=1)
    return np.fft.irfft(f * np.conjugate(f), n=m, axis=1)[:, :n] / n


def bulk_ess(draws) -> np.ndarray:
    """Bulk effective sample size per coordinate (``arviz.ess(method="bulk")``). ``draws``:
    (chain, draw) or (chain, draw, coordinate). NaN for fewer than four draws or a non-finite column."""
    return rhat_and_bulk_ess(draws, rhat=False)[1]


BLOCK_BYTES = 1 << 26  # draws of one block of coordinates (the work arrays are a few times this)


def rhat_and_bulk_ess(draws, rhat: bool = True, ess: bool = True):
    """``(rank_rhat(draws), bulk_ess(draws))``, sharing the rank normalisation of the split draws.

    Coordinates are processed in blocks of about :data:`BLOCK_BYTES` of draws, so the peak
    memory stays a small multiple of that whatever the number of draws and coordinates."""
    x = _check(draws)
    c, n, k = x.shape
    r_out, e_out = np.full(k, np.nan), np.full(k, np.nan)
    ok = np.all(np.isfinite(x), axis=(0, 1))
    if n < 4 or not ok.any():
        return r_out, e_out
    cols = np.nonzero(ok)[0]
    block = max(1, BLOCK_BYTES // (8 * c * n))
    for start in range(0, len(cols), block):
        idx = cols[start:start + block]
        s = _split(x[:, :, idx])
        z = _z_scale(s)
        if rhat and c >= 2:
            folded = np.abs(s - np.median(s.reshape(-1, s.shape[2]), axis=0))
            r_out[idx] = np.maximum(_rhat_raw(z), _rhat_raw(_z_scale(folded)))
        if ess:
            e_out[idx] = _bulk_ess_z(z)
    return r_out, e_out


def _bulk_ess_z(z: np.ndarray) -> np.ndarray:
    m, nd, kk = z.shape
    size = m * nd
    acov = _autocov(z)  # (m, nd, kk)
    mean_var = np.mean(acov[:, 0], axis=0) * nd / (nd - 1.0)
    var_plus = mean_var * (nd - 1.0) / nd
    if m > 1:
        var_plus = var_plus + np.var(np.mean(z, axis=1), axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1.0 - (mean_var[None, :] - np.mean(acov, axis=0)) / var_plus[None, :]  # (nd, kk)
    res = _taus(rho, nd)
    with np.errstate(divide="ignore", invalid="ignore"):
        res = size / np.maximum(res, 1.0 / np.log10(size))
    res[np.isnan(rho).any(axis=0)] = np.nan
    res[np.max(z, axis=(0, 1)) - np.min(z, axis=(0, 1)) < np.finfo(float).resolution] = size  # constant
    return res


def _taus(rho: np.ndarray, n: int) -> np.ndarray:
    """Geyer's initial positive and monotone sequences on each column's autocorrelations ``rho``
    (n, k; rho[0] = 1), as ArviZ sums them (ArviZ loops over the lags of one coordinate; here
    every coordinate at once: the same sums, added pairwise).

    Pair 0 is (1, rho[1]), pair j >= 1 (rho[2j], rho[2j+1]), P_j their sums. Geyer's initial
    positive sequence reads pairs j = 1, 2, ... while the previous sum is positive and 2j - 1 <
    n - 3, so it stops at J: the first j with P_j <= 0 (J = 0 when P_0 <= 0), or the last pair
    read. The initial monotone sequence replaces P_q by min(P_0, ..., P_q) for q < J. Then
    tau = -1 + 2 sum_{q < J} min(P_0..P_q) + kept, where kept is rho[2J] when P_J >= 0 or
    rho[2J] > 0 (and 1 when J = 0), else 0."""
    k = rho.shape[1]
    last = max(0, (n - 3) // 2)  # the last pair the loop can read: 2j - 1 < n - 3
    P = np.empty((last + 1, k))
    P[0] = 1.0 + rho[1]
    if last:
        P[1:] = rho[2:2 * last + 1:2] + rho[3:2 * last + 2:2]
    stop = P <= 0.0  # (pairs, k); pair 0's stop means J = 0
    J = np.where(stop.any(axis=0), np.argmax(stop, axis=0), last)
    cols = np.arange(k)
    even = np.where(J > 0, rho[2 * J, cols], 1.0)
    kept = np.where((J == 0) | (P[J, cols] >= 0.0) | (even > 0.0), even, 0.0)
    low = np.minimum.accumulate(P, axis=0)
    total = np.where(np.arange(last + 1)[:, None] < J[None, :], low, 0.0).sum(axis=0)
    return -1.0 + 2.0 * total + kept
