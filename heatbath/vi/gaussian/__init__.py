"""Gaussian variational inference in the Bures-Wasserstein space: FB-GVI and BW-SGD.

``kernel`` holds the states and the update (see its docstring for the math), ``methods`` the
constructors :func:`fbgvi` and :func:`bwsgd`, ``approximation`` the :class:`Gaussian` that
``hb.fit`` returns.
"""

from heatbath.vi.gaussian.approximation import Gaussian
from heatbath.vi.gaussian.kernel import (
    DiagState,
    FullState,
    GaussianVIInfo,
    LowRankState,
    affine,
    covariance,
    deterministic_moments,
    entropy,
    jko_entropy_eigenvalues,
    num_factor_columns,
    sample_normal,
    stochastic_moments,
    variance,
)
from heatbath.vi.gaussian.methods import bwsgd, calls_per_step, check_dimension, fbgvi, is_gaussian_vi

__all__ = [
    "Gaussian", "fbgvi", "bwsgd", "FullState", "DiagState", "LowRankState", "GaussianVIInfo", "covariance",
    "variance", "entropy", "sample_normal", "affine", "num_factor_columns", "calls_per_step", "check_dimension",
    "is_gaussian_vi", "jko_entropy_eigenvalues", "stochastic_moments", "deterministic_moments",
]
