"""The Gaussian approximation N(m, S) that ``hb.fit`` returns for FB-GVI and BW-SGD."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import linalg as _linalg
from heatbath.kernels.gradients import minibatch_logdensity
from heatbath.kernels.validate import check_count, seed_key
from heatbath.vi.gaussian import convergence as _convergence
from heatbath.vi.gaussian import kernel as _gvi

__all__ = ["Gaussian", "finalize"]


@dataclasses.dataclass
class Gaussian:
    """The Gaussian approximation N(m, S) returned by :func:`fit`, in the unconstrained space.

    The parameters are flat: m is a vector of the d unconstrained parameters (the model's
    pytree raveled by ``jax.flatten_util.ravel_pytree``), S a d x d covariance; ``mean`` gives
    m back as the model's pytree, ``sample`` and ``to_arviz`` map draws to the constrained
    (user's) space like a :class:`Result`.

    Attributes:
      state: the method's final state (``state.position`` is m; the covariance's factors).
      trace: name -> array over the recorded steps: ``step``, ``step_size``, ``temperature``,
        ``grad_norm``, ``lp`` (mean log-density estimate at the step's points),
        ``diverging``, ``min_variance`` (SPD check), ``entropy``, ``elbo`` (Monte Carlo
        estimate of E_q log p~ + H(q) on the full data, when ``elbo_samples > 0``) and ``kl``
        (exact KL(q || N(exact)), when ``exact`` was given).
      grad_calls, hvp_calls: gradient evaluations and Hessian-vector products of the log
        density on the step's batch (MAP search for control variates excluded).
      grad_evals, hvp_evals: the same in per-datum units (rows touched), estimator
        initialisation / refreshes and a control-variates MAP search included in grad_evals.
      wall_time: seconds of the run (compile included); trace_time: seconds spent afterwards
        computing ``trace``'s entropy / ELBO / KL.
      trace_states: with ``fit(..., keep_trace_states=True)``, the method's state at every
        trace point (leading axis: trace point), e.g. to follow the moments.
      converged: the end-of-run check (:mod:`heatbath.vi.gaussian.convergence`): True when q
        is stationary (mean within 0.1 sd, precision within 10%); None when not run
        (``check=False``); ``diagnosis`` holds its numbers (and the automatic step size).
      diverged: the run met a non-finite state or a covariance that lost positive
        definiteness; a non-finite Gaussian says so in its repr and refuses to be sampled.
    """

    state: Any
    trace: dict
    grad_calls: float
    hvp_calls: float
    grad_evals: float
    hvp_evals: float
    num_data: int
    num_steps: int
    wall_time: float
    compile_time: float
    trace_time: float
    method_name: str
    target: Any = dataclasses.field(repr=False, default=None)
    unravel: Any = dataclasses.field(repr=False, default=None)
    observed_data: Optional[dict] = None
    trace_states: Any = dataclasses.field(repr=False, default=None)
    converged: Optional[bool] = None
    diagnosis: Optional[dict] = None
    diverged: bool = False

    @property
    def finite(self) -> bool:
        """Every number of the state is finite."""
        return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(self.state))

    def _need_finite(self):
        if not self.finite:
            raise FloatingPointError(
                f"this Gaussian is not finite: {self.method_name} diverged (see the warning of hb.fit and "
                "q.trace['diverging']); refit with step_size=None (automatic) or a smaller step size")

    @property
    def dim(self) -> int:
        return int(self.state.position.shape[-1])

    @property
    def mean_flat(self) -> np.ndarray:
        """m as a flat vector (unconstrained)."""
        return np.asarray(self.state.position)

    @property
    def mean(self):
        """m as the model's (unconstrained) parameter pytree."""
        return jax.device_get(self.unravel(self.state.position))

    @property
    def cov(self) -> np.ndarray:
        """The d x d covariance S (formed on request)."""
        return np.asarray(_gvi.covariance(self.state))

    @property
    def variance(self) -> np.ndarray:
        """diag(S), flat."""
        return np.asarray(_gvi.variance(self.state))

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(self.variance)

    @property
    def data_passes(self) -> float:
        return self.grad_evals / self.num_data

    def entropy(self) -> float:
        """H(q) = (d (1 + log 2 pi) + log det S) / 2."""
        return float(_gvi.entropy(self.state))

    def kl_to(self, mean, cov) -> float:
        """KL(q || N(mean, cov)) in the flat unconstrained space (exact)."""
        mean = jnp.asarray(mean, self.state.position.dtype)
        cov = jnp.asarray(_linalg.check_spd(cov, "cov", self.dim), self.state.position.dtype)
        return float(_linalg.gaussian_kl(self.state.position, _gvi.covariance(self.state), mean, cov))

    def sample(self, key, num: int, *, constrained: bool = True):
        """``num`` draws of q.

        Returns a dict name -> array (num, ...) on the constrained scale (deterministic sites
        included), like one chain of ``Result.samples``; ``constrained=False`` returns the
        unconstrained draws as the model's parameter pytree with a leading axis ``num``.
        """
        num = check_count(num, "num", 1)
        self._need_finite()
        draws = _gvi.sample_normal(seed_key(key), self.state, num)
        if not constrained:
            return jax.device_get(jax.vmap(self.unravel)(draws))
        values = jax.jit(jax.vmap(self.target.constrain_fn, in_axes=(0, None)))(draws, self.target.data)
        return {k: np.asarray(v) for k, v in jax.device_get(values).items()}

    def to_arviz(self, num_samples: int = 1000, seed=0):
        """An ArviZ object with ``num_samples`` draws of q (one chain, constrained)."""
        from heatbath.diagnostics.arviz import to_arviz

        draws = self.sample(seed, num_samples)
        return to_arviz(
            {k: v[None] for k, v in draws.items()},
            None,
            self.observed_data,
            attrs={"inference_library": "heatbath", "method": self.method_name},
        )

    def elbo(self, key=0, num_samples: int = 1000) -> float:
        """Monte Carlo ELBO E_q log p~(x) + H(q) on the full data (log p~ unnormalised)."""
        num_samples = check_count(num_samples, "num_samples", 1)
        self._need_finite()
        logdensity = minibatch_logdensity(self.target.terms, self.target.num_data)
        draws = _gvi.sample_normal(seed_key(key), self.state, num_samples)
        lps = jax.jit(jax.vmap(logdensity, in_axes=(0, None)))(draws, self.target.data)
        return float(jnp.mean(lps)) + self.entropy()

    def __repr__(self) -> str:
        status = ""
        if not self.finite:
            status = "DIVERGED: non-finite (NaN/inf) mean or covariance; "
        elif self.diverged:
            status = "DIVERGED on the way (non-finite or non-positive-definite states); "
        elif self.converged is False:
            status = "NOT CONVERGED; "
        return (
            f"Gaussian({self.method_name}: {status}d={self.dim}, {self.num_steps} steps, {self.grad_calls:g} gradient "
            f"calls + {self.hvp_calls:g} HVPs, {self.data_passes:.1f} data passes, {self.wall_time:.2f}s)"
        )


def _trace_diagnostics(flat_target, states, eps, exact):
    """Entropy, ELBO (common random numbers ``eps``) and exact KL at every recorded state."""

    def build(with_elbo, with_kl):
        logdensity = minibatch_logdensity(flat_target.terms, flat_target.num_data)

        def one(state, data, eps_, exact_):
            out = {"entropy": _gvi.entropy(state)}
            if with_elbo:
                xs = _gvi.affine(state, eps_)
                lps = jax.vmap(logdensity, in_axes=(0, None))(xs, data)
                out["elbo"] = jnp.mean(lps) + out["entropy"]
            if with_kl:
                out["kl"] = _linalg.gaussian_kl(state.position, _gvi.covariance(state), exact_[0], exact_[1])
            return out

        return jax.jit(lambda s, data, eps_, exact_: jax.lax.map(lambda st: one(st, data, eps_, exact_), s))

    flags = (eps is not None, exact is not None)
    fn = flat_target.memo(("trace", flags), lambda: build(*flags))
    return {k: np.asarray(v) for k, v in jax.device_get(fn(states, flat_target.data, eps, exact)).items()}


def finalize(run, options: dict) -> Gaussian:
    """The :class:`Gaussian` of a finished ``hb.fit`` run (see :class:`heatbath.vi.base.FitRun`).

    Computes the trace's ``entropy``, the ELBO with ``options["elbo_samples"]`` common random
    numbers drawn from ``run.key`` (on the full data), and the exact ``kl`` when
    ``options["exact"]`` is given; their time is ``trace_time``.
    """
    t_trace = time.perf_counter()
    states = jax.tree.map(jnp.asarray, run.states)
    trace = {"step": run.steps, **run.infos}
    eps = None
    if options["elbo_samples"]:
        k = _gvi.num_factor_columns(run.final_state)
        eps = jax.random.normal(run.key, (options["elbo_samples"], k), dtype=run.final_state.position.dtype)
    trace.update(_trace_diagnostics(run.target, states, eps, options["exact"]))
    diverged = bool(np.any(np.asarray(trace.get("diverging", False)))) or not _finite(run.final_state)
    converged, diagnosis = None, None
    if options.get("check", True):
        converged, diagnosis = _check(run, trace, states, diverged)
    return Gaussian(
        state=run.final_state,
        trace=trace,
        grad_calls=run.grad_calls,
        hvp_calls=run.hvp_calls,
        grad_evals=run.grad_evals,
        hvp_evals=run.hvp_evals,
        num_data=run.num_data,
        num_steps=run.num_steps,
        wall_time=run.wall_time,
        compile_time=run.compile_time,
        trace_time=time.perf_counter() - t_trace,
        method_name=run.method_name,
        target=run.target,
        unravel=run.unravel,
        observed_data=run.observed_data,
        trace_states=jax.device_get(states) if options["keep_trace_states"] else None,
        converged=converged,
        diagnosis=diagnosis,
        diverged=diverged,
    )


def _finite(state) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


def _check(run, trace, states, diverged):
    """(converged, diagnosis) of a finished run: the stationarity check at the final state, or,
    when the run diverged, the stability numbers at the last finite trace state; the diagnosis's
    ``warning`` is the message ``hb.fit`` gives."""
    key = jax.random.fold_in(run.key, 1)
    h = np.asarray(trace["step_size"], np.float64)
    temps = np.asarray(trace["temperature"], np.float64)
    if not diverged:
        try:
            d = _convergence.diagnose(run.target, run.final_state, key, temps[-1], h[-1], trace)
        except Exception as err:  # noqa: BLE001 - e.g. no Hessians (custom_vjp): the check must not break a fit
            return None, {"converged": None, "reason": f"check failed: {type(err).__name__}: {err}",
                          "warning": f"the convergence check could not run ({type(err).__name__}: {err}); pass "
                                     "check=False to skip it"}
        d["warning"] = None if d["converged"] else _convergence.message(run.method_name, run.num_steps, d)
        return d["converged"], d
    finite = [i for i in range(len(h)) if _finite(jax.tree.map(lambda x: x[i], states))]
    d = {"converged": False, "reason": "diverged", "stability": None, "step_size": None}
    last = None
    if finite:
        i = finite[-1]
        state_i = jax.tree.map(lambda x: x[i], states)
        try:
            probe = _convergence.diagnose(run.target, state_i, key, temps[i], h[i])
            d.update(stability=probe["stability"], spectral_radius=probe["spectral_radius"],
                     step_size=probe["step_size"], last_finite_step=int(trace["step"][i]))
            last = probe
        except Exception:  # noqa: BLE001 - the numbers are a courtesy; the warning goes out regardless
            pass
    bound = ""
    if last is not None and np.isfinite(last["spectral_radius"]) and last["spectral_radius"] > 0:
        bound = (f"; at step {d['last_finite_step']} (the last finite trace point) h rho(E hess V) = "
                 f"{last['stability']:.3g} (stable for h < 1/lambda_max = {1.0 / last['spectral_radius']:.3g})")
    d["warning"] = (f"{bound}. The result is not usable: use step_size=None (automatic, bounded by the curvature), "
                    "safeguard=True, or a smaller step size")
    return False, d
