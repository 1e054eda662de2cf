"""``gradient_estimator(objective, model, guide, *args, **kwargs)``: the transformation of an
objective program into an unbiased gradient estimator, as a plain JAX function.

    est = gradient_estimator(elbo(), model, guide, x)
    params = est.init_params()                     # {"params": unconstrained, "baselines": ...}
    value, grads = est.value_and_grad(params, key)  # jit / vmap / grad compose with it

``grads`` is an unbiased estimate of grad E[objective] (ascent direction) with respect to the
unconstrained parameters (:mod:`.surrogate`). Bad input (an unknown estimator, enum on a
continuous site, reparam without rsample, mvd on a non-Bernoulli, a non-scalar objective) is
refused when the estimator is built, by an abstract trace (``jax.eval_shape``): nothing is
compiled first.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from heatbath.vi.programmable.build import build_program
from heatbath.vi.programmable.surrogate import discover, make_estimator

__all__ = ["ObjectiveEstimator", "gradient_estimator"]


class ObjectiveEstimator:
    """An objective bound to a :class:`~.program.Program` (see the module docstring)."""

    def __init__(self, objective, program):
        if not callable(objective):
            raise TypeError(f"the objective must be a function objective(ctx) -> scalar, got {type(objective).__name__}")
        self.objective, self.program = objective, program
        self._structures = {}
        self.structure(None)  # validate now, on the full data

    def _batch(self, batch):
        return self.program.full_batch() if batch is None else batch

    def structure(self, batch):
        batch = self._batch(batch)
        shapes = tuple((k, tuple(jnp.shape(v))) for k, v in sorted(batch.items()))
        if shapes not in self._structures:
            params = self.init_params(learned=())["params"]
            self._structures[shapes] = discover(self.objective, self.program, params, jax.random.key(0), batch)
        return self._structures[shapes]

    def init_params(self, learned=None) -> dict:
        learned = self.structure(None).learned if learned is None else learned
        return {"params": dict(self.program.param_init), "baselines": {k: jnp.zeros(()) for k in learned}}

    def init_running(self) -> dict:
        running = self.structure(None).running
        return {**{k: jnp.zeros(()) for k in running}, "_count": jnp.zeros((), jnp.int32)} if running else {}

    def __call__(self, params, key, batch=None, running=None):
        """(value, grads, new running baselines)."""
        batch = self._batch(batch)
        estimate = make_estimator(self.objective, self.program, self.structure(batch))
        return estimate(params, key, batch, self.init_running() if running is None else running)

    def value_and_grad(self, params, key, batch=None, running=None):
        value, grads, _ = self(params, key, batch, running)
        return value, grads

    def value(self, params, key, batch=None):
        return self(params, key, batch)[0]


def gradient_estimator(objective, model, guide, *args, estimators: Optional[dict] = None, minibatch: bool = True,
                       **kwargs) -> ObjectiveEstimator:
    """Bind ``objective`` to ``model`` and ``guide`` on their arguments (module docstring)."""
    program = build_program(model, guide, args, kwargs, estimators=estimators, minibatch=minibatch)
    return ObjectiveEstimator(objective, program)
