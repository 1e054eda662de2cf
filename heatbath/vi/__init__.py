"""Variational inference: Gaussian VI in the Bures-Wasserstein space (FB-GVI, BW-SGD).

Run a method with :func:`heatbath.fit`::

    q = hb.fit(model, hb.vi.fbgvi(step_size=1e-3, num_steps=500), data=data)
    q.mean, q.cov, q.sample(key, 1000), q.to_arviz()
"""

from heatbath.vi import gaussian
from heatbath.vi.gaussian import bwsgd, fbgvi

__all__ = ["gaussian", "fbgvi", "bwsgd"]
