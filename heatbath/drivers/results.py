"""What ``hb.sample`` and ``hb.optimize`` return."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional

import jax
import numpy as np

__all__ = ["Result", "OptimizeResult"]


@dataclasses.dataclass
class Result:
    """Draws of ``hb.sample``.

    ``get_samples()`` gives the draws as ``numpyro.infer.MCMC.get_samples`` does (for
    ``numpyro.infer.Predictive``), ``predictive()`` posterior predictive draws,
    ``log_likelihood()`` pointwise log-likelihoods, ``to_arviz()`` an ArviZ object with a
    ``log_likelihood`` group (``az.loo``, ``az.waic``) and ``summary()`` ``arviz.summary``.
    None of them silently mixes in diverged chains: they are left out with a RuntimeWarning
    naming them, and when every chain diverged they refuse (ValueError) unless called with
    ``include_diverged=True``; see :meth:`excluded_chains` for which chains count as diverged.

    Attributes:
      samples: name -> array (chain, draw, ...) on the constrained (user's) scale, with the
        model's deterministic sites.
      stats: name -> array (chain, draw): ``step_size``, ``temperature``, ``grad_norm``,
        ``lp`` (the log-density estimate), ``diverging`` (any non-finite state since the
        previous draw) and whatever else the sampler reports.
      final_state: the sampler state of every chain after the last step (leading axis chain);
        ``final_state.position`` is the unconstrained position, in the run's coordinates (with
        the automatic Laplace metric, z with theta = mu + L z: ``tuning["metric"]``). For a
        chain stopped by ``on_divergence="stop"`` only ``position`` is kept (its last state
        with a finite log density); its other fields are those of its rejected steps.
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
      on_divergence: the run's ``on_divergence`` mode ("stop", "restart", "flag"); None when
        unknown.
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
    # What a chain did on divergence ("stop", "restart", "flag"; None when unknown): decides
    # which diverged chains are left out of summaries (see ``excluded_chains``).
    on_divergence: Optional[str] = None

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

    def excluded_chains(self) -> list:
        """The chains that summaries, ``to_arviz``, ``get_samples`` and the CLI leave out.

        A diverged chain under ``on_divergence="stop"`` is frozen at its last finite state and
        under ``"flag"`` non-finite (or in a region of non-finite log density): its draws are not
        posterior draws, so the whole chain is left out. Under ``"restart"`` each diverging step
        was rejected and the chain went on from its last finite state, so its draws are valid
        and it is kept (unless a draw is non-finite). When the mode is unknown
        (``on_divergence`` None) every diverged chain is left out.
        """
        bad = np.asarray(self.stats["diverging"]).any(axis=1)
        if self.on_divergence == "restart":
            finite = np.ones(bad.shape, bool)
            per_chain = list(self.samples.values())
            if not self.samples and self.moments:  # a keep="moments" run: its per-chain moments
                per_chain = [v for part in ("mean", "var", "deviations") for v in self.moments.get(part, {}).values()]
            for v in per_chain:
                v = np.asarray(v)
                if np.issubdtype(v.dtype, np.inexact):
                    finite &= np.isfinite(v).reshape(v.shape[0], -1).all(axis=1)
            bad &= ~finite
        return [int(c) for c in np.nonzero(bad)[0]]

    def _need_draws(self):
        if not self.samples:
            raise ValueError(
                "this run kept no draws (keep='moments'): there are no draws to summarise, predict from or "
                "compute log-likelihoods of; use Result.get_moments(), or rerun with keep='draws'"
            )

    def _kept_chains(self, include_diverged: bool, what: str, stacklevel: int = 3) -> list:
        """The chains that enter ``what``: all but :meth:`excluded_chains`, with a RuntimeWarning
        naming those left out; a ValueError when every chain diverged (unless ``include_diverged``)."""
        self._need_draws()
        return self._choose_chains(include_diverged, what, stacklevel + 1)

    def _choose_chains(self, include_diverged: bool, what: str, stacklevel: int) -> list:
        num, bad = self.num_chains, self.excluded_chains()
        if not bad:
            restarted = self.diverged_chains() if self.on_divergence == "restart" else []
            if restarted:
                warnings.warn(
                    f"chains {restarted} had diverging steps that were rejected and restarted "
                    "(on_divergence='restart'); their draws are finite and kept in the " + what,
                    RuntimeWarning, stacklevel=stacklevel,
                )
            return list(range(num))
        why = f"chains {bad} ({len(bad)} of {num}) diverged (non-finite state or log density; see stats['diverging'])"
        if include_diverged:
            warnings.warn(f"{why}; their draws are in the {what} because include_diverged=True", RuntimeWarning,
                          stacklevel=stacklevel)
            return list(range(num))
        if len(bad) == num:
            raise ValueError(
                f"all {num} chains diverged (non-finite state or log density; see stats['diverging']): there is no "
                f"draw for the {what}. Lower the step size, or pass include_diverged=True to use them anyway"
            )
        warnings.warn(f"{why}: left out of the {what} (pass include_diverged=True to keep them); lower the step size",
                      RuntimeWarning, stacklevel=stacklevel)
        return [c for c in range(num) if c not in bad]

    def _chains(self, tree, kept):
        if tree is None or len(kept) == self.num_chains:
            return tree
        idx = np.asarray(kept)
        return jax.tree.map(lambda v: np.asarray(v)[idx], tree)

    def get_samples(self, group_by_chain: bool = False, include_diverged: bool = False) -> dict:
        """The draws as ``numpyro.infer.MCMC.get_samples`` gives them: name -> (chain * draw, ...),
        or (chain, draw, ...) with ``group_by_chain=True``; deterministic sites included, on the
        constrained scale. ``Predictive(model, result.get_samples())`` works.

        Diverged chains (:meth:`excluded_chains`) are left out with a RuntimeWarning; when all
        chains diverged this is a ValueError unless ``include_diverged=True``. A ValueError for a
        ``keep="moments"`` run (no draws).
        """
        kept = self._kept_chains(include_diverged, "samples")
        samples = self._chains(self.samples, kept)
        if group_by_chain:
            return {k: np.asarray(v) for k, v in samples.items()}
        return {k: np.reshape(np.asarray(v), (-1,) + np.shape(v)[2:]) for k, v in samples.items()}

    def get_moments(self, group_by_chain: bool = False, include_diverged: bool = False, *,
                    _stacklevel: int = 3) -> dict:
        """The running moments of a ``keep="moments"`` run, diverged chains left out as in
        :meth:`get_samples` (a RuntimeWarning naming them; a ValueError when every chain
        diverged, unless ``include_diverged=True``).

        ``group_by_chain=True``: ``{"count", "mean", "var"[, "deviations"]}`` as in
        :attr:`moments`, name -> (chain, ...), the kept chains only (``"chains"``: their indices). ``False``: the moments of
        all kept draws pooled over the kept chains, in float64: ``mean`` = the mean of the chain
        means, ``var`` = (sum_c [(n - 1) var_c + n (mean_c - mean)^2]) / (C n - 1), ``count`` = C n
        (no deviations: they are per chain). A ValueError for a run that kept draws.
        """
        if not self.moments:
            raise ValueError("this run kept no running moments: they are made by hb.sample(..., keep='moments'); "
                             "for kept draws use get_samples")
        kept = self._choose_chains(include_diverged, "moments", _stacklevel)
        parts = [p for p in ("mean", "var", "deviations") if p in self.moments]
        by_chain = {"count": int(self.moments["count"]), "chains": list(kept),
                    **{p: self._chains(self.moments[p], kept) for p in parts}}
        if group_by_chain:
            return by_chain
        n, c = by_chain["count"], len(kept)
        mean, var = {}, {}
        for name, m in by_chain["mean"].items():
            m = np.asarray(m, np.float64)
            mean[name] = m.mean(axis=0)
            spread = (n - 1) * np.asarray(by_chain["var"][name], np.float64) + n * (m - mean[name]) ** 2
            var[name] = spread.sum(axis=0) / max(c * n - 1, 1)
        return {"count": c * n, "chains": list(kept), "mean": mean, "var": var}

    def log_likelihood(self, include_diverged: bool = False, *, chunk_size: Optional[int] = None,
                       _kept=None) -> dict:
        """Pointwise log-likelihoods log p(y_i | theta) of every kept draw: name -> (chain, draw, ...),
        one variable per observed site of a NumPyro model that the target keeps, else one
        ``"loglik"`` (or the single observed site's name) of shape (chain, draw, N) from the
        target's per-row likelihood (see :mod:`heatbath.diagnostics.loglik`). Computed in chunks
        of draws; diverged chains are left out as in :meth:`get_samples`. Raises
        :class:`~heatbath.diagnostics.loglik.LoglikUnavailable` (a ValueError) when it cannot be
        computed."""
        from heatbath.diagnostics.loglik import pointwise_loglik

        kept = self._kept_chains(include_diverged, "log-likelihood") if _kept is None else _kept
        return pointwise_loglik(self.target, self._chains(self.samples, kept), self._chains(self.unconstrained, kept),
                                chunk_size=chunk_size)

    def predictive(self, model=None, *args, seed=0, return_sites=None, include_diverged: bool = False,
                   _kept=None, **kwargs) -> dict:
        """Posterior predictive draws, name -> (chain, draw, ...): ``numpyro.infer.Predictive`` on
        :meth:`get_samples`, one draw per posterior draw, with key ``seed``.

        ``result.predictive(model, *args, **kwargs)`` runs ``model`` on those arguments (e.g. new
        covariates with ``y=None``), exactly as ``Predictive(model, result.get_samples())``.
        ``result.predictive()`` runs the sampled NumPyro model on its own arguments with the
        observations dropped, so the observed sites are predicted (this needs a target that keeps
        its model, see :func:`heatbath.diagnostics.loglik.model_call`).
        """
        from heatbath.diagnostics.loglik import model_call, predictive

        drop = model is None
        if drop:
            if args or kwargs:
                raise TypeError("result.predictive(*args) needs the model first: result.predictive(model, *args)")
            call = None if self.target is None else model_call(self.target)
            if call is None:
                raise ValueError(
                    "this Result does not know the NumPyro model it sampled (a from_logdensity target, or a "
                    "target that does not keep its model): pass it, result.predictive(model, *args, **kwargs)"
                )
            model, args, kwargs = call
            if return_sites is None and self.observed_data:
                return_sites = list(self.observed_data)
        kept = self._kept_chains(include_diverged, "predictive draws") if _kept is None else _kept
        return predictive(model, args, kwargs, self._chains(self.samples, kept), seed=seed, return_sites=return_sites,
                          drop_observations=drop)

    def to_arviz(self, *, include_diverged: bool = False, log_likelihood: Optional[bool] = None,
                 posterior_predictive=False, seed=0, _stacklevel: int = 3):
        """An ArviZ object: posterior (constrained), sample_stats, observed_data, log_likelihood and,
        on request, posterior_predictive, so that ``az.summary``, ``az.loo`` and ``az.waic`` work.

        Args:
          include_diverged: keep the diverged chains (:meth:`excluded_chains`). By default they
            are left out with a RuntimeWarning naming them; when all chains diverged this is a
            ValueError unless ``include_diverged=True``.
          log_likelihood: the pointwise log-likelihood group (:meth:`log_likelihood`). None (the
            default, as ``arviz.from_numpyro``): included when it can be computed and holds at
            most 1e8 values (draws x observations), else left out with a RuntimeWarning saying
            why; True: included, or an error saying why not; False: left out.
          posterior_predictive: True for :meth:`predictive` draws of the observed sites (the
            sampled model on its own arguments, key ``seed``), or a dict name -> (chain, draw, ...)
            of predictive draws to store (e.g. from ``result.predictive(model, ...)``).
        """
        from heatbath.diagnostics.arviz import to_arviz
        from heatbath.diagnostics.loglik import MAX_VALUES, LoglikUnavailable, loglik_size

        kept = self._kept_chains(include_diverged, "ArviZ export", _stacklevel)
        loglik = None
        if log_likelihood or (log_likelihood is None and self.target is not None):
            size = loglik_size(self.target, len(kept) * self.num_draws) if self.target is not None else 0
            try:
                if log_likelihood is None and size > MAX_VALUES:
                    raise LoglikUnavailable(
                        f"it would hold {size:.3g} values (> {MAX_VALUES:.0e}); thin the draws, or pass "
                        "log_likelihood=True to compute it anyway"
                    )
                loglik = self.log_likelihood(_kept=kept)
            except LoglikUnavailable as err:
                if log_likelihood:
                    raise
                warnings.warn(f"no log_likelihood group in the ArviZ export: {err} (log_likelihood=False "
                              "leaves it out quietly)", RuntimeWarning, stacklevel=_stacklevel - 1)
        if posterior_predictive is True:
            posterior_predictive = self.predictive(seed=seed, _kept=kept)
        return to_arviz(
            self._chains(self.samples, kept),
            self._chains(self.stats, kept),
            self.observed_data,
            attrs={"inference_library": "heatbath", "sampler": self.sampler_name},
            log_likelihood=loglik,
            posterior_predictive=posterior_predictive or None,
        )

    def summary(self, *, include_diverged: bool = False, **kwargs):
        """``arviz.summary`` of the posterior (``kwargs`` go to it), diverged chains left out as in
        :meth:`to_arviz` (with a RuntimeWarning; a ValueError when all chains diverged unless
        ``include_diverged=True``)."""
        import arviz as az

        return az.summary(self.to_arviz(include_diverged=include_diverged, log_likelihood=False, _stacklevel=4),
                          **kwargs)

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
        flag = "; NOT CONVERGED" if self.converged is False else ""
        return f"OptimizeResult({names}{last}{flag}; {self.data_passes:.1f} data passes, {self.wall_time:.2f}s)"
