"""hb.tune: successive halving by Stein discrepancy (Coullon, South & Nemeth 2023).

Fast: the halving schedule with a mocked scorer (exact elimination order, allocations, failed
candidates, an exhausted budget); a tiny Gaussian target where the right step size must win
against one that diverges, one that is stable but biased and one too small to move; bad input.
Slow: German credit, the tuned SGLD and SGHMC against untuned defaults in the same wall-clock
time (benchmarks/tune_german_credit.py), and a time-budgeted run that keeps to its budget.
"""

import math
import os
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb
from heatbath.tuning import expand_grid, successive_halving


class Ledger:
    """A budget of `total` units, spent by the mocked evaluate."""

    def __init__(self, total):
        self.total, self.spent = total, 0.0

    def left(self):
        return self.total - self.spent


def mocked(table, ledger, calls):
    def evaluate(i, r, share):
        calls.append((r, i, share))
        ledger.spent += share
        return table[i][r]

    return evaluate


def test_elimination_order_is_exact():
    # 5 candidates -> 3 rounds: keep 3, then 2, then 1; the ranking changes between rounds.
    table = {0: [5.0], 1: [1.0, 3.0, 9.0], 2: [2.0, 1.0, 0.5], 3: [4.0, 2.0], 4: [3.0, 0.5, 0.7]}
    led, calls = Ledger(300.0), []
    out = successive_halving(5, mocked(table, led, calls), led.left)
    assert out["best"] == 2 and out["rounds"] == 3 and not out["exhausted"]
    # round 1 keeps the 3 best of (5, 1, 2, 4, 3): candidates 1, 2, 4; round 2 keeps 2 and 4 (1.0, 0.5)
    assert [i for r, i, _ in calls if r == 1] == [1, 2, 4]
    assert [i for r, i, _ in calls if r == 2] == [4, 2]
    assert out["eliminated"] == {0: 1, 3: 1, 1: 2, 4: 3}
    # Budget: 100 per round; 20 each of 5, 33.3 each of 3, 50 each of 2 (each survivor's budget grows).
    shares = {r: sorted({round(s, 6) for rr, _, s in calls if rr == r}) for r in range(3)}
    assert shares == {0: [20.0], 1: [33.333333], 2: [50.0]}
    assert led.spent == pytest.approx(300.0)
    assert out["scores"][2] == [2.0, 1.0, 0.5] and out["scores"][0] == [5.0]


def test_failed_candidates_are_dropped_and_ties_go_to_the_first():
    table = {0: [math.inf], 1: [float("nan")], 2: [1.0, 2.0], 3: [1.0, 2.0]}
    led, calls = Ledger(100.0), []
    out = successive_halving(4, mocked(table, led, calls), led.left)
    assert out["best"] == 2 and out["eliminated"] == {0: 1, 1: 1, 3: 2}
    assert out["scores"][1] == [math.inf]  # NaN is recorded as a failure
    with pytest.raises(RuntimeError, match="every candidate of round 1 failed"):
        led = Ledger(10.0)
        successive_halving(2, mocked({0: [math.inf], 1: [math.nan]}, led, []), led.left)


def test_exhausted_budget_returns_the_best_of_the_last_round():
    table = {0: [3.0, 1.0], 1: [1.0, 2.0], 2: [2.0, 5.0], 3: [4.0], 4: [5.0]}
    led, calls = Ledger(10.0), []

    def overspend(i, r, share):
        led.spent += share if r == 0 else 100.0  # the first round-2 candidate overruns everything
        calls.append((r, i))
        return table[i][r]

    out = successive_halving(5, overspend, led.left)
    assert out["exhausted"] and out["rounds"] == 2 and out["best"] == 0  # 1.0 < 2.0, 5.0 in round 2
    assert [c for c in calls if c[0] == 2] == []


def test_expand_grid():
    cands = expand_grid("sghmc", {"step_size": [1e-3, 1e-2], "friction": [1, 10]})
    assert cands == [{"step_size": 1e-3, "friction": 1.0}, {"step_size": 1e-3, "friction": 10.0},
                     {"step_size": 1e-2, "friction": 1.0}, {"step_size": 1e-2, "friction": 10.0}]
    assert expand_grid("sgld", [{"step_size": 1e-4, "batch_size": 10}]) == [{"step_size": 1e-4, "batch_size": 10}]
    assert expand_grid("sghmc", {"step_size": [0.1]}, {"friction": 3.0}) == [{"step_size": 0.1}]


