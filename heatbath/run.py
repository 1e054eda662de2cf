"""The drivers: ``sample`` and ``optimize`` (``fit`` lives with the VI methods).

One loop serves every method. Per chain the carry is (sampler state, gradient-estimator
state, PRNG key); a step draws the minibatch indices inside the scan, builds the gradient
estimator's ``grad_fn`` and calls ``sampler.step``. Chains run under ``vmap`` inside the
scan body (so a progress callback sits outside the vmap), the thinning steps run in an
inner scan, and the draws come back to the host chunk by chunk: each chunk is one compiled
``lax.scan``, so memory is bounded by the chunk, not the run. Nothing syncs with the host
inside a chunk except the optional progress bar.

Reproducibility: chain i uses the key ``fold_in(key(seed), i)``, so its draws do not depend
on how many chains run.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import numbers
import os
import time
import warnings
import zlib
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import tree as _tree
from heatbath.kernels.validate import check_bool, check_int
from heatbath.kernels.gradients import Estimator
from heatbath.models.numpyro_bridge import from_numpyro
from heatbath.models.target import Target
from heatbath.samplers.base import Sampler

__all__ = ["sample", "optimize", "Result", "OptimizeResult", "as_target", "clear_caches"]

_MAP_KEY = 2**31 - 1  # fold_in index of the key used for the control-variates MAP search


# Key derivations as jitted functions of stable identity: an eager ``jax.vmap`` of a fresh
# lambda is re-traced on every call (a few ms of host time per ``hb.sample``).
@jax.jit
def _fold_each(keys, i):
    """``fold_in(keys[c], i)`` for every chain c."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)


