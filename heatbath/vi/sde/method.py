"""``fbm_vi``: the neural-SDE VI (Daems et al. 2024) as a :class:`~heatbath.vi.base.VIMethod`
(its target: :func:`heatbath.models.from_latent_sde`).

The method's state is (theta, optax state): theta the trainable parameters of the latent SDE
(drift, diffusion, control, likelihood, the Hurst logit, q(X0)); one step draws ``num_paths``
posterior paths and takes an optax step on the negative mean ELBO (reparameterised: the
paths are differentiable in theta, H included, through omega(H)) minus log p(theta).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from heatbath.kernels import schedules as _schedules
from heatbath.kernels import tree as _tree
from heatbath.kernels import validate as _validate
from heatbath.kernels.gradients import naive
from heatbath.vi.base import VIMethod
from heatbath.vi.sde import solver as _solver
from heatbath.vi.sde.model import LatentSDE

__all__ = ["fbm_vi", "SDEState", "SDEInfo", "OPTIONS"]

OPTIONS: dict = {}


class SDEState(NamedTuple):
    position: dict  # theta
    step: jax.Array
    opt_state: object


class SDEInfo(NamedTuple):
    lp: jax.Array  # the step's mean ELBO (+ log p(theta))
    elbo: jax.Array
    loglik: jax.Array
    kl: jax.Array
    hurst: jax.Array
    grad_norm: jax.Array
    diverging: jax.Array


def _check(sde, dim, dtype, options):
    return options


def fbm_vi(
    sde: LatentSDE,
    *,
    num_steps: int = 2000,
    num_paths: int = 32,
    learning_rate: float = 1e-3,
    optimizer: Optional[optax.GradientTransformation] = None,
) -> VIMethod:
    """Variational inference for a latent SDE driven by Markov-approximate fBM.

        theta <- optax_update(-grad_theta [ (1/P) sum_p ELBO(path_p; theta) + log p(theta) ]),
        ELBO = sum_i log p(y_i | X(t_i)) - (1/2) int |u|^2 dt - KL(q(X0) || p(X0))

    (Daems, Opper, Crevecoeur & Birdal, "Variational inference for SDEs driven by fractional
    noise", ICLR 2024; the paths by Euler-Maruyama, :mod:`heatbath.vi.sde.solver`). Run it with
    ``hb.fit(hb.models.from_latent_sde(sde, times, values), method)``; it returns a
    :class:`~heatbath.vi.sde.posterior.SDEPosterior`.

    Args:
      sde: the model (:func:`heatbath.vi.sde.latent_sde`).
      num_steps: optimisation steps. num_paths: posterior paths per step.
      learning_rate: Adam's step size (when ``optimizer`` is None).
      optimizer: any optax transformation (then recorded in checkpoints only as "given").
    """
    if not isinstance(sde, LatentSDE):
        raise TypeError(f"sde must be a heatbath.vi.sde.LatentSDE (built by latent_sde), got {type(sde).__name__}")
    num_steps = _validate.check_int(num_steps, "num_steps", minimum=1)
    num_paths = _validate.check_int(num_paths, "num_paths", minimum=1)
    if optimizer is None:
        learning_rate = _validate.check_real(learning_rate, "learning_rate", low=0.0, low_open=True)
        opt = optax.adam(learning_rate)
    elif isinstance(optimizer, optax.GradientTransformation):
        opt = optimizer
    else:
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")

    def init(position, key=None):
        return SDEState(position, jnp.zeros((), jnp.int32), opt.init(position))

    def loss(theta, key, batch, scale):
        keys = jax.random.split(key, num_paths)
        elbo, ll, kl, kl0 = jax.vmap(lambda k: _solver.elbo_terms(sde, theta, k, batch, scale))(keys)
        lp = jnp.zeros(()) if sde.logprior is None else sde.logprior(theta)
        return -(jnp.mean(elbo) + lp), (jnp.mean(elbo), jnp.mean(ll), jnp.mean(kl + kl0))

    def step(key, state, batch, oracle):
        n = jax.tree.leaves(batch)[0].shape[0]
        scale = oracle.num_data / n
        (value, (elbo, ll, kl)), g = jax.value_and_grad(loss, has_aux=True)(state.position, key, batch, scale)
        updates, opt_state = opt.update(g, state.opt_state, state.position)
        theta = optax.apply_updates(state.position, updates)
        info = SDEInfo(-value, elbo, ll, kl, sde.hurst(theta), _tree.norm(g),
                       jnp.logical_not(_tree.all_finite(theta) & jnp.isfinite(value)))
        return SDEState(theta, state.step + 1, opt_state), info

    from heatbath.vi.sde.posterior import finalize

    hyper = dict(sde=sde.describe(), num_steps=num_steps, num_paths=num_paths,
                 learning_rate=learning_rate if optimizer is None else None,
                 optimizer="adam" if optimizer is None else "given", family="fbm_vi")
    return VIMethod(
        init=init,
        step=step,
        gradient=naive(),
        temperature=_schedules.constant(1.0),
        name="fbm-vi",
        num_steps=num_steps,
        hyperparameters=hyper,
        finalize=lambda run, options: finalize(sde, run, options),
        check=lambda dim, dtype, options: _check(sde, dim, dtype, options),
        calls_per_step=lambda dim: (0, 0),
        flat=False,
        options_defaults=OPTIONS,
        rebuild=lambda **changes: fbm_vi(**{"sde": sde, "num_steps": num_steps, "num_paths": num_paths,
                                            "learning_rate": learning_rate, "optimizer": optimizer, **changes}),
        grads_per_step=0.0,
        gradient_at_position=False,
    )
