"""The one scan loop that every driver runs.

Per chain the carry is (sampler state, gradient-estimator state, PRNG key, divergence guard,
batcher state). A step splits its key into (next key, batch key, step key), asks the batcher for the
step's rows, builds the :class:`~heatbath.kernels.gradients.Oracle` from the gradient
estimator and calls ``sampler.step(step key, state, batch, oracle)``. Chains run under
``vmap`` inside the scan body (so the progress callback sits outside the vmap), thinning steps
run in an inner scan, and the draws come back to the host chunk by chunk: each chunk is one
compiled ``lax.scan``, so memory is bounded by the chunk, not the run. Nothing syncs with the
host inside a chunk except the optional progress bar.

Reproducibility: chain i uses the key ``fold_in(key(seed), i)``, so its draws do not depend
on how many chains run.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.drivers import moments as _moments
from heatbath.drivers import plan
from heatbath.drivers.cost import grad_evals_per_chain, num_refreshes  # noqa: F401 - re-exported
from heatbath.drivers.keys import chain_keys, fold_each  # noqa: F401 - re-exported
from heatbath.drivers.divergence import finite_log_density, flag_lookahead
from heatbath.drivers.cache import IdentityCache, sampler_key, target_key
from heatbath.drivers.placement import place, place_data, shardings, to_host
from heatbath.drivers.progress import Progress, tick
from heatbath.kernels import tree as _tree
from heatbath.kernels.gradients import Estimator, Oracle

__all__ = ["LoopConfig", "RunOut", "make_step", "make_chunk", "run", "fold_each", "chain_keys", "finite_log_density",
           "grad_evals_per_chain", "num_refreshes", "DIVERGENCE_MODES", "KEEP_MODES", "COMPILED"]

DIVERGENCE_MODES = ("stop", "restart", "flag")
KEEP_MODES = ("draws", "moments")
CHUNK_BYTES = 1 << 27  # draws kept on device per chunk (128 MiB)
COMPILED = IdentityCache(32)  # compiled chunks, reused across calls with the same objects and shapes


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How a run loops: what the drivers decide from their arguments (see :func:`heatbath.sample`).

    ``num_draws`` recorded draws every ``thinning`` steps after ``num_warmup`` unrecorded
    steps; ``record(position, data)`` maps one chain's position to what is kept (None: the
    infos only); ``chunk_size`` draws per compiled chunk (None: from the memory budget).
    """

    batching: Any  # a batching spec (heatbath.drivers.batching)
    batch_size: Optional[int]
    num_draws: int
    thinning: int
    num_warmup: int
    desc: str
    record: Optional[Callable] = None
    chunk_size: Optional[int] = None
    progress_bar: bool = False
    on_divergence: str = "flag"
    keep: str = "draws"
    swag_rank: int = 0
    shard: Optional[str] = None
    devices: Any = None
    checkpoint: Any = None  # a heatbath.drivers.checkpoint.Checkpoint
    checkpoint_every: int = 1
    resume: bool = False
    extra_state: Any = None  # saved with checkpoints, restored on resume (the control-variate centre)
    states: Any = None  # the chains' sampler states to start from (a tuning warmup's), instead of init


class RunOut(NamedTuple):
    draws: Any  # (draw, chain, ...)
    infos: Any
    carry: Any
    compile_time: float
    moments: Any
    extra_state: Any
    interrupted: bool = False  # stopped early by Ctrl-C (SIGINT): draws and carry are those done
    steps_done: int = 0