@functools.partial(jax.jit, static_argnums=1)
def _chain_keys(master, num_chains):
    """Chain c's key, ``fold_in(master, c)``: chain c's draws never depend on ``num_chains``."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(master, jnp.arange(num_chains))
_CHUNK_BYTES = 1 << 27  # draws kept on device per chunk (128 MiB)


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    """Draws of ``hb.sample``.

    Attributes:
      samples: name -> array (chain, draw, ...) on the constrained (user's) scale, with the
        model's deterministic sites.
      stats: name -> array (chain, draw): ``step_size``, ``temperature``, ``grad_norm``,
        ``lp`` (the log-density estimate), ``diverging`` (any non-finite state since the
        previous draw) and whatever else the sampler reports.
      final_state: the sampler state of every chain after the last step (leading axis chain);
        ``final_state.position`` is the unconstrained position.
      grad_evals: per-datum likelihood-gradient evaluations per chain (MAP search included).
      num_data: N. ``grad_evals / num_data`` is the cost in passes over the data.
      wall_time, compile_time: seconds (wall_time includes compile_time).
      moments: with ``keep="moments"``: ``count``, ``mean`` and ``var`` (name -> (chain, ...)),
        and with ``swag_rank=K`` the ``deviations`` of the last K draws from the mean
        (name -> (chain, K, ...)); ``samples`` is then empty.
    """

    samples: dict
    stats: dict
    final_state: Any
    grad_evals: float
    num_data: int
    wall_time: float
    compile_time: float
    sampler_name: str
    observed_data: Optional[dict] = None
    centre: Any = None
    moments: Optional[dict] = None

    @property
    def num_chains(self) -> int:
        return int(next(iter(self.stats.values())).shape[0])

    @property
    def num_draws(self) -> int:
        return int(next(iter(self.stats.values())).shape[1])

    @property
    def data_passes(self) -> float:
        return self.grad_evals / self.num_data

    def diverged_chains(self) -> list:
        """Indices of the chains with at least one diverging draw."""
        div = np.asarray(self.stats["diverging"])
        return [int(c) for c in np.nonzero(div.any(axis=1))[0]]

    def _need_draws(self):
        if not self.samples:
            raise ValueError("this run kept no draws (keep='moments'): use Result.moments")

    def to_arviz(self):
        """An ArviZ object: posterior (constrained), sample_stats, observed_data."""
        from heatbath.diagnostics.arviz import to_arviz

        self._need_draws()
        return to_arviz(
            self.samples,
            self.stats,
            self.observed_data,
            attrs={"inference_library": "heatbath", "sampler": self.sampler_name},
        )

    def summary(self, **kwargs):
        """``arviz.summary`` of the posterior; warns when some chains diverged."""
        import arviz as az

        self._need_draws()
        bad = self.diverged_chains()
        if bad:
            warnings.warn(
                f"chains {bad} diverged (non-finite states); their draws are in the summary: "
                "inspect stats['diverging'] and lower the step size",
                RuntimeWarning,
                stacklevel=2,
            )
        return az.summary(self.to_arviz(), **kwargs)

    def __repr__(self) -> str:
        if self.samples:
            names = ", ".join(f"{k}{tuple(v.shape[2:])}" for k, v in self.samples.items())
        else:
            names = "running moments of " + ", ".join((self.moments or {}).get("mean", {}))
        return (
            f"Result({self.sampler_name}: {self.num_chains} chains x {self.num_draws} draws of {names}; "
            f"{self.data_passes:.1f} data passes, {self.wall_time:.2f}s)"
        )


@dataclasses.dataclass
class OptimizeResult:
    """Output of ``hb.optimize``.

    ``params``: the final unconstrained parameters; ``values``: the same on the user's scale;
    ``trace``: name -> array over recorded steps (``lp``, ``grad_norm``, ...).
    """

    params: Any
    values: dict
    trace: dict
    grad_evals: float
    num_data: int
    wall_time: float
    compile_time: float

    @property
    def data_passes(self) -> float:
        return self.grad_evals / self.num_data


# ----------------------------------------------------------------------------------------
# Input checks (all before any compilation)
# ----------------------------------------------------------------------------------------
_INT_MAX = 2**31 - 1


def _check_int(value, name: str, minimum: int, allow_none: bool = False):
    """An integer argument in [minimum, 2**31 - 1] (heatbath counts steps and draws in int32)."""
    if value is None and allow_none:
        return None
    return check_int(value, name, minimum=minimum, maximum=_INT_MAX)


_TARGETS: "collections.OrderedDict" = collections.OrderedDict()


_DEVICE_DIGESTS: "collections.OrderedDict" = collections.OrderedDict()


def _array_digest(value) -> bytes:
    """A CRC-32 of an array's bytes, with its shape and dtype: a cache key, not a security
    digest (1.4 ms per 10 MB, where BLAKE2 took 7 ms; an in-place edit that keeps the CRC has
    probability 2**-32).

    Host memory is hashed on every call: a NumPy array may be edited in place, and on the CPU a
    JAX array may share its memory with one (``jax.device_put``, DLPack). An array on an
    accelerator cannot, so its digest is memoised by identity (the array is kept alive with
    its memo, so its id stays its own) and its bytes cross to the host once.
    """
    head = f"{value.shape} {np.dtype(value.dtype).str} ".encode()
    on_device = isinstance(value, jax.Array) and any(d.platform != "cpu" for d in value.devices())
    if on_device:
        hit = _DEVICE_DIGESTS.get(id(value))
        if hit is not None and hit[0] is value:
            _DEVICE_DIGESTS.move_to_end(id(value))
            return hit[1]
    flat = np.ascontiguousarray(np.asarray(value)).reshape(-1).view(np.uint8)
    digest = head + zlib.crc32(flat).to_bytes(4, "little")
    if on_device:
        _DEVICE_DIGESTS[id(value)] = (value, digest)
        while len(_DEVICE_DIGESTS) > 16:
            _DEVICE_DIGESTS.popitem(last=False)
    return digest


def _fingerprint(model, args, kwargs):
    """A key for a NumPyro model and its arguments: the model's identity and, per argument, a
    digest of an array's contents (:func:`_array_digest`: equal data passed as a new array
    finds the cached target, data edited in place does not) or a scalar's or string's value.
    None if an argument is none of these (a container, a tracer, an object array)."""
    h = hashlib.blake2b(digest_size=16)
    for name, value in [(str(i), a) for i, a in enumerate(args)] + sorted(kwargs.items()):
        h.update(name.encode())
        if isinstance(value, jax.core.Tracer):
            return None
        if isinstance(value, (np.ndarray, jax.Array)):
            if value.dtype == object:
                return None
            h.update(_array_digest(value))
        elif value is None or isinstance(value, (bool, numbers.Number, str)):
            h.update(repr((type(value).__name__, value)).encode())
        else:
            return None
    return id(model), h.hexdigest()


def as_target(model_or_target, data=None) -> Target:
    """A :class:`Target` from a Target or a NumPyro model and its data.

    For a NumPyro model, ``data`` holds the model's arguments: a dict of keyword arguments,
    or a tuple of positional ones.
    """
    if isinstance(model_or_target, Target):
        return model_or_target if data is None else model_or_target.with_data(data)
    if callable(model_or_target):
        if data is None:
            args, kwargs = (), {}
        elif isinstance(data, dict):
            args, kwargs = (), data
        elif isinstance(data, (tuple, list)):
            args, kwargs = tuple(data), {}
        else:
            raise TypeError(
                "data for a NumPyro model must be a dict of keyword arguments or a tuple of positional ones, "
                f"got {type(data).__name__}"
            )
        key = _fingerprint(model_or_target, args, kwargs)
        if key is not None:
            hit = _TARGETS.get(key)
            if hit is not None and hit[0] is model_or_target:
                _TARGETS.move_to_end(key)
                return hit[1]
        target = from_numpyro(model_or_target, *args, **kwargs)
        if key is not None:
            _TARGETS[key] = (model_or_target, target)
            while len(_TARGETS) > 8:
                _TARGETS.popitem(last=False)
        return target
    raise TypeError(
        "expected a NumPyro model (a callable) or a heatbath Target (hb.models.from_numpyro / "
        f"from_logdensity), got {type(model_or_target).__name__}"
    )


def _check_total_steps(total: int):
    if total >= 2**31 - 1:
        raise ValueError(
            f"the run has {total} steps in all (num_warmup + num_samples * thinning); the step counter is "
            "int32: split it into runs below 2**31 steps (e.g. with checkpoint/resume)"
        )


def _check_centre(target: Target, centre):
    """The control-variates centre must have the structure and shapes of the parameters."""
    example = target.example_params()
    if jax.tree.structure(centre) != jax.tree.structure(example):
        raise ValueError(
            f"the control-variates centre has structure {jax.tree.structure(centre)}, the parameters have "
            f"{jax.tree.structure(example)} (it lives in the unconstrained space, like Result.centre)"
        )
    for c, e in zip(jax.tree.leaves(centre), jax.tree.leaves(example)):
        if jnp.shape(c) != e.shape:
            raise ValueError(f"the control-variates centre has a leaf of shape {jnp.shape(c)} where the parameter has {e.shape}")
    return jax.tree.map(lambda c, e: jnp.asarray(c, e.dtype), centre, example)


def _check_target_for_gradients(target: Target, batch_size):
    if target.discrete_error:
        raise ValueError(target.discrete_error)
    if batch_size is not None:
        if target.minibatch_error:
            raise ValueError(target.minibatch_error)
        if batch_size > target.num_data:
            raise ValueError(f"batch_size={batch_size} is larger than the data ({target.num_data} rows)")


def _check_sampler(sampler):
    from heatbath.vi.gaussian import is_gaussian_vi

    if is_gaussian_vi(sampler):
        raise TypeError(f"{sampler.name} is a variational method: run it with hb.fit(model, method, ...)")
    if not isinstance(sampler, Sampler):
        raise TypeError(
            "sampler must be a heatbath Sampler (e.g. hb.samplers.sgld(step_size=1e-4)), "
            f"got {type(sampler).__name__}"
        )
    check_int(sampler.steps_per_draw, "Sampler.steps_per_draw", minimum=1)


def _per_target(target: Target, name: str, build: Callable):
    """A function built once per Target object and kept on it (e.g. a jitted helper)."""
    cache = target.__dict__.get("_heatbath_cache")
    if cache is None:
        cache = {}
        object.__setattr__(target, "_heatbath_cache", cache)
    if name not in cache:
        cache[name] = build()
    return cache[name]


def _default_init(target: Target, keys):
    return _per_target(target, "init_params", lambda: jax.jit(jax.vmap(target.init_params)))(keys)


def _initial_positions(target: Target, init, keys, num_chains):
    """Unconstrained initial positions with a leading chain axis."""
    try:
        example = target.example_params()
    except ValueError:
        example = None
    if example is not None and not jax.tree.leaves(example):
        raise ValueError(f"the target {target.name!r} has no parameters (no latent sites): there is nothing to sample")
    if init is None:
        return _default_init(target, keys)

    def as_array(path, v, dtype=None):
        where = f"init leaf {jax.tree_util.keystr(path)}" if path else "init"
        try:
            arr = v if isinstance(v, jax.Array) else np.asarray(v)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{where} is not a numeric array: {err}") from err
        if not (jnp.issubdtype(arr.dtype, jnp.number) or jnp.issubdtype(arr.dtype, jnp.bool_)):
            raise TypeError(f"{where} is not a numeric array (dtype {arr.dtype})")
        if jnp.issubdtype(arr.dtype, jnp.complexfloating):
            raise TypeError(f"{where} is complex; parameters are real")
        if dtype is None and not jnp.issubdtype(arr.dtype, jnp.floating):
            dtype = jnp.result_type(float)
        return jnp.asarray(arr, dtype)

    if example is not None:
        try:
            values = target.unconstrain(init)
        except (TypeError, ValueError, IndexError, AssertionError) as err:
            msg = str(err) if "init" in str(err) else f"init could not be mapped to the unconstrained space: {err}"
            raise (TypeError if isinstance(err, TypeError) else ValueError)(msg) from err
    else:
        values = init
    if example is not None and isinstance(example, dict) and isinstance(values, dict):
        unknown = set(values) - set(example)
        if unknown:
            raise ValueError(
                f"init has unknown parameter(s) {sorted(unknown)}; the target's parameters are {sorted(example)}"
            )
        # Sites not given by the user start at the default.
        missing = set(example) - set(values)
        if missing:
            default = _default_init(target, keys)
            values = {k: (values[k] if k in values else None) for k in example}
            leaves = {}
            for k in example:
                if k in missing:
                    leaves[k] = default[k]
                else:
                    v = as_array((jax.tree_util.DictKey(k),), values[k], example[k].dtype)
                    try:
                        leaves[k] = jnp.broadcast_to(v, (num_chains,) + example[k].shape)
                    except ValueError as err:
                        raise ValueError(
                            f"init leaf {k!r} of shape {v.shape} does not match the parameter shape {example[k].shape}"
                        ) from err
            return leaves
    if example is not None:
        if jax.tree.structure(values) != jax.tree.structure(example):
            raise ValueError(
                f"init has tree structure {jax.tree.structure(values)}, the target's parameters have "
                f"{jax.tree.structure(example)}"
            )

        def broadcast(path, v, e):
            v = as_array(path, v, e.dtype)
            if v.shape == e.shape:
                return jnp.broadcast_to(v, (num_chains,) + e.shape)
            if v.shape == (num_chains,) + e.shape:
                return v
            raise ValueError(f"init leaf of shape {v.shape} does not match the parameter shape {e.shape}")

        return jax.tree_util.tree_map_with_path(broadcast, values, example)
    # No example params: broadcast the user's pytree unless it already has a chain axis.
    values = jax.tree_util.tree_map_with_path(as_array, values)
    if not jax.tree.leaves(values):
        raise ValueError(f"init has no arrays (got {init!r}): the target needs at least one parameter array")
    return jax.tree.map(lambda v: jnp.broadcast_to(v, (num_chains,) + jnp.shape(v)), values)


def _check_init_finite(target: Target, positions, data):
    """Fail early (before the long compile) if the log density is not finite at the start."""
    terms = _per_target(target, "init_terms", lambda: jax.jit(jax.vmap(target.terms, in_axes=(0, None))))
    rows = data if target.minibatch_error else jax.tree.map(lambda x: x[:1], data)
    lp, ll = terms(positions, rows)
    for name, value in (("logprior", lp), ("loglik", ll)):
        if jnp.shape(value) != (jnp.shape(lp)[0],) or not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            raise ValueError(
                f"{name} must return a real scalar (loglik: the sum over the batch's rows), got shape "
                f"{jnp.shape(value)[1:]} and dtype {jnp.result_type(value)}"
            )
    bad = np.nonzero(~np.isfinite(np.asarray(lp + ll)))[0]
    if bad.size:
        raise ValueError(
            f"the log density is not finite at the initial position of chain(s) {bad.tolist()}; "
            "pass init=... inside the support"
        )


# ----------------------------------------------------------------------------------------
# Progress bar (host side, fed by callbacks from inside the scan)
# ----------------------------------------------------------------------------------------
_ACTIVE_PROGRESS: list = [None]


def _progress_tick(n):
    """Host callback of the compiled chunks: feeds whichever progress bar is active now."""
    bar = _ACTIVE_PROGRESS[0]
    if bar is not None:
        bar.update(n)


class _Progress:
    def __init__(self, total: int, desc: str, enabled: bool):
        self.enabled = enabled and total > 0
        self.bar = None
        self.total = total
        self.desc = desc
        self.every = max(1, total // 50)

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, leave=True, dynamic_ncols=True)
        _ACTIVE_PROGRESS[0] = self
        return self

    def update(self, n):
        if self.bar is not None:
            self.bar.update(int(n))

    def set(self, n):
        """Move the bar to ``n`` steps done (after each chunk, so it never drifts)."""
        if self.bar is not None and int(n) != self.bar.n:
            self.bar.update(int(n) - self.bar.n)

    def __exit__(self, *exc):
        _ACTIVE_PROGRESS[0] = None
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------
DIVERGENCE_MODES = ("stop", "restart", "flag")
KEEP_MODES = ("draws", "moments")


def _make_step(sampler: Sampler, estimator: Estimator, batch_size, num_data, on_divergence: str = "flag"):
    """One transition of one chain: draw a minibatch, estimate the gradient, step.

    The carry is (sampler state, estimator state, key, alive). A non-finite new state is
    caught here, inside the scan: with ``on_divergence="restart"`` the step is rejected (the
    chain stays at its last finite state and goes on with fresh randomness), with ``"stop"``
    the chain freezes at its last finite state for good (``alive`` turns False), with
    ``"flag"`` it is only flagged. Rejected or frozen steps are flagged ``diverging``.
    """

    def one_step(carry, shared_est, data, step):
        state, est_state, key, alive = carry
        key, key_batch, key_step = jax.random.split(key, 3)
        if estimator.shared:
            current = shared_est
        else:
            # `step` is the driver's global step count, passed unbatched so that under the chain
            # vmap the refresh stays a lax.cond (a batched predicate would turn it into a select
            # that computes the full-data gradient at every step). It is required for that reason.
            current = estimator.refresh(est_state, state.position, data, step)
        if batch_size is None:
            batch = data
        else:
            idx = jax.random.randint(key_batch, (batch_size,), 0, num_data)
            batch = jax.tree.map(lambda x: jnp.take(x, idx, axis=0, mode="clip"), data)

        def grad_fn(position, b):
            return estimator.estimate(current, position, b)

        new_state, info = sampler.step(key_step, state, batch, grad_fn)
        if on_divergence != "flag":
            ok = _tree.all_finite(new_state)
            if on_divergence == "stop":
                ok = jnp.logical_and(ok, alive)
                alive = ok
            new_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state)
            info = info._replace(diverging=jnp.logical_or(info.diverging, jnp.logical_not(ok)))
        return (new_state, est_state if estimator.shared else current, key, alive), info

    return one_step


def _moments_init(example, num_chains: int, swag_rank: int):
    """Running moments (Welford) of the recorded values, per chain, and the SWAG ring buffer."""
    zeros = jax.tree.map(lambda x: jnp.zeros((num_chains,) + jnp.shape(x), jnp.result_type(float)), example)
    ring = jax.tree.map(lambda x: jnp.zeros((num_chains, swag_rank) + jnp.shape(x), jnp.result_type(float)), example)
    return {"count": jnp.zeros((), jnp.int32), "mean": zeros, "m2": zeros, "ring": ring,
            "ring_count": jnp.zeros((), jnp.int32)}


def _moments_update(acc, values, swag_rank: int):
    count = acc["count"] + 1
    c = count.astype(jnp.result_type(float))
    delta = jax.tree.map(lambda x, m: x - m, values, acc["mean"])
    mean = jax.tree.map(lambda m, d: m + d / c, acc["mean"], delta)
    m2 = jax.tree.map(lambda q, x, d, mn: q + d * (x - mn), acc["m2"], values, delta, mean)
    ring = acc["ring"]
    if swag_rank:
        slot = acc["ring_count"] % swag_rank
        ring = jax.tree.map(lambda r, x: r.at[:, slot].set(x), ring, values)
    return {"count": count, "mean": mean, "m2": m2, "ring": ring, "ring_count": acc["ring_count"] + 1}


def _make_chunk(one_step, num_draws: int, thinning: int, record, progress: Optional[_Progress],
                keep: bool = True, moments: bool = False, swag_rank: int = 0):
    """A function running ``num_draws * thinning`` steps of all chains, recording every ``thinning``-th.

    ``record(position, data)`` maps one chain's position to what is kept (the constrained
    draw, deterministic sites included); None records only the infos. ``keep=False`` (warmup)
    returns nothing per draw. ``moments=True`` folds the recorded values into running moments
    (in the accumulator) instead of returning them.
    """
    batched_step = jax.vmap(one_step, in_axes=(0, None, None, None))
    batched_record = None if record is None else jax.vmap(record, in_axes=(0, None))

    def _single(fn):
        # One chain: run the unbatched function and add the chain axis back. A vmap over an
        # axis of size 1 still batches every op (dot_general with a batch dimension, ...),
        # which measured 3-12% slower than the bare loop.
        def wrapped(c, *rest):
            out = fn(jax.tree.map(lambda x: x[0], c), *rest)
            return jax.tree.map(lambda x: jnp.asarray(x)[None], out)

        return wrapped

    def vstep(c, *rest):
        if jax.tree.leaves(c[2])[0].shape[0] == 1:
            return _single(one_step)(c, *rest)
        return batched_step(c, *rest)

    def vrecord(position, data):
        if jax.tree.leaves(position)[0].shape[0] == 1:
            return _single(record)(position, data)
        return batched_record(position, data)

    def draw(carry, shared_est, data, first_step):
        if thinning == 1:
            return vstep(carry, shared_est, data, first_step)

        def inner(c, k):
            return vstep(c, shared_est, data, first_step + k)

        carry, infos = jax.lax.scan(inner, carry, jnp.arange(thinning, dtype=jnp.int32))
        info = jax.tree.map(lambda x: x[-1], infos)
        if hasattr(info, "diverging"):
            info = info._replace(diverging=jnp.any(infos.diverging, axis=0))
        return carry, info

    def chunk(carry, acc, shared_est, data, offset):
        """``offset``: the global step count at the start of the chunk (a traced scalar)."""

        def body(c_acc, i):
            c, acc = c_acc
            c, info = draw(c, shared_est, data, offset + i * thinning)
            if progress is not None and progress.enabled:
                every = max(1, progress.every // thinning)  # draws between ticks

                def tick():
                    jax.debug.callback(_progress_tick, every * thinning)

                jax.lax.cond((i + 1) % every == 0, tick, lambda: None)
            if not keep:
                return (c, acc), None
            values = vrecord(c[0].position, data) if record is not None else ()
            if moments:
                acc = _moments_update(acc, values, swag_rank)
                return (c, acc), ((), info)
            return (c, acc), (values, info)

        return jax.lax.scan(body, (carry, acc), jnp.arange(num_draws, dtype=jnp.int32))

    return chunk


def _chunk_lengths(total: int, size: int):
    full, rest = divmod(total, size)
    return [size] * full + ([rest] if rest else [])


def _place(tree, sharding):
    return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def _shardings(shard: Optional[str], devices, num_chains: int, num_data: int):
    """(carry sharding, data sharding, replicated) for shard = None, 'chains' or 'data'."""
    if shard is None:
        return None
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if n == 0:
        raise ValueError("devices is empty: pass at least one device (default: jax.devices())")
    mesh = Mesh(np.array(devices), ("x",))
    split = NamedSharding(mesh, PartitionSpec("x"))
    replicated = NamedSharding(mesh, PartitionSpec())
    if shard == "chains":
        if num_chains % n:
            raise ValueError(f"shard='chains' needs num_chains divisible by the {n} devices, got {num_chains}")
        return split, replicated, replicated
    if shard == "data":
        if num_data % n:
            raise ValueError(
                f"shard='data' needs the {num_data} data rows to split evenly over {n} devices; drop "
                f"{num_data % n} row(s) or use shard='chains'"
            )
        return replicated, split, replicated
    raise ValueError(f"shard must be None, 'chains' or 'data', got {shard!r}")


# Compiled chunks, reused across calls with the same sampler and target objects and the same
# input shapes (the keys hold strong references, so an id is never reused while cached).
_CACHE_SIZE = 32
_COMPILED: "collections.OrderedDict" = collections.OrderedDict()


def clear_caches():
    """Drop the compiled loops and NumPyro targets that heatbath keeps for repeated calls.

    ``hb.sample`` / ``optimize`` / ``fit`` reuse a compiled chunk when called again with the
    same sampler and target objects (or the same NumPyro model and arguments of equal
    contents, see :func:`_array_digest`) and the same shapes; the caches hold up to 32
    compiled loops and 8 targets, with their data. Call this to release that memory.
    """
    _COMPILED.clear()
    _TARGETS.clear()
    _DEVICE_DIGESTS.clear()
    _OPTIMIZERS.clear()
    _WRAPPED.clear()


def _signature(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(
        (jnp.shape(x), str(jnp.result_type(x)), getattr(x, "sharding", None) if isinstance(x, jax.Array) else None)
        for x in leaves
    )


class _RunOut(NamedTuple):
    draws: Any
    infos: Any
    carry: Any
    compile_time: float
    moments: Any
    extra_state: Any


def _run_segments(
    target: Target,
    sampler: Sampler,
    estimator: Estimator,
    positions,
    chain_keys,
    *,
    batch_size,
    num_draws: int,
    thinning: int,
    num_warmup: int,
    chunk_size: Optional[int],
    progress_bar: bool,
    desc: str,
    record: Optional[Callable] = None,
    on_divergence: str = "flag",
    keep: str = "draws",
    swag_rank: int = 0,
    shard: Optional[str] = None,
    devices=None,
    checkpoint=None,
    checkpoint_every: int = 1,
    resume: bool = False,
    extra_state: Any = None,
):
    """Run all chains in checkpointable segments (warmup chunks, then sampling chunks).

    Returns (recorded draws (draw, chain, ...), infos, final carry, compile time, moments,
    extra_state). ``extra_state`` is saved in checkpoints and restored on resume (e.g. the
    control-variate centre).
    """
    data = target.data
    num_chains = jax.tree.leaves(positions)[0].shape[0]
    one_step = _make_step(sampler, estimator, batch_size, target.num_data, on_divergence)
    init_keys = _fold_each(chain_keys, 1)
    run_keys = _fold_each(chain_keys, 2)
    places = _shardings(shard, devices, num_chains, target.num_data)
    if places is not None:
        chain_place, data_place, replicated = places
        data = _place(data, data_place)
        positions = _place(positions, chain_place)
    states = jax.vmap(sampler.init)(positions, init_keys)
    if estimator.shared:
        shared_est = estimator.init(jax.tree.map(lambda x: x[0], positions), data)
        est_states = ()
    else:
        shared_est = ()
        est_states = jax.vmap(estimator.init, in_axes=(0, None))(positions, data)
    carry = (states, est_states, run_keys, jnp.ones((num_chains,), bool))
    # What `record` returns for one draw (constrained values and deterministic sites, which may
    # be much larger than the position): the moments' shapes and the bytes kept per draw.
    if record is not None:
        recorded = jax.eval_shape(record, jax.tree.map(lambda x: x[0], positions), data)
    else:
        recorded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), positions)
    moments = keep == "moments"
    acc = ()
    if moments:
        acc = _moments_init(recorded, num_chains, swag_rank)
    if places is not None:
        carry = _place(carry, chain_place)
        acc = () if not moments else {
            "count": jax.device_put(acc["count"], replicated),
            "ring_count": jax.device_put(acc["ring_count"], replicated),
            **{k: _place(acc[k], chain_place) for k in ("mean", "m2", "ring")},
        }
        shared_est = _place(shared_est, replicated)

    # Bytes kept per draw: the recorded values plus the stats.
    per_draw = num_chains * (sum(int(np.prod(l.shape)) * np.dtype(l.dtype).itemsize
                                 for l in jax.tree.leaves(recorded)) + 64)
    if chunk_size is None:
        chunk_size = max(1, min(num_draws, _CHUNK_BYTES // max(per_draw, 1)))
        if moments:
            # Each chunk's float32 moments are merged on the host in float64 (Chan et al.): short
            # chunks keep the float32 Welford recursion's drift negligible (~1e-6 relative).
            chunk_size = max(1, min(num_draws, _MOMENT_CHUNK))
    segments = [(n, 1, False) for n in _chunk_lengths(num_warmup, max(1, chunk_size * thinning))] if num_warmup else []
    segments += [(n, thinning, True) for n in _chunk_lengths(num_draws, chunk_size)]

    draws, infos = _Collector(num_draws), _Collector(num_draws)
    host = _host_moments(acc) if moments else None
    start, previous = 0, None
    if checkpoint is not None:
        checkpoint.settings["chunk_size"] = chunk_size
        if resume:
            from heatbath.checkpoint import Checkpoint, load_tree

            meta = Checkpoint.read_meta(checkpoint.path)
            checkpoint.check_settings(meta)
            carry, acc, shared_est, host = load_tree(checkpoint.path, meta["state"], (carry, acc, shared_est, host))
            likes = {}
            for desc_ in meta["draws"]:
                index = int(desc_.get("segment", -1))
                if not 0 <= index < len(segments) or not segments[index][2]:
                    raise ValueError(f"checkpoint {checkpoint.path} lists draws of a segment this run does not have")
                length = segments[index][0]
                if length not in likes:
                    likes[length] = _draw_like(record, length, thinning, one_step, carry, shared_est, acc, data,
                                               moments, swag_rank)
                values, info = load_tree(checkpoint.path, desc_, likes[length])
                draws.add(jax.tree.map(np.asarray, values))
                infos.add(jax.tree.map(np.asarray, info))
            start, previous = int(meta["segments_done"]), meta
            if start > len(segments):
                raise ValueError(f"the checkpoint has {start} segments done, this run has only {len(segments)}")

    compile_time = 0.0
    signature = _signature((carry, acc, shared_est, data))

    def get(length, steps, keep_, progress):
        nonlocal compile_time
        every = progress.every if progress is not None and progress.enabled else None
        key = (id(sampler), id(target), id(record), batch_size, on_divergence, length, steps, keep_, moments,
               swag_rank, every, signature)
        hit = _COMPILED.get(key)
        if hit is not None and hit[0] is sampler and hit[1] is target and hit[2] is record:
            _COMPILED.move_to_end(key)
            return hit[3]
        fn = _make_chunk(one_step, length, steps, record, progress, keep_, moments, swag_rank)
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(carry, acc, shared_est, data, jnp.int32(0)).compile()
        compile_time += time.perf_counter() - t0
        _COMPILED[key] = (sampler, target, record, compiled)
        while len(_COMPILED) > _CACHE_SIZE:
            _COMPILED.popitem(last=False)
        return compiled

    done_steps = sum(n * t for n, t, _ in segments[:start])
    pending = []
    with _Progress(num_warmup + num_draws * thinning, desc, progress_bar) as progress:
        progress.update(done_steps)
        for j in range(start, len(segments)):
            length, steps, is_draws = segments[j]
            (carry, acc), out = get(length, steps, is_draws, progress)(carry, acc, shared_est, data, jnp.int32(done_steps))
            done_steps += length * steps
            progress.set(done_steps)
            if is_draws:
                values, info = jax.device_get(out)
                draws.add(values)
                infos.add(info)
                pending.append((j, (values, info)))
                if moments:
                    host, acc = _merge_moments(host, acc)
            if checkpoint is not None and ((j + 1) % checkpoint_every == 0 or j + 1 == len(segments)):
                previous = checkpoint.commit(j + 1, (carry, acc, shared_est, host), pending, previous, extra_state)
                pending = []
        jax.block_until_ready(carry)
    moments_out = None
    if moments:
        moments_out = {"count": host["count"], "mean": host["mean"], "m2": host["m2"],
                       "ring": jax.device_get(acc["ring"])}
    return _RunOut(draws.result(), infos.result(), carry, compile_time, moments_out, extra_state)


_MOMENT_CHUNK = 10_000


class _Collector:
    """Chunks of draws (leading axis: draw) copied into arrays preallocated for the whole run,
    so the host holds one copy of the draws (a final concatenate would briefly hold two)."""

    def __init__(self, total: int):
        self.total = total
        self.arrays = None
        self.filled = 0

    def add(self, tree):
        leaves, treedef = jax.tree.flatten(tree)
        if self.arrays is None:
            self.treedef = treedef
            self.arrays = [np.empty((self.total,) + np.shape(x)[1:], np.asarray(x).dtype) for x in leaves]
        n = np.shape(leaves[0])[0] if leaves else 0
        for dst, src in zip(self.arrays, leaves):
            dst[self.filled : self.filled + n] = src
        self.filled += n

    def result(self):
        if self.arrays is None:
            return {}
        return jax.tree.unflatten(self.treedef, [a[: self.filled] for a in self.arrays])


def _host_moments(acc):
    """Running moments kept on the host in float64: count, mean and M2 (sum of squared deviations)."""
    zeros = jax.tree.map(lambda x: np.zeros(np.shape(x), np.float64), acc["mean"])
    return {"count": np.zeros((), np.int64), "mean": zeros, "m2": jax.tree.map(np.copy, zeros)}


def _merge_moments(host, acc):
    """Fold one chunk's device moments into the host's (Chan, Golub & LeVeque 1979), then zero
    the device's count, mean and M2 (the SWAG ring buffer carries on)."""
    nb = int(acc["count"])
    if nb == 0:
        return host, acc
    na = int(host["count"])
    n = na + nb
    mean_b = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(acc["mean"]))
    m2_b = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(acc["m2"]))
    delta = jax.tree.map(lambda mb, ma: mb - ma, mean_b, host["mean"])
    mean = jax.tree.map(lambda ma, d: ma + d * (nb / n), host["mean"], delta)
    m2 = jax.tree.map(lambda qa, qb, d: qa + qb + d * d * (na * nb / n), host["m2"], m2_b, delta)
    reset = dict(acc, count=jnp.zeros_like(acc["count"]), mean=jax.tree.map(jnp.zeros_like, acc["mean"]),
                 m2=jax.tree.map(jnp.zeros_like, acc["m2"]))
    return {"count": np.asarray(n, np.int64), "mean": mean, "m2": m2}, reset


