"""``laplace(...)``: the MAP by Adam through ``hb.fit``'s loop, then the curvature there.

    theta* = argmax log p(theta | D)           (Adam on minibatch gradients, ``num_steps`` steps)
    q(theta) = N(theta*, T Lambda^-1),   Lambda = -grad^2 log p(theta* | D)     ("hessian")
                                          or    = -grad^2 log p(theta*) + sum_i J_i' L_i J_i   ("ggn")

(MacKay 1992; Ritter, Botev & Barber 2018; Daxberger et al. 2021, "Laplace Redux"). J_i is the
Jacobian of the network's outputs f(x_i; theta) at theta*, L_i the Hessian of -log p(y_i | f)
in f: diag(p) - p p' (categorical), p (1 - p) (Bernoulli), 1/sigma^2 (Normal). The GGN is
positive semi-definite where the Hessian away from a mode need not be. ``structure="diag"``
keeps diag(Lambda); ``"full"`` the d x d matrix; ``subset=`` (site names) restricts the
approximation to those sites (the other weights fixed at theta*: ``subset`` = the last layer
with ``structure="full"`` is the last-layer Laplace). Curvature is formed on the full data after
the run, column by column (Hessian-vector products, or the Jacobian for the GGN): cost O(d)
HVPs, memory O(d m) for m covariance coordinates, so this is for networks of up to ~1e4 weights
in the subset.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import schedules as _schedules
from heatbath.kernels import validate as _validate
from heatbath.kernels.gradients import naive
from heatbath.samplers.base import check_gradient_spec
from heatbath.vi.base import VIMethod
from heatbath.vi.laplace.approximation import finalize

__all__ = ["laplace", "LaplaceState", "LaplaceInfo"]

STRUCTURES = ("diag", "full")
CURVATURES = ("ggn", "hessian")
LIKELIHOODS = ("categorical", "bernoulli", "normal")
OPTIONS = {}


class LaplaceState(NamedTuple):
    position: jax.Array
    step: jax.Array
    m: jax.Array
    v: jax.Array


class LaplaceInfo(NamedTuple):
    step_size: jax.Array
    temperature: jax.Array
    grad_norm: jax.Array
    lp: jax.Array
    diverging: jax.Array


def _check(meta, dim, dtype, options):
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"laplace takes no fit options {sorted(unknown)}")
    return options


def laplace(
    step_size: float = 1e-2,
    num_steps: int = 2000,
    *,
    structure: str = "diag",
    curvature: str = "hessian",
    subset=None,
    outputs=None,
    likelihood=None,
    noise_scale: float = 1.0,
    network=None,
    temperature: float = 1.0,
    gradient=None,
) -> VIMethod:
    """The Laplace approximation at the MAP (see the module docstring); run it with ``hb.fit``.

    Args:
      step_size: Adam's initial step size for the MAP search (cosine decay to 1/100 of it).
      num_steps: Adam steps.
      structure: ``"diag"`` or ``"full"`` precision.
      curvature: ``"hessian"`` (exact, any model) or ``"ggn"`` (needs the network's outputs).
      subset: site names whose weights get a covariance (default: all).
      outputs: ``outputs(params, X) -> (n, K)`` (or (n,)) network outputs at inputs X, params
        the model's unconstrained site dict; for the GGN, X is the data's ``"X"`` (a dict of
        data) or its first element (a tuple); with ``likelihood`` (``"categorical"``,
        ``"bernoulli"``, ``"normal"`` with ``noise_scale``). Needed for ``"ggn"`` and for
        ``Laplace.linearised_predictive``.
      network: a :class:`heatbath.models.network.BayesianNetwork`: sets ``outputs`` (its
        logits) and ``likelihood``.
      temperature: T: the covariance is T Lambda^-1 (the posterior p^(1/T)).
    """
    num_steps = _validate.check_int(num_steps, "num_steps", minimum=1)
    h = float(step_size)
    if not np.isfinite(h) or h <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if network is not None:
        outputs, likelihood = network.logits, network.likelihood
    if likelihood is not None and likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if curvature == "ggn" and (outputs is None or likelihood is None):
        raise ValueError("curvature='ggn' needs the network's outputs and likelihood (outputs=..., likelihood=..., "
                         "or network=a BayesianNetwork)")
    T = float(temperature)
    if not np.isfinite(T) or T <= 0:
        raise ValueError(f"temperature must be > 0 for a Laplace approximation, got {temperature}")
    if subset is not None:
        subset = (subset,) if isinstance(subset, str) else tuple(subset)
        if not subset:
            raise ValueError("subset must name at least one site")
    spec = check_gradient_spec(naive() if gradient is None else gradient)
    lr = _schedules.as_schedule(lambda t: h * (0.01 + 0.99 * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(t / num_steps, 1.0)))),
                                "step_size", positive=True)
    b1, b2, eps = 0.9, 0.999, 1e-8

    def init(position, key=None):
        position = jnp.asarray(position)
        z = jnp.zeros_like(position)
        return LaplaceState(position, jnp.zeros((), jnp.int32), z, z)

    def step(key, state, batch, oracle):
        lp, g = oracle(state.position, batch)
        t = state.step + 1
        m = b1 * state.m + (1 - b1) * g
        v = b2 * state.v + (1 - b2) * g * g
        tf = t.astype(state.position.dtype)
        mhat, vhat = m / (1 - b1**tf), v / (1 - b2**tf)
        a = lr(state.step)
        x = state.position + a * mhat / (jnp.sqrt(vhat) + eps)  # ascent on log p
        diverging = ~(jnp.all(jnp.isfinite(x)) & jnp.isfinite(lp))
        info = LaplaceInfo(jnp.asarray(a, x.dtype), jnp.asarray(0.0, x.dtype), jnp.sqrt(jnp.sum(g * g)), lp, diverging)
        return LaplaceState(x, t, m, v), info

    hyper = dict(step_size=step_size, num_steps=num_steps, structure=structure, curvature=curvature, subset=subset,
                 outputs=outputs, likelihood=likelihood, noise_scale=noise_scale, temperature=temperature,
                 gradient=spec)
    meta = dict(hyper, family="laplace")
    name = f"laplace-{structure}-{curvature}" + ("-subset" if subset else "")
    return VIMethod(
        init=init,
        step=step,
        gradient=spec,
        temperature=_schedules.as_schedule(0.0, "temperature", positive=False),
        name=name,
        num_steps=num_steps,
        hyperparameters=meta,
        finalize=lambda run, options: finalize(meta, run, options),
        check=lambda dim, dtype, options: _check(meta, dim, dtype, options),
        calls_per_step=lambda dim: (1, 0),
        flat=True,
        options_defaults=OPTIONS,
        rebuild=lambda **changes: laplace(**{**hyper, **changes}),
        grads_per_step=1.0,
        gradient_at_position=True,
    )
