"""Diagonal preconditioners for Langevin dynamics, and their divergence corrections.

A preconditioned Langevin step at temperature T with a diagonal G(theta) reads (Li et al.
2016; Ma, Chen & Fox 2015 for the general recipe)

    theta <- theta + h [G(theta) grad log p~(theta) + T Gamma(theta)] + sqrt(2 h T G(theta)) xi,
    Gamma_i(theta) = sum_j d G_ij(theta) / d theta_j = d G_ii / d theta_i.

It discretises d theta = [G grad log p + T Gamma] dt + sqrt(2 T G) dW, whose diffusion matrix
is D = T G; the Fokker-Planck equation makes p^(1/T) stationary exactly when the drift is
D grad log p^(1/T) + div D = G grad log p + T Gamma. So Gamma enters multiplied by T: with
the drift G grad log p + c Gamma the stationary law is p^(1/T) prod_i G_ii^((c - T) / T)
instead (when each G_ii depends on theta_i only; c = 1 was pSGLD's h Gamma written at T = 1,
c = 0 drops Gamma), and at T = 0 the step is the optimizer (G grad log p~ only) whether or not
Gamma is kept.

A preconditioner is ``Preconditioner(init, update, diagonal, correction, name, apply, window)``:

- ``init(position) -> state``
- ``update(state, grad) -> state``              (called once per step with the new gradient)
- ``diagonal(state) -> G``                      (a pytree like the position, or None for I)
- ``correction(state, grad, hess_diag) -> Gamma`` (None when G does not depend on theta)
- ``apply(state, v) -> G v``, or None for ``diagonal(state) * v``: for a preconditioner whose
  optimizer does not multiply by G (Adam divides: ``v / (sqrt(nu) + eps)``), its own
  arithmetic, so that T = 0 is the optimizer to the last bit.
- ``window``: the number of steps the preconditioner needs before ``correction`` is
  meaningful (its averaging window; 0 when G is constant). Kernels switch Gamma on from
  step ``window``: a running average V that starts at 0 (or from a handful of gradients)
  makes Gamma ~ 1/V stiff until the window is full.

Available: ``identity()``, ``fixed(diagonal)``, ``rmsprop(decay, eps, ...)`` (pSGLD, and all
of ``optax.rmsprop``'s options), ``adam(b2, eps, eps_root)`` (Adam's bias-corrected second
moment).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from heatbath.kernels import validate as _validate
from heatbath.kernels import tree
from heatbath.kernels.schedules import Tuned, tuned_value

PyTree = Any

__all__ = [
    "Preconditioner",
    "SecondMomentState",
    "identity",
    "fixed",
    "rmsprop",
    "adam",
    "precondition",
    "bias_correction",
]


class Preconditioner(NamedTuple):
    init: Callable
    update: Callable
    diagonal: Callable
    correction: Optional[Callable] = None
    name: str = "identity"
    apply: Optional[Callable] = None
    window: int = 0


def precondition(preconditioner: Preconditioner, state, v: PyTree) -> PyTree:
    """G v for the preconditioner's current ``state`` (``apply`` when it has one)."""
    if preconditioner.apply is not None:
        return preconditioner.apply(state, v)
    G = preconditioner.diagonal(state)
    return v if G is None else tree.mul(G, v)


def identity() -> Preconditioner:
    """G = I: plain (unpreconditioned) Langevin."""
    return Preconditioner(
        init=lambda position: (),
        update=lambda state, grad: state,
        diagonal=lambda state: None,
        correction=None,
        name="identity",
        window=0,
    )


def fixed(diagonal: PyTree) -> Preconditioner:
    """A constant diagonal G: a positive scalar, or a pytree shaped like the position (each
    leaf a scalar or an array broadcastable to the position's leaf), all entries finite > 0.

    Being constant, it needs no correction term: Gamma = 0.
    """
    value = _validate.check_tree(diagonal, "diagonal", positive=True)

    def init(position):
        return tree.leafwise(value, position, "diagonal")

    return Preconditioner(
        init=init,
        update=lambda state, grad: state,
        diagonal=lambda state: state,
        correction=None,
        name="fixed",
        window=0,
    )


