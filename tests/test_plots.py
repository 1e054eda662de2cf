"""heatbath.diagnostics.plots: smoke tests that check what each figure holds (Agg backend)."""

import dataclasses

import matplotlib

matplotlib.use("Agg")

import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import heatbath as hb  # noqa: E402
from heatbath.diagnostics import plots  # noqa: E402
from heatbath.tuning import TuneResult  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def run():
    x = np.random.default_rng(0).normal([1.0, -1.0, 0.5], 1.0, size=(50, 3)).astype(np.float32)

    def logprior(p):
        return -0.5 * jnp.sum(p["theta"] ** 2) / 100.0 - 0.5 * p["b"] ** 2

    def loglik(p, batch):
        return -0.5 * jnp.sum((batch["x"] - p["theta"]) ** 2)

    target = hb.models.from_logdensity(logprior, loglik, {"x": x}, params={"theta": jnp.zeros(3), "b": jnp.zeros(())})
    res = hb.sample(target, hb.samplers.sgld(2e-3), num_samples=400, num_chains=2, seed=0, progress_bar=False,
                    record_unconstrained=True, checks="off")
    return res, x


def test_plot_trace(run):
    res, _ = run
    fig = plots.plot_trace(res)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 4  # (density, trace) for theta and b
    titles = sorted(ax.get_title() for ax in fig.axes)
    assert titles == ["b", "b", "theta", "theta"]
    fig = plots.plot_trace(res, var_names=["b"])
    assert len(fig.axes) == 2
    trace = fig.axes[1]
    assert len(trace.get_lines()) == 2  # one line per chain


def test_plot_marginals_against_moments_and_draws(run):
    res, x = run
    # posterior of theta_j: N(sum x / (N + 0.01), 1 / (N + 0.01)); b: N(0, 1)
    n = len(x)
    ref = {"theta": {"mean": x.sum(0) / (n + 0.01), "sd": np.full(3, (n + 0.01) ** -0.5)}, "b": {"mean": 0.0, "sd": 1.0}}
    fig = plots.plot_marginals(res, ref)
    assert len(fig.axes) == 4
    assert [ax.get_xlabel() for ax in fig.axes] == ["theta[0]", "theta[1]", "theta[2]", "b"]
    first = fig.axes[0]
    assert [line.get_label() for line in first.get_lines()] == ["reference N(mean, sd)"]
    assert len(first.patches) == 1  # the draws' step histogram
    assert first.get_legend() is not None and first.get_ylabel() == "density"
    # the normal curve peaks at the reference mean
    line = first.get_lines()[0]
    assert line.get_xdata()[np.argmax(line.get_ydata())] == pytest.approx(ref["theta"]["mean"][0], abs=0.01)
    # reference draws: a filled histogram, no normal curve; params and max_panels select panels
    draws = {"theta": np.random.default_rng(1).normal(ref["theta"]["mean"], 0.14, size=(1000, 3))}
    fig = plots.plot_marginals(res, draws, params=["theta"], max_panels=2)
    assert len(fig.axes) == 2 and fig.axes[0].get_lines() == []
    assert len(fig.axes[0].patches) > 1  # reference bars + the draws' step outline
    with pytest.raises(ValueError, match="no parameter to draw"):
        plots.plot_marginals(res, {"other": {"mean": 0.0, "sd": 1.0}})


def fake_tuning():
    rows = [
        {"candidate": 0, "hyperparameters": {"step_size": 0.05, "batch_size": None}, "rounds": 1,
         "ksd": [float("inf")], "steps": [500], "seconds": [1.0], "clock": [1.0], "grad_evals": 1e4,
         "status": "diverged in round 1", "note": ""},
        {"candidate": 1, "hyperparameters": {"step_size": 0.002, "batch_size": None}, "rounds": 2,
         "ksd": [0.5, 0.3], "steps": [500, 1000], "seconds": [1.0, 2.0], "clock": [2.0, 5.0], "grad_evals": 3e4,
         "status": "best", "note": ""},
        {"candidate": 2, "hyperparameters": {"step_size": 1e-6, "batch_size": None}, "rounds": 2,
         "ksd": [3.0, 2.0], "steps": [500, 1000], "seconds": [1.0, 2.0], "clock": [3.0, 7.0], "grad_evals": 3e4,
         "status": "eliminated in round 2", "note": ""},
        {"candidate": 3, "hyperparameters": {"step_size": 1e-4, "batch_size": None}, "rounds": 1,
         "ksd": [4.0], "steps": [500], "seconds": [1.0], "clock": [4.0], "grad_evals": 1e4,
         "status": "eliminated in round 1", "note": ""},
    ]
    return TuneResult(best={"step_size": 0.002, "batch_size": None}, sampler=None, table=rows, family="sgld",
                      budget=1e5, budget_kind="grads", rounds=2, exhausted=False, wall_time=7.5, grad_evals=8e4)


def test_plot_tuning():
    fig = plots.plot_tuning(fake_tuning())
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["step_size=0.002 (best)", "step_size=1e-06", "step_size=0.0001"]
    assert list(lines[0].get_ydata()) == [0.5, 0.3] and list(lines[2].get_xdata()) == [1]
    assert lines[0].get_linewidth() > lines[1].get_linewidth()
    assert ax.get_xlabel() == "round" and ax.get_ylabel() == "KSD" and ax.get_yscale() == "log"
    assert "diverged: step_size=0.05" in ax.get_title()
    with pytest.raises(TypeError, match="TuneResult"):
        plots.plot_tuning([1, 2])


def test_plot_ksd_vs_time_of_a_tuning_and_of_runs(run):
    fig = plots.plot_ksd_vs_time(fake_tuning())
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 4 and list(lines[1].get_xdata()) == [2.0, 5.0] and list(lines[1].get_ydata()) == [0.5, 0.3]
    assert len(lines[0].get_xdata()) == 0  # the diverged candidate has no finite point
    assert ax.get_xlabel() == "seconds since tuning began"
    res, _ = run
    fig = plots.plot_ksd_vs_time({"sgld 2e-3": res}, num_points=3)
    (ax,) = fig.axes
    (line,) = ax.get_lines()
    assert line.get_label() == "sgld 2e-3" and len(line.get_xdata()) == 3
    t = np.asarray(line.get_xdata())
    assert np.all(np.diff(t) > 0) and t[-1] == pytest.approx(res.wall_time)
    # the last point is the KSD of the whole run
    assert line.get_ydata()[-1] == pytest.approx(hb.diagnostics.ksd_result(res), rel=1e-6)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    no_draws = dataclasses.replace(res, unconstrained=None)
    with pytest.raises(ValueError, match="record_unconstrained=True"):
        plots.plot_ksd_vs_time([no_draws])
