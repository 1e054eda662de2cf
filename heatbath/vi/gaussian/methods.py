"""FB-GVI and BW-SGD as :class:`~heatbath.vi.base.VIMethod`s (the update is in
:mod:`heatbath.vi.gaussian.kernel`, the result in :mod:`heatbath.vi.gaussian.approximation`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import linalg as _linalg
from heatbath.kernels import schedules as _schedules
from heatbath.kernels import validate as _validate
from heatbath.kernels.gradients import naive
from heatbath.samplers.base import check_gradient_spec
from heatbath.vi.base import VIMethod
from heatbath.vi.gaussian import stepsize as _stepsize
from heatbath.vi.gaussian.approximation import finalize
from heatbath.vi.gaussian.kernel import (
    COVARIANCES,
    MODES,
    DiagState,
    FullState,
    LowRankState,
    build_step,
)

__all__ = ["fbgvi", "bwsgd", "check_dimension", "calls_per_step", "is_gaussian_vi", "OPTIONS"]

# hb.fit(..., **options) for these methods, with their defaults.
OPTIONS = {"elbo_samples": 16, "exact": None, "keep_trace_states": False, "check": True}


# ----------------------------------------------------------------------------------------
# Constructors
# ----------------------------------------------------------------------------------------
def _check_init_cov(init_cov, cov_kind):
    """Validate ``init_cov``: None (identity), a positive scalar, a vector of variances, or
    (full covariance only) an SPD matrix. Returns ("scalar"|"vector"|"matrix", numpy value)."""
    if init_cov is None:
        return "scalar", np.asarray(1.0)
    arr = np.asarray(init_cov, dtype=np.float64)
    if arr.ndim == 0:
        v = float(arr)
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"init_cov must be a positive number (a multiple of I), got {v}")
        return "scalar", arr
    if arr.ndim == 1:
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError("init_cov given as a vector holds the initial variances: they must be finite and > 0")
        return "vector", arr
    if arr.ndim == 2:
        if cov_kind != "full":
            raise ValueError(
                f"covariance={cov_kind!r} starts from a scalar or a vector of variances, not a matrix; "
                "pass init_cov as a number or a vector"
            )
        return "matrix", _linalg.check_spd(arr, "init_cov")
    raise ValueError(f"init_cov must be a number, a vector or a matrix, got an array of shape {arr.shape}")


def _make_init(cov_kind, init_kind, init_value, rank):
    if init_kind == "matrix":
        lam0, q0 = np.linalg.eigh(init_value)

    def init(position, key=None):
        position = jnp.asarray(position)
        if position.ndim != 1:
            raise TypeError(
                "the Gaussian VI methods work on a flat parameter vector (their covariance is a matrix); "
                "run them with hb.fit, which ravels the model's parameters once"
            )
        d = position.shape[0]
        dtype = position.dtype
        step = jnp.zeros((), jnp.int32)
        if init_kind == "matrix":
            variances = None
        else:
            variances = jnp.broadcast_to(jnp.asarray(init_value, dtype), (d,))
        if cov_kind == "full":
            if init_kind == "matrix":
                return FullState(position, step, jnp.asarray(q0, dtype), jnp.asarray(lam0, dtype))
            return FullState(position, step, jnp.eye(d, dtype=dtype), variances)
        if cov_kind == "diag":
            return DiagState(position, step, variances)
        # Low rank: U must not start at 0 (a stationary point of the U-update), so it starts
        # small and random, with sigma^2 + |U_i|^2 = the initial variance on the diagonal.
        key = jax.random.key(0) if key is None else key
        z = jax.random.normal(key, (d, rank), dtype=dtype)
        u = 0.1 * jnp.sqrt(variances)[:, None] * z / math.sqrt(rank)
        scale = jnp.sqrt(jnp.maximum(variances - jnp.sum(u**2, axis=1), 0.5 * variances))
        return LowRankState(position, step, scale, u)

    return init


def _build(
    algorithm,
    step_size,
    num_steps,
    mode,
    num_mc,
    covariance,
    rank,
    antithetic,
    num_probes,
    prox_iters,
    init_cov,
    temperature,
    gradient,
    safeguard,
):
    num_steps = _validate.check_int(num_steps, "num_steps", minimum=1)
    if safeguard is not None:
        safeguard = _validate.check_bool(safeguard, "safeguard")
    if step_size is None:
        if safeguard is False:
            raise ValueError("step_size=None chooses the step size from the curvature; it cannot run with "
                             "safeguard=False: give a step size")
        h, rule = _stepsize.auto_schedule(num_steps), "auto"
    else:
        h = _schedules.as_schedule(step_size, "step_size", positive=True)
        rule = "cap" if safeguard else None
    T = _schedules.as_schedule(temperature, "temperature", positive=False)
    if mode not in MODES:
        raise ValueError(f"mode must be 'stochastic' or 'deterministic', got {mode!r}")
    num_mc = _validate.check_int(num_mc, "num_mc", minimum=1)
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
    if algorithm == "bwsgd" and covariance == "lowrank":
        raise ValueError("bwsgd supports covariance='full' or 'diag'; the low-rank variant is FB-GVI's")
    rank = _validate.check_int(rank, "rank", minimum=1)
    num_probes = _validate.check_int(num_probes, "num_probes", minimum=1)
    prox_iters = _validate.check_int(prox_iters, "prox_iters", minimum=1)
    # antithetic=None: on with the automatic step size (no gradient noise from a quadratic part
    # of V, so the run's noise ball is what the non-Gaussianity leaves), off with a given one
    antithetic = step_size is None if antithetic is None else _validate.check_bool(antithetic, "antithetic")
    init_kind, init_value = _check_init_cov(init_cov, covariance)
    spec = check_gradient_spec(naive() if gradient is None else gradient)

    hyper = dict(
        step_size=step_size,
        num_steps=num_steps,
        mode=mode,
        num_mc=num_mc,
        covariance=covariance,
        rank=rank,
        antithetic=antithetic,
        num_probes=num_probes,
        prox_iters=prox_iters,
        init_cov=init_cov,
        temperature=temperature,
        gradient=spec,
        safeguard=safeguard,
    )
    if algorithm == "bwsgd":  # bwsgd's own arguments, so that rebuild(**changes) works
        del hyper["rank"], hyper["prox_iters"]
    points = num_mc * (2 if antithetic else 1)
    name = algorithm if covariance == "full" else f"{algorithm}-{covariance}"
    if mode == "deterministic":
        name += "-det"
    ctor = fbgvi if algorithm == "fbgvi" else bwsgd
    meta = dict(hyper, rank=rank, prox_iters=prox_iters, family="gaussian_vi", algorithm=algorithm,
                init_kind=init_kind, init_value=init_value, step_rule=rule)
    return VIMethod(
        init=_make_init(covariance, init_kind, init_value, rank),
        step=build_step(algorithm, h, T, mode, num_mc, antithetic, num_probes, prox_iters, rule),
        gradient=spec,
        temperature=T,
        name=name,
        num_steps=num_steps,
        hyperparameters=meta,
        finalize=finalize,
        check=lambda dim, dtype, options: _check(meta, dim, dtype, options),
        calls_per_step=lambda dim: calls_per_step(meta, dim),
        flat=True,
        options_defaults=OPTIONS,
        rebuild=lambda **changes: ctor(**{**hyper, **changes}),
        grads_per_step=float(points) if mode == "stochastic" else float("nan"),
        gradient_at_position=False,  # gradients at draws of N(m, S), not at the mean
    )


def fbgvi(
    step_size=None,
    num_steps: int = 1000,
    *,
    mode: str = "stochastic",
    num_mc: int = 1,
    covariance: str = "full",
    rank: int = 10,
    antithetic=None,
    num_probes: int = 1,
    prox_iters: int = 2,
    init_cov=None,
    temperature=1.0,
    gradient=None,
    safeguard=None,
) -> VIMethod:
    """Forward-backward Gaussian VI (Diao, Balasubramanian, Chewi & Salim, ICML 2023).

        m <- m - h g;   S_half = (I - h H) S (I - h H);
        S <- (S_half + 2hT I + (S_half (S_half + 4hT I))^(1/2)) / 2,

    g = E grad V, H = E hess V under N(m, S) (see the module docstring for the estimators and
    the covariance structures). Run it with :func:`heatbath.fit`.

    Args:
      step_size: h > 0, a number or a schedule of the step count. On a Gaussian target the
        method converges to the exact (mu, A^-1) for every h < 1/lambda_max(A). None (the
        default): automatic, h_t = 0.5 / rho_t with rho_t the spectral radius of the step's
        estimate of E hess V, times a factor that decays from 1 to 0.1 over the second half of
        the run (:mod:`heatbath.vi.gaussian.stepsize`); the trace's ``step_size`` shows it.
      num_steps: iterations :func:`heatbath.fit` runs (default 1000).
      mode: ``"stochastic"`` (``num_mc`` draws per step, SFB-GVI) or ``"deterministic"``
        (cubature + Stein's identity, 2k gradient calls per step, exact for Gaussian targets).
      num_mc: draws per step in stochastic mode.
      covariance: ``"full"`` (small d), ``"diag"`` or ``"lowrank"`` (diagonal + rank ``rank``;
        large d, Hessian-vector products only).
      rank: r for ``covariance="lowrank"``.
      antithetic: also use the mirror image 2m - X of each draw (unbiased; exact expectations
        for quadratic V; doubles the per-step cost). Default None: on with ``step_size=None``
        (measured: without it the automatic run ends 0.1-0.3 sd of q from the fixed point on a
        logistic regression, with it < 0.01 sd), off with a given step size.
      num_probes: Rademacher probes for the Hutchinson Hessian diagonal (diag, lowrank).
      prox_iters: fixed-point sweeps of the low-rank proximal step.
      init_cov: the initial covariance: None (I, the paper's choice), a positive number c (c I),
        a vector of variances, or an SPD matrix (full only). A non-PD matrix is a ValueError.
      temperature: T >= 0; the target is pi^(1/T) (T = 1: the posterior).
      gradient: the gradient estimator of log p~ (``"naive"``, ``"cv"`` or a spec from
        :mod:`heatbath.kernels.gradients`).
      safeguard: with a given step size, True caps it at 0.5 / rho_t (the stability bound,
        measured every step); default None: off for a given step size (it runs as given), on
        for ``step_size=None``.

    :func:`heatbath.fit` checks the result's stationarity at the end (``q.converged``,
    ``q.diagnosis``; :mod:`heatbath.vi.gaussian.convergence`) and warns when it is not met.
    """
    return _build(
        "fbgvi", step_size, num_steps, mode, num_mc, covariance, rank, antithetic, num_probes,
        prox_iters, init_cov, temperature, gradient, safeguard,
    )


def bwsgd(
    step_size=None,
    num_steps: int = 1000,
    *,
    mode: str = "stochastic",
    num_mc: int = 1,
    covariance: str = "full",
    antithetic=None,
    num_probes: int = 1,
    init_cov=None,
    temperature=1.0,
    gradient=None,
    safeguard=None,
) -> VIMethod:
    """Bures-Wasserstein SGD (Lambert, Chewi, Bach, Bonnabel & Rigollet, NeurIPS 2022).

        m <- m - h g;   S <- (I - h (H - T S^-1)) S (I - h (H - T S^-1)),

    the explicit BW gradient step, FB-GVI's baseline. Its covariance iteration is unstable for
    h > 1/lambda_max(hess V). ``covariance`` is ``"full"`` or ``"diag"``; the other arguments
    (``step_size=None`` and ``safeguard`` included) are as in :func:`fbgvi`.
    """
    return _build(
        "bwsgd", step_size, num_steps, mode, num_mc, covariance, 1, antithetic, num_probes, 1,
        init_cov, temperature, gradient, safeguard,
    )


# ----------------------------------------------------------------------------------------
# What the driver needs to know
# ----------------------------------------------------------------------------------------
def is_gaussian_vi(method) -> bool:
    """True for a method built by :func:`fbgvi` or :func:`bwsgd`."""
    return isinstance(method, VIMethod) and method.hyperparameters.get("family") == "gaussian_vi"


def check_dimension(method, dim: int) -> None:
    """Check that the method's initial covariance fits d = ``dim`` parameters (before compiling).
    ``method``: the method or its ``hyperparameters``."""
    hp = getattr(method, "hyperparameters", method)
    kind, value = hp["init_kind"], hp["init_value"]
    if kind == "vector" and value.shape[0] != dim:
        raise ValueError(f"init_cov has {value.shape[0]} variances but the model has {dim} parameters")
    if kind == "matrix" and value.shape != (dim, dim):
        raise ValueError(f"init_cov must be {dim} x {dim} (the number of parameters), got {value.shape}")
    if hp["covariance"] == "lowrank" and hp["rank"] >= dim:
        raise ValueError(f"rank={hp['rank']} must be smaller than the number of parameters ({dim}); use covariance='full'")


def calls_per_step(method, dim: int) -> tuple:
    """(gradient calls, Hessian-vector products) of log p~ per step, for d = ``dim``.

    One "call" is one evaluation on the step's batch (the driver turns calls into per-datum
    counts). A full Hessian by ``jax.linearize`` costs d Hessian-vector products (JVPs of the
    gradient, each about the cost of one or two gradients). ``method``: the method or its
    ``hyperparameters``.
    """
    hp = getattr(method, "hyperparameters", method)
    cov, r = hp["covariance"], hp["rank"]
    # the step-size rule's power iteration at the mean ("diag", "lowrank")
    extra = _stepsize.POWER_ITERS + 1 if hp.get("step_rule") and cov != "full" else 0
    if hp["mode"] == "deterministic":
        k = dim + r if cov == "lowrank" else dim
        return 2 * k, extra
    points = hp["num_mc"] * (2 if hp["antithetic"] else 1)
    per_point = {"full": dim, "diag": hp["num_probes"], "lowrank": r + hp["num_probes"]}[cov]
    return points, points * per_point + extra



def _check(hp: dict, dim: int, dtype, options: dict) -> dict:
    """The options of ``hb.fit`` for these methods, checked for d = ``dim`` parameters."""
    check_dimension(hp, dim)
    elbo_samples = _validate.check_count(options["elbo_samples"], "elbo_samples", 0)
    keep = _validate.check_bool(options["keep_trace_states"], "keep_trace_states")
    check = _validate.check_bool(options["check"], "check")
    exact = options["exact"]
    if exact is not None:
        if not isinstance(exact, (tuple, list)) or len(exact) != 2:
            raise TypeError("exact must be a (mean, cov) pair of the Gaussian target in the flat unconstrained space")
        exact_mean = np.asarray(exact[0], dtype=np.float64)
        if exact_mean.shape != (dim,):
            raise ValueError(f"exact mean must have shape ({dim},), got {exact_mean.shape}")
        exact_cov = _linalg.check_spd(exact[1], "exact covariance", dim)
        exact = (jnp.asarray(exact_mean, dtype), jnp.asarray(exact_cov, dtype))
    return {"elbo_samples": elbo_samples, "exact": exact, "keep_trace_states": keep, "check": check}