def gaussian_target(n=100, seed=0):
    """x_i ~ N(theta, I_2), theta ~ N(0, 10^2 I): posterior sd ~ 0.1, precision ~ 100 per coordinate."""
    x = np.random.default_rng(seed).normal([1.5, -1.0], 1.0, size=(n, 2)).astype(np.float32)

    def logprior(p):
        return -0.5 * jnp.sum(p["theta"] ** 2) / 100.0

    def loglik(p, batch):
        return -0.5 * jnp.sum((batch["x"] - p["theta"]) ** 2)

    return hb.models.from_logdensity(logprior, loglik, {"x": x}, params={"theta": jnp.zeros(2)})


@pytest.fixture(scope="module")
def gaussian():
    return gaussian_target()


def test_the_right_step_size_wins_on_a_gaussian(gaussian):
    # Full-batch SGLD on precision ~100: h = 0.05 diverges (|1 - 100 h| = 4), h = 0.015 is stable
    # but its variance is 1 / (1 - 100 h / 2) = 4 times too large, h = 1e-6 has a relaxation time
    # of 1e4 steps (it cannot leave its start within the budget), h = 2e-3 is right (+11%).
    grid = {"step_size": [0.05, 0.015, 2e-3, 1e-6]}
    tr = hb.tune(gaussian, "sgld", grid, budget_grads=4e6, chunk_steps=500, thinning=5)
    assert tr.best == {"step_size": 2e-3, "batch_size": None}
    status = [row["status"] for row in tr.table]
    assert status[0] == "diverged in round 1" and status[2] == "best"
    assert status[1] == "eliminated in round 2" and status[3] == "eliminated in round 1"
    assert tr.table[0]["ksd"] == [math.inf]
    ksd1 = [row["ksd"][0] for row in tr.table]
    assert ksd1[2] < ksd1[1] and ksd1[2] < ksd1[3]
    # Grad-evaluation budget: kept exactly (whole chunks), nothing more than the budget.
    assert tr.grad_evals <= 4e6 and tr.budget_kind == "grads" and tr.rounds == 2
    assert sum(row["grad_evals"] for row in tr.table) == tr.grad_evals
    # The sampler is built and usable; the table prints and converts.
    assert tr.sampler.hyperparameters["step_size"] == 2e-3
    text = repr(tr)
    assert "best {'step_size': 0.002" in text and "diverged in round 1" in text
    df = tr.to_dataframe()
    assert list(df["step_size"]) == [0.05, 0.015, 2e-3, 1e-6] and list(df["rounds"]) == [1, 2, 2, 1]
    assert df.loc[2, "status"] == "best" and np.isnan(df.loc[0, "ksd_round2"])
    # The winner goes on from where its chains ended: already on the posterior at its first draw.
    res = tr.sample(300, checks="off")
    post = np.asarray(gaussian.data["x"]).sum(0) / (100 + 0.01)
    assert res.num_chains == 1 and res.samples["theta"].shape == (1, 300, 2)
    assert np.abs(res.samples["theta"][0, 0] - post).max() < 0.5
    np.testing.assert_allclose(res.samples["theta"].mean(axis=(0, 1)), post, atol=0.06)


def test_score_fn_replaces_the_ksd(gaussian):
    # A scorer that prefers draws far from the posterior: the too-small step (stuck at its start) wins.
    def far(draws, target):
        return -float(np.abs(np.asarray(draws["theta"]).mean(axis=(0, 1)) - [1.5, -1.0]).sum())

    tr = hb.tune(gaussian, "sgld", {"step_size": [2e-3, 1e-6]}, budget_grads=2e5, chunk_steps=200, thinning=5,
                 score_fn=far, init={"theta": jnp.array([-1.0, 1.0])})
    assert tr.best["step_size"] == 1e-6


