r"""Splitting integrators for the underdamped (Hamiltonian) Langevin SDE.

With the potential U = -log p, a diagonal mass M, a friction C and a temperature T, the SDE of
stochastic-gradient HMC (Chen, Fox & Guestrin, ICML 2014) is

    d theta = M^-1 r dt,
    d r     = -grad U(theta) dt - C M^-1 r dt + sqrt(2 C T) dW.

Its stationary law is exp(-U(theta)/T) x N(r; 0, T M). The vector field splits into three
flows that can each be solved exactly (Leimkuhler & Matthews 2013; Franzese et al., ICML 2022,
"Revisiting the effects of stochasticity for Hamiltonian samplers"):

    A (drift):        theta <- theta + h M^-1 r
    B (kick):         r     <- r + h g,               g = grad log p~(theta) (ascent direction)
    O (exact OU):     r     <- exp(-C h / M) r + sqrt(T M (1 - exp(-2 C h / M))) xi

plus the Euler-Maruyama version of O used by Chen et al.'s SGHMC:

    E (Euler OU):     r     <- (1 - C h / M) r + sqrt(2 C h T) xi.

A *splitting* is a word in these letters, each letter taking a fraction of the step h. By
default every letter of a kind shares the step equally (``"OBABO"`` = O(h/2) B(h/2) A(h)
B(h/2) O(h/2)), so adding a new scheme is one line::

    from heatbath.kernels import integrators
    oabao = integrators.splitting("OABAO")       # or integrator="OABAO" in sghmc(...)

The named schemes:

=================  ========  =======================================================
``euler``          ``EBA``   Chen et al. 2014: v <- (1 - alpha) v + eta g + noise,
                             theta <- theta + v   (v = h M^-1 r, eta = h^2/M,
                             alpha = h C / M). At T = 0: heavy-ball momentum.
``lie_trotter``    ``BABO``  a leapfrog step then an exact O (Franzese et al. 2022)
``obabo``          ``OBABO`` symmetric (Strang) splitting
``baoab``          ``BAOAB`` symmetric; exact in theta on Gaussian targets
                             (Leimkuhler & Matthews 2013)
``aboba``          ``ABOBA`` symmetric
=================  ========  =======================================================

Gradients, first same as last (FSAL). A splitting whose first B precedes its first A and
whose last B follows its last A (``BABO``, ``OBABO``, ``BAOAB``) starts a step with the
gradient at the position it ended the previous one with, so it evaluates ONE new gradient per
step: the integrator carries that gradient (and its log density) from step to step. With
minibatches that cached gradient was computed on the previous step's minibatch: the minibatch
is refreshed at every gradient *evaluation*, and each evaluation serves the two half kicks
around it. The very first step of a chain has no cached gradient: it evaluates the gradient
at the initial position and does not move (a "priming" step; see :func:`build`). This costs
one gradient like every other step and, unlike a ``lax.cond``, stays one gradient when chains
run under ``vmap`` (where a batched ``cond`` runs both branches).

Everything works leaf by leaf on pytrees; the mass, the friction and the temperature may be
scalars or pytrees shaped like the position (a scalar per leaf or an array per leaf).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp

from heatbath.kernels import noise as _noise

PyTree = Any

__all__ = [
    "Splitting",
    "splitting",
    "get",
    "INTEGRATORS",
    "euler",
    "lie_trotter",
    "obabo",
    "baoab",
    "aboba",
    "position_update",
    "momentum_update",
    "ou_update",
    "euler_ou_update",
    "kinetic_energy",
    "gradient_first",
    "build",
]

_LETTERS = {
    "A": "drift theta += h M^-1 r",
    "B": "kick r += h grad log p",
    "O": "exact Ornstein-Uhlenbeck on r",
    "E": "Euler-Maruyama Ornstein-Uhlenbeck on r",
}


# ----------------------------------------------------------------------------------------
# The pieces
# ----------------------------------------------------------------------------------------
def position_update(position: PyTree, momentum: PyTree, h, inv_mass: PyTree) -> PyTree:
    """A: theta <- theta + h M^-1 r (``inv_mass`` a pytree like the position)."""
    return jax.tree.map(lambda p, r, im: p + (h * im) * r, position, momentum, inv_mass)


def momentum_update(momentum: PyTree, grad: PyTree, h) -> PyTree:
    """B: r <- r + h g, with g the gradient of the log density (the ascent direction)."""
    return jax.tree.map(lambda r, g: r + h * g, momentum, grad)


def ou_update(key, momentum: PyTree, h, friction: PyTree, inv_mass: PyTree, mass: PyTree, temperature: PyTree,
              noiseless: bool = False, xi: PyTree = None) -> PyTree:
    """O, the exact Ornstein-Uhlenbeck flow of dr = -C M^-1 r dt + sqrt(2 C T) dW over time h:

        r <- exp(-C h / M) r + sqrt(T M (1 - exp(-2 C h / M))) xi,   xi ~ N(0, I).

    It leaves N(0, T M) invariant for every h (no discretisation error). ``friction``,
    ``inv_mass``, ``mass`` and ``temperature`` are pytrees like ``momentum`` (see
    :func:`heatbath.kernels.tree.leafwise`); ``noiseless=True`` (T = 0) skips the noise; ``xi`` (a standard-normal
    pytree like ``momentum``) replaces the draw from ``key``.
    """
    decay = jax.tree.map(lambda c, im: jnp.exp(-(h * c) * im), friction, inv_mass)
    if noiseless:
        return jax.tree.map(lambda r, d: d * r, momentum, decay)
    if xi is None:
        xi = _noise.brownian().draw(key, momentum)

    def leaf(r, d, m, t, n):
        var = jnp.maximum(t * m * (1.0 - d * d), 0.0)
        return d * r + jnp.sqrt(var) * n

    return jax.tree.map(leaf, momentum, decay, mass, temperature, xi)


def euler_ou_update(key, momentum: PyTree, h, friction: PyTree, inv_mass: PyTree, temperature: PyTree,
                    noiseless: bool = False, xi: PyTree = None) -> PyTree:
    """E, Euler-Maruyama on the OU part (Chen et al. 2014):

        r <- (1 - C h / M) r + sqrt(2 C h T) xi.

    In Chen et al.'s variables v = h M^-1 r, eta = h^2 / M, alpha = h C / M this is
    v <- (1 - alpha) v + N(0, 2 alpha eta T); the B kick that follows adds eta g.
    """
    if noiseless:
        return jax.tree.map(lambda r, c, im: (1.0 - (h * c) * im) * r, momentum, friction, inv_mass)
    if xi is None:
        xi = _noise.brownian().draw(key, momentum)

    def leaf(r, c, im, t, n):
        return (1.0 - (h * c) * im) * r + jnp.sqrt(jnp.maximum(2.0 * h * c * t, 0.0)) * n

    return jax.tree.map(leaf, momentum, friction, inv_mass, temperature, xi)


def kinetic_energy(momentum: PyTree, inv_mass: PyTree) -> jax.Array:
    """K(r) = r^T M^-1 r / 2."""
    leaves = jax.tree.leaves(jax.tree.map(lambda r, im: jnp.sum(im * r * r), momentum, inv_mass))
    return 0.5 * sum(leaves[1:], leaves[0])


# ----------------------------------------------------------------------------------------
# Splittings: words in A, B, O, E
# ----------------------------------------------------------------------------------------
class Splitting(NamedTuple):
    """A splitting scheme: ``pieces`` is a tuple of (letter, fraction of h).

    ``fsal``: the gradient at the end of a step is the one the next step starts with
    (the first B comes before any A and the last B after every A), so it is carried in the
    state. ``grads_per_step``: new gradient evaluations per step (static).
    """

    name: str
    pieces: tuple

    @property
    def letters(self) -> str:
        return "".join(letter for letter, _ in self.pieces)

    @property
    def fsal(self) -> bool:
        s = self.letters
        return s.index("B") < s.index("A") and s.rindex("B") > s.rindex("A")

    @property
    def gradient_at_start(self) -> bool:
        """Every B precedes the first A: all the step's kicks use the gradient at the position
        the step starts from (one evaluation, on the step's own minibatch; never FSAL)."""
        s = self.letters
        return s.rindex("B") < s.index("A")

    @property
    def grads_per_step(self) -> int:
        valid, count = self.fsal, 0
        for letter in self.letters:
            if letter == "A":
                valid = False
            elif letter == "B" and not valid:
                valid, count = True, count + 1
        return count

    def __repr__(self) -> str:
        parts = " ".join(f"{letter}({frac:g}h)" for letter, frac in self.pieces)
        return f"Splitting({self.name}: {parts})"


def splitting(word: Union[str, Sequence], name: str | None = None) -> Splitting:
    """A splitting from a word in A, B, O, E.

    ``splitting("OBABO")`` gives every letter of a kind an equal share of the step
    (O(h/2) B(h/2) A(h) B(h/2) O(h/2)). For other shares pass (letter, fraction) pairs:
    ``splitting([("B", .5), ("A", 1.), ("B", .5), ("O", 1.)])``. Each kind's fractions must
    sum to 1 (first-order consistency); the word needs at least one A, one B and one O or E
    (not both).
    """
    if isinstance(word, str):
        letters = word.upper()
        bad = sorted(set(letters) - set(_LETTERS))
        if bad or not letters:
            raise ValueError(
                f"a splitting is a word in the letters A, B, O, E ({'; '.join(f'{k}: {v}' for k, v in _LETTERS.items())}), "
                f"got {word!r}"
            )
        counts = {letter: letters.count(letter) for letter in set(letters)}
        pieces = tuple((letter, 1.0 / counts[letter]) for letter in letters)
        default_name = letters
    else:
        try:
            pieces = tuple((str(letter).upper(), float(frac)) for letter, frac in word)
        except (TypeError, ValueError) as err:
            raise TypeError("a splitting is a word like 'OBABO' or a sequence of (letter, fraction) pairs") from err
        bad = sorted({letter for letter, _ in pieces} - set(_LETTERS))
        if bad or not pieces:
            raise ValueError(f"unknown splitting letters {bad}; use A, B, O, E")
        if any(frac <= 0 for _, frac in pieces):
            raise ValueError("every fraction of the step in a splitting must be > 0")
        default_name = "".join(letter for letter, _ in pieces)
    letters = "".join(letter for letter, _ in pieces)
    for needed in ("A", "B"):
        if needed not in letters:
            raise ValueError(f"splitting {letters!r} has no {needed} ({_LETTERS[needed]})")
    if "O" not in letters and "E" not in letters:
        raise ValueError(f"splitting {letters!r} has no friction/noise piece: add an O (exact OU) or an E (Euler OU)")
    if "O" in letters and "E" in letters:
        raise ValueError(f"splitting {letters!r} mixes O and E: use one Ornstein-Uhlenbeck piece kind")
    for letter in set(letters):
        total = sum(frac for lt, frac in pieces if lt == letter)
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"the fractions of {letter} in splitting {letters!r} sum to {total}, not 1")
    return Splitting(name or default_name, pieces)


