"""The automatic metric: the run is made in coordinates where the posterior is round.

With an automatic step size the sampler's step is bounded by the stiffest direction of the
posterior (h = 2 EPS / lambda_max(H + V/T), :mod:`heatbath.drivers.autotune`) while the chain's
mixing time is set by its softest one (about 1 / (h lambda_min(H)) steps): the number of steps
per independent draw grows with the condition number of H + V/T against H, which is 1e2-1e7
on real models (regression coefficients on unscaled covariates, hierarchical scales). NUTS
adapts a mass matrix for the same reason (Stan's windowed adaptation, NumPyro's
``dense_mass``). Here the metric is the Laplace one, read where the chains start (the MAP
warm start, the default with an automatic step size):

    M = Hbar^-1,   Hbar = mean over the chains whose mode search converged of H(theta_c),
    theta = mu + L z,  L = Q Lambda^-1/2  (Hbar = Q Lambda Q'),  so that L L' = M,

and the sampler runs on z, whose log density log p(mu + L z) has Hessian L' H L (= I at the
modes when they agree). For a minibatched target the gradient noise is reshaped too: near the
mode the per-datum gradient covariance is about H / N, so V ~ (N/n) H and L' V L ~ (N/n) I.
The step-size criterion is then set by the noise level N/n alone instead of by the condition
number of H times it, and SGLD, pSGLD and SGHMC all mix in about (1 + N/n) / (2 EPS) steps per
unit of posterior sd. This is the same change of variables for every sampler (SGHMC with unit
mass on z is SGHMC with mass Hbar on theta), made by the driver, so the kernels are untouched.

Eigenvalues of Hbar are taken in absolute value (a saddle's negative curvature still gives a
length scale) and floored at lambda_max * FLOOR (a flat direction at the mode then gets the
length scale 1/sqrt(lambda_max FLOOR), and the warmup's second curvature measurement, made in
the typical set, lowers the step if it is stiffer there). The metric is dense up to
``DENSE_MAX`` unconstrained dimensions (d Hessian-vector products at each start, d^2 per
gradient evaluation for the map); above it the run keeps the identity metric (use pSGLD's
adaptive diagonal for networks). What was chosen is reported in ``Result.tuning["metric"]``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from heatbath.drivers import autotune, mapsearch
from heatbath.drivers.cache import IdentityCache
from heatbath.kernels import schedules as _schedules

__all__ = ["MODES", "DENSE_MAX", "FLOOR", "Affine", "applies", "laplace", "newton", "whiten", "centre_to_run"]

MODES = ("auto", "identity")
DENSE_MAX = 2000  # unconstrained dimensions up to which the dense Laplace metric is used
FLOOR = 1e-8  # eigenvalues of the averaged Hessian are floored at lambda_max * FLOOR
TUNED_MU, TUNED_L = "metric_mu", "metric_L"  # the names of mu and L among the compiled loop's arguments


@dataclasses.dataclass(frozen=True)
class Affine:
    """theta = unravel(mu + L ravel(z)): the map from the run's coordinates z to the target's."""

    mu: np.ndarray  # (d,)
    L: np.ndarray  # (d, d)
    L_inv: np.ndarray  # (d, d)
    unravel: object

    def forward(self, z, mu=None, L=None):
        """theta of one z (a pytree like the target's parameters); ``mu`` and ``L`` in place of
        this map's own (traced arguments of the compiled loop, see ``_whiten``)."""
        flat, _ = ravel_pytree(z)
        mu, L = (self.mu, self.L) if mu is None else (mu, L)
        return self.unravel(jnp.asarray(mu, flat.dtype) + jnp.asarray(L, flat.dtype) @ flat)

    def inverse(self, theta):
        """z of one theta."""
        flat, _ = ravel_pytree(theta)
        Li = jnp.asarray(self.L_inv, flat.dtype)
        return self.unravel(Li @ (flat - jnp.asarray(self.mu, flat.dtype)))


def _unravel(target):
    example = target.example_params()
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), example)
    return ravel_pytree(zero)[1]


