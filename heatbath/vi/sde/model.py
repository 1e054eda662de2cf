"""The latent SDE model of the neural-SDE VI: its user functions, checks and target.

Prior (Daems et al., ICLR 2024, Sec. 4), for a latent X in R^d on the span [t0, t1]:

    dX = b(t, X) dt + s(t, X) * dB^(t),    dB^ = sum_k omega_k(H) dY_k,   dY_k = -gamma_k Y_k dt + dW,

with B^ the Markov approximation of fBM (:mod:`heatbath.kernels.fbm`), one W per latent
coordinate and s diagonal. The variational posterior steers the OU states with a control
u(t, X, Y, context):  dY_k = (-gamma_k Y_k + u) dt + dW, so that dB^ gains (sum_k omega_k) u dt.
With ``noise_scale=True`` the control also returns log sigma, and each Euler step of the posterior
draws sigma dW + u dt (a discrete-time family: see :mod:`heatbath.vi.sde.solver`).

User functions take ``(params, t, state, context)``:

- ``drift(p, t, x, ctx) -> (d,)`` and ``diffusion(p, t, x, ctx) -> (d,)`` (the diagonal of s);
- ``control(p, t, z, ctx) -> (d,)`` with z = concat(x, Y.ravel()) the augmented state
  (Y of shape (d, K)); the default is a small tanh MLP (:func:`mlp_control`) with a zero
  last layer (u = 0: the posterior starts at the prior); with ``noise_scale=True`` it returns
  (2 d,): (u, log sigma);
- ``likelihood(p, t, x, y) -> log p(y | X(t) = x)`` for one observation row (default
  :func:`gaussian` with sd 0.1);
- ``context(ts, batch) -> (len(ts), c)``: what the control sees of the data at each grid time
  (default :func:`next_observation`; :func:`next_observations` gives the next k).

Each gets its own entry of the parameter dict (``params["drift"]`` ...). The trainable
parameters are those entries, plus ``hurst_logit`` (H = sigmoid(hurst_logit)) when H is learned
and ``x0`` = {mean, log_sd} when X(0) has a prior (``x0_prior``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import fbm as _fbm
from heatbath.kernels import validate as _validate

__all__ = ["LatentSDE", "latent_sde", "mlp_init", "mlp_apply", "mlp_control", "mlp_drift", "gaussian",
           "next_observation", "next_observations", "no_context", "check_observations"]


# ----------------------------------------------------------------------------------------
# Small MLPs (plain JAX: the core takes pure functions and pytrees)
# ----------------------------------------------------------------------------------------
def mlp_init(key, sizes, *, zero_last: bool = False, dtype=jnp.float32):
    """Weights of an MLP with layer sizes ``sizes`` (LeCun-normal, zero biases); ``zero_last``
    zeroes the last layer (the Glow trick the paper uses for the control: u = 0 at start)."""
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        w = jax.random.normal(k, (m, n), dtype) / math.sqrt(m)
        if zero_last and i == len(sizes) - 2:
            w = jnp.zeros_like(w)
        params.append({"w": w, "b": jnp.zeros((n,), dtype)})
    return params


def mlp_apply(params, inputs, activation=jnp.tanh):
    """The MLP: tanh between layers, linear output."""
    h = inputs
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            h = activation(h)
    return h


def _time_features(t, horizon):
    s = 2.0 * math.pi * t / horizon
    return jnp.stack([jnp.sin(s), jnp.cos(s), t / horizon])


def mlp_control(key, dim: int, num_k: int, context_dim: int, *, horizon: float = 1.0, width: int = 64,
                depth: int = 2, noise_scale: bool = False):
    """A control u(t, z, ctx): an MLP of (sin, cos of 2 pi t / horizon, t / horizon, z, ctx),
    z = (x, Y) of size d (1 + K). Returns ``(function, params)``; the last layer starts at 0.
    ``noise_scale=True``: 2 d outputs, (u, log sigma), for ``latent_sde(..., noise_scale=True)``
    (at the start u = 0 and sigma = 1: the prior)."""
    sizes = [3 + dim * (1 + num_k) + context_dim] + [width] * depth + [2 * dim if noise_scale else dim]
    params = mlp_init(key, sizes, zero_last=True)

    def control(p, t, z, ctx):
        return mlp_apply(p, jnp.concatenate([_time_features(t, horizon).astype(z.dtype), z, ctx.astype(z.dtype)]))

    return control, params


def mlp_drift(key, dim: int, *, width: int = 32, depth: int = 2):
    """A drift b(t, x) = MLP(x) (autonomous). Returns ``(function, params)``."""
    params = mlp_init(key, [dim] + [width] * depth + [dim])

    def drift(p, t, x, ctx):
        return mlp_apply(p, x)

    return drift, params


def gaussian(sd: float = 0.1, *, learn: bool = False):
    """log N(y | x[:len(y)], sd^2) for one row. ``learn=True``: sd = exp(params["likelihood"]["log_sd"]),
    starting at ``sd``. Returns ``(function, params)``."""
    sd = _validate.check_real(sd, "sd", low=0.0, low_open=True)
    params = {"log_sd": jnp.asarray(math.log(sd), jnp.float32)} if learn else {}

    def likelihood(p, t, x, y):
        s = jnp.exp(p["log_sd"]) if learn else sd
        r = (y - x[: y.shape[-1]]) / s
        return jnp.sum(-0.5 * r**2 - jnp.log(s) - 0.5 * math.log(2 * math.pi))

    return likelihood, params


def next_observation(ts, batch):
    """Context at each grid time t: (y of the next observation at or after t, its time - t,
    1 if there is one else 0), from the step's batch (the full series with ``batch_size=None``)."""
    t_obs, y = batch["t"], batch["y"]
    gap = t_obs[None, :] - ts[:, None]
    masked = jnp.where(gap >= 0, gap, jnp.inf)
    j = jnp.argmin(masked, axis=1)
    has = jnp.isfinite(jnp.min(masked, axis=1))
    y_next = jnp.where(has[:, None], y[j], 0.0)
    return jnp.concatenate([y_next, jnp.where(has, masked[jnp.arange(ts.shape[0]), j], 0.0)[:, None],
                            has[:, None].astype(y.dtype)], axis=1)


