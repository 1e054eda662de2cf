"""Gaussian variational inference in the Bures-Wasserstein space: FB-GVI and BW-SGD.

Both methods minimise F(q) = KL(q || pi) over Gaussians q = N(m, S), with pi ~ exp(-V/T)
(T = 1 the posterior, T < 1 a cold one). Write F = E_q V - T H(q): a potential energy and
T times the negative entropy. With step size h, g = E_q grad V and H = E_q hess V:

- FB-GVI (Diao, Balasubramanian, Chewi & Salim, "Forward-backward Gaussian variational
  inference via JKO in the Bures-Wasserstein space", ICML 2023): a forward (gradient) step
  on the energy, then the exact backward (JKO / proximal) step on the entropy,

      m <- m - h g,
      S_half = (I - h H) S (I - h H),
      S <- (S_half + 2 h T I + (S_half (S_half + 4 h T I))^(1/2)) / 2.

- BW-SGD (Lambert, Chewi, Bach, Bonnabel & Rigollet, "Variational inference via Wasserstein
  gradient flows", NeurIPS 2022): the explicit Bures-Wasserstein gradient step,

      m <- m - h g,    S <- (I - h (H - T S^-1)) S (I - h (H - T S^-1)).

On a Gaussian target V = (x - mu)^T A (x - mu) / 2 both have the fixed point (mu, T A^-1);
FB-GVI converges to it for every h < 1/lambda_max(A) (the backward step needs no step-size
restriction), while BW-SGD's covariance iteration is linearly unstable as soon as
h > 1/lambda_max(A) (its linearisation at the fixed point is 1 - 2 h lambda).

**The expectations.** ``mode="stochastic"`` (the paper's SFB-GVI): ``num_mc`` draws
X ~ N(m, S) (and their mirror images 2m - X with ``antithetic=True``, which keeps the
estimates unbiased and makes them exact for quadratic V) give g = mean grad V(X) and
H = mean hess V(X). With minibatch potentials V~ (``batch_size`` in :func:`heatbath.fit`)
this is the doubly stochastic version. ``mode="deterministic"``: the spherical cubature rule
with the 2k points m +- sqrt(k) b_j over the k columns b_j of a factor S = B B^T (exact for
polynomials of degree <= 3 under N(m, S)); g is the average gradient and H comes from
Stein's identity E hess V = S^-1 E[(X - m) grad V(X)^T] (symmetrised) under the same rule,
so the deterministic mode needs gradients only (2k per step) and is *exact* when V is
quadratic: on Gaussian targets it is the paper's deterministic FB-GVI. It costs O(d) gradient
calls per step: use it for small d. Its points sit sqrt(k) standard deviations from the mean,
so on non-Gaussian targets in moderate d it is biased: on German credit (d = 25, points at 5 sd)
the sds come out up to 6% low, against 2-3% for the stochastic mode.

**Covariance structures** (``covariance=``):

- ``"full"``: S = Q diag(lam) Q^T is kept as its eigen-decomposition. The backward step is a
  matrix function of S_half, so one ``eigh`` of S_half = B_h B_h^T (B_h = (I - hH) Q
  diag(lam)^(1/2), symmetric PSD by construction) gives the new S exactly, with eigenvalues
  lam' = (s + 2hT + sqrt(s (s + 4hT))) / 2 >= h T > 0: S stays symmetric positive definite
  by construction (the info field ``min_variance`` reports lam_min). The stochastic Hessian
  is ``jax.linearize`` of the gradient applied to the d basis vectors (d Hessian-vector
  products per draw). A d x d covariance is inherently flat: these methods work on a flat
  parameter vector, and :func:`heatbath.fit` ravels the model's pytree *once* outside the
  loop (``jax.flatten_util.ravel_pytree``) and unravels inside the log density and for
  ``constrain``.
- ``"diag"`` (mean field, for large d): S = diag(s). The Bures-Wasserstein gradient projected
  on diagonal Gaussians is coordinatewise, so the update is FB-GVI (or BW-SGD) per coordinate
  with H_ii = E d^2 V / d x_i^2, estimated by Hutchinson's z * (H z) with ``num_probes``
  Rademacher probes (one Hessian-vector product each). Fixed point on a Gaussian target:
  s_i = T / A_ii, the mean-field optimum.
- ``"lowrank"`` (FB-GVI only, for large d): S = diag(sigma^2) + U U^T with U of shape (d, r).
  Writing S = B B^T with the factor B = [diag(sigma), U], the Bures-Wasserstein flow is the
  Euclidean gradient flow of F(B B^T) in B; restricted to this factor family it reads
  dB/dt = -P[(H - T S^-1) B] with P keeping the diagonal of the first block. Forward step on
  the energy: sigma_half = (1 - h H_ii) sigma, U_half = U - h H U (r Hessian-vector products
  plus the Hutchinson diagonal); backward step: the proximal step of the entropy on the
  factor, B' = argmin -T log det(B' B'^T) / 2 + |B' - B_half|^2 / (2h) within the family,
  whose optimality conditions are

      sigma'_i = (|sigma_half,i| + sqrt(sigma_half,i^2 + 4 h T q_i)) / 2,   q_i = (S'^-1)_ii sigma'_i^2,
      U' = U_half + h T S'^-1 U',

  solved by ``prox_iters`` fixed-point sweeps warm-started at the current (sigma, U), with
  S'^-1 applied by Woodbury in O(d r^2). Its fixed points are exactly the stationary points
  of the KL over the family (diag(H - T S^-1) = 0 and (H - T S^-1) U = 0), whatever the
  number of sweeps; with U = 0 it reduces to the diagonal FB-GVI, and for a full square
  factor the same proximal step is exactly the FB-GVI backward step. Nothing d x d is formed
  (the deterministic mode aside). The KL over this family often has its optimum on the
  boundary sigma_i = 0 (U carrying coordinate i), where the Woodbury formulas (which divide
  by sigma^2) lose all precision; so the family is D >= 1e-3 diag(S): sigma_i^2 is floored
  at 1e-3 of the coordinate's variance sigma_i^2 + |U_i|^2 (a change of S by at most 0.1% on
  the diagonal).

This module holds the states and the update; :mod:`heatbath.vi.gaussian.methods` builds the
methods (:class:`~heatbath.vi.base.VIMethod`s whose state's ``position`` is the mean, so the
gradient estimators, SVRG's re-centring included, work unchanged, and whose
``step(key, state, batch, oracle)`` draws the points with ``key``); run them with
:func:`heatbath.fit`, which returns a :class:`heatbath.Gaussian`
(:mod:`heatbath.vi.gaussian.approximation`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from heatbath.kernels import linalg as _linalg
from heatbath.vi.gaussian import stepsize as _stepsize

__all__ = [
    "FullState",
    "DiagState",
    "LowRankState",
    "GaussianVIInfo",
    "covariance",
    "variance",
    "entropy",
    "sample_normal",
    "affine",
    "num_factor_columns",
    "jko_entropy_eigenvalues",
    "build_step",
    "stochastic_moments",
    "deterministic_moments",
    "MODES",
    "COVARIANCES",
]

MODES = ("stochastic", "deterministic")
COVARIANCES = ("full", "diag", "lowrank")


# ----------------------------------------------------------------------------------------
# States and infos
# ----------------------------------------------------------------------------------------
class FullState(NamedTuple):
    """Full covariance S = eigvecs diag(eigvals) eigvecs^T; ``position`` is the mean."""

    position: jax.Array
    step: jax.Array
    eigvecs: jax.Array
    eigvals: jax.Array


class DiagState(NamedTuple):
    """Diagonal covariance S = diag(variance); ``position`` is the mean."""

    position: jax.Array
    step: jax.Array
    variance: jax.Array


class LowRankState(NamedTuple):
    """S = diag(scale^2) + factor factor^T (factor of shape (d, r)); ``position`` is the mean."""

    position: jax.Array
    step: jax.Array
    scale: jax.Array
    factor: jax.Array


class GaussianVIInfo(NamedTuple):
    """Per-step diagnostics. ``lp``: mean log-density estimate at the step's points;
    ``grad_norm``: |E grad log p~|; ``min_variance``: smallest eigenvalue of the new S (full),
    smallest variance (diag) or smallest diagonal term sigma^2 (low rank, a lower bound on
    lam_min(S)); ``diverging``: the new state is not finite or S lost positive definiteness."""

    step_size: jax.Array
    temperature: jax.Array
    grad_norm: jax.Array
    lp: jax.Array
    diverging: jax.Array
    min_variance: jax.Array


# ----------------------------------------------------------------------------------------
# Gaussian helpers on states (pure, flat)
# ----------------------------------------------------------------------------------------
def covariance(state) -> jax.Array:
    """The dense d x d covariance of a state (forms it: for small d or inspection)."""
    if isinstance(state, FullState):
        q = state.eigvecs
        return _linalg.symmetrize((q * state.eigvals[..., None, :]) @ jnp.swapaxes(q, -1, -2))
    if isinstance(state, DiagState):
        return jax.vmap(jnp.diag)(state.variance) if state.variance.ndim > 1 else jnp.diag(state.variance)
    if isinstance(state, LowRankState):
        u = state.factor
        lr = u @ jnp.swapaxes(u, -1, -2)
        diag = state.scale**2
        return lr + (jax.vmap(jnp.diag)(diag) if diag.ndim > 1 else jnp.diag(diag))
    raise TypeError(f"not a Gaussian VI state: {type(state).__name__}")


def variance(state) -> jax.Array:
    """The marginal variances diag(S), without forming S."""
    if isinstance(state, FullState):
        return jnp.sum(state.eigvecs**2 * state.eigvals[..., None, :], axis=-1)
    if isinstance(state, DiagState):
        return state.variance
    if isinstance(state, LowRankState):
        return state.scale**2 + jnp.sum(state.factor**2, axis=-1)
    raise TypeError(f"not a Gaussian VI state: {type(state).__name__}")


def entropy(state) -> jax.Array:
    """H(N(m, S)) = (d (1 + log 2 pi) + log det S) / 2, from the state's factors."""
    d = state.position.shape[-1]
    if isinstance(state, FullState):
        logdet = jnp.sum(jnp.log(state.eigvals), axis=-1)
    elif isinstance(state, DiagState):
        logdet = jnp.sum(jnp.log(state.variance), axis=-1)
    elif isinstance(state, LowRankState):
        logdet = _linalg.dplr_logdet(state.scale**2, state.factor)
    else:
        raise TypeError(f"not a Gaussian VI state: {type(state).__name__}")
    return 0.5 * (d * (1.0 + math.log(2.0 * math.pi)) + logdet)


