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
  the likelihood by N_s / (f_s n) (DSGLD, El Mekkaoui et al. 2021).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels.validate import check_int, check_real

__all__ = ["Batcher", "BatchingSpec", "uniform", "reshuffle", "federated", "as_batching", "take_rows", "BATCHINGS"]


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


def federated(shards, *, local_steps: int = 1, probs=None) -> BatchingSpec:
    """Federated rounds over K shards (see the module docstring).

    Args:
      shards: the shard of every row, an integer array of length N with values 0..K-1 (each
        shard non-empty).
      local_steps: steps per round on the round's shard (T in El Mekkaoui et al. 2021).
      probs: f, the probability of each shard being chosen for a round (default: N_s / N).
    """
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
        if f.shape != (K,):
            raise ValueError(f"probs must have one entry per shard ({K}), got shape {f.shape}")
        for i, p in enumerate(f):
            check_real(p, f"probs[{i}]", low=0.0, low_open=True)
        if abs(f.sum() - 1.0) > 1e-6:
            raise ValueError(f"probs must sum to 1, got {f.sum():g}")
    # Row indices of each shard, padded to the largest shard.
    table = np.zeros((K, int(sizes.max())), np.int32)
    for s in range(K):
        rows = np.nonzero(labels == s)[0]
        table[s, : rows.size] = rows

    def build(batch_size, num_data, num_steps):
        del num_steps
        if labels.size != num_data:
            raise ValueError(f"shards has {labels.size} entries but the data has {num_data} rows")
        if batch_size is None:
            raise ValueError("federated batching needs a batch_size (rows drawn per local step)")
        tab, size, logf, prob = jnp.asarray(table), jnp.asarray(sizes, jnp.int32), jnp.log(jnp.asarray(f)), jnp.asarray(f)

        def init(key):
            return FederatedState(jnp.zeros((), jnp.int32))

        def next_(state, key, data, step):
            key_shard, key_rows = jax.random.split(key)
            new_round = step % local_steps == 0
            shard = jnp.where(new_round, jax.random.categorical(key_shard, logf).astype(jnp.int32), state.shard)
            pick = jax.random.randint(key_rows, (batch_size,), 0, size[shard])
            idx = tab[shard, pick]
            info = {"shard": shard, "shard_size": size[shard], "shard_prob": prob[shard].astype(jnp.result_type(float))}
            return take_rows(data, idx), info, FederatedState(shard)

        return Batcher("federated", init, next_, batch_size)

    proportional = bool(np.allclose(f, sizes / sizes.sum(), rtol=1e-9, atol=0.0))
    # With f_s = N_s / N, N_s / (f_s n) = N / n: the usual minibatch scaling is unbiased.
    return BatchingSpec("federated", build, {"num_shards": K, "local_steps": local_steps,
                                             "probs": [round(float(p), 12) for p in f]}, proportional)


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
