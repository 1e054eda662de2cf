"""Placement: chains or data rows split over devices (``shard="chains"`` / ``"data"``).

The same compiled loop runs on one device or many: the carry (chains) or the data rows get
a ``NamedSharding`` over a one-axis mesh and XLA partitions the scan. With ``shard="data"``
a minibatch is a masked local gather plus one all-reduce, and full-data gradients are
sharded reductions. Across several processes (``jax.distributed.initialize`` on each, then
the same program everywhere) the mesh spans every process's devices: :func:`place` builds the
global arrays from each process's own slices and :func:`to_host` gathers results back.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

__all__ = ["shardings", "place", "to_host"]


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


def shardings(shard: Optional[str], devices, num_chains: int, num_data: int):
    """(carry sharding, data sharding, replicated) for shard = None, 'chains' or 'data'."""
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
        if num_data % n:
            raise ValueError(
                f"shard='data' needs the {num_data} data rows to split evenly over {n} devices; drop "
                f"{num_data % n} row(s) or use shard='chains'"
            )
        return replicated, split, replicated
    raise ValueError(f"shard must be None, 'chains' or 'data', got {shard!r}")


