"""The drivers' caches: one small LRU keyed by identity, and the content keys of model arguments.

Repeated calls of ``hb.sample`` / ``optimize`` / ``fit`` (and the NumPyro kernel) reuse what an
earlier call built for the same objects: the NumPyro target of a model and arguments of equal
contents, the compiled chunks of a loop, the optimizer wrapped around an optax transform, the
VI method's recording step. Every such cache is an :class:`IdentityCache`: an entry holds
strong references to the objects its key names by ``id``, so an id is never reused while its
entry lives, and a hit is confirmed by identity. :func:`clear_caches` empties all of them.
"""

from __future__ import annotations

import collections
import hashlib
import numbers
import threading
import types
import zlib
from typing import Callable

import jax
import numpy as np

from heatbath.kernels.schedules import Tuned

__all__ = ["IdentityCache", "array_digest", "fingerprint", "settings_key", "sampler_key", "target_key", "function_key",
           "clear_caches", "relieve_mapping_pressure"]

_ALL: list = []


class IdentityCache:
    """An LRU of at most ``size`` entries ``key -> value``, each entry pinning ``owners``.

    ``get(key, owners, build)`` returns the cached value when ``key`` is present and its
    pinned owners are the same objects (``is``), else ``build()``, stored.
    """

    def __init__(self, size: int, check_mappings: bool = False):
        self.size = size
        # A build here (a compile, for the caches of compiled loops and targets) makes the next
        # public call count the process's memory mappings (relieve_mapping_pressure).
        self.check_mappings = check_mappings
        self.entries: "collections.OrderedDict" = collections.OrderedDict()
        self.lock = threading.Lock()  # lookups and insertions from several threads (builds run outside it)
        _ALL.append(self)

    def get(self, key, owners: tuple, build: Callable):
        with self.lock:
            hit = self.entries.get(key)
            if hit is not None and len(hit[0]) == len(owners) and all(a is b for a, b in zip(hit[0], owners)):
                self.entries.move_to_end(key)
                return hit[1]
        if self.check_mappings:
            _BUILDS[0] += 1  # counted at the next call's start (relieve_mapping_pressure), never mid-call
        value = build()
        with self.lock:
            self.entries[key] = (owners, value)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return value

    def clear(self):
        with self.lock:
            self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)


_DEVICE_DIGESTS = IdentityCache(16)


def array_digest(value) -> bytes:
    """A CRC-32 of an array's bytes, with its shape and dtype: a cache key, not a security
    digest (1.4 ms per 10 MB, where BLAKE2 took 7 ms; an in-place edit that keeps the CRC has
    probability 2**-32).

    Host memory is hashed on every call: a NumPy array may be edited in place, and on the CPU a
    JAX array may share its memory with one (``jax.device_put``, DLPack). An array on an
    accelerator cannot, so its digest is memoised by identity and its bytes cross to the host
    once.
    """
    head = f"{value.shape} {np.dtype(value.dtype).str} ".encode()

    def digest():
        flat = np.ascontiguousarray(np.asarray(value)).reshape(-1).view(np.uint8)
        return head + zlib.crc32(flat).to_bytes(4, "little")

    on_device = isinstance(value, jax.Array) and any(d.platform != "cpu" for d in value.devices())
    if on_device:
        return _DEVICE_DIGESTS.get(id(value), (value,), digest)
    return digest()


