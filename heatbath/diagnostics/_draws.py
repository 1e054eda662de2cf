"""Shared input handling for the diagnostics: draws as float64 matrices, finiteness, local x64."""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

__all__ = ["as_matrix", "check_finite", "x64", "is_array"]


def x64():
    """A context in which JAX computes in 64 bits (``jax.enable_x64``; older JAX: experimental)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # pragma: no cover - JAX < 0.7

    return enable_x64()  # pragma: no cover


def is_array(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array, np.generic))


def _real(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf" and not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def as_matrix(tree, sample_axes: Optional[int], what: str) -> tuple[np.ndarray, tuple]:
    """``tree`` as a float64 (n, d) matrix (one raveled draw per row) and its leading axes.

    A bare array: (n,) -> (n, 1); (n, d); (chain, draw, d) -> (chain * draw, d) (its default
    ``sample_axes`` is 2). A pytree: every leaf has the same ``sample_axes`` (default 1) leading
    axes; each draw's leaves are raveled and concatenated in ``jax.tree.leaves`` order.
    """
    if sample_axes is not None and (isinstance(sample_axes, bool) or sample_axes not in (1, 2)):
        raise ValueError(f"sample_axes must be 1 (n, ...) or 2 (chain, draw, ...), got {sample_axes!r}")
    if is_array(tree):
        arr = np.asarray(tree)
        axes = sample_axes if sample_axes is not None else (2 if arr.ndim == 3 else 1)
        if sample_axes is None and arr.ndim > 3:
            raise ValueError(
                f"{what} has shape {arr.shape}: pass sample_axes=1 for (n, *shape) or 2 for (chain, draw, *shape)"
            )
        leaves = [arr]
    else:
        leaves = [np.asarray(v) for v in jax.tree.leaves(tree)]
        if not leaves:
            raise ValueError(f"{what} is empty: no arrays")
        axes = sample_axes if sample_axes is not None else 1
    lead = None
    cols = []
    for leaf in leaves:
        if leaf.ndim < axes:
            raise ValueError(f"{what}: a leaf of shape {leaf.shape} lacks the {axes} leading sample axis(es)")
        if lead is None:
            lead = leaf.shape[:axes]
        elif leaf.shape[:axes] != lead:
            raise ValueError(f"{what}: leaves have different leading (sample) axes {lead} and {leaf.shape[:axes]}")
        if int(np.prod(lead)) == 0:
            raise ValueError(f"{what} holds no draws (leading axes {lead})")
        cols.append(_real(leaf, what).reshape(int(np.prod(lead)), -1))
    mat = np.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]
    if mat.shape[1] == 0:
        raise ValueError(f"{what} has no values per draw (leading axes {lead})")
    return np.ascontiguousarray(mat), tuple(lead)


def check_finite(mat: np.ndarray, what: str) -> None:
    """A ValueError naming the first non-finite draw (NaN/inf: diverged chains, overflow)."""
    ok = np.isfinite(mat)
    if not ok.all():
        bad_rows = np.nonzero(~ok.all(axis=1))[0]
        raise ValueError(
            f"{what} hold {int((~ok).sum())} NaN or infinite value(s) in {bad_rows.size} draw(s), the first "
            f"at draw {int(bad_rows[0])} (of the flattened draws): drop diverged chains before measuring"
        )
