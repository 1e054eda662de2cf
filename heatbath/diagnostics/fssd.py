r"""The finite-set Stein discrepancy (Jitkrittum, Xu, Szabo, Fukumizu & Gretton, "A linear-time
kernel goodness-of-fit test", NeurIPS 2017).

With a Gaussian kernel k(x, v) = exp(-|x - v|^2 / (2 sigma^2)), score s = grad log p and J test
locations v_1..v_J, each draw gives the d x J feature

.. math::

    \xi(x, v) = s(x) k(x, v) + \nabla_x k(x, v) = k(x, v) \left(s(x) - \frac{x - v}{\sigma^2}\right),
    \qquad \tau(x) = \frac{1}{\sqrt{dJ}} [\xi(x, v_1), \ldots, \xi(x, v_J)],

whose mean is zero under p. FSSD^2 = |E tau(x)|^2, estimated in O(n J d) time by

.. math::

    \widehat{\mathrm{FSSD}^2}_V = \Big|\frac{1}{n}\sum_i \tau(x_i)\Big|^2, \qquad
    \widehat{\mathrm{FSSD}^2}_U = \frac{|\sum_i \tau(x_i)|^2 - \sum_i |\tau(x_i)|^2}{n(n-1)}

(the second, the paper's statistic, is unbiased and may be negative). Computed in NumPy float64,
in chunks of draws.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from heatbath.diagnostics._draws import as_matrix, check_finite

__all__ = ["FSSD", "fssd", "median_distance"]


class FSSD(NamedTuple):
    """FSSD estimates and the test locations and bandwidth they used."""

    fssd2: float  # biased (V) estimate of FSSD^2, >= 0
    fssd2_unbiased: float  # the unbiased U-statistic of Jitkrittum et al. (2017)
    locations: np.ndarray  # (J, d)
    bandwidth: float  # sigma of the Gaussian kernel

    @property
    def value(self) -> float:
        """sqrt of the biased estimate."""
        return math.sqrt(max(self.fssd2, 0.0))


def median_distance(x: np.ndarray, max_points: int = 1000, seed=0) -> float:
    """Median of the pairwise Euclidean distances between rows (on a subsample of ``max_points``)."""
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_points:
        x = x[rng.choice(x.shape[0], max_points, replace=False)]
    sq = np.sum(x * x, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    iu = np.triu_indices(x.shape[0], 1)
    dist = np.sqrt(d2[iu])
    dist = dist[dist > 0]
    return float(np.median(dist)) if dist.size else 1.0


def fssd(draws, scores, *, num_locations: int = 10, locations=None, bandwidth="median", seed=0,
         sample_axes: Optional[int] = None, chunk_size: int = 8192) -> FSSD:
    r"""Finite-set Stein discrepancy of ``draws`` (Gaussian kernel, linear time).

    Args:
      draws, scores: as in :func:`heatbath.diagnostics.ksd` (same shapes).
      num_locations: J, the number of test locations drawn when ``locations`` is not given.
      locations: a (J, d) array of test locations; default: J draws from the Gaussian with the
        draws' mean and covariance (the paper's initialisation, before its optional optimisation
        of the locations, which is not done here).
      bandwidth: sigma, or ``"median"`` (median pairwise distance of the draws).
      seed: seeds the locations (NumPy ``default_rng``) and the median subsample.
      chunk_size: draws processed at a time (memory O(chunk_size J d)).

    Returns:
      :class:`FSSD` ``(fssd2, fssd2_unbiased, locations, bandwidth)``.
    """
    x, lead = as_matrix(draws, sample_axes, "draws")
    s, lead_s = as_matrix(scores, sample_axes, "scores")
    if x.shape != s.shape or lead != lead_s:
        raise ValueError(f"draws and scores have different shapes: {lead} x {x.shape[1]} vs {lead_s} x {s.shape[1]}")
    check_finite(x, "draws")
    check_finite(s, "scores")
    n, d = x.shape
    if n < 2:
        raise ValueError("fssd needs at least 2 draws")
    rng = np.random.default_rng(seed)
    if locations is None:
        if isinstance(num_locations, bool) or not isinstance(num_locations, (int, np.integer)) or num_locations < 1:
            raise ValueError(f"num_locations must be a positive int, got {num_locations!r}")
        cov = np.atleast_2d(np.cov(x, rowvar=False)) + 1e-12 * np.eye(d)
        v = rng.multivariate_normal(x.mean(axis=0), cov, size=int(num_locations), method="eigh")
    else:
        v = np.asarray(locations, dtype=np.float64)
        v = v.reshape(-1, 1) if v.ndim == 1 and d == 1 else v
        if v.ndim != 2 or v.shape[1] != d or v.shape[0] < 1:
            raise ValueError(f"locations must be a (J, {d}) array, got shape {np.shape(locations)}")
        check_finite(v, "locations")
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise ValueError(f"bandwidth must be a positive number or 'median', got {bandwidth!r}")
        bandwidth = median_distance(x, seed=seed)
    sigma = float(bandwidth)
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"bandwidth must be positive, got {bandwidth!r}")
    num_loc = v.shape[0]
    total = np.zeros((num_loc, d))
    sq_norms = []
    for start in range(0, n, max(1, int(chunk_size))):
        xb, sb = x[start:start + chunk_size], s[start:start + chunk_size]
        diff = xb[:, None, :] - v[None, :, :]  # (b, J, d)
        k = np.exp(-0.5 * np.sum(diff * diff, axis=2) / sigma**2)  # (b, J)
        tau = k[:, :, None] * (sb[:, None, :] - diff / sigma**2)  # (b, J, d), unscaled
        total += tau.sum(axis=0)
        sq_norms.append(np.einsum("bjd,bjd->b", tau, tau))
    scale = 1.0 / (d * num_loc)
    sum_sq = math.fsum(np.concatenate(sq_norms)) * scale
    norm_total = float(np.sum(total * total)) * scale
    return FSSD(
        fssd2=norm_total / n**2,
        fssd2_unbiased=(norm_total - sum_sq) / (n * (n - 1.0)),
        locations=v,
        bandwidth=sigma,
    )
