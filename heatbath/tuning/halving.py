"""Successive halving and the candidate grid of :func:`heatbath.tune`.

Successive halving (Karnin, Koren & Somekh, ICML 2013), as Coullon, South & Nemeth (2023) use
it to tune SG-MCMC: K candidates, R = ceil(log_eta K) rounds; each round's budget is the budget
left over the rounds left, split evenly over the round's candidates; the ceil(K_r / eta) best go
on. Generic over how a candidate is run and scored (:func:`successive_halving` takes callbacks).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Optional

import numpy as np

from heatbath import samplers as _samplers

__all__ = ["FAMILIES", "successive_halving", "expand_grid", "build_sampler", "check_positive"]

# family -> (constructor, names a grid may vary, names every candidate needs)
FAMILIES = {
    "sgld": (_samplers.sgld, ("step_size", "batch_size"), ("step_size",)),
    "psgld": (_samplers.psgld, ("step_size", "batch_size"), ("step_size",)),
    "sghmc": (_samplers.sghmc, ("step_size", "friction", "batch_size"), ("step_size", "friction")),
}


def successive_halving(num_candidates: int, evaluate: Callable, budget_left: Callable, *, eta: int = 2) -> dict:
    """The successive-halving schedule, generic over how a candidate is run and scored.

    Args:
      num_candidates: K >= 1.
      evaluate: ``evaluate(i, round, allocation) -> score`` runs candidate i for ``allocation``
        budget units in round ``round`` (0-based) and returns its score (lower is better; inf or
        NaN for a failed candidate, which is never kept).
      budget_left: ``budget_left() -> float``, the budget not yet spent (called before every
        candidate, so time budgets include everything between calls).
      eta: keep ceil(K_r / eta) candidates per round.

    Returns:
      ``{"best": i, "scores": {i: [score per round]}, "eliminated": {i: round}, "allocations":
      {i: [allocation per round]}, "rounds": completed rounds, "exhausted": bool}``.

    Raises:
      RuntimeError: every candidate of a round failed.
    """
    if eta < 2:
        raise ValueError(f"eta must be an int >= 2, got {eta!r}")
    active = list(range(num_candidates))
    scores = {i: [] for i in active}
    allocs = {i: [] for i in active}
    eliminated, r, exhausted = {}, 0, False
    while True:
        rounds_left = max(1, math.ceil(math.log(len(active)) / math.log(eta) - 1e-9))
        round_share = budget_left() / rounds_left
        if round_share <= 0 and r > 0:
            exhausted = True
            break
        share = round_share / len(active)
        for i in active:
            allocs[i].append(share)
            s = float(evaluate(i, r, share))
            scores[i].append(s if np.isfinite(s) else math.inf)
        r += 1
        finite = [i for i in active if np.isfinite(scores[i][-1])]
        if not finite:
            raise RuntimeError(
                f"every candidate of round {r} failed (diverged or non-finite score): "
                + ", ".join(f"#{i}" for i in active) + "; lower the step sizes")
        keep = min(math.ceil(len(active) / eta), len(finite)) if len(active) > 1 else 1
        ranked = sorted(finite, key=lambda i: (scores[i][-1], i))
        for i in active:
            if i not in ranked[:keep]:
                eliminated[i] = r
        active = ranked[:keep]
        if len(active) == 1:
            break
    best = min(active, key=lambda i: (scores[i][-1], i))
    return {"best": best, "scores": scores, "eliminated": eliminated, "allocations": allocs, "rounds": r,
            "exhausted": exhausted}


def check_positive(value, name, integer=False):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value <= 0 or (integer and int(value) != value):
        kind = "a positive int" if integer else "a positive finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value) if integer else float(value)


def expand_grid(family: str, grid, fixed: Optional[dict] = None) -> list[dict]:
    """The candidates of ``grid``: a dict name -> list of values (their cartesian product, in
    order, the last name varying fastest) or a list of dicts; checked against the family."""
    if family not in FAMILIES:
        raise ValueError(f"unknown sampler family {family!r}; use one of {sorted(FAMILIES)}")
    _, names, needed = FAMILIES[family]
    if isinstance(grid, dict) and not grid:
        cands = []
    elif isinstance(grid, dict):
        for k, v in grid.items():
            if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) == 0:
                raise ValueError(f"grid[{k!r}] must be a non-empty list of values, got {v!r}")
        keys = list(grid)
        cands = [dict(zip(keys, combo)) for combo in itertools.product(*[list(grid[k]) for k in keys])]
    elif isinstance(grid, (list, tuple)) and all(isinstance(c, dict) for c in grid):
        cands = [dict(c) for c in grid]
    else:
        raise TypeError(f"grid must be a dict name -> list of values or a list of dicts, got {type(grid).__name__}")
    if not cands:
        raise ValueError("the grid is empty: give at least one candidate")
    fixed = dict(fixed or {})
    for c in cands:
        unknown = set(c) - set(names)
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} for {family!r}: a grid may vary {list(names)} "
                             "(other sampler options go in sampler_kwargs)")
        for k in needed:
            if k not in c and k not in fixed:
                raise ValueError(f"every {family!r} candidate needs {k!r}: put it in the grid or sampler_kwargs")
        for k, v in c.items():
            c[k] = check_positive(v, f"grid value {k}={v!r}", integer=(k == "batch_size"))
    return cands


def build_sampler(family: str, hyper: dict, sampler_kwargs: Optional[dict] = None):
    """The family's sampler for one candidate (``batch_size`` is the driver's, not the sampler's)."""
    ctor = FAMILIES[family][0]
    kwargs = {**(sampler_kwargs or {}), **{k: v for k, v in hyper.items() if k != "batch_size"}}
    return ctor(**kwargs)
