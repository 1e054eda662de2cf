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
from heatbath.drivers.cache import IdentityCache, function_key, sampler_key, target_key
from heatbath.drivers.placement import place, place_data, shardings, to_host
from heatbath.drivers.progress import Progress
from heatbath.drivers.step import block_for, make_chunk, make_step  # noqa: F401 - re-exported (callers and tests read them here)
from heatbath.kernels.gradients import Estimator
from heatbath.kernels import schedules as _schedules

__all__ = ["LoopConfig", "RunOut", "make_step", "make_chunk", "run", "fold_each", "chain_keys", "finite_log_density",
           "grad_evals_per_chain", "num_refreshes", "DIVERGENCE_MODES", "KEEP_MODES", "COMPILED"]

DIVERGENCE_MODES = ("stop", "restart", "flag")
KEEP_MODES = ("draws", "moments")
CHUNK_BYTES = 1 << 27  # draws kept on device per chunk (128 MiB)
COMPILED = IdentityCache(32, check_mappings=True)  # compiled chunks, reused across calls with the same objects and shapes


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


WARMUP_IN_DRAWS = True  # a short run's warmup runs in its sampling chunk's compiled code (see run)
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


def _platform(tree) -> str:
    """The platform the chains run on: their first array's device (the default backend for host arrays)."""
    leaf = jax.tree.leaves(tree)[0]
    if isinstance(leaf, jax.Array):
        return next(iter(leaf.devices())).platform
    return jax.default_backend()


def _metric_args(target) -> dict:
    from heatbath.drivers.metric import tuned_metric  # metric sits above the loop

    return tuned_metric(target)


