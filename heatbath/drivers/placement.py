"""Placement: chains or data rows split over devices (``shard="chains"`` / ``"data"``).

The same compiled loop runs on one device or many: the carry (chains) or the data rows get
a ``NamedSharding`` over a one-axis mesh and XLA partitions the scan. With ``shard="data"``
a minibatch is a masked local gather plus one all-reduce, and full-data gradients are
sharded reductions.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

__all__ = ["shardings", "place"]


def place(tree, sharding):
    return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


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


