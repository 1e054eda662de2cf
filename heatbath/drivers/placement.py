"""Placement: chains or data rows split over devices (``shard="chains"`` / ``"data"``).

The same compiled loop runs on one device or many: the carry (chains) or the data rows get
a ``NamedSharding`` over a one-axis mesh and XLA partitions the scan. With ``shard="data"``
a minibatch is a masked local gather plus one all-reduce, and full-data gradients are
sharded reductions. Across several processes (``jax.distributed.initialize`` on each, then
the same program everywhere) the mesh spans every process's devices: :func:`place` builds the
global arrays from each process's own slices and :func:`to_host` gathers results back.

Federated rounds (``batching.federated``) with ``shard="data"`` place whole shards (clients) on
devices (:func:`shard_layout`, :func:`place_data`): the shards are assigned to the devices
balancing their rows (largest shard first, to the device holding the fewest rows; a shard is
never split, so there must be at least as many shards as devices), the rows are reordered so
that device d's block holds only its shards' rows, and every block is padded to the longest
with copies of one of its own rows, which no shard's index ever selects. The batcher indexes
this layout (``BatchingSpec.relayout``) and the recorded values see the rows in their own order
(one gather, dropped by the compiler when the record ignores the data), so the draws are the
single-device draws.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.drivers.cache import IdentityCache

__all__ = ["shardings", "place", "to_host", "Layout", "shard_layout", "place_data", "spans_processes"]


def place(tree, sharding):
    """``tree`` on ``sharding``. Across several processes (``jax.distributed``) every process
    holds the same full values (the same seed, data and program), and each builds the global
    array from the slices its own devices own."""
    if sharding.is_fully_addressable:
        return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        if _is_key(x):  # typed PRNG keys: placed as their key data
            data = one(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(one, tree)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_host(tree):
    """``jax.device_get``, also for arrays spread over several processes (gathered to every
    process with ``multihost_utils.process_allgather``)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            if _is_key(x):
                data = multihost_utils.process_allgather(jax.random.key_data(x), tiled=True)
                return jax.random.wrap_key_data(np.asarray(data), impl=jax.random.key_impl(x))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return x if _is_key(x) else jax.device_get(x)

    return jax.tree.map(one, tree)


def shardings(shard: Optional[str], devices, num_chains: int, num_data: int, batching=None):
    """(carry sharding, data sharding, replicated) for shard = None, 'chains' or 'data'.

    With federated rounds (``batching`` a federated spec) and shard='data' the rows need not
    split evenly (each device's block is padded, :func:`place_data`), but every device needs a
    whole shard: at least as many shards as devices."""
    if shard is None:
        return None
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if isinstance(devices, (str, bytes)):
        raise TypeError(f"devices must be a list of JAX devices, got the string {devices!r}: pass e.g. "
                        f"jax.devices({devices!r}) or leave it out (all devices)")
    try:
        devices = list(jax.devices() if devices is None else devices)
    except TypeError as err:
        raise TypeError(f"devices must be a list of JAX devices (e.g. jax.devices()), got {devices!r}") from err
    n = len(devices)
    if n == 0:
        raise ValueError("devices is empty: pass at least one device (default: jax.devices())")
    bad = [d for d in devices if not isinstance(d, jax.Device)]
    if bad:
        raise TypeError(f"devices must be JAX devices (e.g. jax.devices()), got {bad[0]!r}")
    if len(set(devices)) != n:
        raise ValueError(f"devices lists a device more than once ({devices}): each device holds one shard")
    mesh = Mesh(np.array(devices), ("x",))
    split = NamedSharding(mesh, PartitionSpec("x"))
    replicated = NamedSharding(mesh, PartitionSpec())
    if shard == "chains":
        if num_chains % n:
            raise ValueError(f"shard='chains' needs num_chains divisible by the {n} devices, got {num_chains}")
        return split, replicated, replicated
    if shard == "data":
        if getattr(batching, "relayout", None) is not None:
            K = int(batching.params["num_shards"])
            if K < n:
                raise ValueError(
                    f"shard='data' with federated rounds places whole shards (clients) on devices, and {K} shards "
                    f"cannot fill {n} devices: pass devices=jax.devices()[:{K}] (or fewer), or shard='chains'"
                )
            return replicated, split, replicated
        if num_data % n:
            raise ValueError(
                f"shard='data' needs the {num_data} data rows to split evenly over {n} devices; drop "
                f"{num_data % n} row(s) or use shard='chains'"
            )
        return replicated, split, replicated
    raise ValueError(f"shard must be None, 'chains' or 'data', got {shard!r}")




