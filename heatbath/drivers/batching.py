"""Batchers: which data rows a step sees.

A batcher is chosen with ``hb.sample(..., batching=...)`` (also ``optimize`` and ``fit``) and
built by the driver for the run's batch size n, number of rows N and number of steps:

- ``init(key) -> state``: per chain; the state lives in the scan's carry and in checkpoints.
- ``next(state, key, data, step) -> (batch, info, state)``: the rows of this step. ``key`` is
  the step's batch key, ``step`` the driver's global step count (unbatched under the chain
  vmap, so a decision that depends on it stays a ``lax.cond``), ``info`` a dict of arrays the
  step's oracle carries (``oracle.batch_info``), e.g. the federated shard and its scale.

Built in:

- ``"uniform"`` (default): n rows drawn uniformly with replacement at every step.
- ``"reshuffle"``: epochs without replacement. The rows of a chain form one endless stream of
  independent random permutations of 0..N-1, cut into consecutive batches of n: every row is
  seen exactly once per epoch, and when n does not divide N a batch straddles two epochs (its
  first rows end one permutation, the rest begin the next), so no row is dropped and no batch
  is short. Epoch e's permutation is drawn from ``fold_in(chain key, e)`` when the stream
  reaches it (one O(N) permutation per epoch, under a ``lax.cond`` on the step count).
- :func:`federated` (rounds): the rows are split into K shards (clients); every
  ``local_steps`` steps a round starts and a shard s is drawn with probabilities f; within the
  round each step draws n rows uniformly with replacement from shard s. The batch info gives
  ``shard``, ``shard_size`` N_s and ``shard_prob`` f_s, so that a federated sampler scales
  the likelihood by N_s / (f_s n) (DSGLD, El Mekkaoui et al. 2021;
  :mod:`heatbath.samplers.federated`). Shards may be unavailable in a round (``availability``:
  a rate or a mask); f is then renormalised over the available ones. The state counts the
  rounds and steps each shard served (``rounds_served``, ``steps_served`` in the batch info).
  Its spec's ``relayout(position)`` is the same batching reading row i at ``position[i]``: what
  ``shard="data"`` uses to place whole shards on devices (:mod:`heatbath.drivers.placement`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels.validate import check_int, check_real

__all__ = ["Batcher", "BatchingSpec", "uniform", "reshuffle", "federated", "resolve_named", "as_batching", "take_rows",
           "BATCHINGS"]


class Batcher(NamedTuple):
    """A built batcher (see the module docstring)."""

    name: str
    init: Callable
    next: Callable
    batch_size: Optional[int]


def take_rows(data, idx):
    """The rows ``idx`` of every leaf of ``data`` (``jnp.take`` with clipping: no bounds check)."""
    return jax.tree.map(lambda x: jnp.take(x, idx, axis=0, mode="clip"), data)


class BatchingSpec(NamedTuple):
    """A batching choice before the run's n and N are known: ``build(batch_size, num_data, num_steps)``
    returns the :class:`Batcher`. ``unbiased_scaling``: whether the samplers' usual N/n scaling
    of the likelihood stays unbiased under it (False: only a sampler that scales by the
    batch info, ``Sampler.uses`` containing ``"batch_info"``, may run on it)."""

    name: str
    build: Callable
    params: dict = {}
    unbiased_scaling: bool = True
    shards: Any = None  # federated: the shard id of every row (what FSGLD's per-shard fits read)
    # federated: relayout(position) -> the same spec indexing rows laid out elsewhere (row i at
    # position[i], e.g. grouped by device: heatbath.drivers.placement.place_data); None: fixed rows
    relayout: Any = None

    def __repr__(self) -> str:  # stable: checkpoint settings record it
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"{self.name}({args})"


def _full(batch_size):

    def next_(state, key, data, step):
        del key, step
        return data, {}, state

    return Batcher("full", lambda key: (), next_, None)


def uniform() -> BatchingSpec:
    """n rows uniformly with replacement at every step (the default)."""

    def build(batch_size, num_data, num_steps):
        del num_steps
        if batch_size is None:
            return _full(batch_size)

        def next_(state, key, data, step):
            del step
            idx = jax.random.randint(key, (batch_size,), 0, num_data)
            return take_rows(data, idx), {}, state

        return Batcher("uniform", lambda key: (), next_, batch_size)

    return BatchingSpec("uniform", build)


class ReshuffleState(NamedTuple):
    key: jax.Array  # the chain's stream key: epoch e's permutation is permutation(fold_in(key, e), N)
    perm: jax.Array  # the permutation of the epoch the stream is in


def reshuffle() -> BatchingSpec:
    """Epochs without replacement (random reshuffling); see the module docstring."""

    def build(batch_size, num_data, num_steps):
        if batch_size is None:
            return _full(batch_size)
        n, N = batch_size, num_data
        wide = bool(jax.config.jax_enable_x64)
        if not wide and num_steps * n >= 2**31:
            raise ValueError(
                f"batching='reshuffle' counts rows in int32: {num_steps} steps x {n} rows exceeds 2**31; "
                "enable x64 (JAX_ENABLE_X64=1) or split the run (checkpoint/resume)"
            )

        def perm_of(key, epoch):
            return jax.random.permutation(jax.random.fold_in(key, epoch), N).astype(jnp.int32)

        def init(key):
            return ReshuffleState(key, perm_of(key, 0))

        def next_(state, key, data, step):
            del key
            start = step.astype(jnp.int64 if wide else jnp.int32) * n
            epoch, pos = start // N, start % N
            # The batch ends in the next epoch when pos + n > N; the next epoch starts with the
            # next step when pos + n == N. Both draw the next permutation (only then: a cond).
            crosses = pos + n >= N
            nxt = jax.lax.cond(crosses, lambda: perm_of(state.key, epoch + 1), lambda: state.perm)
            j = pos + jnp.arange(n)
            idx = jnp.where(j < N, state.perm[jnp.minimum(j, N - 1)], nxt[jnp.clip(j - N, 0, N - 1)])
            return take_rows(data, idx), {}, ReshuffleState(state.key, nxt)

        return Batcher("reshuffle", init, next_, batch_size)

    return BatchingSpec("reshuffle", build)


class FederatedState(NamedTuple):
    shard: jax.Array  # the shard of the current round
    prob: jax.Array  # its probability f'_s, renormalised over the round's available shards
    active: jax.Array  # whether any shard is available in the current round
    rounds: jax.Array  # (K,) rounds served by each shard so far
    steps: jax.Array  # (K,) local steps served by each shard so far


def federated(shards, *, local_steps: int = 1, probs=None, availability=None) -> BatchingSpec:
    """Federated rounds over K shards (see the module docstring).

    Args:
      shards: the shard of every row, an integer array of length N with values 0..K-1 (each
        shard non-empty); or, for a NumPyro model, the name of the model argument (a key of
        ``hb.sample``'s ``data``) that holds it.
      local_steps: steps per round on the round's shard (T in El Mekkaoui et al. 2021).
      probs: f, the probability of each shard being chosen for a round (default: N_s / N).
      availability: which shards can serve a round. None (default): all, always. A rate r in
        [0, 1): every shard is unavailable in a round with probability r, independently (drawn
        from the round's key). A boolean array (num_rounds, K): row r says which shards can
        serve round r (it must cover the run's rounds). The round's shard is drawn with the
        probabilities renormalised over the available shards, f'_s = f_s / sum_{k in A} f_k,
        and ``shard_prob`` is pi_s = E_A[f'_s 1{s in A}], the probability that a round is
        served by s over the availability patterns (computed exactly for a rate, by enumerating
        the 2^K patterns up to K = 16 and from 2^16 seeded patterns beyond; for a mask, averaged
        over its rounds), so that scaling by 1 / pi_s keeps the likelihood unbiased over the
        rounds. A round with no shard available is skipped (``active`` False: a federated
        sampler leaves the chain where it is); pi is conditional on a round being active.

    The batch info is ``shard``, ``shard_size`` N_s, ``shard_prob`` pi_s (f_s when all are
    available), ``round_prob`` f'_s, ``active``,
    ``round_start`` and the per-shard counters ``rounds_served`` and ``steps_served`` (K,),
    counted in the batcher's state (so they are checkpointed and resumed with it).
    """
    if isinstance(shards, str):
        return _named_federated(shards, local_steps=local_steps, probs=probs, availability=availability)
    labels = np.asarray(shards)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError("shards must be a 1-D integer array: the shard (0..K-1) of every data row")
    local_steps = check_int(local_steps, "local_steps", minimum=1)
    if labels.size == 0 or labels.min() < 0:
        raise ValueError("shards must hold shard numbers 0..K-1 for every row")
    K = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=K)
    if np.any(sizes == 0):
        raise ValueError(f"shard(s) {np.nonzero(sizes == 0)[0].tolist()} have no rows; number the shards 0..K-1")
    if probs is None:
        f = sizes / sizes.sum()
    else:
        f = np.asarray(probs, dtype=np.float64)
        if f.ndim == 1 and 0 < f.size < K:
            raise ValueError(f"probs must have one entry per shard: shard id {K - 1} is out of range 0..{f.size - 1} "
                             f"(probs has {f.size} entries)")
        if f.shape != (K,):
            raise ValueError(f"probs must have one entry per shard ({K}), got shape {f.shape}")
        for i, p in enumerate(f):
            check_real(p, f"probs[{i}]", low=0.0, low_open=True)
        if abs(f.sum() - 1.0) > 1e-6:
            raise ValueError(f"probs must sum to 1, got {f.sum():g}")
    rate, mask = _availability(availability, K)
    pi = _served_probs(f, rate, mask)
    # Row indices of each shard, padded to the largest shard.
    table = np.zeros((K, int(sizes.max())), np.int32)
    for s in range(K):
        rows = np.nonzero(labels == s)[0]
        table[s, : rows.size] = rows
    proportional = bool(np.allclose(f, sizes / sizes.sum(), rtol=1e-9, atol=0.0)) and rate == 0.0 and mask is None
    params = {"num_shards": K, "local_steps": local_steps, "probs": [round(float(p), 12) for p in f],
              "shards": _digest(labels)}
    if rate:
        params["availability"] = float(rate)
    elif mask is not None:
        params["availability"] = _digest(mask)

    def spec_at(position):
        """The spec whose batcher reads row i at ``position[i]`` (None: at i)."""
        rows_of = table if position is None else np.asarray(position, np.int32)[table]
        # With f_s = N_s / N, N_s / (f_s n) = N / n: the usual minibatch scaling is unbiased (not
        # under dropout: the renormalised f'_s differ from N_s / N).
        return BatchingSpec("federated", _federated_build(rows_of, labels, sizes, f, pi, mask, rate, K, local_steps),
                            params, proportional, labels, spec_at)

    return spec_at(None)


def _federated_build(table, labels, sizes, f, pi, mask, rate, K, local_steps):
    """The federated batcher's ``build`` for the shards' row table (K, max N_s)."""

    def build(batch_size, num_data, num_steps):
        if labels.size != num_data:
            raise ValueError(f"shards has {labels.size} entries but the data has {num_data} rows")
        if batch_size is None:
            raise ValueError("federated batching needs a batch_size (rows drawn per local step)")
        if mask is not None and mask.shape[0] * local_steps < num_steps:
            raise ValueError(
                f"availability has {mask.shape[0]} rounds but the run takes {-(-num_steps // local_steps)} rounds "
                f"of {local_steps} steps ({num_steps} steps, the warmup's included: hb.sample's default "
                "num_warmup is a quarter of the sampling steps): give a row per round, or num_warmup=0"
            )
        tab, size, prob, served_prob = (jnp.asarray(table), jnp.asarray(sizes, jnp.int32), jnp.asarray(f),
                                        jnp.asarray(pi))
        masks = None if mask is None else jnp.asarray(mask)
        fdtype = jnp.result_type(float)

        def init(key):
            zeros = jnp.zeros((K,), jnp.int32)
            return FederatedState(jnp.zeros((), jnp.int32), jnp.zeros((), fdtype), jnp.ones((), bool), zeros, zeros)

        def start_round(key, step):
            key_avail, key_shard = jax.random.split(key)
            if mask is not None:
                avail = masks[step // local_steps]
            elif rate:
                avail = jax.random.uniform(key_avail, (K,)) >= rate
            else:
                avail = jnp.ones((K,), bool)
            weights = jnp.where(avail, prob, 0.0)
            total = jnp.sum(weights)
            active = total > 0
            # No shard available: the round is skipped; f is kept so that the (unused) step stays finite.
            fprime = jnp.where(active, weights / jnp.where(active, total, 1.0), prob)
            shard = jax.random.categorical(key_shard, jnp.log(fprime)).astype(jnp.int32)
            return shard, fprime[shard].astype(fdtype), active

        def next_(state, key, data, step):
            key_round, key_rows = jax.random.split(key)
            new_round = step % local_steps == 0
            shard, p, active = jax.lax.cond(new_round, lambda: start_round(key_round, step),
                                            lambda: (state.shard, state.prob, state.active))
            pick = jax.random.randint(key_rows, (batch_size,), 0, size[shard])
            idx = tab[shard, pick]
            served = (jnp.arange(K) == shard) & active
            rounds = state.rounds + (served & new_round).astype(jnp.int32)
            steps = state.steps + served.astype(jnp.int32)
            info = {"shard": shard, "shard_size": size[shard], "shard_prob": served_prob[shard].astype(fdtype),
                    "round_prob": p, "active": active,
                    "round_start": new_round, "rounds_served": rounds, "steps_served": steps}
            return take_rows(data, idx), info, FederatedState(shard, p, active, rounds, steps)

        return Batcher("federated", init, next_, batch_size)

    return build


def _digest(a) -> str:
    import hashlib

    a = np.ascontiguousarray(a)
    return f"{a.shape}:{hashlib.blake2b(a.tobytes(), digest_size=8).hexdigest()}"


def _served_probs(f, rate, mask):
    """pi_s: the probability that an active round is served by shard s (see :func:`federated`)."""
    K = f.size
    if mask is not None:
        w = mask * f
        tot = w.sum(1)
        rows = tot > 0
        if not rows.any():
            raise ValueError("availability: no round has an available shard")
        return (w[rows] / tot[rows, None]).mean(0)
    if rate == 0.0:
        return f
    if K <= 16:
        pats = ((np.arange(2 ** K)[:, None] >> np.arange(K)) & 1).astype(bool)
        weight = np.where(pats, 1.0 - rate, rate).prod(1)
    else:
        pats = np.random.default_rng(0).random((2 ** 16, K)) >= rate
        weight = np.ones(pats.shape[0])
    w = pats * f
    tot = w.sum(1)
    rows = tot > 0
    pi = (weight[rows, None] * w[rows] / tot[rows, None]).sum(0) / weight[rows].sum()
    return pi


def _availability(availability, K):
    """(rate, mask) from ``availability``: None, a rate in [0, 1) or a (rounds, K) boolean mask."""
    if availability is None:
        return 0.0, None
    if isinstance(availability, (bool, np.bool_)):
        raise TypeError("availability must be None, a rate in [0, 1) or a boolean array (rounds, K)")
    if np.ndim(availability) == 0:
        rate = check_real(availability, "availability", low=0.0)
        if not rate < 1.0:
            raise ValueError(f"availability (the rate at which a shard is unavailable) must be in [0, 1), got {rate}")
        return float(rate), None
    mask = np.asarray(availability)
    if mask.dtype != bool or mask.ndim != 2 or mask.shape[1] != K:
        raise ValueError(f"availability as a mask must be a boolean array (rounds, {K}): one row per round, one "
                         f"column per shard; got {mask.dtype} {mask.shape}")
    return 0.0, mask


def _named_federated(name, **kwargs) -> BatchingSpec:
    """A federated spec whose shard ids are the model argument ``name``: resolved by the driver
    (:func:`resolve_named`) from the run's data."""

    def build(batch_size, num_data, num_steps):
        raise ValueError(f"federated({name!r}): the shard ids are read from the model argument {name!r}; "
                         "pass it in hb.sample's data")

    return BatchingSpec("federated", build, {"shards": name, **{k: v for k, v in kwargs.items() if k != "probs"}},
                        False, (name, kwargs))


def resolve_named(spec: BatchingSpec, data, accepts):
    """(data, spec) with a named federated spec resolved: the shard ids taken from ``data[name]``
    (dropped from the data unless ``accepts(name)``, the model taking that argument)."""
    if spec.name != "federated" or not isinstance(spec.shards, tuple):
        return data, spec
    name, kwargs = spec.shards
    if not isinstance(data, dict) or name not in data:
        raise ValueError(f"federated({name!r}) reads the shard ids from the model argument {name!r}, but the data "
                         f"has no such key (keys: {sorted(data) if isinstance(data, dict) else type(data).__name__})")
    ids = np.asarray(data[name])
    rest = data if accepts(name) else {k: v for k, v in data.items() if k != name}
    return rest, federated(ids, **kwargs)


BATCHINGS = {"uniform": uniform(), "reshuffle": reshuffle()}  # one object each: compiled loops are cached by it


def as_batching(batching) -> BatchingSpec:
    """A batching spec from a name (``"uniform"``, ``"reshuffle"``) or a spec (:func:`federated`)."""
    if isinstance(batching, BatchingSpec):
        return BATCHINGS.get(batching.name, batching) if batching.name in BATCHINGS else batching
    if isinstance(batching, str) and batching in BATCHINGS:
        return BATCHINGS[batching]
    raise ValueError(
        f"batching must be 'uniform', 'reshuffle' or hb.drivers.batching.federated(...), got {batching!r}"
    )
