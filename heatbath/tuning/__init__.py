"""Tuning SG-MCMC hyperparameters by Stein discrepancy per unit time (Coullon, South & Nemeth 2023).

- :mod:`~heatbath.tuning.search`: :func:`tune` (``hb.tune``), the method and its budgets.
- :mod:`~heatbath.tuning.halving`: the successive-halving schedule and the candidate grid.
- :mod:`~heatbath.tuning.result`: :class:`TuneResult`.
"""

from heatbath.tuning.halving import FAMILIES, build_sampler, expand_grid, successive_halving
from heatbath.tuning.result import TuneResult
from heatbath.tuning.search import ksd_score, tune

__all__ = ["tune", "TuneResult", "successive_halving", "expand_grid", "build_sampler", "ksd_score", "FAMILIES"]
