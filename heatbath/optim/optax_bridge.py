"""Optax in heatbath: an optax ``GradientTransformation`` run by heatbath's drivers.

``from_optax(tx)`` wraps an optimizer as a zero-temperature :class:`~heatbath.samplers.Sampler`
so that ``hb.optimize`` (and anything else that drives samplers) runs it on a target with
minibatches drawn inside the scan. The update is optax's own, applied to the gradient of
the potential U = -log p~:

    updates, opt_state <- tx.update(-grad log p~(theta), opt_state, theta);  theta <- theta + updates
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from heatbath.kernels import schedules as _schedules
from heatbath.kernels import tree
from heatbath.kernels.gradients import naive
from heatbath.samplers.base import Info, Sampler, check_gradient_spec

__all__ = ["OptaxState", "from_optax"]


class OptaxState(NamedTuple):
    position: Any
    step: jax.Array
    opt_state: Any


def from_optax(tx: optax.GradientTransformation, *, gradient=None, name: str = "optax") -> Sampler:
    """A T = 0 sampler that applies ``tx`` to the potential's gradient."""
    if not (hasattr(tx, "init") and hasattr(tx, "update")):
        raise TypeError(f"from_optax needs an optax GradientTransformation, got {type(tx).__name__}")
    spec = check_gradient_spec(naive() if gradient is None else gradient)

    def init(position, key=None):
        del key
        return OptaxState(position, jnp.zeros((), jnp.int32), tx.init(position))

    def step(key, state: OptaxState, batch, grad_fn):
        del key
        lp, g = grad_fn(state.position, batch)
        updates, opt_state = tx.update(tree.scale(-1.0, g), state.opt_state, state.position)
        new = optax.apply_updates(state.position, updates)
        nan = jnp.full((), jnp.nan, jnp.result_type(float))
        info = Info(nan, jnp.zeros((), jnp.result_type(float)), tree.norm(g), lp,
                    jnp.logical_not(tree.all_finite(new)))
        return OptaxState(new, state.step + 1, opt_state), info

    return Sampler(init, step, spec, _schedules.constant(0.0), name, 1.0, {"optimizer": tx, "gradient": spec}, None)
