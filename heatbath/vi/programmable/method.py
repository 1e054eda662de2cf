"""``hb.vi.programmable(objective, guide, optimizer=..., num_steps=...)``: a VI method for ``hb.fit``.

It runs on the VI-method contract (:mod:`heatbath.vi.base`). A programmable objective needs the
NumPyro model itself (guide draws, local and discrete latent sites, the model's own params),
not the bridge's latent-parameter target, so the method has a ``bind(model, args, kwargs)``
hook: ``hb.fit`` hands it the model and its arguments and gets back

- a Target whose parameters are the objective's (``{"params": unconstrained numpyro.param
  values of the model and the guide, "baselines": learned REINFORCE baselines}``), whose data
  are the model's data arguments (rows of the data plate, :mod:`.build`), and whose
  ``logdensity(params, batch)`` is a one-draw ELBO estimate at a fixed key (what the loop's
  start check and the checkpoint's model digest read);
- the method bound to that program: its state is (params, optax state, running baselines,
  step); one step is ``value, g = estimate(params, key, batch)`` then ``optimizer.update(-g)``
  (ascent on the objective; optax minimises).

The loop, minibatches (uniform or reshuffled rows, N/n scaling by the data plate),
checkpoints and resume are ``hb.fit``'s. ``finalize`` returns a :class:`~.approximation.Fitted`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import tree as _tree
from heatbath.kernels.gradients import naive
from heatbath.kernels.validate import check_int
from heatbath.vi.base import VIMethod
from heatbath.vi.programmable.approximation import finalize, make_finalize
from heatbath.vi.programmable.build import build_program
from heatbath.vi.programmable.estimators import as_estimator
from heatbath.vi.programmable.transform import ObjectiveEstimator

__all__ = ["programmable", "State", "Info"]


class State(NamedTuple):
    position: dict  # {"params": ..., "baselines": ...}
    opt_state: object
    running: dict
    step: jax.Array


class Info(NamedTuple):
    objective: jax.Array
    grad_norm: jax.Array
    lp: jax.Array
    diverging: jax.Array


def _describe_optimizer(optimizer, given) -> str:
    return given if isinstance(given, str) else getattr(optimizer, "__name__", "optax transformation")


def programmable(objective, guide, *, optimizer=None, num_steps: int, estimators: Optional[dict] = None,
                 optimizer_name: Optional[str] = None) -> VIMethod:
    """Programmable VI: maximise E[objective] over the params of ``guide`` (and of the model).

    Args:
      objective: ``objective(ctx) -> scalar`` (:mod:`heatbath.vi.programmable.objectives`:
        ``elbo()``, ``iwae(K)``, ``renyi(alpha, K)``, ``hvi``, ``iwhvi``, ``diwhvi``, ``rws``, or
        your own program).
      guide: a NumPyro guide (its ``numpyro.param`` sites are fitted; sample sites may carry
        ``infer={"estimator": ...}``).
      optimizer: an optax GradientTransformation (default ``optax.adam(1e-3)``) or a
        ``numpyro.optim`` optimizer (``numpyro.optim.Adam(1e-3)``, as SVI takes; its Adam is the
        cheaper of the two per step, benchmarks/RESULTS.md), applied to the negated gradient
        estimate.
      num_steps: optimizer steps.
      estimators: site name -> estimator (a name or an Estimator), overriding annotations.
      optimizer_name: how checkpoints describe the optimizer (default: "adam(1e-3)" for the
        default, else the transformation's name): a resume with another description is refused.

    ``hb.fit(model, method, data=..., batch_size=...)`` returns a
    :class:`~heatbath.vi.programmable.Fitted`.
    """
    import optax

    if not callable(objective):
        raise TypeError(f"objective must be a function objective(ctx) -> scalar, got {type(objective).__name__}")
    if not callable(guide):
        raise TypeError(f"guide must be a NumPyro guide (a callable), got {type(guide).__name__}")
    num_steps = check_int(num_steps, "num_steps", minimum=1)
    estimators = {k: as_estimator(v, f"site {k!r}") for k, v in (estimators or {}).items()}
    name_given = optimizer_name
    if optimizer is None:
        optimizer, name_given = optax.adam(1e-3), optimizer_name or "adam(1e-3)"
    if _is_numpyro_optim(optimizer):
        name_given = name_given or f"numpyro.optim.{type(optimizer).__name__}"
    elif not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer must be an optax GradientTransformation or a numpyro.optim optimizer, got "
                        f"{type(optimizer).__name__}")
    hyper = {"objective": getattr(objective, "__name__", "objective"), "guide": getattr(guide, "__name__", "guide"),
             "optimizer": _describe_optimizer(optimizer, name_given),
             "estimators": {k: repr(v) for k, v in estimators.items()}, "num_steps": num_steps}

    def unbound(*_a, **_k):
        raise TypeError("hb.vi.programmable runs on a NumPyro model: call hb.fit(model, method, data=...)")

    def bind(model, args, kwargs):
        program = build_program(model, guide, args, kwargs, estimators=estimators)
        est = ObjectiveEstimator(objective, program)
        return _target(program, est, model), _bound(method, program, est, optimizer)

    method = VIMethod(
        init=unbound, step=unbound, gradient=naive(), temperature=lambda step: jnp.zeros(()),
        name="programmable VI", num_steps=num_steps, hyperparameters=hyper, finalize=finalize,
        flat=False, bind=bind, gradient_at_position=True,
    )
    return method


def _is_numpyro_optim(optimizer) -> bool:
    """A ``numpyro.optim`` optimizer: ``init``, ``update(g, state)``, ``get_params(state)`` over
    jax.example_libraries' (init_fn, update_fn, get_params_fn); optax has no ``get_params``."""
    return all(hasattr(optimizer, a) for a in ("init", "update", "get_params", "update_fn"))


def _bound(method, program, est, optimizer):
    numpyro_optim = _is_numpyro_optim(optimizer)

    def init(position, key=None):
        del key
        return State(position, optimizer.init(position), est.init_running(), jnp.zeros((), jnp.int32))

    def step(key, state, batch, oracle):
        del oracle
        value, grads, running = est(state.position, key, batch, state.running)
        neg = jax.tree.map(jnp.negative, grads)
        if numpyro_optim:  # NumPyro's optimizers (what SVI uses): state -> state, params read from it
            opt_state = optimizer.update(neg, state.opt_state)
            params = optimizer.get_params(opt_state)
        else:
            updates, opt_state = optimizer.update(neg, state.opt_state, state.position)
            import optax

            params = optax.apply_updates(state.position, updates)
        gnorm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
        bad = ~jnp.isfinite(value) | ~_tree.all_finite(params)
        return State(params, opt_state, running, state.step + 1), Info(value, gnorm, value, bad)

    return method._replace(init=init, step=step, finalize=make_finalize(program))


def _target(program, est, model):
    from heatbath.models.target import Target  # noqa: PLC0415 - the one target hb.fit needs (see ARCHITECTURE)

    from heatbath.vi.programmable.objectives import log_weight
    from heatbath.vi.programmable.context import Context, Shared

    init = est.init_params()
    rows = bool(program.row_keys)
    data = program.full_batch() if rows else {"_rows": jnp.zeros((1,))}

    def terms(params, batch):
        b = batch if rows else {}
        ctx = Context(program, program.constrain(params["params"]), b, jax.random.key(0), Shared("run"))
        tr = ctx.sample_guide(jax.random.key(1), detach=True)
        return ctx.log_model(tr, jax.random.key(2)) - tr.log_prob(), jnp.zeros(())

    del log_weight

    def init_params(key):
        del key
        return init

    def constrain_fn(params, data_):
        del data_
        return program.constrain(params["params"])

    def unconstrain(values):
        from numpyro.distributions import biject_to

        if not isinstance(values, dict):
            raise TypeError("init for programmable VI is a dict param name -> value (the constrained param values)")
        unknown = set(values) - set(program.param_init)
        if unknown:
            raise ValueError(f"unknown param(s) {sorted(unknown)} in init; the params are {sorted(program.param_init)}")
        params = dict(init["params"])
        for k, v in values.items():
            c = program.param_constraints[k]
            v = jnp.asarray(v, params[k].dtype)
            if v.shape != params[k].shape:
                raise ValueError(f"init for param {k!r} has shape {v.shape}, the param has {params[k].shape}")
            params[k] = biject_to(c).inv(v)
        return {"params": params, "baselines": init["baselines"]}

    minibatch_error = None if rows else (
        "the model has no data plate (no numpyro.plate of the data's length holds an observed site), so it "
        "cannot be minibatched; run full-batch (batch_size=None)")
    return Target(terms=terms, data=data, num_data=program.num_data or 1, init_params=init_params,
                  constrain_fn=constrain_fn, unconstrain=unconstrain,
                  name=getattr(model, "__name__", "model"), minibatch_error=minibatch_error,
                  observed_data=program.observed or None)
