"""Markov-approximate fractional Brownian motion (Daems, Opper, Crevecoeur & Birdal, ICLR 2024).

fBM with Hurst index H is a superposition of Ornstein-Uhlenbeck processes over a continuum of
speeds; the Markov approximation keeps K of them, all driven by one Brownian motion W:

    dY_k = -gamma_k Y_k dt + dW,        k = 1..K,
    type I:   B^(t) = sum_k omega_k (Y_k(t) - Y_k(0)),  Y(0) ~ N(0, [1 / (gamma_i + gamma_j)])
              (stationary OU states: approximates the Mandelbrot-van Ness fBM, stationary increments)
    type II:  B^(t) = sum_k omega_k Y_k(t),             Y(0) = 0
              (approximates the Riemann-Liouville fBM  int_0^t (t-s)^(H-1/2) dW(s) / Gamma(H+1/2)).

Speeds are geometric, gamma_k = r^(k - (K+1)/2) with r = gamma_max^(2/(K-1)) (so gamma runs from
1/gamma_max to gamma_max). The weights omega(H) minimise the integrated error variance
int_0^T E(B_H(t) - B^(t))^2 dt over a horizon T: a quadratic  omega' A omega - 2 b' omega + c,
so omega = A^-1 b in closed form (derivations in the docstrings of :func:`omega_type1` and
:func:`omega_type2`); it is differentiable in H, which is what lets the neural-SDE method learn H.

At H = 1/2 the kernel (t-s)^0 is constant and fBM is Brownian motion: :func:`markov_fbm` then
returns the exact one-process representation gamma = [0], omega = [1] (B^ = W, either type).

Everything here is a pure function of arrays: :mod:`heatbath.kernels.noise` wraps it as a noise
source with memory, :mod:`heatbath.vi.sde` drives latent SDEs with it.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import jax.scipy.special as sp
import numpy as np

from heatbath.kernels import validate as _validate

__all__ = [
    "speeds", "omega_type1", "omega_type2", "omega", "MarkovFBM", "markov_fbm", "weights",
    "stationary_covariance", "init_ou", "ou_euler", "increment", "variance", "rl_variance",
    "mvn_variance", "check_hurst", "scaled_gammaincc", "psd_sqrt",
]

KINDS = (1, 2)
_CF_SWITCH = 10.0  # above this x, e^x Q(a, x) by its continued fraction
_CF_TERMS = 40


def check_hurst(hurst, name: str = "hurst") -> float:
    """``hurst`` as a float in the open interval (0, 1) (ValueError otherwise)."""
    return _validate.check_real(hurst, name, low=0.0, high=1.0, low_open=True, high_open=True)


def speeds(num_k: int = 5, gamma_max: float = 20.0) -> np.ndarray:
    """gamma_k = r^(k - (K+1)/2), r = gamma_max^(2/(K-1)), k = 1..K (K = 1: gamma = [1]).

    Returned as a float64 numpy array (host constants: they are not learned)."""
    num_k = _validate.check_int(num_k, "num_k", minimum=1)
    gamma_max = _validate.check_real(gamma_max, "gamma_max", low=1.0, low_open=True)
    if num_k == 1:
        return np.ones(1)
    r = gamma_max ** (2.0 / (num_k - 1))
    k = np.arange(1, num_k + 1)
    return r ** (k - (num_k + 1) / 2.0)


def scaled_gammaincc(a, x):
    """e^x Q(a, x), Q the regularised upper incomplete gamma, stable for large x.

    For x < 10: ``gammaincc(a, x) * exp(x)``; above, Legendre's continued fraction
    Gamma(a, x) = e^-x x^a / (x + 1 - a - 1 (1 - a) / (x + 3 - a - 2 (2 - a) / (x + 5 - a - ...))),
    evaluated bottom-up with a fixed depth (differentiable in a and x; e^x never overflows). Both
    branches are evaluated on clamped arguments, so the unused one cannot put NaN in gradients.
    """
    a = jnp.asarray(a)
    x = jnp.asarray(x)
    small = x < _CF_SWITCH
    xs = jnp.where(small, x, _CF_SWITCH)
    xl = jnp.where(small, _CF_SWITCH, x)
    direct = sp.gammaincc(a, xs) * jnp.exp(xs)
    tail = jnp.zeros_like(xl + a)
    for n in range(_CF_TERMS, 0, -1):
        tail = n * (n - a) / (xl + 2 * n + 1 - a - tail)
    cf = jnp.exp(a * jnp.log(xl) - sp.gammaln(a)) / (xl + 1 - a - tail)
    return jnp.where(small, direct, cf)


def omega_type2(gamma, hurst, horizon):
    """Optimal type II weights: omega = A^-1 b with, for alpha = H + 1/2 and T the horizon,

        A_ij = [T + (exp(-(g_i + g_j) T) - 1) / (g_i + g_j)] / (g_i + g_j)
             = int_0^T (T - s) e^{-(g_i + g_j) s} ds,
        b_i  = T g_i^-alpha P(alpha, g_i T) - alpha g_i^-(alpha+1) P(alpha + 1, g_i T)
             = int_0^T (T - s) s^(alpha-1) / Gamma(alpha) e^{-g_i s} ds,

    P the regularised lower incomplete gamma (Daems et al. 2024, Prop. 5). Stable for large
    g T (A and b tend to T/g - 1/g^2 and T g^-alpha - alpha g^-(alpha+1)).
    """
    g = jnp.asarray(gamma)
    dtype = jnp.result_type(g, jnp.asarray(hurst), float)
    g = g.astype(dtype)
    T = jnp.asarray(horizon, dtype)
    alpha = jnp.asarray(hurst, dtype) + 0.5
    s = g[:, None] + g[None, :]
    A = (T + jnp.expm1(-s * T) / s) / s
    b = T * g ** -alpha * sp.gammainc(alpha, g * T) - alpha * g ** -(alpha + 1) * sp.gammainc(alpha + 1, g * T)
    return _spd_solve(A, b)


def omega_type1(gamma, hurst, horizon):
    """Optimal type I weights: omega = A^-1 b with, for alpha = H + 1/2 and T the horizon,

        A_ij = [2T - (1 - e^{-g_i T}) / g_i - (1 - e^{-g_j T}) / g_j] / (g_i + g_j),
        b_i  = 2T g_i^-alpha - T^alpha / (g_i Gamma(alpha + 1))
               + g_i^-(alpha+1) (e^{-g_i T} - e^{g_i T} Q(alpha, g_i T)),

    from int_0^T Var(sum_k omega_k (Y_k(t) - Y_k(0)) - B_H(t)) dt with stationary Y and the
    Mandelbrot-van Ness kernel ((t-s)_+^(alpha-1) - (-s)_+^(alpha-1)) / Gamma(alpha); the term
    e^{gT} Q(alpha, gT) comes from int_0^T e^{gt} Q(alpha, gt) dt by parts and is evaluated by
    :func:`scaled_gammaincc` (no overflow at large g T).
    """
    g = jnp.asarray(gamma)
    dtype = jnp.result_type(g, jnp.asarray(hurst), float)
    g = g.astype(dtype)
    T = jnp.asarray(horizon, dtype)
    alpha = jnp.asarray(hurst, dtype) + 0.5
    e = -jnp.expm1(-g * T) / g  # (1 - e^{-gT}) / g
    A = (2 * T - e[:, None] - e[None, :]) / (g[:, None] + g[None, :])
    b = (2 * T * g ** -alpha - T ** alpha / (g * jnp.exp(sp.gammaln(alpha + 1)))
         + g ** -(alpha + 1) * (jnp.exp(-g * T) - scaled_gammaincc(alpha, g * T)))
    return _spd_solve(A, b)


def _spd_solve(A, b):
    """A^-1 b for the SPD Gram matrices above, after a symmetric Jacobi scaling (their diagonal
    spans orders of magnitude: 1/g_i^2 ... T/g_i)."""
    d = jax.lax.rsqrt(jnp.diag(A))
    As = A * d[:, None] * d[None, :]
    c = jax.scipy.linalg.cho_factor(As, lower=True)
    return d * jax.scipy.linalg.cho_solve(c, b * d)


def omega(gamma, hurst, horizon, kind: int = 1):
    """The optimal weights of type ``kind`` (1 or 2): :func:`omega_type1` / :func:`omega_type2`."""
    return omega_type1(gamma, hurst, horizon) if kind == 1 else omega_type2(gamma, hurst, horizon)


def stationary_covariance(gamma):
    """C_ij = 1 / (gamma_i + gamma_j): the joint stationary covariance of the K OU states."""
    g = jnp.asarray(gamma)
    return 1.0 / (g[:, None] + g[None, :])


def variance(omega_, gamma, t, kind: int = 1):
    """Var B^(t), exactly, for weights ``omega_`` (the approximation's own variance):

        type II: sum_ij w_i w_j (1 - e^{-(g_i+g_j) t}) / (g_i + g_j)
        type I:  sum_ij w_i w_j (2 - e^{-g_i t} - e^{-g_j t}) / (g_i + g_j)
    (gamma = 0 is the Brownian limit: t.)"""
    w = jnp.asarray(omega_)
    g = jnp.asarray(gamma, w.dtype)
    s = g[:, None] + g[None, :]
    if kind == 2:
        m = jnp.where(s > 0, -jnp.expm1(-s * t) / jnp.where(s > 0, s, 1.0), t)
    else:
        e = jnp.where(g > 0, -jnp.expm1(-g * t), 0.0)
        m = jnp.where(s > 0, (e[:, None] + e[None, :]) / jnp.where(s > 0, s, 1.0), t)
    return w @ m @ w


def rl_variance(hurst, t):
    """Var of Riemann-Liouville fBM: t^(2H) / (2H Gamma(H + 1/2)^2)."""
    return t ** (2 * hurst) / (2 * hurst * math.gamma(hurst + 0.5) ** 2)


def mvn_variance(hurst, t):
    """Var of Mandelbrot-van Ness fBM with the kernel ((t-s)_+^(H-1/2) - (-s)_+^(H-1/2)) / Gamma(H+1/2):
    t^(2H) / (Gamma(2H + 1) sin(pi H)) (Mandelbrot & van Ness 1968; t at H = 1/2)."""
    return t ** (2 * hurst) / (math.gamma(2 * hurst + 1) * math.sin(math.pi * hurst))


class MarkovFBM(NamedTuple):
    """A Markov approximation of fBM: speeds, the type, the horizon and how omega is found.

    ``hurst`` is a float, or None when H is learned (then :func:`weights` needs H). ``exact``:
    H = 1/2 with the one-process Brownian representation (gamma = [0], omega = [1])."""

    gamma: np.ndarray
    kind: int
    horizon: float
    hurst: Optional[float]
    exact: bool

    @property
    def num_k(self) -> int:
        return int(self.gamma.shape[0])


def markov_fbm(hurst=None, *, num_k: int = 5, gamma_max: float = 20.0, kind: int = 1,
               horizon: float = 1.0) -> MarkovFBM:
    """A checked :class:`MarkovFBM` (errors before anything is traced).

    Args:
      hurst: H in (0, 1) (fixed), or None (learned; ``weights(approx, H)`` at run time). A fixed
        H = 0.5 gives the exact Brownian representation gamma = [0], omega = [1] (B^ = W).
      num_k: K >= 1 OU processes (default 5, the paper's).
      gamma_max: the largest speed (> 1; default 20).
      kind: 1 (type I, stationary OU states; default) or 2 (type II, Y(0) = 0).
      horizon: T > 0 of the optimisation of omega (the time span the process is used on).
    """
    if hurst is not None:
        hurst = check_hurst(hurst)
    gamma = speeds(num_k, gamma_max)
    kind = _validate.check_int(kind, "kind")
    if kind not in KINDS:
        raise ValueError(f"kind must be 1 (type I) or 2 (type II), got {kind}")
    horizon = _validate.check_real(horizon, "horizon", low=0.0, low_open=True)
    if hurst == 0.5:
        return MarkovFBM(np.zeros(1), kind, horizon, 0.5, True)
    return MarkovFBM(gamma, kind, horizon, hurst, False)


def weights(approx: MarkovFBM, hurst=None, dtype=None):
    """omega for ``approx`` (at ``hurst`` when H is learned; a traced H is fine). With H fixed
    and ``hurst`` not given, omega is computed eagerly, also inside ``jit`` (a constant)."""
    if approx.exact:
        return jnp.ones(1, dtype or jnp.result_type(float))
    h = approx.hurst if hurst is None else hurst
    if h is None:
        raise ValueError("this Markov fBM learns H: pass hurst=")
    g = jnp.asarray(approx.gamma, dtype or jnp.result_type(float))
    if hurst is None:
        # H fixed: omega is a constant, evaluated now even under a trace (the incomplete gamma
        # and the 40-term continued fraction then stay out of the compiled program)
        with jax.ensure_compile_time_eval():
            return omega(g, jnp.asarray(h, g.dtype), approx.horizon, approx.kind)
    return omega(g, jnp.asarray(h, g.dtype), approx.horizon, approx.kind)


def psd_sqrt(m) -> np.ndarray:
    """A factor L with L L' = m for a symmetric PSD (possibly numerically singular) host matrix:
    V sqrt(max(lambda, 0)) from its eigendecomposition (Cholesky fails on the nearly rank-one
    OU covariances of short steps)."""
    lam, v = np.linalg.eigh(np.asarray(m, np.float64))
    return v * np.sqrt(np.clip(lam, 0.0, None))


def init_ou(key, approx: MarkovFBM, shape=(), dtype=None):
    """Y(0) with shape ``shape + (K,)``: zeros (type II, or the exact Brownian case) or a draw
    of the stationary N(0, [1 / (g_i + g_j)]) (type I), independently for each index of ``shape``."""
    dtype = dtype or jnp.result_type(float)
    k = approx.num_k
    if approx.kind == 2 or approx.exact:
        return jnp.zeros(tuple(shape) + (k,), dtype)
    chol = jnp.asarray(psd_sqrt(1.0 / (approx.gamma[:, None] + approx.gamma[None, :])), dtype)
    z = jax.random.normal(key, tuple(shape) + (k,), dtype)
    return z @ chol.T


def ou_euler(y, dw, gamma, dt, control=0.0):
    """One Euler step of dY_k = (-gamma_k Y_k + u) dt + dW for all k: ``y`` (..., K), ``dw`` and
    ``control`` (...,) broadcast over k. Returns (new y, dY)."""
    dy = (-gamma * y + jnp.asarray(control)[..., None]) * dt + jnp.asarray(dw)[..., None]
    return y + dy, dy


def increment(omega_, dy):
    """dB^ = sum_k omega_k dY_k (both types: Y(0) cancels in increments)."""
    return jnp.sum(omega_ * dy, axis=-1)
