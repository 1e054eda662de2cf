"""Mirror maps (Legendre functions) for mirror-Langevin and Bregman proximal methods.

A mirror map phi is a strictly convex Legendre function on an open convex domain C; its
gradient maps C onto the dual space and grad phi* (the gradient of the convex conjugate) maps
back. The mirror-Langevin step (Zhang et al. 2020; Hsieh et al. 2018; Lau & Liu, ICML 2022)

    theta <- grad phi*( grad phi(theta) + h d + sqrt(2 h T) hess phi(theta)^(1/2) xi )

never leaves C, whatever h: the Bregman samplers (:mod:`heatbath.samplers.bregman`) use it to
sample constrained targets. The same maps serve as the Legendre function psi of the Bregman
proximity operator and of the left Bregman-Moreau envelope (:mod:`heatbath.kernels.prox`),
D_psi(x, y) = psi(x) - psi(y) - <grad psi(y), x - y>.

Each constructor returns a :class:`MirrorMap` acting on pytrees leaf by leaf:

- :func:`euclidean` (m): phi = sum m x^2 / 2 on R^d (a diagonal metric; m = 1 is plain
  Langevin / the Euclidean prox). grad phi* (y) = y / m, hess phi^(1/2) = sqrt(m).
- :func:`hypentropy` (beta): phi = sum x arsinh(x / beta) - sqrt(x^2 + beta^2) on R^d
  (Ghai, Hazan & Singer 2020); grad phi = arsinh(x / beta), grad phi* = beta sinh(y),
  hess phi = 1 / sqrt(x^2 + beta^2): Euclidean (scaled 1 / beta) near 0, entropic far away.
- :func:`burg`: phi = -sum log x (log-barrier) on the positive orthant; grad phi = -1 / x,
  grad phi* (y) = -1 / y, defined for y < 0 only: a dual point y >= 0 (a step too large
  for the barrier) maps to NaN, which the drivers flag as a divergence.
- :func:`simplex` (negative entropy): a leaf x of shape (..., k) holds the first k of k + 1
  probabilities, x_i > 0, sum_i x_i < 1, x_0 = 1 - sum_i x_i; phi = sum_i x_i log x_i +
  x_0 log x_0; grad phi = log x - log x_0, grad phi* = the first k entries of
  softmax([y, 0]); hess phi = diag(1 / x) + 1 1^T / x_0 (not diagonal: its square root is
  applied in closed form, see :func:`simplex`).
- :func:`box` (lower, upper): the log-barrier phi = -sum log(b - x) + log(x - a) of the box
  prod (a_i, b_i); grad phi* has a closed form (the root of a quadratic).

:func:`interior` maps any point of R^d into a map's domain (the samplers' default start).

Fields of a :class:`MirrorMap` (all on pytrees like the position): ``value(x)`` (phi,
a scalar), ``grad(x)``, ``grad_conj(y)``, ``hess(x, v)`` (hess phi(x) v), ``hess_sqrt(x, xi)``
(a matrix B(x) with B B^T = hess phi(x), applied to xi), ``inside(x)`` (elementwise: x in the
domain), and ``separable`` (phi is a sum over coordinates), ``zero_inside`` (0 is in the
open domain), ``kind``, ``params``. ``describe`` says what the domain is (error messages).
Parameters (m, beta, a, b) are scalars or pytrees like the position (:func:`heatbath.kernels.tree.leafwise`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import tree
from heatbath.kernels.validate import check_tree

PyTree = Any

__all__ = ["MirrorMap", "euclidean", "hypentropy", "burg", "simplex", "box", "bregman_divergence",
           "check_domain", "as_mirror", "interior"]


class MirrorMap:
    """A Legendre function phi with its gradient, conjugate gradient and Hessian pieces.

    A plain immutable object (not a NamedTuple): its ``repr`` names the map and its
    parameters by value (a digest for large arrays), which is what checkpoint settings record.
    """

    __slots__ = ("kind", "params", "value", "grad", "grad_conj", "hess", "hess_sqrt", "inside", "describe",
                 "separable", "zero_inside")

    def __init__(self, kind, params, value, grad, grad_conj, hess, hess_sqrt, inside, describe, separable=True,
                 zero_inside=True):
        for name, v in zip(self.__slots__, (kind, params, value, grad, grad_conj, hess, hess_sqrt, inside, describe,
                                            separable, zero_inside)):
            object.__setattr__(self, name, v)

    def __setattr__(self, name, value):
        raise AttributeError("a MirrorMap is immutable")

    def __repr__(self) -> str:  # stable: checkpoint settings record the sampler's hyperparameters
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.params.items())
        return f"mirror.{self.kind}({args})"

    def select(self, name) -> "MirrorMap":
        """The same map for the entry ``name`` of a dict position (per-leaf parameters picked)."""
        params = {k: (v if tree._is_scalar(v) else v[name]) for k, v in self.params.items()}
        return _BUILDERS[self.kind](**params)


def _short(v):
    if tree._is_scalar(v):
        return f"{float(v):g}"
    leaves = [np.asarray(x) for x in jax.tree.leaves(v)]
    if sum(x.size for x in leaves) <= 16:
        return repr(jax.tree.map(lambda x: np.asarray(x).tolist(), v))
    digest = hashlib.blake2b(b"".join(np.ascontiguousarray(x).tobytes() for x in leaves), digest_size=8).hexdigest()
    return f"<{len(leaves)} array(s) {[x.shape for x in leaves]} {digest}>"


def _leafwise_fn(fn, params: dict):
    """A pytree function from a leaf function fn(x_leaf, *param_leaves)."""
    names = list(params)

    def apply(x, *others):
        ps = [tree.leafwise(params[n], x, n) for n in names]
        return jax.tree.map(lambda xl, *rest: fn(xl, *rest), x, *others, *ps)

    return apply


def _sum(fn, params):
    f = _leafwise_fn(fn, params)

    def value(x):
        return sum(jnp.sum(v) for v in jax.tree.leaves(f(x)))

    return value


def _make(kind, params, *, value, grad, grad_conj, hess, hess_sqrt, inside, describe, separable=True,
          zero_inside=True):
    return MirrorMap(kind, params, _sum(value, params), _leafwise_fn(grad, params), _leafwise_fn(grad_conj, params),
                     _leafwise_fn(hess, params), _leafwise_fn(hess_sqrt, params), _leafwise_fn(inside, params),
                     describe, separable, zero_inside)


def euclidean(metric=1.0) -> MirrorMap:
    """phi(x) = sum m x^2 / 2: grad phi = m x, grad phi* = y / m, hess phi^(1/2) xi = sqrt(m) xi.

    With m = 1 the mirror-Langevin step is the Langevin step and the Bregman prox is the
    Euclidean prox; a diagonal m > 0 (a scalar or a pytree like the position) is a fixed
    preconditioner M^-1 (and the prox in the norm |.|_M).
    """
    m = check_tree(metric, "metric", positive=True)
    return _make(
        "euclidean", {"metric": m},
        value=lambda x, m: 0.5 * m * x * x,
        grad=lambda x, m: m * x,
        grad_conj=lambda y, m: y / m,
        hess=lambda x, v, m: m * v,
        hess_sqrt=lambda x, xi, m: jnp.sqrt(m) * xi,
        inside=lambda x, m: jnp.isfinite(x),
        describe="R^d",
    )


def hypentropy(beta=1.0) -> MirrorMap:
    """phi_beta(x) = sum x arsinh(x / beta) - sqrt(x^2 + beta^2) (Ghai, Hazan & Singer 2020).

    grad phi = arsinh(x / beta), grad phi*(y) = beta sinh(y), hess phi = (x^2 + beta^2)^(-1/2),
    hess phi^(1/2) xi = (x^2 + beta^2)^(-1/4) xi: the metric of Lau & Liu's (2022) experiments.
    beta > 0: a scalar or a pytree like the position.
    """
    b = check_tree(beta, "beta", positive=True)
    return _make(
        "hypentropy", {"beta": b},
        value=lambda x, b: x * jnp.arcsinh(x / b) - jnp.sqrt(x * x + b * b),
        grad=lambda x, b: jnp.arcsinh(x / b),
        grad_conj=lambda y, b: b * jnp.sinh(y),
        hess=lambda x, v, b: v / jnp.hypot(x, b),
        hess_sqrt=lambda x, xi, b: xi * jax.lax.rsqrt(jnp.hypot(x, b)),
        inside=lambda x, b: jnp.isfinite(x),
        describe="R^d",
    )


def burg() -> MirrorMap:
    """Burg entropy phi(x) = -sum log x (the log-barrier of the positive orthant).

    grad phi = -1 / x, grad phi*(y) = -1 / y for y < 0 (NaN for y >= 0: the dual step left the
    dual domain, flagged as a divergence), hess phi = 1 / x^2, hess phi^(1/2) xi = xi / x.
    """
    return _make(
        "burg", {},
        value=lambda x: -jnp.log(x),
        grad=lambda x: -1.0 / x,
        grad_conj=lambda y: jnp.where(y < 0, -1.0 / jnp.where(y < 0, y, -1.0), jnp.nan),
        hess=lambda x, v: v / (x * x),
        hess_sqrt=lambda x, xi: xi / x,
        inside=lambda x: x > 0,
        describe="the positive orthant x > 0",
        zero_inside=False,
    )


def _simplex_x0(x):
    return 1.0 - jnp.sum(x, axis=-1, keepdims=True)


def _simplex_conj(y):
    full = jnp.concatenate([y, jnp.zeros_like(y[..., :1])], axis=-1)
    return jax.nn.softmax(full, axis=-1)[..., :-1]


def _simplex_hess_sqrt(x, xi):
    # hess = D^(1/2) (I + w w^T) D^(1/2), D = diag(1/x), w = sqrt(x / x0); the symmetric root of
    # I + w w^T is I + c w w^T with c = (sqrt(1 + |w|^2) - 1) / |w|^2 = sqrt(x0) / (1 + sqrt(x0))
    # (using 1 + |w|^2 = 1 / x0), so B xi = D^(1/2) (xi + c w (w . xi)) has B B^T = hess.
    x0 = _simplex_x0(x)
    w = jnp.sqrt(x / x0)
    c = jnp.sqrt(x0) / (1.0 + jnp.sqrt(x0))
    return (xi + c * w * jnp.sum(w * xi, axis=-1, keepdims=True)) / jnp.sqrt(x)


def simplex() -> MirrorMap:
    """Negative entropy on the simplex, k free coordinates of k + 1 probabilities per leaf.

    A leaf x of shape (..., k): x_i > 0, x_0 = 1 - sum_i x_i > 0 (the last axis is the simplex).
    phi = sum_i x_i log x_i + x_0 log x_0; grad phi = log x - log x_0; grad phi*(y) = first k
    entries of softmax([y, 0]); hess phi = diag(1 / x) + 1 1^T / x_0, whose square root is
    applied as B xi = D^(1/2) (xi + c w (w . xi)), D = diag(1 / x), w = sqrt(x / x_0),
    c = sqrt(x_0) / (1 + sqrt(x_0)) (B B^T = hess phi exactly). Not separable.
    """
    return _make(
        "simplex", {},
        value=lambda x: jnp.sum(x * jnp.log(x), axis=-1) + (_simplex_x0(x) * jnp.log(_simplex_x0(x)))[..., 0],
        grad=lambda x: jnp.log(x) - jnp.log(_simplex_x0(x)),
        grad_conj=_simplex_conj,
        hess=lambda x, v: v / x + jnp.sum(v, axis=-1, keepdims=True) / _simplex_x0(x),
        hess_sqrt=_simplex_hess_sqrt,
        inside=lambda x: (x > 0) & (_simplex_x0(x) > 0),
        describe="the open simplex (x > 0 and sum over the last axis < 1)",
        separable=False,
        zero_inside=False,
    )


def _box_conj(y, a, b):
    # grad phi(x) = 1 / (b - x) - 1 / (x - a) = 2u / (c^2 - u^2) with u = x - mid, c = (b - a) / 2;
    # its inverse: u = c t / (1 + sqrt(1 + t^2)), t = c y (hypot: no overflow for large t).
    c = 0.5 * (b - a)
    t = c * y
    x = 0.5 * (a + b) + c * t / (1.0 + jnp.hypot(1.0, t))
    # Rounding may land exactly on the boundary (where grad phi is infinite): keep it inside.
    return jnp.clip(x, jnp.nextafter(a, b), jnp.nextafter(b, a))


def box(lower, upper) -> MirrorMap:
    """The log-barrier of the box prod (a_i, b_i): phi(x) = -sum log(b - x) + log(x - a).

    grad phi = 1 / (b - x) - 1 / (x - a); grad phi*(y) = (a + b) / 2 + c t / (1 + sqrt(1 + t^2))
    with c = (b - a) / 2, t = c y; hess phi = 1 / (b - x)^2 + 1 / (x - a)^2. The mirror
    step cannot leave the box (grad phi* is kept strictly inside after rounding). ``lower`` <
    ``upper``: scalars or pytrees like the position.
    """
    lo, hi = _box_bounds(lower, upper)
    return _make(
        "box", {"lower": lo, "upper": hi},
        value=lambda x, a, b: -jnp.log(b - x) - jnp.log(x - a),
        grad=lambda x, a, b: 1.0 / (b - x) - 1.0 / (x - a),
        grad_conj=_box_conj,
        hess=lambda x, v, a, b: v * (1.0 / (b - x) ** 2 + 1.0 / (x - a) ** 2),
        hess_sqrt=lambda x, xi, a, b: xi * jnp.sqrt(1.0 / (b - x) ** 2 + 1.0 / (x - a) ** 2),
        inside=lambda x, a, b: (x > a) & (x < b),
        describe="the open box lower < x < upper",
        zero_inside=False,
    )


def _box_bounds(lower, upper):
    def arr(v, name):
        if tree._is_scalar(v):
            v = float(v)
            if not np.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
            return v
        out = jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)), v)
        if not all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(out)):
            raise ValueError(f"{name} must be finite")
        return out

    lo, hi = arr(lower, "lower"), arr(upper, "upper")
    like = hi if tree._is_scalar(lo) else lo
    if not tree._is_scalar(lo) and not tree._is_scalar(hi) and jax.tree.structure(lo) != jax.tree.structure(hi):
        raise ValueError("lower and upper must have the same tree structure")
    pair = jax.tree.map(lambda _, a, b: bool(np.all(np.asarray(a) < np.asarray(b))), like,
                        lo if not tree._is_scalar(lo) else jax.tree.map(lambda _: lo, like),
                        hi if not tree._is_scalar(hi) else jax.tree.map(lambda _: hi, like))
    if not all(jax.tree.leaves(pair)):
        raise ValueError("the box needs lower < upper in every coordinate")
    return lo, hi


_BUILDERS = {"euclidean": euclidean, "hypentropy": hypentropy, "burg": lambda: burg(),
             "simplex": lambda: simplex(), "box": box}


def bregman_divergence(mirror: MirrorMap, x, y) -> jax.Array:
    """D_phi(x, y) = phi(x) - phi(y) - <grad phi(y), x - y>."""
    return mirror.value(x) - mirror.value(y) - tree.dot(mirror.grad(y), tree.sub(x, y))


def as_mirror(mirror, name: str = "mirror"):
    """A :class:`MirrorMap`, or a TypeError naming the constructors."""
    if not isinstance(mirror, MirrorMap):
        raise TypeError(
            f"{name} must be a mirror map from heatbath.kernels.mirror (euclidean(), hypentropy(beta), burg(), "
            f"simplex(), box(lower, upper)), got {type(mirror).__name__}"
        )
    return mirror


def interior(mirror: MirrorMap, u):
    """A point of the mirror map's open domain from any u in R^d (a pytree like the position),
    one-to-one: u itself for the maps on R^d (euclidean, hypentropy); (a + b) / 2 + c tanh(u / 2),
    c = (b - a) / 2, for :func:`box` (the same relative spread whatever the box's size);
    grad phi*(u), the first k entries of softmax([u, 0]), for :func:`simplex`; exp(u) for
    :func:`burg`.

    The Bregman samplers start their chains at ``interior(mirror, u)`` with u the drivers'
    default uniform(-2, 2) draw when no ``init=`` is given: within 0.76 c of the box's centre,
    in (e^-2, e^2) on the positive orthant, anywhere in the open simplex.
    """
    if mirror.kind == "box":
        return _leafwise_fn(lambda x, a, b: 0.5 * (a + b) + 0.5 * (b - a) * jnp.tanh(0.5 * x), mirror.params)(u)
    if mirror.kind == "simplex":
        return mirror.grad_conj(u)
    if mirror.kind == "burg":
        return jax.tree.map(jnp.exp, u)
    return u


def check_domain(mirror: MirrorMap, positions, *, batched: bool = True, what: str = "initial position") -> None:
    """A ValueError when a (concrete) position lies outside the mirror map's open domain.

    ``positions`` carries a leading chain axis when ``batched``. Called before compiling, so
    the message names the chains and how many coordinates are outside.
    """
    if batched:
        ok = jax.vmap(mirror.inside)(positions)
    else:
        ok = mirror.inside(positions)
    leaves = [np.asarray(v) for v in jax.tree.leaves(ok)]
    bad = sum(int(np.sum(~v)) for v in leaves)
    if bad:
        chains = ""
        if batched:
            per_chain = np.zeros(leaves[0].shape[0], bool)
            for v in leaves:
                per_chain |= ~np.all(v.reshape(v.shape[0], -1), axis=1)
            chains = f" of chain(s) {np.nonzero(per_chain)[0].tolist()[:10]}"
        raise ValueError(
            f"the {what}{chains} has {bad} coordinate(s) outside the domain of the {mirror.kind} mirror map "
            f"({mirror.describe}); pass init=... strictly inside it"
        )
