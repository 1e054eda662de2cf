"""Optimizers as the zero-temperature and annealing limits of the samplers.

Every heatbath sampler is an optimizer at T = 0, exactly (tested step by step against
optax in float64): ``sgld(h)`` is ``optax.sgd(h)``; Euler ``sghmc`` is
``optax.sgd(momentum=...)`` (``heavy_ball_parameters``); ``psgld(h, decay=a, eps=e)`` is
``optax.rmsprop(h, decay=a, eps=e, eps_in_sqrt=False)`` (pSGLD puts eps outside the square
root; optax's default ``eps_in_sqrt=True`` is ``psgld(..., preconditioner=rmsprop(a, e,
eps_in_sqrt=True))``, and ``hb.samplers.langevin(optax.rmsprop(...))`` matches any
``optax.rmsprop`` settings); ``hb.samplers.langevin(optax.adam(...))`` is ``optax.adam``.
The divergence correction (``correction=True``) enters as T Gamma and vanishes at T = 0.

- ``as_optax(sampler, temperature)``: a sampler that uses one gradient per step, at its
  position (``Sampler.gradient_at_position``), as an optax ``GradientTransformation``
  (T = 0: the optimizer; T > 0: SG-MCMC inside an optax, Flax or Equinox training loop; a
  schedule: annealing); others are refused when it is built. ``from_optax(tx)``: the other
  direction.
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
from heatbath.optim.local_entropy import entropy_sgd
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