class Layout(NamedTuple):
    """Federated rows grouped by device (:func:`shard_layout`)."""

    owner: np.ndarray  # (K,) the device holding each shard
    order: np.ndarray  # (D * block,) the data row at each laid-out position (padding: a copy of a row of that device)
    position: np.ndarray  # (N,) the laid-out position of each data row
    block: int  # rows per device


def shard_layout(shards, num_devices: int) -> Layout:
    """Whole shards per device: shard s (rows ``shards == s``) goes to ``owner[s]``, largest shard
    first, each to the device that holds the fewest rows so far (ties: the lowest device).
    Device d's block of ``block`` rows holds its shards in shard order (each shard's rows in
    data order), then copies of its first row up to ``block``, the largest device's row count."""
    labels = np.asarray(shards)
    K, D = int(labels.max()) + 1, int(num_devices)
    if K < D:
        raise ValueError(f"{K} shards cannot fill {D} devices: a shard is never split over devices")
    sizes = np.bincount(labels, minlength=K)
    owner = np.zeros(K, np.int32)
    load = np.zeros(D, np.int64)
    for s in np.argsort(-sizes, kind="stable"):
        d = int(np.argmin(load))
        owner[s] = d
        load[d] += sizes[s]
    block = int(load.max())
    order = np.zeros(D * block, np.int64)
    position = np.zeros(labels.size, np.int32)
    for d in range(D):
        rows = np.concatenate([np.nonzero(labels == s)[0] for s in np.nonzero(owner == d)[0]])
        start = d * block
        order[start: start + rows.size] = rows
        order[start + rows.size: start + block] = rows[0]
        position[rows] = start + np.arange(rows.size, dtype=np.int32)
    return Layout(owner, order, position, block)


_LAYOUTS = IdentityCache(16)  # (layout, laid-out spec, record): the same objects for the same run settings


def place_data(data, sharding, spec, estimator, record):
    """(data on ``sharding``, batching spec, record) for ``shard="data"``.

    Federated rounds: the rows in :func:`shard_layout` order (whole shards per device, blocks
    padded), the spec indexing that layout, and ``record`` reading the rows in data order.
    Otherwise the data split evenly, spec and record as given. A gradient estimator that reads
    the full data (control variates, SVRG) would read the padding rows: refused."""
    if getattr(spec, "relayout", None) is None:
        return place(data, sharding), spec, record
    if estimator.rows_at_init or estimator.refresh_every:
        raise ValueError(
            f"shard='data' with federated rounds places whole shards on devices with padding rows, which the "
            f"{estimator.name!r} gradient's full-data passes would read: use the naive gradient or shard='chains'"
        )
    num_devices = int(sharding.mesh.devices.size)

    def build():
        layout = shard_layout(spec.shards, num_devices)
        laid_record = None
        if record is not None:
            inverse = layout.position

            def laid_record(position, rows):
                return record(position, jax.tree.map(lambda x: jnp.take(x, jnp.asarray(inverse), axis=0), rows))

        return layout, spec.relayout(layout.position), laid_record

    layout, laid_spec, laid_record = _LAYOUTS.get((id(spec), id(record), num_devices), (spec, record), build)
    laid = jax.tree.map(lambda x: np.take(np.asarray(x), layout.order, axis=0), data)
    return place(laid, sharding), laid_spec, laid_record


def spans_processes(shard: Optional[str], devices) -> bool:
    """Whether a run with ``shard`` over ``devices`` (default: all) spans several processes
    (``jax.distributed``): then its checkpoint is written by one process only."""
    if shard is None or jax.process_count() == 1:
        return False
    devs = jax.devices() if devices is None else list(devices)
    return len({d.process_index for d in devs}) > 1
