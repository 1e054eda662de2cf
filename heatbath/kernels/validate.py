"""Eager checks of user-supplied hyperparameters, shared by every constructor.

One set of rules everywhere, applied on the host before anything is traced or compiled:

- a value of the wrong *type* (a string, a bool where a number is expected, a float where
  an integer is expected, ...) raises ``TypeError``;
- a value of the right type but outside its domain (negative, zero, NaN, infinite, out of
  an interval) raises ``ValueError``;
- every message starts with the argument's name and shows the value received, e.g.
  ``num_inner must be >= 1, got 0``.

Bools are never accepted as numbers (``True`` is an ``int`` in Python, but ``num_mc=True`` is
a mistake, not 1).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_bool", "check_int", "check_real", "check_unit", "check_tree", "check_count", "check_choice",
           "seed_key", "INT32_MAX"]


def _is_real_scalar(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    if isinstance(value, (np.ndarray, np.generic, jax.Array)) and np.ndim(value) == 0:
        dtype = np.asarray(value).dtype if not isinstance(value, jax.Array) else value.dtype
        return jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    return False


def check_bool(value, name: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (numpy bools too); a ``TypeError`` otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_int(value, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int``: an integer (not a bool, not a float) in [minimum, maximum]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        if not (isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0
                and jnp.issubdtype(value.dtype, jnp.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def _interval(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}"


def check_real(
    value,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` in the interval given by ``low`` / ``high``.

    ``low_open`` / ``high_open`` exclude the end points: ``check_real(a, "decay", low=0,
    high=1, high_open=True)`` accepts [0, 1). Integers and 0-d numeric arrays are accepted.
    """
    if not _is_real_scalar(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if below or above:
        raise ValueError(f"{name} must be {_interval(low, high, low_open, high_open)}, got {v:g}")
    return v


def check_unit(value, name: str, *, low_open: bool = False) -> float:
    """A decay / averaging constant in [0, 1) (or (0, 1) with ``low_open``)."""
    return check_real(value, name, low=0.0, high=1.0, low_open=low_open, high_open=True)


def check_tree(value, name: str, *, positive: bool) -> Any:
    """A finite scalar or a pytree of finite numeric arrays, all > 0 (``positive``) or >= 0.

    Returns a ``float`` for a scalar, otherwise the pytree with its leaves as float arrays
    (the default float dtype). Whether the tree matches the position is checked later, when
    the position is known (:func:`heatbath.kernels.tree.leafwise`).
    """
    bound = "> 0" if positive else ">= 0"
    if value is None:
        raise TypeError(f"{name} must be a number or a pytree of arrays, got None")
    if _is_real_scalar(value):
        v = float(value)
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise ValueError(f"{name} must be {bound} and finite, got {v}")
        return v
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a number or a pytree of arrays, got {value!r}")
    leaves = jax.tree_util.tree_flatten_with_path(value)[0]
    if not leaves:
        raise ValueError(f"{name} is an empty pytree")
    for path, leaf in leaves:
        where = f"{name} leaf {jax.tree_util.keystr(path)}" if path else name
        if isinstance(leaf, (bool, np.bool_, str, bytes)):
            raise TypeError(f"{where} is not numeric: {leaf!r}")
        try:
            arr = np.asarray(leaf, dtype=float)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{where} is not numeric: {err}") from err
        if not np.all(np.isfinite(arr)) or np.any(arr < 0) or (positive and np.any(arr == 0)):
            raise ValueError(f"{where} must be {bound} and finite")
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)), value)


INT32_MAX = 2**31 - 1  # heatbath counts steps and draws in int32


def check_count(value, name: str, minimum: int, allow_none: bool = False):
    """An integer argument in [minimum, 2**31 - 1] (a step or draw count), or None if allowed."""
    if value is None and allow_none:
        return None
    return check_int(value, name, minimum=minimum, maximum=INT32_MAX)


def check_choice(value, name: str, choices):
    """``value`` if it is one of the strings ``choices``; a ``ValueError`` otherwise."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def seed_key(seed):
    """A JAX key from an integer seed (64 bits) or a single JAX key."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            if seed.shape != ():
                raise ValueError(f"seed must be a single JAX key (shape ()), got a key array of shape {seed.shape}")
            return seed
        raise TypeError(f"seed must be an integer or a JAX key, got {seed!r}")
    if not -(2**63) <= int(seed) < 2**63:
        raise ValueError(f"seed must fit in 64 bits, got {seed}")
    from heatbath.drivers.keys import key_from_seed  # no XLA program for the usual seeds

    return key_from_seed(int(seed))
