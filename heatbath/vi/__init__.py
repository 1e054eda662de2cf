"""Variational inference: the VI-method contract and Gaussian VI in the Bures-Wasserstein space.

Run a method with :func:`heatbath.fit`::

    q = hb.fit(model, hb.vi.fbgvi(step_size=1e-3, num_steps=500), data=data)
    q.mean, q.cov, q.sample(key, 1000), q.to_arviz()

A new method implements :class:`heatbath.vi.base.VIMethod` (see its module docstring).
"""

from heatbath.vi import base, gaussian, sde
from heatbath.vi.base import Approximation, FitRun, VIMethod
from heatbath.vi.gaussian import Gaussian, bwsgd, fbgvi
from heatbath.vi import programmable  # a callable package: hb.vi.programmable(objective, guide, ...)
from heatbath.vi.laplace import SWAG, Laplace, laplace, swag

__all__ = ["base", "gaussian", "laplace", "Laplace", "swag", "SWAG", "sde", "fbgvi", "bwsgd", "Gaussian", "VIMethod", "FitRun", "Approximation", "programmable"]
