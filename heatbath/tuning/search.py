r"""Tuning SG-MCMC hyperparameters by Stein discrepancy per unit time (successive halving).

Coullon, South & Nemeth, "Efficient and generalizable tuning strategies for stochastic
gradient MCMC", Statistics and Computing 33:66 (2023) (code: jeremiecoullon/SGMCMC_bandit_tuning):
every candidate setting (step size h, SGHMC friction C, batch size n) runs for the same budget,
the candidates are ranked by the kernel Stein discrepancy of their draws (Gorham & Mackey, ICML
2017: it needs only grad log p, and sees both a chain that has not travelled far enough, h too
small, and one that is biased or diverges, h too large), the better part goes on with a larger
budget each, until one is left (successive halving, Karnin, Koren & Somekh, ICML 2013).

With K candidates and eta = 2 (the paper's code takes eta = 3):

1. R = ceil(log_eta K) rounds. A round gets the budget left over the rounds left, split evenly
   over its K_r candidates, so each survivor's budget grows about eta-fold a round (the paper's
   T / (K_r R)); what a round does not use goes to the next.
2. A candidate's chains go on from where its previous round ended (as the paper's arms do); all
   start from the same positions and use the same seeds in a round (common random numbers).
3. Score: the IMQ KSD (:func:`heatbath.diagnostics.ksd`) of the round's draws (unconstrained,
   thinned to at most ``ksd_draws``) with full-data scores at the draws (or ``score_batch_size``
   rows per draw: the stochastic KSD of Gorham, Raj & Mackey 2020). A diverged candidate
   scores inf and is dropped.
4. The ceil(K_r / eta) best go on. The winner is the best of the last round (if the budget runs
   out first: of the last completed round).

Budgets. ``budget``: seconds of wall-clock time, as the paper, but measured honestly: all that
:func:`tune` does counts (the target, the starting points, every compilation, the sampling, the
scoring); it may overrun by about one chunk per candidate. A candidate's first run is one chunk
(its compile) and a timed probe of two; it then samples for its share less the calibration's
first-call time (so every candidate gets the same sampling time in round 1, whatever its
compile took) in calls sized from its measured time per step. The floor is checked by a timed
calibration run (the first candidate's first chunk and its scoring), before any other candidate
runs: a ValueError when the first round cannot give each candidate that much. ``budget_grads``:
per-datum likelihood-gradient evaluations of the samplers (steps x batch size x chains, summed
over candidates; ``Result.grad_evals`` counts per chain): deterministic, checked before anything
runs; the scoring's gradients (about ``ksd_draws`` x N a round) are not counted.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any, Callable, Optional

import jax
import numpy as np

from heatbath.diagnostics.stein import ksd as _ksd
from heatbath.diagnostics.stein import scores as _scores
from heatbath.drivers import OptimizeResult, as_target, sample
from heatbath.drivers import initialize as _initialize
from heatbath.tuning.halving import check_positive, build_sampler, expand_grid, successive_halving
from heatbath.tuning.result import TuneResult, candidate_rows

__all__ = ["tune", "ksd_score"]


@dataclasses.dataclass
class _Arm:
    hyper: dict
    sampler: Any
    batch_size: Optional[int]
    positions: Any
    sec_per_step: Optional[float] = None
    grad_evals: float = 0.0
    score_seconds: list = dataclasses.field(default_factory=list)
    round_seconds: list = dataclasses.field(default_factory=list)
    round_steps: list = dataclasses.field(default_factory=list)
    clock: list = dataclasses.field(default_factory=list)
    diverged: bool = False
    note: str = ""


def _seed(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([int(seed) % 2**32, *parts]).generate_state(1)[0] % 2**31)


def _thin(draws, num: int):
    """At most ``num`` draws in all, evenly spaced along each chain's draw axis."""
    leaf = jax.tree.leaves(draws)[0]
    chains, n = leaf.shape[0], leaf.shape[1]
    per = max(1, min(n, num // chains))
    idx = np.unique(np.linspace(0, n - 1, per).round().astype(int))
    return jax.tree.map(lambda v: np.asarray(v)[:, idx], draws)


def ksd_score(target, draws, *, score_batch_size=None, seed=0, **ksd_kwargs) -> float:
    """KSD of unconstrained draws (chain, draw, ...) on ``target``: full-data scores, or
    ``score_batch_size`` rows per draw (stochastic KSD); inf for non-finite draws."""
    if not all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(draws)):
        return math.inf
    sc = _scores(target, draws, batch_size=score_batch_size, seed=seed)
    if not all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(sc)):
        return math.inf
    return _ksd(draws, sc, sample_axes=2, **ksd_kwargs)


