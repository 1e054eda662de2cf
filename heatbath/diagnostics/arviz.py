"""ArviZ export: results become ``InferenceData`` (ArviZ 0.x) or ``DataTree`` (ArviZ >= 1).

Draws follow ArviZ's (chain, draw, *shape) convention. Summaries, ESS, R-hat and plots come
from ArviZ itself; this module only builds the object, for whichever ArviZ is installed.
"""

from __future__ import annotations

import inspect
from typing import Optional

import numpy as np

__all__ = ["to_arviz", "arviz_major_version"]


def arviz_major_version() -> int:
    import arviz as az

    return int(str(az.__version__).split(".")[0])


def to_arviz(
    posterior: dict,
    sample_stats: Optional[dict] = None,
    observed_data: Optional[dict] = None,
    attrs: Optional[dict] = None,
):
    """Build an ArviZ object from dicts of numpy arrays shaped (chain, draw, ...)."""
    import arviz as az

    groups = {"posterior": {k: np.asarray(v) for k, v in posterior.items()}}
    if sample_stats:
        groups["sample_stats"] = {k: np.asarray(v) for k, v in sample_stats.items()}
    if observed_data:
        groups["observed_data"] = {k: np.asarray(v) for k, v in observed_data.items()}
    params = inspect.signature(az.from_dict).parameters
    if "posterior" in params:  # ArviZ 0.x: one keyword per group
        return az.from_dict(**groups, attrs=attrs or {})
    # ArviZ >= 1.0: a dict of groups; observed data has no (chain, draw) dimensions.
    return az.from_dict(groups)
