"""Proximity operators, Bregman proximity operators and (Bregman-)Moreau envelopes.

For a convex, possibly nonsmooth g and lam > 0, the Euclidean proximity operator and the left
Bregman proximity operator under a Legendre function psi (:mod:`heatbath.kernels.mirror`) are

    prox_{lam g}(x)  = argmin_y  g(y) + |y - x|^2 / (2 lam)
    P^psi_{lam g}(x) = argmin_y  g(y) + D_psi(y, x) / lam,     D_psi(y, x) = psi(y) - psi(x) - <grad psi(x), y - x>

and their envelopes, with gradients (Moreau 1965; Bauschke, Dao & Lindstrom 2018; Lau & Liu,
ICML 2022, for the left Bregman-Moreau envelope):

    g^lam(x)       = g(P) + |x - P|^2 / (2 lam),    grad g^lam(x)       = (x - P) / lam
    g^{lam,psi}(x) = g(P) + D_psi(P, x) / lam,      grad g^{lam,psi}(x) = hess psi(x) (x - P) / lam.

Each constructor returns a :class:`heatbath.kernels.gradients.Nonsmooth` (``value``, ``prox``,
``bregman_prox(x, lam, mirror)``, ``name``) acting on pytrees, to declare on a target
(``from_logdensity(..., nonsmooth=...)``, ``from_numpyro(..., nonsmooth=...)``):

- :func:`l1` (per-coordinate weights w >= 0): g = sum w |x|. prox: soft-thresholding. Bregman
  prox, closed form for every separable psi (and the simplex, where g is linear): with
  z = grad psi(x) and z0 = grad psi(0),
  P = grad psi*(z - lam w) if z > z0 + lam w, grad psi*(z + lam w) if z < z0 - lam w, and
  exactly 0 in between. Under hypentropy(s): s sinh(arsinh(x/s) -+ lam w) outside
  |x| <= s sinh(lam w), 0 inside (Lau & Liu's notebook returns sqrt(x^2 + s^2) - s there).
- :func:`box` (a, b) and :func:`nonnegative`: the indicator of the box. prox: clipping.
  Bregman prox for a separable psi: the same clipping (a 1-D convex D_psi(., x) is minimised
  over an interval at the clipped point), the identity for the simplex map when the box
  contains [0, 1].
- :func:`tv1d` (weight w): g = w sum_i |x_{i+1} - x_i| along the last axis. prox: Condat's
  (2013) direct algorithm, exact, in a ``lax.while_loop``. Bregman prox: the Euclidean
  metric only (psi = m |x|^2 / 2 with a scalar m: the prox of lam w / m).
- :func:`group_lasso` (weight w, axis): g = w sum_groups |x_g|_2, the groups being the
  vectors along ``axis`` of each leaf (``axis=None``: each leaf one group). prox: block
  soft-thresholding. Bregman prox under a diagonal Euclidean metric m: P = 0 when
  |m x| <= lam w, otherwise P_i = m_i x_i r / (m_i r + lam w) with r = |P| the root of
  sum_i (m_i x_i / (m_i r + lam w))^2 = 1, found by 40 Newton steps from r = 0 (the function
  is convex and decreasing, so Newton increases monotonically to the root). Other mirror
  maps: not available.
- :func:`sites` (name=term, ...): terms on named entries of a dict position (0 elsewhere).

Shapes and structures are checked (:func:`heatbath.kernels.tree.leafwise`) when the term is
applied; :func:`check` runs that on a position's shapes (``jax.eval_shape``) so the drivers
and the target constructors raise a ValueError before compiling anything.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import tree
from heatbath.kernels.gradients import Nonsmooth
from heatbath.kernels.mirror import MirrorMap, bregman_divergence
from heatbath.kernels.tv1d import tv1d_prox
from heatbath.kernels.validate import check_real, check_tree

PyTree = Any

__all__ = ["l1", "box", "nonnegative", "tv1d", "group_lasso", "sites", "soft_threshold", "tv1d_prox",
           "moreau_envelope", "bregman_moreau_envelope", "check", "is_identity_metric"]


def _leaves_sum(t) -> jax.Array:
    return sum(jnp.sum(v) for v in jax.tree.leaves(t))


def is_identity_metric(mirror) -> bool:
    """True for None or ``euclidean(1.0)``: the Bregman prox is then the Euclidean prox."""
    if mirror is None:
        return True
    return mirror.kind == "euclidean" and tree._is_scalar(mirror.params["metric"]) and \
        float(mirror.params["metric"]) == 1.0


def _unavailable(term: str, mirror: MirrorMap):
    raise NotImplementedError(
        f"the Bregman prox of {term} under the {mirror.kind} mirror map is not available in heatbath; use "
        "the Euclidean prox (prox=None / mirror.euclidean()) for this term"
    )


# ---------------------------------------------------------------------------------------------
# L1
# ---------------------------------------------------------------------------------------------
def soft_threshold(x, t):
    """sign(x) max(|x| - t, 0): the prox of t |.| (t >= 0)."""
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - t, 0.0)


def _grad_at_zero(mirror: MirrorMap, x):
    """grad psi(0), extended by -inf (+inf) when the domain lies in x >= 0 (x <= 0) without 0 inside."""
    if mirror.kind in ("euclidean", "hypentropy"):
        return mirror.grad(tree.zeros_like(x))
    if mirror.kind in ("burg", "simplex"):
        return jax.tree.map(lambda v: jnp.full_like(v, -jnp.inf), x)
    if mirror.kind == "box":
        a = tree.leafwise(mirror.params["lower"], x, "lower")
        b = tree.leafwise(mirror.params["upper"], x, "upper")
        z = jax.tree.map(lambda al, bl: 1.0 / bl + 1.0 / al, a, b)  # grad phi(0) = 1/(b - 0) - 1/(0 - a)
        return jax.tree.map(lambda zl, al, bl: jnp.where(al >= 0, -jnp.inf, jnp.where(bl <= 0, jnp.inf, zl)), z, a, b)
    _unavailable("l1", mirror)


def l1(weights=1.0) -> Nonsmooth:
    """g(x) = sum_i w_i |x_i| with weights w >= 0 (a scalar or a pytree like the position).

    prox_{lam g}(x) = sign(x) max(|x| - lam w, 0); the Bregman prox is the closed form of the
    module docstring (exactly 0 in the middle region).
    """
    w = check_tree(weights, "weights", positive=False)

    def W(x):
        return tree.leafwise(w, x, "l1 weights")

    def value(x):
        return _leaves_sum(jax.tree.map(lambda xl, wl: wl * jnp.abs(xl), x, W(x)))

    def prox(x, lam):
        return jax.tree.map(lambda xl, wl: soft_threshold(xl, lam * wl), x, W(x))

    def bregman_prox(x, lam, mirror):
        wt = W(x)
        z = mirror.grad(x)
        z0 = _grad_at_zero(mirror, x)
        up = mirror.grad_conj(jax.tree.map(lambda zl, wl: zl - lam * wl, z, wt))
        down = mirror.grad_conj(jax.tree.map(lambda zl, wl: zl + lam * wl, z, wt))
        return jax.tree.map(
            lambda zl, z0l, wl, u, d: jnp.where(zl > z0l + lam * wl, u, jnp.where(zl < z0l - lam * wl, d, 0.0)),
            z, z0, wt, up, down)

    return Nonsmooth(value, prox, bregman_prox, name=f"l1({_describe(w)})")


def _describe(v):
    return f"{float(v):g}" if tree._is_scalar(v) else "<per-coordinate>"


# ---------------------------------------------------------------------------------------------
# Box, nonnegativity
# ---------------------------------------------------------------------------------------------
def box(lower, upper, *, name=None) -> Nonsmooth:
    """The indicator of the box prod [a_i, b_i] (0 inside, +inf outside); a_i < b_i, +-inf allowed.

    prox = Euclidean projection = clip(x, a, b); Bregman prox (separable psi): the same clip.
    """
    lo, hi = _bounds(lower, upper)

    def bounds(x):
        return tree.leafwise(lo, x, "box lower"), tree.leafwise(hi, x, "box upper")

    def value(x):
        a, b = bounds(x)
        inside = jax.tree.map(lambda xl, al, bl: jnp.all((xl >= al) & (xl <= bl)), x, a, b)
        ok = jnp.all(jnp.stack(jax.tree.leaves(inside)))
        return jnp.where(ok, 0.0, jnp.inf).astype(jnp.result_type(jax.tree.leaves(x)[0]))

    def prox(x, lam):
        del lam
        a, b = bounds(x)
        return jax.tree.map(jnp.clip, x, a, b)

    def bregman_prox(x, lam, mirror):
        if mirror.separable:
            return prox(x, lam)
        if mirror.kind == "simplex" and _contains_unit(lo, hi):
            return x
        _unavailable("a box constraint", mirror)

    return Nonsmooth(value, prox, bregman_prox, name=name or f"box({_describe(lo)}, {_describe(hi)})")


def _contains_unit(lo, hi):
    return all(bool(np.all(np.asarray(v) <= 0)) for v in jax.tree.leaves(lo)) and \
        all(bool(np.all(np.asarray(v) >= 1)) for v in jax.tree.leaves(hi))


def _bounds(lower, upper):
    def conv(v, name):
        if tree._is_scalar(v):
            v = float(v)
            if np.isnan(v):
                raise ValueError(f"{name} must not be NaN")
            return v
        return jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)), v)

    lo, hi = conv(lower, "lower"), conv(upper, "upper")
    for a in jax.tree.leaves(lo):
        for b in jax.tree.leaves(hi):
            if np.shape(a) == np.shape(b) or np.ndim(a) == 0 or np.ndim(b) == 0:
                if not bool(np.all(np.asarray(a) < np.asarray(b))):
                    raise ValueError("the box needs lower < upper in every coordinate")
    return lo, hi


def nonnegative() -> Nonsmooth:
    """The indicator of x >= 0: prox = max(x, 0) (:func:`box` (0, inf))."""
    return box(0.0, jnp.inf, name="nonnegative")


# 1-D total variation: Condat's algorithm in heatbath/kernels/tv1d.py


def tv1d(weight=1.0) -> Nonsmooth:
    """g(x) = w sum_i |x_{i+1} - x_i| along the last axis of every leaf (w >= 0 a number).

    prox: Condat's direct algorithm (exact; O(n) typical, O(n^2) worst case per signal).
    Bregman prox: only for psi = m |x|^2 / 2 with a scalar m (the prox of lam w / m).
    """
    w = check_real(weight, "weight", low=0.0)

    def value(x):
        return _leaves_sum(jax.tree.map(lambda xl: w * jnp.sum(jnp.abs(jnp.diff(xl, axis=-1))), x))

    def prox(x, lam):
        return jax.tree.map(lambda xl: tv1d_prox(xl, lam * w), x)

    def bregman_prox(x, lam, mirror):
        if mirror.kind == "euclidean" and tree._is_scalar(mirror.params["metric"]):
            return prox(x, lam / float(mirror.params["metric"]))
        _unavailable("tv1d", mirror)

    return Nonsmooth(value, prox, bregman_prox, name=f"tv1d({w:g})")


# ---------------------------------------------------------------------------------------------
# Group lasso
# ---------------------------------------------------------------------------------------------
def _norm(x, axis):
    return jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))


def group_lasso(weight=1.0, *, axis=-1) -> Nonsmooth:
    """g(x) = sum_groups w_g |x_g|_2, groups = the vectors along ``axis`` of each leaf.

    ``axis=None``: each leaf is one group. ``weight`` >= 0: a number, or an array shaped like a
    leaf without ``axis`` (one weight per group; with one leaf only). prox: x max(0, 1 - lam w /
    |x|); Bregman prox under a diagonal Euclidean metric: Newton (module docstring).
    """
    if not (axis is None or isinstance(axis, int)):
        raise TypeError(f"axis must be an int or None, got {axis!r}")
    w = check_tree(weight, "weight", positive=False)

    def groups(xl):
        ax = tuple(range(xl.ndim)) if axis is None else axis
        if axis is not None and not -xl.ndim <= axis < max(xl.ndim, 1):
            raise ValueError(f"group_lasso axis {axis} is out of range for a leaf of shape {xl.shape}")
        return ax

    def weight_for(xl, ax):
        if tree._is_scalar(w):
            return jnp.asarray(w, xl.dtype)
        wl = jnp.asarray(jax.tree.leaves(w)[0], xl.dtype)
        gshape = jnp.shape(jnp.sum(xl, axis=ax, keepdims=True))
        try:
            ok = jnp.broadcast_shapes(jnp.shape(jnp.expand_dims(wl, ax)), gshape) == gshape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"group_lasso weight of shape {jnp.shape(wl)} does not match the groups of a leaf "
                             f"of shape {xl.shape} (axis={axis})")
        return jnp.expand_dims(wl, ax)

    def value(x):
        def one(xl):
            ax = groups(xl)
            return jnp.sum(weight_for(xl, ax) * _norm(xl, ax))

        return sum(one(xl) for xl in jax.tree.leaves(x))

    def prox(x, lam):
        def one(xl):
            ax = groups(xl)
            r = _norm(xl, ax)
            t = lam * weight_for(xl, ax)
            return xl * jnp.maximum(0.0, 1.0 - t / jnp.where(r > 0, r, 1.0)) * (r > t)

        return jax.tree.map(one, x)

    def bregman_prox(x, lam, mirror):
        if mirror.kind != "euclidean":
            _unavailable("group_lasso", mirror)
        m = tree.leafwise(mirror.params["metric"], x, "metric")

        def one(xl, ml):
            ax = groups(xl)
            ml = jnp.broadcast_to(ml, xl.shape)
            t = lam * weight_for(xl, ax)
            mx = ml * xl
            zero = _norm(mx, ax) <= t

            def newton(r, _):
                den = ml * r + t
                q = jnp.sum((mx / den) ** 2, axis=ax, keepdims=True) - 1.0
                dq = -2.0 * jnp.sum(ml * mx ** 2 / den ** 3, axis=ax, keepdims=True)
                return jnp.where(zero, 0.0, r - q / jnp.where(zero, -1.0, dq)), None

            r, _ = jax.lax.scan(newton, jnp.zeros_like(_norm(xl, ax)), None, length=40)
            return jnp.where(zero, 0.0, mx * r / (ml * r + t))

        return jax.tree.map(one, x, m)

    return Nonsmooth(value, prox, bregman_prox, name=f"group_lasso({_describe(w)}, axis={axis})")


# ---------------------------------------------------------------------------------------------
# Terms on named sites, envelopes, checks
# ---------------------------------------------------------------------------------------------
def sites(**terms: Nonsmooth) -> Nonsmooth:
    """A term on a dict position: g(x) = sum_name terms[name](x[name]); other entries untouched.

    For NumPyro models (``from_numpyro(model, ..., nonsmooth=prox.sites(w=prox.l1(1.0)))``),
    whose positions are dicts of unconstrained sites.
    """
    if not terms:
        raise ValueError("sites needs at least one name=term")
    for k, t in terms.items():
        if not isinstance(t, Nonsmooth):
            raise TypeError(f"sites: {k}= must be a Nonsmooth term (heatbath.kernels.prox), got {type(t).__name__}")

    def need(x):
        if not isinstance(x, dict):
            raise ValueError(f"prox.sites({', '.join(terms)}) needs a dict position, got {type(x).__name__}")
        missing = [k for k in terms if k not in x]
        if missing:
            raise ValueError(f"prox.sites: no site(s) {missing} in the position (sites: {sorted(x)})")

    def value(x):
        need(x)
        return sum(t.value(x[k]) for k, t in terms.items())

    def prox(x, lam):
        need(x)
        return {k: (terms[k].prox(v, lam) if k in terms else v) for k, v in x.items()}

    def bregman_prox(x, lam, mirror):
        need(x)
        out = {}
        for k, v in x.items():
            if k not in terms:
                out[k] = v
            elif terms[k].bregman_prox is None:
                raise NotImplementedError(f"the term on site {k!r} ({terms[k].name}) has no Bregman prox")
            else:
                out[k] = terms[k].bregman_prox(v, lam, mirror.select(k))
        return out

    name = "sites(" + ", ".join(f"{k}={t.name}" for k, t in terms.items()) + ")"
    return Nonsmooth(value, prox, bregman_prox, name=name)


def moreau_envelope(nonsmooth: Nonsmooth, x, lam):
    """(g^lam(x), grad g^lam(x)) = (g(P) + |x - P|^2 / (2 lam), (x - P) / lam), P = prox_{lam g}(x)."""
    p = nonsmooth.prox(x, lam)
    d = tree.sub(x, p)
    return nonsmooth.value(p) + tree.sq_norm(d) / (2.0 * lam), tree.scale(1.0 / lam, d)


def bregman_moreau_envelope(nonsmooth: Nonsmooth, mirror: MirrorMap, x, lam):
    """The left Bregman-Moreau envelope and its gradient (Lau & Liu 2022, Prop. 3.8):

    (g(P) + D_psi(P, x) / lam,  hess psi(x) (x - P) / lam),  P = P^psi_{lam g}(x).
    """
    if is_identity_metric(mirror):
        return moreau_envelope(nonsmooth, x, lam)
    if nonsmooth.bregman_prox is None:
        raise ValueError(f"the nonsmooth term {nonsmooth.name} has no Bregman prox; use a term from "
                         "heatbath.kernels.prox or the Euclidean prox")
    p = nonsmooth.bregman_prox(x, lam, mirror)
    value = nonsmooth.value(p) + bregman_divergence(mirror, p, x) / lam
    return value, tree.scale(1.0 / lam, mirror.hess(x, tree.sub(x, p)))


def check(nonsmooth: Nonsmooth, params, mirror: MirrorMap | None = None, *, where: str = "the parameters") -> None:
    """Check (by ``jax.eval_shape``, nothing runs) that the term's value is a scalar and its
    prox (the Bregman prox under ``mirror`` unless that is the identity metric) returns the
    structure, shapes and dtypes of ``params``; a ValueError saying what does not fit."""
    shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)), params)
    euclid = is_identity_metric(mirror)
    if not euclid and nonsmooth.bregman_prox is None:
        raise ValueError(f"the nonsmooth term {nonsmooth.name} has no Bregman prox (bregman_prox=None), which a "
                         f"{mirror!r} envelope needs; use prox=None (the Euclidean envelope) or a term from "
                         "heatbath.kernels.prox")
    what = "prox" if euclid else f"Bregman prox under {mirror!r}"
    try:
        val = jax.eval_shape(nonsmooth.value, shapes)
        out = jax.eval_shape((lambda x: nonsmooth.prox(x, 0.5)) if euclid else
                             (lambda x: nonsmooth.bregman_prox(x, 0.5, mirror)), shapes)
    except NotImplementedError as err:
        raise ValueError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - re-raised with what was being checked
        raise ValueError(f"the nonsmooth term {nonsmooth.name} does not fit {where} "
                         f"{jax.tree.map(lambda s: s.shape, shapes)}: {err}") from None
    if jnp.shape(val) != ():
        raise ValueError(f"the nonsmooth term {nonsmooth.name}'s value must be a scalar, got shape {jnp.shape(val)}")
    if jax.tree.structure(out) != jax.tree.structure(shapes):
        raise ValueError(f"the {what} of {nonsmooth.name} returns structure {jax.tree.structure(out)}, but "
                         f"{where} have {jax.tree.structure(shapes)}")
    for o, s in zip(jax.tree.leaves(out), jax.tree.leaves(shapes)):
        if o.shape != s.shape:
            raise ValueError(f"the {what} of {nonsmooth.name} returns a leaf of shape {o.shape} for {where}' "
                             f"leaf of shape {s.shape}")