def fingerprint(model, args, kwargs):
    """A key for a NumPyro model and its arguments: the model's identity and, per argument, a
    digest of an array's contents (:func:`array_digest`: equal data passed as a new array
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
            h.update(array_digest(value))
        elif value is None or isinstance(value, (bool, numbers.Number, str)):
            h.update(repr((type(value).__name__, value)).encode())
        else:
            return None
    return id(model), h.hexdigest()


class _Unkeyable(Exception):
    pass


def _key(value, pins: list, depth: int = 0):
    """A hashable description of ``value``: values for numbers, strings and arrays (digests),
    structure for containers and heatbath's own objects, identity (pinned) for functions and
    anything else."""
    if depth > 12:
        raise _Unkeyable
    if isinstance(value, Tuned):  # an argument of the compiled loop, not a constant of it
        return ("tuned", value.name)
    if value is None or isinstance(value, (bool, numbers.Number, str, bytes)):
        return (type(value).__name__, value)
    if isinstance(value, jax.core.Tracer):
        raise _Unkeyable
    if isinstance(value, (np.ndarray, jax.Array)):
        if value.dtype == object:
            raise _Unkeyable
        return ("array", array_digest(value))
    if isinstance(value, (np.generic,)):
        return ("np", str(value.dtype), value.item())
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_key(v, pins, depth + 1) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((repr(k), _key(v, pins, depth + 1)) for k, v in value.items()),
                                     key=lambda kv: kv[0])))
    from heatbath.samplers.base import Sampler  # drivers sit above samplers

    if isinstance(value, Sampler):
        inner = sampler_key(value)
        if inner is None:
            raise _Unkeyable
        pins.extend(inner[1])
        return inner[0]
    from heatbath.kernels.schedules import Described

    if isinstance(value, Described):  # heatbath's schedules: the description records the parameters
        return ("schedule", value._fn.__code__, value.description)
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)) or \
            not type(value).__module__.startswith("heatbath."):
        pins.append(value)
        return ("id", id(value))
    # Fields the compiled loop receives as arguments (``cache_ignores``: a control-variate
    # centre arrives in the estimator's state) do not enter the key.
    ignores = getattr(type(value), "cache_ignores", ())
    fields = {k: v for k, v in vars(value).items() if k not in ignores}
    return (type(value), _key(fields, pins, depth + 1))


def settings_key(value):
    """(key, pins) describing ``value`` by its settings (:func:`_key`), or None when it cannot be
    (a tracer, an object array): then callers key on identity."""
    pins: list = []
    try:
        return _key(value, pins), tuple(pins)
    except (_Unkeyable, TypeError):
        return None


def sampler_key(sampler):
    """(key, pins) of a sampler by the constructor and the arguments that built its step
    (:func:`heatbath.samplers.base.make_sampler` records them on the step function), so that a
    new sampler object with the same settings finds the loop compiled for the first one.
    Identity (pinning the sampler) for a sampler built otherwise."""
    settings = getattr(sampler.step, "_heatbath_settings", None)
    if settings is not None:
        out = settings_key((settings, sampler.gradient, sampler.uses, sampler.steps_per_draw, sampler.checks_state,
                            sampler.checks_start_lp))
        if out is not None:
            return ("sampler", out[0]), out[1]
    return ("sampler-id", id(sampler)), (sampler,)


def function_key(fn):
    """(key, pin) of a function a compiled loop calls: its identity, or for a function that
    stands for another one with values the loop takes as arguments (``fn._heatbath_base =
    (tag, base)``: a whitened target's, whose metric is an argument, see
    :mod:`heatbath.drivers.metric`) the tag and the base function's key."""
    base = getattr(fn, "_heatbath_base", None)
    if base is None:
        return id(fn), fn
    tag, inner = base
    key, pin = function_key(inner)
    return (tag, key), pin


def target_key(target):
    """(key, pins) of a target by what a compiled loop reads from it (its functions, by identity,
    and ``num_data``), not by its data, which the loop takes as an argument: ``data=`` on a
    Target, which builds a new Target around the same functions, finds the loop compiled for
    the first one; a whitened target (:func:`function_key`) finds the loop compiled for another
    metric of the same target."""
    keys, pins = zip(*(function_key(f) for f in (target.terms, target.constrain_fn, target.nonsmooth)))
    return (("target", type(target), keys, target.num_data, target.minibatch_error, target.discrete_error), pins)


def clear_caches():
    """Drop the compiled loops, NumPyro targets and wrappers that heatbath keeps for repeated calls.

    ``hb.sample`` / ``optimize`` / ``fit`` reuse a compiled chunk when called again with the
    same sampler and target objects (or the same NumPyro model and arguments of equal
    contents, see :func:`array_digest`) and the same shapes; the caches hold up to 32
    compiled loops and 8 targets, with their data. Call this to release that memory.
    """
    for cache in _ALL:
        cache.clear()


MAPPING_FRACTION = 0.5  # of the kernel's limit on a process's memory mappings (vm.max_map_count)
_BUILDS = [0, 0]  # builds of the checking caches: made, and seen by the last count


def _mapping_counts():
    """``(mappings this process holds, the kernel's limit)``, or None where /proc does not say (not Linux)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        count = 0
        with open("/proc/self/maps", "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                count += chunk.count(b"\n")
        return count, limit
    except (OSError, ValueError):
        return None


def relieve_mapping_pressure(stacklevel: int = 3) -> bool:
    """Empty the caches (:func:`clear_caches`) when this process holds more than half of the
    kernel's limit on memory mappings; returns whether it did.

    Every program XLA compiles for the CPU maps its code into the process (about 2,200
    mappings per ``hb.sample`` call of a new NumPyro model with the default warmup, most of
    them held by the caches' compiled loops and targets). Linux caps a process's mappings
    (``vm.max_map_count``, 65,530 by default); past it LLVM cannot allocate memory for the next
    compile and the process crashes (seen in a process that ran 17 defaults-table rows). With
    the caches emptied the count stays flat (about 1,100 over 12 such calls, measured). Called
    at the start of ``hb.sample``, ``optimize`` and ``fit``, never within a call (what the call
    builds stays until it is done); it counts only when the caches of compiled loops or targets
    gained an entry since the last count (reading ``/proc/self/maps`` costs about 20 ms at
    20,000 mappings). The next calls compile again.
    """
    if _BUILDS[0] == _BUILDS[1]:
        return False
    _BUILDS[1] = _BUILDS[0]
    counts = _mapping_counts()
    if counts is None or counts[0] <= MAPPING_FRACTION * counts[1]:
        return False
    clear_caches()
    import gc
    import warnings

    gc.collect()
    warnings.warn(
        f"heatbath emptied its caches of compiled programs: this process held {counts[0]} memory mappings of the "
        f"kernel's limit of {counts[1]} (vm.max_map_count), mostly compiled code; past the limit the next compile "
        "fails. Repeated calls on the same model compile again once", UserWarning, stacklevel=stacklevel)
    return True