def _hessian_fn(target, rows):
    """``(hess(x), unravel)``: the dense Hessian of -log p on ``rows`` at a flat x. The jitted
    function takes the rows as an argument and is kept on the target (no recompile per call)."""

    def build():
        unravel = _unravel(target)

        def hess(x, rows_):
            def u(y):
                return -target.logdensity(unravel(y), rows_)

            def column(e):
                return jax.jvp(jax.grad(u), (x,), (e,))[1]

            eye = jnp.eye(x.shape[0], dtype=x.dtype)
            return jax.lax.map(column, eye, batch_size=min(x.shape[0], 64))

        return jax.jit(hess), unravel

    hess, unravel = target.memo("metric_hessian", build)
    return (lambda x: hess(x, rows)), unravel


def _value_and_grad_fn(target):
    """Jitted (value, grad) of -log p on the full data at a flat x, kept on the target."""

    def build():
        unravel = _unravel(target)
        vg = jax.jit(jax.value_and_grad(lambda x, data: -target.logdensity(unravel(x), data)))
        return vg

    vg = target.memo("metric_value_and_grad", build)
    return lambda x: vg(x, target.data)


def _abs_eig(H):
    """Eigen-decomposition of the symmetrised H: (lambda, Q, |lambda| floored at lambda_max * FLOOR)."""
    lam, Q = np.linalg.eigh(0.5 * (H + H.T))
    top = max(float(np.max(np.abs(lam))), 1e-30)
    return lam, Q, np.maximum(np.abs(lam), top * FLOOR)


NEWTON_ITERS = 30
NEWTON_MAX_DIM = 500  # a Newton iteration costs d Hessian-vector products: bounded at 30 * 500 per chain
NEWTON_TOL = 0.05  # the mode search's tolerance (heatbath.drivers.mapsearch.TOL), posterior sds


def newton(target, positions, converged, key):
    """Damped Newton with the dense Hessian from the chains whose mode search did not converge.

    The MAP search (L-BFGS or Adam in float32) stalls on posteriors whose condition number is
    1e6 or more (a regression on unscaled covariates); with d <= ``NEWTON_MAX_DIM`` the dense Newton
    step (solved in float64, step halved until the log density rises) converges on them in a
    few iterations (where H is not positive definite the step uses |eigenvalues|, a saddle-free
    Newton step). A chain converges when its Newton decrement sqrt(g' H^-1 g) < 0.05 sd with
    H positive definite. Returns ``(positions, converged, info)``; chains left unconverged keep
    their position.
    """
    num_chains = jax.tree.leaves(positions)[0].shape[0]
    flat = np.array(mapsearch.flat_positions(positions))
    d = flat.shape[1]
    todo = [c for c in range(num_chains) if not converged[c]]
    if d > NEWTON_MAX_DIM or not todo:
        return positions, converged, None
    rows, nrows = autotune.curvature_rows(target, key)
    hess, unravel = _hessian_fn(target, rows)
    value_and_grad = _value_and_grad_fn(target)
    converged = np.array(converged, bool)
    cost, rescued, iters = 0.0, [], {}
    for c in todo:
        x = flat[c]
        for it in range(NEWTON_ITERS):
            v, g = (np.asarray(a, np.float64) for a in value_and_grad(jnp.asarray(x)))
            H = np.asarray(hess(jnp.asarray(x)), np.float64)
            cost += target.num_data + 2.0 * d * nrows
            if not (np.all(np.isfinite(H)) and np.all(np.isfinite(g)) and np.isfinite(v)):
                break
            lam, Q, lam_used = _abs_eig(H)
            # Saddle-free Newton (|lambda|, floored) away from the mode; converged only where H > 0.
            step = Q @ ((Q.T @ g) / lam_used)
            dec = float(np.sqrt(max(g @ step, 0.0)))
            if lam[0] > 0.0 and dec < NEWTON_TOL:
                converged[c] = True
                rescued.append(c)
                iters[c] = it
                break
            t = 1.0
            for _ in range(30):
                x_new = (x - t * step).astype(flat.dtype)
                v_new = float(value_and_grad(jnp.asarray(x_new))[0])
                cost += target.num_data
                if np.isfinite(v_new) and v_new <= v:
                    break
                t *= 0.5
            else:
                break
            x = x_new
        flat[c] = x
    new = jax.vmap(unravel)(jnp.asarray(flat))
    info = {"tried": todo, "converged": rescued, "iterations": {str(k): v for k, v in iters.items()},
            "cost_per_chain": cost / num_chains}
    return new, converged, info


