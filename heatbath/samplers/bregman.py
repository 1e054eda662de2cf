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

At T = 0 (a constant temperature schedule equal to 0) the samplers are the forward-backward
methods for argmin f + g, with no envelope (``lam`` plays no role):

- MYULA: the proximal gradient method (ISTA), theta <- prox_{h g}(theta + h grad log p~(theta));
- BMUMLA: the Bregman proximal gradient method in the geometry of phi (a mirror descent step,
  then the Bregman prox under phi; ``prox=`` plays no role),
      theta <- P^phi_{h g}( grad phi*( grad phi(theta) + h grad log p~(theta) ) );
- BMULA: the same with phi = psi, its ``prox=`` map (ISTA when psi is Euclidean).

The target's term must have a Bregman prox under that map (checked before compiling). A
temperature schedule that varies (annealing to 0) keeps the Langevin steps above.

Default start: when no ``init=`` is given, the drivers' uniform(-2, 2) draws u are mapped into
the domain of a mirror map with a restricted domain (phi for BMUMLA, psi for BMULA):
:func:`heatbath.kernels.mirror.interior` (box: centre + half-width tanh(u / 2); simplex:
grad phi*(u) = softmax([u, 0]) without its last entry; Burg: exp(u)). An explicit ``init=``
outside the domain is refused before compiling.

