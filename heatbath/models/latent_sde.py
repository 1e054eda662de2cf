"""The target of the neural-SDE VI (:mod:`heatbath.vi.sde`): one observed series of a latent SDE."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.models.target import Target, from_logdensity
from heatbath.vi.sde import solver as _solver
from heatbath.vi.sde.model import LatentSDE, check_observations

__all__ = ["from_latent_sde"]


def from_latent_sde(sde, times, values, *, name: str = "latent-sde") -> Target:
    """The target of :func:`heatbath.vi.sde.fbm_vi`: the observation rows (t_i, y_i) of one series, checked
    against the SDE (strictly increasing times inside the span, shapes; ValueError otherwise,
    before anything is compiled).

    Its parameters are the SDE's trainable parameters (their initial values are its
    ``init_params``); ``logprior`` is the SDE's ``logprior`` (0 by default) and ``loglik`` a
    one-path estimate, with fixed random numbers, of E_q sum_i log p(y_i | X(t_i)) (what
    ``hb.fit`` checks for finiteness at the start; the method itself draws fresh paths)."""
    if not isinstance(sde, LatentSDE):
        raise TypeError(f"sde must be a heatbath.vi.sde.LatentSDE (built by latent_sde), got {type(sde).__name__}")
    t, y = check_observations(sde, times, values)
    data = {"t": t.astype(np.float32), "y": y.astype(np.float32)}
    theta0 = sde.initial_params()
    key0 = jax.random.key(0)

    def logprior(p):
        return jnp.zeros((), jnp.float32) if sde.logprior is None else sde.logprior(p)

    def loglik(p, batch):
        return _solver.elbo_terms(sde, p, key0, batch, 1.0)[1]

    target = from_logdensity(logprior, loglik, data, params=theta0, name=name)
    target = dataclasses.replace(target, init_params=lambda key: theta0)
    return target
