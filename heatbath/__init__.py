"""heatbath: stochastic-gradient MCMC, variational inference and their optimizer limits.

Every method moves parameters along the gradient of the (minibatch) log posterior with
noise at a temperature T: T = 1 samples the posterior, T -> 0 anneals, T = 0 optimizes.

    import heatbath as hb
    result = hb.sample(model, hb.samplers.sgld(step_size=1e-4), data={"X": X, "y": y},
                       batch_size=100, num_samples=2000, num_chains=4)
    result.to_arviz()
"""

import sys as _sys

from heatbath import diagnostics, drivers, kernels, models, optim, samplers, vi
from heatbath.diagnostics.reference import reference
from heatbath.drivers import OptimizeResult, Result, checkpoint, clear_caches, fit, optimize, sample
from heatbath.interop import numpyro
from heatbath.tuning import tune
from heatbath.vi import Gaussian

# The modules' former paths keep importing (``import heatbath.numpyro``, ``heatbath.checkpoint``).
_sys.modules.setdefault("heatbath.numpyro", numpyro)
_sys.modules.setdefault("heatbath.checkpoint", checkpoint)

__version__ = "0.1.0"

__all__ = [
    "sample",
    "optimize",
    "fit",
    "reference",
    "tune",
    "Gaussian",
    "clear_caches",
    "vi",
    "checkpoint",
    "drivers",
    "Result",
    "OptimizeResult",
    "kernels",
    "samplers",
    "optim",
    "models",
    "diagnostics",
    "numpyro",
    "__version__",
]