def make_step(sampler, estimator: Estimator, batcher, target, on_divergence: str = "flag"):
    """One transition of one chain: the batcher's rows, the oracle, the sampler's step.

    The carry is (sampler state, estimator state, key, guard, batcher state). A divergence is a
    non-finite new state or a non-finite log density (``info.lp``, evaluated at the step's
    start: a likelihood that is NaN where its gradient is finite, e.g. the log of a negative
    number, leaves the state finite). It is caught here, inside the scan: with
    ``on_divergence="restart"`` the step is rejected (the chain goes back to its last state
    with a finite log density and goes on with fresh randomness), with ``"stop"`` the chain
    freezes there for good, with ``"flag"`` it is only flagged. The guard is ``(alive, prev)``
    for stop and restart (``prev``: the last state whose log density was found finite before the
    current one, the fallback when the current state's log density turns out non-finite; one
    extra copy of the state per chain)
    and ``alive`` alone for ``"flag"``. Rejected or frozen steps are flagged ``diverging``.
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
            base = jax.tree.map(lambda a, b: jnp.where(lp_ok, a, b), state, prev)
            prev = base
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


def make_chunk(one_step, num_draws: int, thinning: int, record, progress: Optional[Progress],
               keep: bool = True, moments: bool = False, swag_rank: int = 0):
    """A function running ``num_draws * thinning`` steps of all chains, recording every ``thinning``-th.

    ``record(position, data)`` maps one chain's position to what is kept (the constrained
    draw, deterministic sites included); None records only the infos. ``keep=False`` (warmup)
    returns nothing per draw. ``moments=True`` folds the recorded values into running moments
    (in the accumulator) instead of returning them.
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

            return jax.lax.cond(apply, do, lambda acc: acc, acc)

        def body(c_acc, i):
            c, acc = c_acc
            if moments:
                # Draw i - 1 (the state coming in) is folded here, and the chunk's last draw after
                # the loop: the moments then read the loop's carried state, not the step's output.
                # Fed the step's output (with the guard's select decided before the update, see
                # Sampler.checks_state), XLA fused the whole update, the Gaussian noise's erf_inv
                # polynomial included, into each moment's fusion and computed it again there
                # (three fusions per parameter array computed it).
                acc = fold(acc, c, i > 0)
            c, info, ok = draw(c, shared_est, data, offset + i * thinning)
            info = (info, ok)
            if progress is not None and progress.enabled:
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
            if moments:
                acc = fold(acc, c, n > 0)
            return (c, acc), rest

        if count is None:
            return last(jax.lax.scan(body, (carry, acc), jnp.arange(num_draws, dtype=jnp.int32)),
                        jnp.int32(num_draws))
        shapes = jax.eval_shape(lambda ca: body(ca, jnp.int32(0))[1], (carry, acc))
        buffers = jax.tree.map(lambda x: jnp.zeros((num_draws,) + x.shape, x.dtype), shapes)

        def loop_body(state):
            c_acc, bufs, i = state
            c_acc, out = body(c_acc, i)
            bufs = jax.tree.map(lambda b, o: jax.lax.dynamic_update_index_in_dim(b, o, i, 0), bufs, out)
            return c_acc, bufs, i + 1

        c_acc, bufs, _ = jax.lax.while_loop(lambda st: st[2] < count, loop_body,
                                            ((carry, acc), buffers, jnp.int32(0)))
        return last((c_acc, bufs), count)

    return chunk


MIN_CAPACITY = 256  # draws a sampling chunk holds at least (within the memory budget)
WARMUP_CAPACITY = 1 << 30  # a warmup chunk keeps nothing per step: one compiled chunk serves every length


def capacity(length: int, mem_chunk: int, keep: bool = True) -> int:
    """Draws (or steps) a compiled chunk can run for a segment of ``length``: for a warmup
    chunk, which keeps nothing, :data:`WARMUP_CAPACITY`; for a sampling chunk the next power
    of two, at least :data:`MIN_CAPACITY`, within the memory budget (``mem_chunk``, or the
    length itself when that is larger). A run of another length (``num_samples``,
    ``num_warmup``) then reuses the compiled chunk (``make_chunk``'s ``count``)."""
    if not keep:
        return max(length, WARMUP_CAPACITY)
    return min(max(1 << max(0, (length - 1).bit_length()), MIN_CAPACITY), max(mem_chunk, length))


def _signature(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(
        (jnp.shape(x), str(jnp.result_type(x)), getattr(x, "sharding", None) if isinstance(x, jax.Array) else None)
        for x in leaves
    )


def _draw_like(record, length, thinning, one_step, carry, shared_est, acc, data, moments, swag_rank):
    """Shapes of one sampling chunk's (values, infos) of ``length`` draws, to check loaded draws."""
    fn = make_chunk(one_step, length, thinning, record, None, True, moments, swag_rank)
    _, (values, info) = jax.eval_shape(fn, carry, acc, shared_est, data, jnp.int32(0))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), (values, info))


