"""One compiled step of one chain (:func:`make_step`) and one compiled chunk of all chains (:func:`make_chunk`).

The pieces :func:`heatbath.drivers.loop.run` compiles and runs chunk after chunk (see its module
docstring for the carry): the step (batcher, oracle, the sampler's step, the divergence guard)
and the chunk (the chains under ``vmap`` in a ``lax.scan``, thinning in an inner scan, the
recorded draws or their running moments, the progress callback).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.extend.core import jaxpr_as_fun

from heatbath.drivers import moments as _moments
from heatbath.drivers.progress import Progress, tick
from heatbath.kernels import tree as _tree
from heatbath.kernels.gradients import Estimator, Oracle

__all__ = ["make_step", "make_chunk"]


def make_step(sampler, estimator: Estimator, batcher, target, on_divergence: str = "flag"):
    """One transition of one chain: the batcher's rows, the oracle, the sampler's step.

    The carry is (sampler state, estimator state, key, guard, batcher state). A divergence is a
    non-finite new state or a non-finite log density (``info.lp``, evaluated at the step's
    start: a likelihood that is NaN where its gradient is finite, e.g. the log of a negative
    number, leaves the state finite). It is caught here, inside the scan: with
    ``on_divergence="restart"`` the step is rejected (the chain goes back to its last state
    with a finite log density and goes on with fresh randomness), with ``"stop"`` the chain
    freezes there for good (its position: the rest of a stopped chain's state, momentum and
    caches, is that of its rejected steps, possibly non-finite), with ``"flag"`` it is only
    flagged. The guard is ``(alive, prev)`` for stop and restart (``prev``: the last state, for
    "stop" the last position, whose log density was found finite before the current one, the
    fallback when the current state's log density turns out non-finite; one extra copy per chain)
    and ``alive`` alone for ``"flag"``; ``prev`` is ``()`` for a sampler that checked each state's
    log density when it made it (``Sampler.checks_start_lp``, SGHMC's FSAL splittings), whose
    states are their own fallbacks. Rejected or frozen steps are flagged ``diverging``.
    """
    terms, num_data, nonsmooth = target.terms, target.num_data, target.nonsmooth

    def one_step(carry, shared_est, data, step):
        state, est_state, key, guard, batch_state = carry
        key, key_batch, key_step = jax.random.split(key, 3)
        if estimator.shared:
            current = shared_est
        else:
            # `step` is the driver's global step count, passed unbatched so that under the chain
            # vmap the refresh stays a lax.cond (a batched predicate would turn it into a select
            # that computes the full-data gradient at every step). It is required for that reason.
            current = estimator.refresh(est_state, state.position, data, step)
        batch, batch_info, batch_state = batcher.next(batch_state, key_batch, data, step)

        def estimate(position, b):
            return estimator.estimate(current, position, b)

        oracle = Oracle(estimate, terms, num_data, nonsmooth, batch_info)
        new_state, info = sampler.step(key_step, state, batch, oracle)
        lp = getattr(info, "lp", None)
        lp_ok = jnp.all(jnp.isfinite(lp)) if lp is not None else jnp.asarray(True)
        if on_divergence == "flag":
            if lp is not None:
                info = info._replace(diverging=jnp.logical_or(info.diverging, jnp.logical_not(lp_ok)))
        else:
            alive, prev = guard
            # The sampler's own check when it covers the whole state (``checks_state``), else a
            # finiteness pass over the new state.
            finite = (jnp.logical_not(info.diverging) if getattr(sampler, "checks_state", False)
                      else _tree.all_finite(new_state))
            ok = jnp.logical_and(finite, lp_ok)
            if on_divergence == "stop":
                ok = jnp.logical_and(ok, alive)
                alive = ok
            # The last state with a finite log density: the current one, or (when its log density
            # is non-finite) the one before it. It is also the fallback of the next step (two
            # selects over the state per step, not three: the fallback is always a state whose log
            # density was finite).
            # Under "stop" only the position is kept and frozen: a stopped chain's draws are its
            # position, and its other fields (momentum, caches, preconditioner) never matter
            # again, so they are left to its rejected steps (one select over the position per
            # step, not over the whole state: SGHMC's is three parameter-sized arrays).
            frozen = on_divergence == "stop"
            start = state.position if frozen else state
            if getattr(sampler, "checks_start_lp", False):
                # The state's log density was checked when it was made (an FSAL cache): the
                # state is its own fallback, and lp_ok is False only where prev would be the
                # state itself (the initial state). The same draws without the copy.
                base = start
            else:
                base = jax.tree.map(lambda a, b: jnp.where(lp_ok, a, b), start, prev)
                prev = base
            if frozen:
                new_state = new_state._replace(
                    position=jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state.position, base))
            else:
                new_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, base)
            info = info._replace(diverging=jnp.logical_or(info.diverging, jnp.logical_not(ok)))
            guard = (alive, prev)
        return (new_state, est_state if estimator.shared else current, key, guard, batch_state), info

    return one_step


def _single(fn):
    """One chain: run the unbatched function and add the chain axis back. A vmap over an axis
    of size 1 still batches every op (dot_general with a batch dimension, ...), which measured
    3-12% slower than the bare loop."""

    def wrapped(c, *rest):
        out = fn(jax.tree.map(lambda x: x[0], c), *rest)
        return jax.tree.map(lambda x: jnp.asarray(x)[None], out)

    return wrapped


BLOCK = 32  # draws per block of the accelerator loop (``make_chunk``'s ``block``)


def block_for(platform: str) -> int:
    """The draws per block of a compiled chunk's loop on ``platform`` (``make_chunk``'s ``block``):
    0 (one draw per loop iteration) on the CPU, :data:`BLOCK` on an accelerator.

    A ``while_loop`` whose trip count is traced sends its predicate to the host at every
    iteration on a GPU: one device-to-host copy and a stall of the launch queue per step.
    Measured on an H200 (benchmarks/gpu_profile.py, d = 50 logistic regression): 36 us per
    step against 10 us for the hand-written ``lax.scan``, whose trip count is static. On the
    CPU the loop runs on the host anyway, and one loop body compiles faster than two."""
    return 0 if platform == "cpu" else BLOCK


def make_chunk(one_step, num_draws: int, thinning: int, record, progress: Optional[Progress],
               keep: bool = True, moments: bool = False, swag_rank: int = 0, block: int = 0):
    """A function running ``num_draws * thinning`` steps of all chains, recording every ``thinning``-th.

    ``record(position, data)`` maps one chain's position to what is kept (the constrained
    draw, deterministic sites included); None records only the infos. ``keep=False`` (warmup)
    returns nothing per draw. ``moments=True`` folds the recorded values into running moments
    (in the accumulator) instead of returning them.

    ``block`` (with a traced ``count``; see :func:`block_for`): run the draws in blocks of
    ``block`` draws, each a ``lax.scan`` of static length inside a ``while_loop`` over the
    blocks, then the remaining ``count % block`` draws one per iteration; the moments' fold is
    a select, not a ``lax.cond``, the per-chain scalars of a draw are written as one array per
    dtype (:func:`_packing`), and the progress bar ticks once per block. The draws are the same
    as with ``block=0`` (each step reads the same keys, by its draw index).
    """
    batched_step = jax.vmap(one_step, in_axes=(0, None, None, None))
    batched_record = None if record is None else jax.vmap(record, in_axes=(0, None))

    def vstep(c, *rest):
        if jax.tree.leaves(c[2])[0].shape[0] == 1:
            return _single(one_step)(c, *rest)
        return batched_step(c, *rest)

    def vrecord(position, data):
        if jax.tree.leaves(position)[0].shape[0] == 1:
            return _single(record)(position, data)
        return batched_record(position, data)

    def start_ok(lp, like):
        """Whether the log density at the draw's first step (of the previous draw's state) is finite."""
        if lp is None:
            return jnp.ones(jnp.shape(like), bool)
        return jnp.isfinite(lp)

    def draw(carry, shared_est, data, first_step):
        if thinning == 1:
            carry, info = vstep(carry, shared_est, data, first_step)
            return carry, info, start_ok(getattr(info, "lp", None), carry[3][0] if isinstance(carry[3], tuple)
                                         else carry[3])

        def inner(c, k):
            return vstep(c, shared_est, data, first_step + k)

        carry, infos = jax.lax.scan(inner, carry, jnp.arange(thinning, dtype=jnp.int32))
        info = jax.tree.map(lambda x: x[-1], infos)
        if hasattr(info, "diverging"):
            info = info._replace(diverging=jnp.any(infos.diverging, axis=0))
        lp = getattr(infos, "lp", None)
        alive = carry[3][0] if isinstance(carry[3], tuple) else carry[3]
        return carry, info, start_ok(None if lp is None else lp[0], alive)

    def chunk(carry, acc, shared_est, data, offset, count=None):
        """``offset``: the global step count at the start of the chunk (a traced scalar).

        ``count`` (a traced scalar <= ``num_draws``): run only the first ``count`` draws, in a
        ``while_loop`` writing into buffers of ``num_draws`` rows (the rows past ``count`` are
        zeros); one compiled chunk then serves every run length up to ``num_draws``."""

        def fold(acc, c, apply):
            # A lax.cond on an unbatched scalar: the state before a chunk's first draw (the init,
            # the warmup's last state, or a draw already folded) is skipped exactly, even where
            # its recorded values are NaN (a select or a 0 weight would let NaN in).
            def do(acc):
                values = vrecord(c[0].position, data) if record is not None else ()
                return _moments.moments_update(acc, values, swag_rank)

            if block:
                # On an accelerator a lax.cond's predicate goes to the host at every step; a select
                # is exact as well (it takes the old accumulator elementwise, NaN or not). The
                # SWAG ring is selected at its one written slot, not over all its columns.
                new = do(acc)
                out = {k: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new[k], acc[k]) for k in new
                       if k != "ring"}
                if swag_rank:
                    slot = acc["ring_count"] % swag_rank
                    out["ring"] = jax.tree.map(
                        lambda n, o: o.at[:, slot].set(jnp.where(apply, n[:, slot], o[:, slot])), new["ring"],
                        acc["ring"])
                else:
                    out["ring"] = new["ring"]
                return out
            return jax.lax.cond(apply, do, lambda acc: acc, acc)

        def body(c_acc, i, ticks=True):
            c, acc = c_acc
            if moments and keep:  # (a warmup chunk keeps nothing: its states are not draws)
                # Draw i - 1 (the state coming in) is folded here, and the chunk's last draw after
                # the loop: the moments then read the loop's carried state, not the step's output.
                # Fed the step's output (with the guard's select decided before the update, see
                # Sampler.checks_state), XLA fused the whole update, the Gaussian noise's erf_inv
                # polynomial included, into each moment's fusion and computed it again there
                # (three fusions per parameter array computed it).
                acc = fold(acc, c, i > 0)
            c, info, ok = draw(c, shared_est, data, offset + i * thinning)
            info = (info, ok)
            if ticks and progress is not None and progress.enabled:
                every = max(1, progress.every // thinning)  # draws between ticks

                def do_tick():
                    jax.debug.callback(tick, every * thinning)

                jax.lax.cond((i + 1) % every == 0, do_tick, lambda: None)
            if not keep:
                return (c, acc), None
            if moments:
                return (c, acc), ((), info)
            values = vrecord(c[0].position, data) if record is not None else ()
            return (c, acc), (values, info)

        def last(out, n):
            (c, acc), rest = out
            if moments and keep:
                acc = fold(acc, c, n > 0)
            return (c, acc), rest

        if count is None:
            return last(jax.lax.scan(body, (carry, acc), jnp.arange(num_draws, dtype=jnp.int32)),
                        jnp.int32(num_draws))
        size = min(block, num_draws)
        # One trace of the step (a network's step takes about 0.25 s to trace), for the buffers'
        # shapes and for the loops. On the CPU the loop ticks the bar; after an accelerator's
        # blocks the leftover draws do not (their count would restart at the chunk's start and
        # count the blocks' steps again): loop.run sets the bar after the chunk.
        closed, whole = jax.make_jaxpr(lambda ca, i: body(ca, i, ticks=size <= 1),
                                       return_shape=True)((carry, acc), jnp.int32(0))
        whole_tree, shapes = jax.tree.structure(whole), whole[1]

        def traced_body(c_acc, i):
            return jax.tree.unflatten(whole_tree, jaxpr_as_fun(closed)(*jax.tree.leaves((c_acc, i))))

        pack, unpack = _packing(shapes) if block else (lambda out: out, lambda bufs: bufs)
        buffers = jax.tree.map(lambda x: jnp.zeros((num_draws,) + x.shape, x.dtype),
                               jax.eval_shape(pack, shapes))

        def loop_body(state):
            c_acc, bufs, i = state
            c_acc, out = traced_body(c_acc, i)
            bufs = jax.tree.map(lambda b, o: jax.lax.dynamic_update_index_in_dim(b, o, i, 0), bufs, pack(out))
            return c_acc, bufs, i + 1

        state = ((carry, acc), buffers, jnp.int32(0))
        if size > 1:
            def block_body(state):
                c_acc, bufs, i = state

                def inner(c_acc, k):
                    c_acc, out = traced_body(c_acc, i + k)
                    return c_acc, pack(out)

                c_acc, outs = jax.lax.scan(inner, c_acc, jnp.arange(size, dtype=jnp.int32))
                bufs = jax.tree.map(lambda b, o: jax.lax.dynamic_update_slice_in_dim(b, o, i, 0), bufs, outs)
                if progress is not None and progress.enabled:
                    blocks = max(1, progress.every // (thinning * size))  # blocks between ticks

                    def do_tick():
                        jax.debug.callback(tick, blocks * size * thinning)

                    jax.lax.cond((i // size + 1) % blocks == 0, do_tick, lambda: None)
                return c_acc, bufs, i + size

            state = jax.lax.while_loop(lambda st: st[2] + size <= count, block_body, state)
        c_acc, bufs, _ = jax.lax.while_loop(lambda st: st[2] < count, loop_body, state)
        return last((c_acc, unpack(bufs)), count)

    return chunk


def _packing(shapes):
    """Pack one draw's per-chain scalars (the step's stats, scalar sites) into one array per dtype.

    ``shapes``: what one draw records (``jax.eval_shape`` of it). Returns ``(pack, unpack)``:
    ``pack`` maps one draw's tree to ``(stacks, others)``, a ``(chains, k)`` array per dtype
    shared by at least two leaves of shape ``(chains,)`` and the other leaves as they are;
    ``unpack`` maps the recorded buffers (a leading draws axis) back to the tree. Each recorded
    leaf is one dynamic-update-slice kernel per step on a GPU (seven for SGLD's draw and stats);
    packed, three."""
    leaves, treedef = jax.tree.flatten(shapes)
    by_dtype = {}
    for i, leaf in enumerate(leaves):
        if leaf.ndim == 1:
            by_dtype.setdefault(jnp.dtype(leaf.dtype), []).append(i)
    groups = [idx for idx in by_dtype.values() if len(idx) > 1]
    grouped = {i for idx in groups for i in idx}
    others = [i for i in range(len(leaves)) if i not in grouped]

    def pack(out):
        flat = jax.tree.leaves(out)
        return [jnp.stack([flat[i] for i in idx], axis=-1) for idx in groups], [flat[i] for i in others]

    def unpack(packed):
        stacks, rest = packed
        flat = [None] * len(leaves)
        for idx, stack in zip(groups, stacks):
            for j, i in enumerate(idx):
                flat[i] = stack[..., j]
        for i, leaf in zip(others, rest):
            flat[i] = leaf
        return jax.tree.unflatten(treedef, flat)

    return pack, unpack
