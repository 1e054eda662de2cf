"""What ``hb.sample`` and ``hb.optimize`` return."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional

import numpy as np

__all__ = ["Result", "OptimizeResult"]


@dataclasses.dataclass
class Result:
    """Draws of ``hb.sample``.

    Attributes:
      samples: name -> array (chain, draw, ...) on the constrained (user's) scale, with the
        model's deterministic sites.
      stats: name -> array (chain, draw): ``step_size``, ``temperature``, ``grad_norm``,
        ``lp`` (the log-density estimate), ``diverging`` (any non-finite state since the
        previous draw) and whatever else the sampler reports.
      final_state: the sampler state of every chain after the last step (leading axis chain);
        ``final_state.position`` is the unconstrained position.
      grad_evals: per-datum likelihood-gradient evaluations per chain (MAP search included).
      num_data: N. ``grad_evals / num_data`` is the cost in passes over the data.
      wall_time, compile_time: seconds (wall_time includes compile_time).
      moments: with ``keep="moments"``: ``count``, ``mean`` and ``var`` (name -> (chain, ...)),
        and with ``swag_rank=K`` the ``deviations`` of the last K draws from the mean
        (name -> (chain, K, ...)); ``samples`` is then empty.
      unconstrained: with ``hb.sample(..., record_unconstrained=True)``, the draws of the
        unconstrained position (the space the sampler moves in and where scores live), a
        pytree like the parameters with leading axes (chain, draw); None otherwise.
      tuning: what the run chose for itself (automatic step size, friction, initialisation)
        and the measurements behind the choice; None when everything was given.
      checks: the end-of-run self-diagnosis (temperatures, R-hat, ESS) and its warnings.
      target: the :class:`~heatbath.models.Target` that was sampled.
    """

    samples: dict
    stats: dict
    final_state: Any
    grad_evals: float
    num_data: int
    wall_time: float
    compile_time: float
    sampler_name: str
    observed_data: Optional[dict] = None
    centre: Any = None
    moments: Optional[dict] = None
    unconstrained: Any = None
    # How the run set itself up: the automatic step size / friction, the initialisation, the
    # measurements behind them (see ``heatbath.drivers.autotune``); None for a fully manual run.
    tuning: Optional[dict] = None
    # The run's self-diagnosis (``heatbath.drivers.selfcheck``): temperatures, R-hat, ESS and the
    # warnings they raised.
    checks: Optional[dict] = None
    # The Target the run sampled (for pointwise log-likelihoods and predictive checks).
    target: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def num_chains(self) -> int:
        return int(next(iter(self.stats.values())).shape[0])

    @property
    def num_draws(self) -> int:
        return int(next(iter(self.stats.values())).shape[1])

    @property
    def data_passes(self) -> float:
        return self.grad_evals / self.num_data

    def diverged_chains(self) -> list:
        """Indices of the chains with at least one diverging draw."""
        div = np.asarray(self.stats["diverging"])
        return [int(c) for c in np.nonzero(div.any(axis=1))[0]]

    def _need_draws(self):
        if not self.samples:
            raise ValueError("this run kept no draws (keep='moments'): use Result.moments")

    def to_arviz(self):
        """An ArviZ object: posterior (constrained), sample_stats, observed_data."""
        from heatbath.diagnostics.arviz import to_arviz

        self._need_draws()
        return to_arviz(
            self.samples,
            self.stats,
            self.observed_data,
            attrs={"inference_library": "heatbath", "sampler": self.sampler_name},
        )

    def summary(self, **kwargs):
        """``arviz.summary`` of the posterior; warns when some chains diverged."""
        import arviz as az

        self._need_draws()
        bad = self.diverged_chains()
        if bad:
            warnings.warn(
                f"chains {bad} diverged (non-finite states); their draws are in the summary: "
                "inspect stats['diverging'] and lower the step size",
                RuntimeWarning,
                stacklevel=2,
            )
        return az.summary(self.to_arviz(), **kwargs)

    def __repr__(self) -> str:
        if self.samples:
            names = ", ".join(f"{k}{tuple(v.shape[2:])}" for k, v in self.samples.items())
        else:
            names = "running moments of " + ", ".join((self.moments or {}).get("mean", {}))
        return (
            f"Result({self.sampler_name}: {self.num_chains} chains x {self.num_draws} draws of {names}; "
            f"{self.data_passes:.1f} data passes, {self.wall_time:.2f}s)"
        )


@dataclasses.dataclass
class OptimizeResult:
    """Output of ``hb.optimize``.

    ``params``: the final unconstrained parameters; ``values``: the same on the user's scale;
    ``trace``: name -> array over recorded steps (``lp``, ``grad_norm``, ...).
    """

    params: Any
    values: dict
    trace: dict
    grad_evals: float
    num_data: int
    wall_time: float
    compile_time: float
    # The end-of-run convergence check (``heatbath.drivers.mapsearch``): True / False, or None
    # when it was not run (``check=False``); ``diagnosis`` holds its numbers.
    converged: Optional[bool] = None
    diagnosis: Optional[dict] = None

    @property
    def data_passes(self) -> float:
        return self.grad_evals / self.num_data

    def __repr__(self) -> str:
        lp = self.trace.get("lp")
        last = f", final lp {float(np.asarray(lp)[-1]):.6g}" if lp is not None and np.size(lp) else ""
        names = ", ".join(f"{k}{tuple(np.shape(v))}" for k, v in self.values.items())
        return f"OptimizeResult({names}{last}; {self.data_passes:.1f} data passes, {self.wall_time:.2f}s)"
