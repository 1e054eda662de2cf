"""Divergence bookkeeping outside the scan: a state's log density is evaluated by the step
that leaves it, so a draw is flagged when the next draw's first step finds it non-finite, and
the last draw is checked on the host."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.drivers.placement import to_host

__all__ = ["flag_lookahead", "finite_log_density", "terms_at"]


def flag_lookahead(recorded):
    """The infos with each draw also flagged ``diverging`` when the log density of its state,
    evaluated at the next draw's first step, is non-finite (a state can be finite with a NaN
    log density; it is only evaluated when the chain moves on). The last draw's is checked by
    the caller (:func:`finite_log_density`)."""
    if not recorded:
        return recorded
    info, ok = recorded
    if not hasattr(info, "diverging") or np.shape(ok)[0] < 2:
        return info
    div = np.array(info.diverging)
    div[:-1] |= ~np.asarray(ok[1:], bool)
    return info._replace(diverging=div)


def terms_at(target):
    """``(positions, data) -> (logprior, loglik)`` per chain (leading axis), on one row of
    ``data`` (all of them for a target that cannot be minibatched); compiled once per target and
    shared by the start-of-run and end-of-run checks (the row is taken inside, not by an eager
    slice that compiles on its own)."""

    def build():
        one_row = not target.minibatch_error

        def fn(positions, data):
            rows = jax.tree.map(lambda x: x[:1], data) if one_row else data
            return jax.vmap(target.terms, in_axes=(0, None))(positions, rows)

        return fn

    return target.metric_memo("terms_at", build)


def finite_log_density(target, positions) -> np.ndarray:
    """Per chain, whether the positions (leading axis chain) and the log density there are
    finite (evaluated on one row, or all of them for a target that cannot be minibatched)."""
    lp, ll = terms_at(target)(positions, target.data)
    with np.errstate(over="ignore", invalid="ignore"):
        ok = np.isfinite(np.asarray(lp) + np.asarray(ll))
    # And the positions themselves: a sampler whose step checks finiteness through its gradient
    # (``Sampler.checks_state``) leaves an overflow of a finite update to the next step's check.
    for leaf in jax.tree.leaves(to_host(positions)):
        leaf = np.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.inexact):  # bfloat16 too (NumPy's issubdtype says no)
            ok &= np.isfinite(leaf.reshape(leaf.shape[0], -1)).all(axis=1)
    return ok