@pytest.mark.parametrize(
    "family, grid, kwargs, match",
    [
        ("sgld", {}, {}, "the grid is empty"),
        ("sgld", [], {}, "the grid is empty"),
        ("sgld", {"step_size": []}, {}, "non-empty list"),
        ("sgld", {"step_size": [1e-3, -1e-4]}, {}, "positive finite number"),
        ("sgld", {"step_size": [0.0]}, {}, "positive finite number"),
        ("sgld", {"step_size": [float("nan")]}, {}, "positive finite number"),
        ("sgld", {"step_size": [1e-3], "friction": [1.0]}, {}, r"unknown hyperparameter\(s\) \['friction'\]"),
        ("sgld", {"stepsize": [1e-3]}, {}, "unknown hyperparameter"),
        ("sghmc", {"step_size": [1e-3]}, {}, "needs 'friction'"),
        ("sghmc", {"step_size": [1e-3], "friction": [0]}, {}, "positive finite number"),
        ("nuts", {"step_size": [1e-3]}, {}, "unknown sampler family 'nuts'"),
        ("sgld", {"step_size": [1e-3], "batch_size": [2.5]}, {}, "positive int"),
        ("sgld", {"step_size": [1e-3], "batch_size": [1000]}, {}, "exceeds the number of data rows 100"),
        ("sgld", {"step_size": [1e-3]}, {"budget": None}, "exactly one of budget"),
        ("sgld", {"step_size": [1e-3]}, {"budget": "10"}, "budget must be a positive"),
        ("sgld", {"step_size": [1e-3]}, {"budget": 10, "budget_grads": 1e6}, "exactly one of budget"),
        ("sgld", {"step_size": [1e-3]}, {"budget": -5}, "budget must be a positive"),
        ("sgld", {"step_size": [1e-3]}, {"budget_grads": 0}, "budget_grads must be a positive"),
        ("sgld", {"step_size": [1e-3, 1e-4]}, {"budget_grads": 1e4}, "budget_grads=10000 is too small"),
        ("sgld", {"step_size": [1e-3]}, {"budget": 10, "num_chains": 0}, "num_chains must be a positive int"),
        ("sgld", {"step_size": [1e-3]}, {"budget": 10, "eta": 1}, "eta must be an int >= 2"),
        ("sgld", {"step_size": [1e-3]}, {"budget": 10, "score_batch_size": 500}, "score_batch_size 500 exceeds"),
        ("sgld", {"step_size": [1e-3]}, {"budget": 10, "score_batch_size": 0}, "score_batch_size must be"),
        ("sghmc", {"step_size": [1e-3], "friction": [1.0]}, {"budget": 10, "sampler_kwargs": {"mass": -1.0}},
         "mass"),
    ],
)
def test_bad_input_fails_before_running(gaussian, family, grid, kwargs, match):
    if "budget" not in kwargs and "budget_grads" not in kwargs:
        kwargs = {"budget": 10.0, **kwargs}
    t0 = time.perf_counter()
    with pytest.raises((ValueError, TypeError), match=match):
        hb.tune(gaussian, family, grid, **kwargs)
    assert time.perf_counter() - t0 < 2.0  # nothing was compiled or run


def test_grid_of_the_wrong_type(gaussian):
    with pytest.raises(TypeError, match="dict name -> list of values or a list of dicts"):
        hb.tune(gaussian, "sgld", 1e-3, budget=10)


def test_a_time_budget_too_small_is_refused_after_a_short_calibration(gaussian):
    with pytest.raises(ValueError, match=r"budget=0.5 s is too small: a timed calibration run"):
        hb.tune(gaussian, "sgld", {"step_size": [1e-3, 2e-3, 3e-3, 4e-3]}, budget=0.5)


# ------------------------------------------------------------------------------------------
# slow: German credit, tuned vs untuned defaults in the same wall-clock time
# ------------------------------------------------------------------------------------------
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


@pytest.mark.slow
def test_time_budget_is_kept(gaussian):
    t0 = time.perf_counter()
    tr = hb.tune(gaussian, "sgld", {"step_size": [0.015, 2e-3, 1e-6]}, budget=30.0)
    took = time.perf_counter() - t0
    assert tr.best["step_size"] == 2e-3 and tr.budget_kind == "seconds"
    assert took <= 30.0 * 1.15 and abs(tr.wall_time - took) < 0.5
    # every first-round candidate got about the same number of steps
    steps = [row["steps"][0] for row in tr.table]
    assert max(steps) <= 2.0 * min(steps), steps


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sgld", "sghmc"])
def test_german_credit_tuned_against_untuned_defaults(family):
    """The tuned pipeline (hb.tune for half the time, then the winner goes on for the rest)
    against three untuned defaults (values copied from the ecosystem's docs, or SGD-with-momentum
    learning rates converted), each given the same compute: 4e8 per-datum gradient evaluations,
    the tuner's scoring charged to it (benchmarks/tune_german_credit.py --grads 4e8; equal compute
    rather than equal wall time, so that the machine's load cannot decide it).
    Distance: rms per-weight normal W2 to the gold standard, in reference sd. The issue's bar:
    the tuned run is closer than the best untuned default, and it meets the README's accuracy
    bars. The hand-picked and automatic rows are reported beside them, not asserted on.
    """
    import tune_german_credit as B

    out = B.compare_family_grads(family, 4e8, seed=0, verbose=False)
    print("\n" + B.markdown(out))
    tuned, others = out["rows"][0], out["rows"][1:]
    assert all(r["grads"] >= 0.99 * tuned["grads"] for r in others), out["rows"]
    untuned = sorted(r["w2"] for r in others if r["kind"] == "untuned")
    assert len(untuned) == 3
    assert tuned["max_abs_z"] <= 0.25 and 0.9 <= tuned["sd_ratio_min"] and tuned["sd_ratio_max"] <= 1.2
    assert tuned["w2"] < untuned[0], B.markdown(out)