next_observation.dim = lambda obs_dim: obs_dim + 2  # type: ignore[attr-defined]


def next_observations(k: int = 8):
    """A context that sees ahead: at each grid time t, the next ``k`` observations at or after t
    (y_j, t_j - t, and 1 if there is one else 0, for j = next, ..., next + k - 1; zeros past the
    last observation), from the step's batch. Its size is k (obs_dim + 2); ``k=1`` is
    :func:`next_observation` up to the order of the columns."""
    k = _validate.check_int(k, "k", minimum=1)

    def next_k(ts, batch):
        t_obs, y = batch["t"], batch["y"]
        n_obs = t_obs.shape[0]
        j = jnp.searchsorted(t_obs, ts, side="left")
        idx = j[:, None] + jnp.arange(k)[None, :]  # (len(ts), k)
        has = idx < n_obs
        idc = jnp.minimum(idx, n_obs - 1)
        ys = jnp.where(has[..., None], y[idc], 0.0).reshape(ts.shape[0], -1)
        gaps = jnp.where(has, t_obs[idc] - ts[:, None].astype(t_obs.dtype), 0.0)
        return jnp.concatenate([ys, gaps.astype(y.dtype), has.astype(y.dtype)], axis=1)

    next_k.dim = lambda obs_dim: k * (obs_dim + 2)  # type: ignore[attr-defined]
    next_k.__qualname__ = f"next_observations({k})"
    return next_k


def no_context(ts, batch):
    """No context: the control sees only (t, x, Y)."""
    return jnp.zeros((ts.shape[0], 0), batch["y"].dtype)


no_context.dim = lambda obs_dim: 0  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class LatentSDE:
    """A checked latent SDE (build it with :func:`latent_sde`)."""

    dim: int
    obs_dim: int
    drift: Callable
    diffusion: Callable
    control: Callable
    likelihood: Callable
    context: Callable
    params: dict
    approx: Any  # heatbath.kernels.fbm.MarkovFBM
    span: tuple
    num_steps: int
    x0: Optional[np.ndarray]
    x0_prior: Optional[tuple]
    hurst_init: float
    logprior: Optional[Callable]
    noise_scale: bool = False

    @property
    def dt(self) -> float:
        return (self.span[1] - self.span[0]) / self.num_steps

    @property
    def learn_hurst(self) -> bool:
        return self.approx.hurst is None

    def grid(self, dtype=jnp.float32):
        return jnp.asarray(self.span[0] + self.dt * np.arange(self.num_steps + 1), dtype)

    def initial_params(self) -> dict:
        p = {k: self.params.get(k, {}) for k in ("drift", "diffusion", "control", "likelihood")}
        if self.learn_hurst:
            h = self.hurst_init
            p["hurst_logit"] = jnp.asarray(math.log(h / (1 - h)), jnp.float32)
        if self.x0_prior is not None:
            m, s = self.x0_prior
            p["x0"] = {"mean": jnp.asarray(m, jnp.float32), "log_sd": jnp.log(jnp.asarray(s, jnp.float32))}
        return p

    def hurst(self, params):
        """H: the fixed value, or sigmoid(params["hurst_logit"])."""
        if self.learn_hurst:
            return jax.nn.sigmoid(params["hurst_logit"])
        return jnp.asarray(self.approx.hurst)

    def describe(self) -> dict:
        name = lambda f: getattr(f, "__qualname__", type(f).__name__)  # noqa: E731
        return dict(dim=self.dim, obs_dim=self.obs_dim, drift=name(self.drift), diffusion=name(self.diffusion),
                    control=name(self.control), likelihood=name(self.likelihood), context=name(self.context),
                    hurst=self.approx.hurst, num_k=int(self.approx.num_k), kind=self.approx.kind,
                    gamma=[float(g) for g in self.approx.gamma], horizon=self.approx.horizon,
                    span=list(self.span), num_steps=self.num_steps,
                    x0=None if self.x0 is None else self.x0.tolist(),
                    x0_prior=None if self.x0_prior is None else [np.asarray(v).tolist() for v in self.x0_prior],
                    hurst_init=self.hurst_init, noise_scale=self.noise_scale)


