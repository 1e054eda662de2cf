"""Euler-Maruyama for the controlled augmented state (X, Y) and the ELBO with its Girsanov term.

One Euler step of size dt, for each latent coordinate (W one Brownian motion per coordinate,
dW ~ N(0, dt) drawn from a noise source, :mod:`heatbath.kernels.noise`):

    u   = control(t, (X, Y), ctx)                                   (0 for the prior)
    dY  = (-gamma Y + u) dt + dW                                     (all K OU states, one dW)
    dX  = b(t, X, ctx) dt + s(t, X, ctx) * sum_k omega_k dY_k
    KL += (1/2) |u|^2 dt                                             (Girsanov: dW~ = dW + u dt)

(Daems et al. 2024, Eq. 11 and Sec. 4.2). With ``latent_sde(..., noise_scale=True)`` the
control returns (u, log sigma) and the posterior's step draws sigma dW + u dt instead:

    dY  = (-gamma Y + u) dt + sigma dW,     KL += (1/2) |u|^2 dt + (1/2) sum(sigma^2 - 1 - 2 log sigma)

(the exact KL of one step: both chains move (X, Y) along the same direction (s omega-sum, 1, ..., 1)
times one scalar Gaussian per coordinate, N(u dt, sigma^2 dt) against N(0, dt)). This family has
no continuous-time limit unless sigma -> 1, but for a fixed Euler grid the ELBO is exact and
tighter: the shift alone cannot make the posterior narrower than one step's prior noise, which
decides the fit when an observation's noise is smaller than that (README, Hurst recovery).

The ELBO of one path is

    sum_i log p(y_i | X(t_i)) * N / n  -  (1/2) int |u|^2 dt  -  KL(q(X0) || p(X0)),

with X(t_i) linearly interpolated between grid points (N / n: a minibatch of observation rows).
Only Euler-Maruyama is offered: it is the scheme the Girsanov sum above is the exact
discrete-time KL of (the controlled and the prior Euler chains are Gaussian transitions with
the same covariance, whose KL is exactly (1/2) |u|^2 dt per step), it runs in one ``lax.scan``
whose noise comes from heatbath's noise sources, and the stiff OU states are handled by the
gamma_max * dt < 0.5 check. Diffrax's higher-order SDE solvers would need Diffrax's Brownian
paths (not a noise source) and give no exact discrete KL; see the README.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from heatbath.kernels import fbm as _fbm
from heatbath.kernels import noise as _noise

__all__ = ["Paths", "simulate", "elbo_terms", "obs_index"]


class Paths(NamedTuple):
    """Simulated paths on the grid: ``x`` (n + 1, d), ``kl`` the Girsanov sum (1/2) int |u|^2 dt,
    ``kl0`` KL(q(X0) || p(X0)) (0 for a fixed X0)."""

    x: jax.Array
    kl: jax.Array
    kl0: jax.Array


def _x0(sde, params, key, dtype):
    if sde.x0_prior is None:
        return jnp.asarray(sde.x0, dtype), jnp.zeros((), dtype)
    m, log_s = params["x0"]["mean"].astype(dtype), params["x0"]["log_sd"].astype(dtype)
    pm, ps = (jnp.asarray(v, dtype) for v in sde.x0_prior)
    s = jnp.exp(log_s)
    x0 = m + s * jax.random.normal(key, m.shape, dtype)
    kl0 = jnp.sum(jnp.log(ps) - log_s + (s**2 + (m - pm) ** 2) / (2 * ps**2) - 0.5)
    return x0, kl0


def simulate(sde, params, key, ctx, *, controlled: bool = True, noise=None, dtype=jnp.float32) -> Paths:
    """One path of the posterior (``controlled``) or of the prior, on ``sde.grid()``.

    ``ctx``: the context at the grid's left points, shape (n, c). ``noise``: the source of the
    Brownian increments (default :func:`heatbath.kernels.noise.brownian`)."""
    source = _noise.as_noise(noise)
    approx = sde.approx
    n, dt = sde.num_steps, sde.dt
    k_x0, k_y0, k_w = jax.random.split(key, 3)
    omega = _fbm.weights(approx, sde.hurst(params) if sde.learn_hurst else None, dtype).astype(dtype)
    gamma = jnp.asarray(approx.gamma, dtype)
    x0, kl0 = _x0(sde, params, k_x0, dtype)
    y0 = _fbm.init_ou(k_y0, approx, (sde.dim,), dtype)
    dws = source.draw(k_w, jnp.zeros((n, sde.dim), dtype)) * jnp.sqrt(jnp.asarray(dt, dtype))
    ts = sde.grid(dtype)[:-1]
    p_b, p_s, p_u = params["drift"], params["diffusion"], params["control"]

    def step(carry, inp):
        x, y, kl = carry
        t, dw, c = inp
        if controlled:
            u = sde.control(p_u, t, jnp.concatenate([x, y.reshape(-1)]), c)
            if sde.noise_scale:
                if u.shape != (2 * sde.dim,):
                    raise ValueError(f"with noise_scale=True the control must return shape ({2 * sde.dim},) "
                                     f"(u then log sigma), got {u.shape}")
                u, log_sigma = u[: sde.dim], u[sde.dim:]
                sigma = jnp.exp(log_sigma)
                dw = sigma * dw
                kl = kl + 0.5 * jnp.sum(sigma**2 - 1.0 - 2.0 * log_sigma)
            kl = kl + 0.5 * jnp.sum(u**2) * dt
        else:
            u = jnp.zeros_like(x)
        y, dy = _fbm.ou_euler(y, dw, gamma, dt, u)
        x = x + sde.drift(p_b, t, x, c) * dt + sde.diffusion(p_s, t, x, c) * _fbm.increment(omega, dy)
        return (x, y, kl), x

    (_, _, kl), xs = jax.lax.scan(step, (x0, y0, jnp.zeros((), dtype)), (ts, dws, ctx))
    return Paths(jnp.concatenate([x0[None], xs]), kl, kl0)


def obs_index(sde, t_obs):
    """(left grid index, weight of the right point) of linear interpolation at ``t_obs``."""
    pos = (t_obs - sde.span[0]) / sde.dt
    i = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, sde.num_steps - 1)
    return i, pos - i


def at_times(sde, x, t_obs):
    """X at the times ``t_obs`` (linear interpolation on the grid), shape (m, d)."""
    i, w = obs_index(sde, t_obs)
    w = w.astype(x.dtype)[:, None]
    return (1 - w) * x[i] + w * x[i + 1]


def elbo_terms(sde, params, key, batch, scale, *, dtype=jnp.float32):
    """(ELBO, log-likelihood, path KL, KL of X0) of one posterior path on ``batch``."""
    ctx = sde.context(sde.grid(dtype)[:-1], batch)
    paths = simulate(sde, params, key, ctx, dtype=dtype)
    xo = at_times(sde, paths.x, batch["t"])
    ll = jnp.sum(jax.vmap(lambda t, x, y: sde.likelihood(params["likelihood"], t, x, y))(batch["t"], xo, batch["y"]))
    ll = ll * scale
    return ll - paths.kl - paths.kl0, ll, paths.kl, paths.kl0
