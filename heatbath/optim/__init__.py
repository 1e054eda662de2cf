"""Optimizers as the zero-temperature and annealing limits of the samplers.

Every heatbath sampler is an optimizer at T = 0, exactly (tested step by step against
optax in float64): ``sgld`` is ``optax.sgd``, Euler ``sghmc`` is ``optax.sgd(momentum=...)``,
``psgld`` is ``optax.rmsprop``, ``hb.samplers.langevin(optax.adam(...))`` is ``optax.adam``.

- ``as_optax(sampler, temperature)``: any single-gradient sampler as an optax
  ``GradientTransformation`` (T = 0: the optimizer; T > 0: SG-MCMC inside an optax, Flax or
  Equinox training loop; a schedule: annealing). ``from_optax(tx)``: the other direction.
- ``anneal(sampler, schedule)``, ``cyclical(sampler, ...)`` (cSG-MCMC), ``sampling_phase``:
  simulated annealing to the MAP and cyclical SG-MCMC; the temperature dial, including cold
  posteriors (0 < T < 1), is explained in :mod:`heatbath.optim.annealing`.
- ``entropy_sgd(...)``: Entropy-SGD (Chaudhari et al. 2017) from the SGLD kernel.
- ``averaged(sampler, start, every)``: iterate averaging, SWA at T = 0 and Langevin
  averaging at T > 0.
- ``hessian_trace``, ``hessian_top_eigenvalue``: flatness of a minimum (Hutchinson, Lanczos).
"""

from heatbath.optim.annealing import anneal, cyclical, sampling_phase
from heatbath.optim.averaging import averaged
from heatbath.optim.entropy_sgd import entropy_sgd
from heatbath.optim.flatness import hessian_top_eigenvalue, hessian_trace, hvp
from heatbath.optim.optax_bridge import as_optax, from_optax

__all__ = [
    "from_optax",
    "as_optax",
    "anneal",
    "cyclical",
    "sampling_phase",
    "entropy_sgd",
    "averaged",
    "hessian_trace",
    "hessian_top_eigenvalue",
    "hvp",
]
