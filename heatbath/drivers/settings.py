"""Checkpoint settings: what a run records so that a resume is refused when it is not the same run.

The settings (the driver, the described hyperparameters, the run's arguments, the seed,
whether an init was given, a digest of the data) are built only when the run checkpoints:
hashing the data costs a pass over it (15 ms for 10 MB).
"""

from __future__ import annotations

import hashlib
import numbers
import os
import warnings
from typing import Optional

import jax
import numpy as np

from heatbath.drivers.checkpoint import Checkpoint
from heatbath.models.target import Target

__all__ = ["describe", "open_checkpoint", "data_digest"]


def describe(obj, unknown: Optional[list] = None, where: str = "hyperparameters"):
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
        return {str(k): describe(v, unknown, f"{where}.{k}") for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return [describe(v, unknown, f"{where}[{i}]") for i, v in enumerate(obj)]
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
        return {f: describe(getattr(obj, f), unknown, f"{where}.{f}") for f in obj._fields}
    text = repr(obj)
    if " at 0x" in text:
        unknown.append(where)
        return type(obj).__name__
    return text


def open_checkpoint(checkpoint, resume, target: Target, kind: str, hyper, *, seed, init, **settings):
    """(Checkpoint or None, resuming?) from the user's ``checkpoint`` and ``resume`` arguments.

    The run's settings (``kind``, the described ``hyper``-parameters, ``settings``, the seed,
    whether an init was given, a digest of the target's data) are built only when the run
    checkpoints: hashing the data costs a pass over it (15 ms for 10 MB). Warns about
    hyperparameters that a resume can only check by name.
    """
    resuming = resume is not None and resume is not False
    if not resuming and checkpoint is None:
        return None, False
    unknown: list = []
    settings = dict(
        kind=kind, hyperparameters=describe(hyper, unknown), **settings,
        seed=seed if isinstance(seed, numbers.Integral) else "key", init=None if init is None else "given",
        data=data_digest(target),
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


def data_digest(target: Target) -> str:
    """A digest of the target's data (for checkpoint settings: resuming on other data is refused)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(str(target.name).encode())
    for leaf in jax.tree.leaves(target.data):
        arr = np.asarray(leaf)
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