def _check_fn(f, name):
    if not callable(f):
        raise TypeError(f"{name} must be a function of (params, t, state, context), got {type(f).__name__}")
    return f


def latent_sde(
    drift: Callable,
    diffusion=1.0,
    *,
    span,
    dt: float,
    dim: int = 1,
    obs_dim: Optional[int] = None,
    control: Optional[Callable] = None,
    likelihood=None,
    context: Optional[Callable] = None,
    params: Optional[dict] = None,
    hurst=None,
    hurst_init: float = 0.5,
    num_k: int = 5,
    gamma_max: float = 20.0,
    kind: int = 1,
    horizon: Optional[float] = None,
    x0=None,
    x0_prior=None,
    logprior: Optional[Callable] = None,
    seed: int = 0,
    noise_scale: bool = False,
) -> LatentSDE:
    """A latent SDE driven by Markov-approximate fBM (see the module docstring).

    Args:
      drift: b(params, t, x, ctx) -> (d,).
      diffusion: s(params, t, x, ctx) -> (d,) (diagonal), or a positive number (constant s).
      span: (t0, t1), t0 < t1: the time span (observations must lie inside it).
      dt: the Euler step (rounded down so that it divides the span); gamma_max * dt must be
        < 0.5 (the Euler scheme of the fastest OU process is unstable beyond).
      dim: d, the latent dimension. obs_dim: columns of y (default d).
      control: u(params, t, z, ctx) -> (d,) (with ``noise_scale``: (2 d,), u then log sigma);
        default :func:`mlp_control` (width 64, depth 2).
      likelihood: ``(function, params)`` or a function log p(y | x) of (params, t, x, y);
        default :func:`gaussian` (sd 0.1).
      context: ``context(ts, batch)``; default :func:`next_observation`.
      params: initial parameters, a dict with any of "drift", "diffusion", "control", "likelihood".
      hurst: H in (0, 1) fixed (0.5: exact Brownian motion), or None to learn it.
      hurst_init: H at the start when it is learned (default 0.5).
      num_k, gamma_max, kind: the Markov approximation (:func:`heatbath.kernels.fbm.markov_fbm`).
      horizon: T for omega (default t1 - t0).
      x0: the fixed initial state (default zeros), or ``x0_prior=(mean, sd)``: X(0) ~ N(mean,
        sd^2) a priori, with a learned Gaussian q(X(0)) and its KL in the ELBO.
      logprior: optional log p(params) of the trainable parameters (MAP for them; default flat).
      seed: the key of the default control's initial weights.
      noise_scale: False (default): the posterior's Euler step is the prior's with its
        Brownian increment shifted by u dt (the Girsanov family). True: the control also scales
        it, sigma dW + u dt, with the exact KL of the Euler chains per step, (1/2) |u|^2 dt +
        (1/2) sum(sigma^2 - 1 - 2 log sigma) (:mod:`heatbath.vi.sde.solver`): a discrete-time
        family that can narrow the path within a step, where an observation's noise is smaller
        than one step's prior noise (the shift alone cannot).
    """
    dim = _validate.check_int(dim, "dim", minimum=1)
    obs_dim = dim if obs_dim is None else _validate.check_int(obs_dim, "obs_dim", minimum=1)
    try:
        t0, t1 = (float(v) for v in span)
    except (TypeError, ValueError) as err:
        raise TypeError(f"span must be a pair (t0, t1) of numbers, got {span!r}") from err
    if not (math.isfinite(t0) and math.isfinite(t1)) or t1 <= t0:
        raise ValueError(f"span must be an increasing time interval (t0 < t1), got {span!r}")
    dt = _validate.check_real(dt, "dt", low=0.0, low_open=True)
    if hurst is not None:
        hurst = _fbm.check_hurst(hurst)
    hurst_init = _fbm.check_hurst(hurst_init, "hurst_init")
    horizon = t1 - t0 if horizon is None else horizon
    approx = _fbm.markov_fbm(hurst, num_k=num_k, gamma_max=gamma_max, kind=kind, horizon=horizon)
    num_steps = int(math.ceil((t1 - t0) / dt - 1e-9))
    gmax = float(np.max(approx.gamma))
    if gmax * (t1 - t0) / num_steps >= 0.5:
        raise ValueError(f"dt={dt:g} is too large for the fastest OU speed gamma_max={gmax:g}: Euler needs "
                         f"gamma_max * dt < 0.5 (dt < {0.5 / gmax:g})")
    params = {} if params is None else dict(params)
    unknown = set(params) - {"drift", "diffusion", "control", "likelihood"}
    if unknown:
        raise ValueError(f"params has unknown entries {sorted(unknown)}: use 'drift', 'diffusion', 'control', 'likelihood'")
    _check_fn(drift, "drift")
    if not isinstance(noise_scale, (bool, np.bool_)):
        raise TypeError(f"noise_scale must be True or False, got {noise_scale!r}")
    if not callable(diffusion):
        s = _validate.check_real(diffusion, "diffusion", low=0.0, low_open=True)
        diffusion = lambda p, t, x, ctx: jnp.full_like(x, s)  # noqa: E731
    if likelihood is None:
        likelihood = gaussian(0.1)
    if isinstance(likelihood, tuple):
        likelihood, params["likelihood"] = likelihood[0], params.get("likelihood", likelihood[1])
    _check_fn(likelihood, "likelihood")
    context = next_observation if context is None else _check_fn(context, "context")
    if control is None:
        cdim = context.dim(obs_dim) if hasattr(context, "dim") else None
        if cdim is None:
            raise ValueError("a custom context needs a custom control (the default MLP's input size is unknown)")
        control, cparams = mlp_control(jax.random.key(seed), dim, approx.num_k, cdim, horizon=t1 - t0,
                                       noise_scale=bool(noise_scale))
        params.setdefault("control", cparams)
    _check_fn(control, "control")
    if x0 is not None and x0_prior is not None:
        raise ValueError("give x0 (a fixed initial state) or x0_prior (a Gaussian prior on it), not both")
    if x0_prior is not None:
        try:
            m, s = (np.broadcast_to(np.asarray(v, np.float64), (dim,)) for v in x0_prior)
        except (TypeError, ValueError) as err:
            raise ValueError(f"x0_prior must be (mean, sd), each a number or a vector of length {dim}") from err
        if not np.all(np.isfinite(m)) or not np.all(s > 0):
            raise ValueError("x0_prior needs a finite mean and sd > 0")
        x0_prior = (m.copy(), s.copy())
    else:
        x0 = np.zeros(dim) if x0 is None else np.asarray(x0, np.float64).reshape(-1)
        if x0.shape != (dim,) or not np.all(np.isfinite(x0)):
            raise ValueError(f"x0 must be a finite vector of length dim={dim}, got {x0!r}")
    return LatentSDE(dim, obs_dim, drift, diffusion, control, likelihood, context, params, approx, (t0, t1),
                     num_steps, x0, x0_prior, hurst_init, logprior, bool(noise_scale))


def check_observations(sde: LatentSDE, times, values):
    """Observations as float arrays (N,), (N, obs_dim), sorted by time; errors for a
    non-increasing time grid and for times outside the span."""
    t = np.asarray(times, np.float64)
    y = np.asarray(values, np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"times must be a non-empty vector, got shape {t.shape}")
    if y.ndim == 1:
        y = y[:, None]
    if y.shape != (t.size, sde.obs_dim):
        raise ValueError(f"values must have shape ({t.size}, {sde.obs_dim}) (one row per time), got {y.shape}")
    if not np.all(np.isfinite(t)) or not np.all(np.isfinite(y)):
        raise ValueError("times and values must be finite (no NaN or inf)")
    if t.size > 1 and not np.all(np.diff(t) > 0):
        bad = int(np.argmin(np.diff(t) > 0))
        raise ValueError(f"times must be strictly increasing: times[{bad}] = {t[bad]:g} >= times[{bad + 1}] = {t[bad + 1]:g}")
    t0, t1 = sde.span
    if t[0] < t0 or t[-1] > t1:
        raise ValueError(f"observation times must lie in the span [{t0:g}, {t1:g}]; got times in [{t[0]:g}, {t[-1]:g}]")
    return t, y
