"""Checkpoint settings: what a run records so that a resume is refused when it is not the same run.

The settings (the driver, the described hyperparameters, the run's arguments, the seed,
whether an init was given, a digest of the data) are built only when the run checkpoints:
hashing the data costs a pass over it (15 ms for 10 MB).
"""

from __future__ import annotations

import hashlib
import numbers
import os
import re
import warnings
from typing import Optional

import jax
import numpy as np

from heatbath.drivers.checkpoint import Checkpoint
from heatbath.models.target import Target

__all__ = ["describe", "open_checkpoint", "resume_mode", "data_digest"]


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


def _as_path(value, name: str) -> str:
    try:
        return os.fsdecode(os.fspath(value))
    except TypeError:
        raise ValueError(f"{name} must be a directory path, not {type(value).__name__}") from None


def resume_mode(checkpoint, resume):
    """(directory or None, mode) from the user's ``checkpoint`` and ``resume`` arguments.

    mode: None (no checkpoint), "fresh" (``checkpoint=path``: a new run; refused where a run was
    already committed), "must" (``resume=True`` with ``checkpoint=path``, or ``resume=path``:
    there must be a checkpoint to resume) or "auto" (``resume="auto"`` with ``checkpoint=path``:
    resume what is committed there, else start fresh; the same command line can be re-run after
    any kill).
    """
    path = None if checkpoint is None else _as_path(checkpoint, "checkpoint")
    if resume is None or (isinstance(resume, (bool, np.bool_)) and not resume):
        return path, (None if path is None else "fresh")
    if isinstance(resume, (bool, np.bool_)):
        if path is None:
            raise ValueError("resume=True needs checkpoint=path (or pass resume=path)")
        return path, "must"
    if isinstance(resume, str) and resume == "auto":
        if path is None:
            raise ValueError("resume='auto' needs checkpoint=path (to resume a directory named 'auto', pass "
                             "resume='./auto')")
        return path, "auto"
    if not isinstance(resume, (str, os.PathLike)):
        raise ValueError(f"resume must be None, True, 'auto' or a checkpoint directory, not {type(resume).__name__}")
    where = _as_path(resume, "resume")
    if path is not None and os.path.abspath(where) != os.path.abspath(path):
        raise ValueError("checkpoint and resume name different paths; pass one of them")
    return where, "must"


def open_checkpoint(checkpoint, resume, target: Target, kind: str, hyper, *, seed, init, processes: bool = False,
                    **settings):
    """(Checkpoint or None, resuming?) from the user's ``checkpoint`` and ``resume`` arguments.

    The run's settings (``kind``, the described ``hyper``-parameters, ``settings``, the seed,
    whether an init was given, a digest of the target's data) are built only when the run
    checkpoints: hashing the data costs a pass over it (15 ms for 10 MB). Warns about
    hyperparameters that a resume can only check by name.

    The returned Checkpoint is open: its directory was found writable (else
    :class:`~heatbath.drivers.checkpoint.CheckpointWriteError`, before anything is compiled)
    and its lock is held (a second run writing it is refused); the caller must release it with
    ``ckpt.close()`` (or ``with hold(ckpt):``) however the run ends. See :func:`resume_mode`
    for ``resume``; ``checkpoint=path`` on a directory that holds a committed checkpoint is
    refused rather than overwritten.

    ``processes``: the run spans several processes (``jax.distributed``,
    :func:`~heatbath.drivers.placement.spans_processes`). Process 0 alone creates, locks and
    writes the directory; every process reads it on resume, so it must be on a filesystem they
    share. The processes check here that they agree (all opened it, all fresh or all resuming
    the same commit), else every one of them raises.
    """
    path, mode = resume_mode(checkpoint, resume)
    if mode is None:
        return None, False
    unknown: list = []
    settings = dict(
        kind=kind, hyperparameters=describe(hyper, unknown), **settings,
        seed=seed if isinstance(seed, numbers.Integral) else "key", init=None if init is None else "given",
        data=data_digest(target), model=model_digest(target), jax=jax.__version__,
    )
    if unknown:
        warnings.warn(
            f"heatbath cannot record {sorted(set(unknown))} by value in the checkpoint (functions without "
            "parameters it can read): a resumed run is only checked to use functions of the same name, so "
            "make sure they compute the same thing",
            UserWarning,
            stacklevel=3,
        )
    ckpt = Checkpoint(path, settings, processes=processes)
    failed, resuming, done = None, False, -1
    try:
        if mode == "must":
            Checkpoint.read_meta(path)  # fails early, with a clear error, when there is nothing to resume
        ckpt.open(create=mode != "must")
        committed = ckpt.committed()  # under the lock: no other run is committing now
        if mode == "fresh" and committed:
            raise ValueError(
                f"the checkpoint directory {path} already holds a committed checkpoint: pass resume='auto' (resume "
                "it if there is one, else start fresh) or resume=True (resume it) to continue that run, or choose "
                "another directory (or delete this one) to start a new run"
            )
        resuming = mode == "must" or committed
        if resuming:
            # a corrupted or malformed checkpoint is refused now, not overwritten
            done = Checkpoint.read_meta(path)["segments_done"]
    except BaseException as err:
        failed = err
    if processes and not isinstance(failed, (KeyboardInterrupt, SystemExit)):
        failed = _agree_across_processes(path, failed, resuming, done)
    if failed is not None:
        ckpt.close()
        raise failed
    return ckpt, resuming