class SecondMomentState(NamedTuple):
    square_avg: PyTree  # nu (V), the exponential average of squared gradients
    count: jax.Array  # updates so far (the bias correction's t)


def bias_correction(moment: PyTree, decay: float, count) -> PyTree:
    """moment / (1 - decay^count), the bias correction of an exponential average started at 0
    (Kingma & Ba 2015), in ``optax.tree.bias_correction``'s arithmetic (the division in the
    moment's dtype)."""
    bc = 1 - decay**count
    return jax.tree.map(lambda t: t / bc.astype(t.dtype), moment)


def _second_moment(*, decay, eps, shift, form, debias, initial_scale, name) -> Preconditioner:
    """The preconditioner G = 1 / D(nu^) of RMSprop and Adam.

    nu <- decay nu + (1 - decay) g * g;  nu^ = nu / (1 - decay^t) (bias correction) or nu;
    D = sqrt(nu^ + shift) + eps (``form="adam"``, shift = eps_root; ``"rms_out"``, shift = 0)
    or D = sqrt(nu^ + eps) (``form="rms_in"``, RMSprop's eps inside the square root). Each form
    keeps its optimizer's exact arithmetic in ``apply``.

    Gamma. Taking nu as a function of theta through the current gradient g(theta),
    d nu_i / d theta_i = 2 (1 - decay) g_i H_ii (H_ii = d g_i / d theta_i, the Hessian diagonal
    of log p~), and dG/d nu^ = -G^2 / (2 sqrt(nu^ + shift)), so

        Gamma_i = -c (1 - decay) g_i H_ii G_i^2 / sqrt(nu^_i + shift),   c = 1 / (1 - decay^t) or 1,

    (0 where nu^ + shift = 0: there G is 1 / eps, locally constant).
    """
    root_shift = eps if form == "rms_in" else shift

    def init(position):
        nu = jax.tree.map(lambda p: jnp.full_like(p, initial_scale), position)
        return SecondMomentState(nu, jnp.zeros((), jnp.int32))

    def update(state, grad):
        # optax.tree.update_moment_per_elem_norm's arithmetic, (1 - decay) * g**2 + decay * v, so
        # T = 0 is optax to the last bit (g * g is g**2 exactly, and XLA fuses it: integer_pow
        # became a separate pass over the parameters).
        a = tuned_value(decay)
        nu = jax.tree.map(lambda g, v: (1 - a) * (g * g) + a * v, grad, state.square_avg)
        return SecondMomentState(nu, state.count + 1)

    def nu_hat(state):
        return bias_correction(state.square_avg, tuned_value(decay), state.count) if debias else state.square_avg

    # RMSprop multiplies by its scaling G (optax.scale_by_rms: s * g), so G v is its arithmetic
    # and ``apply`` is None (the kernel then computes G once, for the drift and the noise);
    # Adam divides by its denominator.
    if form == "rms_in":  # optax.scale_by_rms(eps_in_sqrt=True): rsqrt(nu + eps) * g
        apply = None

        def scaling(v):
            return jax.lax.rsqrt(v + eps)

    elif form == "rms_out":  # optax.scale_by_rms(eps_in_sqrt=False): (1 / (sqrt(nu) + eps)) * g
        apply = None

        def scaling(v):
            return 1 / (jnp.sqrt(v) + eps)

    else:  # "adam", optax.scale_by_adam: g / (sqrt(nu + eps_root) + eps)

        def scaling(v):
            return 1 / (jnp.sqrt(v + shift) + eps)

        def apply(state, x):
            return jax.tree.map(lambda v, xl: xl / (jnp.sqrt(v + shift) + eps), nu_hat(state), x)

    def diagonal(state):
        return jax.tree.map(scaling, nu_hat(state))

    def correction(state, grad, hess_diag):
        a = tuned_value(decay)
        if debias:
            c = (1 - a) / (1 - a**state.count)
        else:
            c = jnp.asarray(1 - a)

        def leaf(v, g, hd):
            root = jnp.sqrt(v + root_shift)
            G = scaling(v)
            safe = jnp.where(root > 0, root, 1.0)
            return jnp.where(root > 0, -c.astype(v.dtype) * g * hd * G * G / safe, 0.0)

        return jax.tree.map(leaf, nu_hat(state), grad, hess_diag)

    window = int(math.ceil(round(1.0 / (1.0 - float(decay)), 9)))  # (1 / (1 - 0.9) is 10.000000000000002)
    return Preconditioner(init, update, diagonal, correction, name, apply, window)