def laplace(target, positions, usable, key):
    """The Laplace metric at the chains' ``positions`` (leading axis chain) whose ``usable`` flag is set.

    Returns ``(Affine or None, info)``; None (the identity metric) when no chain is usable, the
    dimension exceeds ``DENSE_MAX`` or the averaged Hessian is not finite. ``info`` says which.
    """
    num_chains = jax.tree.leaves(positions)[0].shape[0]
    flat = mapsearch.flat_positions(positions)
    d = int(flat.shape[1])
    if d > DENSE_MAX:
        return None, {"kind": "identity", "reason": f"{d} dimensions > {DENSE_MAX}: no dense metric"}
    chains = [c for c in range(num_chains) if usable[c]]
    if not chains:
        return None, {"kind": "identity", "reason": "no chain's mode search converged"}
    rows, nrows = autotune.curvature_rows(target, key)
    hess, unravel = _hessian_fn(target, rows)
    Hs = [np.asarray(hess(flat[c]), np.float64) for c in chains]
    Hs = [H for H in Hs if np.all(np.isfinite(H))]
    cost = 2.0 * d * nrows * len(chains)
    if not Hs:
        return None, {"kind": "identity", "reason": "the Hessian at the modes is not finite", "cost_per_chain": cost / num_chains}
    lam, Q, lam_used = _abs_eig(np.mean(Hs, axis=0))
    top = float(np.max(np.abs(lam)))
    if not np.isfinite(top) or top <= 0.0:
        return None, {"kind": "identity", "reason": "the Hessian at the modes is zero", "cost_per_chain": cost / num_chains}
    L = Q * (1.0 / np.sqrt(lam_used))[None, :]
    L_inv = (Q * np.sqrt(lam_used)[None, :]).T
    mu = np.mean(np.asarray(flat, np.float64)[chains], axis=0)
    info = {
        "kind": "dense",
        "from": "Hessian of -log p at the MAP starts",
        "chains": chains,
        "dimension": d,
        "rows": int(nrows),
        "condition_number": float(np.max(lam_used) / np.min(lam_used)),
        "negative_eigenvalues": int(np.sum(lam < 0)),
        "floored_eigenvalues": int(np.sum(np.abs(lam) < top * FLOOR)),
        "cost_per_chain": cost / num_chains,
    }
    return Affine(mu=mu, L=L, L_inv=L_inv, unravel=unravel), info


def applies(sampler) -> bool:
    """Whether the run may change coordinates: not when a setting of the sampler is given per
    coordinate of theta (SGHMC's ``gradient_noise``, a pytree ``mass``, a preconditioner's
    fixed diagonal), which would then be read as z's."""
    hp = sampler.hyperparameters
    if hp.get("gradient_noise") is not None:
        return False
    mass = hp.get("mass", 1.0)
    if mass is not None and not isinstance(mass, (int, float)):
        return False
    return hp.get("preconditioner") is None


def centre_to_run(sampler, affine: Affine):
    """A sampler whose control-variate centre was given (in theta) with that centre in z."""
    spec = sampler.gradient
    if getattr(spec, "needs_centre", False) and getattr(spec, "centre", None) is not None:
        return sampler.rebuild(gradient=spec.with_centre(affine.inverse(spec.centre)))
    return sampler


def whiten(target, affine: Affine):
    """The target on z (theta = affine.forward(z)): same data, same constrained output.

    The whitened target is kept on ``target`` with a digest of (mu, L): a second run of the same
    target with the same metric gets the same object, so its compiled loop is reused."""
    import hashlib

    digest = hashlib.sha1(np.ascontiguousarray(affine.mu).tobytes() + np.ascontiguousarray(affine.L).tobytes()
                          ).hexdigest()
    cache = target.__dict__.get("_heatbath_whitened")
    if cache is None:  # the Laplace metric and its refinements (heatbath.drivers.adapt): a few per target
        cache = {}
        object.__setattr__(target, "_heatbath_whitened", cache)
    if digest not in cache:
        while len(cache) >= 4:
            cache.pop(next(iter(cache)))
        cache[digest] = _whiten(target, affine)
    return cache[digest]


