"""Compatibility: the drivers moved to :mod:`heatbath.drivers`; this module re-exports them."""

from heatbath.drivers import OptimizeResult, Result, as_target, clear_caches, fit, optimize, sample
from heatbath.vi.gaussian import Gaussian

__all__ = ["sample", "optimize", "fit", "Result", "OptimizeResult", "Gaussian", "as_target", "clear_caches"]
