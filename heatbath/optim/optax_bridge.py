"""Optax in both directions.

``from_optax(tx)`` wraps an optimizer as a zero-temperature :class:`~heatbath.samplers.Sampler`
so that ``hb.optimize`` (and anything else that drives samplers) runs it on a target with
minibatches drawn inside the scan. The update is optax's own, applied to the gradient of
the potential U = -log p~:

    updates, opt_state <- tx.update(-grad log p~(theta), opt_state, theta);  theta <- theta + updates

``as_optax(sampler, temperature)`` goes the other way: any single-gradient heatbath sampler
becomes an optax ``GradientTransformation`` (its state carries the sampler state and a PRNG
key) for any optax training loop (plain JAX, Flax, Equinox). It is handed gradients of a
LOSS, i.e. of the potential U, and converts them to heatbath's convention grad log p = -grad U.
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

__all__ = ["OptaxState", "from_optax", "AsOptaxState", "as_optax"]


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


class AsOptaxState(NamedTuple):
    """State of :func:`as_optax`: the sampler's state and a raw (uint32) PRNG key."""

    sampler_state: Any
    key: jax.Array


def _key_data(seed):
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an integer or a JAX key, got {seed!r}")
    if isinstance(seed, int):
        return jax.random.key_data(jax.random.key(seed))
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(seed)
    if isinstance(seed, jax.Array) and seed.dtype == jnp.uint32:
        return seed
    raise TypeError(f"seed must be an integer or a JAX key, got {seed!r}")


def as_optax(sampler: Sampler, temperature=None, *, seed=0) -> optax.GradientTransformationExtraArgs:
    """A heatbath sampler as an optax ``GradientTransformation`` (the sampler's T = 0 limit
    is the optimizer; T > 0 samples; a cooling schedule anneals).

    Given the gradient of a loss U(theta) (the potential, U = -log p~), one ``update`` runs
    one step of the sampler with grad log p~ = -grad U and returns the increment:

        (state', info) = sampler.step(key_k, state with position = params, -grad U)
        updates = state'.position - params,   key_{k+1} = split(key_k)

    so ``optax.apply_updates(params, updates)`` is the sampler's new position. For a
    posterior, U must be the *full-data* negative log posterior estimate,
    U = -log p(theta) - (N / n) sum_batch log p(x_i | theta) (a mean loss samples the
    posterior of a data set of one point, i.e. at temperature N). ``sgld(h)`` at T = 0 is
    ``optax.sgd(h)``; ``psgld(h)`` at T = 0 is ``optax.rmsprop(h, decay=0.99, eps=1e-5,
    eps_in_sqrt=False)``; ``langevin(optax.adam(h))``
    at T = 0 is ``optax.adam(h)`` (Welling & Teh 2011; Li et al. 2016).

    Args:
      sampler: a heatbath :class:`~heatbath.samplers.Sampler` that uses one gradient per
        step at its current position (``Sampler.gradient_at_position`` and
        ``grads_per_step == 1``): ``sgld``, ``psgld`` and ``langevin(...)`` (the divergence
        correction only at T = 0, where it vanishes), ``sgnht``, and ``sghmc`` with a splitting
        whose kicks all precede its drift (``"euler"``, or
        ``hb.kernels.integrators.gradient_first("obabo")``, the OBABO chain rotated to start
        at its gradient). Refused at construction, with the reason: FSAL splittings (the
        default ``"obabo"``, ``"baoab"``, ``"lie_trotter"``: their gradient is evaluated after
        the drift), ``"aboba"``, the divergence correction at T > 0 (a Hessian-vector product),
        Entropy-SGD (its inner chain), ``averaged`` (its position is the average) and the
        Gaussian VI methods; run those with ``hb.sample`` / ``hb.optimize`` / ``hb.fit``.
      temperature: None keeps the sampler's temperature; a number T >= 0 or a schedule of
        the step count rebuilds the sampler at that temperature (``0.0``: the optimizer).
      seed: an integer or a JAX key for the Langevin noise (kept in the state as raw
        uint32 key data, so the state is a plain array pytree for checkpointing).

    The state's ``sampler_state.step`` counts updates (the schedules' step); its
    ``position`` is None (the position is ``params``, not stored twice).
    """
    from heatbath.vi.base import VIMethod

    if not isinstance(sampler, (Sampler, VIMethod)):  # a VI method is refused below, with the reason
        raise TypeError(
            f"as_optax needs a heatbath Sampler (e.g. hb.samplers.sgld(1e-3)), got {type(sampler).__name__}"
        )
    if temperature is not None:
        _schedules.as_schedule(temperature, "temperature", positive=False)
        if sampler.rebuild is None:
            raise ValueError(f"the {sampler.name} sampler cannot be rebuilt at another temperature")
        sampler = sampler.rebuild(temperature=temperature)
    if not sampler.gradient_at_position:
        raise ValueError(
            f"as_optax needs a sampler that uses one gradient per step, at the current parameters; the "
            f"{sampler.name} sampler asks for a gradient away from the current parameters (after a drift, at an "
            "inner chain's point or at Monte Carlo draws) or differentiates it, which an optax update (handed one "
            "gradient at params) cannot give: run it with hb.sample / hb.optimize. For SGHMC use a splitting whose "
            "kicks all precede its drift: integrator='euler' or hb.kernels.integrators.gradient_first('obabo') "
            "(the same chain of positions as OBABO)"
        )
    if sampler.grads_per_step != 1.0:
        raise ValueError(
            f"as_optax needs a sampler that uses one gradient per step, at the current parameters; {sampler.name} "
            f"uses {sampler.grads_per_step} (run it with hb.sample / hb.optimize instead)"
        )
    key0 = _key_data(seed)

    def init(params):
        k_init, k_run = jax.random.split(jax.random.wrap_key_data(key0))
        # The position lives in params: the state keeps None in its place (no second copy).
        return AsOptaxState(sampler.init(params, k_init)._replace(position=None), jax.random.key_data(k_run))

    def update(updates, state: AsOptaxState, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("as_optax's update needs params: call tx.update(grads, state, params)")
        grad = tree.scale(-1.0, updates)  # grad log p = -grad U
        current = state.sampler_state._replace(position=params)

        def grad_fn(position, batch):
            del batch
            if position is not params:
                raise ValueError(
                    f"the {sampler.name} sampler asks for a gradient away from the current parameters, which an "
                    "optax update (handed one gradient) cannot give; run it with hb.sample / hb.optimize"
                )
            return jnp.full((), jnp.nan, jnp.result_type(float)), grad

        key, sub = jax.random.split(jax.random.wrap_key_data(state.key))
        new, _ = sampler.step(sub, current, None, grad_fn)
        increments = tree.sub(new.position, params)
        return increments, AsOptaxState(new._replace(position=None), jax.random.key_data(key))

    return optax.GradientTransformationExtraArgs(init, update)