Info: ``lp`` is the log density the chain samples at the step's start, log p~ - g^{lam,psi}
(finite outside a constraint set, where g is +inf), so it flags divergences as for every
sampler; at T = 0 it is the objective log p~ - g (g's value is left out at a start outside
g's domain, where it is +inf, so that the first projecting step is not a divergence). Step
size and lam are required: no rule chooses them from a nonsmooth target (h must stay below
lam for the envelope's 1/lam-Lipschitz gradient; see the README for values; at T = 0, h below
1 / L for an L-smooth f, the proximal gradient method's condition).
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


def forward_backward_map(mirror=None, psi=None):
    """The map of the T = 0 step: phi for BMUMLA (``mirror``), else psi (None: Euclidean)."""
    return mirror if mirror is not None else psi


def _prox_step(nonsmooth, geometry, z, h):
    """P^geometry_{h g}(z) (the Euclidean prox for None / the identity metric); z without g."""
    if nonsmooth is None:
        return z
    if _prox.is_identity_metric(geometry):
        return nonsmooth.prox(z, h)
    return nonsmooth.bregman_prox(z, h, geometry)


def build_forward_backward(step_size, geometry=None):
    """The T = 0 transition: theta <- P^phi_{h g}(grad phi*(grad phi(theta) + h grad log p~(theta)))
    with phi = ``geometry`` (None or the identity metric: ISTA, prox_{h g}(theta + h grad log p~))."""
    euclid = _prox.is_identity_metric(geometry)

    def step(key, state: BregmanState, batch, oracle):
        del key
        h = step_size(state.step)
        x = state.position
        lp, g = oracle(x, batch)
        if euclid:
            z = jax.tree.map(lambda p, d: p + h * d, x, g)
        else:
            z = geometry.grad_conj(jax.tree.map(lambda y, d: y + h * d, geometry.grad(x), g))
        new = _prox_step(oracle.nonsmooth, geometry, z, h)
        if oracle.nonsmooth is not None:
            gx = oracle.nonsmooth.value(x)
            lp = lp - jnp.where(jnp.isposinf(gx), 0.0, gx)
        info = Info(h, jnp.zeros_like(h), tree.norm(g), lp, jnp.logical_not(tree.all_finite(new)))
        return BregmanState(new, state.step + 1), info

    return step


def build_kernel(step_size, temperature, lam: float, mirror=None, psi=None, noise=None):
    """The BMUMLA transition (module docstring); ``mirror=None`` is the Euclidean Langevin step
    (BMULA, and MYULA with ``psi=None``). ``step_size``, ``temperature``: validated schedules.
    A constant temperature 0 gives the forward-backward step (:func:`build_forward_backward`)."""
    if _schedules.is_constant(temperature) == 0.0:
        return build_forward_backward(step_size, forward_backward_map(mirror, psi))
    source = _noise.as_noise(noise)

    def step(key, state: BregmanState, batch, oracle):
        h = step_size(state.step)
        T = temperature(state.step)
        x = state.position
        lp, g = oracle(x, batch)
        env_value, env_grad = envelope(oracle.nonsmooth, psi, x, lam)
        drift = jax.tree.map(lambda gl, el: gl - el, g, env_grad)
        c = jnp.sqrt(2.0 * h * T)
        if mirror is None:
            new = jax.tree.map(lambda p, d: p + h * d, x, drift)
            xi = source.draw(key, x)
            new = jax.tree.map(lambda p, n: p + c * n, new, xi)
        else:
            y = jax.tree.map(lambda z, d: z + h * d, mirror.grad(x), drift)
            xi = mirror.hess_sqrt(x, source.draw(key, x))
            y = jax.tree.map(lambda z, n: z + c * n, y, xi)
            new = mirror.grad_conj(y)
        info = Info(h, T, tree.norm(g), lp - env_value, jnp.logical_not(tree.all_finite(new)))
        return BregmanState(new, state.step + 1), info

    return step


def _check_start(name, mirror, psi, zero_temperature):
    if zero_temperature:  # the forward-backward step: one map, for the mirror step and the prox
        mirror, psi = forward_backward_map(mirror, psi), None

    def check_start(target, positions):
        if target.nonsmooth is not None:
            chain0 = jax.tree.map(lambda v: v[0], positions)
            _prox.check(target.nonsmooth, chain0, mirror if zero_temperature else psi,
                        where="the target's parameters")
        if mirror is not None:
            _mirror.check_domain(mirror, positions)
        if psi is not None and not _prox.is_identity_metric(psi):
            _mirror.check_domain(psi, positions, what=f"initial position (for {name}'s envelope)")

    return check_start


def _default_init(mirror, psi):
    """Maps the drivers' default uniform(-2, 2) starts into phi's domain (psi's for BMULA)."""
    domain = forward_backward_map(mirror, psi)
    if domain is None or domain.kind not in ("box", "simplex", "burg"):
        return None

    def default_init(target, positions):
        del target
        return jax.vmap(lambda u: _mirror.interior(domain, u))(positions)

    return default_init


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
    zero_temperature = _schedules.is_constant(T) == 0.0

    def init(position, key=None):
        del key
        return BregmanState(position, jnp.zeros((), jnp.int32))

    return make_sampler(constructor, hyper, base_name=base_name, init=init, step=step, gradient=spec,
                        temperature=T, uses=("nonsmooth",),
                        check_start=_check_start(base_name, mirror, psi, zero_temperature),
                        default_init=_default_init(mirror, psi))


def myula(step_size=None, lam=None, *, temperature=1.0, gradient=None, noise=None) -> Sampler:
    """MYULA: theta <- theta + h grad log p~ - (h / lam)(theta - prox_{lam g}(theta)) + sqrt(2 h T) xi.

    Durmus, Moulines & Pereyra (2018), the baseline of Lau & Liu (2022). g is the target's
    nonsmooth term (its Euclidean ``prox``).

    Args:
      step_size: h > 0, a number or a schedule (required; h <= lam / 2 keeps the envelope step stable).
      lam: the Moreau-Yosida smoothing lam > 0 (required); the chain samples exp(-f - g^lam).
        Unused at T = 0 (still required and validated).
      temperature: T >= 0 (keyword-only). A constant T = 0 is the proximal gradient method
        (ISTA) theta <- prox_{h g}(theta + h grad log p~(theta)), on f + g itself (no envelope).
      gradient: the gradient estimator of log p~ (``"naive"``, ``"cv"``, a spec), as for ``sgld``.
      noise: the source of xi (default Brownian).
    """
    hyper = dict(step_size=step_size, lam=lam, temperature=temperature, gradient=gradient, noise=noise)
    return _sampler(myula, "myula", hyper, step_size, lam, None, None, temperature, gradient, noise)


def bmula(step_size=None, lam=None, *, prox=None, temperature=1.0, gradient=None, noise=None) -> Sampler:
    """BMULA: theta <- theta + h (grad log p~ - hess psi (theta - P^psi_{lam g}(theta)) / lam) + sqrt(2 h T) xi.

    Lau & Liu (2022): Euclidean Langevin on the left Bregman-Moreau envelope of g under psi.

    Args:
      step_size, lam, temperature, gradient, noise: as for :func:`myula`. At T = 0: the Bregman
        proximal gradient method under psi, theta <- P^psi_{h g}(grad psi*(grad psi(theta) + h grad
        log p~)) (ISTA for psi None; lam unused).
      prox: psi, the mirror map of the Bregman prox and envelope (:mod:`heatbath.kernels.mirror`;
        e.g. ``hypentropy(beta)`` or ``euclidean(m)`` with a diagonal m). None: Euclidean (MYULA).
        The target's term needs a ``bregman_prox`` (every term of :mod:`heatbath.kernels.prox`
        has one for the maps its docstring lists). With a restricted domain (burg, box,
        simplex) and no ``init=``, the chains start inside it (module docstring).
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
      step_size, lam, temperature, gradient, noise: as for :func:`myula`. At T = 0: the Bregman
        proximal gradient method under phi, theta <- P^phi_{h g}(grad phi*(grad phi(theta) + h grad
        log p~)), on f + g itself (lam and ``prox`` unused; the term needs a Bregman prox under
        phi, checked before compiling).
      mirror: phi, the mirror map of the Langevin step (required; :mod:`heatbath.kernels.mirror`:
        ``hypentropy(beta)``, ``box(lower, upper)``, ``burg()``, ``simplex()``, ``euclidean(m)``).
        The initial positions must lie in its domain (checked before compiling); without
        ``init=`` the chains start inside it (:func:`heatbath.kernels.mirror.interior`).
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
