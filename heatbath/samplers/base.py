"""The sampler contract shared by every family (BlackJAX-shaped).

A constructor takes hyperparameters and returns ``Sampler(init, step, ...)``:

- ``init(position, key=None) -> State``: a NamedTuple of arrays with at least ``position``
  and ``step`` (the step count, which schedules are evaluated at).
- ``step(key, state, batch, oracle) -> (State, Info)``: one transition. The driver supplies
  the :class:`~heatbath.kernels.gradients.Oracle`, callable as
  ``oracle(position, batch) -> (log_density_estimate, grad)``: the gradient estimator of the
  log posterior (naive, control variates, SVRG, ...), so kernels never see a model. It also
  carries the target's ``terms``, ``num_data``, ``nonsmooth`` term (with its prox) and the
  batcher's ``batch_info``; a sampler that reads the last two says so in ``uses``.
- ``Info`` is a NamedTuple whose fields become ``Result.stats``; it always carries
  ``step_size``, ``temperature``, ``grad_norm``, ``lp`` (the log-density estimate at the
  start of the step) and ``diverging`` (the new state is not finite; a sampler whose
  check covers its whole state says so with ``checks_state=True``).

The extra fields tell the driver what it needs to know without running anything:
``gradient`` (the estimator spec), ``temperature`` (a schedule, so ``optimize`` can check it
is zero or annealed), ``grads_per_step`` (gradient-estimator calls per step, for cost
accounting), ``hyperparameters`` (for printing and for rebuilding at another temperature) and
``gradient_at_position`` (False when a step evaluates its gradient elsewhere than at the
state's position, e.g. after a drift A of an FSAL splitting, at an inner chain's point or at
Monte Carlo draws, or differentiates it: such a sampler cannot be an optax update,
see :func:`heatbath.optim.as_optax`). ``uses`` names what the sampler reads from the
oracle beyond the gradient: ``"nonsmooth"`` (it handles the target's nonsmooth term g; the
drivers refuse a target with g for a sampler that would silently ignore it) and
``"batch_info"`` (it scales the likelihood itself from the batcher's info, as a federated
sampler does; the drivers refuse federated rounds with probabilities other than N_s / N for
a sampler whose N/n scaling would then be biased). ``check_start(target, positions)``, when
set, is called by ``hb.sample`` and ``hb.optimize`` on the starting positions before compiling
(the Bregman samplers: the mirror map's domain and the nonsmooth term's prox shapes);
``default_init(target, positions)``, when set, replaces the default uniform(-2, 2) starts of
a run given no ``init=`` (the Bregman samplers: mapped into the mirror map's domain).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from heatbath.kernels import gradients as _gradients
from heatbath.kernels import schedules as _schedules

__all__ = ["Sampler", "Info", "check_gradient_spec", "make_sampler"]


class Sampler(NamedTuple):
    init: Callable
    step: Callable
    gradient: Any = _gradients.naive()
    temperature: Callable = _schedules.constant(1.0)
    name: str = "sampler"
    grads_per_step: float = 1.0
    hyperparameters: dict = {}
    rebuild: Callable | None = None  # rebuild(**changes) -> Sampler with some hyperparameters changed
    # True when every gradient a step asks for is at the state's position (and not
    # differentiated): what an optax update, handed one gradient at params, can serve.
    gradient_at_position: bool = True
    # Transitions per recorded draw (SGHMC's num_steps_per_sample): the driver records one
    # draw every thinning * steps_per_draw steps, each step with its own minibatch.
    steps_per_draw: int = 1
    # What the sampler reads from the oracle beyond the gradient ("nonsmooth", "batch_info").
    uses: tuple = ()
    # Hyperparameters left for the driver to choose during warmup (``step_size``, ``friction``):
    # ``hb.sample`` measures the curvature and the gradient noise and rebuilds the sampler
    # (see heatbath.drivers.autotune); a loop refuses a sampler with anything left here.
    auto: tuple = ()
    # check_start(target, positions) -> None: raises a ValueError when the chains' starting
    # positions (leading axis: chains) or the target do not suit the sampler (a mirror map's
    # domain, the shape of the target's prox); the drivers call it before compiling.
    check_start: Callable | None = None
    # default_init(target, positions) -> positions: the sampler's own start when the user gives
    # no init (e.g. the default uniform(-2, 2) draws mapped into a mirror map's domain); the
    # drivers apply it to those draws only (heatbath.drivers.initialize.sampler_default).
    default_init: Callable | None = None
    # True when the step's ``Info.diverging`` already says whether every leaf of the new state is
    # finite: the driver's divergence guard then reads it instead of a finiteness pass over the
    # whole state (a pass over the parameters per step: about 0.3 ms at 670k weights on a CPU).
    checks_state: bool = False
    # True when the log density at a step's start (``Info.lp``) is the one the previous step
    # computed at its end and checked in its ``Info.diverging`` (an FSAL cache): a state the
    # guard accepted always has a finite one, so the guard keeps no fallback copy of the state
    # (``make_step``'s ``prev``: one copy and one select over the state per step fewer).
    checks_start_lp: bool = False


class Info(NamedTuple):
    """Per-step diagnostics common to the first-order samplers."""

    step_size: jax.Array
    temperature: jax.Array
    grad_norm: jax.Array
    lp: jax.Array
    diverging: jax.Array


def check_gradient_spec(gradient):
    """Validate a gradient-estimator spec passed to a sampler constructor."""
    if isinstance(gradient, str):
        table = {"naive": _gradients.naive, "cv": _gradients.control_variates,
                 "control_variates": _gradients.control_variates}
        if gradient not in table:
            raise ValueError(
                f"unknown gradient estimator {gradient!r}; use 'naive', 'cv' or an estimator "
                "from heatbath.kernels.gradients (naive(), control_variates(...), svrg(...))"
            )
        return table[gradient]()
    if not hasattr(gradient, "build"):
        raise TypeError(
            "gradient must be 'naive', 'cv' or a spec from heatbath.kernels.gradients, "
            f"got {type(gradient).__name__}"
        )
    return gradient


def make_sampler(constructor: Callable, hyperparameters: dict, *, base_name: str, init: Callable, step: Callable,
                 gradient, temperature: Callable, **fields) -> Sampler:
    """The :class:`Sampler` of a constructor, with the fields every family fills the same way.

    ``name`` is ``base_name`` (suffixed by the gradient estimator's name unless it is the naive
    one), ``hyperparameters`` the constructor's arguments as given, and ``rebuild(**changes)``
    calls ``constructor`` again with some of them changed (e.g. another temperature).
    ``fields`` sets the rest (``grads_per_step``, ``steps_per_draw``, ...).
    """
    name = base_name if gradient.name == "naive" else f"{base_name}-{gradient.name}"
    if getattr(step, "_heatbath_settings", None) is None:
        try:  # the drivers' compile cache keys on these, not on the sampler object (drivers/cache.py)
            step._heatbath_settings = (constructor, hyperparameters)
        except AttributeError:  # a step that takes no attributes (a builtin, a functools.partial is fine)
            pass
    return Sampler(
        init=init,
        step=step,
        gradient=gradient,
        temperature=temperature,
        name=name,
        hyperparameters=hyperparameters,
        rebuild=lambda **changes: constructor(**{**hyperparameters, **changes}),
        **fields,
    )
