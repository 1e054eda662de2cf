"""Running a NumPyro model or guide inside an objective: params, rows, estimators, traces.

A :class:`Program` is a model and a guide with their arguments and the layout of the data
(which arguments are rows of the data plate, of size N). :func:`run` executes one of them
under a handler (:class:`Runner`) that

- substitutes the objective's parameters at ``numpyro.param`` sites (constrained values);
- points the data plates at the minibatch: a plate of size N becomes a subsampled plate of
  the batch's n rows (``arange(n)``), so NumPyro scales its sites by N/n, as a subsampled plate
  written by the user would; the rows themselves are already the batch's;
- samples each latent site with its gradient estimator (:mod:`.estimators`): reparam leaves
  NumPyro's draw as it is, reinforce stops its gradient and records log p(v) for the score
  term, enum and mvd take the value forced by the current branch of the estimator (see
  :mod:`.surrogate`), a detached draw stops its gradient and records nothing;
- records every sample site in a :class:`Trace`: values, unscaled log densities, scales and
  the batch dimension of the data plate.

Keys follow NumPyro's ``handlers.seed`` (one split per site in program order), so a guide run
here with key k draws what ``seed(guide, k)`` draws.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.primitives import Messenger

from heatbath.vi.programmable import estimators as _est

__all__ = ["Program", "Trace", "Runner", "run"]


@jax.tree_util.register_pytree_node_class
class Trace:
    """The sample sites of one run: ``values``, ``log_probs`` (unscaled, batch-shaped),
    ``scales`` (N/n inside a data plate, else 1) and static ``row_dims`` (the batch axis of the
    data plate, or None) and ``observed`` flags. A pytree (it can leave ``particles``)."""

    def __init__(self, values, log_probs, scales, row_dims, observed):
        self.values, self.log_probs, self.scales = values, log_probs, scales
        self.row_dims, self.observed = row_dims, observed

    def tree_flatten(self):
        names = tuple(self.values)
        return (self.values, self.log_probs, self.scales), (names, tuple(self.row_dims.items()),
                                                             tuple(self.observed.items()))

    @classmethod
    def tree_unflatten(cls, aux, children):
        values, log_probs, scales = children
        return cls(values, log_probs, scales, dict(aux[1]), dict(aux[2]))

    def latent(self):
        """The values of the latent (unobserved) sites."""
        return {k: v for k, v in self.values.items() if not self.observed[k]}

    def log_prob(self, rows: bool = False, sites=None):
        """sum over sites of scale * sum log p (the minibatch estimate of the full-data sum);
        ``rows=True``: (global part, per-row vector of the data plate's rows, unscaled)."""
        names = list(self.values) if sites is None else [s for s in sites if s in self.values]
        return _sum_sites(self, names, rows)

    def __repr__(self):
        return f"Trace({sorted(self.values)})"


def _sum_sites(tr: Trace, names, rows: bool):
    total = jnp.zeros(())
    per_row = None
    for name in names:
        lp = tr.log_probs[name]
        dim = tr.row_dims.get(name)
        if rows and dim is not None:
            axis = lp.ndim + dim
            r = jnp.sum(lp, axis=tuple(i for i in range(lp.ndim) if i != axis))
            per_row = r if per_row is None else per_row + r
        else:
            total = total + tr.scales[name] * jnp.sum(lp)
    if rows:
        return total, (jnp.zeros(()) if per_row is None else per_row)
    return total


class Program:
    """A NumPyro model and guide with their arguments and data layout.

    ``row_keys``: the arguments (``"arg<i>"`` or a keyword name) that are rows of the data
    plates ``row_plates`` (size ``num_data``); a batch is a dict of those arguments' rows.
    ``param_constraints``: name -> NumPyro constraint of every ``numpyro.param`` site of the
    model and the guide (their unconstrained values are what the optimizer moves).
    """

    def __init__(self, model, guide, args=(), kwargs=None, *, row_keys=(), row_plates=frozenset(),
                 num_data: Optional[int] = None, estimators: Optional[dict] = None, max_plate_nesting: int = 0,
                 param_constraints: Optional[dict] = None, param_init: Optional[dict] = None,
                 model_latent: tuple = (), observed: Optional[dict] = None):
        self.model, self.guide = model, guide
        self.args, self.kwargs = tuple(args), dict(kwargs or {})
        self.row_keys, self.row_plates = tuple(row_keys), frozenset(row_plates)
        self.num_data = num_data
        self.estimators = {k: _est.as_estimator(v, f"site {k!r}") for k, v in (estimators or {}).items()}
        self.max_plate_nesting = max_plate_nesting
        self.param_constraints = param_constraints or {}
        self.param_init = param_init or {}
        self.model_latent = tuple(model_latent)
        self.observed = observed or {}

    def full_batch(self):
        return {k: _arg(self.args, self.kwargs, k) for k in self.row_keys}

    def call_args(self, batch):
        args, kwargs = list(self.args), dict(self.kwargs)
        for k, v in (batch or {}).items():
            if k.startswith("arg"):
                args[int(k[3:])] = v
            else:
                kwargs[k] = v
        return tuple(args), kwargs

    def batch_rows(self, batch) -> Optional[int]:
        if not batch or not self.row_plates:
            return None
        return int(jax.tree.leaves(batch)[0].shape[0])

    def constrain(self, uparams):
        from numpyro.distributions import biject_to

        return {k: (biject_to(self.param_constraints[k])(v) if k in self.param_constraints else v)
                for k, v in uparams.items()}


def _arg(args, kwargs, key):
    return args[int(key[3:])] if key.startswith("arg") else kwargs[key]


class Runner(Messenger):
    """The handler of one model/guide run inside an objective (see the module docstring)."""

    def __init__(self, fn, ctx, role: str, params: dict, rows: Optional[int], values: Optional[dict] = None,
                 detach: bool = False, enumerate_model: bool = False):
        self.ctx, self.role, self.params, self.rows = ctx, role, params, rows
        self.values = values or {}
        self.detach = detach
        self.enumerate_model = enumerate_model
        self.sites = {}
        self.frames = {}
        self.enumerated = []
        self.declared = {}  # row plate -> the size the program declared (N, or n when sized by the batch)
        super().__init__(fn)

    def process_message(self, msg):
        kind = msg["type"]
        if kind == "param":
            if msg["name"] in self.params:
                msg["value"] = self.params[msg["name"]]
        elif kind == "plate":
            if self.rows is not None and msg["name"] in self.ctx.program.row_plates:
                size = msg["args"][0]
                self.declared[msg["name"]] = size
                msg["value"] = jnp.arange(self.rows)
                msg["args"] = (size, self.rows)
        elif kind == "subsample":
            if self.rows is not None:
                msg["kwargs"] = {**msg["kwargs"], "event_dim": None}
        elif kind == "sample" and not msg["is_observed"]:
            name = msg["name"]
            if name in self.values:
                msg["value"] = self.values[name]
                msg["_hb_given"] = True
                return
            infer = msg.get("infer") or {}
            if self.enumerate_model and infer.get("enumerate") == "parallel":
                fn = msg["fn"]
                support = fn.enumerate_support(expand=False)
                nest = self.ctx.program.max_plate_nesting
                msg["value"] = support.reshape((support.shape[0],) + (1,) * nest + tuple(fn.event_shape))
                msg["_hb_enum"] = True
                self.enumerated.append(name)
                return
            est, bkey = self.ctx.estimator_for(self.role, name, msg["fn"], infer, self.detach)
            msg["_hb_est"], msg["_hb_key"] = est, bkey
            if est is not None and est.name == "enum":
                msg["value"] = self.ctx.forced_value(bkey, msg["fn"])

    def postprocess_message(self, msg):
        if msg["type"] != "sample":
            return
        name, fn, value = msg["name"], msg["fn"], msg["value"]
        observed = bool(msg["is_observed"])
        est = msg.get("_hb_est")
        if not observed and not msg.get("_hb_given") and not msg.get("_hb_enum"):
            if self.detach:
                value = jax.lax.stop_gradient(value)
            elif est is not None and est.name == "reinforce":
                value = jax.lax.stop_gradient(value)
                self.ctx.add_score(self.role, name, est, jnp.sum(fn.log_prob(value)))
            elif est is not None and est.name == "mvd":
                value = self.ctx.mvd_value(msg["_hb_key"], fn, jax.lax.stop_gradient(value))
            elif est is not None and est.name == "enum":
                self.ctx.record_enum(msg["_hb_key"], jnp.sum(fn.log_prob(value)))
            msg["value"] = value
        lp = fn.log_prob(value)
        mask = msg.get("mask")
        if mask is not None:
            lp = jnp.where(mask, lp, 0.0)
        scale = msg.get("scale")
        row_dim = None
        scale = 1.0 if scale is None else scale
        for f in msg["cond_indep_stack"]:
            if f.name in self.ctx.program.row_plates:
                row_dim = f.dim
                if f.name in self.declared:
                    # NumPyro scaled by declared / n; a plate sized by the batch (x.shape[0])
                    # declares n, so the data plate's N / n is completed here.
                    scale = scale * (self.ctx.program.num_data / self.declared[f.name])
        self.frames[name] = tuple(f.dim for f in msg["cond_indep_stack"])
        self.sites[name] = (value, lp, jnp.asarray(scale), row_dim, observed,
                            bool(msg.get("_hb_enum")))


def run(ctx, which: str, key, *, values: Optional[dict] = None, detach: bool = False,
        enumerate_model: bool = False, batch: Any = "ctx", fn=None):
    """Run the model or the guide (``which``) with ``key``; returns the :class:`Runner`."""
    program = ctx.program
    fn = (program.model if which == "model" else program.guide) if fn is None else fn
    batch = ctx.batch if isinstance(batch, str) else batch
    args, kwargs = program.call_args(batch)
    runner = Runner(handlers.seed(fn, key), ctx, which, ctx.constrained, program.batch_rows(batch), values,
                    detach, enumerate_model)
    with handlers.block():
        runner(*args, **kwargs)
    return runner


def to_trace(runner, sites=None) -> Trace:
    names = [n for n in runner.sites if (sites is None or n in sites)]
    return Trace(
        {n: runner.sites[n][0] for n in names},
        {n: runner.sites[n][1] for n in names},
        {n: runner.sites[n][2] for n in names},
        {n: runner.sites[n][3] for n in names},
        {n: runner.sites[n][4] for n in names},
    )


def enumerated_log_density(runner) -> jax.Array:
    """log sum over the enumerated site of the model's joint (NumPyro's parallel enumeration, one
    enumerated site): sites whose log density carries the enumeration axis are summed inside the
    logsumexp (over the enumerated site's plates), the others outside."""
    (ename,) = runner.enumerated
    nest = runner.ctx.program.max_plate_nesting
    edims = set(runner.frames[ename])
    escale = runner.sites[ename][2]
    inside, outside = None, jnp.zeros(())
    full = nest + 1
    for name, (value, lp, scale, _, _, _) in runner.sites.items():
        if lp.ndim == full:  # carries the enumeration axis (plates use at most `nest` batch dims)
            keep = tuple(i for i in range(1, full) if (i - full) not in edims)
            lp = jnp.sum(lp, axis=keep, keepdims=True)
            inside = lp if inside is None else inside + lp
        else:
            outside = outside + scale * jnp.sum(lp)
    return outside + escale * jnp.sum(jax.nn.logsumexp(inside, axis=0))


def numpy_support(fn) -> np.ndarray:
    """All joint values of a small discrete site, shape (C, *batch_shape, *event_shape)."""
    import itertools

    with jax.ensure_compile_time_eval():
        support = np.asarray(fn.enumerate_support(expand=False))
    k = support.shape[0]
    per = support.reshape((k,) + support.shape[1 + len(fn.batch_shape):]) if fn.batch_shape else support
    per = per.reshape((k,) + tuple(fn.event_shape))
    m = int(np.prod(fn.batch_shape)) if fn.batch_shape else 1
    combos = np.array(list(itertools.product(range(k), repeat=m)), dtype=int).reshape(-1, m)
    vals = per[combos]  # (C, m, *event)
    return vals.reshape((vals.shape[0],) + tuple(fn.batch_shape) + tuple(fn.event_shape))
