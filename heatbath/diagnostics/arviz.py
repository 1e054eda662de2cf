"""ArviZ export: results become ``InferenceData`` (ArviZ 0.x) or ``DataTree`` (ArviZ >= 1).

Draws follow ArviZ's (chain, draw, *shape) convention. Summaries, ESS, R-hat and plots come
from ArviZ itself; this module only builds the object, for whichever ArviZ is installed.
"""

from __future__ import annotations

import inspect
from typing import Optional

import numpy as np

__all__ = ["to_arviz", "as_float64"]


def as_float64(value) -> np.ndarray:
    """``value`` as a NumPy array, floating point promoted to float64 (integers, bools kept).

    ArviZ computes means and variances in the dtype it is given: the draws of a long float32
    run, averaged in float32, lose the digits that separate a well-identified parameter's mean
    from its neighbours (a 4 x 40,000-draw run reported means 1.3 sd off). Every export is
    float64 so that ``az.summary`` is right.
    """
    arr = np.asarray(value)
    return arr.astype(np.float64) if np.issubdtype(arr.dtype, np.floating) else arr


def to_arviz(
    posterior: dict,
    sample_stats: Optional[dict] = None,
    observed_data: Optional[dict] = None,
    attrs: Optional[dict] = None,
    log_likelihood: Optional[dict] = None,
    posterior_predictive: Optional[dict] = None,
):
    """Build an ArviZ object from dicts of numpy arrays shaped (chain, draw, ...), in float64.

    ``log_likelihood``: pointwise log-likelihoods, one variable per observed site shaped
    (chain, draw, *site shape) (what ``arviz.loo`` and ``arviz.waic`` read);
    ``posterior_predictive``: predictive draws of the observed sites, shaped the same way.
    """
    import arviz as az

    groups = {"posterior": {k: as_float64(v) for k, v in posterior.items()}}
    if sample_stats:
        groups["sample_stats"] = {k: as_float64(v) for k, v in sample_stats.items()}
    if log_likelihood:
        groups["log_likelihood"] = {k: as_float64(v) for k, v in log_likelihood.items()}
    if posterior_predictive:
        groups["posterior_predictive"] = {k: np.asarray(v) for k, v in posterior_predictive.items()}
    if observed_data:
        groups["observed_data"] = {k: np.asarray(v) for k, v in observed_data.items()}
    params = inspect.signature(az.from_dict).parameters
    if "posterior" in params:  # ArviZ 0.x: one keyword per group
        return az.from_dict(**groups, attrs=attrs or {})
    # ArviZ >= 1.0: a dict of groups; observed data has no (chain, draw) dimensions.
    return az.from_dict(groups)