def num_factor_columns(state) -> int:
    """k, the number of columns of the factor B (S = B B^T): d, or d + r for low rank."""
    if isinstance(state, LowRankState):
        return state.scale.shape[-1] + state.factor.shape[-1]
    return state.position.shape[-1]


def affine(state, eps) -> jax.Array:
    """m + B eps for standard normal eps of shape (..., k): draws of N(m, S)."""
    return state.position + _apply_factor(state, eps)


def _apply_factor(state, eps):
    """B eps for the factor S = B B^T; eps of shape (..., k)."""
    if isinstance(state, FullState):
        return (eps * jnp.sqrt(state.eigvals)) @ state.eigvecs.T
    if isinstance(state, DiagState):
        return eps * jnp.sqrt(state.variance)
    d = state.scale.shape[-1]
    return eps[..., :d] * state.scale + eps[..., d:] @ state.factor.T


def sample_normal(key, state, num: int) -> jax.Array:
    """``num`` draws from N(m, S), shape (num, d)."""
    k = num_factor_columns(state)
    eps = jax.random.normal(key, (num, k), dtype=state.position.dtype)
    return state.position + _apply_factor(state, eps)


def jko_entropy_eigenvalues(s, hT):
    """The backward (JKO) step of the entropy on the eigenvalues s >= 0 of S_half:
    s' = (s + 2hT + sqrt(s (s + 4hT))) / 2, the positive root of (s' - hT)^2 = s s'."""
    s = jnp.maximum(s, 0.0)
    return 0.5 * (s + 2.0 * hT + jnp.sqrt(s * (s + 4.0 * hT)))