def _whiten(target, affine: Affine):
    inv = affine.inverse
    terms0, constrain0, init0, unconstrain0 = target.terms, target.constrain_fn, target.init_params, target.unconstrain
    prior0 = target.prior_init
    if getattr(terms0, "_heatbath_base", (None,))[0] == "whitened":
        # Both layers would read the same mu and L from the loop's arguments.
        raise ValueError("whiten a target once: compose the affine maps (heatbath.drivers.adapt.compose)")

    def fwd(z):
        # Traced in the compiled loop, mu and L are its arguments (``TUNED_MU``/``TUNED_L``, given by
        # the loop from ``tuned_metric``): every whitened target of one target then shares the
        # compiled loop (drivers.cache keys these functions by the target they whiten). Elsewhere
        # they are this affine's constants.
        values = _schedules.current_tuned()
        if values is None:
            return affine.forward(z)
        if TUNED_MU not in values:  # keyed as whitened, but the loop did not pass the metric: refuse
            raise RuntimeError("a whitened target traced in a compiled loop without its metric among the "
                               "loop's arguments (heatbath.drivers.metric.tuned_metric)")
        return affine.forward(z, values[TUNED_MU], values[TUNED_L])

    def terms(z, batch):
        return terms0(fwd(z), batch)

    def constrain_fn(z, data):
        return constrain0(fwd(z), data)

    # The metric travels with the functions (a copy of the target, e.g. with other data, keeps
    # them and so its metric), which the compile cache keys by the target they whiten.
    metric = {TUNED_MU: np.asarray(affine.mu), TUNED_L: np.asarray(affine.L)}
    for fn, base in ((terms, terms0), (constrain_fn, constrain0)):
        fn._heatbath_base = ("whitened", base)
        fn._heatbath_tuned = metric

    def init_params(key):
        return inv(init0(key))

    def unconstrain(values):
        return inv(unconstrain0(values))

    prior_init = None if prior0 is None else (lambda key, how: inv(prior0(key, how)))
    out = dataclasses.replace(target, terms=terms, constrain_fn=constrain_fn, init_params=init_params,
                              unconstrain=unconstrain, prior_init=prior_init)
    # Target.data_memo / metric_memo: compiled helpers shared by every whitened copy of `target`.
    object.__setattr__(out, "_heatbath_whitened_from", target)
    return out


def tuned_metric(target) -> dict:
    """The metric's mu and L of a whitened target, as arguments of the compiled loop ({} otherwise)."""
    return dict(getattr(target.terms, "_heatbath_tuned", {}))


def to_run(affine: Optional[Affine], positions):
    """Chains' positions (leading axis chain) in the run's coordinates."""
    return positions if affine is None else jax.vmap(affine.inverse)(positions)


_FORWARD = IdentityCache(16)  # (structure, shapes, lead) -> compiled map with mu and L as arguments


def from_run(affine: Optional[Affine], positions, lead: int = 1):
    """Positions with ``lead`` leading batch axes mapped back to the target's coordinates.

    Compiled once per structure and shapes with the metric's mu and L as arguments (a new
    metric, every seed, compiled it again: 0.05 s of a 0.13 s second call)."""
    if affine is None:
        return positions
    leaves, treedef = jax.tree.flatten(positions)
    key = (treedef, tuple((np.shape(x), str(jnp.result_type(x))) for x in leaves), lead)
    # Only the unravel is kept (the same for every affine of this structure and these shapes),
    # not this affine's dense mu, L and L^-1.
    unravel = affine.unravel

    def build():
        fn = lambda z, mu, L: Affine(None, None, None, unravel).forward(z, mu, L)  # noqa: E731
        for _ in range(lead):
            fn = jax.vmap(fn, in_axes=(0, None, None))
        return jax.jit(fn)

    return _FORWARD.get(key, (), build)(positions, jnp.asarray(affine.mu), jnp.asarray(affine.L))
