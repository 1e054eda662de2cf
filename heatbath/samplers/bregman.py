"""Bregman proximal Langevin Monte Carlo: MYULA, BMULA and BMUMLA (Lau & Liu, ICML 2022).

Target pi ~ exp(-(f + g) / T), f = -log p~ smooth (the model's log posterior, estimated from
minibatches by the sampler's gradient estimator like every sampler) and g convex but
nonsmooth (L1, total variation, group lasso, box constraints), declared on the target
(``from_logdensity(..., nonsmooth=...)``, ``from_numpyro(..., nonsmooth=...)``, terms from
:mod:`heatbath.kernels.prox`). g is replaced by its left Bregman-Moreau envelope under a
Legendre function psi (:mod:`heatbath.kernels.mirror`), whose gradient needs only the
Bregman prox P = P^psi_{lam g}:

    grad g^{lam,psi}(theta) = hess psi(theta) (theta - P(theta)) / lam.

With step size h, temperature T, xi ~ N(0, I) and d = grad log p~(theta) - grad g^{lam,psi}(theta):

- MYULA (Durmus, Moulines & Pereyra 2018; psi Euclidean, Euclidean Langevin):
      theta <- theta + h grad log p~(theta) - (h / lam) (theta - prox_{lam g}(theta)) + sqrt(2 h T) xi
- BMULA (Lau & Liu 2022; any psi, Euclidean Langevin):
      theta <- theta + h d + sqrt(2 h T) xi
- BMUMLA (Lau & Liu 2022; any psi, mirror-Langevin with the mirror map phi):
      theta <- grad phi*( grad phi(theta) + h d + sqrt(2 h T) hess phi(theta)^(1/2) xi )

The chain samples exp(-(f + g^{lam,psi}) / T), within O(lam) of pi, up to the O(h)
discretisation bias. A mirror map whose domain is a set C (``mirror.box``, ``mirror.burg``,
``mirror.simplex``) keeps every draw in C: with g the indicator of C (or no g at all) BMUMLA
is the mirror-Langevin algorithm on C. A target without a nonsmooth term is sampled as by
ULA (MYULA, BMULA) or the mirror-Langevin algorithm (BMUMLA).

At T = 0 the steps are gradient / mirror descent on the envelope-smoothed objective
f + g^{lam,psi} (with h = lam, f = 0 and psi Euclidean: the proximal point method), whose
minimiser is within O(lam) of argmin f + g; this is not the forward-backward ordering
prox_{h g}(theta - h grad f) of the proximal gradient method.

Info: ``lp`` is the log density the chain samples at the step's start, log p~ - g^{lam,psi}
(finite outside a constraint set, where g is +inf), so it flags divergences as for every
sampler. Step size and lam are required: no rule chooses them from a nonsmooth target (h must
stay below lam for the envelope's 1/lam-Lipschitz gradient; see the README for values).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from heatbath.kernels import mirror as _mirror
from heatbath.kernels import noise as _noise
from heatbath.kernels import prox as _prox
from heatbath.kernels import schedules as _schedules
from heatbath.kernels import tree
from heatbath.kernels.gradients import naive
from heatbath.kernels.validate import check_real
from heatbath.samplers.base import Info, Sampler, check_gradient_spec, make_sampler

PyTree = Any

__all__ = ["BregmanState", "build_kernel", "myula", "bmula", "bmumla", "envelope"]


class BregmanState(NamedTuple):
    position: PyTree
    step: jax.Array


def envelope(nonsmooth, psi, x, lam):
    """(value, gradient) of the left Bregman-Moreau envelope of g under psi at x (Euclidean
    Moreau envelope for psi None or ``euclidean(1.0)``); (0, 0) for a target without g."""
    if nonsmooth is None:
        return jnp.zeros(()), tree.zeros_like(x)
    return _prox.bregman_moreau_envelope(nonsmooth, psi, x, lam)


def build_kernel(step_size, temperature, lam: float, mirror=None, psi=None, noise=None):
    """The BMUMLA transition (module docstring); ``mirror=None`` is the Euclidean Langevin step
    (BMULA, and MYULA with ``psi=None``). ``step_size``, ``temperature``: validated schedules."""
    noiseless = _schedules.is_constant(temperature) == 0.0
    source = _noise.as_noise(noise)

    def step(key, state: BregmanState, batch, oracle):
        h = step_size(state.step)
        T = temperature(state.step)
        x = state.position
        lp, g = oracle(x, batch)
        env_value, env_grad = envelope(oracle.nonsmooth, psi, x, lam)
        drift = jax.tree.map(lambda gl, el: gl - el, g, env_grad)
        if mirror is None:
            new = jax.tree.map(lambda p, d: p + h * d, x, drift)
            if not noiseless:
                xi = source.draw(key, x)
                c = jnp.sqrt(2.0 * h * T)
                new = jax.tree.map(lambda p, n: p + c * n, new, xi)
        else:
            y = jax.tree.map(lambda z, d: z + h * d, mirror.grad(x), drift)
            if not noiseless:
                xi = mirror.hess_sqrt(x, source.draw(key, x))
                c = jnp.sqrt(2.0 * h * T)
                y = jax.tree.map(lambda z, n: z + c * n, y, xi)
            new = mirror.grad_conj(y)
        info = Info(h, T, tree.norm(g), lp - env_value, jnp.logical_not(tree.all_finite(new)))
        return BregmanState(new, state.step + 1), info

    return step


def _check_start(name, mirror, psi):
    def check_start(target, positions):
        if target.nonsmooth is not None:
            chain0 = jax.tree.map(lambda v: v[0], positions)
            _prox.check(target.nonsmooth, chain0, psi, where="the target's parameters")
        if mirror is not None:
            _mirror.check_domain(mirror, positions)
        if psi is not None and not _prox.is_identity_metric(psi):
            _mirror.check_domain(psi, positions, what=f"initial position (for {name}'s envelope)")

    return check_start


def _sampler(constructor, base_name, hyper, step_size, lam, mirror, psi, temperature, gradient, noise):
    if step_size is None:
        raise ValueError(
            f"{base_name} needs step_size=: no rule chooses it from a nonsmooth target. The envelope's "
            "gradient is 1/lam-Lipschitz, so h <= lam / 2 is a safe start (smaller if grad log p~ is stiff)"
        )
    if lam is None:
        raise ValueError(f"{base_name} needs lam > 0, the envelope's smoothing (its bias on pi is O(lam))")
    lam = check_real(lam, "lam", low=0.0, low_open=True)
    h = _schedules.as_schedule(step_size, "step_size", positive=True)
    T = _schedules.as_schedule(temperature, "temperature", positive=False)
    spec = check_gradient_spec(naive() if gradient is None else gradient)
    step = build_kernel(h, T, lam, mirror, psi, _noise.as_noise(noise))

    def init(position, key=None):
        del key
        return BregmanState(position, jnp.zeros((), jnp.int32))

    return make_sampler(constructor, hyper, base_name=base_name, init=init, step=step, gradient=spec,
                        temperature=T, uses=("nonsmooth",), check_start=_check_start(base_name, mirror, psi))


def myula(step_size=None, lam=None, *, temperature=1.0, gradient=None, noise=None) -> Sampler:
    """MYULA: theta <- theta + h grad log p~ - (h / lam)(theta - prox_{lam g}(theta)) + sqrt(2 h T) xi.

    Durmus, Moulines & Pereyra (2018), the baseline of Lau & Liu (2022). g is the target's
    nonsmooth term (its Euclidean ``prox``).

    Args:
      step_size: h > 0, a number or a schedule (required; h <= lam / 2 keeps the envelope step stable).
      lam: the Moreau-Yosida smoothing lam > 0 (required); the chain samples exp(-f - g^lam).
      temperature: T >= 0 (keyword-only); T = 0 is gradient descent on f + g^lam.
      gradient: the gradient estimator of log p~ (``"naive"``, ``"cv"``, a spec), as for ``sgld``.
      noise: the source of xi (default Brownian).
    """
    hyper = dict(step_size=step_size, lam=lam, temperature=temperature, gradient=gradient, noise=noise)
    return _sampler(myula, "myula", hyper, step_size, lam, None, None, temperature, gradient, noise)


def bmula(step_size=None, lam=None, *, prox=None, temperature=1.0, gradient=None, noise=None) -> Sampler:
    """BMULA: theta <- theta + h (grad log p~ - hess psi (theta - P^psi_{lam g}(theta)) / lam) + sqrt(2 h T) xi.

    Lau & Liu (2022): Euclidean Langevin on the left Bregman-Moreau envelope of g under psi.

    Args:
      step_size, lam, temperature, gradient, noise: as for :func:`myula`.
      prox: psi, the mirror map of the Bregman prox and envelope (:mod:`heatbath.kernels.mirror`;
        e.g. ``hypentropy(beta)`` or ``euclidean(m)`` with a diagonal m). None: Euclidean (MYULA).
        The target's term needs a ``bregman_prox`` (every term of :mod:`heatbath.kernels.prox`
        has one for the maps its docstring lists).
    """
    psi = None if prox is None else _mirror.as_mirror(prox, "prox")
    hyper = dict(step_size=step_size, lam=lam, prox=prox, temperature=temperature, gradient=gradient, noise=noise)
    return _sampler(bmula, "bmula", hyper, step_size, lam, None, psi, temperature, gradient, noise)


def bmumla(step_size=None, lam=None, *, mirror=None, prox="mirror", temperature=1.0, gradient=None,
           noise=None) -> Sampler:
    """BMUMLA: theta <- grad phi*(grad phi(theta) + h d + sqrt(2 h T) hess phi(theta)^(1/2) xi),
    d = grad log p~(theta) - hess psi(theta) (theta - P^psi_{lam g}(theta)) / lam.

    Lau & Liu (2022), Algorithm 1 (the left envelope). The draws stay in the domain of phi.

    Args:
      step_size, lam, temperature, gradient, noise: as for :func:`myula`. At T = 0: mirror
        descent on f + g^{lam,psi}.
      mirror: phi, the mirror map of the Langevin step (required; :mod:`heatbath.kernels.mirror`:
        ``hypentropy(beta)``, ``box(lower, upper)``, ``burg()``, ``simplex()``, ``euclidean(m)``).
        The initial positions must lie in its domain (checked before compiling).
      prox: psi, the mirror map of the Bregman prox and envelope: ``"mirror"`` (default: psi = phi,
        Lau & Liu's hypentropy/hypentropy choice), another map, or None (Euclidean prox).
    """
    if mirror is None:
        raise ValueError("bmumla needs mirror=, a mirror map from heatbath.kernels.mirror (e.g. hypentropy(beta), "
                         "box(lower, upper)); with a Euclidean one use bmula")
    phi = _mirror.as_mirror(mirror, "mirror")
    if isinstance(prox, str):
        if prox != "mirror":
            raise ValueError(f"prox must be 'mirror', None or a mirror map, got {prox!r}")
        psi = phi
    else:
        psi = None if prox is None else _mirror.as_mirror(prox, "prox")
    hyper = dict(step_size=step_size, lam=lam, mirror=mirror, prox=prox, temperature=temperature,
                 gradient=gradient, noise=noise)
    return _sampler(bmumla, "bmumla", hyper, step_size, lam, phi, psi, temperature, gradient, noise)