# ----------------------------------------------------------------------------------------
# Expectations of grad V and hess V under N(m, S)
# ----------------------------------------------------------------------------------------
def stochastic_moments(key, state, batch, grad_fn, num_mc, antithetic, num_probes):
    """Monte Carlo estimates (lp, E grad log p, curvature) at X ~ N(m, S) (+ mirrors).

    Curvature of log p: full -> the d x d Hessian; diag -> its diagonal (Hutchinson);
    lowrank -> (H U, Hutchinson diagonal). Each point costs one gradient (``linearize``'s
    primal) and one JVP of the gradient per tangent.
    """
    m = state.position
    d = m.shape[0]
    dtype = m.dtype
    key_eps, key_probe = jax.random.split(key)
    eps = jax.random.normal(key_eps, (num_mc, num_factor_columns(state)), dtype=dtype)
    dx = _apply_factor(state, eps)
    if antithetic:
        dx = jnp.concatenate([dx, -dx], axis=0)
    xs = m + dx
    num_points = xs.shape[0]

    def gfun(x):
        return grad_fn(x, batch)

    def at(x, tangents):
        (lp, g), lin = jax.linearize(gfun, x)
        hv = jax.vmap(lambda v: lin(v)[1])(tangents)  # row t = H tangent_t
        return lp, g, hv

    if isinstance(state, FullState):
        eye = jnp.eye(d, dtype=dtype)
        lp, g, h = jax.vmap(lambda x: at(x, eye))(xs)
        return jnp.mean(lp), jnp.mean(g, axis=0), _linalg.symmetrize(jnp.mean(h, axis=0))
    probes = jax.random.rademacher(key_probe, (num_points, num_probes, d), dtype=dtype)
    if isinstance(state, DiagState):
        lp, g, hz = jax.vmap(at)(xs, probes)
        hdiag = jnp.mean(probes * hz, axis=(0, 1))
        return jnp.mean(lp), jnp.mean(g, axis=0), hdiag
    r = state.factor.shape[1]
    tangents = jnp.concatenate([jnp.broadcast_to(state.factor.T, (num_points, r, d)), probes], axis=1)
    lp, g, hv = jax.vmap(at)(xs, tangents)
    hu = jnp.mean(hv[:, :r], axis=0).T  # (d, r)
    hdiag = jnp.mean(probes * hv[:, r:], axis=(0, 1))
    return jnp.mean(lp), jnp.mean(g, axis=0), (hu, hdiag)


