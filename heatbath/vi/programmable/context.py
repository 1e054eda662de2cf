"""The primitives of an objective program: what ``objective(ctx)`` can call.

An objective is an ordinary Python/JAX function of a :class:`Context` returning a scalar; its
value is the expectation over all the random choices it makes, and :mod:`.surrogate` turns it
into an unbiased estimator of that value's gradient (Becker et al., PLDI 2024: objectives as
programs). The primitives, with the estimator equations of the choices they make in
:mod:`.estimators`:

- ``ctx.sample_guide(key=None, detach=False) -> Trace``: run the guide q_phi on the step's
  batch, each latent site sampled with its estimator; ``trace.log_prob()`` is
  sum_sites scale * log q (scale N/n inside the data plate).
- ``ctx.sample_model(key=None, detach=False) -> Trace``: run the model's prior (latent sites
  sampled with their estimators, observed sites kept), e.g. for a sleep phase.
- ``ctx.log_model(trace, key=None, rows=False)``: log p(x, z) with the trace's latent values
  substituted (model sites the trace lacks are sampled; a model site annotated
  ``infer={"enumerate": "parallel"}`` is summed out exactly, as NumPyro's ``TraceEnum_ELBO``
  does). ``rows=True`` returns (global part, per-row vector) for per-datum objectives.
- ``ctx.log_guide(trace, key=None, rows=False)``: log q(z) at the trace's values (a replay).
- ``ctx.particles(fn, n)``: ``fn(child_ctx)`` for n independent particles (``jax.vmap``),
  stacked; ``ctx.expectation(fn, n)``: their mean (an unbiased estimate of E[fn]).
- ``ctx.key`` / ``ctx.next_key()``: the run's randomness; ``ctx.params``: the constrained
  parameters; ``ctx.batch``: the step's rows.
- :func:`heatbath.vi.programmable.marginal` (auxiliary-variable guides) builds on these.

Inside ``particles`` a choice may use reparam or reinforce (enum and mvd re-run the rest of the
program, which is defined at the objective's top level only).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from heatbath.vi.programmable import estimators as _est
from heatbath.vi.programmable.program import enumerated_log_density, numpy_support, run, to_trace

__all__ = ["Context", "Shared"]


class Shared:
    """State of one top-level run shared by a context and its particles: the branch sites found
    while tracing (``mode="discover"``) or the branch being run (``forced``), the records of
    enum/mvd sites, the estimator of every score term and the baselines."""

    def __init__(self, mode: str, forced: Optional[dict] = None, running: Optional[dict] = None,
                 learned: Optional[dict] = None):
        self.mode = mode
        self.forced = forced or {}
        self.running = running or {}
        self.learned = learned or {}
        self.branches = {}  # key -> {"kind": "enum"/"mvd", ...} in program order
        self.records = {}
        self.est_of = {}
        self.counts = {}


STREAM = 0x9E3779B9  # salts ctx.next_key()'s stream apart from split(ctx.key) (see Context.next_key)


class Context:
    """What an objective receives (see the module docstring)."""

    def __init__(self, program, constrained: dict, batch, key, shared: Shared, depth: int = 0):
        self.program = program
        self.constrained = constrained
        self.batch = batch
        self.key = key
        self.shared = shared
        self.depth = depth
        self.scores = {}
        self._counter = 0

    # -- randomness and parameters ----------------------------------------------------------
    @property
    def params(self) -> dict:
        return self.constrained

    def next_key(self):
        """A fresh key: fold_in(fold_in(ctx.key, STREAM), i) for the i-th call.

        Not fold_in(ctx.key, i): with JAX's partitionable threefry (the default),
        fold_in(k, i) == split(k, n)[i] for every n > i, so the i-th fresh key collided with the
        keys an objective derives by splitting ctx.key (log_weight's guide key = split(k)[1] was
        next_key()'s first key): IWHVI's extra auxiliary draws reused the retained draw u_0
        (noisy cone, m = 5: -8.85 where an independent implementation gives -8.18)."""
        self._counter += 1
        return jax.random.fold_in(jax.random.fold_in(self.key, STREAM), self._counter)

    def _key(self, key):
        return self.next_key() if key is None else key

    # -- primitives ---------------------------------------------------------------------------
    def sample_guide(self, key=None, *, detach: bool = False, guide=None):
        """A trace of the guide (``guide`` overrides the program's, e.g. a reverse model)."""
        return to_trace(run(self, "guide", self._key(key), detach=detach, fn=guide))

    def sample_model(self, key=None, *, detach: bool = False):
        """A trace of the model's prior on the batch (observed sites kept, with their densities)."""
        return to_trace(run(self, "model", self._key(key), detach=detach))

    def log_model(self, trace, key=None, *, rows: bool = False, values: Optional[dict] = None):
        """log p(x, z) at the trace's latent values (or ``values``)."""
        vals = trace.latent() if values is None else values
        runner = run(self, "model", self._key(key), values=vals, enumerate_model=True)
        if runner.enumerated:
            if len(runner.enumerated) > 1:
                raise ValueError(f"model sites {runner.enumerated} are all enumerated (infer={{'enumerate': "
                                 "'parallel'}}): programmable VI sums out one enumerated model site")
            if rows:
                raise ValueError("log_model(..., rows=True) with an enumerated model site is not supported")
            return enumerated_log_density(runner)
        return to_trace(runner).log_prob(rows=rows)

    def log_guide(self, trace, key=None, *, rows: bool = False, guide=None):
        """log q(z) at the trace's latent values (a replay of the guide)."""
        runner = run(self, "guide", self._key(key), values=trace.latent(), fn=guide)
        return to_trace(runner).log_prob(rows=rows)

    def particles(self, fn, n: int):
        """``fn(child)`` for n particles (independent keys), stacked along a new leading axis."""
        n = int(n)
        if n < 1:
            raise ValueError(f"particles needs n >= 1, got {n}")
        keys = jax.random.split(self.next_key(), n)
        shared, depth, program, constrained, batch = self.shared, self.depth + 1, self.program, self.constrained, self.batch

        def one(k):
            child = Context(program, constrained, batch, k, shared, depth)
            return fn(child), child.scores

        outs, scores = jax.vmap(one)(keys)
        for k, lp in scores.items():
            self.scores[k] = self.scores.get(k, 0.0) + jnp.sum(lp)
        return outs

    def expectation(self, fn, n: int = 1):
        """(1/n) sum_i fn(particle_i): an unbiased estimate of E[fn]."""
        return jnp.mean(self.particles(fn, n), axis=0)

    # -- hooks used by the runner ---------------------------------------------------------------
    def estimator_for(self, role, name, fn, infer, detach):
        if detach:
            return None, None
        nested = self.depth > 0
        spec = self.program.estimators.get(name)
        if spec is None:
            spec = infer.get("estimator")
        if spec is None:
            spec = _est.enum() if infer.get("enumerate") == "parallel" and role == "guide" else _est.default_for(fn, nested)
        spec = _est.as_estimator(spec, f"site {name!r}")
        _est.check_site(spec, fn, name, nested)
        bkey = None
        if spec.name in ("enum", "mvd"):
            base = f"{role}:{name}"
            count = self.shared.counts.get(base, 0)
            self.shared.counts[base] = count + 1
            bkey = f"{base}:{count}"
        return spec, bkey

    def add_score(self, role, name, est, lp):
        key = f"{role}:{name}"
        self.shared.est_of[key] = est
        self.scores[key] = self.scores.get(key, 0.0) + lp

    def baseline(self, key):
        est = self.shared.est_of[key]
        if est.baseline == "running":
            return self.shared.running.get(key, jnp.zeros(()))
        if est.baseline == "learned":
            return self.shared.learned.get(key, jnp.zeros(()))
        return jnp.zeros(())

    def forced_value(self, bkey, fn):
        if self.shared.mode == "discover":
            combos = numpy_support(fn)
            self.shared.branches[bkey] = {"kind": "enum", "values": combos}
            return jnp.asarray(combos[0])
        return self.shared.forced[bkey]

    def record_enum(self, bkey, lp):
        self.shared.records[bkey] = {"lp": lp}

    def mvd_value(self, bkey, fn, value):
        probs = _probs(fn)
        if self.shared.mode == "discover":
            self.shared.branches[bkey] = {"kind": "mvd", "size": int(max(1, value.size))}
            return value
        idx = self.shared.forced.get(bkey, jnp.asarray(-1))
        flat = value.reshape(-1)
        safe = jnp.maximum(idx, 0)
        flipped = flat.at[safe].set(1 - flat[safe])
        out = jnp.where(idx >= 0, flipped, flat).reshape(value.shape)
        self.shared.records[bkey] = {"p": jnp.broadcast_to(probs, value.shape).reshape(-1), "v": flat}
        return out


def _probs(fn) -> Any:
    while hasattr(fn, "base_dist") and not hasattr(fn, "probs"):
        fn = fn.base_dist
    return fn.probs
