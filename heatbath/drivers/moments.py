"""Bounded memory: draws collected into preallocated host arrays, or running moments only.

With ``keep="moments"`` each chunk folds its recorded values into per-chain Welford moments
on the device (and the last K draws into a SWAG ring buffer); after each chunk the device
moments are merged into the host's in float64 (Chan, Golub & LeVeque 1979) and reset, so the
float32 recursion never runs long enough to drift.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.drivers import hostmem as _hostmem

__all__ = ["moments_init", "moments_update", "Collector", "ChunkDraws", "host_moments", "merge_moments", "MOMENT_CHUNK"]

MOMENT_CHUNK = 10_000  # draws per chunk when keeping moments


def moments_init(example, num_chains: int, swag_rank: int):
    """Running moments (Welford) of the recorded values, per chain, and the SWAG ring buffer."""
    # Zeros made on the host and copied: an eager jnp.zeros compiles a program per shape (13 for
    # a 3-layer network's first call).
    def zeros(shape, dtype=None):
        return jax.device_put(np.zeros(shape, dtype or jnp.result_type(float)))

    mean = jax.tree.map(lambda x: zeros((num_chains,) + jnp.shape(x)), example)
    ring = jax.tree.map(lambda x: zeros((num_chains, swag_rank) + jnp.shape(x)), example)
    return {"count": zeros((), jnp.int32), "mean": mean, "m2": mean, "ring": ring,
            "ring_count": zeros((), jnp.int32)}


def moments_update(acc, values, swag_rank: int):
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


empty_host = _hostmem.empty  # the draws' buffer without NumPy's huge-page advice


class Collector:
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
            self.arrays = [empty_host((self.total,) + np.shape(x)[1:], np.asarray(x).dtype) for x in leaves]
        n = np.shape(leaves[0])[0] if leaves else 0
        for dst, src in zip(self.arrays, leaves):
            dst[self.filled : self.filled + n] = src
        self.filled += n

    def result(self):
        if self.arrays is None:
            return {}
        return jax.tree.unflatten(self.treedef, [a[: self.filled] for a in self.arrays])



class ChunkDraws:
    """The run's draws and infos on the host (two :class:`Collector` s), chunk by chunk.

    With ``defer`` (no checkpoint, no running moments) a chunk's copy waits until the next chunk
    has been dispatched, so the device runs it during the copy (JAX dispatches asynchronously);
    :meth:`flush` copies the one waiting (after the loop, also after Ctrl-C). With
    ``keep_pending`` (a checkpoint) each chunk's host copy is also kept in :attr:`pending` for
    the next commit, as its own array (a view would pin the chunk's whole device buffer)."""

    def __init__(self, total: int, defer: bool, keep_pending: bool):
        self.draws, self.infos = Collector(total), Collector(total)
        self.defer, self.keep_pending = defer, keep_pending
        self.waiting = None  # (segment, device (values, infos), length) of the chunk whose copy waits
        self.pending = []

    def add(self, segment: int, out, length: int):
        """A sampling chunk's output (rows past ``length`` unused), just dispatched."""
        self.flush()
        self.waiting = (segment, out, length)
        if not self.defer:
            self.flush()

    def flush(self):
        if self.waiting is None:
            return
        segment, out, length = self.waiting
        self.waiting = None
        values, info = jax.tree.map(lambda x: np.array(x[:length]) if self.keep_pending and x.shape[0] != length
                                    else x[:length], _to_host(out))
        self.draws.add(values)
        self.infos.add(info)
        if self.keep_pending:
            self.pending.append((segment, (values, info)))


def host_moments(acc):
    """Running moments kept on the host in float64: count, mean and M2 (sum of squared deviations)."""
    zeros = jax.tree.map(lambda x: np.zeros(np.shape(x), np.float64), acc["mean"])
    return {"count": np.zeros((), np.int64), "mean": zeros, "m2": jax.tree.map(np.copy, zeros)}


def _to_host(tree):
    from heatbath.drivers.placement import to_host

    return to_host(tree)


def merge_moments(host, acc, reset: bool = True):
    """Fold one chunk's device moments into the host's (Chan, Golub & LeVeque 1979), then zero
    the device's count, mean and M2 (the SWAG ring buffer carries on).

    The first chunk's moments are the host's as they are (the merge with nothing is exact).
    ``reset=False`` (the run's last chunk) leaves the device's accumulator as it is: nothing
    reads it again. At 670k weights these two save about 12 ms per call on the CPU."""
    nb = int(acc["count"])
    if nb == 0:
        return host, acc
    na = int(host["count"])
    n = na + nb
    mean_b = jax.tree.map(lambda x: np.asarray(x, np.float64), _to_host(acc["mean"]))
    m2_b = jax.tree.map(lambda x: np.asarray(x, np.float64), _to_host(acc["m2"]))
    if na == 0:
        mean, m2 = mean_b, m2_b
    else:
        delta = jax.tree.map(lambda mb, ma: mb - ma, mean_b, host["mean"])
        mean = jax.tree.map(lambda ma, d: ma + d * (nb / n), host["mean"], delta)
        m2 = jax.tree.map(lambda qa, qb, d: qa + qb + d * d * (na * nb / n), host["m2"], m2_b, delta)
    if reset:
        acc = dict(acc, count=jnp.zeros_like(acc["count"]), mean=jax.tree.map(jnp.zeros_like, acc["mean"]),
                   m2=jax.tree.map(jnp.zeros_like, acc["m2"]))
    return {"count": np.asarray(n, np.int64), "mean": mean, "m2": m2}, acc
