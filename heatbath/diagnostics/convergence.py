r"""Convergence diagnostics: nested R-hat for many short chains; R-hat and ESS from ArviZ.

Nested R-hat (Margossian, Hoffman, Sountsov, Riou-Durand, Vehtari & Gelman, "Nested R-hat:
assessing the convergence of Markov chain Monte Carlo when running many short chains",
Bayesian Analysis 2024/2025, arXiv:2110.13017). K superchains of M chains each, N draws per
chain; the chains of one superchain share their initial point and then run independently.
With theta^{nmk} draw n of chain m of superchain k:

.. math::

    \bar\theta^{.mk} = \frac{1}{N}\sum_n \theta^{nmk}, \quad
    \bar\theta^{..k} = \frac{1}{M}\sum_m \bar\theta^{.mk}, \quad
    \bar\theta^{...} = \frac{1}{K}\sum_k \bar\theta^{..k},

    \hat B_\nu = \frac{1}{K-1}\sum_k (\bar\theta^{..k} - \bar\theta^{...})^2, \qquad
    \hat W_\nu = \frac{1}{K}\sum_k (\tilde B_k + \tilde W_k),

    \tilde B_k = \frac{1}{M-1}\sum_m (\bar\theta^{.mk} - \bar\theta^{..k})^2 \;(0 \text{ if } M = 1),
    \quad
    \tilde W_k = \frac{1}{M}\sum_m \frac{1}{N-1}\sum_n (\theta^{nmk} - \bar\theta^{.mk})^2 \;(0 \text{ if } N = 1),

    n\hat R = \sqrt{1 + \hat B_\nu / \hat W_\nu}.

Threshold: the paper uses nR-hat < 1 + delta with delta = 0.01 (the 1.01 of Vehtari et al. 2021,
:data:`NESTED_RHAT_THRESHOLD`). Even for stationary chains, nR-hat^2 - 1 is about 1 / (M x
effective draws per chain), so with very short chains (N = 1) the paper corrects the threshold
to sqrt(1 + 1/M + tau), tau the tolerated non-stationary variance (:func:`nested_rhat_threshold`;
its experiments read 1.004 for M = 128). Nested R-hat only sees what distinguishes superchains:
if every superchain started in the same mode of a multimodal target, it cannot flag the missed
mode; start superchains from dispersed points.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

__all__ = ["nested_rhat", "nested_rhat_threshold", "NESTED_RHAT_THRESHOLD", "rhat", "ess"]

NESTED_RHAT_THRESHOLD = 1.01


def nested_rhat_threshold(chains_per_superchain: int, draws_per_chain: int = 1, tau: float = 1e-4) -> float:
    """The threshold nR-hat is compared with (Margossian et al., Section 3).

    1.01 in general; for one draw per chain (N = 1), where the persistent variance alone gives
    nR-hat^2 - 1 ~ 1/M, the corrected sqrt(1 + 1/M + tau) (tau = 1e-4 by default; the user's
    tolerance on the non-stationary variance, relative to the target variance).
    """
    if chains_per_superchain < 1 or draws_per_chain < 1:
        raise ValueError("chains_per_superchain and draws_per_chain must be >= 1")
    if draws_per_chain == 1:
        return math.sqrt(1.0 + 1.0 / chains_per_superchain + tau)
    return NESTED_RHAT_THRESHOLD


def _nested_one(x: np.ndarray, num_superchains: int) -> np.ndarray:
    """nR-hat of a (chain, draw, *shape) float64 array; returns an array of ``shape``."""
    c, n = x.shape[:2]
    m = c // num_superchains
    x = x.reshape((num_superchains, m, n) + x.shape[2:])
    chain_mean = x.mean(axis=2)  # (K, M, ...)
    super_mean = chain_mean.mean(axis=1)  # (K, ...)
    between = super_mean.var(axis=0, ddof=1)
    b_within = chain_mean.var(axis=1, ddof=1) if m > 1 else np.zeros_like(super_mean)
    w_within = x.var(axis=2, ddof=1).mean(axis=1) if n > 1 else np.zeros_like(super_mean)
    within = (b_within + w_within).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.sqrt(1.0 + between / within))


def _check_draws(name: str, arr) -> np.ndarray:
    x = np.asarray(arr)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name}: draws must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if x.ndim < 2:
        raise ValueError(f"{name}: draws must be shaped (chain, draw, *shape), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: no draws (shape {x.shape})")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: {int((~np.isfinite(x)).sum())} non-finite draw value(s); drop diverged chains")
    return x


def _draws_dict(draws) -> tuple[dict, bool]:
    """(name -> array, was_a_dict); a heatbath Result gives its samples."""
    samples = getattr(draws, "samples", None)
    if samples is not None and not isinstance(draws, Mapping):
        if not samples:
            raise ValueError("this result kept no draws (keep='moments'): nothing to diagnose")
        return dict(samples), True
    if isinstance(draws, Mapping):
        if not draws:
            raise ValueError("draws is an empty dict")
        return dict(draws), True
    return {"x": draws}, False


def nested_rhat(draws, num_superchains: int):
    r"""Nested R-hat of ``draws``, chains grouped into consecutive superchains.

    Args:
      draws: (chain, draw) or (chain, draw, *shape) array, a dict name -> such arrays, or a
        heatbath Result (its ``samples``). Chains ``k*M .. (k+1)*M - 1`` form superchain k:
        order chains so that those sharing an initial point are adjacent.
      num_superchains: K >= 2, dividing the number of chains.

    Returns:
      float64 array of shape ``shape`` (a 0-d array for scalars), or a dict of them. NaN where
      every draw is equal (0/0), inf where only superchains differ (W = 0).

    Raises:
      ValueError: K < 2 or not dividing the chain count, empty or non-finite draws.
    """
    if isinstance(num_superchains, bool) or not isinstance(num_superchains, (int, np.integer)):
        raise TypeError(f"num_superchains must be an int, got {num_superchains!r}")
    if num_superchains < 2:
        raise ValueError(f"num_superchains must be >= 2 (between-superchain variance), got {num_superchains}")
    items, was_dict = _draws_dict(draws)
    out = {}
    for name, arr in items.items():
        x = _check_draws(name, arr)
        if x.shape[0] % num_superchains:
            raise ValueError(
                f"{name}: {x.shape[0]} chains do not split into {num_superchains} superchains of equal size"
            )
        out[name] = _nested_one(x, int(num_superchains))
    return out if was_dict else out["x"]


def _arviz_call(fn_name: str, draws, kwargs):
    import arviz as az

    from heatbath.diagnostics.arviz import to_arviz

    items, was_dict = _draws_dict(draws)
    checked = {k: _check_draws(k, v) for k, v in items.items()}
    data = to_arviz(checked)
    result = getattr(az, fn_name)(data, **kwargs)
    if hasattr(result, "to_dataset") and not hasattr(result, "data_vars"):  # a DataTree
        result = result.to_dataset()
    if hasattr(result, "data_vars"):
        out = {k: np.asarray(result[k].values, dtype=np.float64) for k in checked}
    else:  # pragma: no cover - an ArviZ returning plain arrays
        out = {k: np.asarray(result, dtype=np.float64) for k in checked}
    return out if was_dict else out["x"]


def rhat(draws, **kwargs):
    """``arviz.rhat`` (rank-normalised split R-hat, Vehtari et al. 2021) of (chain, draw, ...) draws.

    ``draws``: an array, a dict name -> array or a heatbath Result; ``kwargs`` go to ArviZ
    (e.g. ``method="split"``). Returns float64 arrays (a dict for dict input).
    """
    return _arviz_call("rhat", draws, kwargs)


def ess(draws, **kwargs):
    """``arviz.ess`` (bulk ESS by default; ``method="tail"``, ...) of (chain, draw, ...) draws."""
    return _arviz_call("ess", draws, kwargs)