def _agree_across_processes(path, failed, resuming, done):
    """The error every process of a multi-process run raises (None: they agree): one that failed to
    open the checkpoint makes all fail; so do processes that see different commits."""
    from jax.experimental import multihost_utils

    mine = np.array([failed is None, resuming, done], np.int64)
    seen = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 3)
    if failed is not None:
        return failed
    bad = np.nonzero(seen[:, 0] == 0)[0]
    if bad.size:
        return ValueError(f"process(es) {bad.tolist()} could not open the checkpoint at {path} (their errors say why)")
    if not (seen == seen[0]).all():
        return ValueError(
            f"the processes see different checkpoints at {path} (resuming, segments done per process: "
            f"{seen[:, 1:].tolist()}): a multi-process run's checkpoint directory must be on a filesystem every "
            "process shares (process 0 writes it, all read it)"
        )
    return None


def model_digest(target: Target) -> Optional[str]:
    """A digest of the program that computes the log density, so that a resume with an edited
    model (same function name, another body, another prior scale or prior-mean array) is
    refused: the jaxpr of ``target.terms`` at the example parameters on two data rows (all rows
    for a target that cannot be minibatched), with the
    values of every constant it closes over. None when the target has no example parameters.
    (Object addresses that some primitives print are dropped; a jaxpr from another JAX version
    may differ, so :meth:`Checkpoint.check_settings` compares it only under the same version.)
    """
    try:
        example = target.example_params()
    except ValueError:
        return None
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), example)
    # A full-batch-only target (latent variables in its data plate: eight schools) is traced on
    # its full data, which its parameters' shapes are tied to.
    rows = target.data if target.minibatch_error else jax.tree.map(lambda x: x[:2], target.data)
    closed = jax.make_jaxpr(target.terms)(params, rows)
    h = hashlib.blake2b(digest_size=12)
    h.update(re.sub(r" at 0x[0-9a-fA-F]+", "", str(closed.jaxpr)).encode())
    for const in closed.consts:
        if jax.dtypes.issubdtype(getattr(const, "dtype", None), jax.dtypes.prng_key):
            const = jax.random.key_data(const)  # a typed key the target closes over (no numpy view)
        arr = np.asarray(const)
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def data_digest(target: Target) -> str:
    """A digest of the target's data (for checkpoint settings: resuming on other data is refused)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(str(target.name).encode())
    for leaf in jax.tree.leaves(target.data):
        arr = np.asarray(leaf)
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def stored_setting(checkpoint, resume, name):
    """A setting of the checkpoint this call would resume, if there is one (else None)."""
    try:
        path, mode = resume_mode(checkpoint, resume)
        if mode is None or mode == "fresh":
            return None
        return (Checkpoint.read_meta(path).get("settings") or {}).get(name)
    except Exception:  # noqa: BLE001 - nothing to resume (yet), or unreadable: the run's own checks say so later
        return None


def tuned_digest(sampler, affine) -> dict:
    """What the automatic tuning chose, for the checkpoint's settings (a resume tunes again and
    must arrive at the same): the tuned hyperparameters (exact float reprs) and a digest of the
    metric (:class:`heatbath.drivers.metric.Affine`, or None)."""
    hp = sampler.hyperparameters
    out = {k: repr(float(hp[k])) for k in ("step_size", "friction", "decay") if isinstance(hp.get(k), float)}
    if affine is not None:
        out["metric"] = hashlib.sha256(np.ascontiguousarray(affine.mu, np.float64).tobytes()
                                       + np.ascontiguousarray(affine.L, np.float64).tobytes()).hexdigest()[:16]
    return out
