"""Did Gaussian VI converge? The stationarity of N(m, S) for KL(q || pi), measured.

FB-GVI and BW-SGD stop at a stationary point of F(q) = KL(q || pi) over Gaussians,
pi ~ exp(-V / T), where (full covariance)

    E_q grad V = 0      and      E_q hess V = T S^-1.

Both are measured at the returned q on the full data, with antithetic pairs of draws
m +- B eps (exact for a quadratic V, unbiased otherwise):

- ``mean_offset``: sqrt(g' S g) / T with g = E_q grad V: how far the mean is from where
  the method is going, in standard deviations of q (a Mahalanobis distance: one Newton step
  on the mean, with S / T as the inverse Hessian). The Monte Carlo noise of g inflates it by
  ``mean_offset_noise`` (its expected size with g = 0), which is subtracted in quadrature.
- ``precision_error``: the largest |eigenvalue - 1| of S^(1/2) (E_q hess V) S^(1/2) / T: 0.1
  means the sds are within about 5% of the fixed point in every direction (full covariance;
  for ``"diag"``, the same coordinatewise: the mean-field fixed point s_i = T / E hess_ii; not
  defined for ``"lowrank"``, whose fixed point is that of a restricted family).
- ``stability``: h rho(E_q hess V) at the end (rho: the spectral radius), the step size against
  the bound FB-GVI's theory asks for (h < 1 / lambda_max); above 1 a run can diverge or
  oscillate.
- ``elbo_change`` (+- ``elbo_change_se``): the change of the ELBO trace (common random
  numbers) over its last fifth, when the trace has one.

``converged``: finite, ``mean_offset`` < ``MEAN_TOL`` (0.1 sd) and ``precision_error`` <
``PRECISION_TOL`` (0.1) where defined. A stochastic run with a constant step ends in a noise
ball around the fixed point; these numbers say how large it is at the state returned.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels.gradients import minibatch_logdensity
from heatbath.vi.gaussian import kernel as _gvi
from heatbath.vi.gaussian.stepsize import spectral_radius

__all__ = ["MEAN_TOL", "PRECISION_TOL", "NUM_PAIRS", "diagnose", "message"]

MEAN_TOL = 0.1  # sds of q
PRECISION_TOL = 0.1  # relative error of the precision
NUM_PAIRS = 16  # antithetic pairs of draws of the check
_MAX_HESSIAN_DIM = 512  # d up to which the check forms E hess V (d Hessian-vector products per draw)
_POWER_ITERS = 20


def _cov_times(state, v):
    """S v without forming S."""
    if isinstance(state, _gvi.FullState):
        return state.eigvecs @ (state.eigvals * (state.eigvecs.T @ v))
    if isinstance(state, _gvi.DiagState):
        return state.variance * v
    return state.scale**2 * v + state.factor @ (state.factor.T @ v)


def _build(flat_target, kind, with_hessian):
    logdensity = minibatch_logdensity(flat_target.terms, flat_target.num_data)
    grad_v = jax.grad(lambda x, data: -logdensity(x, data))

    def point(x, data):
        if with_hessian:
            return grad_v(x, data), jax.hessian(lambda y: -logdensity(y, data))(x)
        return grad_v(x, data), None

    def check(state, eps, data):
        m = state.position
        dx = _gvi.affine(state, eps) - m
        xs = jnp.concatenate([m + dx, m - dx], axis=0)
        g, h = jax.lax.map(lambda x: point(x, data), xs)
        p = eps.shape[0]
        g_pairs = 0.5 * (g[:p] + g[p:])
        g_mean = jnp.mean(g_pairs, axis=0)
        dev = g_pairs - g_mean
        noise2 = jnp.sum(jax.vmap(lambda u: u @ _cov_times(state, u))(dev)) / (p * (p - 1))
        out = {"g_s_g": g_mean @ _cov_times(state, g_mean), "noise2": noise2,
               "lp": -jnp.mean(jax.vmap(lambda x: -logdensity(x, data))(xs))}
        if with_hessian:
            hbar = jnp.mean(h, axis=0)
            hbar = 0.5 * (hbar + hbar.T)
            eig = jnp.linalg.eigvalsh(hbar)
            out["rho"] = jnp.maximum(jnp.abs(eig[0]), jnp.abs(eig[-1]))
            if kind == "full":
                b = state.eigvecs * jnp.sqrt(state.eigvals)
                out["precision_eigs"] = jnp.linalg.eigvalsh(b.T @ hbar @ b)
            elif kind == "diag":
                out["precision_eigs"] = state.variance * jnp.diagonal(hbar)
        else:
            out["rho"] = spectral_radius(lambda v: jax.jvp(lambda y: grad_v(y, data), (m,), (v,))[1],
                                         jnp.ones_like(m) / jnp.sqrt(m.shape[0]), _POWER_ITERS)
        return out

    return jax.jit(check)


def _kind(state):
    return {_gvi.FullState: "full", _gvi.DiagState: "diag", _gvi.LowRankState: "lowrank"}[type(state)]


def _trend(values) -> dict:
    values = None if values is None else np.asarray(values, np.float64)
    if values is None or values.size < 10 or not np.all(np.isfinite(values)):
        return {"elbo_change": None, "elbo_change_se": None}
    k = max(2, values.size // 5)
    last, before = values[-k:], values[-2 * k:-k]
    return {"elbo_change": float(last.mean() - before.mean()),
            "elbo_change_se": float(np.sqrt(np.var(last, ddof=1) / k + np.var(before, ddof=1) / k))}


def diagnose(flat_target, state, key, temperature: float, step_size: float, trace=None,
             num_pairs: int = NUM_PAIRS) -> dict:
    """The convergence check of a Gaussian VI state (flat target; see the module docstring)."""
    kind = _kind(state)
    dim = int(state.position.shape[-1])
    with_hessian = kind != "lowrank" and dim <= _MAX_HESSIAN_DIM
    fn = flat_target.memo(("gvi-check", kind, with_hessian), lambda: _build(flat_target, kind, with_hessian))
    eps = jax.random.normal(key, (num_pairs, _gvi.num_factor_columns(state)), dtype=state.position.dtype)
    out = jax.device_get(fn(state, eps, flat_target.data))
    T = float(temperature) if temperature > 0 else 1.0
    raw = float(np.sqrt(max(float(out["g_s_g"]), 0.0))) / T
    noise = float(np.sqrt(max(float(out["noise2"]), 0.0))) / T
    offset = float(np.sqrt(max(raw**2 - noise**2, 0.0)))
    prec = out.get("precision_eigs")
    prec_err = None if prec is None else float(np.max(np.abs(np.asarray(prec, np.float64) / T - 1.0)))
    rho = float(out["rho"])
    d = {
        "mean_offset": offset, "mean_offset_raw": raw, "mean_offset_noise": noise, "precision_error": prec_err,
        "spectral_radius": rho, "step_size": float(step_size), "stability": float(step_size) * rho,
        **_trend(None if trace is None else trace.get("elbo")),
        "mean_tol": MEAN_TOL, "precision_tol": PRECISION_TOL, "num_pairs": int(num_pairs),
        "cost": float(2 * num_pairs * flat_target.num_data * (1 + (2 * dim if with_hessian else 0))
                      + (0 if with_hessian else 2 * _POWER_ITERS * flat_target.num_data)),
    }
    finite = bool(np.isfinite(raw) and np.isfinite(rho) and (prec_err is None or np.isfinite(prec_err)))
    reasons = []
    if not finite:
        reasons.append("non-finite expectations of grad V or hess V under q")
    else:
        if offset >= MEAN_TOL:
            reasons.append(f"the mean is {offset:.3g} sd of q from stationary (E_q grad V != 0; tolerance {MEAN_TOL:g})")
        if prec_err is not None and prec_err >= PRECISION_TOL:
            reasons.append(f"the covariance is off: S^(1/2) E_q[hess V] S^(1/2) / T has an eigenvalue {prec_err:.3g} "
                           f"from 1 (tolerance {PRECISION_TOL:g})")
    d["converged"] = finite and not reasons
    d["reason"] = "; ".join(reasons)
    return d


def message(name: str, num_steps: int, d: dict) -> str:
    """The warning for an unconverged run."""
    extra = ""
    if d.get("elbo_change") is not None:
        extra = f"; the ELBO changed by {d['elbo_change']:+.3g} (+- {d['elbo_change_se']:.2g}) over the last fifth"
    fix = "more num_steps"
    if d["stability"] > 1.0:
        fix = (f"a smaller step size (h rho(E hess V) = {d['stability']:.3g} > 1, outside the stable range h < "
               f"1/lambda_max = {1.0 / d['spectral_radius']:.3g}; step_size=None chooses the step from it)")
    return (f"{name} did not converge in {num_steps} steps: {d['reason']}{extra}. Use {fix}, antithetic=True or a "
            "larger num_mc (less noise), or a decaying step size")
