"""The VI-method contract: what ``hb.fit`` runs, and what it returns.

A variational method is a :class:`VIMethod`. Its stepping part has a Sampler's shape, so the
drivers' one loop runs it (minibatches, gradient estimators, checkpoints, sharding):

- ``init(position, key) -> state`` with ``state.position`` the point the gradient estimator
  works around (a Gaussian's mean; SVRG re-centres there), and ``step(key, state, batch,
  oracle) -> (state, info)``, ``info`` a NamedTuple with at least ``diverging``.
- ``gradient`` (the estimator spec), ``temperature``, ``name``, ``hyperparameters``,
  ``rebuild``; ``num_steps``, the iterations ``hb.fit`` runs.
- ``flat``: True when the method works on one flat vector of the d unconstrained parameters
  (a d x d covariance is inherently flat): ``hb.fit`` ravels the model's pytree once, outside
  the loop.
- ``check(dim, dtype, options) -> options``: checks the method against d and validates the
  keyword options ``hb.fit(..., **options)`` passes to it (``options_defaults`` names them
  with their defaults), before anything is compiled.
- ``calls_per_step(dim) -> (gradient calls, Hessian-vector products)`` per step, on the
  step's batch: the drivers turn it into per-datum costs.
- ``finalize(run: FitRun, options) -> approximation``: builds what ``hb.fit`` returns from the
  run (its final state and the state and info at every trace point).
- ``bind`` (optional): ``bind(model, args, kwargs) -> (target, method)`` for a method that runs
  the NumPyro model itself rather than the bridge's latent-parameter target (programmable VI:
  guide params, local latent variables in the data plate, discrete latent sites). ``hb.fit``
  calls it instead of building the bridge's target when given a model (not a Target), and runs
  the returned method on the returned target.

The approximation follows the :class:`Approximation` protocol: ``sample(key, num)`` (a dict of
constrained draws, like one chain of ``Result.samples``), ``to_arviz()``, and ``mean`` /
``cov`` where defined.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Protocol, runtime_checkable

__all__ = ["VIMethod", "FitRun", "Approximation", "is_vi_method"]


class VIMethod(NamedTuple):
    init: Callable
    step: Callable
    gradient: Any
    temperature: Callable
    name: str
    num_steps: int
    hyperparameters: dict
    finalize: Callable
    check: Callable = lambda dim, dtype, options: options
    calls_per_step: Callable = lambda dim: (1, 0)
    flat: bool = True
    options_defaults: dict = {}
    rebuild: Optional[Callable] = None
    grads_per_step: float = 1.0
    steps_per_draw: int = 1
    gradient_at_position: bool = False  # gradients at draws of q, not at state.position
    uses: tuple = ()  # what the method reads from the oracle beyond the gradient (see Sampler.uses)
    bind: Optional[Callable] = None  # (model, args, kwargs) -> (target, method): see the module docstring


class FitRun(NamedTuple):
    """What ``hb.fit`` hands to ``VIMethod.finalize``.

    ``final_state``: the method's state after the last step. ``steps``: the step number of
    every trace point; ``infos``: name -> array over the trace points (the method's info);
    ``states``: the method's state at every trace point (leading axis: trace point).
    ``target``: the target the loop ran on (flat when ``method.flat``), ``unravel``: flat
    vector -> the model's unconstrained pytree (None when not flat), ``key``: a key for the
    method's own post-run randomness (e.g. common random numbers of an ELBO trace). The rest
    is the run's cost: gradient calls and Hessian-vector products on the step's batch, the
    same in per-datum units (estimator set-up and a control-variate MAP search included),
    and times in seconds.
    """

    final_state: Any
    steps: Any
    infos: dict
    states: Any
    target: Any
    unravel: Optional[Callable]
    observed_data: Optional[dict]
    key: Any
    method_name: str
    num_steps: int
    num_data: int
    grad_calls: float
    hvp_calls: float
    grad_evals: float
    hvp_evals: float
    wall_time: float
    compile_time: float


@runtime_checkable
class Approximation(Protocol):
    """What ``hb.fit`` returns: draws on the user's scale and an ArviZ object."""

    def sample(self, key, num: int, *, constrained: bool = True): ...

    def to_arviz(self, num_samples: int = 1000, seed=0): ...


def is_vi_method(method) -> bool:
    return isinstance(method, VIMethod)
