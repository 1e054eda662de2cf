r"""Distances between two samples, or two Gaussians: W2, sliced W2, MMD, energy distance.

All in NumPy float64; the O(n^2) ones (MMD, energy) sum kernel values over blocks of rows, so
memory stays O(chunk_size^2) (blocks of low-dimensional draws take exact differences; in
higher dimension |x - y|^2 = |x|^2 + |y|^2 - 2 x.y after centring on the pooled mean).

- :func:`w2_gaussian`: closed-form 2-Wasserstein distance between Gaussians (Dowson & Landau
  1982; Givens & Shortt 1984).
- :func:`wasserstein_1d`: exact W_p between two 1-D samples via their quantile functions.
- :func:`w2`: exact in 1-D, sliced W2 (Rabin, Peyre, Delon & Bernot 2011; Bonneel et al. 2015)
  in d > 1.
- :func:`mmd`: squared maximum mean discrepancy (Gretton, Borgwardt, Rasch, Scholkopf & Smola,
  JMLR 2012), unbiased or biased.
- :func:`energy_distance`: Szekely & Rizzo's energy distance (as ``scipy.stats.energy_distance``
  in 1-D).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from heatbath.diagnostics._draws import check_finite
from heatbath.diagnostics.fssd import median_distance

__all__ = ["w2_gaussian", "wasserstein_1d", "w2", "mmd", "energy_distance", "median_distance"]

MMD_KERNELS = ("gaussian", "laplace", "imq")


def _matrix(x, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what} must hold real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{what} must be an (n,) or (n, d) array of draws, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{what} holds no draws")
    check_finite(a, what)
    return a


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = _matrix(x, "x"), _matrix(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} and {y.shape[1]}")
    return x, y


def _psd_factor(s: np.ndarray, what: str) -> np.ndarray:
    """L with L L^T = s, from a symmetric eigendecomposition (s may be singular)."""
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or not np.isfinite(s).all():
        raise ValueError(f"{what} must be a finite square matrix, got shape {s.shape}")
    if not np.allclose(s, s.T, rtol=1e-8, atol=1e-12 * max(1.0, np.abs(s).max())):
        raise ValueError(f"{what} is not symmetric")
    lam, q = np.linalg.eigh(0.5 * (s + s.T))
    if lam.min() < -1e-10 * max(1.0, abs(lam.max())):
        raise ValueError(f"{what} is not positive semi-definite (smallest eigenvalue {lam.min():.3g})")
    return q * np.sqrt(np.clip(lam, 0.0, None))


def w2_gaussian(m1, S1, m2, S2) -> float:
    r"""2-Wasserstein distance between N(m1, S1) and N(m2, S2).

    .. math::

        W_2^2 = |m_1 - m_2|^2 + \operatorname{tr} S_1 + \operatorname{tr} S_2
                - 2 \operatorname{tr}\big(S_2^{1/2} S_1 S_2^{1/2}\big)^{1/2}.

    The last trace is the nuclear norm of A^T B for any factors S1 = A A^T, S2 = B B^T (the
    singular values of A^T B are the square roots of the eigenvalues of S2^{1/2} S1 S2^{1/2}), so
    no matrix square root of a product is formed: two symmetric eigendecompositions and one SVD.
    Scalars and 1-D means are accepted (variances for d = 1).
    """
    m1, m2 = np.atleast_1d(np.asarray(m1, np.float64)), np.atleast_1d(np.asarray(m2, np.float64))
    S1, S2 = np.atleast_2d(np.asarray(S1, np.float64)), np.atleast_2d(np.asarray(S2, np.float64))
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or S1.shape != (d, d) or S2.shape != (d, d):
        raise ValueError(f"shapes disagree: m1 {m1.shape}, S1 {S1.shape}, m2 {m2.shape}, S2 {S2.shape}")
    a, b = _psd_factor(S1, "S1"), _psd_factor(S2, "S2")
    cross = np.linalg.svd(a.T @ b, compute_uv=False).sum()
    w2sq = float(np.sum((m1 - m2) ** 2) + np.trace(S1) + np.trace(S2) - 2.0 * cross)
    return math.sqrt(max(w2sq, 0.0))


def wasserstein_1d(x, y, p: float = 2.0) -> float:
    r"""Exact W_p between the empirical distributions of two 1-D samples (any sizes n, m).

    .. math:: W_p^p = \int_0^1 |F^{-1}(t) - G^{-1}(t)|^p \, dt,

    the quantile functions F^{-1}(t) = x_{(\lceil tn \rceil)} being step functions: the integral
    is a finite sum over the merged breakpoints {i/n} U {j/m}, kept as exact integers over the
    common denominator lcm(n, m).
    """
    x, y = _pair(x, y)
    if x.shape[1] != 1:
        raise ValueError(f"wasserstein_1d takes 1-D samples, got {x.shape[1]} dimensions")
    xs, ys = np.sort(x[:, 0]), np.sort(y[:, 0])
    if not p >= 1:
        raise ValueError(f"p must be >= 1, got {p!r}")
    ix, iy, widths = _coupling(xs.size, ys.size)
    return float(np.dot(widths, np.abs(xs[ix] - ys[iy]) ** p) ** (1.0 / p))


def _coupling(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The monotone coupling of n and m sorted atoms: indices into each and the mass they share.

    Breakpoints {i/n} U {j/m} as integers over lcm(n, m); on the interval ending at t the
    quantile functions take the values of atoms ceil(t n) - 1 and ceil(t m) - 1.
    """
    if n == m:
        idx = np.arange(n)
        return idx, idx, np.full(n, 1.0 / n)
    denom = math.lcm(n, m)
    t = np.union1d(np.arange(1, n + 1, dtype=np.int64) * (denom // n), np.arange(1, m + 1, dtype=np.int64) * (denom // m))
    return -(-t * n // denom) - 1, -(-t * m // denom) - 1, np.diff(t, prepend=0) / denom


def _directions(d: int, num: int, seed) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((num, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def w2(x, y, *, num_projections: int = 200, seed=0, directions=None) -> float:
    r"""W2 between two samples: exact in 1-D, sliced in d > 1.

    .. math:: SW_2^2 = \frac{1}{L}\sum_{l=1}^L W_2^2(\theta_l^\top x, \theta_l^\top y),

    theta_l uniform on the unit sphere (``num_projections`` of them from ``seed``, or given as
    ``directions``, an (L, d) array, normalised here). SW2 <= W2, and it metrises the same weak
    convergence; it is about W2 / sqrt(d) for a shift of the mean.
    """
    x, y = _pair(x, y)
    d = x.shape[1]
    if d == 1:
        return wasserstein_1d(x[:, 0], y[:, 0], 2.0)
    if directions is None:
        if isinstance(num_projections, bool) or not isinstance(num_projections, (int, np.integer)) or num_projections < 1:
            raise ValueError(f"num_projections must be a positive int, got {num_projections!r}")
        theta = _directions(d, int(num_projections), seed)
    else:
        theta = np.asarray(directions, np.float64)
        if theta.ndim != 2 or theta.shape[1] != d or not np.all(np.linalg.norm(theta, axis=1) > 0):
            raise ValueError(f"directions must be an (L, {d}) array of non-zero vectors")
        theta = theta / np.linalg.norm(theta, axis=1, keepdims=True)
    ix, iy, widths = _coupling(x.shape[0], y.shape[0])
    step = max(1, (1 << 22) // (ix.size + x.shape[0] + y.shape[0]))  # directions at a time
    sq = []
    for k in range(0, theta.shape[0], step):
        px, py = np.sort(x @ theta[k:k + step].T, axis=0), np.sort(y @ theta[k:k + step].T, axis=0)
        sq.extend(widths @ (px[ix] - py[iy]) ** 2)  # W2^2 along each direction
    return math.sqrt(math.fsum(sq) / len(sq))


def _block_sum(a: np.ndarray, b: np.ndarray, fn: Callable, chunk: int, same: bool) -> float:
    """sum_{i,j} fn(|a_i - b_j|^2) in blocks; ``same``: a is b, only upper-triangle blocks."""
    d = a.shape[1]
    direct = d <= 8
    step = max(1, int(chunk if not direct else min(chunk, math.isqrt(max(1, (1 << 22) // d)))))
    parts = []
    for i in range(0, a.shape[0], step):
        ai = a[i:i + step]
        for j in range(i if same else 0, b.shape[0], step):
            bj = b[j:j + step]
            if direct:
                diff = ai[:, None, :] - bj[None, :, :]
                d2 = np.einsum("ijk,ijk->ij", diff, diff)
            else:
                d2 = np.maximum(np.sum(ai * ai, 1)[:, None] + np.sum(bj * bj, 1)[None, :] - 2.0 * ai @ bj.T, 0.0)
                if same and i == j:
                    np.fill_diagonal(d2, 0.0)  # exact zeros (sqrt would turn rounding into 1e-8)
            parts.append((1.0 if (not same or i == j) else 2.0) * float(np.sum(fn(d2))))
    return math.fsum(parts)


def _kernel(kernel: str, h: float) -> Callable:
    if kernel == "gaussian":
        return lambda d2: np.exp(-0.5 * d2 / h**2)
    if kernel == "laplace":
        return lambda d2: np.exp(-np.sqrt(d2) / h)
    if kernel == "imq":
        return lambda d2: 1.0 / np.sqrt(1.0 + d2 / h**2)
    raise ValueError(f"kernel must be one of {MMD_KERNELS}, got {kernel!r}")


def mmd(x, y, *, kernel: str = "gaussian", bandwidth="median", unbiased: bool = True,
        chunk_size: int = 2048, seed=0) -> float:
    r"""Squared maximum mean discrepancy between two samples (Gretton et al. 2012).

    .. math::

        \mathrm{MMD}^2_u = \frac{\sum_{i \ne i'} k(x_i, x_{i'})}{n(n-1)}
                         + \frac{\sum_{j \ne j'} k(y_j, y_{j'})}{m(m-1)}
                         - \frac{2}{nm} \sum_{i,j} k(x_i, y_j)

    (unbiased, may be < 0); ``unbiased=False`` keeps the i = i', j = j' terms and divides by
    n^2 and m^2 (the V-statistic, >= 0). Kernels of r = |x - y| with bandwidth h:
    ``"gaussian"`` exp(-r^2 / 2h^2), ``"laplace"`` exp(-r / h), ``"imq"`` (1 + r^2/h^2)^(-1/2).
    ``bandwidth="median"``: the median pairwise distance of the pooled sample (on at most 1000
    points drawn with ``seed``).
    """
    x, y = _pair(x, y)
    n, m = x.shape[0], y.shape[0]
    if unbiased and (n < 2 or m < 2):
        raise ValueError("the unbiased MMD needs at least 2 draws on each side")
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise ValueError(f"bandwidth must be a positive number or 'median', got {bandwidth!r}")
        bandwidth = median_distance(np.concatenate([x, y]), seed=seed)
    h = float(bandwidth)
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"bandwidth must be positive, got {bandwidth!r}")
    fn = _kernel(kernel, h)
    centre = np.concatenate([x, y]).mean(axis=0)
    x, y = x - centre, y - centre
    kxx, kyy, kxy = (_block_sum(x, x, fn, chunk_size, True), _block_sum(y, y, fn, chunk_size, True),
                     _block_sum(x, y, fn, chunk_size, False))
    if unbiased:
        diag = float(fn(np.zeros(1))[0])
        return (kxx - n * diag) / (n * (n - 1.0)) + (kyy - m * diag) / (m * (m - 1.0)) - 2.0 * kxy / (n * m)
    return kxx / n**2 + kyy / m**2 - 2.0 * kxy / (n * m)


def energy_distance(x, y, *, chunk_size: int = 2048) -> float:
    r"""Energy distance (Szekely & Rizzo 2013), as ``scipy.stats.energy_distance`` in 1-D:

    .. math:: D = \big(2 E|X - Y| - E|X - X'| - E|Y - Y'|\big)^{1/2},

    expectations over the empirical distributions (V-statistics, all pairs). D^2 / 2 equals
    Cramer's integral of (F - G)^2 in 1-D.
    """
    x, y = _pair(x, y)
    n, m = x.shape[0], y.shape[0]
    centre = np.concatenate([x, y]).mean(axis=0)
    x, y = x - centre, y - centre
    exy = _block_sum(x, y, np.sqrt, chunk_size, False) / (n * m)
    exx = _block_sum(x, x, np.sqrt, chunk_size, True) / n**2
    eyy = _block_sum(y, y, np.sqrt, chunk_size, True) / m**2
    return math.sqrt(max(2.0 * exy - exx - eyy, 0.0))