def _with_tuned(chunk):
    """The chunk with the sampler's :class:`~heatbath.kernels.schedules.Tuned` values as its last
    argument: traced with them, the compiled code reads them from there (another value: the
    same compiled code)."""

    def chunk_with(carry, acc, shared_est, data, offset, count, tuned):
        with _schedules.tuned_values(tuned):
            return chunk(carry, acc, shared_est, data, offset, count)

    chunk_with.__name__ = "chunk"  # the name jax.log_compiles reports
    return chunk_with


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
        # The control variates' full-data gradient at the centre is compiled once per target
        # (gradients._full_data_compiled, the centre an argument), not per call; the naive
        # estimator's init does nothing.
        shared_est = estimator.init(chain0, data)
        est_states = ()
    else:
        shared_est = ()
        est_states = jax.vmap(estimator.init, in_axes=(0, None))(positions, data)
    batch_states = jax.vmap(batcher.init)(fold_each(keys, 4))
    alive = jnp.ones((num_chains,), bool)
    # The fallback state of stop / restart: none when the sampler checked the log density each
    # state starts with (Sampler.checks_start_lp; make_step).
    fallback = states.position if cfg.on_divergence == "stop" else states
    guard = alive if cfg.on_divergence == "flag" else (alive, () if sampler.checks_start_lp else fallback)
    carry = (states, est_states, run_keys, guard, batch_states)
    # What `record` returns for one draw (constrained values and deterministic sites, which may
    # be much larger than the position): the moments' shapes and the bytes kept per draw.
    if record is not None:
        recorded = jax.eval_shape(record, jax.tree.map(lambda x: x[0], positions), data)
    else:
        recorded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), positions)
    # A record about the size of the position (the constrained latent sites, no deterministic
    # site of the data's size): cheap enough to compute at every warmup draw (see run's warmup).
    small_record = record is None or (
        sum(int(np.prod(x.shape)) for x in jax.tree.leaves(recorded))
        <= 2 * sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(positions)) + 64)
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

    # The draws' host copy: chunk j's waits until chunk j + 1 is dispatched, so the device runs
    # it meanwhile (not with a checkpoint, whose commits save the draws up to their chunk, or
    # running moments, which copy nothing per draw).
    sink = _moments.ChunkDraws(cfg.num_draws, defer=ckpt is None and not moments, keep_pending=ckpt is not None)
    draws, infos = sink.draws, sink.infos
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
    # The driver's chosen step size and friction and a whitened target's metric: arguments of the
    # compiled chunk (the key names them, with their shapes, not their values).
    tuned = {**_schedules.tuned_in(sampler.hyperparameters), **_metric_args(target)}
    if places is not None:
        tuned = jax.device_put(tuned, replicated)
    else:
        tuned = {k: v if isinstance(v, float) else jnp.asarray(v) for k, v in tuned.items()}
    rkey, rpin = function_key(record) if record is not None else (None, None)
    signature = signature + (_signature(tuned),)
    # Blocks of draws with a static trip count on an accelerator (make_chunk's block).
    block = block_for(_platform(positions))

    def cap(length, keep_, widen=True):
        if keep_ and chunk_size and widen:
            # The run's last, shorter sampling chunk runs in the full chunks' compiled code (a
            # traced count): 1,000 draws of an 84k-weight network in chunks of 399, 399 and 202
            # compiled twice (capacities 399 and 256), 7-10 s each.
            length = max(length, min(chunk_size, cfg.num_draws))
        return capacity(length, max(1, CHUNK_BYTES // max(per_draw, 1)), keep_)

    def get(length, steps, keep_, progress, widen=True):
        length = cap(length, keep_, widen)
        every = progress.every if progress is not None and progress.enabled else None
        key = (skey, tkey, rkey, id(spec), cfg.batch_size, cfg.on_divergence, length, steps,
               keep_, moments, cfg.swag_rank, every, block, signature)

        def build():
            nonlocal compile_time
            fn = _with_tuned(make_chunk(one_step, length, steps, record, progress, keep_, moments, cfg.swag_rank,
                                        block))
            t0 = time.perf_counter()
            compiled = jax.jit(fn).lower(carry, acc, shared_est, data, jnp.int32(0), jnp.int32(0), tuned).compile()
            compile_time += time.perf_counter() - t0
            return compiled

        return COMPILED.get(key, spins + tpins + (rpin, spec), build)

    done_steps = sum(n * t for n, t, _ in segments[:start])
    # A short run's warmup runs in its sampling chunk's compiled code, the draws dropped on the
    # device (each step reads the same keys and rows by its global index, so the chains are the
    # same): one compile instead of two, which on a first call was about half its time. Not with
    # running moments (the sampling chunk folds its states into them), a timed first chunk, or a
    # record much larger than the position (deterministic sites of the data's size: computing
    # them at every warmup draw could cost more than the compile saved).
    first_draws = next((n for n, _, is_draws in segments if is_draws), None)
    warm_in_draws = (WARMUP_IN_DRAWS and small_record and not moments and not calibrate and first_draws is not None
                     and all(n % cfg.thinning == 0 for n, _, is_draws in segments if not is_draws))
    interrupt = plan.Interrupt()
    with Progress(cfg.num_warmup + cfg.num_draws * cfg.thinning, cfg.desc, cfg.progress_bar) as progress, \
            hold(ckpt, lambda: (draws.result(), flag_lookahead(infos.result()))), interrupt:
        progress.update(done_steps)
        j = start
        while j < len(segments):
            length, steps, is_draws = segments[j]
            # Not the timed first chunk of a calibrated run: it is sized to its own length, so
            # the copy of a large buffer does not enter the timing that sizes the others.
            t0, compiled_before = time.perf_counter(), compile_time
            if not is_draws and warm_in_draws:
                chunk_fn, size = get(first_draws, cfg.thinning, True, progress), cap(first_draws, True)
                left = length // cfg.thinning
                while left:
                    k = min(left, size)
                    (carry, acc), out = chunk_fn(carry, acc, shared_est, data, jnp.int32(done_steps), jnp.int32(k),
                                                 tuned)
                    del out
                    done_steps += k * cfg.thinning
                    left -= k
                out = None
            else:
                chunk_fn = get(length, steps, is_draws, progress, widen=not (calibrate and j == 0))
                (carry, acc), out = chunk_fn(carry, acc, shared_est, data, jnp.int32(done_steps), jnp.int32(length),
                                             tuned)
                before, done_steps = done_steps, done_steps + length * steps
            if is_draws:
                sink.add(j, out, length)  # copies the previous chunk's draws while this one runs
                del out
                if moments:
                    # The last chunk of a run without a checkpoint: nothing reads the device's
                    # accumulator again (a checkpoint saves it; a calibrated run's first chunk is
                    # followed by the others).
                    final = ckpt is None and j + 1 == len(segments) and not (calibrate and j == 0)
                    host, acc = _moments.merge_moments(host, acc, reset=not final)
            if calibrate and j == 0:
                jax.block_until_ready(carry)
                # The chunk's own run time: without its compile (seconds on a loaded machine,
                # which made the other chunks several times too short).
                ran = time.perf_counter() - t0 - (compile_time - compiled_before)
                chunk_size, warmup_chunk = plan.sized_by_time(cfg, first, ran, mem_chunk)
                segments = plan.segments(cfg, chunk_size, warmup_chunk, first)
                if ckpt is not None:
                    ckpt.settings.update(chunk_size=chunk_size, warmup_chunk=warmup_chunk)
            if sink.waiting is not None:
                # This chunk may still be running (its own ticks move the bar): only what is done.
                progress.advance_to(before)
            else:
                progress.set(done_steps)
            last = j + 1 == len(segments) or interrupt.requested
            if ckpt is not None and ((j + 1) % cfg.checkpoint_every == 0 or last):
                previous = ckpt.commit(j + 1, to_host((carry, acc, shared_est, host)), sink.pending, previous,
                                       cfg.extra_state)
                sink.pending = []
            j += 1
            if interrupt.requested and j < len(segments):
                break
        sink.flush()
        progress.set(done_steps)
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
