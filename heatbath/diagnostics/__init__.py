"""Diagnostics: ArviZ export, Stein discrepancies, convergence, distances, reference comparison.

- :mod:`~heatbath.diagnostics.stein`: ``ksd`` (IMQ kernel Stein discrepancy, chunked, float64),
  ``fssd`` (linear-time finite-set Stein discrepancy), ``stochastic_ksd`` (minibatch scores),
  ``scores`` (grad log p of draws on a Target), ``ksd_result`` (the KSD of a Result).
- :mod:`~heatbath.diagnostics.convergence`: ``nested_rhat`` (many short chains), ``rhat`` and
  ``ess`` (ArviZ's).
- :mod:`~heatbath.diagnostics.distances`: ``w2_gaussian``, ``w2`` (exact 1-D / sliced),
  ``mmd``, ``energy_distance``.
- :mod:`~heatbath.diagnostics.compare`: ``compare`` draws with a reference posterior.
- :mod:`~heatbath.diagnostics.bdl_metrics`: accuracy, NLL, Brier, ECE and reliability
  diagrams, predictive entropy, OOD AUROC, agreement and total variation against a reference;
  :mod:`~heatbath.diagnostics.predictive_mean`: ``predictive_moments`` (the predictive mean
  and second moment over draws, a chunk of draws at a time).
- :mod:`~heatbath.diagnostics.reference`: ``reference`` (diagnosed NUTS reference moments for
  any model), ``Reference``, ``ReferenceCheckError``.
"""

from heatbath.diagnostics import bdl_metrics
from heatbath.diagnostics.arviz import to_arviz
from heatbath.diagnostics.compare import Comparison, compare
from heatbath.diagnostics.convergence import NESTED_RHAT_THRESHOLD, ess, nested_rhat, nested_rhat_threshold, rhat
from heatbath.diagnostics.predictive_mean import PredictiveMoments, predictive_moments
from heatbath.diagnostics.distances import energy_distance, mmd, w2, w2_gaussian, wasserstein_1d
from heatbath.diagnostics.reference import Reference, ReferenceCheckError, reference
from heatbath.diagnostics.stein import FSSD, fssd, ksd, ksd_result, scores, stochastic_ksd

__all__ = [
    "bdl_metrics",
    "predictive_moments",
    "PredictiveMoments",
    "to_arviz",
    "reference",
    "Reference",
    "ReferenceCheckError",
    "ksd",
    "fssd",
    "FSSD",
    "stochastic_ksd",
    "scores",
    "ksd_result",
    "nested_rhat",
    "nested_rhat_threshold",
    "NESTED_RHAT_THRESHOLD",
    "rhat",
    "ess",
    "w2_gaussian",
    "w2",
    "wasserstein_1d",
    "mmd",
    "energy_distance",
    "compare",
    "Comparison",
]
from heatbath.diagnostics.plots import plot_ksd_vs_time, plot_marginals, plot_trace, plot_tuning