def gradient_first(split: Union[str, Splitting]) -> Splitting:
    """The same chain of positions, with each step starting at its gradient evaluation.

    An FSAL splitting with one gradient per step evaluates that gradient right after its
    last A, and the kicks around the step boundary share it. Cutting the word after its last
    A and moving the tail to the front, X A..A Y -> Y X A..A, gives a word whose kicks all
    use the gradient at the step's starting position: ``"OBABO"`` -> ``"BOOBA"`` (B(h/2)
    O(h/2) O(h/2) B(h/2) A(h)), ``"BAOAB"`` -> ``"BBAOA"``, ``"BABO"`` -> ``"BOBA"``. The
    pieces between two drifts are the same, so the rotated chain started at (theta_0, r_0)
    is the original chain started at (theta_0, Y r_0), Y r_0 the momentum after the tail Y at
    theta_0: the same law of positions after every step (the original's FSAL priming step
    aside), with the momentum recorded at another point of the cycle. Such a word is what an
    optax update,
    handed one gradient at the current parameters, can run
    (:func:`heatbath.optim.as_optax`). A word that already has every B before its first A
    (``"euler"``) is returned unchanged; others (two gradients per step, or ``"ABOBA"``,
    whose gradient point is mid-drift) raise a ``ValueError``.
    """
    split = get(split)
    if split.gradient_at_start:
        return split
    if not split.fsal or split.grads_per_step != 1:
        raise ValueError(
            f"splitting {split.letters!r} has no rotation that starts at its gradient: it needs a word whose "
            "first B precedes its first A and whose last B follows its last A, with one gradient per step "
            "(e.g. OBABO, BAOAB, BABO)"
        )
    cut = split.letters.rindex("A") + 1
    return Splitting(f"{split.name}-gradient-first", split.pieces[cut:] + split.pieces[:cut])