def _draw_like(record, length, thinning, one_step, carry, shared_est, acc, data, moments, swag_rank):
    """Shapes of one sampling chunk's (values, infos) of ``length`` draws, to check loaded draws."""
    fn = _make_chunk(one_step, length, thinning, record, None, True, moments, swag_rank)
    _, (values, info) = jax.eval_shape(fn, carry, acc, shared_est, data, jnp.int32(0))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), (values, info))


def _num_refreshes(num_steps: int, every: int) -> int:
    """Re-centrings in a run of ``num_steps`` steps: at steps s = m, 2m, ... < num_steps (init is s = 0)."""
    return max(num_steps - 1, 0) // every


def _grad_evals_per_chain(estimator: Estimator, sampler: Sampler, batch_size, num_data, num_steps):
    rows = num_data if batch_size is None else batch_size
    cost = num_steps * sampler.grads_per_step * estimator.rows_per_estimate * rows
    if estimator.refresh_every:
        cost += _num_refreshes(num_steps, estimator.refresh_every) * num_data
    return float(cost + estimator.rows_at_init)


def _seed_key(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            if seed.shape != ():
                raise ValueError(f"seed must be a single JAX key (shape ()), got a key array of shape {seed.shape}")
            return seed
        raise TypeError(f"seed must be an integer or a JAX key, got {seed!r}")
    if not -(2**63) <= int(seed) < 2**63:
        raise ValueError(f"seed must fit in 64 bits, got {seed}")
    return jax.random.key(int(seed))


# ----------------------------------------------------------------------------------------
# Public drivers
# ----------------------------------------------------------------------------------------
def _describe(obj, unknown: Optional[list] = None, where: str = "hyperparameters"):
    """A stable, JSON-able description of hyperparameters (for checkpoint settings).

    Numbers, strings, small arrays, heatbath schedules (by their parameters) and objects with
    an informative repr are described exactly; what cannot be (a plain function, an optax
    transformation, a large array) is described by name or shape plus a digest where possible,
    and its path is appended to ``unknown`` so that the caller can warn.
    """
    from heatbath.kernels.schedules import Described, is_constant

    if unknown is None:
        unknown = []
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Number):
        return float(obj)
    if isinstance(obj, dict):
        return {str(k): _describe(v, unknown, f"{where}.{k}") for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return [_describe(v, unknown, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Described):
        return repr(obj)
    if isinstance(obj, (np.ndarray, jax.Array)):
        arr = np.asarray(obj)
        if arr.size <= 16:
            return arr.tolist()
        return f"array{arr.shape}:{hashlib.blake2b(np.ascontiguousarray(arr).tobytes(), digest_size=8).hexdigest()}"
    if callable(obj):
        value = is_constant(obj)
        if value is not None:
            return value
        unknown.append(where)
        return getattr(obj, "__qualname__", type(obj).__name__)
    if hasattr(obj, "_fields"):  # NamedTuples (a Sampler, an optax transformation, ...)
        return {f: _describe(getattr(obj, f), unknown, f"{where}.{f}") for f in obj._fields}
    text = repr(obj)
    if " at 0x" in text:
        unknown.append(where)
        return type(obj).__name__
    return text


def _check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _open_checkpoint(checkpoint, resume, target: Target, kind: str, hyper, *, seed, init, **settings):
    """(Checkpoint or None, resuming?) from the user's ``checkpoint`` and ``resume`` arguments.

    The run's settings (``kind``, the described ``hyper``-parameters, ``settings``, the seed,
    whether an init was given, a digest of the target's data) are built only when the run
    checkpoints: hashing the data costs a pass over it (15 ms for 10 MB). Warns about
    hyperparameters that a resume can only check by name.
    """
    from heatbath.checkpoint import Checkpoint

    resuming = resume is not None and resume is not False
    if not resuming and checkpoint is None:
        return None, False
    unknown: list = []
    settings = dict(
        kind=kind, hyperparameters=_describe(hyper, unknown), **settings,
        seed=seed if isinstance(seed, numbers.Integral) else "key", init=None if init is None else "given",
        data=_data_digest(target),
    )
    if unknown:
        warnings.warn(
            f"heatbath cannot record {sorted(set(unknown))} by value in the checkpoint (functions without "
            "parameters it can read): a resumed run is only checked to use functions of the same name, so "
            "make sure they compute the same thing",
            UserWarning,
            stacklevel=3,
        )
    if resuming:
        path = checkpoint if checkpoint is not None else resume
        if checkpoint is not None and resume is not True and os.fspath(resume) != os.fspath(checkpoint):
            raise ValueError("checkpoint and resume name different paths; pass one of them")
        if resume is True:
            if checkpoint is None:
                raise ValueError("resume=True needs checkpoint=path")
            path = checkpoint
        Checkpoint.read_meta(path)  # fails early, with a clear error, when there is nothing to resume
        return Checkpoint(path, settings), True
    try:
        os.makedirs(os.fspath(checkpoint), exist_ok=True)
    except (OSError, TypeError) as err:
        raise ValueError(f"cannot create the checkpoint directory {checkpoint!r}: {err}") from err
    return Checkpoint(checkpoint, settings), False


def _resolve_centre(target: Target, spec, positions, master, batch_size, ckpt=None):
    """The control-variate centre: given (checked), restored from a checkpoint, or the MAP.

    The MAP search starts from chain 0's starting point (so a user ``init`` that keeps the
    chain inside the support keeps the search there too) with the key
    ``fold_in(key(seed), 2**31 - 1)``, runs ``spec.map_steps`` steps of the default optimizer on
    minibatches of ``batch_size`` rows, and its cost is charged to the run.

    Returns (spec with its centre, centre or None, MAP cost in per-datum gradients, MAP compile time).
    """
    if not getattr(spec, "needs_centre", False):
        return spec, None, 0.0, 0.0
    if spec.centre is not None:
        centre = _check_centre(target, spec.centre)
        return spec.with_centre(centre), centre, 0.0, 0.0
    cost = float(spec.map_steps * (target.num_data if batch_size is None else batch_size))
    if ckpt is not None and ckpt.has_extra():
        centre = ckpt.load_extra(jax.tree.map(lambda x: x[0], positions))
        return spec.with_centre(centre), centre, cost, 0.0
    opt = _optimize_from(
        target, _as_optimizer(None, spec.map_steps), jax.tree.map(lambda x: x[:1], positions),
        jax.random.fold_in(master, _MAP_KEY)[None], batch_size=batch_size, num_steps=spec.map_steps,
        trace_every=spec.map_steps, chunk_size=None, progress_bar=False, ckpt=None, checkpoint_every=1,
        resuming=False, shard=None, devices=None, t_start=time.perf_counter(),
    )
    return spec.with_centre(opt.params), opt.params, cost, opt.compile_time


def _data_digest(target: Target) -> str:
    """A digest of the target's data (for checkpoint settings: resuming on other data is refused)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(str(target.name).encode())
    for leaf in jax.tree.leaves(target.data):
        arr = np.asarray(leaf)
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def sample(
    model_or_target,
    sampler: Sampler,
    *,
    data=None,
    batch_size: Optional[int] = None,
    num_samples: int,
    num_warmup: int = 0,
    thinning: int = 1,
    num_chains: int = 1,
    seed=0,
    init=None,
    progress_bar: bool = True,
    chunk_size: Optional[int] = None,
    on_divergence: str = "stop",
    keep: str = "draws",
    swag_rank: int = 0,
    checkpoint=None,
    checkpoint_every: int = 1,
    resume=None,
    shard: Optional[str] = None,
    devices=None,
) -> Result:
    """Run a heatbath sampler on a NumPyro model or a Target.

    Args:
      model_or_target: a NumPyro model (its arguments in ``data``) or a :class:`Target`.
      sampler: a :class:`Sampler`, e.g. ``hb.samplers.sgld(step_size=1e-4)``.
      data: the model's arguments (dict of keyword arguments or tuple of positional ones), or
        new data for a Target.
      batch_size: minibatch size n (rows drawn uniformly with replacement inside the scan);
        None for full-batch gradients.
      num_samples: draws kept per chain; ``num_warmup`` steps are run and discarded first;
        ``thinning``: steps per kept draw.
      num_chains: independent chains (run under vmap).
      seed: an integer (or a JAX key). Chain i's draws depend only on (seed, i).
      init: initial values on the user's (constrained) scale, a dict for NumPyro models;
        missing sites start at the default (uniform(-2, 2) in the unconstrained space).
      progress_bar: show a tqdm bar fed from inside the scan.
      chunk_size: draws per compiled chunk (bounded memory); default: about 128 MiB of draws.
      on_divergence: what a chain does when its state becomes non-finite, decided inside the
        scan: ``"stop"`` (default: it freezes at its last finite state, every later draw is
        flagged), ``"restart"`` (the step is rejected and the chain goes on from its last
        finite state with fresh noise), ``"flag"`` (nothing is done; the state is non-finite).
      keep: ``"draws"`` (default) keeps every recorded draw; ``"moments"`` keeps only running
        means and variances per chain (and, with ``swag_rank=K``, the last K draws as SWAG-style
        deviations), so memory does not grow with the run: see ``Result.moments``.
      checkpoint: a directory; the run's state and draws are written there atomically every
        ``checkpoint_every`` chunks (npz + JSON, no pickle).
      resume: the checkpoint directory of an interrupted run (or True with ``checkpoint``):
        the run continues where it stopped and its draws equal the uninterrupted run's.
      shard: ``"chains"`` splits the chains over ``devices`` (default: all), ``"data"`` splits
        the data rows (full-data gradients become sharded reductions); the draws are the
        same as on one device.

    Returns:
      A :class:`Result`.
    """
    t_start = time.perf_counter()
    _check_sampler(sampler)
    target = as_target(model_or_target, data)
    num_samples = _check_int(num_samples, "num_samples", 1)
    num_warmup = _check_int(num_warmup, "num_warmup", 0)
    thinning = _check_int(thinning, "thinning", 1)
    num_chains = _check_int(num_chains, "num_chains", 1)
    batch_size = _check_int(batch_size, "batch_size", 1, allow_none=True)
    chunk_size = _check_int(chunk_size, "chunk_size", 1, allow_none=True)
    swag_rank = _check_int(swag_rank, "swag_rank", 0)
    checkpoint_every = _check_int(checkpoint_every, "checkpoint_every", 1)
    progress_bar = check_bool(progress_bar, "progress_bar")
    _check_choice(on_divergence, "on_divergence", DIVERGENCE_MODES)
    _check_choice(keep, "keep", KEEP_MODES)
    if swag_rank and keep != "moments":
        raise ValueError("swag_rank needs keep='moments'")
    _check_target_for_gradients(target, batch_size)
    # Samplers that take several integrator steps per draw (SGHMC's num_steps_per_sample) get
    # them as driver-level thinning: every step draws its own minibatch.
    steps_per_draw = thinning * sampler.steps_per_draw
    _check_total_steps(num_warmup + num_samples * steps_per_draw)
    if shard is not None:
        _shardings(shard, devices, num_chains, target.num_data)
    master = _seed_key(seed)
    ckpt, resuming = _open_checkpoint(
        checkpoint, resume, target, "sample", sampler.hyperparameters, seed=seed, init=init, sampler=sampler.name,
        num_data=target.num_data, batch_size=batch_size, num_samples=num_samples, num_warmup=num_warmup,
        thinning=thinning, num_chains=num_chains, keep=keep, swag_rank=swag_rank, on_divergence=on_divergence,
    )
    chain_keys = _chain_keys(master, num_chains)
    positions = _initial_positions(target, init, _fold_each(chain_keys, 0), num_chains)
    _check_init_finite(target, positions, target.data)

    spec, centre, map_cost, map_compile = _resolve_centre(
        target, sampler.gradient, positions, master, batch_size, ckpt if resuming else None
    )
    estimator = spec.build(target.terms, target.num_data)

    out = _run_segments(
        target,
        sampler,
        estimator,
        positions,
        chain_keys,
        batch_size=batch_size,
        num_draws=num_samples,
        thinning=steps_per_draw,
        num_warmup=num_warmup,
        chunk_size=chunk_size,
        progress_bar=progress_bar,
        desc=sampler.name,
        record=target.constrain_fn,
        on_divergence=on_divergence,
        keep=keep,
        swag_rank=swag_rank,
        shard=shard,
        devices=devices,
        checkpoint=ckpt,
        checkpoint_every=checkpoint_every,
        resume=resuming,
        extra_state=centre,
    )
    # (draw, chain, ...) -> (chain, draw, ...)
    samples = {k: np.swapaxes(np.asarray(v), 0, 1) for k, v in out.draws.items()} if keep == "draws" else {}
    stats = {k: np.swapaxes(np.asarray(v), 0, 1) for k, v in out.infos._asdict().items()}
    moments = None
    if keep == "moments":
        acc = out.moments
        count = int(acc["count"])
        moments = {
            "count": count,
            "mean": {k: np.asarray(v) for k, v in acc["mean"].items()},
            "var": {k: np.asarray(v) / max(count - 1, 1) for k, v in acc["m2"].items()},
        }
        if swag_rank:
            moments["deviations"] = {
                k: np.asarray(acc["ring"][k]) - np.asarray(acc["mean"][k])[:, None] for k in acc["ring"]
            }

    result = Result(
        samples=samples,
        stats=stats,
        final_state=out.carry[0],
        grad_evals=map_cost
        + _grad_evals_per_chain(estimator, sampler, batch_size, target.num_data, num_warmup + num_samples * steps_per_draw),
        num_data=target.num_data,
        wall_time=time.perf_counter() - t_start,
        compile_time=out.compile_time + map_compile,
        sampler_name=sampler.name,
        observed_data=target.observed_data,
        centre=centre,
        moments=moments,
    )
    bad = result.diverged_chains()
    if bad:
        first = [int(np.argmax(stats["diverging"][c])) for c in bad]
        what = {"stop": "stopped at its last finite state", "restart": "steps rejected and restarted",
                "flag": "left non-finite"}[on_divergence]
        warnings.warn(
            f"{len(bad)} of {num_chains} chain(s) diverged (non-finite state; {what}): chains {bad}, first at "
            f"draws {first}. Their draws are flagged in stats['diverging']; lower the step size.",
            RuntimeWarning,
            stacklevel=2,
        )
    return result


def _default_optimizer(num_steps: int):
    import optax

    return optax.adam(optax.cosine_decay_schedule(1e-2, num_steps, alpha=1e-2))


def optimize(
    model_or_target,
    optimizer=None,
    *,
    data=None,
    batch_size: Optional[int] = None,
    num_steps: int = 2000,
    seed=0,
    init=None,
    trace_every: Optional[int] = None,
    progress_bar: bool = False,
    chunk_size: Optional[int] = None,
    checkpoint=None,
    checkpoint_every: int = 1,
    resume=None,
    shard: Optional[str] = None,
    devices=None,
) -> OptimizeResult:
    """Maximise the log posterior (the MAP): the sampling loop at temperature zero.

    Args:
      optimizer: a heatbath :class:`Sampler` at temperature 0 (or with a temperature schedule
        that anneals), or an optax ``GradientTransformation``. Default: Adam with a cosine
        decay from 1e-2 to 1e-4 (scale-free, robust for a MAP in the unconstrained space).
      num_steps: optimisation steps; ``trace_every``: steps between recorded trace points
        (default: about 200 points); ``chunk_size``: trace points per compiled chunk (the unit
        of checkpointing; default: all in one chunk, or 20 chunks when checkpointing).
      checkpoint, checkpoint_every, resume, shard, devices: as in :func:`sample`.
      Other arguments as in :func:`sample`.
    """
    t_start = time.perf_counter()
    num_steps = _check_int(num_steps, "num_steps", 1)
    progress_bar = check_bool(progress_bar, "progress_bar")
    optimizer = _as_optimizer(optimizer, num_steps)
    target = as_target(model_or_target, data)
    batch_size = _check_int(batch_size, "batch_size", 1, allow_none=True)
    _check_target_for_gradients(target, batch_size)
    trace_every = _check_int(trace_every, "trace_every", 1, allow_none=True) or max(1, num_steps // 200)
    chunk_size = _check_int(chunk_size, "chunk_size", 1, allow_none=True)
    checkpoint_every = _check_int(checkpoint_every, "checkpoint_every", 1)
    master = _seed_key(seed)
    ckpt, resuming = _open_checkpoint(
        checkpoint, resume, target, "optimize", optimizer.hyperparameters, seed=seed, init=init,
        optimizer=optimizer.name, num_data=target.num_data, batch_size=batch_size, num_steps=num_steps,
        trace_every=trace_every,
    )
    chain_keys = jax.random.fold_in(master, 0)[None]
    positions = _initial_positions(target, init, _fold_each(chain_keys, 0), 1)
    _check_init_finite(target, positions, target.data)
    return _optimize_from(target, optimizer, positions, chain_keys, batch_size=batch_size, num_steps=num_steps,
                          trace_every=trace_every, chunk_size=chunk_size, progress_bar=progress_bar, ckpt=ckpt,
                          checkpoint_every=checkpoint_every, resuming=resuming, shard=shard, devices=devices,
                          t_start=t_start)


_OPTIMIZERS: "collections.OrderedDict" = collections.OrderedDict()


def _as_optimizer(optimizer, num_steps: int) -> Sampler:
    """A T = 0 (or annealing) Sampler from None (the default Adam), an optax transform or a Sampler.

    The wrappers are cached (by the transform's identity, or by ``num_steps`` for the default),
    so repeated calls reuse the compiled loop.
    """
    from heatbath.kernels.schedules import is_constant
    from heatbath.optim.optax_bridge import from_optax

    if optimizer is None or not isinstance(optimizer, Sampler):
        key = ("default", num_steps) if optimizer is None else ("optax", id(optimizer))
        hit = _OPTIMIZERS.get(key)
        if hit is not None and hit[0] is optimizer:
            _OPTIMIZERS.move_to_end(key)
            optimizer = hit[1]
        else:
            if optimizer is None:
                wrapped = from_optax(_default_optimizer(num_steps), name="adam")
                wrapped = wrapped._replace(hyperparameters={
                    "optimizer": f"adam(cosine_decay_schedule(1e-2, {num_steps}, alpha=1e-2))",
                    "gradient": wrapped.gradient,
                })
            else:
                wrapped = from_optax(optimizer)
            _OPTIMIZERS[key] = (optimizer, wrapped)
            while len(_OPTIMIZERS) > _CACHE_SIZE:
                _OPTIMIZERS.popitem(last=False)
            optimizer = wrapped
    t_const = is_constant(optimizer.temperature)
    if t_const is not None and t_const != 0.0:
        raise ValueError(
            f"optimize runs at temperature 0 (or an annealing schedule), but the sampler has constant "
            f"temperature {t_const}; build it with temperature=0.0 or a cooling schedule"
        )
    return optimizer


def _optimize_from(target, optimizer, positions, chain_keys, *, batch_size, num_steps, trace_every, chunk_size,
                   progress_bar, ckpt, checkpoint_every, resuming, shard, devices, t_start):
    """The optimisation loop from unconstrained ``positions`` (leading axis of size 1)."""
    estimator = optimizer.gradient.build(target.terms, target.num_data)
    trace_every = min(trace_every, num_steps)
    num_records, rest = divmod(num_steps, trace_every)
    if chunk_size is None and ckpt is not None:
        chunk_size = max(1, num_records // 20)
    # The first `rest` steps run unrecorded, then num_records draws every trace_every steps.
    out = _run_segments(
        target,
        optimizer,
        estimator,
        positions,
        chain_keys,
        batch_size=batch_size,
        num_draws=num_records,
        thinning=trace_every,
        num_warmup=rest,
        chunk_size=chunk_size,
        progress_bar=progress_bar,
        desc=f"optimize ({optimizer.name})",
        checkpoint=ckpt,
        checkpoint_every=checkpoint_every,
        resume=resuming,
        shard=shard,
        devices=devices,
    )
    infos, carry, compile_time = out.infos, out.carry, out.compile_time
    params = jax.tree.map(lambda x: x[0], carry[0].position)
    trace = {k: np.asarray(v)[:, 0] for k, v in infos._asdict().items()}
    constrain = _per_target(target, "constrain", lambda: jax.jit(target.constrain_fn))
    values = {k: np.asarray(v) for k, v in jax.device_get(constrain(params, target.data)).items()}
    if not bool(_tree.all_finite(params)):
        warnings.warn("the optimizer diverged (non-finite parameters); lower the learning rate", RuntimeWarning, stacklevel=3)
    return OptimizeResult(
        params=params,
        values=values,
        trace=trace,
        grad_evals=_grad_evals_per_chain(estimator, optimizer, batch_size, target.num_data, num_steps),
        num_data=target.num_data,
        wall_time=time.perf_counter() - t_start,
        compile_time=compile_time,
    )


# ----------------------------------------------------------------------------------------
# fit: Gaussian variational inference (FB-GVI, BW-SGD); the result is a Gaussian
# ----------------------------------------------------------------------------------------
import typing as _typing  # noqa: E402

from jax.flatten_util import ravel_pytree as _ravel_pytree  # noqa: E402

from heatbath.kernels import linalg as _linalg  # noqa: E402
from heatbath.kernels.gradients import minibatch_logdensity as _minibatch_logdensity  # noqa: E402
from heatbath.vi import gaussian as _gvi  # noqa: E402

_TRACE_KEY = 3  # fold_in index of the key of the ELBO trace's common random numbers


class _FitInfo(_typing.NamedTuple):
    """What the loop keeps every ``trace_every`` steps: the method's info and its new state."""

    diverging: jax.Array
    info: Any
    state: Any


_WRAPPED: "collections.OrderedDict" = collections.OrderedDict()


def _wrapped_method(method):
    """``method`` with a step that also records its new state (cached, to reuse compiled loops)."""
    hit = _WRAPPED.get(id(method))
    if hit is not None and hit[0] is method:
        return hit[1]
    wrapped = method._replace(step=_record_state(method.step))
    _WRAPPED[id(method)] = (method, wrapped)
    while len(_WRAPPED) > _CACHE_SIZE:
        _WRAPPED.popitem(last=False)
    return wrapped


def _record_state(step):
    def wrapped(key, state, batch, grad_fn):
        new, info = step(key, state, batch, grad_fn)
        return new, _FitInfo(info.diverging, info, new)

    return wrapped


def _flatten_target(target: Target, unravel) -> Target:
    """The same target on a flat parameter vector x (params = unravel(x)), raveled once."""

    def terms(x, batch):
        return target.terms(unravel(x), batch)

    def constrain_fn(x, data_):
        return target.constrain_fn(unravel(x), data_)

    def init_params(key):
        return _ravel_pytree(target.init_params(key))[0]

    def unconstrain(values):
        return _ravel_pytree(target.unconstrain(values))[0]

    return dataclasses.replace(
        target, terms=terms, init_params=init_params, constrain_fn=constrain_fn, unconstrain=unconstrain
    )


@dataclasses.dataclass
class Gaussian:
    """The Gaussian approximation N(m, S) returned by :func:`fit`, in the unconstrained space.

    The parameters are flat: m is a vector of the d unconstrained parameters (the model's
    pytree raveled by ``jax.flatten_util.ravel_pytree``), S a d x d covariance; ``mean`` gives
    m back as the model's pytree, ``sample`` and ``to_arviz`` map draws to the constrained
    (user's) space like a :class:`Result`.

    Attributes:
      state: the method's final state (``state.position`` is m; the covariance's factors).
      trace: name -> array over the recorded steps: ``step``, ``step_size``, ``temperature``,
        ``grad_norm``, ``lp`` (mean log-density estimate at the step's points),
        ``diverging``, ``min_variance`` (SPD check), ``entropy``, ``elbo`` (Monte Carlo
        estimate of E_q log p~ + H(q) on the full data, when ``elbo_samples > 0``) and ``kl``
        (exact KL(q || N(exact)), when ``exact`` was given).
      grad_calls, hvp_calls: gradient evaluations and Hessian-vector products of the log
        density on the step's batch (MAP search for control variates excluded).
      grad_evals, hvp_evals: the same in per-datum units (rows touched), estimator
        initialisation / refreshes and a control-variates MAP search included in grad_evals.
      wall_time: seconds of the run (compile included); trace_time: seconds spent afterwards
        computing ``trace``'s entropy / ELBO / KL.
      trace_states: with ``fit(..., keep_trace_states=True)``, the method's state at every
        trace point (leading axis: trace point), e.g. to follow the moments.
    """

    state: Any
    trace: dict
    grad_calls: float
    hvp_calls: float
    grad_evals: float
    hvp_evals: float
    num_data: int
    num_steps: int
    wall_time: float
    compile_time: float
    trace_time: float
    method_name: str
    target: Any = dataclasses.field(repr=False, default=None)
    unravel: Any = dataclasses.field(repr=False, default=None)
    observed_data: Optional[dict] = None
    trace_states: Any = dataclasses.field(repr=False, default=None)

    @property
    def dim(self) -> int:
        return int(self.state.position.shape[-1])

    @property
    def mean_flat(self) -> np.ndarray:
        """m as a flat vector (unconstrained)."""
        return np.asarray(self.state.position)

    @property
    def mean(self):
        """m as the model's (unconstrained) parameter pytree."""
        return jax.device_get(self.unravel(self.state.position))

    @property
    def cov(self) -> np.ndarray:
        """The d x d covariance S (formed on request)."""
        return np.asarray(_gvi.covariance(self.state))

    @property
    def variance(self) -> np.ndarray:
        """diag(S), flat."""
        return np.asarray(_gvi.variance(self.state))

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(self.variance)

    @property
    def data_passes(self) -> float:
        return self.grad_evals / self.num_data

    def entropy(self) -> float:
        """H(q) = (d (1 + log 2 pi) + log det S) / 2."""
        return float(_gvi.entropy(self.state))

    def kl_to(self, mean, cov) -> float:
        """KL(q || N(mean, cov)) in the flat unconstrained space (exact)."""
        mean = jnp.asarray(mean, self.state.position.dtype)
        cov = jnp.asarray(_linalg.check_spd(cov, "cov", self.dim), self.state.position.dtype)
        return float(_linalg.gaussian_kl(self.state.position, _gvi.covariance(self.state), mean, cov))

    def sample(self, key, num: int, *, constrained: bool = True):
        """``num`` draws of q.

        Returns a dict name -> array (num, ...) on the constrained scale (deterministic sites
        included), like one chain of ``Result.samples``; ``constrained=False`` returns the
        unconstrained draws as the model's parameter pytree with a leading axis ``num``.
        """
        num = _check_int(num, "num", 1)
        draws = _gvi.sample_normal(_seed_key(key), self.state, num)
        if not constrained:
            return jax.device_get(jax.vmap(self.unravel)(draws))
        values = jax.jit(jax.vmap(self.target.constrain_fn, in_axes=(0, None)))(draws, self.target.data)
        return {k: np.asarray(v) for k, v in jax.device_get(values).items()}

    def to_arviz(self, num_samples: int = 1000, seed=0):
        """An ArviZ object with ``num_samples`` draws of q (one chain, constrained)."""
        from heatbath.diagnostics.arviz import to_arviz

        draws = self.sample(seed, num_samples)
        return to_arviz(
            {k: v[None] for k, v in draws.items()},
            None,
            self.observed_data,
            attrs={"inference_library": "heatbath", "method": self.method_name},
        )

    def elbo(self, key=0, num_samples: int = 1000) -> float:
        """Monte Carlo ELBO E_q log p~(x) + H(q) on the full data (log p~ unnormalised)."""
        num_samples = _check_int(num_samples, "num_samples", 1)
        logdensity = _minibatch_logdensity(self.target.terms, self.target.num_data)
        draws = _gvi.sample_normal(_seed_key(key), self.state, num_samples)
        lps = jax.jit(jax.vmap(logdensity, in_axes=(0, None)))(draws, self.target.data)
        return float(jnp.mean(lps)) + self.entropy()

    def __repr__(self) -> str:
        return (
            f"Gaussian({self.method_name}: d={self.dim}, {self.num_steps} steps, {self.grad_calls:g} gradient "
            f"calls + {self.hvp_calls:g} HVPs, {self.data_passes:.1f} data passes, {self.wall_time:.2f}s)"
        )


def _trace_diagnostics(flat_target: Target, states, eps, exact):
    """Entropy, ELBO (common random numbers ``eps``) and exact KL at every recorded state."""

    def build(with_elbo, with_kl):
        logdensity = _minibatch_logdensity(flat_target.terms, flat_target.num_data)

        def one(state, data, eps_, exact_):
            out = {"entropy": _gvi.entropy(state)}
            if with_elbo:
                xs = _gvi.affine(state, eps_)
                lps = jax.vmap(logdensity, in_axes=(0, None))(xs, data)
                out["elbo"] = jnp.mean(lps) + out["entropy"]
            if with_kl:
                out["kl"] = _linalg.gaussian_kl(state.position, _gvi.covariance(state), exact_[0], exact_[1])
            return out

        return jax.jit(lambda s, data, eps_, exact_: jax.lax.map(lambda st: one(st, data, eps_, exact_), s))

    flags = (eps is not None, exact is not None)
    fn = _per_target(flat_target, ("trace", flags), lambda: build(*flags))
    return {k: np.asarray(v) for k, v in jax.device_get(fn(states, flat_target.data, eps, exact)).items()}


def fit(
    model_or_target,
    method: Sampler,
    *,
    data=None,
    batch_size: Optional[int] = None,
    seed=0,
    init=None,
    trace_every: Optional[int] = None,
    elbo_samples: int = 16,
    exact=None,
    keep_trace_states: bool = False,
    progress_bar: bool = False,
    chunk_size: Optional[int] = None,
    checkpoint=None,
    checkpoint_every: int = 1,
    resume=None,
    shard: Optional[str] = None,
    devices=None,
) -> "Gaussian":
    """Run a Gaussian VI method (``hb.vi.fbgvi``, ``hb.vi.bwsgd``) and return its :class:`Gaussian`.

    The loop is the one of :func:`sample` (one jitted ``lax.scan`` per chunk, minibatch
    indices drawn inside it) on a single chain whose state is (m, S). The model's parameter
    pytree is raveled *once* into a flat vector outside the loop (a d x d covariance is
    inherently flat); the log density unravels it, which XLA compiles to slices.

    Args:
      model_or_target: a NumPyro model (its arguments in ``data``) or a :class:`Target`.
      method: ``hb.vi.fbgvi(...)`` or ``hb.vi.bwsgd(...)`` (it carries ``num_steps``).
      batch_size: minibatch size n for doubly stochastic VI (V~ = -log p(theta) - (N/n) sum
        over the batch); None: full data.
      seed: an integer or a JAX key.
      init: the initial mean on the constrained scale (like :func:`sample`'s ``init``);
        default: uniform(-2, 2) in the unconstrained space.
      trace_every: steps between recorded trace points (default: about 100 points).
      elbo_samples: Monte Carlo draws (common random numbers across trace points) of the ELBO
        trace, on the full data after the run; 0 skips it. It costs ``elbo_samples`` full-data
        log-density evaluations per trace point (no gradients), timed in ``trace_time``.
      exact: ``(mean, cov)`` of a Gaussian target in the flat unconstrained space; the trace
        then has the exact ``kl``.
      keep_trace_states: keep the method's state (mean and covariance factors) at every trace
        point in ``Gaussian.trace_states`` (leading axis: trace point), e.g. to follow the
        moments; memory: one state per trace point.
      progress_bar, chunk_size, checkpoint, checkpoint_every, resume, shard, devices: as in
        :func:`sample` (``chunk_size`` counts trace points; with a checkpoint and no chunk size the
        run is cut into 20 chunks).

    Returns:
      A :class:`Gaussian`.
    """
    t_start = time.perf_counter()
    if not _gvi.is_gaussian_vi(method):
        raise TypeError(
            "method must be a Gaussian VI method (hb.vi.fbgvi(...) or hb.vi.bwsgd(...)), "
            f"got {type(method).__name__}"
        )
    target = as_target(model_or_target, data)
    batch_size = _check_int(batch_size, "batch_size", 1, allow_none=True)
    chunk_size = _check_int(chunk_size, "chunk_size", 1, allow_none=True)
    elbo_samples = _check_int(elbo_samples, "elbo_samples", 0)
    _check_target_for_gradients(target, batch_size)
    num_steps = int(method.hyperparameters["num_steps"])
    trace_every = _check_int(trace_every, "trace_every", 1, allow_none=True) or max(1, num_steps // 100)
    trace_every = min(trace_every, num_steps)
    master = _seed_key(seed)
    chain_keys = jax.random.fold_in(master, 0)[None]
    positions = _initial_positions(target, init, _fold_each(chain_keys, 0), 1)
    flat0, unravel = _ravel_pytree(jax.tree.map(lambda x: x[0], positions))
    dim = int(flat0.shape[0])
    _gvi.check_dimension(method, dim)
    flat_target = _per_target(target, "flat_target", lambda: _flatten_target(target, unravel))
    flat_positions = flat0[None]
    _check_init_finite(flat_target, flat_positions, flat_target.data)
    if exact is not None:
        if not isinstance(exact, (tuple, list)) or len(exact) != 2:
            raise TypeError("exact must be a (mean, cov) pair of the Gaussian target in the flat unconstrained space")
        exact_mean = np.asarray(exact[0], dtype=np.float64)
        if exact_mean.shape != (dim,):
            raise ValueError(f"exact mean must have shape ({dim},), got {exact_mean.shape}")
        exact_cov = _linalg.check_spd(exact[1], "exact covariance", dim)
        exact = (jnp.asarray(exact_mean, flat0.dtype), jnp.asarray(exact_cov, flat0.dtype))

    spec = method.gradient
    if getattr(spec, "needs_centre", False) and spec.centre is not None:
        spec = spec.with_centre(_ravel_pytree(_check_centre(target, spec.centre))[0])
    checkpoint_every = _check_int(checkpoint_every, "checkpoint_every", 1)
    ckpt, resuming = _open_checkpoint(
        checkpoint, resume, target, "fit", method.hyperparameters, seed=seed, init=init, method=method.name,
        num_data=target.num_data, batch_size=batch_size, trace_every=trace_every, dim=dim,
    )
    spec, centre, map_cost, map_compile = _resolve_centre(
        flat_target, spec, flat_positions, master, batch_size, ckpt if resuming else None
    )
    estimator = spec.build(flat_target.terms, flat_target.num_data)
    wrapped = _wrapped_method(method)
    num_records, rest = divmod(num_steps, trace_every)
    if chunk_size is None and ckpt is not None:
        chunk_size = max(1, num_records // 20)
    out = _run_segments(
        flat_target,
        wrapped,
        estimator,
        flat_positions,
        chain_keys,
        batch_size=batch_size,
        num_draws=num_records,
        thinning=trace_every,
        num_warmup=rest,
        chunk_size=chunk_size,
        progress_bar=progress_bar,
        desc=method.name,
        checkpoint=ckpt,
        checkpoint_every=checkpoint_every,
        resume=resuming,
        shard=shard,
        devices=devices,
        extra_state=centre,
    )
    infos, carry, compile_time = out.infos, out.carry, out.compile_time + map_compile
    wall_time = time.perf_counter() - t_start
    final = jax.tree.map(lambda x: x[0], carry[0])

    t_trace = time.perf_counter()
    states = jax.tree.map(lambda x: jnp.asarray(x[:, 0]), infos.state)
    trace = {"step": rest + trace_every * (np.arange(num_records) + 1)}
    trace.update({k: np.asarray(v)[:, 0] for k, v in infos.info._asdict().items()})
    eps = None
    if elbo_samples:
        k = _gvi.num_factor_columns(final)
        eps = jax.random.normal(jax.random.fold_in(master, _TRACE_KEY), (elbo_samples, k), dtype=flat0.dtype)
    trace.update(_trace_diagnostics(flat_target, states, eps, exact))
    trace_time = time.perf_counter() - t_trace

    grads, hvps = _gvi.calls_per_step(method, dim)
    rows = (flat_target.num_data if batch_size is None else batch_size) * estimator.rows_per_estimate
    grad_evals = num_steps * grads * rows + estimator.rows_at_init + map_cost
    if estimator.refresh_every:
        grad_evals += _num_refreshes(num_steps, estimator.refresh_every) * flat_target.num_data
    result = Gaussian(
        state=final,
        trace=trace,
        grad_calls=float(num_steps * grads),
        hvp_calls=float(num_steps * hvps),
        grad_evals=float(grad_evals),
        hvp_evals=float(num_steps * hvps * rows),
        num_data=flat_target.num_data,
        num_steps=num_steps,
        wall_time=wall_time,
        compile_time=compile_time,
        trace_time=trace_time,
        method_name=method.name,
        target=flat_target,
        unravel=unravel,
        observed_data=target.observed_data,
        trace_states=jax.device_get(states) if keep_trace_states else None,
    )
    if np.any(trace["diverging"]) or not bool(_tree.all_finite(final)):
        first = int(trace["step"][int(np.argmax(trace["diverging"]))]) if np.any(trace["diverging"]) else num_steps
        warnings.warn(
            f"{method.name} diverged (non-finite state or a covariance that lost positive definiteness) "
            f"by step {first}; lower the step size",
            RuntimeWarning,
            stacklevel=2,
        )
    return result