def deterministic_moments(state, batch, grad_fn):
    """Spherical cubature (2k points m +- sqrt(k) b_j) and Stein's identity for the Hessian.

    E[(X - m) grad^T] ~= c B Gd^T with Gd[:, j] = grad(m + sqrt(k) b_j) - grad(m - sqrt(k) b_j)
    and c = 1 / (2 sqrt(k)); E hess = sym(S^-1 E[(X - m) grad^T]). Exact for quadratic V.
    """
    m = state.position
    k = num_factor_columns(state)
    eye = jnp.eye(k, dtype=m.dtype)
    cols = _apply_factor(state, eye)  # (k, d): row j = b_j
    root_k = math.sqrt(k)
    xs = jnp.concatenate([m + root_k * cols, m - root_k * cols], axis=0)
    lp, g = jax.vmap(lambda x: grad_fn(x, batch))(xs)
    gd = (g[:k] - g[k:]).T  # (d, k)
    c = 0.5 / root_k
    lp_mean, g_mean = jnp.mean(lp), jnp.mean(g, axis=0)
    if isinstance(state, FullState):
        sinv_b = state.eigvecs / jnp.sqrt(state.eigvals)  # S^-1 B = Q diag(lam^-1/2)
        return lp_mean, g_mean, _linalg.symmetrize(c * sinv_b @ gd.T)
    if isinstance(state, DiagState):
        return lp_mean, g_mean, c * jnp.diagonal(gd) / jnp.sqrt(state.variance)
    _, apply_inv = _linalg.dplr_inverse_parts(state.scale**2, state.factor)
    sinv_b = apply_inv(cols.T)  # (d, k)
    u = state.factor
    hu = 0.5 * c * (sinv_b @ (gd.T @ u) + gd @ (sinv_b.T @ u))
    hdiag = c * jnp.sum(sinv_b * gd, axis=1)
    return lp_mean, g_mean, (hu, hdiag)


