"""Cost accounting of a run, in per-datum likelihood-gradient evaluations."""

from __future__ import annotations

from heatbath.kernels.gradients import Estimator

__all__ = ["num_refreshes", "grad_evals_per_chain"]


def num_refreshes(num_steps: int, every: int) -> int:
    """Re-centrings in a run of ``num_steps`` steps: at steps s = m, 2m, ... < num_steps (init is s = 0)."""
    return max(num_steps - 1, 0) // every


def grad_evals_per_chain(estimator: Estimator, grads_per_step: float, batch_size, num_data, num_steps) -> float:
    """Per-datum likelihood-gradient evaluations of one chain's run (estimator set-up included)."""
    rows = num_data if batch_size is None else batch_size
    cost = num_steps * grads_per_step * estimator.rows_per_estimate * rows
    if estimator.refresh_every:
        cost += num_refreshes(num_steps, estimator.refresh_every) * num_data
    return float(cost + estimator.rows_at_init)