def run(target, sampler, estimator: Estimator, positions, keys, cfg: LoopConfig) -> RunOut:
    """Run all chains in checkpointable segments (warmup chunks, then sampling chunks).

    Returns the recorded draws (draw, chain, ...), infos, final carry, compile time, moments
    (``keep="moments"``) and ``cfg.extra_state``.
    """
    from heatbath.drivers.checkpoint import hold

    data = target.data
    num_chains = jax.tree.leaves(positions)[0].shape[0]
    spec, record = cfg.batching, cfg.record
    places = shardings(cfg.shard, cfg.devices, num_chains, target.num_data, spec)
    if places is not None:
        chain_place, data_place, replicated = places
        # Federated rounds with shard="data": whole shards per device, the spec and record reading that layout.
        data, spec, record = place_data(data, data_place, spec, estimator, record)
        positions = place(positions, chain_place)
    batcher = spec.build(cfg.batch_size, target.num_data, cfg.num_warmup + cfg.num_draws * cfg.thinning)
    one_step = make_step(sampler, estimator, batcher, target, cfg.on_divergence)
    init_keys = fold_each(keys, 1)
    run_keys = fold_each(keys, 2)
    if getattr(sampler, "auto", ()):
        raise ValueError(
            f"{sampler.name} leaves {list(sampler.auto)} to be chosen automatically, which hb.sample does "
            "during warmup; here give them explicitly"
        )
    states = jax.vmap(sampler.init)(positions, init_keys) if cfg.states is None else cfg.states
    if estimator.shared:
        chain0 = jax.tree.map(lambda x: x[0], positions)
        # A full-data gradient (control variates) is compiled: eagerly, through a NumPyro model,
        # it runs op by op (seconds). The naive estimator's init does nothing: called as is (a
        # jit of a fresh closure would be traced and compiled again at every call).
        init = jax.jit(estimator.init) if estimator.rows_at_init else estimator.init
        shared_est = init(chain0, data)
        est_states = ()
    else:
        shared_est = ()
        est_states = jax.vmap(estimator.init, in_axes=(0, None))(positions, data)
    batch_states = jax.vmap(batcher.init)(fold_each(keys, 4))
    alive = jnp.ones((num_chains,), bool)
    guard = alive if cfg.on_divergence == "flag" else (alive, states)
    carry = (states, est_states, run_keys, guard, batch_states)
    # What `record` returns for one draw (constrained values and deterministic sites, which may
    # be much larger than the position): the moments' shapes and the bytes kept per draw.
    if record is not None:
        recorded = jax.eval_shape(record, jax.tree.map(lambda x: x[0], positions), data)
    else:
        recorded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), positions)
    moments = cfg.keep == "moments"
    acc = _moments.moments_init(recorded, num_chains, cfg.swag_rank) if moments else ()
    if places is not None:
        carry = place(carry, chain_place)
        acc = () if not moments else {
            "count": jax.device_put(acc["count"], replicated),
            "ring_count": jax.device_put(acc["ring_count"], replicated),
            **{k: place(acc[k], chain_place) for k in ("mean", "m2", "ring")},
        }
        shared_est = place(shared_est, replicated)

    # Bytes kept per draw: the recorded values plus the stats.
    per_draw = num_chains * (sum(int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
                                 for leaf in jax.tree.leaves(recorded)) + 64)
    mem_chunk = max(1, min(cfg.num_draws, CHUNK_BYTES // max(per_draw, 1)))
    chunk_size, warmup_chunk, first = cfg.chunk_size, None, None
    calibrate = False
    ckpt = cfg.checkpoint
    if ckpt is not None and cfg.resume:
        # The plan of the run being resumed (its chunk sizes may have come from a timing).
        recorded = ckpt.read_meta(ckpt.path)["settings"]
        chunk_size, warmup_chunk, first = plan.recorded_plan(recorded, ckpt.path)
    elif chunk_size is None:
        chunk_size = mem_chunk
        if moments:
            # Each chunk's float32 moments are merged on the host in float64 (Chan et al.): short
            # chunks keep the float32 Welford recursion's drift negligible (~1e-6 relative).
            chunk_size = max(1, min(cfg.num_draws, _moments.MOMENT_CHUNK))
        else:
            # Warmup records nothing: its chunk is its own length (not the draws' chunk).
            warmup_chunk = cfg.num_warmup or None
            if cfg.num_warmup + cfg.num_draws * cfg.thinning > 4 * plan.CALIBRATION_STEPS:
                # A long run: time a first chunk, then size the others to take CHUNK_SECONDS.
                calibrate = True
                if cfg.num_warmup:
                    first = (min(cfg.num_warmup, plan.CALIBRATION_STEPS), 1, False)
                else:
                    first = (min(cfg.num_draws, mem_chunk, max(1, plan.CALIBRATION_STEPS // cfg.thinning)),
                             cfg.thinning, True)
    segments = [tuple(first)] if calibrate else plan.segments(cfg, chunk_size, warmup_chunk, first)

    draws, infos = _moments.Collector(cfg.num_draws), _moments.Collector(cfg.num_draws)
    host = _moments.host_moments(acc) if moments else None
    start, previous = 0, None
    if ckpt is not None:
        ckpt.settings.update(chunk_size=chunk_size, warmup_chunk=warmup_chunk,
                             first_segment=None if first is None else list(first))
        if cfg.resume:
            likes = {}

            def draws_like(length):
                if length not in likes:
                    likes[length] = _draw_like(record, length, cfg.thinning, one_step, carry, shared_est, acc,
                                               data, moments, cfg.swag_rank)
                return likes[length]

            def add(tree):
                values, info = tree
                draws.add(jax.tree.map(np.asarray, values))
                infos.add(jax.tree.map(np.asarray, info))

            (carry, acc, shared_est, host), start, previous = ckpt.restore(
                (carry, acc, shared_est, host), [n if is_draws else None for n, _, is_draws in segments],
                draws_like, add)

    compile_time = 0.0
    signature = _signature((carry, acc, shared_est, data))
    # Keyed on the sampler's settings and the target's functions, not on the objects: a new
    # sampler with the same settings, or data= on a Target, reuses the compiled chunks.
    (skey, spins), (tkey, tpins) = sampler_key(sampler), target_key(target)

    def get(length, steps, keep_, progress, widen=True):
        if keep_ and chunk_size and widen:
            # The run's last, shorter sampling chunk runs in the full chunks' compiled code (a
            # traced count): 1,000 draws of an 84k-weight network in chunks of 399, 399 and 202
            # compiled twice (capacities 399 and 256), 7-10 s each.
            length = max(length, min(chunk_size, cfg.num_draws))
        length = capacity(length, max(1, CHUNK_BYTES // max(per_draw, 1)), keep_)
        every = progress.every if progress is not None and progress.enabled else None
        key = (skey, tkey, id(record), id(spec), cfg.batch_size, cfg.on_divergence, length, steps,
               keep_, moments, cfg.swag_rank, every, signature)

        def build():
            nonlocal compile_time
            fn = make_chunk(one_step, length, steps, record, progress, keep_, moments, cfg.swag_rank)
            t0 = time.perf_counter()
            compiled = jax.jit(fn).lower(carry, acc, shared_est, data, jnp.int32(0), jnp.int32(0)).compile()
            compile_time += time.perf_counter() - t0
            return compiled

        return COMPILED.get(key, spins + tpins + (record, spec), build)

    done_steps = sum(n * t for n, t, _ in segments[:start])
    pending = []
    interrupt = plan.Interrupt()
    with Progress(cfg.num_warmup + cfg.num_draws * cfg.thinning, cfg.desc, cfg.progress_bar) as progress, \
            hold(ckpt, lambda: (draws.result(), flag_lookahead(infos.result()))), interrupt:
        progress.update(done_steps)
        j = start
        while j < len(segments):
            length, steps, is_draws = segments[j]
            # Not the timed first chunk of a calibrated run: it is sized to its own length, so
            # the copy of a large buffer does not enter the timing that sizes the others.
            chunk_fn = get(length, steps, is_draws, progress, widen=not (calibrate and j == 0))
            t0 = time.perf_counter()
            (carry, acc), out = chunk_fn(carry, acc, shared_est, data, jnp.int32(done_steps), jnp.int32(length))
            done_steps += length * steps
            if is_draws:
                values, info = jax.tree.map(lambda x: x if x.shape[0] == length else np.array(x[:length]),
                                            to_host(out))
                draws.add(values)
                infos.add(info)
                if ckpt is not None:  # kept for the next commit only: otherwise the Collector's copy is the one
                    pending.append((j, (values, info)))
                del out
                if moments:
                    host, acc = _moments.merge_moments(host, acc)
            if calibrate and j == 0:
                jax.block_until_ready(carry)
                chunk_size, warmup_chunk = plan.sized_by_time(cfg, first, time.perf_counter() - t0, mem_chunk)
                segments = plan.segments(cfg, chunk_size, warmup_chunk, first)
                if ckpt is not None:
                    ckpt.settings.update(chunk_size=chunk_size, warmup_chunk=warmup_chunk)
            progress.set(done_steps)
            last = j + 1 == len(segments) or interrupt.requested
            if ckpt is not None and ((j + 1) % cfg.checkpoint_every == 0 or last):
                previous = ckpt.commit(j + 1, to_host((carry, acc, shared_est, host)), pending, previous,
                                       cfg.extra_state)
                pending = []
            j += 1
            if interrupt.requested and j < len(segments):
                break
        jax.block_until_ready(carry)
    moments_out = None
    if moments:
        moments_out = {"count": host["count"], "mean": host["mean"], "m2": host["m2"],
                       "ring": to_host(acc["ring"])}
    stopped = j < len(segments)
    if places is not None and not places[0].is_fully_addressable:
        carry = to_host(carry)  # spread over several processes: every process gets the final states
    return RunOut(draws.result(), flag_lookahead(infos.result()), carry, compile_time, moments_out,
                  cfg.extra_state, stopped, done_steps)