# ----------------------------------------------------------------------------------------
# The transitions
# ----------------------------------------------------------------------------------------
def _full_update(state: FullState, gV, hV, h, T, algorithm):
    q, lam = state.eigvecs, state.eigvals
    b = q * jnp.sqrt(lam)  # S = B B^T
    if algorithm == "fbgvi":
        bh = b - h * (hV @ b)
        s, q_new = jnp.linalg.eigh(_linalg.symmetrize(bh @ bh.T))
        lam_new = jko_entropy_eigenvalues(s, h * T)
    else:  # bwsgd: (I - h (H - T S^-1)) B with S^-1 B = Q diag(lam^-1/2)
        bn = b - h * (hV @ b) + (h * T) * (q / jnp.sqrt(lam))
        lam_new, q_new = jnp.linalg.eigh(_linalg.symmetrize(bn @ bn.T))
        lam_new = jnp.maximum(lam_new, 0.0)
    mean = state.position - h * gV
    return FullState(mean, state.step + 1, q_new, lam_new), jnp.min(lam_new)


def _diag_update(state: DiagState, gV, hdiagV, h, T, algorithm):
    s = state.variance
    if algorithm == "fbgvi":
        s_new = jko_entropy_eigenvalues((1.0 - h * hdiagV) ** 2 * s, h * T)
    else:
        s_new = (1.0 - h * (hdiagV - T / s)) ** 2 * s
    mean = state.position - h * gV
    return DiagState(mean, state.step + 1, s_new), jnp.min(s_new)


_DIAG_FLOOR = 1e-3  # sigma_i^2 >= _DIAG_FLOOR * S_ii in the low-rank family


def _floor_scale(sigma, u):
    """Keep sigma_i^2 >= _DIAG_FLOOR * (sigma_i^2 + |U_i|^2) (see the module docstring)."""
    return jnp.maximum(sigma, math.sqrt(_DIAG_FLOOR / (1.0 - _DIAG_FLOOR)) * jnp.linalg.norm(u, axis=1))


def _lowrank_update(state: LowRankState, gV, curv, h, T, prox_iters):
    huV, hdiagV = curv
    sigma_half = jnp.abs((1.0 - h * hdiagV) * state.scale)
    u_half = state.factor - h * huV
    hT = h * T

    def sweep(carry, _):
        sigma, u = carry
        sigma = _floor_scale(sigma, u)
        inv_diag, apply_inv = _linalg.dplr_inverse_parts(sigma**2, u)
        q = inv_diag * sigma**2
        sigma_new = 0.5 * (sigma_half + jnp.sqrt(sigma_half**2 + 4.0 * hT * q))
        u_new = u_half + hT * apply_inv(u)
        return (sigma_new, u_new), None

    (sigma, u), _ = jax.lax.scan(sweep, (state.scale, state.factor), None, length=prox_iters)
    sigma = _floor_scale(sigma, u)
    mean = state.position - h * gV
    return LowRankState(mean, state.step + 1, sigma, u), jnp.min(sigma**2)


def build_step(algorithm, step_size, temperature, mode, num_mc, antithetic, num_probes, prox_iters, rule=None):
    """One FB-GVI (``algorithm="fbgvi"``) or BW-SGD step for validated hyperparameters.

    ``rule``: None (h = ``step_size``), ``"auto"`` or ``"cap"``: the step size from the
    curvature of this step (:mod:`heatbath.vi.gaussian.stepsize`).
    """

    def step(key, state, batch, grad_fn):
        h = step_size(state.step)
        T = temperature(state.step)
        if mode == "deterministic":
            lp, g, curv = deterministic_moments(state, batch, grad_fn)
        else:
            lp, g, curv = stochastic_moments(key, state, batch, grad_fn, num_mc, antithetic, num_probes)
        gV = -g  # grad_fn gives the gradient of log p~ = -V
        h = jnp.asarray(h, g.dtype)
        T = jnp.asarray(T, g.dtype)
        if rule is not None:
            full = isinstance(state, FullState)
            rho = _stepsize.curvature_radius(key, state.position, -curv if full else None, batch, grad_fn)
            h = _stepsize.apply_rule(rule, h, rho)
        if isinstance(state, FullState):
            new, min_var = _full_update(state, gV, -curv, h, T, algorithm)
        elif isinstance(state, DiagState):
            new, min_var = _diag_update(state, gV, -curv, h, T, algorithm)
        else:
            new, min_var = _lowrank_update(state, gV, (-curv[0], -curv[1]), h, T, prox_iters)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(new)]))
        diverging = jnp.logical_not(finite) | jnp.logical_not(min_var > 0)
        info = GaussianVIInfo(h, T, jnp.linalg.norm(g), lp, diverging, min_var)
        return new, info

    return step