def tune(model, sampler_family: str, grid, *, budget: Optional[float] = None, budget_grads: Optional[float] = None,
         data=None, batch_size: Optional[int] = None, num_chains: int = 1, seed: int = 0, init=None,
         thinning: int = 10, chunk_steps: int = 500, ksd_draws: int = 2000, score_batch_size: Optional[int] = None,
         eta: int = 2, sampler_kwargs: Optional[dict] = None, score_fn: Optional[Callable] = None,
         ksd_kwargs: Optional[dict] = None, verbose: bool = False) -> TuneResult:
    """Choose SGLD / pSGLD / SGHMC hyperparameters by Stein discrepancy per unit time.

    Successive halving over the grid (Coullon, South & Nemeth 2023; see the module docstring):
    every candidate runs for the same budget, the best half by KSD goes on with twice the budget
    each, until one is left.

    Args:
      model: a NumPyro model (its arguments in ``data``) or a Target.
      sampler_family: ``"sgld"``, ``"psgld"`` or ``"sghmc"``.
      grid: a dict name -> list of values (the cartesian product; e.g. ``{"step_size": [1e-5,
        1e-4, 1e-3], "friction": [1, 10]}``) or a list of dicts, one per candidate. Names:
        ``step_size`` (and ``friction`` for SGHMC: each candidate needs them, from the grid or
        ``sampler_kwargs``) and ``batch_size``.
      budget: seconds of wall-clock time for the whole call (compilation included); or
      budget_grads: per-datum gradient evaluations of the samplers, all candidates and chains.
      batch_size: the minibatch size for candidates that do not set one (None: full batch).
      num_chains: chains per candidate (their draws are pooled in the KSD).
      init: the starting point of every candidate (``hb.sample``'s ``init``; default
        ``"uniform"``), resolved once.
      thinning: steps per recorded draw; ``chunk_steps``: steps per compiled chunk, the
        smallest run of a candidate in a round (rounded to a multiple of ``thinning``).
      ksd_draws: draws per candidate and round in the KSD (evenly spaced, over all chains).
      score_batch_size: None (full-data scores) or rows per draw (stochastic KSD).
      sampler_kwargs: fixed constructor options for every candidate (e.g. ``integrator``).
      score_fn: replaces the KSD: ``score_fn(draws, target) -> float`` (lower is better),
        ``draws`` the round's thinned unconstrained draws (chain, draw, ...).
      verbose: print each candidate's round.

    Returns:
      A :class:`TuneResult`: ``best`` (hyperparameters, with ``batch_size``), ``sampler``, ``table``.

    Raises:
      ValueError: an empty grid, an unknown family or hyperparameter, a non-positive value, both
        or neither budget, a budget too small for one chunk of every candidate in the first round.
    """
    t_start = time.perf_counter()
    cands = expand_grid(sampler_family, grid, sampler_kwargs)
    if (budget is None) == (budget_grads is None):
        raise ValueError("give exactly one of budget= (seconds of wall-clock time) and budget_grads= (gradient evaluations)")
    timed = budget is not None
    total = check_positive(budget if timed else budget_grads, "budget" if timed else "budget_grads")
    for name, v in (("num_chains", num_chains), ("thinning", thinning), ("chunk_steps", chunk_steps),
                    ("ksd_draws", ksd_draws)):
        check_positive(v, name, integer=True)
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise ValueError(f"eta must be an int >= 2, got {eta!r}")
    chunk_draws = max(1, int(chunk_steps) // int(thinning))
    target = as_target(model, data)
    for c in cands:
        b = c.get("batch_size", batch_size)
        if b is not None and check_positive(b, "batch_size", integer=True) > target.num_data:
            raise ValueError(f"batch_size {b} exceeds the number of data rows {target.num_data}")
    if score_batch_size is not None and check_positive(score_batch_size, "score_batch_size", True) > target.num_data:
        raise ValueError(f"score_batch_size {score_batch_size} exceeds the number of data rows {target.num_data}")
    samplers = [build_sampler(sampler_family, c, sampler_kwargs) for c in cands]  # bad values fail here
    K = len(cands)
    rounds = max(1, math.ceil(math.log(K) / math.log(eta) - 1e-9))
    if not timed:
        need = [chunk_draws * thinning * s.steps_per_draw * s.grads_per_step * num_chains
                * (c.get("batch_size", batch_size) or target.num_data) for c, s in zip(cands, samplers)]
        if total / rounds < sum(need):
            raise ValueError(
                f"budget_grads={total:g} is too small: the first round ({total / rounds:g} of {rounds} rounds) must give each of "
                f"the {K} candidates one chunk of {chunk_draws * thinning} steps, {sum(need):g} gradient evaluations in all; "
                f"give budget_grads >= {rounds * sum(need):g} or fewer candidates / a smaller chunk_steps")
    # Every candidate starts from the same positions; the runs use a copy of the target whose
    # `unconstrain` is the identity, so that positions (chain axis first) can be passed as init.
    keys = jax.random.split(jax.random.key(_seed(seed, 0)), num_chains)
    init = init.values if isinstance(init, OptimizeResult) else init
    positions, _ = _initialize.resolve(target, "uniform" if init is None else init, keys, num_chains, batch_size)
    run_target = dataclasses.replace(target, unconstrain=lambda values: values)
    arms = [_Arm(c, s, c.get("batch_size", batch_size), positions) for c, s in zip(cands, samplers)]
    spent = {"grads": 0.0}

    def left():
        return total - (time.perf_counter() - t_start if timed else spent["grads"])

    def chunk_len(arm):  # steps per compiled chunk
        return chunk_draws * thinning * arm.sampler.steps_per_draw

    def run(arm, r, call, chunks, parts):
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = sample(run_target, arm.sampler, batch_size=arm.batch_size, num_samples=chunks * chunk_draws,
                         num_warmup=0, thinning=thinning, chunk_size=chunk_draws, num_chains=num_chains,
                         seed=_seed(seed, 1, r, call), init=arm.positions, progress_bar=False,
                         record_unconstrained=True, checks="off")
        steps = chunks * chunk_len(arm)
        if res.compile_time == 0.0:  # a compiled run: its time per step, call overhead included
            arm.sec_per_step = (time.perf_counter() - t0) / steps
        arm.positions = res.final_state.position
        arm.grad_evals += res.grad_evals * num_chains
        spent["grads"] += res.grad_evals * num_chains
        if np.asarray(res.stats["diverging"]).any():
            arm.diverged = True
            arm.note = next((str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)), "diverged")
        parts.append(res.unconstrained)
        return steps

    def fits(arm, deadline):  # whole chunks that fit before the deadline at the measured rate
        return int((deadline - time.perf_counter()) / (arm.sec_per_step * chunk_len(arm)))

    def evaluate(i, r, share):
        arm, t0, parts = arms[i], time.perf_counter(), pending.pop(i, [])
        if arm.diverged:
            return math.inf
        if not timed:
            per_chunk = chunk_len(arm) * arm.sampler.grads_per_step * num_chains * (arm.batch_size or target.num_data)
            steps = run(arm, r, 0, max(1, int(share // per_chunk)), parts)
        else:
            # A candidate's first run is one chunk (the compile; the calibration's for candidate 0)
            # and a timed probe of two chunks. Every candidate then gets the same sampling time:
            # its share less the calibration's first-call time (first round) and its scoring time.
            # It is filled in calls of half the chunks that fit at the measured rate, re-measured.
            first = arm.sec_per_step is None
            steps = len(parts) * chunk_len(arm)
            if first and not parts:
                steps += run(arm, r, 0, 1, parts)
            deadline = (time.perf_counter() + share - calib["first_call"] - calib["score"] if first
                        else t0 + share - arm.score_seconds[-1])
            call = 1
            if first and not arm.diverged and time.perf_counter() < deadline:
                steps, call = steps + run(arm, r, call, 2, parts), call + 1
            while not arm.diverged and (not parts or (arm.sec_per_step and fits(arm, deadline) >= 1)):
                steps, call = steps + run(arm, r, call, max(1, (fits(arm, deadline) + 1) // 2), parts), call + 1
        arm.round_steps.append(steps)
        if arm.diverged:
            score = math.inf
        else:
            merged = jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs], axis=1), *parts)
            t_score = time.perf_counter()
            score = _score(arm, _thin(merged, ksd_draws))
            arm.score_seconds.append(time.perf_counter() - t_score)
        arm.round_seconds.append(time.perf_counter() - t0)
        arm.clock.append(time.perf_counter() - t_start)
        if verbose:
            print(f"round {r + 1} #{i} {arm.hyper}: {steps} steps, {arm.round_seconds[-1]:.2f} s, score {score:.4g}")
        return score

    def _score(arm, draws):
        if score_fn is not None:
            return float(score_fn(draws, target))
        return ksd_score(target, draws, score_batch_size=score_batch_size, seed=_seed(seed, 2),
                         **(ksd_kwargs or {}))

    pending, calib = {}, {"first_call": 0.0, "score": 0.0}
    if timed:
        # Calibration: the first candidate's first chunk (compile included) and its scoring, timed;
        # its draws count as the start of its first round.
        t0 = time.perf_counter()
        run(arms[0], 0, 0, 1, pending.setdefault(0, []))
        calib["first_call"] = time.perf_counter() - t0
        _score(arms[0], _thin(pending[0][0], ksd_draws))
        calib["score"] = time.perf_counter() - t0 - calib["first_call"]
        cost = calib["first_call"] + calib["score"]
        if cost * K > total / rounds:
            raise ValueError(
                f"budget={total:g} s is too small: a timed calibration run (the first candidate's first chunk of "
                f"{chunk_len(arms[0])} steps, compile included, and its scoring) took {cost:.2f} s, so the first of "
                f"{rounds} rounds needs about {cost * K:.1f} s for the {K} candidates; give budget >= "
                f"{cost * K * rounds:.0f} s, fewer candidates or a smaller chunk_steps")
    out = successive_halving(K, evaluate, left, eta=eta)
    best = arms[out["best"]]
    best_hyper = {**best.hyper, "batch_size": best.batch_size}
    rows = candidate_rows(arms, out)
    return TuneResult(best=best_hyper, sampler=build_sampler(sampler_family, best.hyper, sampler_kwargs),
                      table=rows, family=sampler_family, budget=total, budget_kind="seconds" if timed else "grads",
                      rounds=out["rounds"], exhausted=out["exhausted"], wall_time=time.perf_counter() - t_start,
                      grad_evals=spent["grads"], positions=best.positions, target=target)
