"""The :class:`Result` of ``hb.sample`` from the loop's output: draws chain-first, the running
moments, the infos, the costs, and the warning about diverged chains."""

from __future__ import annotations

import time
import warnings

import jax
import numpy as np

from heatbath.drivers import loop
from heatbath.drivers.results import Result

__all__ = ["result"]


def _chain_first(tree):
    """(draw, chain, ...) -> (chain, draw, ...)."""
    return jax.tree.map(lambda v: np.swapaxes(np.asarray(v), 0, 1), tree)


def result(out, target, sampler, estimator, cfg, num_chains, centre, map_cost, map_compile, t_start, unconstrained,
            tuning=None):
    draws, unc = out.draws, None
    if unconstrained and cfg.keep == "draws":
        draws, unc = draws["values"], _chain_first(draws["position"])
    samples = {k: v for k, v in _chain_first(draws).items()} if cfg.keep == "draws" else {}
    stats = {k: np.swapaxes(np.asarray(v), 0, 1) for k, v in out.infos._asdict().items()}
    # The last draw's log density was never evaluated by a step: check it here.
    stats["diverging"][:, -1] |= ~loop.finite_log_density(target, out.carry[0].position)
    moments = None
    if cfg.keep == "moments":
        acc = out.moments
        count = int(acc["count"])
        pick = (lambda t: t["values"]) if unconstrained else (lambda t: t)
        mean, m2, ring = pick(acc["mean"]), pick(acc["m2"]), pick(acc["ring"])
        moments = {
            "count": count,
            "mean": {k: np.asarray(v) for k, v in mean.items()},
            "var": {k: np.asarray(v) / max(count - 1, 1) for k, v in m2.items()},
        }
        if cfg.swag_rank:
            moments["deviations"] = {k: np.asarray(ring[k]) - np.asarray(mean[k])[:, None] for k in ring}
    num_steps = out.steps_done
    if out.interrupted:
        done = int(np.shape(stats["diverging"])[1])
        where = " and committed to the checkpoint (resume it to finish the run)" if cfg.checkpoint is not None else ""
        warnings.warn(
            f"interrupted (Ctrl-C) after {out.steps_done} steps: the Result holds the {done} of {cfg.num_draws} "
            f"draws made{where}",
            RuntimeWarning,
            stacklevel=3,
        )
    result = Result(
        samples=samples,
        stats=stats,
        final_state=out.carry[0],
        grad_evals=map_cost + loop.grad_evals_per_chain(estimator, sampler.grads_per_step, cfg.batch_size,
                                                        target.num_data, num_steps),
        num_data=target.num_data,
        wall_time=time.perf_counter() - t_start,
        compile_time=out.compile_time + map_compile,
        sampler_name=sampler.name,
        observed_data=target.observed_data,
        centre=centre,
        moments=moments,
        unconstrained=unc,
        tuning=tuning,
        target=target,
        on_divergence=cfg.on_divergence,
    )
    bad = result.diverged_chains()
    if bad:
        first = [int(np.argmax(stats["diverging"][c])) for c in bad]
        what = {"stop": "stopped at its last state with a finite log density", "restart": "steps rejected and restarted",
                "flag": "left non-finite"}[cfg.on_divergence]
        warnings.warn(
            f"{len(bad)} of {num_chains} chain(s) diverged (non-finite state or log density; {what}): chains {bad}, first at "
            f"draws {first}. Their draws are flagged in stats['diverging']; lower the step size.",
            RuntimeWarning,
            stacklevel=3,
        )
    return result