def rmsprop(
    decay: float = 0.99,
    eps: float = 1e-5,
    eps_in_sqrt: bool = False,
    bias_correction: bool = False,
    initial_scale: float = 0.0,
) -> Preconditioner:
    """RMSprop preconditioner of pSGLD (Li, Chen, Carlson & Carin, AAAI 2016), with
    ``optax.scale_by_rms``'s options:

        V <- decay V + (1 - decay) g * g,   V_0 = initial_scale
        V^ = V / (1 - decay^t)           (bias_correction=True; V^ = V otherwise)
        G = 1 / (eps + sqrt(V^))         (eps_in_sqrt=False, the paper)
        G = 1 / sqrt(V^ + eps)           (eps_in_sqrt=True, optax.rmsprop's default)

    Treating V as a function of theta through the current gradient g(theta),

        Gamma_i = -c (1 - decay) g_i H_ii G_i^2 / sqrt(V^_i)   (eps outside the sqrt)
        Gamma_i = -c (1 - decay) g_i H_ii G_i^3                (eps inside the sqrt)

    with c = 1 / (1 - decay^t) under bias correction (1 otherwise). It is O(1 - decay), which
    is why the paper drops it; the samplers offer it as an option (``correction=True``) with
    H_ii estimated by Hutchinson's z * (H z), from step ``window = ceil(1 / (1 - decay))``.
    """
    # A Tuned decay (the window hb.sample chose for pSGLD) stays one: the compiled loop reads it
    # as an argument (schedules.tuned_value), so another choice reuses the compiled code.
    checked = _validate.check_unit(decay, "decay")
    decay = Tuned(checked, decay.name) if isinstance(decay, Tuned) else checked
    eps = _validate.check_real(eps, "eps", low=0.0, low_open=True)
    eps_in_sqrt = _validate.check_bool(eps_in_sqrt, "eps_in_sqrt")
    bias_correction = _validate.check_bool(bias_correction, "bias_correction")
    initial_scale = _validate.check_real(initial_scale, "initial_scale", low=0.0)
    return _second_moment(decay=decay, eps=eps, shift=0.0, form="rms_in" if eps_in_sqrt else "rms_out",
                          debias=bias_correction, initial_scale=initial_scale, name="rmsprop")


def adam(b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0, bias_correction: bool = True) -> Preconditioner:
    """Adam's second-moment preconditioner (Kingma & Ba, ICLR 2015), as ``optax.scale_by_adam``:

        nu <- b2 nu + (1 - b2) g * g;   nu^ = nu / (1 - b2^t);   G = 1 / (sqrt(nu^ + eps_root) + eps)

    (``bias_correction=False``: nu^ = nu). Adam's first moment is a drift, not a
    preconditioner: the kernel keeps it (``b1`` of
    :func:`heatbath.samplers.overdamped.build_preconditioned_kernel`). The divergence term is

        Gamma_i = -(1 - b2) / (1 - b2^t) g_i H_ii G_i^2 / sqrt(nu^_i + eps_root),

    switched on from step ``window = ceil(1 / (1 - b2))``.
    """
    b2 = _validate.check_unit(b2, "b2")
    eps = _validate.check_real(eps, "eps", low=0.0)
    eps_root = _validate.check_real(eps_root, "eps_root", low=0.0)
    bias_correction = _validate.check_bool(bias_correction, "bias_correction")
    return _second_moment(decay=b2, eps=eps, shift=eps_root, form="adam", debias=bias_correction,
                          initial_scale=0.0, name="adam")