euler = splitting("EBA", "euler")
lie_trotter = splitting("BABO", "lie_trotter")
obabo = splitting("OBABO", "obabo")
baoab = splitting("BAOAB", "baoab")
aboba = splitting("ABOBA", "aboba")

INTEGRATORS = {s.name: s for s in (euler, lie_trotter, obabo, baoab, aboba)}


def get(integrator: Union[str, Splitting]) -> Splitting:
    """A :class:`Splitting` from a name in :data:`INTEGRATORS`, a word like ``"OABAO"``, or itself."""
    if isinstance(integrator, Splitting):
        return integrator
    if not isinstance(integrator, str):
        raise TypeError(f"integrator must be a name or a Splitting, got {type(integrator).__name__}")
    key = integrator.lower()
    if key in INTEGRATORS:
        return INTEGRATORS[key]
    if set(integrator.upper()) <= set(_LETTERS):
        return splitting(integrator)
    raise ValueError(
        f"unknown integrator {integrator!r}: use one of {sorted(INTEGRATORS)} or a splitting word in "
        "A (drift), B (kick), O (exact OU), E (Euler OU), e.g. 'OABAO'"
    )


# ----------------------------------------------------------------------------------------
# One step of a splitting
# ----------------------------------------------------------------------------------------
class Cache(NamedTuple):
    """The gradient carried between steps by FSAL splittings (``valid`` False before the first)."""

    lp: jax.Array
    grad: PyTree
    valid: jax.Array


def build(split: Splitting, *, noiseless: bool = False, noise: _noise.NoiseSource | None = None,
          fuse: bool = False) -> Callable:
    """The step function of a splitting.

    Returns ``integrate(key, position, momentum, cache, batch, grad_fn, h, friction, mass,
    inv_mass, temperature) -> (position, momentum, cache, lp_start, grad_new)`` where
    ``friction``, ``mass``, ``inv_mass`` and ``temperature`` are pytrees like the position
    (:func:`heatbath.kernels.tree.leafwise`), ``cache`` a :class:`Cache` for FSAL splittings (None otherwise),
    ``lp_start`` the log-density estimate at the start of the step and ``grad_new`` the last
    gradient evaluated in it. The O/E pieces' standard-normal increments come from ``noise``
    (:mod:`heatbath.kernels.noise`, default Brownian), all of a step's from one ``draws`` call.

    Priming: with an FSAL splitting and ``cache.valid`` False, the step evaluates the gradient
    at the current position and returns the position and momentum unchanged with a valid
    cache. This is written with ``jnp.where`` on the evaluation point and on the result, so a
    step always costs ``split.grads_per_step`` gradients, also under ``vmap``.

    ``fuse=True``: one draw per run of consecutive O/E pieces (:mod:`heatbath.kernels.integrators_fused`). Each piece
    is a linear Gaussian map r <- d r + s xi, and two in a row are one such map (d2 d1,
    sqrt(d2^2 s1^2 + s2^2)) with the same conditional law, so a run costs one draw. A word that
    ends and starts with O/E (``"OBABO"``, ``"OABAO"``) ends each step with its tail composed
    with the NEXT step's lead (at the next step's h, C, T: ``integrate(...,
    next_params=(h, friction, temperature))``), and starts each step without its lead, which is
    already applied: O does not move the position, so the law of the chain of positions is
    unchanged (OBABO becomes BAB O(h) after a first O(h/2), which is Lie-Trotter's word) while
    the momentum is recorded one lead later. An FSAL word's priming step applies the next
    lead to the unchanged momentum (same draw); a non-FSAL word needs it applied once before
    the first step (``integrators_fused.lead_update``, called by the sampler's ``init``).
    """
    pieces = split.pieces
    fsal = split.fsal
    source = _noise.as_noise(noise)

    if fuse:
        from heatbath.kernels import integrators_fused

        return integrators_fused.build_fused(split, noiseless=noiseless, noise=noise)
    num_noise = sum(1 for letter, _ in split.pieces if letter in "OE")

    def integrate(key, position, momentum, cache, batch, grad_fn, h, friction, mass, inv_mass, temperature,
                  next_params=None):
        noises = [None] * num_noise if noiseless else source.draws(key, momentum, num_noise)
        start_position, start_momentum = position, momentum
        if fsal:
            lp, grad, valid = cache.lp, cache.grad, True
            lp_start = lp
            primed = cache.valid
        else:
            lp = grad = lp_start = None
            valid = False
            primed = None
        first_eval = True
        for letter, frac in pieces:
            dt = frac * h
            if letter == "A":
                position = position_update(position, momentum, dt, inv_mass)
                valid = False
            elif letter == "B":
                if not valid:
                    where = position
                    if fsal and first_eval:
                        where = jax.tree.map(lambda a, b: jnp.where(primed, a, b), position, start_position)
                    lp, grad = grad_fn(where, batch)
                    if lp_start is None:
                        lp_start = lp
                    valid, first_eval = True, False
                momentum = momentum_update(momentum, grad, dt)
            elif letter == "O":
                momentum = ou_update(None, momentum, dt, friction, inv_mass, mass, temperature, noiseless,
                                     noises.pop(0))
            else:  # "E"
                momentum = euler_ou_update(None, momentum, dt, friction, inv_mass, temperature, noiseless,
                                           noises.pop(0))
        if fsal:
            if not valid:  # cannot happen for an FSAL word; kept as a guard for custom words
                raise AssertionError("an FSAL splitting must end with a valid gradient")
            position = jax.tree.map(lambda a, b: jnp.where(primed, a, b), position, start_position)
            momentum = jax.tree.map(lambda a, b: jnp.where(primed, a, b), momentum, start_momentum)
            lp_start = jnp.where(primed, lp_start, lp)  # priming: the value at the start position
            cache = Cache(lp, grad, jnp.ones_like(cache.valid))
        return position, momentum, cache, lp_start, grad

    return integrate
